"""Activation patching between the modes: one hook's activation at one layer, at a group
of positions, taken from the source mode's replay and written into the other mode's; the
restored fraction (the driver's one definition) says how much of the mode difference it
carries.

Directions: "vis_to_iso" (visible activations into the isolated replay: what restores
visibility) and "iso_to_vis".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from matplotlib.figure import Figure
from pydantic import Field

from tempo_lens.analysis.ablations import driver
from tempo_lens.analysis.ablations.plots import line_figure
from tempo_lens.analysis.experiments.kind import KindKeys, PositiveInt
from tempo_lens.backend import Model
from tempo_lens.errors import TempoError
from tempo_lens.generate import forward
from tempo_lens.layout import Layout
from tempo_lens.run import TempoRun

HOOK_ALIASES = {
    "resid_pre": "blocks.{L}.hook_resid_pre",
    "resid_mid": "blocks.{L}.hook_resid_mid",
    "resid_post": "blocks.{L}.hook_resid_post",
    "attn_out": "blocks.{L}.hook_attn_out",
    "mlp_out": "blocks.{L}.hook_mlp_out",
    "z": "blocks.{L}.attn.hook_z",
}
GROUPS = ("all", "members", "later")
DIRECTIONS = ("vis_to_iso", "iso_to_vis")
HookShort = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z"]


def hook_name(hook: str, layer: int) -> str:
    """Full TL hook name of `hook` ("resid_pre", "hook_z", "attn.hook_z", ...) at `layer`."""
    short = hook.removeprefix("attn.").removeprefix("hook_")
    if short not in HOOK_ALIASES:
        raise TempoError(f"unknown hook {hook!r}; use one of {', '.join(HOOK_ALIASES)}")
    return HOOK_ALIASES[short].format(L=layer)


def group_positions(layout: Layout, group: str) -> torch.Tensor:
    """Physical positions of a group: "all" tokens; "members" of multi-member sets (whose
    own attention the mask changes); "later": every other generated token (their
    attention is unchanged; they differ only through what they read)."""
    if group == "all":
        return torch.arange(len(layout))
    multi = layout.same_set().any(1)
    if group == "members":
        return multi.nonzero().flatten()
    if group == "later":
        return ((layout.step >= 0) & ~multi).nonzero().flatten()
    raise TempoError(f"unknown position group {group!r}; use one of {', '.join(GROUPS)}")


@dataclass(frozen=True)
class ActivationPatching:
    """`distances` `[prompts, layers, 4]` of each patched replay; `kl_base` `[prompts]`:
    KL(source ‖ target) over member rows, the restored fraction's denominator."""

    prompts: list[str]
    hook: str
    group: str
    direction: str
    layers: list[int]
    distances: torch.Tensor
    kl_base: torch.Tensor

    @property
    def restored(self) -> driver.Restored:
        field = "kl_vis_members" if self.direction == "vis_to_iso" else "kl_iso_members"
        return driver.restored_fraction(
            self.distances[..., driver.Distances.names().index(field)], self.kl_base
        )

    def summary(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "group": self.group,
            "direction": self.direction,
            "layers": self.layers,
            "restored": self.restored.summary(),
        }

    def plot(self) -> Figure:
        s = self.restored.summary()
        return line_figure(
            self.layers,
            {"pooled": s["pooled"], "median over prompts": s["median"]},
            bands={"median over prompts": (s["q25"], s["q75"])},
            title=f"Patching {self.hook}/{self.group} {self.direction.replace('_', ' ')}"
            f" (band: IQR; NaN prompts: {max(s['n_nan'], default=0)})",
            xlabel="layer",
            ylabel="restored fraction",
        )

    def to_pandas(self) -> pd.DataFrame:
        r, names = self.restored.per_prompt, driver.Distances.names()
        return pd.DataFrame(
            [
                {
                    "prompt": p,
                    "hook": self.hook,
                    "group": self.group,
                    "direction": self.direction,
                    "layer": L,
                    **dict(zip(names, self.distances[i, j].tolist(), strict=True)),
                    "restored": float(r[i, j]),
                }
                for i, p in enumerate(self.prompts)
                for j, L in enumerate(self.layers)
            ]
        )


