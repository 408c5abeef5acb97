"""Position-sharing ablations: the same tokens and the same explicit mask, other logical
positions — members of a set at p, p+δ, … instead of all at p; fully sequential
positions; every generated token `gap` positions further from the prompt.

The original TEMPO's position-gap results came from a missing mask; here every variant
keeps the layout's causal + isolation mask, so only positions change. Each variant is
compared with the replay at the original positions (same mode). The seeds' own condition
is available beside it (`packed gap g`): Hugging Face without an explicit mask treats every
position jump as the start of a new packed sequence (`tempo_lens.analysis.packed`), so the
continuation no longer sees the prompt.

Besides the KLs, every variant gets a measured coherence of the forced continuation (the
run's top member of each next set): next-token agreement (the variant's argmax equals the
reference's) and the log-perplexity of that continuation under variant and reference
(`tempo_lens.analysis.coherence`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure
from pydantic import Field, StrictBool

from tempo_lens.analysis.ablations import driver
from tempo_lens.analysis.ablations.plots import line_figure
from tempo_lens.analysis.coherence import argmax_agreement, log_perplexity
from tempo_lens.analysis.experiments.kind import KindKeys, NonNegative
from tempo_lens.analysis.metrics import kl
from tempo_lens.analysis.packed import packed_hidden
from tempo_lens.analysis.stats import binomial_ci, log_ratio_test
from tempo_lens.backend import Model
from tempo_lens.errors import TempoError
from tempo_lens.hooks import fractional_positions
from tempo_lens.layout import Layout
from tempo_lens.run import TempoRun

FIELDS = ("kl_members", "kl_next", "top1_agree")
# per prompt, for the coherence of the forced continuation
COHERENCE = ("n_targets", "agree", "log_ppl_variant", "log_ppl_reference")


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
    """`[7]`: mean KL(original ‖ variant) over member rows and next-set distributions,
    the share of member rows whose top-1 token is unchanged (`FIELDS`), then the forced
    continuation's `COHERENCE` figures: the rows predicting the top member of each next
    set, how many of them keep the reference's argmax, and the continuation's
    log-perplexity under the variant and the reference."""

    def metric(ref: driver.Replays, logits: torch.Tensor) -> torch.Tensor:
        m, x = ref.rows(logits)
        rm, rx = ref.iso if isolate else ref.vis
        zero = torch.zeros((), dtype=torch.float64)
        if not m.numel():
            return torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
        agree = (rm.argmax(-1) == m.argmax(-1)).double().mean()
        nxt = kl(rx, x).mean() if x.numel() else zero
        layout = ref.layout
        targets = torch.tensor(
            [int(layout.tokens[layout.set_slice(s).start]) for s in range(1, layout.n_steps)],
            dtype=torch.long,
        )
        if targets.numel():
            rows_v, rows_r = x[:-1], rx[:-1]
            cont = [
                float(targets.numel()),
                float(argmax_agreement(rows_v, rows_r).sum()),
                log_perplexity(rows_v, targets),
                log_perplexity(rows_r, targets),
            ]
        else:
            cont = [0.0, 0.0, 0.0, 0.0]
        head = torch.stack([kl(rm, m).mean(), nxt, agree])
        return torch.cat([head, torch.tensor(cont, dtype=torch.float64)])

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
            "coherence": {v: self.coherence(j) for j, v in enumerate(self.variants)},
        }

    def coherence(self, j: int) -> dict[str, Any]:
        """Variant `j`'s forced-continuation coherence over prompts: next-token agreement
        pooled over all predicted positions (count/n, exact binomial CI; positions of one
        prompt are not independent) and the perplexity ratio variant / reference per
        prompt, tested on the log scale (geometric mean, bootstrap CI over prompts)."""
        c = self.values[:, j, len(FIELDS) :]
        used = c[:, 0] > 0
        n, agree = int(c[used, 0].sum()), int(c[used, 1].sum())
        ci = binomial_ci(agree, n)
        ratio = log_ratio_test(torch.exp(c[used, 2] - c[used, 3]).tolist())
        return {
            "agreement": {
                "count": agree,
                "n": n,
                "share": round(agree / n, 6) if n else None,
                "ci95": list(ci) if ci else None,
            },
            "ppl_ratio": ratio.summary(),
            "n_prompts": int(used.sum()),
        }

    def plot(self) -> Figure:
        table = self.summary()["variants"]
        gaps = [v for v in self.variants if v.startswith("gap ")]
        curves = {"explicit mask kept": [table[v]["kl_members"] for v in gaps]}
        if all(f"packed {v}" in table for v in gaps):
            curves["no mask (packed sequences)"] = [
                table[f"packed {v}"]["kl_members"] for v in gaps
            ]
        return line_figure(
            [float(v.split()[1]) for v in gaps],
            curves,
            logx=True,
            xlabel="gap",
            ylabel="mean KL of member rows to gap 0 (nats)",
            title="Position gap between prompt and generation",
        )

    def to_pandas(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"prompt": p, "variant": v}
                | dict(zip(FIELDS + COHERENCE, self.values[i, j].tolist(), strict=True))
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
        same = ref.layout.same_set() if isolate else None
        out = []
        for name, v in named.items():
            hidden = same
            if name.startswith("packed "):  # the seeds' condition: no explicit mask
                hidden = packed_hidden(v) if same is None else same | packed_hidden(v)
            out.append(driver.Variant(hidden=hidden, layout=v))
        return out

    per = driver.ablate(model, sources, build, position_metric(isolate), batch_size=batch_size)
    prompts = [getattr(s, "prompt", None) or f"source {i}" for i, s in enumerate(sources)]
    return PositionAblation(prompts, names, torch.stack(per))


# ---------------------------------------------------------------------------------------
# Experiment kind
# ---------------------------------------------------------------------------------------


class PositionAblationKeys(KindKeys):
    deltas: list[NonNegative] = Field(default=[0.25, 0.5, 1, 2], min_length=1)
    gaps: list[NonNegative] = Field(default=[1, 5, 20, 100, 1000], min_length=1)
    # also run each gap under the seeds' condition (no explicit mask: packed sequences)
    packed: StrictBool = True


def study_position_ablation(
    model: Model, runs: list[TempoRun], keys: PositionAblationKeys, out_dir: Path
) -> dict:
    """Offsets within a set, sequential positions and prompt gaps, explicit mask kept."""
    fractional = fractional_positions(model)

    def variants(layout: Layout) -> dict[str, Layout]:
        named = standard_variants(layout, keys.deltas, keys.gaps, fractional)
        if keys.packed:
            named |= {f"packed gap {g:g}": gap_layout(layout, g) for g in keys.gaps}
        return named

    result = position_ablation(model, runs, variants)
    result.plot().savefig(out_dir / "position_gaps.png", dpi=110)
    return result.summary()


POSITION_ABLATION = driver.ablation_kind(
    "position_ablation", PositionAblationKeys, study_position_ablation
)
