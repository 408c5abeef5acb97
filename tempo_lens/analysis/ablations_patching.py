"""Replays that change the mechanism and measure what moved: layer/head isolation
patching, activation patching between modes, partial isolation.

Every measurement compares distributions row by row on the same layout: each generated
token's own next-token distribution ("members") and each step's next-set distribution
(the probability-weighted mixture of its members' rows, docs/design.md's `mixture`, "next").
KL(reference || variant) in nats, averaged over rows; the references are the fully
isolated and the fully visible replays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformer_lens.patching import layer_pos_patch_setter

from tempo_lens import Layout, TempoError, TempoRun, forward, isolation_hooks
from tempo_lens.analysis.ablations_hooks import same_set_bias_hooks
from tempo_lens.analysis.metrics import kl
from tempo_lens.backend import Model
from tempo_lens.generate import mechanism_hooks
from tempo_lens.hooks import Hook
from tempo_lens.layout import LayoutBatch

Source = TempoRun | Layout


def layout_and_weights(source: Source) -> tuple[Layout, torch.Tensor]:
    """The layout and each token's mixture weight (its selection probability; 1 for a
    bare Layout, i.e. uniform over a set)."""
    if isinstance(source, TempoRun):
        w = torch.ones(len(source.layout), dtype=torch.float64)
        for s, ps in enumerate(source.steps):
            w[source.layout.set_slice(s)] = torch.tensor(ps.probs, dtype=torch.float64)
        return source.layout, w
    return source, torch.ones(len(source), dtype=torch.float64)


def row_logprobs(
    logits: torch.Tensor, layout: Layout, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(member rows `[m, vocab]`, next-step mixtures `[steps, vocab]`) as log-probs."""
    logp = torch.log_softmax(logits.double(), -1)
    members = logp[layout.step >= 0]
    mixes = []
    for s in range(layout.n_steps):
        sl = layout.set_slice(s)
        w = weights[sl] / weights[sl].sum()
        mixes.append(torch.logsumexp(logp[sl] + w.log().to(logp.device)[:, None], 0))
    nxt = torch.stack(mixes) if mixes else logp[:0]
    return members, nxt


@dataclass
class Distances:
    """Mean KL(reference || variant) to the isolated and visible replays."""

    kl_iso_members: float
    kl_vis_members: float
    kl_iso_next: float
    kl_vis_next: float


class _References:
    """The isolated and visible replays of one layout, reduced to comparable rows, with
    their residual streams (so replays that agree with one of them up to layer L can
    start there). `_References.of(model, sources)` builds many in two batched forwards."""

    def __init__(
        self, source: Source, iso: tuple[torch.Tensor, Any], vis: tuple[torch.Tensor, Any]
    ):
        self.layout, self.weights = layout_and_weights(source)
        (iso_logits, self.iso_cache), (vis_logits, self.vis_cache) = iso, vis
        self.iso_logits, self.vis_logits = iso_logits[0], vis_logits[0]
        self.iso = row_logprobs(self.iso_logits, self.layout, self.weights)
        self.vis = row_logprobs(self.vis_logits, self.layout, self.weights)

    @classmethod
    def of(cls, model: Model, sources: Sequence[Source]) -> list[_References]:
        layouts = [layout_and_weights(s)[0] for s in sources]
        resid = ["hook_resid_pre"]
        iso_logits, iso_caches = forward(model, layouts, isolate=True, cache=resid)
        vis_logits, vis_caches = forward(model, layouts, isolate=False, cache=resid)
        return [
            cls(s, (il, ic), (vl, vc))
            for s, il, ic, vl, vc in zip(
                sources, iso_logits, iso_caches, vis_logits, vis_caches, strict=True
            )
        ]

    def distances(self, logits: torch.Tensor) -> Distances:
        m, x = row_logprobs(logits, self.layout, self.weights)
        mean = lambda t: float(t.mean()) if t.numel() else 0.0  # noqa: E731
        return Distances(
            mean(kl(self.iso[0], m)),
            mean(kl(self.vis[0], m)),
            mean(kl(self.iso[1], x)),
            mean(kl(self.vis[1], x)),
        )

    def baseline(self) -> Distances:
        """The isolated replay measured against both references (KL(vis || iso))."""
        return self.distances(self.iso_logits)

    def resid(self, isolated: bool, layer: int) -> torch.Tensor:
        cache = self.iso_cache if isolated else self.vis_cache
        return cache[f"blocks.{layer}.hook_resid_pre"]


