"""The viz layer's HTML templates (jinja2, autoescaped) and static files, both package
data under `tempo_lens/viz/report/` (`templates/*.html.j2`, `static/*`).

Imports nothing of tempo_lens, so every viz module (and `TempoRun`'s notebook display,
through `tempo_lens.viz.brackets`) can render without an import cycle.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

PACKAGE = "tempo_lens.viz"
TEMPLATES = "report/templates"


def format_value(v: Any) -> Any:
    """A table cell's text: floats to 4 significant digits, anything else as it is."""
    return f"{v:.4g}" if isinstance(v, float) else v


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(PACKAGE, TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["json"] = json.dumps
    env.filters["number"] = format_value
    env.tests["structured"] = lambda v: isinstance(v, dict | list)
    return env


def render(template: str, **context: Any) -> Markup:
    """`templates/<template>` rendered with `context`: HTML, safe to put in another one."""
    return Markup(environment().get_template(template).render(**context))


@functools.cache
def static_text(name: str) -> str:
    """`static/<name>` of the installed package (a CSS or JavaScript file)."""
    return (resources.files(PACKAGE) / "report" / "static" / name).read_text(encoding="utf-8")
