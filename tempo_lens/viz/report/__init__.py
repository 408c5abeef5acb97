"""One self-contained HTML report of a run or of an experiment directory.

Everything is inlined: circuitsvis's own browser bundle (from the installed wheel, once
per file, not its CDN link), the report's CSS and script (`static/`, package data), PNG
plots as base64, attention as compact base64 data that the script hands to
`CircuitsVis.render` when a layer is picked. The file opens offline from disk. The HTML
comes from the jinja2 templates in `templates/` (autoescaped).

Attention layers by default: the ones the run captured `hook_pattern` for, else every
layer; `max_layers` (no cap by default) spreads a cut over the depth. All inlined data
(attention + plots) stays within `budget_mb` (14 MB): what does not fit is left out and the
report says which layers it kept (`budget`).

Modules: `budget` (what fits, the attention encoding), `page` (the `Report` being
assembled), `runs` (a run's sections), `experiment` (an experiment directory's).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tempo_lens.errors import TempoError
from tempo_lens.run import load_run
from tempo_lens.storage import write_file_atomic
from tempo_lens.viz.brackets import bracket_html
from tempo_lens.viz.notebook import circuitsvis_bundle
from tempo_lens.viz.report.budget import (
    BUDGET_MB,
    MAX_LAYERS,
    AttentionPlan,
    encode_pattern,
    encoded_head_bytes,
    plan_attention,
    spread,
)
from tempo_lens.viz.report.experiment import (
    ATTENTION_RUNS,
    EXPERIMENT_FILES,
    RUN_FILES,
    experiment_report,
    find_runs,
    is_run_dir,
)
from tempo_lens.viz.report.page import Report
from tempo_lens.viz.report.runs import (
    AttentionOptions,
    ModelLoader,
    attention_section,
    default_layers,
    run_sections,
    step_table,
)

__all__ = [
    "ATTENTION_RUNS",
    "BUDGET_MB",
    "EXPERIMENT_FILES",
    "MAX_LAYERS",
    "RUN_FILES",
    "AttentionOptions",
    "AttentionPlan",
    "ModelLoader",
    "Report",
    "attention_section",
    "bracket_html",
    "build_report",
    "circuitsvis_bundle",
    "default_layers",
    "encode_pattern",
    "encoded_head_bytes",
    "experiment_report",
    "find_runs",
    "is_run_dir",
    "plan_attention",
    "run_sections",
    "spread",
    "step_table",
    "write_report",
]


def build_report(
    path: str | os.PathLike,
    *,
    model: Any = None,
    load: ModelLoader | None = None,
    layers: Sequence[int] | None = None,
    max_layers: int | None = MAX_LAYERS,
    budget_mb: float = BUDGET_MB,
    attention: bool = True,
    attention_runs: int = ATTENTION_RUNS,
    on_note: Callable[[str], None] | None = None,
) -> str:
    """The HTML of a report on a saved run or an experiment directory.

    Attention comes from the run's captured `hook_pattern` or, if absent, from one replay
    on `model` (or `load(run.model_name)`). `layers=None` means all, cut to `max_layers`;
    `budget_mb` bounds the inlined attention and plots. `on_note` hears every note the
    report makes about what it left out."""
    root = Path(path)
    if not root.exists():
        raise TempoError(
            f"{root} does not exist; pass a run directory (tempo-lens generate --out DIR) "
            "or an experiment directory"
        )
    if not root.is_dir():
        raise TempoError(f"{root} is a file; pass a run directory or an experiment directory")
    if not math.isfinite(budget_mb) or budget_mb <= 0:
        raise TempoError(f"the size budget must be a positive number of MB, got {budget_mb}")
    if not isinstance(attention_runs, int) or attention_runs < 0:
        raise TempoError(f"the number of attention runs must be >= 0, got {attention_runs}")
    opts = AttentionOptions(layers, max_layers, model, load, attention)
    budget = int(budget_mb * 1e6)
    if is_run_dir(root):
        run = load_run(root)
        report = Report(f"TEMPO run {root.name}", budget, on_note=on_note)
        report.sections.append(run_sections(report, run, opts, attention=True))
        return report.html()
    if (root / "run.json").is_file():
        load_run(root)  # raises the precise message about the missing half
    return experiment_report(root, opts, budget, attention_runs, on_note).html()


def write_report(html_text: str, out: str | os.PathLike) -> Path:
    """Write atomically (`tempo_lens.storage.write_file_atomic`); an existing file at
    `out` is replaced only when it is an earlier tempo_lens report."""
    return write_file_atomic(out, html_text, kind="report")
