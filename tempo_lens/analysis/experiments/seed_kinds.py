"""The experiment kinds of the seeds' study, redone: attention (A), logits (B),
cross-parallel attention (C), positions (D), high parallelism, and the prompt-suite
sweep (`tempo_lens.analysis.experiments.sweep`). Each is a `Kind` value with its own typed
config keys, listed in `tempo_lens.analysis.experiments.registry.KINDS`.

Shared vocabulary: a *pair* is the isolated and the visible run of one prompt at one
threshold and next_from. The *forced* comparison replays ONE layout (the isolated run's,
unless said otherwise) under both masks: identical tokens, different mask. The
*free-running* comparison sets the two generations side by side step by step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tempo_lens.analysis import measures as M
from tempo_lens.analysis import stats as S
from tempo_lens.analysis.experiments.kind import Count, Kind, KindKeys, NonNegative
from tempo_lens.analysis.experiments.markdown import (
    fmt,
    layer_table,
    rounded,
    sections_report,
    table,
)
from tempo_lens.analysis.experiments.plots import save_plot
from tempo_lens.analysis.experiments.runs import RunSpec, bar, ensure_runs, grid, pairs
from tempo_lens.errors import TempoError
from tempo_lens.run import TempoRun

Section = dict[str, Any]  # a resolved config (`Kind.run`)
Summary = dict[str, Any]  # a kind's JSON-able figures

# Common keys of the resampling statistics, which only the sweep reads.
STATS = ("seed", "bootstrap", "permutations")


class TimingKeys(KindKeys):
    """Keys of a kind that also times the modes (`measures.time_modes`)."""

    timing_reps: Count = 10  # interleaved repetitions of each mode (0: no timing)


class PositionsKeys(KindKeys):
    tolerance: NonNegative = 1e-3  # max |rotated key - RoPE(key, logical position)|


def _clean_tokens(run: TempoRun) -> list[int]:
    return [s.tokens[0] for s in run.steps]


def _mean(v: list[float]) -> float | None:
    return float(np.mean(v)) if len(v) else None


PAIR_BATCH = 16  # pairs whose replays share one batched forward per mask


def analyse_pairs(
    model: Any,
    pairs: list[tuple[TempoRun, TempoRun, str]],
    *,
    detail: bool,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """`analyse_pair` of many (isolated, visible, next_from) pairs, their replays run
    `PAIR_BATCH` pairs at a time in batched forwards (`measures.replay_many`), the pairs
    taken by the length of their isolated layout (so a batch pads little); the results
    come back in `pairs`' order."""
    out: dict[int, dict[str, Any]] = {}
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0].layout))
    with bar([], progress, "pairs", total=len(pairs)) as done:
        for start in range(0, len(pairs), PAIR_BATCH):
            chosen = order[start : start + PAIR_BATCH]
            isos = [pairs[i][0].layout for i in chosen]
            ii = M.replay_many(model, isos, True)
            iv = M.replay_many(model, isos, False)
            vv = M.replay_many(model, [pairs[i][1].layout for i in chosen], False)
            for i, replays in zip(chosen, zip(ii, iv, vv, strict=True), strict=True):
                out[i] = _analyse(*pairs[i], replays, detail=detail)
            done.update(len(chosen))
    return [out[i] for i in range(len(pairs))]


def _analysed_pairs(model: Any, runs: Any, section: Section) -> list[tuple]:
    """(spec, iso, vis, `analyse_pair` with detail) of every pair of the section's runs."""
    trios = list(_pair_runs(runs, section))
    done = analyse_pairs(
        model, [(iso, vis, spec.next_from) for spec, iso, vis in trios], detail=True
    )
    return [(*trio, res) for trio, res in zip(trios, done, strict=True)]


def analyse_pair(
    model: Any, iso: TempoRun, vis: TempoRun, next_from: str, *, detail: bool
) -> dict[str, Any]:
    """Everything one (isolated, visible) pair answers. Three replays: the isolated
    layout under both masks (forced comparison) and the visible layout under its own
    mask (free-running comparison, equal to the generation's own forwards)."""
    return analyse_pairs(model, [(iso, vis, next_from)], detail=detail)[0]


