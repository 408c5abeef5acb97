"""Distances between next-token distributions. Inputs are logits `[..., vocab]`;
every function reduces over the last axis."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

LN2 = math.log(2.0)


def _logp(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), -1)


def _kl(lp: torch.Tensor, lq: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return (p * (lp - lq)).sum(-1)


def _js(lp: torch.Tensor, lq: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    lm = torch.logaddexp(lp, lq) - LN2  # log of the mixture, without underflow
    return 0.5 * ((p * (lp - lm)).sum(-1) + (q * (lq - lm)).sum(-1))


def _overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a ∩ b| / k of two index sets `[..., k]`."""
    hits = (a[..., :, None] == b[..., None, :]).any(-1).sum(-1)
    return hits.double() / a.shape[-1]


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) in nats."""
    lp, lq = _logp(p_logits), _logp(q_logits)
    return _kl(lp, lq, lp.exp())


def js(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in nats (bounded by ln 2)."""
    lp, lq = _logp(p_logits), _logp(q_logits)
    return _js(lp, lq, lp.exp(), lq.exp())


def cosine(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the two probability vectors."""
    p, q = _logp(p_logits).exp(), _logp(q_logits).exp()
    return torch.nn.functional.cosine_similarity(p, q, dim=-1)


def topk_overlap(p_logits: torch.Tensor, q_logits: torch.Tensor, k: int) -> torch.Tensor:
    """|top-k(p) ∩ top-k(q)| / k."""
    return _overlap(p_logits.topk(k, -1).indices, q_logits.topk(k, -1).indices)


def distances(
    p_logits: torch.Tensor, q_logits: torch.Tensor, topk: Sequence[int] = ()
) -> dict[str, torch.Tensor]:
    """`kl`, `js`, `cosine` and `top{k}` (`topk_overlap`, each k of `topk`) at once, from
    one log-softmax, one exp and one top-k per side."""
    lp, lq = _logp(p_logits), _logp(q_logits)
    p, q = lp.exp(), lq.exp()
    out = {
        "kl": _kl(lp, lq, p),
        "js": _js(lp, lq, p, q),
        "cosine": torch.nn.functional.cosine_similarity(p, q, dim=-1),
    }
    if topk:
        a = lp.topk(max(topk), -1).indices  # sorted: a top-k is the first k
        b = lq.topk(max(topk), -1).indices
        for k in topk:
            out[f"top{k}"] = _overlap(a[..., :k], b[..., :k])
    return out
