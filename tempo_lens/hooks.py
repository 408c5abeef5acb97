"""The whole mechanism, as hook lists: logical positions and the isolation mask.

Every function here returns a list of `(hook_name_or_filter, hook_fn)` pairs for
`model.run_with_hooks` / `model.hooks`, so users compose them with their own hooks.

Convention shared by all hooks: a forward over a layout of n tokens feeds the *last* Q
tokens of that layout as queries (Q = n without a KV cache, Q = the new set with one)
and sees all n tokens as keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from tempo_lens.errors import TempoError
from tempo_lens.layout import Layout

HookFn = Callable[[torch.Tensor, HookPoint], torch.Tensor | None]
Hook = tuple[Any, HookFn]


def _check_keys(layout: Layout, n_keys: int, where: str) -> None:
    if n_keys != len(layout):
        raise TempoError(
            f"{where}: the forward saw {n_keys} keys but the layout has {len(layout)} "
            "tokens; build the hooks from the layout being run"
        )


# ---------------------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------------------


def _rotary_angles(attn: Any) -> torch.Tensor:
    """Radians per unit position for each rotary dimension, read off TL's own sin/cos
    table builder, so partial rotary, NTK-by-parts and YaRN frequencies stay exact."""
    base = attn._rotary_base() if hasattr(attn, "_rotary_base") else attn.cfg.rotary_base
    sin, cos = attn.calculate_sin_cos_rotary(attn.cfg.rotary_dim, 2, base=base, dtype=torch.float64)
    return torch.atan2(sin[1], cos[1])


def _block_is_zero(nonzero_cumsum: list[int], start: int, stop: int) -> bool:
    if stop <= start:
        return True
    before = nonzero_cumsum[start - 1] if start > 0 else 0
    return nonzero_cumsum[stop - 1] - before == 0


def _rotary_position_hooks(model: HookedTransformer, layout: Layout) -> list[Hook]:
    cfg = model.cfg
    if cfg.use_dynamic_ntk_rope:
        raise TempoError(
            "dynamic-NTK rotary (Qwen-1) rescales its table at run time; "
            "logical positions are not supported for it"
        )
    n = len(layout)
    delta = layout.positions.to(torch.float64) - torch.arange(n, dtype=torch.float64)
    nonzero = (delta != 0).cumsum(0).tolist()
    if nonzero[-1] == 0:
        return []
    rd = cfg.rotary_dim
    tables: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks: list[Hook] = []
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        angles = _rotary_angles(attn)
        key = angles.numpy().tobytes()
        if key not in tables:  # computed once per distinct table, shared by all layers
            theta = delta[:, None] * angles[None, :]
            dev = attn.rotary_sin.device
            tables[key] = (
                theta.cos().to(device=dev, dtype=cfg.dtype)[None, :, None, :],
                theta.sin().to(device=dev, dtype=cfg.dtype)[None, :, None, :],
            )
        cos, sin = tables[key]

        def rotate(x: torch.Tensor, start: int, cos=cos, sin=sin, attn=attn) -> torch.Tensor:
            stop = start + x.shape[1]
            if _block_is_zero(nonzero, start, stop):
                return x
            x_rot = x[..., :rd]
            rotated = x_rot * cos[:, start:stop] + attn.rotate_every_two(x_rot) * sin[:, start:stop]
            return torch.cat([rotated, x[..., rd:]], dim=-1) if rd < x.shape[-1] else rotated

        def q_hook(q: torch.Tensor, hook: HookPoint, rotate=rotate) -> torch.Tensor:
            return rotate(q, n - q.shape[1])

        def k_hook(k: torch.Tensor, hook: HookPoint, rotate=rotate) -> torch.Tensor:
            _check_keys(layout, k.shape[1], hook.name or "hook_rot_k")
            return rotate(k, 0)

        hooks.append((f"blocks.{layer}.attn.hook_rot_q", q_hook))
        hooks.append((f"blocks.{layer}.attn.hook_rot_k", k_hook))
    return hooks


def _learned_position_hooks(model: HookedTransformer, layout: Layout) -> list[Hook]:
    positions = layout.positions
    if positions.is_floating_point():
        if not torch.equal(positions, positions.round()):
            raise TempoError(
                "fractional positions need a rotary model; this one has learned absolute positions"
            )
        positions = positions.long()
    if int(positions.max()) >= model.cfg.n_ctx or int(positions.min()) < 0:
        raise TempoError(f"logical positions must lie in [0, {model.cfg.n_ctx}) for this model")
    if torch.equal(positions, torch.arange(len(layout))):
        return []
    n = len(layout)
    pos_on_device = positions.to(model.W_pos.device)

    def pos_hook(pos_embed: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        q = pos_embed.shape[1]
        return model.W_pos[pos_on_device[n - q :]].expand_as(pos_embed)

    return [("hook_pos_embed", pos_hook)]


def position_hooks(model: HookedTransformer, layout: Layout) -> list[Hook]:
    """Hooks that put every token at its logical position.

    Rotary models: TL rotates q and k at physical positions, then fires `hook_rot_q` /
    `hook_rot_k`; rotations compose (R(a)R(b) = R(a+b)), so rotating by
    `logical - physical` there yields the logical rotation. Keys are re-rotated over the
    whole (cached) key length on every call, so the key hook covers all n keys.
    Learned absolute positions: `hook_pos_embed` is replaced by `W_pos[logical]`.
    Returns [] when every token already sits at its physical position.
    """
    kind = model.cfg.positional_embedding_type
    if kind == "rotary":
        return _rotary_position_hooks(model, layout)
    if kind == "standard":
        return _learned_position_hooks(model, layout)
    raise TempoError(
        f"positional embedding type {kind!r} is not supported; "
        "use a rotary or learned-absolute-position model"
    )


# ---------------------------------------------------------------------------------------
# Isolation
# ---------------------------------------------------------------------------------------

ATTN_SCORES = "attn.hook_attn_scores"


def isolation_hooks(
    layout: Layout,
    *,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | Mapping[int, Iterable[int]] | None = None,
    bias: float = -math.inf,
) -> list[Hook]:
    """Hooks that hide each set member from its siblings at `hook_attn_scores`.

    `layers`: which layers (default all); `heads`: which query heads — one collection for
    every chosen layer, or `{layer: heads}`; `bias`: what is added to same-set scores
    (`-inf` is full isolation, 0 is visible, finite values are partial isolation). The
    additive mask is built once per (query block, key length) and shared by all layers.
    """
    same = layout.same_set()
    per_layer_heads: Mapping[int, Iterable[int]] | None = None
    if isinstance(heads, Mapping):
        per_layer_heads = heads
        if layers is None:
            layers = sorted(heads)
    masks: dict[tuple, torch.Tensor | None] = {}

    def mask_for(scores: torch.Tensor, head_sel: tuple[int, ...] | None) -> torch.Tensor | None:
        q, k = scores.shape[-2:]
        key = (q, k, head_sel, scores.device, scores.dtype)
        if key not in masks:
            block = same[k - q : k, :k]
            if not bool(block.any()):
                masks[key] = None
            else:
                m = torch.zeros(q, k, dtype=scores.dtype)
                m[block] = bias
                if head_sel is None:
                    m = m[None]
                else:
                    full = torch.zeros(scores.shape[1], q, k, dtype=scores.dtype)
                    full[list(head_sel)] = m
                    m = full
                masks[key] = m.to(scores.device)
        return masks[key]

    def make_hook(head_sel: tuple[int, ...] | None) -> HookFn:
        def hook(scores: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            _check_keys(layout, scores.shape[-1], hook.name or ATTN_SCORES)
            m = mask_for(scores, head_sel)
            return scores if m is None else scores + m

        return hook

    if layers is None and heads is None:
        return [(lambda name: name.endswith(ATTN_SCORES), make_hook(None))]
    if layers is None:
        raise TempoError("a head schedule needs layers: pass layers=... or heads={layer: heads}")
    hooks: list[Hook] = []
    shared = None if heads is None or per_layer_heads else tuple(sorted(heads))  # type: ignore[arg-type]
    for layer in layers:
        sel = tuple(sorted(per_layer_heads[layer])) if per_layer_heads else shared
        hooks.append((f"blocks.{layer}.{ATTN_SCORES}", make_hook(sel)))
    return hooks
