"""Member knockout: one member of a multi-member set hidden as a key from every later
token (`hooks.later_hidden`: its own siblings are untouched), and what that does to the
later steps — KL(unablated ‖ knocked out) of each later step's next-set distribution,
against the replay in the same mode.

Which members later steps lean on: a large effect means the continuation reads that
member; ~0 means the member is a dead branch already.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure
from pydantic import StrictBool

from tempo_lens.analysis.ablations import driver
from tempo_lens.analysis.ablations.plots import line_figure
from tempo_lens.analysis.experiments.kind import KindKeys, PositiveInt
from tempo_lens.analysis.metrics import kl
from tempo_lens.backend import Model
from tempo_lens.hooks import later_hidden
from tempo_lens.layout import Layout
from tempo_lens.run import TempoRun


def knockout_members(layout: Layout) -> list[tuple[int, int, int]]:
    """(step, rank in its set, physical index) of every member of a multi-member set
    that some later step reads."""
    out = []
    for s in range(layout.n_steps - 1):
        sl = layout.set_slice(s)
        if sl.stop - sl.start > 1:
            out += [(s, j, i) for j, i in enumerate(range(sl.start, sl.stop))]
    return out


@dataclass(frozen=True)
class MemberKnockout:
    """One row per knocked-out member: `members[k]` = (prompt index, step, rank, token
    index), `kl_next[k]` `[steps]`: KL(unablated ‖ knocked out) of each step's next-set
    distribution (NaN at steps up to the member's own: they cannot see it anyway)."""

    prompts: list[str]
    isolate: bool
    members: list[tuple[int, int, int, int]]
    kl_next: list[torch.Tensor]

    def later_mean(self) -> torch.Tensor:
        """`[members]`: mean KL over the later steps of each member."""
        return torch.stack([k.nanmean() for k in self.kl_next]) if self.kl_next else torch.empty(0)

    def summary(self) -> dict[str, Any]:
        m = self.later_mean().double()
        ranks = sorted({r for _, _, r, _ in self.members})
        by_rank = {
            str(r): driver.jsonable(m[[k for k, x in enumerate(self.members) if x[2] == r]].mean())
            for r in ranks
        }
        return {
            "n_prompts": len(self.prompts),
            "isolate": self.isolate,
            "n_members": len(self.members),
            "kl_later_next_mean": driver.jsonable(m.mean()) if m.numel() else None,
            "kl_later_next_median": driver.jsonable(m.median()) if m.numel() else None,
            "kl_later_next_by_rank": by_rank,
            "per_member": [
                {"prompt": p, "step": s, "rank": r, "kl_later_next": driver.jsonable(v)}
                for (p, s, r, _), v in zip(self.members, m.tolist(), strict=True)
            ],
        }

    def plot(self) -> Figure:
        by_rank = self.summary()["kl_later_next_by_rank"]
        return line_figure(
            [int(r) for r in by_rank],
            {"mean over members": list(by_rank.values())},
            title="Member knocked out as a key for all later tokens",
            xlabel="rank of the member in its set (0 = most probable)",
            ylabel="mean KL(unablated ‖ knocked out), later next-sets",
            logy=True,
        )

    def to_pandas(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "prompt": self.prompts[p],
                    "step": s,
                    "rank": r,
                    "index": i,
                    "kl_later_next": float(v),
                }
                for (p, s, r, i), v in zip(self.members, self.later_mean().tolist(), strict=True)
            ]
        )


def member_knockout(
    model: Model,
    source: driver.Source | Sequence[driver.Source],
    *,
    isolate: bool = True,
    batch_size: int = 16,
) -> MemberKnockout:
    """Knock out every member of every multi-member set (but the last set's) in turn as
    a key of every later token, replayed in the `isolate` mode; batched over sources."""
    sources, _ = driver.as_sources(source)

    def variants(ref: driver.Replays) -> list[driver.Variant]:
        n = len(ref.layout)
        base = ref.layout.same_set() if isolate else torch.zeros(n, n, dtype=torch.bool)
        out = []
        for _, _, i in knockout_members(ref.layout):
            key = torch.zeros(n, dtype=torch.bool)
            key[i] = True
            out.append(driver.Variant(hidden=base | later_hidden(ref.layout, key)))
        return out

    def metric(ref: driver.Replays, logits: torch.Tensor) -> torch.Tensor:
        _, nxt = ref.rows(logits)
        return kl((ref.iso if isolate else ref.vis)[1], nxt)

    per = driver.ablate(model, sources, variants, metric, batch_size=batch_size)
    members, kls = [], []
    for p, (src, values) in enumerate(zip(sources, per, strict=True)):
        layout = driver.layout_and_weights(src)[0]
        for (s, j, i), row in zip(knockout_members(layout), values, strict=True):
            row = row.clone()
            row[: s + 1] = float("nan")
            members.append((p, s, j, i))
            kls.append(row)
    prompts = [getattr(s, "prompt", None) or f"source {i}" for i, s in enumerate(sources)]
    return MemberKnockout(prompts, isolate, members, kls)


class MemberKnockoutKeys(KindKeys):
    isolate: StrictBool = True  # the mode of the replays (the runs are generated isolated)
    batch_size: PositiveInt = 16


def study_member_knockout(
    model: Model, runs: list[TempoRun], keys: MemberKnockoutKeys, out_dir: Path
) -> dict:
    """Each member knocked out as a key for all later tokens; effect on later next-sets."""
    result = member_knockout(model, runs, isolate=keys.isolate, batch_size=keys.batch_size)
    result.plot().savefig(out_dir / "member_knockout.png", dpi=110)
    return result.summary()


MEMBER_KNOCKOUT = driver.ablation_kind("member_knockout", MemberKnockoutKeys, study_member_knockout)