def replay_batch(
    model: Model,
    layout: Layout | LayoutBatch,
    batch: int,
    fwd_hooks: Sequence[Hook],
    *,
    start_at_layer: int | None = None,
    resid: torch.Tensor | None = None,
) -> torch.Tensor:
    """One forward of the layout repeated `batch` times (or of a LayoutBatch of `batch`
    rows, each at its own positions, pads hidden), positions applied, with `fwd_hooks`
    (which decide isolation per batch element); logits `[batch, n, vocab]`.
    With `start_at_layer`, `resid` `[batch, n, d_model]` is the residual stream entering
    that layer (the layers before it are skipped)."""
    grid = LayoutBatch.of(layout)
    tokens = grid.tokens.expand(batch, -1).to(model.cfg.device)
    hooks = mechanism_hooks(model, grid, isolate=False) + list(fwd_hooks)
    mask = torch.ones_like(tokens)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        if start_at_layer is None or start_at_layer == 0:
            return model(tokens, attention_mask=mask)
        return model(resid, start_at_layer=start_at_layer, attention_mask=mask)


def _divergence(row: torch.Tensor, value: float) -> int:
    """First layer at which schedule `row` [layers, heads] is not all `value`."""
    differs = (row != value).any(-1).nonzero()
    return int(differs[0]) if differs.numel() else row.shape[0]


