"""What the experiments measure, as functions of a model and a Layout.

Every measure replays a layout with `tempo_lens.forward` (identical tokens, chosen mask)
so a figure is a pure function of the saved run and the model: re-running an experiment
recomputes it exactly. Shapes: patterns are `[layers, heads, n, n]` (query, key).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from transformer_lens.utilities import get_act_name

from tempo_lens.analysis import metrics
from tempo_lens.backend import Model
from tempo_lens.errors import TempoError
from tempo_lens.generate import forward, generate, next_distribution
from tempo_lens.layout import Layout, ParallelSet

TOPK = (1, 5, 10, 20)


Replayed = tuple[torch.Tensor, dict[str, torch.Tensor]]


def replay(
    model: Any, layout: Layout, isolate: bool, names: Sequence[str] = ("hook_pattern",)
) -> Replayed:
    """Logits `[n, vocab]` and every layer's `names` stacked `[layers, ...]` (batch
    dropped), from one forward of `layout` under the chosen mask."""
    return replay_many(model, [layout], isolate, names)[0]


def replay_many(
    model: Any, layouts: Sequence[Layout], isolate: bool, names: Sequence[str] = ("hook_pattern",)
) -> list[Replayed]:
    """`replay` of every layout, in batched forwards (`tempo_lens.forward` of the list)."""
    logits, caches = forward(
        model, list(layouts), isolate=isolate, cache=list(names) if names else None
    )
    out = []
    for b, row in enumerate(logits):
        stacked: dict[str, torch.Tensor] = {}
        for name in names:
            acts = [caches[b][f"blocks.{i}.attn.{name}"][0] for i in range(model.cfg.n_layers)]
            stacked[name] = torch.stack(acts).double()
        out.append((row[0].double(), stacked))
    return out


def step_distributions(
    logits: torch.Tensor, layout: Layout, steps: Sequence[ParallelSet], next_from: str
) -> torch.Tensor:
    """`[n_steps, vocab]`: row j is the distribution that selected set j (row 0 reads the
    last prompt token, row j > 0 reads set j - 1 combined by `next_from`)."""
    p = layout.n_prompt
    rows = [torch.softmax(logits[p - 1].double(), -1)]
    for j in range(1, len(steps)):
        sl = layout.set_slice(j - 1)
        rows.append(next_distribution(logits[sl], steps[j - 1].probs, next_from).double())
    return torch.stack(rows)


def _log_rows(p: torch.Tensor) -> torch.Tensor:
    return p.double().clamp_min(1e-300).log()


def distribution_distances(p: torch.Tensor, q: torch.Tensor) -> dict[str, list[float]]:
    """Per row: KL(p||q), JS, cosine and top-k overlap (k in TOPK) of probability rows."""
    return {k: v.tolist() for k, v in metrics.distances(_log_rows(p), _log_rows(q), TOPK).items()}


def distribution_kl(p: torch.Tensor, q: torch.Tensor) -> list[float]:
    """Per row: KL(p||q) of probability rows (`distribution_distances`' "kl" alone)."""
    return metrics.kl(_log_rows(p), _log_rows(q)).tolist()


def divergence_step(a: Sequence[ParallelSet], b: Sequence[ParallelSet]) -> int | None:
    """First step whose sets differ (members or their order), None if all shared steps
    agree and both runs have the same length."""
    for j, (x, y) in enumerate(zip(a, b, strict=False)):
        if x.tokens != y.tokens:
            return j
    return None if len(a) == len(b) else min(len(a), len(b))


def generated_rows(layout: Layout) -> torch.Tensor:
    """Indices of generated (non-prompt) tokens: the query rows a mask can change."""
    return (layout.step >= 0).nonzero().flatten()


def sibling_entries(layout: Layout, rows: torch.Tensor) -> Bool[torch.Tensor, "q n"]:
    """`[len(rows), n]` True at (query row, key) entries that pair a set member with a
    sibling: the entries isolation masks, so an isolated vs visible comparison differs
    there by construction. Pass as `pattern_difference(..., exclude=...)` to leave them
    out."""
    return layout.same_set()[rows]


def pattern_difference(
    pat_a: Float[torch.Tensor, "layers heads q k"],
    pat_b: Float[torch.Tensor, "layers heads q k"],
    exclude: Bool[torch.Tensor, "q k"] | None = None,
) -> dict[str, Any]:
    """max |a - b|, mean |a - b| and Pearson correlation per layer and head, over the
    given query rows and all keys — except the (query, key) entries marked in `exclude`
    (e.g. `sibling_entries`), which are left out of every figure."""
    a = pat_a.flatten(2)
    b = pat_b.flatten(2)
    if exclude is not None:
        if exclude.shape != pat_a.shape[2:]:
            raise TempoError(
                f"exclude must be [q, k] = {list(pat_a.shape[2:])}, got {list(exclude.shape)}"
            )
        keep = ~exclude.flatten().to(a.device)
        a, b = a[..., keep], b[..., keep]
    diff = (a - b).abs()
    ac, bc = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    denom = (ac.square().sum(-1) * bc.square().sum(-1)).sqrt()
    corr = torch.where(denom > 0, (ac * bc).sum(-1) / denom.clamp_min(1e-300), torch.ones(()))
    la, lb = a.flatten(1), b.flatten(1)
    lac, lbc = la - la.mean(-1, keepdim=True), lb - lb.mean(-1, keepdim=True)
    ld = (lac.square().sum(-1) * lbc.square().sum(-1)).sqrt()
    lcorr = torch.where(ld > 0, (lac * lbc).sum(-1) / ld.clamp_min(1e-300), torch.ones(()))
    return {
        "layer_max_abs_diff": diff.amax((1, 2)).tolist(),
        "layer_mean_abs_diff": diff.mean((1, 2)).tolist(),
        "layer_corr": lcorr.tolist(),
        "head_max_abs_diff": diff.amax(-1).tolist(),
        "head_corr": corr.tolist(),
        "max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
        "corr": _corr(a.flatten(), b.flatten()),
        "n_excluded": int(exclude.sum()) if exclude is not None else 0,
    }


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    ac, bc = a - a.mean(), b - b.mean()
    d = float((ac.square().sum() * bc.square().sum()).sqrt())
    return float((ac * bc).sum()) / d if d > 0 else 1.0


def cross_set_attention(
    pattern: Float[torch.Tensor, "layers heads n n"], layout: Layout
) -> dict[str, Any]:
    """For every query row of every multi-member set: the attention mass it pays to its
    siblings, to itself, to the prompt and to earlier steps, averaged over those rows,
    per layer and head (`[layers][heads]`), with the number of rows behind it."""
    step = layout.step
    sizes = torch.bincount(step[step >= 0]) if (step >= 0).any() else torch.zeros(0)
    rows = [int(i) for i in generated_rows(layout) if sizes[step[i]] >= 2]
    out: dict[str, Any] = {"n_rows": len(rows)}
    if not rows:
        return out
    parts = {"siblings": [], "self": [], "prompt": [], "earlier_steps": []}
    for q in rows:
        s = int(step[q])
        row = pattern[:, :, q, :]
        sib = (step == s).clone()
        sib[q] = False
        parts["siblings"].append(row[..., sib].sum(-1))
        parts["self"].append(row[..., q])
        parts["prompt"].append(row[..., step < 0].sum(-1))
        parts["earlier_steps"].append(row[..., (step >= 0) & (step < s)].sum(-1))
    for key, vals in parts.items():
        m = torch.stack(vals).mean(0)  # [layers, heads]
        out[key] = m.tolist()
        out[f"{key}_by_layer"] = m.mean(-1).tolist()
        out[f"{key}_all"] = float(m.mean())
    return out


def received_attention(
    pattern: Float[torch.Tensor, "layers heads n n"], layout: Layout
) -> dict[str, Any] | None:
    """The seeds' claim, with explicit key sets. Attention a key receives = mean over the
    query rows of every LATER step (head-averaged), per layer. Key sets (keys of the last
    step are excluded: nothing comes after them):

    - `members`: tokens of sets with >= 2 members; `singles`: tokens of 1-member sets;
    - `prompt`: prompt tokens except the first (the attention sink), receiving from all
      generated rows.

    Ratios per layer and over all layers (layer-mean attention first):
    `token_out` = members / singles (prompt out), `token_in` = members / (singles and
    prompt) (prompt in), `set_out` / `set_in` = a whole set's summed attention over the
    same denominators. None when the run has no member or no single to compare."""
    step = layout.step
    n_steps = layout.n_steps
    if n_steps < 2:
        return None
    received = pattern.mean(1)  # [layers, q, k]
    sizes = torch.bincount(step[step >= 0], minlength=n_steps)
    values: dict[int, torch.Tensor] = {}
    for k in range(1, len(layout)):
        s = int(step[k])
        if s == n_steps - 1:
            continue
        later = step > s if s >= 0 else step >= 0
        values[k] = received[:, later, k].mean(-1)  # [layers]
    members = [k for k in values if step[k] >= 0 and sizes[step[k]] >= 2]
    singles = [k for k in values if step[k] >= 0 and sizes[step[k]] == 1]
    prompt = [k for k in values if step[k] < 0]
    if not members or not singles:
        return None
    stack = lambda ks: torch.stack([values[k] for k in ks])  # noqa: E731
    mem, sgl = stack(members), stack(singles)
    others = stack(singles + prompt)
    set_sums = torch.stack(
        [
            stack([k for k in members if step[k] == s]).sum(0)
            for s in sorted({int(step[k]) for k in members})
        ]
    )
    by_layer = {
        "token_out": mem.mean(0) / sgl.mean(0),
        "token_in": mem.mean(0) / others.mean(0),
        "set_out": set_sums.mean(0) / sgl.mean(0),
        "set_in": set_sums.mean(0) / others.mean(0),
    }
    allL = {
        "token_out": mem.mean() / sgl.mean(),
        "token_in": mem.mean() / others.mean(),
        "set_out": set_sums.mean() / sgl.mean(),
        "set_in": set_sums.mean() / others.mean(),
    }
    out: dict[str, Any] = {
        "n_members": len(members),
        "n_singles": len(singles),
        "n_prompt": len(prompt),
        "n_sets": int(set_sums.shape[0]),
    }
    for key in by_layer:
        out[key] = float(allL[key])
        out[f"{key}_by_layer"] = by_layer[key].tolist()
    return out


@dataclass(frozen=True)
class ReceivedCells:
    """Attention received by generated keys, one cell per (key, query distance): the
    head-mean attention a key receives from the query rows of the set `distance` steps
    later, averaged over those rows, per layer. Concatenate the cells of several layouts
    (`ReceivedCells.concat`) to pool prompts."""

    attention: Float[torch.Tensor, "cells layers"]
    distance: torch.Tensor  # `[cells]` query step - key step (>= 1)
    member: torch.Tensor  # `[cells]` True: the key is in a set of >= 2 members; False: single
    key: torch.Tensor  # `[cells]` the key's physical index in its layout

    def __len__(self) -> int:
        return int(self.distance.numel())

    @staticmethod
    def concat(parts: Sequence[ReceivedCells]) -> ReceivedCells:
        """The cells of several layouts as one set of cells."""
        return ReceivedCells(
            torch.cat([c.attention for c in parts]),
            torch.cat([c.distance for c in parts]),
            torch.cat([c.member for c in parts]),
            torch.cat([c.key for c in parts]),
        )


def received_cells(
    pattern: Float[torch.Tensor, "layers heads n n"], layout: Layout
) -> ReceivedCells:
    """Every (generated key, later step) pair of `layout` as a `ReceivedCells` cell:
    attention = mean over the query rows of step (key step + distance) of the
    head-averaged pattern, per layer. Prompt keys are left out (they have no step
    distance); keys of the last step have no later queries and give no cell."""
    step = layout.step
    n_steps = layout.n_steps
    received = pattern.double().mean(1)  # [layers, q, k]
    sizes = torch.bincount(step[step >= 0], minlength=n_steps) if n_steps else step[:0]
    attention, distance, member, key = [], [], [], []
    for k in (step >= 0).nonzero().flatten().tolist():
        s = int(step[k])
        for t in range(s + 1, n_steps):
            attention.append(received[:, step == t, k].mean(-1))
            distance.append(t - s)
            member.append(bool(sizes[s] >= 2))
            key.append(k)
    n_layers = pattern.shape[0]
    return ReceivedCells(
        torch.stack(attention) if attention else torch.zeros(0, n_layers, dtype=torch.float64),
        torch.tensor(distance, dtype=torch.long),
        torch.tensor(member, dtype=torch.bool),
        torch.tensor(key, dtype=torch.long),
    )


def matched_received_ratio(cells: ReceivedCells) -> dict[str, Any] | None:
    """Members vs singles at the same query distance: for each distance d where both
    kinds of key have cells, m_d and s_d = mean attention of member and of single cells
    at d; the ratio is sum_d w_d m_d / sum_d w_d s_d with w_d = the number of member
    cells at d (singles re-weighted to the members' distance mix), per layer and over
    all layers (layer-mean attention first). Member cells at distances without a single
    are left out and counted. None when no distance has both."""
    if not len(cells):
        return None
    dists = sorted(
        set(cells.distance[cells.member].tolist()) & set(cells.distance[~cells.member].tolist())
    )
    if not dists:
        return None
    num = torch.zeros(cells.attention.shape[1], dtype=torch.float64)
    den = torch.zeros_like(num)
    by_distance: dict[int, float] = {}
    used_members = used_singles = 0
    for d in dists:
        at = cells.distance == d
        mem, sgl = cells.attention[at & cells.member], cells.attention[at & ~cells.member]
        w = mem.shape[0]
        num += w * mem.mean(0)
        den += w * sgl.mean(0)
        by_distance[d] = float(mem.mean() / sgl.mean())
        used_members += w
        used_singles += sgl.shape[0]
    return {
        "matched": float(num.mean() / den.mean()),
        "matched_by_layer": (num / den).tolist(),
        "by_distance": by_distance,
        "n_member_cells": used_members,
        "n_single_cells": used_singles,
        "n_member_cells_unmatched": int(cells.member.sum()) - used_members,
    }


def received_distance_regression(cells: ReceivedCells) -> dict[str, Any] | None:
    """Diagnostic: least-squares fit log a = b0 + b1 distance + b2 member over cells
    (a = layer-mean attention; per layer for `member_ratio_by_layer`). Returns
    `per_step_pct` = (exp(b1) - 1) * 100 (change in received attention per step of query
    distance), `member_ratio` = exp(b2) (members vs singles at equal distance), R^2 and
    the number of cells used; cells with zero attention (hidden keys) have no log and are
    dropped and counted. None without both kinds of key and two distinct distances."""
    att = cells.attention
    positive = (att > 0).all(1)
    dist, mem = cells.distance[positive].double(), cells.member[positive]
    if not (mem.any() and (~mem).any()) or dist.unique().numel() < 2:
        return None
    X = torch.stack([torch.ones_like(dist), dist, mem.double()], 1).numpy()

    def fit(y: np.ndarray) -> tuple[np.ndarray, float]:
        beta = np.linalg.lstsq(X, y, rcond=None)[0]
        resid = y - X @ beta
        ss = float(((y - y.mean()) ** 2).sum())
        return beta, (1 - float((resid**2).sum()) / ss) if ss > 0 else 1.0

    beta, r2 = fit(att[positive].mean(1).log().numpy())
    # one least-squares solve for every layer (one column of y each)
    per_layer = np.linalg.lstsq(X, att[positive].log().numpy(), rcond=None)[0]
    by_layer = np.exp(per_layer[2]).tolist()
    return {
        "per_step_pct": float((np.exp(beta[1]) - 1) * 100),
        "member_ratio": float(np.exp(beta[2])),
        "member_ratio_by_layer": by_layer,
        "r2": r2,
        "n_cells": int(positive.sum()),
        "n_zero_cells": int((~positive).sum()),
    }


def position_matched_received(
    pattern: Float[torch.Tensor, "layers heads n n"], layout: Layout
) -> dict[str, Any] | None:
    """Attention received by set members vs single tokens, compared at the same query
    distance: `matched` (headline, `matched_received_ratio`), the
    distance regression as a diagnostic (`regression`, `received_distance_regression`)
    and the raw unmatched ratio of `received_attention` (`raw_token_out`, secondary:
    confounded by position, since members and singles sit at different distances from
    the later queries). None when the run has no member or no single to compare at a
    shared distance."""
    cells = received_cells(pattern, layout)
    matched = matched_received_ratio(cells)
    if matched is None:
        return None
    raw = received_attention(pattern, layout)
    return {
        **matched,
        "regression": received_distance_regression(cells),
        "raw_token_out": raw["token_out"] if raw else None,
        "raw_token_out_by_layer": raw["token_out_by_layer"] if raw else None,
    }


def model_rotation(
    model: Model,
    keys: Float[torch.Tensor, "layers n kv_heads d_head"],
    positions: torch.Tensor,
) -> Float[torch.Tensor, "layers n kv_heads d_head"]:
    """The model's own rotary rotation of un-rotated `keys` (as captured at `hook_k`) at
    integer `positions`: each key is written into `hook_k` of a plain forward (positions
    0, 1, 2, ...) at the physical index equal to its position, and read back at
    `hook_rot_k`. Keys sharing a position go into separate forwards. Nothing here knows
    the rotary variant: the model applies its own (partial, NTK-by-parts, YaRN, ...)."""
    pos = positions.flatten()
    if pos.is_floating_point():
        if not torch.equal(pos, pos.round()):
            raise TempoError("model_rotation reads the model's rotation at integer positions")
        pos = pos.long()
    if pos.numel() == 0:
        return keys.clone()
    n_layers = keys.shape[0]
    length = int(pos.max()) + 1
    seen: Counter[int] = Counter()
    rank = torch.zeros_like(pos)
    for i, p in enumerate(pos.tolist()):
        rank[i] = seen[p]  # how many earlier keys share this position
        seen[p] += 1
    out = torch.empty_like(keys)
    plain = Layout.from_prompt(torch.zeros(length, dtype=torch.long))
    for r in range(int(rank.max()) + 1):
        which = (rank == r).nonzero().flatten()
        at = pos[which]

        def patch(k: torch.Tensor, hook: Any, layer: int, which=which, at=at) -> torch.Tensor:
            k = k.clone()
            k[0, at.to(k.device)] = keys[layer, which].to(device=k.device, dtype=k.dtype)
            return k

        hooks = [
            (get_act_name("k", layer), partial(patch, layer=layer)) for layer in range(n_layers)
        ]
        _, cache = forward(model, plain, isolate=False, fwd_hooks=hooks, cache=["hook_rot_k"])
        for layer in range(n_layers):
            rot = cache[get_act_name("rot_k", layer)][0]
            out[layer, which] = rot[at.to(rot.device)].to(out)
    return out


def rope_check(model: Model, layout: Layout, isolate: bool = True) -> dict[str, Any]:
    """Position sharing read off the model: the rotated keys (`hook_rot_k`) of generated
    tokens vs the model's own rotation (`model_rotation`) of their un-rotated keys
    (`hook_k`) at the LOGICAL position (must agree to float error) and at the PHYSICAL
    position (must differ wherever the two differ). `reference_valid` is False when some
    logical position is fractional (the model's own rotation is read at integer
    positions only; those keys are left out of the logical check). A model without
    `hook_rot_k` (learned positions, or a bridge architecture that exposes no rotary
    hook) raises a TempoError."""
    no_hook = TempoError(
        "the positions check reads rotated keys at hook_rot_k, which this model does not "
        "have or never fires; use a rotary model (on the bridge: one whose attention runs "
        "hook_rot_k)"
    )
    if get_act_name("rot_k", 0) not in model.hook_dict:
        raise no_hook
    try:
        _, acts = replay(model, layout, isolate, ("hook_k", "hook_rot_k"))
    except KeyError:  # the hook point exists but the forward never ran it
        raise no_hook from None
    n = len(layout)
    gen = generated_rows(layout)
    positions = layout.positions
    integral = positions == positions.round()
    shifted = gen[positions[gen] != torch.arange(n)[gen]]
    checked = gen[integral[gen]]
    k, rot = acts["hook_k"], acts["hook_rot_k"]
    ref_log = model_rotation(model, k[:, checked], positions[checked].round().long())
    ref_phy = model_rotation(model, k[:, shifted], shifted)
    err_logical = (rot[:, checked] - ref_log).abs().flatten(1).amax(1)
    if len(shifted):
        diff_physical = (rot[:, shifted] - ref_phy).abs().amax((2, 3)).amin(1).tolist()
    else:
        diff_physical = [0.0] * k.shape[0]
    sets = {}
    for s in range(layout.n_steps):
        sl = layout.set_slice(s)
        sets[s] = sorted({float(p) for p in layout.positions[sl].tolist()})
    return {
        "n_generated": int(len(gen)),
        "n_shifted": int(len(shifted)),
        "max_err_logical_by_layer": err_logical.tolist(),
        "max_err_logical": float(err_logical.max()),
        "min_diff_physical_by_layer": diff_physical,
        "min_diff_physical": min(diff_physical),
        "key_scale": float(rot[:, gen].abs().max()),
        "set_positions": [sets[s] for s in sorted(sets)],
        "reference_valid": bool(integral[gen].all()),
    }


def time_modes(
    model: Any,
    prompt: str,
    *,
    reps: int,
    threshold: float,
    max_steps: int,
    next_from: str,
    max_parallel: int | None,
    eos_token_id: int | None | Any = -1,
) -> dict[str, Any]:
    """Wall time of isolated vs visible generation: one warm-up of each (discarded), then
    `reps` pairs in alternating order (iso-vis, vis-iso, ...) so drift and order effects
    hit both modes alike. Median and IQR per mode, and the median of per-pair ratios."""
    kw = dict(
        threshold=threshold,
        max_steps=max_steps,
        next_from=next_from,
        max_parallel=max_parallel,
        eos_token_id=eos_token_id,
        progress=False,  # no bar inside a timed loop
    )
    for iso in (True, False):
        generate(model, prompt, isolate=iso, **kw)
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(reps):
        for iso in (True, False) if r % 2 == 0 else (False, True):
            t0 = time.perf_counter()
            generate(model, prompt, isolate=iso, **kw)
            times[iso].append(time.perf_counter() - t0)

    def spread(v: list[float]) -> dict[str, float]:
        q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
        return {"median": float(q50), "q25": float(q25), "q75": float(q75)}

    ratios = [v / i for i, v in zip(times[True], times[False], strict=True)]
    return {
        "reps": reps,
        "warmup_discarded": 1,
        "order": "alternating iso-vis / vis-iso",
        "isolated_s": spread(times[True]),
        "visible_s": spread(times[False]),
        "ratio_vis_over_iso_median": float(np.median(ratios)),
        "visible_faster_pct": float((1 - np.median(ratios)) * 100),
    }
