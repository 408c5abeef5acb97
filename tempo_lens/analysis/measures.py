"""What the experiments measure, as functions of a model and a Layout.

Every measure replays a layout with `tempo_lens.forward` (identical tokens, chosen mask)
so a figure is a pure function of the saved run and the model: re-running an experiment
recomputes it exactly. Shapes: patterns are `[layers, heads, n, n]` (query, key).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from tempo_lens.analysis import metrics
from tempo_lens.generate import forward, generate, next_distribution
from tempo_lens.layout import Layout, ParallelSet

TOPK = (1, 5, 10, 20)


def replay(
    model: Any, layout: Layout, isolate: bool, names: Sequence[str] = ("hook_pattern",)
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits `[n, vocab]` and every layer's `names` stacked `[layers, ...]` (batch
    dropped), from one forward of `layout` under the chosen mask."""
    logits, cache = forward(model, layout, isolate=isolate, cache=list(names) if names else None)
    stacked: dict[str, torch.Tensor] = {}
    for name in names:
        acts = [cache[f"blocks.{i}.attn.{name}"][0] for i in range(model.cfg.n_layers)]
        stacked[name] = torch.stack(acts).double()
    return logits[0].double(), stacked


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


def distribution_distances(p: torch.Tensor, q: torch.Tensor) -> dict[str, list[float]]:
    """Per row: KL(p||q), JS, cosine and top-k overlap (k in TOPK) of probability rows."""
    lp = p.double().clamp_min(1e-300).log()
    lq = q.double().clamp_min(1e-300).log()
    out = {
        "kl": metrics.kl(lp, lq).tolist(),
        "js": metrics.js(lp, lq).tolist(),
        "cosine": metrics.cosine(lp, lq).tolist(),
    }
    for k in TOPK:
        out[f"top{k}"] = metrics.topk_overlap(lp, lq, k).tolist()
    return out


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


def pattern_difference(
    pat_a: Float[torch.Tensor, "layers heads q k"], pat_b: Float[torch.Tensor, "layers heads q k"]
) -> dict[str, Any]:
    """max |a - b|, mean |a - b| and Pearson correlation per layer and head, over the
    given query rows and all keys."""
    a = pat_a.flatten(2)
    b = pat_b.flatten(2)
    diff = (a - b).abs()
    ac, bc = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    denom = (ac.square().sum(-1) * bc.square().sum(-1)).sqrt()
    corr = torch.where(denom > 0, (ac * bc).sum(-1) / denom.clamp_min(1e-300), torch.ones(()))
    la, lb = pat_a.flatten(1), pat_b.flatten(1)
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
        "corr": _corr(pat_a.flatten(), pat_b.flatten()),
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


def rope_reference(
    k: Float[torch.Tensor, "n heads d_head"],
    positions: torch.Tensor,
    base: float,
    rotary_dim: int,
    adjacent_pairs: bool = False,
) -> torch.Tensor:
    """Rotate keys by the textbook RoPE at `positions`: inv_freq_i = base^(-2i/d) over the
    first `rotary_dim` dims, rotate-half pairing (dim i with i + d/2, Llama/NeoX) or
    adjacent pairs (2i, 2i+1, GPT-J). Written from the definition, independent of TL."""
    k = k.double()
    d = rotary_dim
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions.double()[:, None] * inv_freq[None, :]  # [n, d/2]
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
    rot, rest = k[..., :d], k[..., d:]
    if adjacent_pairs:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).flatten(-2)
    else:
        x1, x2 = rot[..., : d // 2], rot[..., d // 2 :]
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    return torch.cat([out, rest], -1)


def rope_check(model: Any, layout: Layout, isolate: bool = True) -> dict[str, Any]:
    """Position sharing read off the model: the rotated keys (`hook_rot_k`) of generated
    tokens vs a reference rotation of the unrotated keys (`hook_k`) at the LOGICAL
    position (must agree to float error) and at the PHYSICAL position (must differ
    wherever the two differ)."""
    cfg = model.cfg
    _, acts = replay(model, layout, isolate, ("hook_k", "hook_rot_k"))
    gen = generated_rows(layout)
    shifted = gen[layout.positions[gen] != torch.arange(len(layout))[gen]]
    phys = torch.arange(len(layout))
    err_logical, diff_physical, scale = [], [], []
    for layer in range(cfg.n_layers):
        k, rot = acts["hook_k"][layer], acts["hook_rot_k"][layer]
        base = float(cfg.rotary_base)
        ref_log = rope_reference(
            k, layout.positions, base, cfg.rotary_dim, cfg.rotary_adjacent_pairs
        )
        ref_phy = rope_reference(k, phys, base, cfg.rotary_dim, cfg.rotary_adjacent_pairs)
        err_logical.append(float((rot[gen] - ref_log[gen]).abs().max()))
        diff_physical.append(
            float((rot[shifted] - ref_phy[shifted]).abs().amax((1, 2)).min())
            if len(shifted)
            else 0.0
        )
        scale.append(float(rot[gen].abs().max()))
    sets = {}
    for s in range(layout.n_steps):
        sl = layout.set_slice(s)
        sets[s] = sorted({float(p) for p in layout.positions[sl].tolist()})
    return {
        "n_generated": int(len(gen)),
        "n_shifted": int(len(shifted)),
        "max_err_logical_by_layer": err_logical,
        "max_err_logical": max(err_logical),
        "min_diff_physical_by_layer": diff_physical,
        "min_diff_physical": min(diff_physical),
        "key_scale": max(scale),
        "set_positions": [sets[s] for s in sorted(sets)],
        "reference_valid": not (cfg.use_NTK_by_parts_rope or getattr(cfg, "use_yarn_rope", False)),
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
