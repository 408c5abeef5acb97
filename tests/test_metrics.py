"""The distances between next-token distributions, against SciPy's."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.distance import cosine as scipy_cosine
from scipy.spatial.distance import jensenshannon
from scipy.special import softmax
from scipy.stats import entropy

from tempo_lens.analysis import metrics


def _logits(rows: int = 5, vocab: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    p = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 3
    q = p + torch.randn(rows, vocab, generator=g, dtype=torch.float64)
    q[0] = p[0]  # one row with nothing between them
    return p, q


def test_distances_equal_scipy() -> None:
    p_logits, q_logits = _logits()
    out = metrics.distances(p_logits, q_logits, topk=(1, 5, 20))
    for r, (a, b) in enumerate(zip(p_logits.numpy(), q_logits.numpy(), strict=True)):
        p, q = softmax(a), softmax(b)
        assert abs(out["kl"][r].item() - entropy(p, q)) < 1e-12
        assert abs(out["js"][r].item() - jensenshannon(p, q) ** 2) < 1e-12
        assert abs(out["cosine"][r].item() - (1 - scipy_cosine(p, q))) < 1e-12
        for k in (1, 5, 20):
            top_p, top_q = set(np.argsort(-a)[:k]), set(np.argsort(-b)[:k])
            assert out[f"top{k}"][r].item() == len(top_p & top_q) / k
    assert out["kl"][0].item() == 0.0 and out["top20"][0].item() == 1.0


def test_distances_equal_the_single_metrics() -> None:
    p_logits, q_logits = _logits()
    out = metrics.distances(p_logits, q_logits, topk=(5,))
    assert torch.equal(out["kl"], metrics.kl(p_logits, q_logits))
    assert torch.equal(out["js"], metrics.js(p_logits, q_logits))
    assert torch.equal(out["cosine"], metrics.cosine(p_logits, q_logits))
    assert torch.equal(out["top5"], metrics.topk_overlap(p_logits, q_logits, 5))
    assert set(metrics.distances(p_logits, q_logits)) == {"kl", "js", "cosine"}
