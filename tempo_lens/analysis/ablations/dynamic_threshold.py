"""Dynamic threshold schedules and retroactive pruning (seed features the original
parsed but never wired). Generation, not replay: this family does not use the driver.

A schedule is a callable `(step, max_steps) -> threshold` for `generate(threshold=...)`
over t = step / max_steps, carrying a JSON-able `.spec` that the run records in its
config. Pruning scores each member by the attention later tokens pay it and keeps those
above `ratio` × their set's mean score (the original's relative rule, `prune_rule`);
pruned members are marked in the run, never removed. This is the after-the-fact scorer
(one replay, nothing hidden); `generate(..., prune=ratio)` is live pruning, where each
decision hides the member from every later query.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from pydantic import Field

from tempo_lens.analysis.ablations.driver import jsonable, section_runs, section_texts
from tempo_lens.analysis.ablations.plots import line_figure
from tempo_lens.analysis.experiments.kind import Kind, KindKeys, Unit
from tempo_lens.backend import Model
from tempo_lens.errors import TempoError
from tempo_lens.generate import forward, prune_rule
from tempo_lens.layout import Layout
from tempo_lens.run import TempoRun


def _check_unit(name: str, value: float, lo_open: bool = True) -> None:
    ok = 0.0 < value <= 1.0 if lo_open else 0.0 <= value <= 1.0
    if not ok:
        raise TempoError(f"{name} must lie in {'(0' if lo_open else '[0'}, 1], got {value}")


@dataclass(frozen=True)
class ThresholdSchedule:
    """A threshold that moves from `base` (t = 0) to `final` (t = 1), t = step / max_steps,
    along `shape(t)` in [0, 1]."""

    kind: str
    base: float
    final: float
    params: tuple[tuple[str, float], ...]

    def shape(self, t: float) -> float:
        p = dict(self.params)
        if self.kind == "bezier":  # cubic Bézier with control values 0, p1, p2, 1
            u = 1.0 - t
            return 3 * u * u * t * p["p1"] + 3 * u * t * t * p["p2"] + t**3
        a = p["activation"]  # relu: flat until t = activation, then linear to 1
        return max(0.0, t - a) / (1.0 - a)

    def __call__(self, step: int, max_steps: int) -> float:
        t = min(max(step / max_steps, 0.0), 1.0)
        return self.base + (self.final - self.base) * self.shape(t)

    @property
    def spec(self) -> dict[str, Any]:
        return {"schedule": self.kind, "base": self.base, "final": self.final, **dict(self.params)}


def bezier_threshold(
    p1: float = 0.2, p2: float = 0.8, final: float = 1.0, base: float = 0.1
) -> ThresholdSchedule:
    """Bézier schedule (the original's defaults p1 0.2, p2 0.8, final 1.0): the threshold
    rises slowly, then fast, from `base` to `final`; with final 1.0 the last steps fall
    back to the top-1 token, so wide sets come early."""
    _check_unit("base", base)
    _check_unit("final", final)
    _check_unit("p1", p1, lo_open=False)
    _check_unit("p2", p2, lo_open=False)
    return ThresholdSchedule("bezier", base, final, (("p1", p1), ("p2", p2)))


def relu_threshold(
    activation: float = 0.5, final: float = 1.0, base: float = 0.1
) -> ThresholdSchedule:
    """ReLU schedule (the original's default activation 0.5): `base` until
    t = activation, then linear to `final` at t = 1."""
    _check_unit("base", base)
    _check_unit("final", final)
    if not 0.0 <= activation < 1.0:
        raise TempoError(f"activation must lie in [0, 1), got {activation}")
    return ThresholdSchedule("relu", base, final, (("activation", activation),))


def threshold_from_spec(spec: dict[str, Any]) -> ThresholdSchedule:
    """Rebuild a schedule from its `.spec` (or a config section with the same keys)."""
    spec = dict(spec)
    kind = spec.pop("schedule", None)
    builders = {"bezier": bezier_threshold, "relu": relu_threshold}
    if kind not in builders:
        raise TempoError(f"schedule must be one of bezier, relu; got {kind!r}")
    try:
        return builders[kind](**spec)
    except TypeError as err:
        raise TempoError(f"{kind} schedule: {err}; see bezier_threshold/relu_threshold") from err


# ---------------------------------------------------------------------------------------
# Retroactive pruning
# ---------------------------------------------------------------------------------------


@dataclass
class PruneResult:
    """`scores[i]`: mean attention later tokens pay token i (NaN where not scored: prompt
    tokens, single-member sets, the last set); `pruned[i]`: member i fails the rule."""

    scores: torch.Tensor
    pruned: torch.Tensor
    ratio: float

    def pruned_members(self, run: TempoRun) -> list[dict[str, Any]]:
        out = []
        for s in range(len(run.steps)):
            sl = run.layout.set_slice(s)
            for j, i in enumerate(range(sl.start, sl.stop)):
                if self.pruned[i]:
                    out.append(
                        {
                            "step": s,
                            "member": j,
                            "token": run.token_strs[i],
                            "score": float(self.scores[i]),
                        }
                    )
        return out

    def to_json(self, run: TempoRun) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "scores": [None if s != s else round(float(s), 6) for s in self.scores.tolist()],
            "pruned": self.pruned_members(run),
            "marked_text": marked_text(run, self.pruned),
        }


def retroactive_prune(
    model: Model,
    run: TempoRun,
    *,
    ratio: float = 0.5,
    isolate: bool | None = None,
) -> PruneResult:
    """Score every member of every multi-member set (except the last set, which nothing
    reads yet) by the attention later tokens pay it, averaged over layers, heads and
    later queries, from a replay of the run's layout with `hook_pattern` captured
    (`isolate` defaults to the run's mode). Members scoring <= `ratio` × their set's
    mean score are marked pruned."""
    layout = run.layout
    if isolate is None:
        isolate = run.config.isolate
    _, cache = forward(model, layout, isolate=isolate, cache=["hook_pattern"])
    attn = cache.stack_activation("pattern")[:, 0].mean((0, 1))  # [q, k]
    return prune_by_attention(layout, attn, ratio)


def prune_by_attention(
    layout: Layout, attention: Float[torch.Tensor, "q k"], ratio: float = 0.5
) -> PruneResult:
    """The relative pruning rule on a given attention matrix `[query, key]` over the
    layout: a member's score is the mean attention paid to it by every token of a later
    set; it is pruned when its score is <= `ratio` × the mean score of its set."""
    n = len(layout)
    if attention.shape != (n, n):
        raise TempoError(
            f"attention must be [{n}, {n}] for this layout, got {tuple(attention.shape)}"
        )
    scores = torch.full((n,), float("nan"), dtype=torch.float64)
    pruned = torch.zeros(n, dtype=torch.bool)
    for s in range(layout.n_steps):
        sl = layout.set_slice(s)
        later = layout.step > s
        if sl.stop - sl.start < 2 or not bool(later.any()):
            continue
        sc = attention[later][:, sl].double().mean(0)
        scores[sl] = sc
        pruned[sl] = prune_rule(sc, ratio)
    return PruneResult(scores, pruned, ratio)


def marked_text(run: TempoRun, pruned: torch.Tensor) -> str:
    """Bracket text with pruned members struck through as `~tok~`, e.g. `[The/~A~]`."""
    out = []
    for s in range(len(run.steps)):
        sl = run.layout.set_slice(s)
        strs = [
            f"~{t}~" if pruned[i] else t
            for i, t in zip(range(sl.start, sl.stop), run.step_strs(s), strict=True)
        ]
        out.append(strs[0] if len(strs) == 1 else "[" + "/".join(strs) + "]")
    return "".join(out)


def mark_pruned(run: TempoRun, result: PruneResult) -> TempoRun:
    """A copy of `run` whose notes record the pruning (`notes["retroactive_pruning"]`:
    ratio, scores, pruned members, marked text), so it is saved and loaded with the run;
    no token is removed."""
    marked = copy.copy(run)
    marked.notes = {**run.notes, "retroactive_pruning": result.to_json(run)}
    return marked


# ---------------------------------------------------------------------------------------
# Schedules × pruning over prompts
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DynamicThreshold:
    """Per schedule (`specs`): its thresholds over the steps, every run's set sizes
    (`set_sizes[schedule][prompt]`), and how many members the retroactive scorer scored
    and pruned (`scored`, `pruned`: `[schedules, prompts]`)."""

    prompts: list[str]
    max_steps: int
    prune_ratio: float
    specs: list[dict[str, Any]]
    set_sizes: list[list[list[int]]]
    scored: torch.Tensor
    pruned: torch.Tensor

    def names(self) -> list[str]:
        return [f"{i}: {s['schedule']}" for i, s in enumerate(self.specs)]

    def thresholds(self, i: int) -> list[float]:
        sched = threshold_from_spec(self.specs[i])
        return [round(sched(s, self.max_steps), 4) for s in range(self.max_steps)]

    def mean_set_size(self, i: int) -> list[float | None]:
        out = []
        for s in range(self.max_steps):
            sizes = [r[s] for r in self.set_sizes[i] if s < len(r)]
            out.append(jsonable(sum(sizes) / len(sizes)) if sizes else None)
        return out

    def summary(self) -> dict[str, Any]:
        return {
            name: {
                "spec": spec,
                "thresholds": self.thresholds(i),
                "mean_set_size": self.mean_set_size(i),
                "scored_members": int(self.scored[i].sum()),
                "pruned_members": int(self.pruned[i].sum()),
            }
            for i, (name, spec) in enumerate(zip(self.names(), self.specs, strict=True))
        }

    def plot(self) -> Figure:
        names = self.names()
        curves: dict[str, list[float | None]] = {}
        for i, name in enumerate(names):
            curves[f"{name} threshold"] = list(self.thresholds(i))
            curves[f"{name} mean set size / 10"] = [
                None if v is None else v / 10 for v in self.mean_set_size(i)
            ]
        return line_figure(
            list(range(self.max_steps)),
            curves,
            title="Dynamic threshold schedules",
            xlabel="step",
            ylabel="value",
        )

    def to_pandas(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"schedule": name, "prompt": p, "step": s, "set_size": size}
                for i, name in enumerate(self.names())
                for j, p in enumerate(self.prompts)
                for s, size in enumerate(self.set_sizes[i][j])
            ]
        )


def dynamic_threshold(
    model: Model,
    prompts: Sequence[str],
    schedules: Sequence[ThresholdSchedule],
    *,
    max_steps: int = 15,
    prune_ratio: float = 0.5,
    section: dict[str, Any] | None = None,
) -> DynamicThreshold:
    """Generate every prompt under each schedule (batched; `section`: the generation
    settings of a kind's config) and score each run with `retroactive_prune`."""
    base = {"prompts": list(prompts), "max_steps": max_steps, "thresholds": [0.1]}
    base |= {"next_from": ["mixture"], "stop_at_eos": True}
    settings = {**base, **(section or {}), "prompts": list(prompts), "max_steps": max_steps}
    sizes, scored, pruned = [], [], []
    for sched in schedules:
        runs = section_runs(model, settings, threshold=sched)
        results = [retroactive_prune(model, run, ratio=prune_ratio) for run in runs]
        sizes.append([[len(s) for s in run.steps] for run in runs])
        scored.append([int((~r.scores.isnan()).sum()) for r in results])
        pruned.append([int(r.pruned.sum()) for r in results])
    return DynamicThreshold(
        list(prompts),
        max_steps,
        prune_ratio,
        [s.spec for s in schedules],
        sizes,
        torch.tensor(scored, dtype=torch.long).reshape(len(schedules), len(prompts)),
        torch.tensor(pruned, dtype=torch.long).reshape(len(schedules), len(prompts)),
    )


class DynamicThresholdKeys(KindKeys):
    schedules: list[dict[str, Any]] = Field(
        default=[{"schedule": "bezier"}, {"schedule": "relu"}], min_length=1
    )
    prune_ratio: Unit = 0.5


def run_dynamic_threshold(
    model: Model, section: dict[str, Any], out_dir: Path, progress: bool
) -> dict:
    """Generate under each threshold schedule; prune each run retroactively."""
    keys = DynamicThresholdKeys(**{k: section[k] for k in DynamicThresholdKeys.model_fields})
    result = dynamic_threshold(
        model,
        section_texts(section),
        [threshold_from_spec(s) for s in keys.schedules],
        max_steps=section["max_steps"],
        prune_ratio=keys.prune_ratio,
        section=section,
    )
    result.plot().savefig(out_dir / "schedules.png", dpi=110)
    return result.summary()


DYNAMIC_THRESHOLD = Kind(
    "dynamic_threshold",
    run_dynamic_threshold,
    DynamicThresholdKeys,
    unused=("modes", "thresholds"),
    single=("next_from",),
)
