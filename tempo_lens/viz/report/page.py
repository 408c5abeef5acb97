"""One report page: its sections, the views its script draws, the notes on what it left
out, and the size budget they all draw on; `html()` assembles the single offline file
(templates/page.html.j2, with static/report.css, static/report.js and circuitsvis's
bundle inlined)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from tempo_lens.viz.notebook import circuitsvis_bundle
from tempo_lens.viz.templating import render, static_text


def css() -> Markup:
    return Markup(static_text("report.css"))


def script() -> Markup:
    return Markup(static_text("report.js"))


@dataclass
class Report:
    """Collects sections and inlined data; `html()` assembles the file."""

    title: str
    budget_bytes: int
    sections: list[Markup] = field(default_factory=list)
    views: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    on_note: Callable[[str], None] | None = None

    def note(self, text: str) -> None:
        self.notes.append(text)
        if self.on_note is not None:
            self.on_note(text)

    def __post_init__(self) -> None:
        self.charge(circuitsvis_bundle(), css(), script())

    def charge(self, *texts: str) -> None:
        """Count parts that are always included (text, tables, graph) against the budget."""
        self.budget_bytes -= sum(len(t.encode()) for t in texts)

    def spend(self, n_bytes: int) -> bool:
        """Take `n_bytes` for an optional part (a plot, attention) if they fit."""
        if n_bytes > self.budget_bytes:
            return False
        self.budget_bytes -= n_bytes
        return True

    def add_view(self, view: dict[str, Any]) -> str:
        key = f"v{len(self.views)}"
        self.views[key] = view
        return key

    def html(self) -> str:
        data = json.dumps({"views": self.views}, separators=(",", ":")).replace("</", "<\\/")
        page = render(
            "page.html.j2",
            title=self.title,
            css=css(),
            bundle=circuitsvis_bundle(),
            sections=self.sections,
            notes=self.notes,
            made=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            data=Markup(data),
            js=script(),
        )
        return str(page)  # plain text: a Markup's methods would escape their arguments
