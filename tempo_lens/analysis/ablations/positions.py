"""Position-sharing ablations: the same tokens and the same explicit mask, other logical
positions — members of a set at p, p+δ, … instead of all at p; fully sequential
positions; every generated token `gap` positions further from the prompt.

The original TEMPO's position-gap results came from a missing mask; here every variant
keeps the layout's causal + isolation mask, so only positions change. Each variant is
compared with the replay at the original positions (same mode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure
from pydantic import Field

from tempo_lens.analysis.ablations import driver
from tempo_lens.analysis.ablations.plots import line_figure
from tempo_lens.analysis.experiments.kind import KindKeys, NonNegative
from tempo_lens.analysis.metrics import kl
from tempo_lens.backend import Model
from tempo_lens.errors import TempoError
from tempo_lens.hooks import fractional_positions
from tempo_lens.layout import Layout
from tempo_lens.run import TempoRun

FIELDS = ("kl_members", "kl_next", "top1_agree")


def offset_layout(layout: Layout, delta: float) -> Layout:
    """Member j of each set at p + j·δ instead of all at p; the next set starts one past
    the last member. δ = 0 is TEMPO's shared position, δ = 1 fully sequential positions,
    fractional δ (rotary models only) lies in between."""
    positions = layout.positions.to(torch.float64).clone()
    shift = 0.0
    for s in range(layout.n_steps):
        sl = layout.set_slice(s)
        k = sl.stop - sl.start
        positions[sl] = positions[sl] + shift + delta * torch.arange(k, dtype=torch.float64)
        shift += delta * (k - 1)
    return _with_positions(layout, positions)


def sequential_layout(layout: Layout) -> Layout:
    """Every token at its physical position (no sharing at all)."""
    return offset_layout(layout, 1.0)


def gap_layout(layout: Layout, gap: float) -> Layout:
    """Every generated token `gap` positions further from the prompt."""
    positions = layout.positions.to(torch.float64) + gap * (layout.step >= 0)
    return _with_positions(layout, positions)


def _with_positions(layout: Layout, positions: torch.Tensor) -> Layout:
    if bool((positions == positions.round()).all()):
        positions = positions.long()
    elif not layout.positions.is_floating_point():
        positions = positions.float()
    return Layout(layout.tokens, positions, layout.step)


def standard_variants(
    layout: Layout, deltas: Sequence[float], gaps: Sequence[float], fractional: bool
) -> dict[str, Layout]:
    """Named variants: `offset δ` for each δ (fractional ones only if `fractional`
    positions are possible: rotary models), `sequential`, and `gap g` for each g."""
    out: dict[str, Layout] = {}
    for d in deltas:
        if fractional or float(d).is_integer():
            out[f"offset {d:g}"] = offset_layout(layout, d)
    out["sequential"] = sequential_layout(layout)
    for g in gaps:
        out[f"gap {g:g}"] = gap_layout(layout, g)
    return out


def position_metric(isolate: bool) -> Callable[[driver.Replays, torch.Tensor], torch.Tensor]:
    """`[3]`: mean KL(original ‖ variant) over member rows and next-set distributions,
    and the share of member rows whose top-1 token is unchanged."""

    def metric(ref: driver.Replays, logits: torch.Tensor) -> torch.Tensor:
        m, x = ref.rows(logits)
        rm, rx = ref.iso if isolate else ref.vis
        if not m.numel():
            return torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        agree = (rm.argmax(-1) == m.argmax(-1)).double().mean()
        nxt = kl(rx, x).mean() if x.numel() else torch.zeros((), dtype=torch.float64)
        return torch.stack([kl(rm, m).mean(), nxt, agree])

    return metric


@dataclass(frozen=True)
class PositionAblation:
    """`values` `[prompts, variants, 3]`: the `FIELDS` of each variant."""

    prompts: list[str]
    variants: list[str]
    values: torch.Tensor

    def summary(self) -> dict[str, Any]:
        mean = self.values.mean(0)
        return {
            "n_prompts": len(self.prompts),
            "variants": {
                v: {f: driver.jsonable(mean[j, i]) for i, f in enumerate(FIELDS)}
                for j, v in enumerate(self.variants)
            },
        }

    def plot(self) -> Figure:
        table = self.summary()["variants"]
        gaps = [v for v in self.variants if v.startswith("gap ")]
        return line_figure(
            [float(v.split()[1]) for v in gaps],
            {"KL members": [table[v]["kl_members"] for v in gaps]},
            logx=True,
            xlabel="gap",
            ylabel="mean KL to gap 0 (nats)",
            title="Position gap between prompt and generation (explicit mask kept)",
        )

    def to_pandas(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"prompt": p, "variant": v}
                | dict(zip(FIELDS, self.values[i, j].tolist(), strict=True))
                for i, p in enumerate(self.prompts)
                for j, v in enumerate(self.variants)
            ]
        )


def position_ablation(
    model: Model,
    source: driver.Source | Sequence[driver.Source],
    variants: Callable[[Layout], dict[str, Layout]],
    *,
    isolate: bool = True,
    batch_size: int = 16,
) -> PositionAblation:
    """Replay each variant layout `variants(layout)` (same tokens, same mask, other
    positions; the same names for every source) against the original positions."""
    sources, _ = driver.as_sources(source)
    names: list[str] = []

    def build(ref: driver.Replays) -> list[driver.Variant]:
        named = variants(ref.layout)
        for name, v in named.items():
            if not torch.equal(v.tokens, ref.layout.tokens):
                raise TempoError(f"variant {name!r} has other tokens; only positions may change")
        if names and list(named) != names:
            raise TempoError("every source must get the same variant names")
        names[:] = list(named)
        hidden = ref.layout.same_set() if isolate else None
        return [driver.Variant(hidden=hidden, layout=v) for v in named.values()]

    per = driver.ablate(model, sources, build, position_metric(isolate), batch_size=batch_size)
    prompts = [getattr(s, "prompt", None) or f"source {i}" for i, s in enumerate(sources)]
    return PositionAblation(prompts, names, torch.stack(per))


# ---------------------------------------------------------------------------------------
# Experiment kind
# ---------------------------------------------------------------------------------------


class PositionAblationKeys(KindKeys):
    deltas: list[NonNegative] = Field(default=[0.25, 0.5, 1, 2], min_length=1)
    gaps: list[NonNegative] = Field(default=[1, 5, 20, 100, 1000], min_length=1)


def study_position_ablation(
    model: Model, runs: list[TempoRun], keys: PositionAblationKeys, out_dir: Path
) -> dict:
    """Offsets within a set, sequential positions and prompt gaps, explicit mask kept."""
    fractional = fractional_positions(model)

    def variants(layout: Layout) -> dict[str, Layout]:
        return standard_variants(layout, keys.deltas, keys.gaps, fractional)

    result = position_ablation(model, runs, variants)
    result.plot().savefig(out_dir / "position_gaps.png", dpi=110)
    return result.summary()


POSITION_ABLATION = driver.ablation_kind(
    "position_ablation", PositionAblationKeys, study_position_ablation
)
