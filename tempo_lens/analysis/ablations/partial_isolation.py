"""Partial isolation: a finite bias −b on same-set scores at every layer (b = 0 is
visible, b → ∞ isolated), k-nearest-sibling windows, and isolation that never ends
("isolate always": later tokens see only each set's top member). All one driver call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure
from pydantic import Field

from tempo_lens.analysis.ablations import driver
from tempo_lens.analysis.ablations.plots import line_figure
from tempo_lens.analysis.experiments.kind import Count, KindKeys, NonNegative, PositiveInt
from tempo_lens.backend import Model
from tempo_lens.hooks import branch_hidden, sibling_window_hidden
from tempo_lens.run import TempoRun


def bias_schedules(model: Model, biases: Sequence[float]) -> torch.Tensor:
    """`[len(biases), layers, heads]`: −b on same-set scores everywhere, per b."""
    cfg = model.cfg
    b = torch.tensor([-float(x) for x in biases], dtype=torch.float64)
    return b[:, None, None].expand(-1, cfg.n_layers, cfg.n_heads)


def mask_variants(replays: driver.Replays, windows: Sequence[int]) -> dict[str, driver.Variant]:
    """`window k` for each k and `isolate always`, as named variants."""
    layout = replays.layout
    out = {f"window {k}": driver.Variant(hidden=sibling_window_hidden(layout, k)) for k in windows}
    out["isolate always"] = driver.Variant(hidden=layout.same_set() | branch_hidden(layout))
    return out


@dataclass(frozen=True)
class PartialIsolation:
    """`bias_distances` `[prompts, biases, 4]`, `variant_distances` `[prompts, variants, 4]`
    (`driver.Distances` fields)."""

    prompts: list[str]
    biases: list[float]
    bias_distances: torch.Tensor
    variants: list[str]
    variant_distances: torch.Tensor

    def summary(self) -> dict[str, Any]:
        names = driver.Distances.names()
        bias = self.bias_distances.mean(0)
        var = self.variant_distances.mean(0)
        return {
            "n_prompts": len(self.prompts),
            "biases": self.biases,
            "bias_sweep": {f: driver.jsonable(bias[:, i]) for i, f in enumerate(names)},
            "variants": {
                v: {f: driver.jsonable(var[j, i]) for i, f in enumerate(names)}
                for j, v in enumerate(self.variants)
            },
        }

    def plot(self) -> Figure:
        sweep = self.summary()["bias_sweep"]
        return line_figure(
            self.biases,
            {f: sweep[f] for f in ("kl_iso_members", "kl_vis_members")},
            title="Partial isolation: bias −b on same-set scores",
            xlabel="b",
            ylabel="mean KL (nats)",
            logx=True,
        )

    def to_pandas(self) -> pd.DataFrame:
        names = driver.Distances.names()
        rows = [
            {"prompt": p, "variant": f"bias {b:g}", "bias": b}
            | dict(zip(names, self.bias_distances[i, j].tolist(), strict=True))
            for i, p in enumerate(self.prompts)
            for j, b in enumerate(self.biases)
        ]
        rows += [
            {"prompt": p, "variant": v, "bias": None}
            | dict(zip(names, self.variant_distances[i, j].tolist(), strict=True))
            for i, p in enumerate(self.prompts)
            for j, v in enumerate(self.variants)
        ]
        return pd.DataFrame(rows)


def partial_isolation(
    model: Model,
    source: driver.Source | Sequence[driver.Source],
    biases: Sequence[float] = (0, 1, 10000),
    windows: Sequence[int] = (0, 1),
    *,
    batch_size: int = 16,
) -> PartialIsolation:
    """The bias sweep, the sibling windows and "isolate always", in one batched driver
    call over every source."""
    sources, _ = driver.as_sources(source)
    schedules = bias_schedules(model, biases)
    names = [*(f"window {k}" for k in windows), "isolate always"]

    def variants(ref: driver.Replays) -> list[driver.Variant]:
        return driver.schedule_variants(schedules, ref) + list(mask_variants(ref, windows).values())

    per = torch.stack(driver.ablate(model, sources, variants, batch_size=batch_size))
    prompts = [getattr(s, "prompt", None) or f"source {i}" for i, s in enumerate(sources)]
    nb = len(biases)
    return PartialIsolation(prompts, list(biases), per[:, :nb], names, per[:, nb:])


def bias_sweep(
    model: Model,
    source: driver.Source | Sequence[driver.Source],
    biases: Sequence[float],
    *,
    batch_size: int = 16,
) -> torch.Tensor:
    """`[prompts, biases, 4]` `driver.Distances` of −b on same-set scores at every layer."""
    return partial_isolation(model, source, biases, (), batch_size=batch_size).bias_distances


# ---------------------------------------------------------------------------------------
# Experiment kind
# ---------------------------------------------------------------------------------------


class PartialIsolationKeys(KindKeys):
    biases: list[NonNegative] = Field(default=[0, 0.5, 1, 2, 4, 8, 16, 10000], min_length=1)
    windows: list[Count] = [0, 1, 2, 3]
    batch_size: PositiveInt = 16


def study_partial_isolation(
    model: Model, runs: list[TempoRun], keys: PartialIsolationKeys, out_dir: Path
) -> dict:
    """Finite same-set bias, k-nearest-sibling windows, and isolation scope."""
    result = partial_isolation(model, runs, keys.biases, keys.windows, batch_size=keys.batch_size)
    result.plot().savefig(out_dir / "bias_sweep.png", dpi=110)
    return result.summary()


PARTIAL_ISOLATION = driver.ablation_kind(
    "partial_isolation", PartialIsolationKeys, study_partial_isolation
)
