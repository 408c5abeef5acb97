"""An experiment directory's report: report.md rendered (its PNGs inlined where it shows
them), summary.json as readable tables, config.yaml, the other plots, and every saved run
under it (attention for the first `attention_runs`)."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from markupsafe import Markup

from tempo_lens.errors import TempoError
from tempo_lens.run import load_run
from tempo_lens.viz.report.page import Report
from tempo_lens.viz.report.runs import AttentionOptions, run_sections
from tempo_lens.viz.templating import environment

ATTENTION_RUNS = 1
RUN_FILES = ("run.json", "tensors.safetensors")
EXPERIMENT_FILES = ("summary.json", "config.yaml", "report.md")
SHORT_LIST = 8  # lists of scalars up to this long are shown inline in a cell
MAX_ROWS = 200


def is_run_dir(path: Path) -> bool:
    return all((path / f).is_file() for f in RUN_FILES)


def find_runs(root: Path, depth: int = 3) -> list[Path]:
    """Run directories under `root` (not `root` itself), up to `depth` levels down."""
    found = []
    frontier = [root]
    for _ in range(depth):
        nxt = []
        for d in frontier:
            for child in sorted(
                p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")
            ):
                (found if is_run_dir(child) else nxt).append(child)
        frontier = nxt
    return found


def _scalar(v: Any) -> bool:
    return not isinstance(v, dict | list) or (
        isinstance(v, list)
        and len(v) <= SHORT_LIST
        and all(_scalar(x) for x in v)
        and not any(isinstance(x, list) for x in v)
    )


def _flat(v: Any) -> bool:
    return isinstance(v, dict) and all(_scalar(x) for x in v.values())


@dataclass(frozen=True)
class SummaryPart:
    """One part of summary.json as `experiment.html.j2`'s `summary_section` draws it: a
    key/value table ("kv"), a table of records ("records": rows of (label, record), the
    label shown when `labelled`), or collapsed JSON ("json")."""

    kind: Literal["kv", "records", "json"]
    key: str | None = None  # the heading; None for the top-level scalars
    table: dict[str, Any] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    labelled: bool = False
    text: str = ""
    size: str = ""


def _table_part(key: str, value: Any) -> SummaryPart | None:
    """A table for flat records (a list of flat dicts, or a dict of flat dicts), a
    key/value table for a flat dict; None for anything deeper."""
    if isinstance(value, list) and value and all(_flat(v) for v in value):
        rows: list[tuple[Any, dict[str, Any]]] = [(None, v) for v in value]
    elif isinstance(value, dict) and value and all(_flat(v) for v in value.values()):
        rows = list(value.items())
    elif _flat(value) and value:
        return SummaryPart("kv", key, table=value)
    else:
        return None
    if len(rows) > MAX_ROWS:
        return None
    columns = list(dict.fromkeys(k for _, v in rows for k in v))
    return SummaryPart("records", key, columns=columns, rows=rows, labelled=isinstance(value, dict))


def summary_parts(value: Any) -> list[SummaryPart]:
    """summary.json readable: top-level scalars in one key/value table, each flat part as
    one table, anything deeper as collapsed, indented JSON (one click away, never a wall
    of nested tables)."""
    if not isinstance(value, dict):
        value = {"summary": value}
    scalars = {k: v for k, v in value.items() if _scalar(v)}
    parts = [SummaryPart("kv", table=scalars)] if scalars else []
    for key, v in value.items():
        if key in scalars:
            continue
        part = _table_part(key, v)
        if part is None:
            size = f"{len(v)} items" if isinstance(v, dict | list) else ""
            part = SummaryPart("json", key, text=json.dumps(v, indent=1), size=size)
        parts.append(part)
    return parts


def _markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def experiment_report(
    root: Path,
    opts: AttentionOptions,
    budget_bytes: int,
    attention_runs: int,
    on_note: Callable[[str], None] | None = None,
) -> Report:
    sections = environment().get_template("experiment.html.j2").module
    report = Report(f"Experiment {root.name}", budget_bytes, on_note=on_note)
    md = ""
    if (root / "report.md").is_file():
        md = _markdown((root / "report.md").read_text())
        report.charge(md)
    texts = []
    if (root / "summary.json").is_file():
        try:
            summary = json.loads((root / "summary.json").read_text())
            texts.append(sections.summary_section(summary_parts(summary)))
        except ValueError as err:  # invalid JSON or not UTF-8
            report.note(f"summary.json is not valid JSON ({err}); not shown")
    if (root / "config.yaml").is_file():
        texts.append(sections.config_section((root / "config.yaml").read_text()))
    report.charge(*texts)
    uris: dict[str, str] = {}
    for png in sorted(root.glob("*.png")):
        raw = png.read_bytes()
        if report.spend(len(raw) * 4 // 3):
            uris[png.name] = "data:image/png;base64," + base64.b64encode(raw).decode("ascii")
        else:
            report.note(f"plot {png.name} ({len(raw) / 1e6:.1f} MB) left out: past the size budget")
    figures = []
    for name, uri in uris.items():
        src = f'src="{html.escape(name)}"'
        if src in md:  # shown where report.md puts it, once
            md = md.replace(src, f'src="{uri}"')
        else:
            figures.append((name, uri))
    if md:
        report.sections.append(sections.markdown_section(Markup(md)))
    report.sections += texts
    if figures:
        report.sections.append(sections.plots_section(figures))
    runs = find_runs(root)
    rows, blocks = [], []
    for i, path in enumerate(runs):
        rel = path.relative_to(root)
        try:
            run = load_run(path)
        except TempoError as err:
            report.note(f"run {rel} not loaded: {err}")
            continue
        cfg, text = run.config, run.text()[:80]
        rows.append((i, rel, run.stats(), cfg.threshold, cfg.mode, text))
        body = run_sections(report, run, opts, attention=i < attention_runs, level=3)
        blocks.append(sections.run_block(i, rel, (run.prompt or "")[:60], body))
    if rows:
        report.sections.append(sections.runs_section(rows, blocks))
    if len(runs) > attention_runs:
        report.note(
            f"attention views for the first {attention_runs} of {len(runs)} runs "
            "(--attention-runs to change)"
        )
    if not report.sections:
        raise TempoError(
            f"{root} holds nothing to report (no summary.json, config.yaml, report.md, "
            "PNG plots or saved runs)"
        )
    return report
