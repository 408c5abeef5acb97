"""Experiment kinds for `tempo-lens experiment`: each generates the config's prompts
(isolated TEMPO, first threshold/next_from of the config), runs one ablation on the
forced layouts, writes its PNGs into `out_dir` and returns the summary figures."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tempo_lens import TempoRun, generate
from tempo_lens.analysis import ablations_dynamic as dyn
from tempo_lens.analysis import ablations_patching as pat
from tempo_lens.analysis import ablations_positions as posn
from tempo_lens.analysis.ablations_hooks import isolate_always_hooks, sibling_window_hooks
from tempo_lens.analysis.ablations_plots import plot_heatmap, plot_lines
from tempo_lens.analysis.experiments.kind import Count, Kind, KindKeys, NonNegative, PositiveInt
from tempo_lens.analysis.experiments.runs import RunOptions, RunSpec, generate_unit

# What every ablation kind declares: it generates isolated runs only, at one threshold
# and next_from, so `modes` is not read and those two take one value.
UNUSED = ("modes",)
SINGLE = ("thresholds", "next_from")


def _texts(section: dict[str, Any]) -> list[str]:
    return [p["text"] for p in section["prompts"]]


def _runs(model: Any, section: dict[str, Any], progress: bool) -> list[TempoRun]:
    """The section's prompts generated isolated, batched under the memory budget."""
    specs = [
        RunSpec(
            f"p{i}",
            "",
            text,
            "isolated",
            float(section["thresholds"][0]),
            section["next_from"][0],
        )
        for i, text in enumerate(_texts(section))
    ]
    options = RunOptions(
        max_steps=section["max_steps"],
        max_parallel=section["max_parallel"],
        eos_token_id=-1 if section["stop_at_eos"] else None,
    )
    return generate_unit(model, specs, options)


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def _restored(kl_vis: list[float], base: float) -> float:
    return 1.0 - _mean(kl_vis) / base if base > 0 else math.nan


class LayerPatchingKeys(KindKeys):
    head_layers: Count = 6  # the top layers whose heads are patched one by one
    batch_size: PositiveInt = 16  # replays per batched forward


def layer_patching_kind(model: Any, section: dict, out_dir: Path, progress: bool) -> dict:
    """Isolation removed per layer (single, 0..L, L..end) and per head of the top layers."""
    t0 = time.perf_counter()
    runs = _runs(model, section, progress)
    bs = section["batch_size"]
    results = pat.layer_patching(model, runs, batch_size=bs)  # all prompts batched
    n_layers = model.cfg.n_layers
    base = _mean([r.baseline.kl_vis_members for r in results])
    base_next = _mean([r.baseline.kl_vis_next for r in results])
    per_layer: dict[str, Any] = {}
    for mode in pat.LAYER_MODES:
        for field in pat.Distances.__dataclass_fields__:
            per_layer[f"{mode}.{field}"] = [
                _r(_mean([r.layers[mode][field][L] for r in results])) for L in range(n_layers)
            ]
        per_layer[f"{mode}.restored"] = [
            _r(_restored([r.layers[mode]["kl_vis_members"][L] for r in results], base))
            for L in range(n_layers)
        ]
    single = per_layer["single.restored"]
    ranked = sorted(range(n_layers), key=lambda L: -(single[L] or 0.0))
    top = ranked[: section["head_layers"]]
    heads = pat.head_patching(model, runs, top, batch_size=bs)
    head_map = [
        [_r(_mean([h[L][i] for h in heads])) for i in range(model.cfg.n_heads)] for L in top
    ]
    x = list(range(n_layers))
    plot_lines(
        out_dir / "layer_curves.png",
        x,
        {f"{m}: restored": per_layer[f"{m}.restored"] for m in pat.LAYER_MODES},
        title="Isolation removed at layer L: share of the iso→vis KL restored",
        xlabel="layer L",
        ylabel="1 − KL(vis‖variant) / KL(vis‖iso)",
    )
    plot_heatmap(
        out_dir / "head_heatmap.png",
        [[v or 0.0 for v in row] for row in head_map],
        rows=[f"L{L}" for L in top],
        cols=[f"h{h}" for h in range(model.cfg.n_heads)],
        title="KL(iso ‖ isolation removed at one head)",
        xlabel="head",
        ylabel="layer",
    )
    (out_dir / "per_prompt.json").write_text(
        json.dumps(
            [{"prompt": r.prompt, **res.to_json()} for r, res in zip(runs, results, strict=True)]
        )
    )
    return {
        "n_prompts": len(runs),
        "n_prompts_with_sets": sum(r.baseline.kl_vis_members > 0 for r in results),
        "n_layers": n_layers,
        "kl_vis_iso_members": _r(base),
        "kl_vis_iso_next": _r(base_next),
        "per_layer": per_layer,
        "top_layers_single": [{"layer": L, "restored": single[L]} for L in ranked[:5]],
        "head_layers": top,
        "head_kl_iso_members": head_map,
        "timing": {"ablation_seconds": round(time.perf_counter() - t0, 1)},
    }


