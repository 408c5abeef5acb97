"""circuitsvis views for notebooks that carry circuitsvis's browser bundle once.

circuitsvis's own offline output inlines its whole bundle (~1.3 MB of JavaScript) into
every view. A `CircuitsVisView` inlines it with the first view a kernel displays and has
every later view wait for the `CircuitsVis` global that one defined: a notebook with ten
views carries one bundle. The bundle is circuitsvis's own (`dist/cdn/iife.js` of the
installed wheel), so views work offline; circuitsvis does all the drawing.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from markupsafe import Markup

from tempo_lens.errors import TempoError
from tempo_lens.storage import write_file_atomic
from tempo_lens.viz.templating import render


@dataclass
class BundleState:
    sent: bool = False


SESSION = BundleState()


def reset_bundle() -> None:
    """Send the bundle again with the next view (e.g. after clearing the cell that held it)."""
    SESSION.sent = False


@functools.cache
def circuitsvis_bundle() -> Markup:
    """circuitsvis's browser bundle from the installed wheel, safe inside `<script>`."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise TempoError(f"circuitsvis's bundle {path} is missing; reinstall circuitsvis")
    js = path.read_text(encoding="utf-8")
    js = "\n".join(line for line in js.splitlines() if not line.startswith("//# sourceMappingURL"))
    return Markup(js.replace("</script", "<\\/script"))  # same string inside JS, inert for HTML


def plain(value: Any) -> Any:
    """Tensors (also inside lists and tuples) as nested lists, ready for JSON."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@dataclass
class CircuitsVisView:
    """One circuitsvis component (`AttentionHeads`, `ColoredTokens`, ...) and its props."""

    component: str
    props: dict[str, Any]

    def html(self, include_bundle: bool = True) -> Markup:
        """The view as HTML; with the bundle it stands alone (a file, a page)."""
        return render(
            "view.html.j2",
            bundle=circuitsvis_bundle() if include_bundle else None,
            div="tl-cv-" + uuid.uuid4().hex[:12],
            component=self.component,
            props={k: plain(v) for k, v in self.props.items()},
        )

    def _repr_html_(self) -> str:
        first = not SESSION.sent
        SESSION.sent = True
        return self.html(include_bundle=first)

    def __html__(self) -> str:
        return self._repr_html_()

    def __repr__(self) -> str:
        return f"CircuitsVisView({self.component}, props={sorted(self.props)})"

    def save(self, path: str) -> Path:
        """Write a standalone HTML file of the view (bundle included), atomically; an
        existing file there is replaced only when tempo_lens wrote it."""
        page = render("view_page.html.j2", title=self.component, view=self.html())
        return write_file_atomic(path, page, kind="report")
