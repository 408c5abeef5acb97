"""Distances between next-token distributions. Inputs are logits `[..., vocab]`;
every function reduces over the last axis."""

from __future__ import annotations

import torch


def _logp(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), -1)


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) in nats."""
    lp, lq = _logp(p_logits), _logp(q_logits)
    return (lp.exp() * (lp - lq)).sum(-1)


def js(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in nats (bounded by ln 2)."""
    lp, lq = _logp(p_logits), _logp(q_logits)
    lm = torch.logaddexp(lp, lq) - torch.log(torch.tensor(2.0, dtype=lp.dtype))
    return 0.5 * ((lp.exp() * (lp - lm)).sum(-1) + (lq.exp() * (lq - lm)).sum(-1))


def cosine(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the two probability vectors."""
    p, q = _logp(p_logits).exp(), _logp(q_logits).exp()
    return torch.nn.functional.cosine_similarity(p, q, dim=-1)


def topk_overlap(p_logits: torch.Tensor, q_logits: torch.Tensor, k: int) -> torch.Tensor:
    """|top-k(p) ∩ top-k(q)| / k."""
    a = p_logits.topk(k, -1).indices
    b = q_logits.topk(k, -1).indices
    hits = (a[..., :, None] == b[..., None, :]).any(-1).sum(-1)
    return hits.double() / k