def activation_patching(
    model: Model,
    source: driver.Source | Sequence[driver.Source],
    *,
    hook: str = "resid_pre",
    group: str = "all",
    direction: str = "vis_to_iso",
    layers: Iterable[int] | None = None,
    batch_size: int = 16,
    replays: Sequence[driver.Replays] | None = None,
) -> ActivationPatching:
    """driver.Patch `hook` at each layer, at `group` positions, from the source mode's replay
    into the other mode's (`direction`), for every source (batched)."""
    if direction not in DIRECTIONS:
        raise TempoError(f"unknown direction {direction!r}; use one of {', '.join(DIRECTIONS)}")
    sources, _ = driver.as_sources(source)
    layers = sorted(range(model.cfg.n_layers) if layers is None else layers)
    names = [hook_name(hook, L) for L in layers]
    from_visible = direction == "vis_to_iso"
    layouts = [driver.layout_and_weights(s)[0] for s in sources]
    caches = forward(model, layouts, isolate=not from_visible, cache=names)[1]
    clean = {id(s): c for s, c in zip(sources, caches, strict=True)}
    if group not in GROUPS:
        raise TempoError(f"unknown position group {group!r}; use one of {', '.join(GROUPS)}")

    def variants(ref: driver.Replays) -> list[driver.Variant]:
        pos = group_positions(ref.layout, group)
        cache = clean[id(ref.source)]
        hidden = ref.layout.same_set() if from_visible else None
        return [
            driver.Variant(
                hidden=hidden,
                patch=driver.Patch(name, pos, cache[name][0]),
                start_layer=L,
                start_isolated=from_visible,
            )
            for L, name in zip(layers, names, strict=True)
        ]

    refs = list(replays) if replays is not None else driver.Replays.of(model, sources)
    per = driver.ablate(model, sources, variants, batch_size=batch_size, replays=refs)
    if from_visible:
        base = torch.stack([ref.distances(ref.iso_logits)[1] for ref in refs])
    else:
        base = torch.stack([ref.distances(ref.vis_logits)[0] for ref in refs])
    names_ = [getattr(s, "prompt", None) or f"source {i}" for i, s in enumerate(sources)]
    return ActivationPatching(names_, hook, group, direction, layers, torch.stack(per), base)


# ---------------------------------------------------------------------------------------
# Experiment kind
# ---------------------------------------------------------------------------------------


class ActivationPatchingKeys(KindKeys):
    hooks: list[HookShort] = Field(default=["resid_pre", "attn_out", "z"], min_length=1)
    groups: list[Literal["all", "members", "later"]] = Field(
        default=["all", "members", "later"], min_length=1
    )
    directions: list[Literal["vis_to_iso", "iso_to_vis"]] = Field(
        default=["vis_to_iso", "iso_to_vis"], min_length=1
    )
    batch_size: PositiveInt = 16


def study_activation_patching(
    model: Model, runs: list[TempoRun], keys: ActivationPatchingKeys, out_dir: Path
) -> dict:
    """driver.Restored fraction of patching each hook at each layer, per group and direction."""
    refs = driver.Replays.of(model, runs)
    out: dict[str, Any] = {"n_prompts": len(runs)}
    for direction in keys.directions:
        results = {
            f"{hook}/{group}": activation_patching(
                model,
                runs,
                hook=hook,
                group=group,
                direction=direction,
                batch_size=keys.batch_size,
                replays=refs,
            ).restored.summary()
            for hook in keys.hooks
            for group in keys.groups
        }
        out[direction] = results
        line_figure(
            list(range(model.cfg.n_layers)),
            {name: s["pooled"] for name, s in results.items()},
            title=f"Activation patching {direction.replace('_', ' ')}: pooled restored fraction",
            xlabel="layer",
            ylabel="restored fraction (pooled over prompts)",
        ).savefig(out_dir / f"patching_{direction}.png", dpi=110)
    return out


ACTIVATION_PATCHING = driver.ablation_kind(
    "activation_patching", ActivationPatchingKeys, study_activation_patching
)
