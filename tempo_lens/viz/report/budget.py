"""The report's size budget: which attention layers and heads fit, and their encoding.

Attention is stored as the lower triangle of each head's pattern (causal: the upper one
is zero), quantised to 16 bits (steps of 1.5e-5): 2.7 bytes per visible query/key pair
once base64-encoded.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tempo_lens.errors import TempoError

MAX_LAYERS: int | None = None  # no cap: the size budget decides
BUDGET_MB = 14.0


def encoded_head_bytes(n_tokens: int) -> int:
    """Bytes one head's pattern takes in the report: base64 of n(n+1)/2 uint16 values."""
    return 4 * math.ceil(n_tokens * (n_tokens + 1) // 2 * 2 / 3)


def spread(items: Sequence[int], k: int) -> list[int]:
    """`k` items evenly spread over `items`, first and last included."""
    items = list(items)
    if k >= len(items):
        return items
    if k <= 1:
        return items[:k]
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


@dataclass
class AttentionPlan:
    layers: list[int]
    heads: list[int]
    note: str = ""


def plan_attention(
    n_tokens: int,
    n_heads: int,
    layers: Sequence[int],
    budget_bytes: int,
    max_layers: int | None = MAX_LAYERS,
) -> AttentionPlan:
    """Which layers (and heads) fit: at most `max_layers` layers, spread over the ones
    asked for; fewer, then fewer heads of one layer, when the bytes would pass the budget."""
    wanted = spread(layers, max_layers) if max_layers else list(layers)
    per_head = encoded_head_bytes(n_tokens)
    fit_layers = max(budget_bytes, 0) // (per_head * n_heads)
    notes = []
    if len(wanted) < len(layers):
        notes.append(f"{len(wanted)} of {len(layers)} layers shown (max_layers {max_layers})")
    if fit_layers >= len(wanted):
        return AttentionPlan(wanted, list(range(n_heads)), "; ".join(notes))
    mb = per_head * n_heads / 1e6
    if fit_layers >= 1:
        kept = spread(wanted, int(fit_layers))
        notes.append(
            f"{len(kept)} of {len(wanted)} layers fit the size budget "
            f"({n_tokens} tokens: {mb:.1f} MB per layer)"
        )
        return AttentionPlan(kept, list(range(n_heads)), "; ".join(notes))
    fit_heads = max(budget_bytes, 0) // per_head
    if fit_heads >= 1:
        notes.append(
            f"only heads 0-{fit_heads - 1} of layer {wanted[0]} fit the size budget "
            f"({n_tokens} tokens: {per_head / 1e6:.1f} MB per head)"
        )
        return AttentionPlan(wanted[:1], list(range(int(fit_heads))), "; ".join(notes))
    return AttentionPlan(
        [],
        [],
        f"no attention: one head of {n_tokens} tokens takes {per_head / 1e6:.1f} MB, past "
        "the size budget (raise --budget-mb, or use attention_view in a notebook)",
    )


def encode_pattern(pattern: torch.Tensor) -> dict[str, Any]:
    """`[heads, n, n]` → lower triangle per head, uint16 little-endian, base64."""
    n = pattern.shape[-1]
    if pattern.triu(1).abs().max() > 1e-6:
        raise TempoError("an attention pattern attends to later tokens; it is not causal")
    rows, cols = torch.tril_indices(n, n)
    lower = pattern[:, rows, cols].clamp(0, 1).numpy()
    q = np.round(lower * 65535).astype("<u2")
    return {"n": n, "data": base64.b64encode(q.tobytes()).decode("ascii")}