def _analyse(
    iso: TempoRun, vis: TempoRun, next_from: str, replays: tuple, *, detail: bool
) -> dict[str, Any]:
    li, lv = iso.layout, vis.layout
    (logit_ii, pat_ii), (logit_iv, pat_iv), (logit_vv, pat_vv) = replays
    p_ii = pat_ii["hook_pattern"]
    p_iv = pat_iv["hook_pattern"]
    p_vv = pat_vv["hook_pattern"]
    d_ii = M.step_distributions(logit_ii, li, iso.steps, next_from)
    d_iv = M.step_distributions(logit_iv, li, iso.steps, next_from)
    d_vv = M.step_distributions(logit_vv, lv, vis.steps, next_from)
    forced = M.distribution_distances(d_ii, d_iv)
    n_common = min(len(d_ii), len(d_vv))
    free_kl = M.distribution_kl(d_ii[:n_common], d_vv[:n_common])
    div = M.divergence_step(iso.steps, vis.steps)
    rows = M.generated_rows(li)
    attn = M.pattern_difference(p_ii[:, :, rows], p_iv[:, :, rows])
    # the same without the entries isolation masks (sibling keys): a difference there is
    # there by construction
    attn_out = M.pattern_difference(
        p_ii[:, :, rows], p_iv[:, :, rows], exclude=M.sibling_entries(li, rows)
    )
    cross_vis = M.cross_set_attention(p_iv, li)
    cross_iso = M.cross_set_attention(p_ii, li)
    out: dict[str, Any] = {
        "tokens_identical": div is None,
        "divergence_step": div,
        "steps": [len(iso.steps), len(vis.steps)],
        "set_sizes": [[len(s) for s in iso.steps], [len(s) for s in vis.steps]],
        "mean_set_size": [_mean([len(s) for s in r.steps]) for r in (iso, vis)],
        "collapse": [S.repetition_collapse(_clean_tokens(r)) for r in (iso, vis)],
        "forced_kl_mean": _mean(forced["kl"][1:]),
        "forced_js_mean": _mean(forced["js"][1:]),
        "forced_top1_mean": _mean(forced["top1"][1:]),
        "forced_kl_max": max(forced["kl"]),
        # step 0 reads the same prompt in both runs (KL 0 by construction): left out
        "free_kl_mean": _mean(free_kl[1:]),
        "multi_member": any(len(s) > 1 for r in (iso, vis) for s in r.steps),
        "free_kl_after_divergence": _mean(free_kl[div:]) if div is not None else None,
        "forced_attention_max_abs_diff": attn["max_abs_diff"],
        "forced_attention_corr": attn["corr"],
        "forced_attention_layer_mean_abs_diff": attn["layer_mean_abs_diff"],
        "forced_attention_max_abs_diff_no_siblings": attn_out["max_abs_diff"],
        "forced_attention_corr_no_siblings": attn_out["corr"],
        "sibling_attention_visible": cross_vis.get("siblings_all"),
        "sibling_attention_isolated": cross_iso.get("siblings_all"),
        "received_isolated": M.received_attention(p_ii, li),
        "received_visible": M.received_attention(p_vv, lv),
        "matched_isolated": M.position_matched_received(p_ii, li),
        "matched_visible": M.position_matched_received(p_vv, lv),
    }
    if detail:
        out["forced_per_step"] = forced
        out["free_kl_per_step"] = free_kl
        out["forced_attention"] = attn
        out["sibling_attention_visible_by_layer"] = cross_vis.get("siblings_by_layer")
        out["text"] = [iso.text(), vis.text()]
    return rounded(out)


def _timing(model: Any, section: dict[str, Any], prompt: str) -> dict[str, Any]:
    if not section.get("timing_reps"):
        return {}
    return M.time_modes(
        model,
        prompt,
        reps=section["timing_reps"],
        threshold=section["thresholds"][0],
        max_steps=section["max_steps"],
        next_from=section["next_from"][0],
        max_parallel=section["max_parallel"],
        eos_token_id=-1 if section["stop_at_eos"] else None,
    )


