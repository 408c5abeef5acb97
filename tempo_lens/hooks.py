"""The whole mechanism, as hook lists: logical positions and the isolation mask.

Every function here returns a list of `(hook_name_or_filter, hook_fn)` pairs for
`model.run_with_hooks` / `model.hooks`, so users compose them with their own hooks.

Convention shared by all hooks: a forward over a layout of n tokens feeds the *last* Q
tokens of that layout as queries (Q = n without a KV cache, Q = the new set with one)
and sees all n tokens as keys.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from jaxtyping import Bool, Float
from transformer_lens.hook_points import HookPoint

from tempo_lens.backend import Model, is_bridge
from tempo_lens.errors import TempoError
from tempo_lens.layout import PAD_STEP, Layout, LayoutBatch

HookFn = Callable[[torch.Tensor, HookPoint], torch.Tensor | None]
Hook = tuple[Any, HookFn]


def _check_keys(layout: Layout | LayoutBatch, n_keys: int, where: str) -> None:
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


# Per attention module: (settings it was derived from, angles, table key, perm, sign).
_ROTARY_INFO: weakref.WeakKeyDictionary[Any, tuple] = weakref.WeakKeyDictionary()


def _rotary_info(attn: Any) -> tuple[torch.Tensor, bytes, torch.Tensor, torch.Tensor]:
    """Angles, a table key, and TL's `rotate_every_two` written as `x[..., perm] * sign`
    over the whole head (identity past `rotary_dim`), cached per attention module: hooks
    are rebuilt every generation step and these never change for a loaded model."""
    cfg = attn.cfg
    settings = (cfg.rotary_dim, cfg.d_head, cfg.rotary_base, cfg.rotary_adjacent_pairs)
    hit = _ROTARY_INFO.get(attn)
    if hit is not None and hit[0] == settings:
        return hit[1:]
    angles = _rotary_angles(attn)
    rd = cfg.rotary_dim
    flipped = attn.rotate_every_two(torch.arange(1, rd + 1, dtype=torch.float64))
    perm = torch.cat([flipped.abs().long() - 1, torch.arange(rd, cfg.d_head)])
    sign = torch.cat([flipped.sign(), torch.zeros(cfg.d_head - rd, dtype=torch.float64)])
    info = (angles, angles.numpy().tobytes(), perm, sign)
    _ROTARY_INFO[attn] = (settings, *info)
    return info


def rotate_every_two_parts(
    attn: Any,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """TL's `rotate_every_two` of `attn` over its `rotary_dim` dimensions as (permute,
    sign) on the module's device and dtype: `rotate_every_two(x) == permute(x) * sign`
    exactly (sign is ±1), at a fraction of its clone-and-assign cost. Cached per module
    (asked for on every forward): rebuilt when its table moves to another device or dtype."""
    _, key, perm, sign = _rotary_info(attn)
    dev, dtype = attn.rotary_sin.device, attn.rotary_sin.dtype
    hit = _FLIP_PARTS.get(attn)
    if hit is not None and hit[0] == (key, dev, dtype):
        return hit[1]
    rd = attn.cfg.rotary_dim
    parts = _permuter(perm[:rd], perm[:rd].to(dev)), sign[:rd].to(dev, dtype)
    _FLIP_PARTS[attn] = ((key, dev, dtype), parts)
    return parts


_FLIP_PARTS: weakref.WeakKeyDictionary[Any, tuple] = weakref.WeakKeyDictionary()


def _permuter(perm: torch.Tensor, perm_dev: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """`x -> x[..., perm]` as one concat of contiguous slices when `perm` is a few runs
    (half-split rotary: 2-3 runs), which is several times faster than a gather."""
    p = perm.tolist()
    runs: list[tuple[int, int]] = []
    for i in p:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    if len(runs) > 4:
        return lambda x: x.index_select(-1, perm_dev)
    return lambda x: torch.cat([x[..., a:b] for a, b in runs], dim=-1)


def _block_is_zero(nonzero_cumsum: list[int], start: int, stop: int) -> bool:
    if stop <= start:
        return True
    before = nonzero_cumsum[start - 1] if start > 0 else 0
    return nonzero_cumsum[stop - 1] - before == 0


def _rotary_position_hooks(model: Model, batch: LayoutBatch) -> list[Hook]:
    cfg = model.cfg
    if cfg.use_dynamic_ntk_rope:
        raise TempoError(
            "dynamic-NTK rotary (Qwen-1) rescales its table at run time; "
            "logical positions are not supported for it"
        )
    n = len(batch)
    delta = batch.positions.to(torch.float64) - torch.arange(n, dtype=torch.float64)  # [b, n]
    nonzero = (delta != 0).any(0).cumsum(0).tolist()
    if nonzero[-1] == 0:
        return []
    first_moved = nonzero.index(1)
    rd = cfg.rotary_dim
    tables: dict[bytes, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    hooks: list[Hook] = []
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        angles, key, perm, sign = _rotary_info(attn)
        if key not in tables:  # computed once per distinct table, shared by all layers
            # Full-head tables (cos 1, sin 0 past rotary_dim) with rotate_every_two's signs
            # folded into sin: a hook is then 4 tensor ops, with no clone and no concat.
            # Only columns from the first moved one on are ever read.
            theta = delta[:, first_moved:, None] * angles
            shape = (*theta.shape[:2], cfg.d_head)
            cos_full = torch.ones(shape, dtype=torch.float64)
            sin_full = torch.zeros(shape, dtype=torch.float64)
            cos_full[..., :rd] = theta.cos()
            sin_full[..., :rd] = theta.sin()
            sin_full *= sign
            dev = attn.rotary_sin.device
            tables[key] = (
                cos_full.to(device=dev, dtype=cfg.dtype)[:, :, None, :],
                sin_full.to(device=dev, dtype=cfg.dtype)[:, :, None, :],
                perm.to(dev),
            )
        cos, sin, perm_dev = tables[key]
        flip = _permuter(perm, perm_dev)

        def rotate(x: torch.Tensor, start: int, cos=cos, sin=sin, flip=flip) -> torch.Tensor:
            stop = start + x.shape[1]
            if _block_is_zero(nonzero, start, stop):
                return x
            # Rows before the first moved token keep their rotation: leave them untouched.
            skip = max(0, first_moved - start)
            part = x[:, skip:] if skip else x
            a, b = start + skip - first_moved, stop - first_moved
            # x * cos + rotate_every_two(x) * sin, with rotate_every_two(x) = x[perm] * sign
            rotated = part * cos[:, a:b] + flip(part) * sin[:, a:b]
            return torch.cat([x[:, :skip], rotated], dim=1) if skip else rotated

        def q_hook(q: torch.Tensor, hook: HookPoint, rotate=rotate) -> torch.Tensor:
            return rotate(q, n - q.shape[1])

        def k_hook(k: torch.Tensor, hook: HookPoint, rotate=rotate) -> torch.Tensor:
            _check_keys(batch, k.shape[1], hook.name or "hook_rot_k")
            return rotate(k, 0)

        hooks.append((f"blocks.{layer}.attn.hook_rot_q", q_hook))
        hooks.append((f"blocks.{layer}.attn.hook_rot_k", k_hook))
    return hooks


def _learned_position_hooks(model: Model, batch: LayoutBatch) -> list[Hook]:
    positions = batch.positions
    if positions.is_floating_point():
        if not torch.equal(positions, positions.round()):
            raise TempoError(
                "fractional positions need a rotary model; this one has learned absolute positions"
            )
        positions = positions.long()
    if int(positions.max()) >= model.cfg.n_ctx or int(positions.min()) < 0:
        raise TempoError(f"logical positions must lie in [0, {model.cfg.n_ctx}) for this model")
    n = len(batch)
    if torch.equal(positions, torch.arange(n).expand_as(positions)):
        return []
    pos_on_device = positions.to(model.W_pos.device)

    def pos_hook(pos_embed: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        q = pos_embed.shape[1]
        return model.W_pos[pos_on_device[:, n - q :]].expand_as(pos_embed)

    return [("hook_pos_embed", pos_hook)]


def fractional_positions(model: Model) -> bool:
    """Whether the model takes fractional logical positions (rotary models do; learned
    position tables only have whole positions)."""
    return model.cfg.positional_embedding_type == "rotary"


def position_hooks(model: Model, layout: Layout | LayoutBatch) -> list[Hook]:
    """Hooks that put every token at its logical position (per row for a LayoutBatch).

    Rotary models: TL rotates q and k at physical positions, then fires `hook_rot_q` /
    `hook_rot_k`; rotations compose (R(a)R(b) = R(a+b)), so rotating by
    `logical - physical` there yields the logical rotation. Keys are re-rotated over the
    whole (cached) key length on every call, so the key hook covers all n keys.
    Learned absolute positions: `hook_pos_embed` is replaced by `W_pos[logical]`.
    Returns [] when every token already sits at its physical position.

    A `TransformerBridge` takes logical positions as Hugging Face `position_ids` instead
    (its cache stores rotated keys, so no hook could move them): use `tempo_lens.forward`.
    """
    if is_bridge(model):
        raise TempoError(
            "a TransformerBridge takes logical positions as position_ids, not hooks; "
            "replay the layout with tempo_lens.forward(model, layout, fwd_hooks=...)"
        )
    batch = LayoutBatch.of(layout)
    kind = model.cfg.positional_embedding_type
    if kind == "rotary":
        return _rotary_position_hooks(model, batch)
    if kind == "standard":
        return _learned_position_hooks(model, batch)
    raise TempoError(
        f"positional embedding type {kind!r} is not supported; "
        "use a rotary or learned-absolute-position model"
    )


# ---------------------------------------------------------------------------------------
# Isolation
# ---------------------------------------------------------------------------------------

ATTN_SCORES = "attn.hook_attn_scores"
Bias = float | Float[torch.Tensor, "batch heads"]


def check_hook_points(model: Model, hooks: Iterable[Hook]) -> None:
    """Every hook named by a string must name a hook point of `model`."""
    for name, _ in hooks:
        if isinstance(name, str) and name not in model.hook_dict:
            raise TempoError(
                f"hook point {name!r} does not exist in this model ({model.cfg.n_layers} layers,"
                f" {model.cfg.n_heads} heads); check the layer and hook name"
            )


def _indices(values: Any, what: str, limit: int | None) -> list[int]:
    """Layer or head indices: integers from 0 (negative ones are refused, not counted from
    the end), below `limit` when it is known."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TempoError(f"{what} takes a list of integer indices, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TempoError(f"{what}: indices are integers, got {v!r}")
        if v < 0:
            raise TempoError(f"{what}: index {v} is negative; indices count from 0")
        if limit is not None and v >= limit:
            raise TempoError(f"{what}: index {v} does not exist; this model has {limit}")
        out.append(v)
    return out


