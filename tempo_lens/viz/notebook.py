"""circuitsvis views for notebooks that carry circuitsvis's browser bundle once.

circuitsvis's own offline output inlines its whole bundle (~1.3 MB of JavaScript) into
every view. A `CircuitsVisView` inlines it with the first view a kernel displays and has
every later view wait for the `CircuitsVis` global that one defined: a notebook with ten
views carries one bundle. The bundle is circuitsvis's own (`dist/cdn/iife.js` of the
installed wheel), so views work offline; circuitsvis does all the drawing.
"""

from __future__ import annotations

import html
import json
import uuid
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class _Session:
    bundle_sent: bool = False


SESSION = _Session()


def reset_bundle() -> None:
    """Send the bundle again with the next view (e.g. after clearing the cell that held it)."""
    SESSION.bundle_sent = False


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass
class CircuitsVisView:
    """One circuitsvis component (`AttentionHeads`, `ColoredTokens`, ...) and its props."""

    component: str
    props: dict[str, Any]

    def _mount(self) -> str:
        div = "tl-cv-" + uuid.uuid4().hex[:12]
        props = json.dumps({k: _plain(v) for k, v in self.props.items()}).replace("</", "<\\/")
        # wait for the CircuitsVis global (the bundle may be in an earlier output)
        script = (
            "(function draw(n){if(window.CircuitsVis){CircuitsVis.render("
            f"{json.dumps(div)},CircuitsVis.{self.component},{props});}}"
            "else if(n<200){setTimeout(function(){draw(n+1)},50);}"
            f"else{{document.getElementById({json.dumps(div)}).textContent="
            "'circuitsvis bundle not loaded: run tempo_lens.viz.notebook.reset_bundle() "
            "and display the view again';}})(0);"
        )
        return f'<div id="{div}" style="margin:15px 0"></div><script>{script}</script>'

    def html(self, include_bundle: bool = True) -> str:
        """The view as HTML; with the bundle it stands alone (a file, a page)."""
        from tempo_lens.viz.report import circuitsvis_bundle

        bundle = f"<script>{circuitsvis_bundle()}</script>" if include_bundle else ""
        return bundle + self._mount()

    def _repr_html_(self) -> str:
        first = not SESSION.bundle_sent
        SESSION.bundle_sent = True
        return self.html(include_bundle=first)

    def __html__(self) -> str:
        return self._repr_html_()

    def __repr__(self) -> str:
        return f"CircuitsVisView({self.component}, props={sorted(self.props)})"

    def save(self, path: str) -> Any:
        """Write a standalone HTML file of the view (bundle included), atomically."""
        from tempo_lens.viz.report import write_report

        title = html.escape(self.component)
        page = f"<!doctype html><meta charset='utf-8'><title>{title}</title>{self.html()}"
        return write_report(page, path)