def _grid_runs(
    model: Any, section: dict[str, Any], out_dir: Path, progress: bool, **kw: Any
) -> list[tuple[RunSpec, TempoRun]]:
    """Every run of the config's grid (`ensure_runs`), beside its spec."""
    runs = ensure_runs(model, section, out_dir, progress, **kw)
    return [(spec, runs[spec.run_id]) for spec in grid(section)]


def _pair_runs(
    runs: dict[str, TempoRun], section: dict[str, Any]
) -> list[tuple[RunSpec, TempoRun, TempoRun]]:
    return [(i, runs[i.run_id], runs[v.run_id]) for i, v in pairs(section)]


# A: attention


def _attention_lines(p: dict[str, Any]) -> list[str]:
    fa = p["forced_attention"]
    return [
        f"Prompt {p['prompt']!r}, threshold {p['threshold']}, next_from {p['next_from']}:",
        f"isolated `{p['text'][0]}` / visible `{p['text'][1]}`; tokens identical: "
        f"{p['tokens_identical']}, divergence step: {p['divergence_step']}.",
        "",
        f"Forced replay (isolated run's layout under both masks): max |diff| "
        f"{fmt(fa['max_abs_diff'])}, correlation {fmt(fa['corr'])}; sibling attention "
        f"visible {fmt(p['sibling_attention_visible'])} vs isolated "
        f"{fmt(p['sibling_attention_isolated'])}.",
        f"Free-running (captured during generation, {p['free_running']['n_forwards']} "
        f"forwards before divergence): max |diff| "
        f"{fmt(p['free_running'].get('max_abs_diff'))}, correlation "
        f"{fmt(p['free_running'].get('corr'))}.",
        "",
        layer_table(
            {
                "forced max|diff|": fa["layer_max_abs_diff"],
                "forced mean|diff|": fa["layer_mean_abs_diff"],
                "forced corr": fa["layer_corr"],
                "free max|diff|": p["free_running"].get("layer_max_abs_diff") or [],
            }
        ),
        "",
        "Per-head max |diff| and correlation: `summary.json` → "
        "`pairs[].forced_attention.head_*` (`[layer][head]`).",
        "",
    ]


def attention_kind(model: Any, section: Section, out_dir: Path, progress: bool) -> Summary:
    """Hypothesis A: are isolated and visible attention patterns the same?"""
    runs = ensure_runs(
        model, section, out_dir, progress, modes=["isolated", "visible"], cache=["hook_pattern"]
    )
    results = []
    for spec, iso, vis, res in _analysed_pairs(model, runs, section):
        res["free_running"] = rounded(_free_running_attention(iso, vis, res["divergence_step"]))
        results.append(
            {"prompt": spec.prompt, "threshold": spec.threshold, "next_from": spec.next_from, **res}
        )
    first = results[0]

    def draw(ax: Any) -> None:
        fa = first["forced_attention"]
        ax.plot(fa["layer_max_abs_diff"], marker="o", label="forced max |diff|")
        ax.plot(fa["layer_mean_abs_diff"], marker=".", label="forced mean |diff|")
        fr = first["free_running"].get("layer_max_abs_diff")
        if fr:
            ax.plot(fr, marker="x", label="free-running max |diff|")
        ax.set_xlabel("layer")
        ax.set_ylabel("|attention iso - vis|")
        ax.legend()

    save_plot(out_dir, "attention_diff_by_layer.png", draw)
    return {"n_prompts": len(section["prompts"]), "pairs": results}


