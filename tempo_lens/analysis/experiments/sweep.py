"""The prompt-suite sweep: every prompt × {isolated, visible} × thresholds × next_from,
with statistics across prompts. Resumable (finished runs are skipped) and shown with a
progress bar; the analysis replays saved runs, so it is recomputed exactly on re-run.

Figures per (threshold, next_from) configuration, each with the n of prompts behind it,
for all pairs and for the *healthy* pairs (neither run flagged by
`stats.repetition_collapse`) separately.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from tempo_lens.analysis import measures as M
from tempo_lens.analysis import stats as S
from tempo_lens.analysis.experiments.kind import Count, Kind, Unit
from tempo_lens.analysis.experiments.markdown import fmt, rounded, table
from tempo_lens.analysis.experiments.plots import save_plot
from tempo_lens.analysis.experiments.runs import bar, ensure_runs, pairs
from tempo_lens.analysis.experiments.seed_kinds import TimingKeys, analyse_pairs

RATIOS = ("token_in", "token_out", "set_in", "set_out")


def _aggregate(records: list[dict[str, Any]], kw: dict[str, Any]) -> dict[str, Any]:
    def vals(key: str) -> list[float]:
        return [r[key] for r in records if r[key] is not None]

    out: dict[str, Any] = {
        "n_pairs": len(records),
        "tokens_identical": S.proportion([r["tokens_identical"] for r in records], **_boot(kw)),
        "divergence_step": S.describe(
            [r["divergence_step"] for r in records if r["divergence_step"] is not None], **_boot(kw)
        ),
        "forced_kl_mean": S.describe(vals("forced_kl_mean"), **_boot(kw)),
        "forced_js_mean": S.describe(vals("forced_js_mean"), **_boot(kw)),
        "forced_top1_mean": S.describe(vals("forced_top1_mean"), **_boot(kw)),
        "free_kl_mean": S.describe(vals("free_kl_mean"), **_boot(kw)),
        "free_kl_after_divergence": S.describe(vals("free_kl_after_divergence"), **_boot(kw)),
        "forced_attention_max_abs_diff": S.describe(
            vals("forced_attention_max_abs_diff"), **_boot(kw)
        ),
        "forced_attention_corr": S.describe(vals("forced_attention_corr"), **_boot(kw)),
        "sibling_attention_visible": S.describe(vals("sibling_attention_visible"), **_boot(kw)),
        "sibling_attention_isolated_max": max(vals("sibling_attention_isolated"), default=None),
        "mean_set_size_iso_vs_vis": S.paired(
            [r["mean_set_size"][0] for r in records],
            [r["mean_set_size"][1] for r in records],
            **kw,
        ),
        "collapse_isolated": S.proportion([r["collapse"][0] for r in records], **_boot(kw)),
        "collapse_visible": S.proportion([r["collapse"][1] for r in records], **_boot(kw)),
        "collapse_iso_vs_vis": S.paired(
            [float(r["collapse"][0]) for r in records],
            [float(r["collapse"][1]) for r in records],
            **kw,
        ),
    }
    layers = [r["forced_attention_layer_mean_abs_diff"] for r in records]
    if layers:
        by_layer = np.mean(layers, 0)
        out["forced_attention_layer_mean_abs_diff"] = [S.sig(x) for x in by_layer]
        out["top_layers"] = [int(i) for i in np.argsort(-by_layer)[:5]]
    for mode in ("isolated", "visible"):
        rec = [r[f"received_{mode}"] for r in records if r[f"received_{mode}"]]
        block: dict[str, Any] = {"n": len(rec)}
        for key in RATIOS:
            pct = [(x[key] - 1) * 100 for x in rec]
            block[f"{key}_pct"] = S.one_sample(pct, **kw)
            if rec:
                block[f"{key}_by_layer"] = [
                    S.sig(x) for x in np.mean([x[f"{key}_by_layer"] for x in rec], 0)
                ]
        # the same ratios on the log scale (geometric mean), and per layer with Holm
        # over the layers
        for key in ("token_in", "token_out", "set_in"):
            block[f"{key}_log"] = _log_test([x[key] for x in rec], kw)
        if rec:
            block["token_in_layers_holm"] = _layer_family([x["token_in_by_layer"] for x in rec], kw)
        out[f"received_{mode}"] = block
        out[f"matched_{mode}"] = _matched(
            [r[f"matched_{mode}"] for r in records if r[f"matched_{mode}"]], kw
        )
    out["tokens_identical_multi_member"] = S.proportion(
        [r["tokens_identical"] for r in records if r["multi_member"]]
    )
    for key in ("forced_attention_max_abs_diff_no_siblings", "forced_attention_corr_no_siblings"):
        out[key] = S.describe(vals(key), **_boot(kw))
    both = [r for r in records if r["received_isolated"] and r["received_visible"]]
    out["received_token_in_iso_vs_vis"] = S.paired(
        [r["received_isolated"]["token_in"] for r in both],
        [r["received_visible"]["token_in"] for r in both],
        **kw,
    )
    return out


def _log_test(ratios: list[float], kw: dict[str, Any]) -> dict[str, Any]:
    return S.log_ratio_test(ratios, **kw).summary()


def _layer_family(by_layer: list[list[float]], kw: dict[str, Any]) -> dict[str, Any]:
    """Per layer, the log-ratio test of one ratio over prompts, Holm-corrected over the
    layers (the family); compact: the significant layers and per layer the geometric
    mean and Holm-adjusted p."""
    rows = np.asarray(by_layer, dtype=np.float64)
    fam = S.holm_family(
        {L: rows[:, L].tolist() for L in range(rows.shape[1])},
        lambda xs: S.log_ratio_test(xs, **kw),
    )
    tests = fam.tests
    return {
        "m": fam.holm.m,
        "significant_below_1": [
            L
            for L, t in zip(fam.labels, tests, strict=True)
            if L in fam.significant() and (t.geometric_mean or 1) < 1
        ],
        "significant_above_1": [
            L
            for L, t in zip(fam.labels, tests, strict=True)
            if L in fam.significant() and (t.geometric_mean or 1) > 1
        ],
        "geometric_mean": [S.sig(t.geometric_mean) for t in tests],
        "p_holm": [S.sig(p) for p in fam.holm.p_adjusted],
    }


def _matched(rec: list[dict[str, Any]], kw: dict[str, Any]) -> dict[str, Any]:
    """Position-matched attention received (`measures.position_matched_received`) over
    prompts: the headline ratio on the log scale, per layer with Holm, the distance
    regression, and the raw unmatched ratio (secondary)."""
    out: dict[str, Any] = {"n": len(rec)}
    if not rec:
        return out
    reg = [r["regression"] for r in rec if r["regression"]]
    out |= {
        "matched_log": _log_test([r["matched"] for r in rec], kw),
        "matched_layers_holm": _layer_family([r["matched_by_layer"] for r in rec], kw),
        "regression_member_ratio_log": _log_test([r["member_ratio"] for r in reg], kw),
        "regression_per_step_pct": S.describe([r["per_step_pct"] for r in reg], **_boot(kw)),
        "regression_r2": S.describe([r["r2"] for r in reg], **_boot(kw)),
        "raw_token_out_log": _log_test(
            [r["raw_token_out"] for r in rec if r["raw_token_out"] is not None], kw
        ),
        "n_member_cells_unmatched": int(sum(r["n_member_cells_unmatched"] for r in rec)),
    }
    return out


def _boot(kw: dict[str, Any]) -> dict[str, Any]:
    return {"resamples": kw["resamples"], "seed": kw["seed"]}


def _report(summary: dict[str, Any], section: dict[str, Any]) -> str:
    rows = []
    for key, c in summary["configs"].items():
        a = c["all"]
        rows.append(
            [
                key,
                a["n_pairs"],
                f"{a['tokens_identical']['share']} {a['tokens_identical']['ci95']}",
                f"{a['forced_kl_mean']['mean']} {a['forced_kl_mean']['ci95']}",
                f"{a['free_kl_mean']['mean']} {a['free_kl_mean']['ci95']}",
                a["forced_attention_max_abs_diff"]["mean"],
                f"{a['collapse_isolated']['share']} / {a['collapse_visible']['share']}",
                a.get("top_layers"),
            ]
        )
    parts = [
        "## Sweep: isolated vs visible across the prompt suite",
        "",
        f"{summary['n_prompts']} prompts in {len(summary['categories'])} categories; "
        "each figure: mean [bootstrap 95% CI] over prompts (n = pairs).",
        "",
        table(
            [
                "threshold/next_from",
                "n",
                "tokens identical",
                "forced KL",
                "free-running KL",
                "forced attn max|diff|",
                "collapse iso/vis",
                "top layers (attn diff)",
            ],
            rows,
        ),
        "",
        "### Attention received by set members (the seeds' claim)",
        "",
    ]
    rows = []
    for key, c in summary["configs"].items():
        for mode in ("isolated", "visible"):
            b = c["all"][f"received_{mode}"]
            for r in ("token_in", "set_in"):
                d = b[f"{r}_pct"]
                rows.append([key, mode, r, d["n"], d["mean"], d["sd"], d["ci95"], d["p"], d["d_z"]])
    parts += [
        table(["config", "mode", "ratio", "n", "mean %", "sd %", "95% CI", "p", "d_z"], rows),
        "",
        "Definitions: `stats.repetition_collapse`, `measures.received_attention` and "
        "docs/experiments.md.",
    ]
    t = summary.get("timing", {}).get("modes")
    if t:
        parts += [
            "",
            f"Timing: {t['n_prompts']} prompts × {t['reps']} interleaved reps; median "
            f"vis/iso ratio {fmt(t['ratio_vis_over_iso_median'])} (per-prompt range "
            f"{fmt(min(t['per_prompt_ratio']))}-{fmt(max(t['per_prompt_ratio']))}).",
        ]
    return "\n".join(parts)


class SweepKeys(TimingKeys):
    timing_prompts: Count = 0  # prompts timed (spread over the suite; 0: no timing)
    timing_threshold: Unit = 0.1  # the threshold of the timed runs


def sweep_kind(
    model: Any, section: dict[str, Any], out_dir: Path, progress: bool
) -> dict[str, Any]:
    """Isolated vs visible over the whole suite, with paired statistics."""
    t0 = time.perf_counter()
    runs = ensure_runs(
        model, section, out_dir, progress, modes=["isolated", "visible"], order="config"
    )
    t_gen = time.perf_counter() - t0
    done = list(pairs(section, "config"))
    kw = {
        "resamples": section["bootstrap"],
        "permutations": section["permutations"],
        "seed": section["seed"],
    }
    records: dict[str, list[dict[str, Any]]] = {}
    per_pair = []
    results = analyse_pairs(
        model,
        [(runs[iso.run_id], runs[vis.run_id], iso.next_from) for iso, vis in done],
        detail=False,
        progress=progress,
    )
    for (iso, _), res in zip(done, results, strict=True):
        key = f"t{iso.threshold:g}/{iso.next_from}"
        records.setdefault(key, []).append(res)
        per_pair.append(
            {
                "prompt_id": iso.prompt_id,
                "category": iso.category,
                "config": key,
                **{
                    k: v
                    for k, v in res.items()
                    if k
                    not in (
                        "forced_attention_layer_mean_abs_diff",
                        "received_isolated",
                        "received_visible",
                        "matched_isolated",
                        "matched_visible",
                    )
                },
                "received_token_in": [
                    (res[f"received_{m}"] or {}).get("token_in") for m in ("isolated", "visible")
                ],
                "matched": [
                    (res[f"matched_{m}"] or {}).get("matched") for m in ("isolated", "visible")
                ],
            }
        )
    configs = {}
    for key, recs in records.items():
        healthy = [r for r in recs if not any(r["collapse"])]
        configs[key] = {"all": _aggregate(recs, kw), "healthy": _aggregate(healthy, kw)}
    _holm_over_settings(configs)
    t_ana = time.perf_counter() - t0 - t_gen
    timing: dict[str, Any] = {
        "generation_seconds": round(t_gen, 1),
        "analysis_seconds": round(t_ana, 1),
        "sum_of_run_seconds": round(sum(r.seconds for r in runs.values()), 1),
    }
    if section["timing_prompts"]:
        prompts = section["prompts"]
        step = max(1, len(prompts) // section["timing_prompts"])
        chosen = prompts[::step][: section["timing_prompts"]]
        per = [
            M.time_modes(
                model,
                p["text"],
                reps=section["timing_reps"],
                threshold=section["timing_threshold"],
                max_steps=section["max_steps"],
                next_from="mixture",
                max_parallel=section["max_parallel"],
                eos_token_id=-1 if section["stop_at_eos"] else None,
            )
            for p in bar(chosen, progress, "timing prompts")
        ]
        ratios = [t["ratio_vis_over_iso_median"] for t in per]
        timing["modes"] = {
            "n_prompts": len(per),
            "reps": section["timing_reps"],
            "prompt_ids": [p["id"] for p in chosen],
            "per_prompt_ratio": ratios,
            "ratio_vis_over_iso_median": float(np.median(ratios)),
            "isolated_median_s": [t["isolated_s"]["median"] for t in per],
            "visible_median_s": [t["visible_s"]["median"] for t in per],
            "log_ratio_test": S.one_sample(np.log(ratios).tolist(), **kw),
        }
    _plots(out_dir, configs)
    categories = sorted({p["category"] for p in section["prompts"]})
    return rounded(
        {
            "n_prompts": len(section["prompts"]),
            "n_pairs_planned": len(section["prompts"])
            * len(section["thresholds"])
            * len(section["next_from"]),
            "n_pairs_analysed": len(done),
            "categories": categories,
            "n_runs": len(runs),
            "configs": configs,
            "pairs": per_pair,
            "timing": timing,
        }
    )


# paired tests repeated once per setting: Holm-corrected over the settings (the family)
SETTING_TESTS = ("mean_set_size_iso_vs_vis", "collapse_iso_vs_vis", "received_token_in_iso_vs_vis")


def _holm_over_settings(configs: dict[str, Any]) -> None:
    """Add `p_holm` to each per-setting paired test: Holm over the settings."""
    for subset in ("all", "healthy"):
        for test in SETTING_TESTS:
            blocks = [c[subset][test] for c in configs.values()]
            adjusted = S.holm([b.get("p") for b in blocks]).p_adjusted
            for b, p in zip(blocks, adjusted, strict=True):
                b["p_holm"] = S.sig(p)


def _plots(out_dir: Path, configs: dict[str, Any]) -> None:
    def layers(ax: Any) -> None:
        for key, c in configs.items():
            if "forced_attention_layer_mean_abs_diff" in c["all"]:
                ax.plot(c["all"]["forced_attention_layer_mean_abs_diff"], marker=".", label=key)
        ax.set_xlabel("layer")
        ax.set_ylabel("mean |attn iso - vis| (forced)")
        ax.legend(fontsize=7)

    def received(ax: Any) -> None:
        for key, c in configs.items():
            for mode, style in (("isolated", "-"), ("visible", "--")):
                b = c["all"][f"received_{mode}"]
                if "token_in_by_layer" in b and key.endswith("mixture"):
                    ax.plot(b["token_in_by_layer"], style, label=f"{key} {mode}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xlabel("layer")
        ax.set_ylabel("members / others (prompt in)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)

    save_plot(out_dir, "attention_diff_by_layer.png", layers)
    save_plot(out_dir, "received_attention_by_layer.png", received)


SWEEP = Kind("sweep", sweep_kind, SweepKeys, _report, unused=("modes",))
