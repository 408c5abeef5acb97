"""Layer and head isolation patching: isolation removed at exactly one layer L
("single"), at layers 0..L ("upto"), at L..end ("from"), or at one head of a layer.

Each variant is a same-set bias schedule `[layers, heads]` (0 = visible, -inf =
isolated) replayed by the driver; a schedule equal to the isolated or visible one up to
layer L starts there from that replay's residual stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure

from tempo_lens.analysis.ablations.driver import (
    Distances,
    Replays,
    Restored,
    Source,
    ablation_kind,
    as_sources,
    jsonable,
    restored_fraction,
    schedule_sweep,
)
from tempo_lens.analysis.ablations.plots import heatmap_figure, line_figure
from tempo_lens.analysis.experiments.kind import Count, KindKeys, PositiveInt
from tempo_lens.backend import Model
from tempo_lens.run import TempoRun
from tempo_lens.storage import write_json_atomic

LAYER_MODES = ("single", "upto", "from")


def layer_schedules(n_layers: int, n_heads: int) -> torch.Tensor:
    """`[3 · n_layers, n_layers, n_heads]` same-set biases: for every L, isolation removed
    at L only, at 0..L, at L..end (in `LAYER_MODES` order)."""
    bias = torch.full((3 * n_layers, n_layers, n_heads), -math.inf, dtype=torch.float64)
    for L in range(n_layers):
        bias[L, L] = 0
        bias[n_layers + L, : L + 1] = 0
        bias[2 * n_layers + L, L:] = 0
    return bias


def head_schedules(n_layers: int, n_heads: int, layers: Sequence[int]) -> torch.Tensor:
    """`[len(layers) · n_heads, n_layers, n_heads]`: isolation removed at one head."""
    bias = torch.full((len(layers) * n_heads, n_layers, n_heads), -math.inf, dtype=torch.float64)
    for i, L in enumerate(layers):
        for h in range(n_heads):
            bias[i * n_heads + h, L, h] = 0
    return bias


# ---------------------------------------------------------------------------------------
# Layer patching
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerPatching:
    """`baseline` `[prompts, 4]`: the isolated replay's `Distances`; `distances`
    `[prompts, 3, layers, 4]`: per mode of `LAYER_MODES` and layer L, the variant's."""

    prompts: list[str]
    baseline: torch.Tensor
    distances: torch.Tensor

    @property
    def n_layers(self) -> int:
        return self.distances.shape[2]

    def field(self, name: str) -> torch.Tensor:
        """`[prompts, 3, layers]` of one `Distances` field."""
        return self.distances[..., Distances.names().index(name)]

    @property
    def restored(self) -> Restored:
        """Share of KL(vis ‖ iso) over member rows restored, per prompt, mode and layer."""
        return restored_fraction(self.field("kl_vis_members"), self.baseline[:, 1])

    def ranked_layers(self) -> list[int]:
        """Layers by decreasing pooled single-layer restored fraction (NaN last)."""
        pooled = self.restored.pooled[0].nan_to_num(-math.inf)
        return sorted(range(self.n_layers), key=lambda L: -float(pooled[L]))

    def summary(self) -> dict[str, Any]:
        mean = self.distances.mean(0)
        restored = self.restored
        pooled_single = restored.pooled[0]
        ranked = self.ranked_layers()
        return {
            "n_prompts": len(self.prompts),
            "n_prompts_with_sets": int((self.baseline[:, 1] > 0).sum()),
            "n_layers": self.n_layers,
            "kl_vis_iso_members": jsonable(self.baseline[:, 1].mean()),
            "kl_vis_iso_next": jsonable(self.baseline[:, 3].mean()),
            "per_layer": {
                f"{mode}.{name}": jsonable(mean[m, :, f])
                for m, mode in enumerate(LAYER_MODES)
                for f, name in enumerate(Distances.names())
            },
            "restored": {
                mode: Restored(restored.per_prompt[:, m], restored.pooled[m]).summary()
                for m, mode in enumerate(LAYER_MODES)
            },
            "top_layers_single": [
                {"layer": L, "restored_pooled": jsonable(pooled_single[L])} for L in ranked[:5]
            ],
        }

    def plot(self) -> Figure:
        s = self.summary()["restored"]
        return line_figure(
            list(range(self.n_layers)),
            {f"{m}: pooled": s[m]["pooled"] for m in LAYER_MODES}
            | {f"{m}: median over prompts": s[m]["median"] for m in LAYER_MODES},
            bands={f"{m}: median over prompts": (s[m]["q25"], s[m]["q75"]) for m in LAYER_MODES},
            title="Isolation removed at layer L: share of KL(vis‖iso) restored (band: IQR)",
            xlabel="layer L",
            ylabel="1 − KL(vis‖variant) / KL(vis‖iso)",
        )

    def to_pandas(self) -> pd.DataFrame:
        """One row per (prompt, mode, layer): the four distances and the restored fraction."""
        r = self.restored.per_prompt
        rows = [
            {
                "prompt": p,
                "mode": mode,
                "layer": L,
                **dict(zip(Distances.names(), self.distances[i, m, L].tolist(), strict=True)),
                "restored": float(r[i, m, L]),
            }
            for i, p in enumerate(self.prompts)
            for m, mode in enumerate(LAYER_MODES)
            for L in range(self.n_layers)
        ]
        return pd.DataFrame(rows)