def _free_running_attention(iso: TempoRun, vis: TempoRun, div: int | None) -> dict[str, Any]:
    """Captured patterns of the forwards both runs share token for token (the sets
    before the divergence step), compared element-wise."""
    n_layers = len([k for k in iso.activations if k.endswith("hook_pattern")])
    last = len(iso.steps) if div is None else div
    fwd = list(range(1, last + 1))
    if not fwd:
        return {"n_forwards": 0}
    a = torch.stack(
        [
            torch.cat([iso.captured(f"blocks.{L}.attn.hook_pattern", f).flatten(1) for f in fwd], 1)
            for L in range(n_layers)
        ]
    ).double()
    b = torch.stack(
        [
            torch.cat([vis.captured(f"blocks.{L}.attn.hook_pattern", f).flatten(1) for f in fwd], 1)
            for L in range(n_layers)
        ]
    ).double()
    d = M.pattern_difference(a, b)
    return {
        "n_forwards": len(fwd),
        "max_abs_diff": d["max_abs_diff"],
        "corr": d["corr"],
        "layer_max_abs_diff": d["layer_max_abs_diff"],
        "layer_corr": d["layer_corr"],
    }


# B: logits


def _logits_lines(p: dict[str, Any]) -> list[str]:
    f = p["forced_per_step"]
    return [
        f"Prompt {p['prompt']!r}, threshold {p['threshold']}: tokens identical "
        f"{p['tokens_identical']}, free-running divergence step {p['divergence_step']}. "
        f"Replay reproduces the generation's saved distributions to "
        f"{fmt(p['replay_vs_saved_max_abs_prob_diff'])} (max |prob diff|).",
        "",
        "Forced (isolated run's layout, both masks); step j = the distribution that "
        "selected set j (step 0 reads the prompt, identical by construction):",
        "",
        table(
            [
                "step",
                "set size",
                "KL",
                "JS",
                "cosine",
                "top1",
                "top5",
                "top10",
                "top20",
                "free-running KL",
            ],
            [
                [
                    j,
                    p["set_sizes"][0][j],
                    f["kl"][j],
                    f["js"][j],
                    f["cosine"][j],
                    f["top1"][j],
                    f["top5"][j],
                    f["top10"][j],
                    f["top20"][j],
                    p["free_kl_per_step"][j] if j < len(p["free_kl_per_step"]) else "-",
                ]
                for j in range(len(f["kl"]))
            ],
        ),
        "",
    ]


def _timing_lines(summary: dict[str, Any]) -> list[str]:
    """The interleaved timing of the modes, when the kind timed them."""
    t = summary.get("timing", {})
    if "isolated_s" not in t:
        return []
    i, v = t["isolated_s"], t["visible_s"]
    return [
        f"Timing ({t['reps']} interleaved repetitions after a discarded warm-up): isolated "
        f"median {i['median']:.3f} s (IQR {i['q25']:.3f}-{i['q75']:.3f}), visible median "
        f"{v['median']:.3f} s (IQR {v['q25']:.3f}-{v['q75']:.3f}); median vis/iso ratio "
        f"{t['ratio_vis_over_iso_median']:.3f}.",
        "",
    ]


def logits_kind(model: Any, section: Section, out_dir: Path, progress: bool) -> Summary:
    """Hypothesis B: are the modes' next-token distributions the same?"""
    runs = ensure_runs(
        model, section, out_dir, progress, modes=["isolated", "visible"], keep_logits=True
    )
    results = []
    for spec, iso, _vis, res in _analysed_pairs(model, runs, section):
        saved = M.step_distributions(torch.cat(iso.logits), iso.layout, iso.steps, spec.next_from)
        replayed, _ = M.replay(model, iso.layout, True, ())
        again = M.step_distributions(replayed, iso.layout, iso.steps, spec.next_from)
        res["replay_vs_saved_max_abs_prob_diff"] = S.sig(float((saved - again).abs().max()))
        results.append(
            {"prompt": spec.prompt, "threshold": spec.threshold, "next_from": spec.next_from, **res}
        )
    first = results[0]

    def draw(ax: Any) -> None:
        ax.semilogy(
            [max(x, 1e-12) for x in first["forced_per_step"]["kl"]],
            marker="o",
            label="forced KL(iso || vis)",
        )
        ax.semilogy(
            [max(x, 1e-12) for x in first["free_kl_per_step"]], marker="x", label="free-running KL"
        )
        ax.set_xlabel("step")
        ax.set_ylabel("KL (nats, floor 1e-12)")
        ax.legend()

    save_plot(out_dir, "kl_by_step.png", draw)
    timing = _timing(model, section, section["prompts"][0]["text"])
    return {"n_prompts": len(section["prompts"]), "pairs": results, "timing": timing}


