"""Position-sharing ablations: the same tokens and the same explicit mask, other
logical positions. Each builder returns a new Layout; replay it with `tempo_lens.forward`.

The original TEMPO's position-gap results came from a missing mask; here every variant
keeps the layout's causal + isolation mask, so only positions change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tempo_lens import Layout, TempoError, forward
from tempo_lens.analysis.ablations_patching import (
    Source,
    layout_and_weights,
    row_logprobs,
)
from tempo_lens.analysis.metrics import kl
from tempo_lens.backend import Model


def offset_layout(layout: Layout, delta: float) -> Layout:
    """Member j of each set at p + j·δ instead of all at p; the next set starts one past
    the last member. δ = 0 is TEMPO's shared position, δ = 1 fully sequential positions,
    fractional δ (rotary models only) lies in between."""
    positions = layout.positions.to(torch.float64).clone()
    shift = 0.0
    for s in range(layout.n_steps):
        sl = layout.set_slice(s)
        k = sl.stop - sl.start
        positions[sl] = positions[sl] + shift + delta * torch.arange(k, dtype=torch.float64)
        shift += delta * (k - 1)
    return _with_positions(layout, positions)


def sequential_layout(layout: Layout) -> Layout:
    """Every token at its physical position (no sharing at all)."""
    return offset_layout(layout, 1.0)


def gap_layout(layout: Layout, gap: float) -> Layout:
    """Every generated token `gap` positions further from the prompt."""
    positions = layout.positions.to(torch.float64) + gap * (layout.step >= 0)
    return _with_positions(layout, positions)


def _with_positions(layout: Layout, positions: torch.Tensor) -> Layout:
    if bool((positions == positions.round()).all()):
        positions = positions.long()
    elif not layout.positions.is_floating_point():
        positions = positions.float()
    return Layout(layout.tokens, positions, layout.step)


def position_ablation(
    model: Model,
    source: Source,
    variants: dict[str, Layout],
    *,
    isolate: bool = True,
) -> dict[str, dict[str, float]]:
    """Replay each variant layout (same tokens, same mask, other positions) and compare
    with the original positions: mean KL(original || variant) over member rows and
    next-step mixtures, and the share of member rows whose top-1 token is unchanged."""
    layout, weights = layout_and_weights(source)
    for name, variant in variants.items():
        if not torch.equal(variant.tokens, layout.tokens):
            raise TempoError(f"variant {name!r} has other tokens; only positions may change")
    # the original and every variant in batched replays (split under forward's budget)
    replays = forward(model, [layout, *variants.values()], isolate=isolate)[0]
    ref = row_logprobs(replays[0][0], layout, weights)
    out: dict[str, dict[str, float]] = {}
    for name, logits in zip(variants, replays[1:], strict=True):
        m, x = row_logprobs(logits[0], layout, weights)
        out[name] = {
            "kl_members": float(kl(ref[0], m).mean()) if m.numel() else 0.0,
            "kl_next": float(kl(ref[1], x).mean()) if x.numel() else 0.0,
            "top1_agree": float((ref[0].argmax(-1) == m.argmax(-1)).double().mean())
            if m.numel()
            else 1.0,
        }
    return out


def standard_variants(
    layout: Layout, deltas: Sequence[float], gaps: Sequence[float], rotary: bool
) -> dict[str, Layout]:
    """Named variants: `offset δ` for each δ (fractional ones only if `rotary`),
    `sequential`, and `gap g` for each g."""
    out: dict[str, Layout] = {}
    for d in deltas:
        if rotary or float(d).is_integer():
            out[f"offset {d:g}"] = offset_layout(layout, d)
    out["sequential"] = sequential_layout(layout)
    for g in gaps:
        out[f"gap {g:g}"] = gap_layout(layout, g)
    return out