class ActivationPatchingKeys(KindKeys):
    hooks: list[str] = Field(default=["resid_pre", "attn_out", "z"], min_length=1)
    groups: list[str] = Field(default=["all", "members", "later"], min_length=1)
    directions: list[Literal["vis_to_iso", "iso_to_vis"]] = Field(
        default=["vis_to_iso", "iso_to_vis"], min_length=1
    )
    batch_size: PositiveInt = 16


def activation_patching_kind(model: Any, section: dict, out_dir: Path, progress: bool) -> dict:
    """Fraction of the mode difference restored by patching each hook at each layer."""
    runs = _runs(model, section, progress)
    runs = [r for r in runs if bool(r.layout.same_set().any())]
    out: dict[str, Any] = {"n_prompts_with_sets": len(runs)}
    x = list(range(model.cfg.n_layers))
    for direction in section["directions"]:
        curves: dict[str, list] = {}
        for hook in section["hooks"]:
            for group in section["groups"]:
                vals = [
                    pat.activation_patching(
                        model,
                        r,
                        hook=hook,
                        group=group,
                        source_isolate=direction == "iso_to_vis",
                        batch_size=section["batch_size"],
                    )
                    for r in runs
                ]
                curves[f"{hook}/{group}"] = [_r(_mean([v[L] for v in vals])) for L in x]
        out[direction] = curves
        plot_lines(
            out_dir / f"patching_{direction}.png",
            x,
            {k: [v if v is not None else math.nan for v in c] for k, c in curves.items()},
            title=f"Activation patching {direction.replace('_', ' ')}: fraction restored",
            xlabel="layer",
            ylabel="fraction of KL restored",
        )
    return out


class PartialIsolationKeys(KindKeys):
    biases: list[NonNegative] = Field(default=[0, 0.5, 1, 2, 4, 8, 16, 10000], min_length=1)
    windows: list[Count] = Field(default=[0, 1, 2, 3])
    batch_size: PositiveInt = 16


def partial_isolation_kind(model: Any, section: dict, out_dir: Path, progress: bool) -> dict:
    """Finite same-set bias, k-nearest-sibling windows, and isolation scope."""
    runs = _runs(model, section, progress)
    biases, windows = section["biases"], section["windows"]
    bias_rows = pat.bias_sweep(model, runs, biases, batch_size=section["batch_size"])
    variants = lambda r: {  # noqa: E731
        **{f"window {k}": sibling_window_hooks(r.layout, k) for k in windows},
        "isolate always": isolate_always_hooks(r.layout),
    }
    other = [pat.compare_hooks(model, r, variants(r)) for r in runs]

    def avg(rows: list[pat.Distances], field: str) -> float | None:
        return _r(_mean([getattr(d, field) for d in rows]))

    bias_out = {
        f: [avg([b[i] for b in bias_rows], f) for i in range(len(biases))]
        for f in ("kl_iso_members", "kl_vis_members")
    }
    other_out = (
        {
            name: {f: avg([o[name] for o in other], f) for f in pat.Distances.__dataclass_fields__}
            for name in other[0]
        }
        if other
        else {}
    )
    plot_lines(
        out_dir / "bias_sweep.png",
        biases,
        {k: [v if v is not None else math.nan for v in c] for k, c in bias_out.items()},
        title="Partial isolation: bias −b on same-set scores",
        xlabel="b",
        ylabel="mean KL (nats)",
        logx=True,
    )
    return {"biases": biases, "bias_sweep": bias_out, "variants": other_out}