# C: cross-parallel attention


def _cross_lines(r: dict[str, Any]) -> list[str]:
    c = r["cross"]
    if not c["n_rows"]:
        return [f"{r['run']}: no multi-member set, nothing to measure.", ""]
    return [
        f"{r['run']} `{r['text']}`: {c['n_rows']} member rows. Mean attention mass to "
        f"siblings {fmt(c['siblings_all'])}, self {fmt(c['self_all'])}, prompt "
        f"{fmt(c['prompt_all'])}, earlier steps {fmt(c['earlier_steps_all'])}. The same "
        f"layout under the isolated mask: siblings {fmt(r['siblings_isolated'])}. "
        f"Captured-during-generation vs replay: max |diff| "
        f"{fmt(r['captured_vs_replay_max_abs_diff'])}.",
        "",
        layer_table(
            {
                "siblings": c["siblings_by_layer"],
                "self": c["self_by_layer"],
                "prompt": c["prompt_by_layer"],
                "earlier steps": c["earlier_steps_by_layer"],
                "max-head siblings": [max(heads) for heads in c["siblings"]],
            }
        ),
        "",
    ]


def cross_parallel_kind(model: Any, section: Section, out_dir: Path, progress: bool) -> Summary:
    """Hypothesis C: how much attention do visible set members pay each other?"""
    results = []
    for spec, run in _grid_runs(model, section, out_dir, progress, cache=["hook_pattern"]):
        _, acts = M.replay(model, run.layout, spec.isolate)
        pat = acts["hook_pattern"]
        worst = 0.0
        for s in range(len(run.steps)):
            sl = run.layout.set_slice(s)
            for L in range(model.cfg.n_layers):
                cap = run.captured(f"blocks.{L}.attn.hook_pattern", s + 1).double()
                worst = max(worst, float((cap - pat[L, :, sl, : sl.stop]).abs().max()))
        _, iso_acts = M.replay(model, run.layout, True)
        iso_cross = M.cross_set_attention(iso_acts["hook_pattern"], run.layout)
        results.append(
            rounded(
                {
                    "run": spec.run_id,
                    "mode": spec.mode,
                    "text": run.text(),
                    "cross": M.cross_set_attention(pat, run.layout),
                    "siblings_isolated": iso_cross.get("siblings_all"),
                    "captured_vs_replay_max_abs_diff": worst,
                }
            )
        )
    c = results[0]["cross"]
    if c["n_rows"]:

        def draw(ax: Any) -> None:
            layers = np.arange(len(c["siblings_by_layer"]))
            bottom = np.zeros(len(layers))
            for key in ("siblings", "self", "prompt", "earlier_steps"):
                vals = np.array(c[f"{key}_by_layer"])
                ax.bar(layers, vals, bottom=bottom, label=key)
                bottom += vals
            ax.set_xlabel("layer")
            ax.set_ylabel("attention mass (member rows)")
            ax.legend(fontsize=8)

        save_plot(out_dir, "cross_parallel_by_layer.png", draw)
    return {"n_prompts": len(section["prompts"]), "runs": results}


# D: positions


def _positions_lines(r: dict[str, Any]) -> list[str]:
    c = r["rope"]
    return [
        f"{r['run']} `{r['text']}`: {c['n_generated']} generated keys "
        f"({c['n_shifted']} at a logical position different from their physical one).",
        f"Set positions (logical): {c['set_positions']}.",
        f"max |hook_rot_k - RoPE(hook_k, logical)| = {fmt(c['max_err_logical'])} "
        f"(keys up to {fmt(c['key_scale'])} in size); min over shifted keys of "
        f"max |hook_rot_k - RoPE(hook_k, physical)| = {fmt(c['min_diff_physical'])}. "
        f"Verdict: positions shared in the model: {r['shared_in_model']}.",
        "",
        layer_table(
            {
                "max err vs logical": c["max_err_logical_by_layer"],
                "min diff vs physical": c["min_diff_physical_by_layer"],
            }
        ),
        "",
    ]