def _padded(rows: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """`[1, n_b, d]` tensors stacked into `[batch, n, d]` (zeros in the pad slots)."""
    out = rows[0].new_zeros(len(rows), n, rows[0].shape[-1])
    for b, r in enumerate(rows):
        out[b, : r.shape[1]] = r[0]
    return out


def _run_schedules(
    model: Model, refs: Sequence[_References], bias: torch.Tensor, batch_size: int
) -> list[list[Distances]]:
    """Replay every schedule row of `bias` [rows, layers, heads] on every reference's
    layout: per reference, a list over rows. A row equal to the isolated (all -inf) or
    visible (all 0) schedule up to layer L starts at L from that replay's residual
    stream; (layout, row) pairs are batched by start layer, layouts of different lengths
    in one padded forward."""
    starts = []
    for row in bias:
        d_iso, d_vis = _divergence(row, -math.inf), _divergence(row, 0.0)
        starts.append((min(max(d_iso, d_vis), bias.shape[1] - 1), d_iso >= d_vis))
    items = [(r, i) for r in range(len(refs)) for i in range(bias.shape[0])]
    items.sort(key=lambda item: starts[item[1]][0])
    out: dict[tuple[int, int], Distances] = {}
    for begin in range(0, len(items), batch_size):
        chunk = items[begin : begin + batch_size]
        start = starts[chunk[0][1]][0]  # the chunk's earliest; later rows agree up to it
        grid = LayoutBatch.of([refs[r].layout for r, _ in chunk])
        resid = _padded([refs[r].resid(starts[i][1], start) for r, i in chunk], len(grid))
        hooks = same_set_bias_hooks(grid, bias[[i for _, i in chunk]])
        logits = replay_batch(model, grid, len(chunk), hooks, start_at_layer=start, resid=resid)
        for b, (r, i) in enumerate(chunk):
            out[(r, i)] = refs[r].distances(logits[b, grid.real_columns(b)])
    return [[out[(r, i)] for i in range(bias.shape[0])] for r in range(len(refs))]


# ---------------------------------------------------------------------------------------
# Layer and head isolation patching
# ---------------------------------------------------------------------------------------

LAYER_MODES = ("single", "upto", "from")


@dataclass
class LayerPatching:
    """Per layer L and mode: isolation removed at L only ("single"), at 0..L ("upto"),
    at L..end ("from"); each entry is a list over layers of `Distances` fields."""

    baseline: Distances  # isolated vs visible
    layers: dict[str, dict[str, list[float]]]

    def to_json(self) -> dict:
        return {"baseline": asdict(self.baseline), "layers": self.layers}


def _layer_schedules(n_layers: int, n_heads: int) -> torch.Tensor:
    bias = torch.full((3 * n_layers, n_layers, n_heads), -math.inf, dtype=torch.float64)
    for L in range(n_layers):
        bias[L, L] = 0
        bias[n_layers + L, : L + 1] = 0
        bias[2 * n_layers + L, L:] = 0
    return bias


def _sources(source: Source | Sequence[Source]) -> tuple[list[Source], bool]:
    if isinstance(source, TempoRun | Layout):
        return [source], True
    return list(source), False


def layer_patching(model: Model, source: Source | Sequence[Source], *, batch_size: int = 16) -> Any:
    """Replay `source` with isolation removed at exactly one layer L, at layers 0..L,
    and at L..end, for every L (3 × n_layers replays, batched). A list of sources
    (prompts) is batched with them, in padded forwards of `batch_size` rows, and gives a
    list of LayerPatching."""
    sources, single = _sources(source)
    refs = _References.of(model, sources)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    per_ref = _run_schedules(model, refs, _layer_schedules(n_layers, n_heads), batch_size)
    out = []
    for ref, dists in zip(refs, per_ref, strict=True):
        layers = {
            mode: {
                field: [getattr(d, field) for d in dists[i * n_layers : (i + 1) * n_layers]]
                for field in Distances.__dataclass_fields__
            }
            for i, mode in enumerate(LAYER_MODES)
        }
        out.append(LayerPatching(ref.baseline(), layers))
    return out[0] if single else out


def head_patching(
    model: Model,
    source: Source | Sequence[Source],
    layers: Iterable[int],
    *,
    batch_size: int = 16,
) -> Any:
    """`{layer: [KL(iso || replay with isolation removed at that one head) per head]}`
    (member rows); every other head of every layer stays isolated. A list of sources
    gives a list of such dicts (batched together)."""
    sources, single = _sources(source)
    refs = _References.of(model, sources)
    layers = list(layers)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    bias = torch.full((len(layers) * n_heads, n_layers, n_heads), -math.inf, dtype=torch.float64)
    for i, L in enumerate(layers):
        for h in range(n_heads):
            bias[i * n_heads + h, L, h] = 0
    out = [
        {
            L: [d.kl_iso_members for d in dists[i * n_heads : (i + 1) * n_heads]]
            for i, L in enumerate(layers)
        }
        for dists in _run_schedules(model, refs, bias, batch_size)
    ]
    return out[0] if single else out


def bias_sweep(
    model: Model,
    source: Source | Sequence[Source],
    biases: Sequence[float],
    *,
    batch_size: int = 16,
) -> Any:
    """Partial isolation: `-b` added to same-set scores at every layer, per b in `biases`
    (b = 0 is visible, b = inf is isolated). A list of sources gives a list of lists."""
    sources, single = _sources(source)
    refs = _References.of(model, sources)
    cfg = model.cfg
    bias = torch.tensor([-float(b) for b in biases], dtype=torch.float64)[:, None, None]
    out = _run_schedules(model, refs, bias.expand(-1, cfg.n_layers, cfg.n_heads), batch_size)
    return out[0] if single else out


def compare_hooks(
    model: Model, source: Source, variants: Mapping[str, Sequence[Hook]]
) -> dict[str, Distances]:
    """Replay `source` once per named hook list (run on top of positions, no isolation)
    and measure each against the isolated and visible replays."""
    refs = _References.of(model, [source])[0]
    return {
        name: refs.distances(forward(model, refs.layout, isolate=False, fwd_hooks=hooks)[0][0])
        for name, hooks in variants.items()
    }


# ---------------------------------------------------------------------------------------
# Activation patching between modes
# ---------------------------------------------------------------------------------------

HOOK_ALIASES = {
    "resid_pre": "blocks.{L}.hook_resid_pre",
    "resid_mid": "blocks.{L}.hook_resid_mid",
    "resid_post": "blocks.{L}.hook_resid_post",
    "attn_out": "blocks.{L}.hook_attn_out",
    "mlp_out": "blocks.{L}.hook_mlp_out",
    "z": "blocks.{L}.attn.hook_z",
}
GROUPS = ("all", "members", "later")


def hook_name(hook: str, layer: int) -> str:
    """Full TL hook name of `hook` ("resid_pre", "hook_z", "attn.hook_z", ...) at `layer`."""
    short = hook.removeprefix("attn.").removeprefix("hook_")
    if short not in HOOK_ALIASES:
        raise TempoError(f"unknown hook {hook!r}; use one of {', '.join(HOOK_ALIASES)}")
    return HOOK_ALIASES[short].format(L=layer)


def group_positions(layout: Layout, group: str) -> torch.Tensor:
    """Physical positions of a group: "all" tokens; "members" of multi-member sets (whose
    own attention the mask changes); "later": every other generated token (their
    attention is unchanged; they differ only through what they read)."""
    if group == "all":
        return torch.arange(len(layout))
    multi = layout.same_set().any(1)
    if group == "members":
        return multi.nonzero().flatten()
    if group == "later":
        return ((layout.step >= 0) & ~multi).nonzero().flatten()
    raise TempoError(f"unknown position group {group!r}; use one of {', '.join(GROUPS)}")


def patch_activation(
    model: Model,
    layout: Layout,
    name: str,
    positions: torch.Tensor,
    *,
    source_isolate: bool = False,
) -> torch.Tensor:
    """Logits `[n, vocab]` of the other mode's replay with activation `name` at
    `positions` taken from the `source_isolate` replay (TL's `layer_pos_patch_setter`)."""
    _, cache = forward(model, layout, isolate=source_isolate, cache=[name])
    clean = cache[name]

    def patch(act: torch.Tensor, hook) -> torch.Tensor:
        return layer_pos_patch_setter(act, (None, positions), clean)

    return forward(model, layout, isolate=not source_isolate, fwd_hooks=[(name, patch)])[0][0]


def fraction_restored(
    source: torch.Tensor, target: torch.Tensor, patched: torch.Tensor, rows: torch.Tensor
) -> float:
    """1 − KL(source ‖ patched) / KL(source ‖ target) summed over `rows`: 0 when the patch
    changed nothing, 1 when it reproduced the source mode exactly."""
    s, t, p = (x[rows] for x in (source, target, patched))
    total = float(kl(s, t).sum())
    if total <= 0:
        return math.nan
    return 1.0 - float(kl(s, p).sum()) / total


def activation_patching(
    model: Model,
    source: Source,
    *,
    hook: str = "resid_pre",
    group: str = "all",
    source_isolate: bool = False,
    layers: Iterable[int] | None = None,
    batch_size: int = 16,
) -> list[float]:
    """Fraction of the iso→vis difference (over generated rows) restored by patching
    `hook` at each layer, at `group` positions, from the `source_isolate` replay into the
    other mode (default: visible into isolated). One batch element per layer."""
    layout, _ = layout_and_weights(source)
    layers = sorted(range(model.cfg.n_layers) if layers is None else layers)
    names = [hook_name(hook, L) for L in layers]
    src_logits, cache = forward(model, layout, isolate=source_isolate, cache=names)
    tgt_logits, tgt_cache = forward(
        model, layout, isolate=not source_isolate, cache=["hook_resid_pre"]
    )
    tgt_logits = tgt_logits[0]
    pos = group_positions(layout, group)
    rows = (layout.step >= 0).nonzero().flatten()
    out: list[float] = []
    for start in range(0, len(layers), batch_size):
        chunk = names[start : start + batch_size]

        def make(i: int, name: str):
            def patch(act: torch.Tensor, hook) -> torch.Tensor:
                layer_pos_patch_setter(act[i : i + 1], (None, pos), cache[name])
                return act

            return patch

        hooks = [(name, make(i, name)) for i, name in enumerate(chunk)]
        if not source_isolate:
            hooks = isolation_hooks(layout) + hooks
        first = layers[start]  # layers before it are the target replay's own
        resid = tgt_cache[f"blocks.{first}.hook_resid_pre"].repeat(len(chunk), 1, 1)
        logits = replay_batch(model, layout, len(chunk), hooks, start_at_layer=first, resid=resid)
        out += [fraction_restored(src_logits[0], tgt_logits, row, rows) for row in logits]
    return out
