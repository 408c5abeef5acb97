"""The bracket text as HTML: the prompt, then each multi-member set as `[a/b/c]` with
its members' probabilities as tooltips and pruned members struck through
(`<s class="pruned">`).

Shown by the HTML report and by `TempoRun`'s notebook display; it reads a run only
through `BracketSource`, so it imports nothing of `tempo_lens.run` (no import cycle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from markupsafe import Markup

from tempo_lens.layout import Layout, PrunedMember
from tempo_lens.viz.templating import render


class BracketSource(Protocol):
    """What `bracket_html` reads of a run (`tempo_lens.run.TempoRun` has it all)."""

    prompt: str | None
    token_strs: list[str]
    layout: Layout
    pruned: Sequence[PrunedMember]

    def bracket_parts(self) -> list[tuple[str, list[str], list[float]]]: ...


@dataclass(frozen=True)
class Member:
    text: str
    p: float
    cut: PrunedMember | None = None


def bracket_html(run: BracketSource) -> Markup:
    """The prompt plus the bracket text, with multi-member sets marked up."""
    pruned = {(p.set_step, p.member): p for p in run.pruned}
    parts = []
    for step, (lead, strs, probs) in enumerate(run.bracket_parts()):
        members = []
        for j, (s, p) in enumerate(zip(strs, probs, strict=True)):
            cut = pruned.get((step, j)) if len(strs) > 1 else None
            # bracket_parts wrote a pruned member `~tok~`: struck through instead
            members.append(Member(s if cut is None else s[1:-1], p, cut))
        parts.append((lead, members))
    prompt = run.prompt or "".join(run.token_strs[: run.layout.n_prompt])
    return render("bracket.html.j2", prompt=prompt, parts=parts)
