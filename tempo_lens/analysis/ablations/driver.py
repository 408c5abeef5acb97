"""The one ablation driver, in the shape of TransformerLens's `generic_activation_patch`:
sources (runs or layouts) × a variant builder × a metric → metrics per source.

Every family in this package only says which variants to replay (a `Variant`: an extra
masked block with a per-layer, per-head bias, other positions, an activation patch, where
the replay may start) and what to measure; `ablate` replays all (source, variant) pairs
in padded batches under the replay memory budget, each row starting at the first layer
where it differs from a reference replay, and after the leading rows it shares with them:
rows before the first one that sees a sibling (or a key the variant hides) compute the
same under every mask, so a variant reads their keys and values from the isolated
replay (a frozen TransformerLens KV cache) and takes their logits from it. A variant
that is one of the reference replays is that replay; repeated variants run once.

The references are each source's fully isolated and fully visible replays (`Replays`).
Rows compared: every generated token's own next-token distribution ("members") and each
step's next-set distribution ("next", `tempo_lens.generate.next_distribution` with the
run's own `next_from`). Distances are KL(reference ‖ variant) in nats, averaged over rows.

"Restored fraction" has ONE definition here (`restored_fraction`): per prompt
r = 1 − KL(source ‖ variant) / KL(source ‖ target), where the source mode is what is
being restored (visible for layer patching) and the target the mode the variant starts
from; reported as the distribution over prompts (median, IQR, share negative, NaN
prompts — those whose baseline KL is 0 — counted) beside the pooled value
1 − mean KL_variant / mean KL_base. Fractions of a KL do not add up across layers.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from jaxtyping import Bool, Float

from tempo_lens.analysis.experiments.kind import Kind, KindKeys
from tempo_lens.backend import Model, backend_of
from tempo_lens.generate import (
    FORWARD_MEMORY_BUDGET,
    forward,
    generate,
    mechanism_hooks,
    replay_rows,
)
from tempo_lens.hooks import Hook, schedule_hooks
from tempo_lens.layout import Layout, LayoutBatch
from tempo_lens.run import TempoRun

Source = TempoRun | Layout
K = TypeVar("K", bound=KindKeys)


def as_sources(source: Source | Sequence[Source]) -> tuple[list[Source], bool]:
    """(list of sources, whether a single one was given)."""
    if isinstance(source, TempoRun | Layout):
        return [source], True
    return list(source), False


def layout_and_weights(source: Source) -> tuple[Layout, torch.Tensor]:
    """The layout and each token's selection probability (1 for a bare Layout)."""
    if isinstance(source, TempoRun):
        w = torch.ones(len(source.layout), dtype=torch.float64)
        for s, ps in enumerate(source.steps):
            w[source.layout.set_slice(s)] = torch.tensor(ps.probs, dtype=torch.float64)
        return source.layout, w
    return source, torch.ones(len(source), dtype=torch.float64)


@dataclass(frozen=True)
class Distances:
    """Mean KL(reference ‖ variant) to the isolated and visible replays."""

    kl_iso_members: float
    kl_vis_members: float
    kl_iso_next: float
    kl_vis_next: float

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, values: torch.Tensor) -> Distances:
        return cls(*(float(v) for v in values))


def _mean0(t: torch.Tensor) -> torch.Tensor:
    """Mean over the first dimension (rows); 0 where there are none."""
    return t.mean(0) if t.shape[0] else t.new_zeros(t.shape[1:])


def mixing_matrix(layout: Layout, weights: torch.Tensor, next_from: str) -> torch.Tensor:
    """`[steps, members]` float32: row s mixes the member rows of step s's set into the
    next-set distribution as `tempo_lens.generate.next_distribution` does (weights
    w / Σ w for "mixture", the set's first or last member for "first" / "last")."""
    step = layout.step[layout.step >= 0]
    mix = torch.zeros(layout.n_steps, len(step), dtype=torch.float32)
    for s in range(layout.n_steps):
        cols = (step == s).nonzero().flatten()
        if next_from in ("first", "last"):
            mix[s, cols[0 if next_from == "first" else -1]] = 1.0
        else:
            w = weights[layout.step == s].float()
            mix[s, cols] = w / w.sum()
    return mix