def _prompt_names(sources: Sequence[Source]) -> list[str]:
    return [getattr(s, "prompt", None) or f"source {i}" for i, s in enumerate(sources)]


def layer_patching(
    model: Model,
    source: Source | Sequence[Source],
    *,
    batch_size: int = 16,
    replays: Sequence[Replays] | None = None,
) -> LayerPatching:
    """Replay every source with isolation removed at exactly one layer L, at 0..L and at
    L..end, for every L (3 × n_layers replays per source, batched with the sources;
    `replays`: the sources' `Replays` when the caller already has them)."""
    sources, _ = as_sources(source)
    cfg = model.cfg
    refs = list(replays) if replays is not None else Replays.of(model, sources)
    bias = layer_schedules(cfg.n_layers, cfg.n_heads)
    per = schedule_sweep(model, sources, bias, batch_size=batch_size, replays=refs)
    baseline = torch.stack([ref.distances(ref.iso_logits) for ref in refs])
    distances = torch.stack([d.reshape(3, cfg.n_layers, 4) for d in per])
    return LayerPatching(_prompt_names(sources), baseline, distances)


# ---------------------------------------------------------------------------------------
# Head patching
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadPatching:
    """`kl_iso_members` `[prompts, layers, heads]`: KL(iso ‖ replay with isolation
    removed at that one head; every other head of every layer isolated)."""

    prompts: list[str]
    layers: list[int]
    kl_iso_members: torch.Tensor

    def summary(self) -> dict[str, Any]:
        return {"layers": self.layers, "kl_iso_members": jsonable(self.kl_iso_members.mean(0))}

    def plot(self) -> Figure:
        return heatmap_figure(
            self.summary()["kl_iso_members"],
            rows=[f"L{L}" for L in self.layers],
            cols=[f"h{h}" for h in range(self.kl_iso_members.shape[-1])],
            title="KL(iso ‖ isolation removed at one head), mean over prompts",
            xlabel="head",
            ylabel="layer",
        )

    def to_pandas(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"prompt": p, "layer": L, "head": h, "kl_iso_members": float(v)}
                for i, p in enumerate(self.prompts)
                for j, L in enumerate(self.layers)
                for h, v in enumerate(self.kl_iso_members[i, j].tolist())
            ]
        )


def head_patching(
    model: Model,
    source: Source | Sequence[Source],
    layers: Iterable[int],
    *,
    batch_size: int = 16,
    replays: Sequence[Replays] | None = None,
) -> HeadPatching:
    """Isolation removed at one head of each of `layers`, every other head isolated."""
    sources, _ = as_sources(source)
    layers = list(layers)
    cfg = model.cfg
    bias = head_schedules(cfg.n_layers, cfg.n_heads, layers)
    per = schedule_sweep(model, sources, bias, batch_size=batch_size, replays=replays)
    kl_iso = torch.stack([d[:, 0].reshape(len(layers), cfg.n_heads) for d in per])
    return HeadPatching(_prompt_names(sources), layers, kl_iso)


# ---------------------------------------------------------------------------------------
# Experiment kind
# ---------------------------------------------------------------------------------------


class LayerPatchingKeys(KindKeys):
    head_layers: Count = 6  # head patching on the layers of largest single-layer restore
    batch_size: PositiveInt = 16


def study_layer_patching(
    model: Model, runs: list[TempoRun], keys: LayerPatchingKeys, out_dir: Path
) -> dict:
    """Isolation removed per layer (single, 0..L, L..end) and per head of the top layers."""
    refs = Replays.of(model, runs)  # the reference replays, for both studies
    result = layer_patching(model, runs, batch_size=keys.batch_size, replays=refs)
    summary = result.summary()
    top = result.ranked_layers()[: keys.head_layers]
    heads = head_patching(model, runs, top, batch_size=keys.batch_size, replays=refs)
    result.plot().savefig(out_dir / "layer_curves.png", dpi=110)
    heads.plot().savefig(out_dir / "head_heatmap.png", dpi=110)
    write_json_atomic(out_dir / "per_prompt.json", jsonable(result.to_pandas().to_dict("records")))
    return summary | {"heads": heads.summary()}


LAYER_PATCHING = ablation_kind("layer_patching", LayerPatchingKeys, study_layer_patching)
