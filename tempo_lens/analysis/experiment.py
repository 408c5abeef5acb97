"""The experiment runner: config in, one output directory out.

`run_experiment(config, out)` validates the config (`config.resolve`), loads the model,
calls the kind registered under `kind:` and writes into `out`:

- `config.yaml` (the resolved config), `summary.json` (every figure), `report.md`,
- `runs/<id>/` (each run, `TempoRun.save`, loadable with `load_run`), PNG plots.

Everything is written into a hidden staging directory beside `out` (`.NAME.partial`) and
swapped into place at the end (`tempo_lens.storage.commit_dir`), so `out` is never
half-written; an existing `out` is replaced only when it is an earlier experiment. One
process at a time writes an `out` (a second stops with one line). Runs are saved one by
one as they finish; an interrupted experiment resumes from the staging directory (or from
a finished `out`) and reuses every run on disk whose prompt and settings match and that
loads; a damaged run is regenerated.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, StrictStr

from tempo_lens.analysis.config import NAME_PATTERN
from tempo_lens.analysis.registry import KINDS, ExperimentFn
from tempo_lens.errors import TempoError
from tempo_lens.generate import generate, tokenize
from tempo_lens.run import TempoRun, load_run, save_run
from tempo_lens.storage import (
    check_target,
    commit_dir,
    marker,
    read_json,
    sweep_stale,
    target_lock,
    write_file_atomic,
    write_json_atomic,
)

KIND_MODULES = (
    "tempo_lens.analysis.kinds",
    "tempo_lens.analysis.sweep",
    "tempo_lens.analysis.ablations",
)


def kinds() -> dict[str, ExperimentFn]:
    """Every registered kind, after importing the modules that define them (the
    ablations module is optional)."""
    for module in KIND_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    return KINDS


# ---------------------------------------------------------------------------------------
# Runs: the grid of (prompt, mode, threshold, next_from), resumable
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    prompt_id: str
    category: str
    prompt: str
    mode: str
    threshold: float
    next_from: str

    @property
    def run_id(self) -> str:
        return f"{self.prompt_id}-{self.mode[:3]}-t{self.threshold:g}-{self.next_from}"

    @property
    def isolate(self) -> bool:
        return self.mode == "isolated"


def grid(
    section: dict[str, Any], modes: Iterable[str] | None = None, order: str = "prompt"
) -> list[RunSpec]:
    """Every run of the config, modes innermost (an interrupted sweep leaves complete
    pairs). `order="prompt"`: all settings of prompt 0, then prompt 1, ...;
    `order="config"`: every prompt at the first (threshold, next_from), then the next,
    in the order the config lists them — a cut-short sweep then has the whole suite for
    its first settings."""
    modes = list(modes or section["modes"])
    settings = [(float(t), nf) for t in section["thresholds"] for nf in section["next_from"]]
    prompts = section["prompts"]
    if order == "config":
        keys = [(s, p) for s in settings for p in prompts]
    else:
        keys = [(s, p) for p in prompts for s in settings]
    return [
        RunSpec(p["id"], p["category"], p["text"], mode, t, nf)
        for (t, nf), p in keys
        for mode in modes
    ]


def _matches(run_dir: Path, spec: RunSpec, section: dict[str, Any]) -> bool:
    try:
        meta = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return False
    c = meta.get("config", {})
    return (
        meta.get("prompt") == spec.prompt
        and c.get("isolate") == spec.isolate
        and c.get("threshold") == spec.threshold
        and c.get("next_from") == spec.next_from
        and c.get("max_steps") == section["max_steps"]
        and c.get("max_parallel") == section["max_parallel"]
    )


@dataclass(frozen=True)
class RunOptions:
    """What every run of an experiment shares besides its spec."""

    max_steps: int
    max_parallel: int | None
    eos_token_id: int | None
    cache: tuple[str, ...] | None = None
    keep_logits: bool = False
    memory_budget: int = 1 << 30  # bytes one batched forward may hold (splits a unit)


MAX_BATCH_ROWS = 64


def batch_rows(model: Any, options: RunOptions, prompt_tokens: int) -> int:
    """How many prompts one batched generation may hold under `options.memory_budget`:
    per row, the KV cache and the attention scores over the longest layout the run can
    reach, plus the prompt forward's logits (and captures kept on top of them)."""
    cfg = model.cfg
    width = options.max_parallel or 4
    n = min(cfg.n_ctx, prompt_tokens + options.max_steps * width)
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    floats = 2 * cfg.n_layers * n * n_kv * cfg.d_head  # KV cache
    floats += cfg.n_heads * n * n + 4 * n * max(cfg.d_model, cfg.d_mlp or 0)  # one layer
    floats += prompt_tokens * cfg.d_vocab  # the prompt forward's logits
    if options.keep_logits:
        floats += n * cfg.d_vocab
    if options.cache:
        floats += cfg.n_layers * cfg.n_heads * n * n  # e.g. every layer's pattern
    return max(1, min(MAX_BATCH_ROWS, options.memory_budget // (4 * floats)))


def work_units(specs: list[RunSpec], size: int | None = None) -> list[list[RunSpec]]:
    """The experiment's work units: runs of one setting (mode, threshold, next_from),
    cut into chunks of at most `size` prompts (None: no cut), ordered by their first run's
    place in `specs` (so a cut-short sweep still leaves complete isolated/visible pairs).
    A unit is what one engine call generates (one batched forward per step, one Ray task)."""
    groups: dict[tuple[str, float, str], list[RunSpec]] = {}
    for spec in specs:
        groups.setdefault((spec.mode, spec.threshold, spec.next_from), []).append(spec)
    units: list[list[RunSpec]] = []
    for group in groups.values():
        step = size or len(group)
        units += [group[i : i + step] for i in range(0, len(group), step)]
    first = {spec: i for i, spec in enumerate(specs)}
    return sorted(units, key=lambda unit: first[unit[0]])


def generate_unit(model: Any, unit: list[RunSpec], options: RunOptions) -> list[TempoRun]:
    """Generate every run of one work unit (normally one setting, several prompts) as
    batched generations (one forward per step for all rows), split into batches of one
    setting under the memory budget; runs come back in `unit`'s order."""
    longest = max((len(tokenize(model, spec.prompt)) for spec in unit), default=1)
    done: dict[RunSpec, TempoRun] = {}
    for batch in work_units(unit, size=batch_rows(model, options, longest)):
        runs = generate(
            model,
            [spec.prompt for spec in batch],
            threshold=batch[0].threshold,
            max_steps=options.max_steps,
            isolate=batch[0].isolate,
            next_from=batch[0].next_from,
            max_parallel=options.max_parallel,
            cache=list(options.cache) if options.cache else None,
            keep_logits=options.keep_logits,
            eos_token_id=options.eos_token_id,
            progress=False,  # the experiment's own bar counts units
        )
        done.update(zip(batch, runs, strict=True))
    return [done[spec] for spec in unit]


def ensure_runs(
    model: Any,
    section: dict[str, Any],
    out_dir: Path,
    progress: bool,
    *,
    modes: Iterable[str] | None = None,
    cache: list[str] | None = None,
    keep_logits: bool = False,
    deadline: float | None = None,
    order: str = "prompt",
) -> dict[str, TempoRun]:
    """Generate every run of the grid that is not already saved under `out_dir/runs/`,
    unit by unit (`work_units`), saving each run atomically as its unit finishes; return
    all of them as loaded from disk (so the analysis always sees exactly what a later
    re-run will see).

    `deadline` (a `time.perf_counter()` value) stops starting new units once passed; the
    runs not made are then simply absent from the result (a re-run resumes them)."""
    specs = grid(section, modes, order)
    runs_dir = out_dir / "runs"
    options = RunOptions(
        max_steps=section["max_steps"],
        max_parallel=section["max_parallel"],
        eos_token_id=-1 if section["stop_at_eos"] else None,
        cache=tuple(cache) if cache else None,
        keep_logits=keep_logits,
    )
    sweep_stale(runs_dir)
    loaded: dict[str, TempoRun] = {}
    for s in specs:
        if _matches(runs_dir / s.run_id, s, section):
            try:
                loaded[s.run_id] = load_run(runs_dir / s.run_id)
            except TempoError as err:
                warnings.warn(f"regenerating run {s.run_id}: {err}", stacklevel=2)
    todo = [s for s in specs if s.run_id not in loaded]
    section.setdefault("_bookkeeping", {"generated_runs": 0, "skipped_runs": 0})
    section["_bookkeeping"]["generated_runs"] += len(todo)
    section["_bookkeeping"]["skipped_runs"] += len(specs) - len(todo)
    longest = max((len(tokenize(model, s.prompt)) for s in todo), default=1)
    units = work_units(todo, size=batch_rows(model, options, longest))
    for unit in bar(units, progress, "units"):
        if deadline is not None and time.perf_counter() > deadline:
            section["_bookkeeping"]["generated_runs"] -= len(unit)
            section["_bookkeeping"]["stopped_by_time_budget"] = True
            continue
        for spec, run in zip(unit, generate_unit(model, unit, options), strict=True):
            # replaces a damaged run too; the experiment's lock covers its runs
            shutil.rmtree(runs_dir / spec.run_id, ignore_errors=True)
            save_run(run, runs_dir / spec.run_id, lock=False)
            loaded[spec.run_id] = load_run(runs_dir / spec.run_id)
    return {s.run_id: loaded[s.run_id] for s in specs if s.run_id in loaded}


def pairs(section: dict[str, Any], order: str = "prompt") -> Iterator[tuple[RunSpec, RunSpec]]:
    """(isolated, visible) specs of the same prompt, threshold and next_from."""
    specs = grid(section, ["isolated", "visible"], order)
    for i in range(0, len(specs), 2):
        yield specs[i], specs[i + 1]


def bar(items: list[Any], enabled: bool, unit: str) -> Any:
    """A tqdm progress bar on stderr (disabled when `enabled` is False)."""
    from tqdm.auto import tqdm

    return tqdm(items, disable=not enabled, unit=unit, file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------


EXPERIMENTS_ROOT = Path("runs") / "experiments"


class _SummaryMarker(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Literal["experiment"]
    version: Literal[1]


class SummaryFile(BaseModel):
    """The envelope of `summary.json`: what every kind's summary carries (the figures
    themselves are the kind's own)."""

    model_config = ConfigDict(extra="allow", strict=True)
    tempo_lens: _SummaryMarker | None = None  # absent in summaries written before markers
    name: StrictStr
    kind: StrictStr
    model: StrictStr
    timing: dict[str, Any]


def load_summary(directory: str | os.PathLike) -> dict[str, Any]:
    """`directory/summary.json`, checked against `SummaryFile` (a `TempoError` naming the
    file and the problem otherwise)."""
    path = Path(directory) / "summary.json"
    if not path.is_file():
        raise TempoError(f"{directory} has no summary.json; run `tempo-lens experiment` into it")
    summary = read_json(path, SummaryFile).model_dump()
    summary.pop("tempo_lens", None)
    return summary


def check_name(name: Any) -> str:
    """An experiment name is a slug (letters, digits, `_ . -`), never a path."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise TempoError(
            f"name: {name!r} is not a valid experiment name; use letters, digits, '_', '.' "
            "and '-' (e.g. exp1_attention), no path"
        )
    return name


def default_out(section: dict[str, Any]) -> Path:
    """runs/experiments/<name>; the name is checked so the path stays under that root."""
    return EXPERIMENTS_ROOT / check_name(section["name"])


def staging_dir(out: Path) -> Path:
    return out.resolve().parent / f".{out.name}.partial"


def run_experiment(
    section: dict[str, Any],
    out: Path | None = None,
    *,
    model: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run one resolved experiment section into `out` (default runs/experiments/<name>);
    return its summary. `model` may be passed in (tests); otherwise it is loaded from
    `section['model']`."""
    check_name(section["name"])
    out = check_target(out if out is not None else default_out(section), "experiment")
    fn = kinds()[section["kind"]]
    t0 = time.perf_counter()
    with target_lock(out, timeout=0):
        if model is None:
            from tempo_lens.cli import load_model_quietly

            model = load_model_quietly(section["model"])
        return _run_locked(fn, section, out, model, progress, t0)


def _run_locked(
    fn: ExperimentFn, section: dict[str, Any], out: Path, model: Any, progress: bool, t0: float
) -> dict[str, Any]:
    stage = staging_dir(out)
    stage.mkdir(parents=True, exist_ok=True)
    (stage / "runs").mkdir(exist_ok=True)
    sweep_stale(stage / "runs")
    if (out / "runs").is_dir():  # a finished experiment: its runs seed the resume
        for run_dir in (out / "runs").iterdir():
            if run_dir.name.startswith(".") or not run_dir.is_dir():
                continue  # temporaries and locks are never copied
            if not (stage / "runs" / run_dir.name).exists():
                shutil.copytree(run_dir, stage / "runs" / run_dir.name)
    for stale in ("summary.json", "report.md", "config.yaml"):
        (stage / stale).unlink(missing_ok=True)
    for plot in stage.glob("*.png"):
        plot.unlink()
    section = dict(section)
    summary = fn(model, section, stage, progress)
    book = section.pop("_bookkeeping", {})
    summary = {
        "name": section["name"],
        "kind": section["kind"],
        "model": model.cfg.model_name,
        **summary,
    }
    timing = dict(summary.pop("timing", {}))
    timing.update(book)
    timing["wall_seconds"] = round(time.perf_counter() - t0, 2)
    summary["timing"] = timing
    resolved = {k: v for k, v in section.items() if not k.startswith("_")}
    config_text = yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)
    write_file_atomic(stage / "config.yaml", config_text)
    write_json_atomic(stage / "summary.json", {"tempo_lens": marker("experiment"), **summary})
    write_file_atomic(stage / "report.md", render_report(fn, summary, resolved, stage))
    commit_dir(stage, out, "experiment")
    return summary


def render_report(
    fn: ExperimentFn, summary: dict[str, Any], section: dict[str, Any], out_dir: Path
) -> str:
    """report.md: heading, what was run, the kind's own body (or generic tables), plots."""
    lines = [
        f"# {section['name']} ({section['kind']})",
        "",
        section.get("description") or "",
        "",
        f"Model: `{summary['model']}`; prompts: {len(section['prompts'])}; thresholds: "
        f"{section['thresholds']}; max_steps: {section['max_steps']}; modes: "
        f"{section['modes']}; next_from: {section['next_from']}.",
        "",
    ]
    report = getattr(fn, "report", None)
    lines.append(report(summary, section) if report else generic_tables(summary))
    plots = sorted(p.name for p in out_dir.glob("*.png"))
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    t = summary.get("timing", {})
    lines += [
        "",
        "## Timing (not reproducible; excluded from re-run checks)",
        "",
        "```json",
        json.dumps(t, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def generic_tables(summary: dict[str, Any]) -> str:
    """Every scalar figure of the summary as a `key | value` table (nested keys dotted)."""
    rows = [
        f"| {k} | {v} |" for k, v in _flatten(summary) if not isinstance(v, list) or len(v) <= 8
    ]
    return "\n".join(["| figure | value |", "|---|---|", *rows])


def _flatten(d: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(d, dict):
        for k, v in d.items():
            if k != "timing":
                yield from _flatten(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], d