def batch_hidden(
    layout: Layout | LayoutBatch, isolate: bool, n_query: int | None = None
) -> Bool[torch.Tensor, "batch q n"]:
    """`[b, q, k]` True where key k is hidden from query q: pad keys (from every query
    but the pad itself) and, when `isolate`, a query's siblings. Only the last `n_query`
    query rows (default all): O(q n) per generation step, not O(n^2)."""
    batch = LayoutBatch.of(layout)
    n = len(batch)
    q = n if n_query is None else n_query
    cols = torch.arange(n)
    diag = cols[n - q :, None] == cols[None, :]
    step = batch.step
    hidden = (step == PAD_STEP)[:, None, :] & ~diag
    if isolate:
        s_q = step[:, n - q :, None]
        hidden |= (s_q == step[:, None, :]) & (s_q >= 0) & ~diag
    return hidden


def mask_hooks(
    layout: Layout | LayoutBatch,
    hidden: Bool[torch.Tensor, "q n"] | Bool[torch.Tensor, "batch q n"],
    *,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | Mapping[int, Iterable[int]] | None = None,
    bias: Bias = -math.inf,
    model: Model | None = None,
) -> list[Hook]:
    """THE mask builder: add `bias` at `hook_attn_scores` to every (query, key) score
    marked in `hidden`. Isolation, pads, pruning and every masking ablation are this one
    hook with a different `hidden`.

    `hidden` `[q, n]` or `[batch, q, n]`: its rows are the last q query rows of the layout
    (q = n for a whole replay); a forward whose query block is shorter uses its last rows.
    `layers`: which layers (default all); `heads`: which query heads, one collection for
    every chosen layer or `{layer: heads}`; `bias`: a float (`-inf` hides, 0 does nothing,
    finite values damp) or a `[batch, heads]` tensor of per-row, per-head biases. The
    additive mask is built once per query block and shared by all layers. Indices count
    from 0; pass `model` to have them range-checked at once (otherwise a head index is
    checked when the hook runs, a layer index by `forward`)."""
    if isinstance(bias, bool) or (
        not isinstance(bias, torch.Tensor)
        and (not isinstance(bias, int | float) or math.isnan(bias))
    ):
        raise TempoError(f"bias must be a number (-inf: full isolation), got {bias!r}")
    n_layers = model.cfg.n_layers if model is not None else None
    n_heads = model.cfg.n_heads if model is not None else None
    n = len(layout)
    if hidden.ndim == 2:
        hidden = hidden[None]
    if hidden.ndim != 3 or hidden.shape[-1] != n:
        raise TempoError(
            f"hidden must be [q, {n}] or [batch, q, {n}] for this layout, got {tuple(hidden.shape)}"
        )
    per_layer_heads: Mapping[int, Iterable[int]] | None = None
    if isinstance(heads, Mapping):
        _indices(list(heads), "heads (layer keys)", n_layers)
        per_layer_heads = {k: _indices(v, "heads", n_heads) for k, v in heads.items()}
        if layers is None:
            layers = sorted(heads)
    elif heads is not None:
        heads = _indices(heads, "heads", n_heads)
    if layers is not None:
        layers = _indices(layers, "layers", n_layers)
        if per_layer_heads is not None and (missing := set(layers) - set(per_layer_heads)):
            raise TempoError(f"heads: no heads given for layer {min(missing)}")
    if layers is None and heads is not None:
        raise TempoError("a head schedule needs layers: pass layers=... or heads={layer: heads}")
    masks: dict[tuple, torch.Tensor | None] = {}

    def mask_for(scores: torch.Tensor, head_sel: tuple[int, ...] | None) -> torch.Tensor | None:
        q, k = scores.shape[-2:]
        key = (q, head_sel, scores.device, scores.dtype)
        if key not in masks:
            if q > hidden.shape[1]:
                raise TempoError(
                    f"the forward has {q} queries but hidden covers {hidden.shape[1]} rows; "
                    "build hidden for the whole query block"
                )
            block = hidden[:, hidden.shape[1] - q :]
            if not bool(block.any()):
                masks[key] = None
            else:
                b = torch.as_tensor(bias, dtype=torch.float64)
                b = b.to(scores.dtype)[:, :, None, None] if b.ndim else b.to(scores.dtype)
                m = torch.where(block[:, None], b, torch.zeros((), dtype=scores.dtype))
                if head_sel is not None:
                    keep = torch.zeros(scores.shape[1], dtype=torch.bool)
                    keep[list(head_sel)] = True
                    m = torch.where(keep[None, :, None, None], m, 0.0)
                masks[key] = m.to(scores.device)
        return masks[key]

    def make_hook(head_sel: tuple[int, ...] | None) -> HookFn:
        def hook(scores: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            _check_keys(layout, scores.shape[-1], hook.name or ATTN_SCORES)
            if head_sel and max(head_sel) >= scores.shape[1]:
                raise TempoError(
                    f"heads: index {max(head_sel)} does not exist; this model has "
                    f"{scores.shape[1]} heads"
                )
            m = mask_for(scores, head_sel)
            return scores if m is None else scores + m

        return hook

    if layers is None:
        return [(lambda name: name.endswith(ATTN_SCORES), make_hook(None))]
    hooks: list[Hook] = []
    shared = None if heads is None or per_layer_heads else tuple(sorted(heads))  # type: ignore[arg-type]
    for layer in layers:
        sel = tuple(sorted(per_layer_heads[layer])) if per_layer_heads else shared
        hooks.append((f"blocks.{layer}.{ATTN_SCORES}", make_hook(sel)))
    return hooks


def isolation_hooks(
    layout: Layout | LayoutBatch,
    *,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | Mapping[int, Iterable[int]] | None = None,
    bias: Bias = -math.inf,
    model: Model | None = None,
) -> list[Hook]:
    """Hooks that hide each set member from its siblings at `hook_attn_scores`
    (`mask_hooks` with hidden = same set; pads of a LayoutBatch stay hidden everywhere).

    `layers`: which layers (default all); `heads`: which query heads — one collection for
    every chosen layer, or `{layer: heads}`; `bias`: what is added to same-set scores
    (`-inf` is full isolation, 0 is visible, finite values are partial isolation)."""
    batch = LayoutBatch.of(layout)
    pads = batch_hidden(batch, isolate=False)
    everywhere = layers is None and heads is None and _is_neg_inf(bias)
    if everywhere:
        return mask_hooks(layout, batch_hidden(batch, isolate=True), model=model)
    same = batch_hidden(batch, isolate=True) & ~pads
    hooks = mask_hooks(layout, same, layers=layers, heads=heads, bias=bias, model=model)
    return hooks + (mask_hooks(layout, pads) if bool(pads.any()) else [])


def _is_neg_inf(bias: Bias) -> bool:
    return isinstance(bias, float | int) and bias == -math.inf


# ---------------------------------------------------------------------------------------
# Other masks, all on `mask_hooks`: each builds a `hidden` matrix, nothing else
# ---------------------------------------------------------------------------------------


def sibling_window_hooks(
    layout: Layout, k: int, *, layers: Iterable[int] | None = None
) -> list[Hook]:
    """Each member sees only its `k` physically nearest siblings (k=0: isolated; k at
    least the largest set size: visible). Attention is causal, so these are the k
    siblings just before it."""
    return mask_hooks(layout, sibling_window_hidden(layout, k), layers=layers)


def sibling_window_hidden(layout: Layout, k: int) -> Bool[torch.Tensor, "n n"]:
    """`[q, k]` True where key k is a sibling of q more than `k` places away."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise TempoError(f"the sibling window k must be an integer >= 0, got {k!r}")
    idx = torch.arange(len(layout))
    return layout.same_set() & ((idx[:, None] - idx[None, :]).abs() > k)


def branch_hidden(layout: Layout) -> Bool[torch.Tensor, "n n"]:
    """`[q, k]` True where key k is a non-top member of an earlier set than q's: the
    pairs that "isolation always" (every branch stays on its own) additionally hides."""
    step = layout.step
    first = torch.zeros(len(layout), dtype=torch.bool)
    for s in range(layout.n_steps):
        first[layout.set_slice(s).start] = True
    non_top = (step >= 0) & ~first
    return (step[:, None] > step[None, :]) & non_top[None, :]


def isolate_always_hooks(layout: Layout) -> list[Hook]:
    """Isolation that does not end once a set has been read: siblings never see each
    other AND later tokens see only each set's top member (the others become dead
    branches). Compare with ordinary isolation, which only applies while the set is read:
    later tokens see every member."""
    return mask_hooks(layout, layout.same_set() | branch_hidden(layout))


def later_hidden(layout: Layout, keys: Bool[torch.Tensor, " n"]) -> Bool[torch.Tensor, "n n"]:
    """`[q, k]` True where key k is one of `keys` and q belongs to a later step than k:
    those keys hidden from every later set (their own siblings untouched)."""
    if keys.shape != (len(layout),):
        raise TempoError(f"keys must be a [{len(layout)}] bool mask, got {tuple(keys.shape)}")
    later = layout.step[:, None] > layout.step[None, :]
    return later & keys.bool()[None, :]


def pruning_hooks(layout: Layout, pruned: Bool[torch.Tensor, " n"]) -> list[Hook]:
    """Hide `pruned` tokens from every later set (their own siblings are untouched):
    the replay a generation would have seen had those members been pruned."""
    return mask_hooks(layout, later_hidden(layout, pruned))


def schedule_hooks(
    layout: Layout | LayoutBatch,
    hidden: Bool[torch.Tensor, "q n"] | Bool[torch.Tensor, "batch q n"],
    bias: Float[torch.Tensor, "batch n_layers n_heads"],
    layers: Iterable[int] | None = None,
) -> list[Hook]:
    """A batch of mask schedules in one forward: batch row b adds `bias[b, L, h]` to the
    `hidden` scores of head h at layer L (0 = nothing, -inf = hidden, finite = damped).
    `mask_hooks` once per layer (of `layers`, default all) whose biases are not all 0."""
    hooks: list[Hook] = []
    for layer in range(bias.shape[1]) if layers is None else layers:
        if not bool((bias[:, layer] == 0).all()):
            hooks += mask_hooks(layout, hidden, layers=[layer], bias=bias[:, layer])
    return hooks


def same_set_bias_hooks(
    layout: Layout | LayoutBatch, bias: Float[torch.Tensor, "batch n_layers n_heads"]
) -> list[Hook]:
    """A batch of isolation schedules in one forward: batch element b adds
    `bias[b, L, h]` to same-set scores of head h at layer L (0 = visible, -inf =
    isolated, finite = partial). Run a Layout's tokens repeated `batch` times, or a
    LayoutBatch with one row per schedule (pads stay hidden by the mechanism's mask)."""
    same = batch_hidden(layout, isolate=True) & ~batch_hidden(layout, isolate=False)
    return schedule_hooks(layout, same, bias)