class PositionAblationKeys(KindKeys):
    deltas: list[NonNegative] = Field(default=[0.25, 0.5, 1, 2])
    gaps: list[Count] = Field(default=[1, 5, 20, 100, 1000])


def position_ablation_kind(model: Any, section: dict, out_dir: Path, progress: bool) -> dict:
    """Offsets within a set, sequential positions and prompt gaps, explicit mask kept."""
    runs = _runs(model, section, progress)
    rotary = model.cfg.positional_embedding_type == "rotary"
    deltas, gaps = section["deltas"], section["gaps"]
    per = [
        posn.position_ablation(model, r, posn.standard_variants(r.layout, deltas, gaps, rotary))
        for r in runs
    ]
    names = list(per[0]) if per else []
    table = {
        n: {f: _r(_mean([p[n][f] for p in per])) for f in ("kl_members", "kl_next", "top1_agree")}
        for n in names
    }
    gap_names = [n for n in names if n.startswith("gap ")]
    plot_lines(
        out_dir / "position_gaps.png",
        [float(n.split()[1]) for n in gap_names],
        {"KL members": [table[n]["kl_members"] or 0.0 for n in gap_names]},
        title="Position gap between prompt and generation (explicit mask kept)",
        xlabel="gap",
        ylabel="mean KL to gap 0 (nats)",
        logx=True,
    )
    return {"n_prompts": len(runs), "variants": table}


class DynamicThresholdKeys(KindKeys):
    # threshold schedules, each checked by `ablations_dynamic.threshold_from_spec`
    schedules: list[dict[str, Any]] = Field(
        default=[{"schedule": "bezier"}, {"schedule": "relu"}], min_length=1
    )
    prune_ratio: NonNegative = 0.5


def dynamic_threshold_kind(model: Any, section: dict, out_dir: Path, progress: bool) -> dict:
    """Generate under each threshold schedule; prune each run retroactively."""
    max_steps = section["max_steps"]
    out: dict[str, Any] = {}
    for spec in section["schedules"]:
        sched = dyn.threshold_from_spec(spec)
        name = f"{sched.kind}"
        sizes, pruned, members = [], 0, 0
        for text in _texts(section):
            eos = -1 if section["stop_at_eos"] else None
            run = generate(
                model, text, threshold=sched, max_steps=max_steps, eos_token_id=eos, progress=False
            )
            res = dyn.retroactive_prune(model, run, ratio=section["prune_ratio"])
            sizes.append([len(s) for s in run.steps])
            pruned += int(res.pruned.sum())
            members += int((~res.scores.isnan()).sum())
        mean_sizes = [_mean([s[i] for s in sizes if i < len(s)]) for i in range(max_steps)]
        out[name] = {
            "spec": sched.spec,
            "thresholds": [round(sched(i, max_steps), 4) for i in range(max_steps)],
            "mean_set_size": [_r(v) for v in mean_sizes],
            "scored_members": members,
            "pruned_members": pruned,
        }
    plot_lines(
        out_dir / "schedules.png",
        list(range(max_steps)),
        {f"{k} threshold": v["thresholds"] for k, v in out.items()}
        | {
            f"{k} mean set size / 10": [(s or 0) / 10 for s in v["mean_set_size"]]
            for k, v in out.items()
        },
        title="Dynamic threshold schedules",
        xlabel="step",
        ylabel="value",
    )
    return out


KINDS: tuple[Kind, ...] = tuple(
    Kind(name, run, keys, unused=UNUSED, single=SINGLE)
    for name, run, keys in (
        ("layer_patching", layer_patching_kind, LayerPatchingKeys),
        ("activation_patching", activation_patching_kind, ActivationPatchingKeys),
        ("partial_isolation", partial_isolation_kind, PartialIsolationKeys),
        ("position_ablation", position_ablation_kind, PositionAblationKeys),
        ("dynamic_threshold", dynamic_threshold_kind, DynamicThresholdKeys),
    )
)