class Replays:
    """The isolated and visible replays of one source, reduced to comparable rows, with
    their residual streams (`hook_resid_pre` of every layer), so a variant that agrees
    with one of them up to layer L starts there. `Replays.of(model, sources)` builds many
    in two batched forwards."""

    def __init__(
        self,
        source: Source,
        iso: tuple[torch.Tensor, Any],
        vis: tuple[torch.Tensor, Any],
        *,
        keys_cached: bool = False,
    ):
        self.source = source
        self.layout, self.weights = layout_and_weights(source)
        self.next_from = source.config.next_from if isinstance(source, TempoRun) else "mixture"
        (iso_logits, self.iso_cache), (vis_logits, self.vis_cache) = iso, vis
        self.iso_logits, self.vis_logits = iso_logits[0], vis_logits[0]
        self._members = self.layout.step >= 0
        self._mix = mixing_matrix(self.layout, self.weights, self.next_from)
        self.iso = self.rows(self.iso_logits)
        self.vis = self.rows(self.vis_logits)
        # What a KL to each reference row needs, so that measuring a variant is one
        # matrix product per kind of row (`distances`); index r: 0 iso, 1 vis.
        self._p = [torch.stack([ref[k].exp() for ref in (self.iso, self.vis)], -1) for k in (0, 1)]
        self._mass = self._p[0].sum(1)  # [m, 2] Σ p (1 up to rounding) of the member rows
        parts = [self._parts(self.iso_logits), self._parts(self.vis_logits)]
        # Σ p log p of each reference row, computed as a variant's Σ p log q is, so a
        # variant with the reference's own logits is at KL 0 up to float64 rounding.
        self._neg_entropy = [
            torch.stack([parts[r][0][:, r] - self._mass[:, r] * parts[r][1] for r in (0, 1)], -1),
            torch.stack([parts[r][2][:, r] for r in (0, 1)], -1),
        ]
        # The rows before `shared` see no sibling: isolation cannot change them, so every
        # variant that hides nothing there starts from the iso replay's keys and values.
        self.shared = first_hidden_row(self.layout.same_set()) if keys_cached else 0

    @classmethod
    def of(cls, model: Model, sources: Sequence[Source]) -> list[Replays]:
        layouts = [layout_and_weights(s)[0] for s in sources]
        resid = ["hook_resid_pre"]
        kv = ["hook_k", "hook_v"] if keys_are_cacheable(model) else []
        iso_logits, iso_caches = forward(model, layouts, isolate=True, cache=resid + kv)
        vis_logits, vis_caches = forward(model, layouts, isolate=False, cache=resid)
        return [
            cls(s, (il, ic), (vl, vc), keys_cached=bool(kv))
            for s, il, ic, vl, vc in zip(
                sources, iso_logits, iso_caches, vis_logits, vis_caches, strict=True
            )
        ]

    def rows(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(member rows `[m, vocab]`, next-set distributions `[steps, vocab]`) as log-probs."""
        members = torch.log_softmax(logits[self._members].double(), -1)
        return members, self.next_rows(logits)

    def _shifted(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Member rows of logits `[n, vocab]`: t = z − max z, exp(t) (float32) and Σ exp(t)
        (float64), so softmax = exp(t) / Σ exp(t) and log-softmax = t − log Σ exp(t)."""
        z = logits[self._members].float()
        t = z.sub_(z.amax(-1, keepdim=True))
        e = t.exp()
        return t, e, e.sum(-1, dtype=torch.float64)

    def _next_probs(self, e: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """`[steps, vocab]` next-set distributions (`tempo_lens.generate.next_distribution`
        of each set, all in one product) from `_shifted`'s exp(t) and Σ exp(t)."""
        return torch.matmul(self._mix / total.float(), e)

    def next_rows(self, logits: torch.Tensor) -> torch.Tensor:
        """`[steps, vocab]` log-probs of each step's next-set distribution."""
        _, e, total = self._shifted(logits)
        return self._next_probs(e, total).double().log()

    def _parts(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Σ p·t `[m, 2]`, log Σ exp(t) `[m]`, Σ p·log q `[steps, 2]`) of logits `[n,
        vocab]` against both references' p (float64 products)."""
        t, e, total = self._shifted(logits)
        member = torch.bmm(t.double()[:, None], self._p[0])[:, 0]
        log_q = self._next_probs(e, total).log_().double()
        return member, total.log(), torch.bmm(log_q[:, None], self._p[1])[:, 0]

    def distances(self, logits: torch.Tensor) -> torch.Tensor:
        """`[4]`: the `Distances` fields of a replay's logits `[n, vocab]`.

        KL(p ‖ q) = Σ p log p − Σ p log q. For member rows log q = t − log Σ exp(t) with
        t = z − max z, so Σ p log q = p·t − (Σ p) log Σ exp(t): no normalised copy of the
        variant's logits z. Exponentials and logarithms are float32 (each within 1e-7 of
        its value: below the float32 logits' own noise), every sum and product float64."""
        member, log_total, nxt = self._parts(logits)
        members = self._neg_entropy[0] - member + self._mass * log_total[:, None]
        return torch.cat([_mean0(members), _mean0(self._neg_entropy[1] - nxt)])

    def baseline(self) -> Distances:
        """The isolated replay measured against both references (KL(vis ‖ iso))."""
        return Distances.of(self.distances(self.iso_logits))

    def resid(self, isolated: bool, layer: int) -> torch.Tensor:
        cache = self.iso_cache if isolated else self.vis_cache
        return cache["resid_pre", layer]

    def replay_of(self, variant: Variant) -> torch.Tensor | None:
        """The reference replay's logits when `variant` is exactly it (the visible one:
        nothing hidden; the isolated one: siblings hidden everywhere), else None."""
        if not variant.on_source_inputs:
            return None
        bias = torch.as_tensor(variant.bias)
        starts_iso = variant.start_layer > 0 and variant.start_isolated
        starts_vis = variant.start_layer > 0 and not variant.start_isolated
        if variant.hidden is None or not bool(variant.hidden.any()) or bool((bias == 0).all()):
            return None if starts_iso else self.vis_logits
        if bool(torch.isneginf(bias).all()) and torch.equal(variant.hidden, self.layout.same_set()):
            return None if starts_vis else self.iso_logits
        return None

    def shared_rows(self, variant: Variant) -> int:
        """How many leading rows `variant` computes exactly as the reference replays do
        (its own layout and patches share none; at least one row is left to compute)."""
        if not variant.on_source_inputs:
            return 0
        p = self.shared
        if variant.hidden is not None:
            p = min(p, first_hidden_row(variant.hidden))
        return min(p, len(self.layout) - 1)

    def prefix_kv(self, layer: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `rows` keys and values (un-rotated, TL's cache layout) of `layer`."""
        return self.iso_cache["k", layer][0, :rows], self.iso_cache["v", layer][0, :rows]


def first_hidden_row(hidden: Bool[torch.Tensor, "n n"]) -> int:
    """The first query row that `hidden` changes (a hidden key before it); n if none."""
    rows = hidden.tril(-1).any(-1).nonzero()
    return int(rows[0]) if rows.numel() else hidden.shape[0]


def keys_are_cacheable(model: Model) -> bool:
    """Whether `hook_k` / `hook_v` are exactly what TL's KV cache holds, so a replay can
    start after a shared prefix: HookedTransformer without QK-norm or QKV clipping."""
    cfg = model.cfg
    return (
        backend_of(model).positions_by_hooks
        and not getattr(cfg, "use_qk_norm", False)
        and getattr(cfg, "clip_qkv", None) is None
        and "Olmo" not in str(getattr(cfg, "original_architecture", ""))
    )


Metric = Callable[[Replays, torch.Tensor], torch.Tensor]


def distances_metric(replays: Replays, logits: torch.Tensor) -> torch.Tensor:
    """The default metric: `[4]` `Distances` fields of the variant's logits."""
    return replays.distances(logits)


@dataclass(frozen=True)
class Patch:
    """Write `value[positions]` (`value` `[n, ...]`: an activation of the source layout)
    into hook `name` at the layout's physical `positions` (TL's layer-position patch,
    mapped onto the padded batch's columns)."""

    name: str
    positions: torch.Tensor
    value: torch.Tensor


@dataclass(frozen=True)
class Variant:
    """One replay of a source, on top of its positions with no isolation:

    - `hidden` `[n, n]` and `bias`: `bias[L, h]` (or one float for every layer and head)
      is added to those query-key scores of head h at layer L (-inf hides them; the
      fully isolated replay is `hidden = layout.same_set()`, bias -inf);
    - `layout`: other positions for the same tokens (None: the source's own);
    - `patch`: an activation patch;
    - `start_layer`: the layers before it equal the isolated (`start_isolated`) or the
      visible reference replay, so the replay starts there from its residual stream."""

    hidden: Bool[torch.Tensor, "n n"] | None = None
    bias: Float[torch.Tensor, "layers heads"] | float = -math.inf
    layout: Layout | None = None
    patch: Patch | None = None
    start_layer: int = 0
    start_isolated: bool = True

    @property
    def on_source_inputs(self) -> bool:
        """Whether it runs on the source's own positions and activations (no `layout`,
        no `patch`): only then can it share rows with, or be, a reference replay."""
        return self.layout is None and self.patch is None


VariantFn = Callable[[Replays], Sequence[Variant]]


def ablate(
    model: Model,
    source: Source | Sequence[Source],
    variants: VariantFn,
    metric: Metric = distances_metric,
    *,
    batch_size: int = 16,
    memory_budget: int = FORWARD_MEMORY_BUDGET,
    replays: Sequence[Replays] | None = None,
) -> list[torch.Tensor]:
    """THE driver: replay every variant `variants(replays)` of every source and measure
    `metric(replays, logits)`; per source a tensor `[n_variants, *metric_shape]`
    (`replays`: the sources' `Replays` when the caller already has them).

    (source, variant) rows are sorted by source length, source and start layer and
    replayed in batches of at most `batch_size` rows (fewer when `memory_budget` bytes
    allow fewer), after the fewest rows any of a batch's rows shares with its
    references; each row joins its batch at its own start layer (`_replay_chunk`)."""
    sources, _ = as_sources(source)
    refs = list(replays) if replays is not None else Replays.of(model, sources)
    per_ref = [list(variants(ref)) for ref in refs]
    hits, same_as, items = replay_plan(refs, per_ref)
    out = {ri: metric(refs[ri[0]], logits) for ri, logits in hits.items()}
    shared = {(r, i): refs[r].shared_rows(per_ref[r][i]) for r, i in items}

    def length(ri: tuple[int, int]) -> int:
        return len(per_ref[ri[0]][ri[1]].layout or refs[ri[0]].layout)

    # A source's rows go together (one length, one shared prefix: no pads, nothing
    # recomputed), sources by length, and within a source the rows by start layer.
    items.sort(key=lambda ri: (length(ri), shared[ri], ri[0], per_ref[ri[0]][ri[1]].start_layer))
    longest = max((length(ri) for ri in items), default=1)
    rows = max(1, min(batch_size, replay_rows(model, longest, None, memory_budget)))
    for begin in range(0, len(items), rows):
        part = items[begin : begin + rows]
        chunk = [(refs[r], per_ref[r][i]) for r, i in part]
        skip = min(shared[ri] for ri in part)
        logits, order = _replay_chunk(model, chunk, skip)
        for i, b in enumerate(order):
            ri, ref = part[b], chunk[b][0]
            own = logits[i, : length(ri) - skip]
            if skip:  # the shared rows are the reference replay's own
                own = torch.cat([ref.iso_logits[:skip].to(own), own])
            out[ri] = metric(ref, own)
    out |= {ri: out[src] for ri, src in same_as.items()}
    return [
        torch.stack([out[(r, i)] for i in range(len(vs))]) if vs else torch.empty(0)
        for r, vs in enumerate(per_ref)
    ]


def replay_plan(
    refs: Sequence[Replays], per_ref: Sequence[Sequence[Variant]]
) -> tuple[dict[tuple[int, int], torch.Tensor], dict[tuple[int, int], tuple[int, int]], list]:
    """Which of the variants `per_ref[r]` of sources `refs[r]` `ablate` replays, by
    (source, variant) index: (those that are a reference replay -> its logits, a repeated
    variant -> its first, the list of the rest: the ones replayed)."""
    hits: dict[tuple[int, int], torch.Tensor] = {}
    same_as: dict[tuple[int, int], tuple[int, int]] = {}
    first: dict[tuple, tuple[int, int]] = {}
    items = []
    for r, vs in enumerate(per_ref):
        for i, v in enumerate(vs):
            if (logits := refs[r].replay_of(v)) is not None:
                hits[(r, i)] = logits
            elif (key := _variant_key(r, v)) is not None and key in first:
                same_as[(r, i)] = first[key]
            else:
                items.append((r, i))
                if key is not None:
                    first[key] = (r, i)
    return hits, same_as, items


def _variant_key(source: int, v: Variant) -> tuple | None:
    """What makes two variants of one source the same replay (None: not comparable)."""
    if not v.on_source_inputs:
        return None
    bias = torch.as_tensor(v.bias, dtype=torch.float64)
    start = (v.start_layer, v.start_isolated) if v.start_layer > 0 else (0,)
    return (source, id(v.hidden), bias.shape, bias.numpy().tobytes(), *start)


def _replay_chunk(
    model: Model, chunk: Sequence[tuple[Replays, Variant]], skip: int = 0
) -> tuple[torch.Tensor, list[int]]:
    """The chunk's rows after their first `skip` rows (which every row shares with its
    reference replays: their keys and values come from its cache) on one right-padded
    grid, each row joining at its own start layer: the rows are ordered by start layer,
    and layers `first .. stop` run only the rows that have started by `first`
    (`first`, `stop`: consecutive start layers). One hook context for all of them: each
    layer's hooks are built for the rows it runs.

    (logits `[rows, n - skip, vocab]`, `order`): row i is `chunk[order[i]]`."""
    order = sorted(range(len(chunk)), key=lambda b: chunk[b][1].start_layer)
    chunk = [chunk[b] for b in order]
    grid = LayoutBatch.of([v.layout or ref.layout for ref, v in chunk])
    n, cfg = len(grid), model.cfg
    hidden = torch.zeros(len(chunk), n, n, dtype=torch.bool)
    bias = torch.zeros(len(chunk), cfg.n_layers, cfg.n_heads, dtype=torch.float64)
    for b, (_, v) in enumerate(chunk):
        if v.hidden is not None:
            cols = grid.real_columns(b)
            hidden[b, cols[:, None], cols[None, :]] = v.hidden
            bias[b] = torch.as_tensor(v.bias, dtype=torch.float64).expand(cfg.n_layers, cfg.n_heads)
    starts = [v.start_layer for _, v in chunk]
    firsts = sorted(set(starts))
    segments = [
        (first, stop, bisect_right(starts, first))
        for first, stop in zip(firsts, [*firsts[1:], cfg.n_layers], strict=True)
    ]
    hooks: list[Hook] = []
    for first, stop, rows in segments:
        sub = grid.select_rows(range(rows))
        built = mechanism_hooks(model, sub, isolate=False, n_query=n - skip)
        built += schedule_hooks(sub, hidden[:rows], bias[:rows], layers=range(first, stop))
        built += _patch_hooks(sub, [v.patch for _, v in chunk[:rows]])
        hooks += _segment_hooks(model, built, first, stop)
    tokens = grid.tokens.to(cfg.device)
    mask = torch.ones_like(tokens)
    x = None
    context = backend_of(model).forward_context(model)  # hooked: `backend.fast_attention`
    with torch.no_grad(), model.hooks(fwd_hooks=hooks), context:
        for first, stop, rows in segments:
            kwargs: dict[str, Any] = {"attention_mask": mask[:rows]}
            if stop < cfg.n_layers:
                kwargs["stop_at_layer"] = stop
            if first == 0 and skip == 0:  # the first segment, from the embeddings
                x = model(tokens[:rows], **kwargs)
                continue
            joining = _start_resid(chunk, range(0 if x is None else len(x), rows), first, skip, n)
            x = joining if x is None else torch.cat([x, joining.to(x)])
            if skip:
                kwargs["past_kv_cache"] = _prefix_cache(model, chunk[:rows], skip, first, stop)
            x = model(x, start_at_layer=first, **kwargs)
    return x, order


def _segment_hooks(model: Model, hooks: Sequence[Hook], first: int, stop: int) -> list[Hook]:
    """`hooks` on the hook points that fire in a forward of layers `first .. stop`: the
    blocks' own, the embeddings' only from layer 0 (a forward from the tokens), ln_final's
    and the unembedding's only up to the last layer (a filter stands for its points)."""
    n_layers = model.cfg.n_layers

    def fires(name: str) -> bool:
        if name.startswith("blocks."):
            return first <= int(name.split(".")[1]) < stop
        return first == 0 if name.startswith("hook_") else stop == n_layers

    out: list[Hook] = []
    for name, fn in hooks:
        names = [k for k in model.hook_dict if name(k)] if callable(name) else [name]
        out += [(k, fn) for k in names if fires(k)]
    return out


def _start_resid(
    chunk: Sequence[tuple[Replays, Variant]], rows: range, layer: int, skip: int, n: int
) -> torch.Tensor:
    """`[rows, n - skip, d_model]`: each row's reference residual stream entering `layer`
    (its rows after `skip`; zeros at the pad columns of the chunk's `n`-wide grid)."""
    own = [ref.resid(v.start_isolated, layer)[0, skip:] for ref, v in (chunk[b] for b in rows)]
    out = own[0].new_zeros(len(own), n - skip, own[0].shape[-1])
    for b, r in enumerate(own):
        out[b, : r.shape[0]] = r
    return out


def _prefix_cache(
    model: Model, chunk: Sequence[tuple[Replays, Variant]], skip: int, first: int, stop: int
) -> Any:
    """A frozen TL KV cache holding the rows' first `skip` keys and values at layers
    `first .. stop` (from each row's isolated reference replay)."""
    cache = backend_of(model).new_cache(model, len(chunk))
    for layer in range(first, stop):
        keys, values = zip(*(ref.prefix_kv(layer, skip) for ref, _ in chunk), strict=True)
        entry = cache.entries[layer]
        entry.past_keys = torch.stack(keys).to(entry.past_keys)
        entry.past_values = torch.stack(values).to(entry.past_values)
    cache.freeze()
    return cache


def _patch_hooks(grid: LayoutBatch, patches: Sequence[Patch | None]) -> list[Hook]:
    by_name: dict[str, list[tuple[int, Patch]]] = {}
    for b, p in enumerate(patches):
        if p is not None:
            by_name.setdefault(p.name, []).append((b, p))

    def make(rows: list[tuple[int, Patch]]):
        def patch(act: torch.Tensor, hook: Any) -> torch.Tensor:
            for b, p in rows:
                cols = grid.real_columns(b)[p.positions].to(act.device)
                act[b, cols] = p.value[p.positions].to(act)
            return act

        return patch

    return [(name, make(rows)) for name, rows in by_name.items()]


# ---------------------------------------------------------------------------------------
# Same-set bias schedules (isolation per layer and head, partial isolation)
# ---------------------------------------------------------------------------------------


def _divergence(row: torch.Tensor, value: float) -> int:
    """First layer at which schedule `row` [layers, heads] is not all `value`."""
    differs = (row != value).any(-1).nonzero()
    return int(differs[0]) if differs.numel() else row.shape[0]


def schedule_variants(bias: torch.Tensor, replays: Replays) -> list[Variant]:
    """One variant per schedule row of `bias` `[rows, layers, heads]` (biases on
    same-set scores), each starting at the layer where it leaves the isolated or the
    visible schedule, whichever it follows longer."""
    out = []
    same = replays.layout.same_set()
    for row in bias:
        d_iso, d_vis = _divergence(row, -math.inf), _divergence(row, 0.0)
        start = min(max(d_iso, d_vis), bias.shape[1] - 1)
        out.append(Variant(hidden=same, bias=row, start_layer=start, start_isolated=d_iso >= d_vis))
    return out


def schedule_sweep(
    model: Model,
    source: Source | Sequence[Source],
    bias: torch.Tensor,
    *,
    batch_size: int = 16,
    replays: Sequence[Replays] | None = None,
) -> list[torch.Tensor]:
    """Per source `[rows, 4]` `Distances` of every same-set bias schedule row."""
    variants = partial(schedule_variants, bias)
    return ablate(model, source, variants, batch_size=batch_size, replays=replays)


# ---------------------------------------------------------------------------------------
# Restored fraction: the one definition
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    """Restored fraction r = 1 − KL(source ‖ variant) / KL(source ‖ target).

    `per_prompt` `[prompts, *shape]` (NaN where the prompt's baseline KL is 0: its
    modes do not differ); `pooled` `[*shape]` = 1 − mean KL_variant / mean KL_base over
    prompts. `summary()` gives both with the distribution over prompts."""

    per_prompt: torch.Tensor
    pooled: torch.Tensor

    def summary(self) -> dict[str, Any]:
        """Lists over the trailing shape (a number when it is scalar): median, q25, q75,
        share_negative (of the prompts that are not NaN), n_nan, n_prompts, pooled."""
        r = self.per_prompt.double()
        valid = ~r.isnan()
        n_valid = valid.sum(0)
        q = (
            torch.nanquantile(r, torch.tensor([0.25, 0.5, 0.75], dtype=r.dtype), dim=0)
            if r.shape[0]
            else torch.full((3, *r.shape[1:]), math.nan, dtype=r.dtype)
        )
        share = torch.where(n_valid > 0, ((r < 0) & valid).sum(0) / n_valid.clamp(min=1), math.nan)
        return {
            "median": jsonable(q[1]),
            "q25": jsonable(q[0]),
            "q75": jsonable(q[2]),
            "share_negative": jsonable(share),
            "n_nan": jsonable((~valid).sum(0)),
            "n_prompts": int(r.shape[0]),
            "pooled": jsonable(self.pooled),
        }


def restored_fraction(
    kl_variant: Float[torch.Tensor, "prompts ..."], kl_base: Float[torch.Tensor, " prompts"]
) -> Restored:
    """The restored fraction (module docstring) of variant KLs `[prompts, *shape]`
    against each prompt's baseline KL `[prompts]` (both KL(source ‖ ·))."""
    kl_variant, kl_base = kl_variant.double(), kl_base.double()
    base = kl_base.reshape(-1, *([1] * (kl_variant.ndim - 1)))
    per = torch.where(base > 0, 1.0 - kl_variant / base.clamp(min=1e-300), math.nan)
    mean_base = kl_base.mean() if kl_base.numel() else torch.tensor(math.nan)
    pooled = torch.where(
        mean_base > 0, 1.0 - kl_variant.mean(0) / mean_base.clamp(min=1e-300), math.nan
    )
    return Restored(per, pooled)


def jsonable(x: Any) -> Any:
    """Tensors and floats as JSON-able numbers (6 decimals; NaN and inf as None)."""
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, bool) or x is None or isinstance(x, int | str):
        return x
    return round(float(x), 6) if math.isfinite(x) else None


# ---------------------------------------------------------------------------------------
# What every ablation kind shares: its runs
# ---------------------------------------------------------------------------------------

GENERATE_ROWS = 16  # prompts per batched generation of a kind's runs


def section_texts(section: dict[str, Any]) -> list[str]:
    """The prompt texts of a resolved config section."""
    return [p["text"] if isinstance(p, dict) else str(p) for p in section.get("prompts") or []]


def ablation_kind(
    name: str, keys: type[K], study: Callable[[Model, list[TempoRun], K, Path], dict[str, Any]]
) -> Kind:
    """The experiment kind of an ablation family: it generates the section's prompts
    isolated at its one threshold and next_from (`section_runs`; `modes` is not read),
    reads the family's typed `keys`, and returns `study(model, runs, keys, out_dir)`."""

    def run(model: Model, section: dict[str, Any], out_dir: Path, progress: bool) -> dict:
        values = keys(**{k: section[k] for k in keys.model_fields})
        return study(model, section_runs(model, section), values, out_dir)

    run.__doc__ = study.__doc__
    return Kind(name, run, keys, unused=("modes",), single=("thresholds", "next_from"))


def section_runs(model: Model, section: dict[str, Any], *, threshold: Any = None) -> list[TempoRun]:
    """The section's prompts generated isolated (its one threshold and next_from, or the
    given `threshold`, e.g. a schedule), in batched generations of `GENERATE_ROWS`."""
    texts = section_texts(section)
    one = lambda v: v[0] if isinstance(v, list) else v  # noqa: E731
    settings = dict(
        threshold=one(section["thresholds"]) if threshold is None else threshold,
        max_steps=section["max_steps"],
        isolate=True,
        next_from=one(section["next_from"]),
        max_parallel=section.get("max_parallel"),
        eos_token_id=-1 if section.get("stop_at_eos", True) else None,
        progress=False,
    )
    runs: list[TempoRun] = []
    for i in range(0, len(texts), GENERATE_ROWS):
        runs += generate(model, texts[i : i + GENERATE_ROWS], **settings)
    return runs