def positions_kind(model: Any, section: Section, out_dir: Path, progress: bool) -> Summary:
    """Hypothesis D: do set members really share one position inside the model?"""
    if not model.cfg.positional_embedding_type == "rotary":
        raise TempoError("the positions kind checks rotated keys; use a rotary model")
    results = []
    for spec, run in _grid_runs(model, section, out_dir, progress):
        c = M.rope_check(model, run.layout, spec.isolate)
        ok = c["max_err_logical"] <= section["tolerance"] and (
            c["n_shifted"] == 0 or c["min_diff_physical"] > 10 * section["tolerance"]
        )
        results.append(
            rounded(
                {
                    "run": spec.run_id,
                    "text": run.text(),
                    "rope": c,
                    "shared_in_model": ok and c["reference_valid"],
                }
            )
        )
    return {"n_prompts": len(section["prompts"]), "runs": results}


# Exp 5: high parallelism


def _high_lines(p: dict[str, Any]) -> list[str]:
    return [
        f"Prompt {p['prompt']!r}, threshold {p['threshold']}:",
        f"- isolated `{p['text'][0]}` set sizes {p['set_sizes'][0]}",
        f"- visible `{p['text'][1]}` set sizes {p['set_sizes'][1]}",
        f"- tokens identical {p['tokens_identical']}, divergence step "
        f"{p['divergence_step']}; forced KL mean (steps >= 1) {fmt(p['forced_kl_mean'])}, "
        f"max {fmt(p['forced_kl_max'])}; forced attention max |diff| "
        f"{fmt(p['forced_attention_max_abs_diff'])} (corr "
        f"{fmt(p['forced_attention_corr'])}); visible sibling attention "
        f"{fmt(p['sibling_attention_visible'])}.",
        "",
    ]


def high_parallelism_kind(model: Any, section: Section, out_dir: Path, progress: bool) -> Summary:
    """Low threshold, big sets: do the modes still agree, and at what cost?"""
    runs = ensure_runs(model, section, out_dir, progress, modes=["isolated", "visible"])
    results = []
    for spec, _iso, _vis, res in _analysed_pairs(model, runs, section):
        results.append(
            {"prompt": spec.prompt, "threshold": spec.threshold, "next_from": spec.next_from, **res}
        )
    timing = _timing(model, section, section["prompts"][0]["text"])
    return {"n_prompts": len(section["prompts"]), "pairs": results, "timing": timing}


REPORT_ATTENTION = sections_report(
    "## A. Attention, isolated vs visible", "pairs", _attention_lines
)
REPORT_LOGITS = sections_report(
    "## B. Next-token distributions, isolated vs visible", "pairs", _logits_lines, _timing_lines
)
REPORT_CROSS = sections_report(
    "## C. Cross-parallel attention (visible mode, every query row of every set)",
    "runs",
    _cross_lines,
)
REPORT_POSITIONS = sections_report(
    "## D. Position sharing, read off the model's rotated keys", "runs", _positions_lines
)
REPORT_HIGH = sections_report("## High parallelism", "pairs", _high_lines, _timing_lines)

# Kinds that always generate both modes of each prompt do not read `modes` either.
PAIRED_UNUSED = ("modes", *STATS)

ATTENTION = Kind("attention", attention_kind, report=REPORT_ATTENTION, unused=PAIRED_UNUSED)
LOGITS = Kind("logits", logits_kind, TimingKeys, REPORT_LOGITS, unused=PAIRED_UNUSED)
CROSS_PARALLEL = Kind("cross_parallel", cross_parallel_kind, report=REPORT_CROSS, unused=STATS)
POSITIONS = Kind("positions", positions_kind, PositionsKeys, REPORT_POSITIONS, unused=STATS)
HIGH_PARALLELISM = Kind(
    "high_parallelism", high_parallelism_kind, TimingKeys, REPORT_HIGH, unused=PAIRED_UNUSED
)
