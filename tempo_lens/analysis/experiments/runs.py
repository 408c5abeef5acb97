"""The runs of an experiment: the grid of (prompt, mode, threshold, next_from), each run
generated once and saved under `out_dir/runs/<id>/`, resumable.

Kinds call `ensure_runs` (or `generate_unit` for runs they do not keep); it generates the
runs not already on disk, unit by unit (`work_units`: prompts of one setting, batched
under a memory budget), on the experiment's engine: `InProcessEngine` by default, or the
one `tempo_lens.analysis.experiments.runner.run_experiment` sets in `ENGINE` (e.g. Ray
tasks, `tempo_lens.analysis.experiments.engines`). Every run is saved the same way
whichever engine made it.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tempo_lens.errors import TempoError
from tempo_lens.generate import generate, tokenize
from tempo_lens.run import TempoRun, load_run, save_run
from tempo_lens.storage import sweep_stale

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


Unit = list[RunSpec]


class Engine(Protocol):
    """Who generates an experiment's work units (`tempo_lens.analysis.experiments.engines`)."""

    def generate_units(
        self, units: Sequence[Unit], options: RunOptions
    ) -> Iterator[tuple[Unit, list[TempoRun]]]:
        """Every unit's runs (in the unit's order), units in any order, each unit once."""
        ...

    def facts(self) -> dict[str, Any]:
        """What ran the units (engine name, workers, resubmissions): timing-like facts of
        the summary, never compared between re-runs."""
        ...

    def close(self) -> None: ...


@dataclass
class InProcessEngine:
    """Generate each unit in this process, on `model`, in order (the default engine)."""

    model: Any

    def generate_units(
        self, units: Sequence[Unit], options: RunOptions
    ) -> Iterator[tuple[Unit, list[TempoRun]]]:
        for unit in units:
            yield unit, generate_unit(self.model, unit, options)

    def facts(self) -> dict[str, Any]:
        return {"engine": "inprocess"}

    def close(self) -> None:
        pass


# The engine of the experiment `run_experiment` is running (None: in-process); read by
# `ensure_runs`, so kinds never see which engine made their runs.
ENGINE: ContextVar[Engine | None] = ContextVar("tempo_lens_engine", default=None)


def ensure_runs(
    model: Any,
    section: dict[str, Any],
    out_dir: Path,
    progress: bool,
    *,
    modes: Iterable[str] | None = None,
    cache: list[str] | None = None,
    keep_logits: bool = False,
    order: str = "prompt",
) -> dict[str, TempoRun]:
    """Generate every run of the grid that is not already saved under `out_dir/runs/`,
    unit by unit (`work_units`) on the experiment's engine (`ENGINE`, set by
    `run_experiment(engine=...)`;
    in-process on `model` by default), saving each run atomically as its unit comes back;
    return all of them as loaded from disk (so the analysis always sees exactly what a
    later re-run will see, whichever engine made the runs). `order`: see `grid`."""
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
    book = section.setdefault("_bookkeeping", {"generated_runs": 0, "skipped_runs": 0})
    book["skipped_runs"] += len(specs) - len(todo)
    longest = max((len(tokenize(model, s.prompt)) for s in todo), default=1)
    units = work_units(todo, size=batch_rows(model, options, longest))
    engine = ENGINE.get() or InProcessEngine(model)
    made = engine.generate_units(units, options)
    for unit, runs in bar(made, progress, "units", total=len(units)):
        for spec, run in zip(unit, runs, strict=True):
            # replaces a damaged run too; the experiment's lock covers its runs
            shutil.rmtree(runs_dir / spec.run_id, ignore_errors=True)
            save_run(run, runs_dir / spec.run_id, lock=False)
            loaded[spec.run_id] = load_run(runs_dir / spec.run_id)
        book["generated_runs"] += len(unit)
    book.update(engine.facts())
    missing = [s.run_id for s in todo if s.run_id not in loaded]
    if missing:  # an engine that loses units is a bug, never a pass
        raise TempoError(f"the engine returned no runs for {missing[:3]}...; re-run to resume")
    return {s.run_id: loaded[s.run_id] for s in specs}


def pairs(section: dict[str, Any], order: str = "prompt") -> Iterator[tuple[RunSpec, RunSpec]]:
    """(isolated, visible) specs of the same prompt, threshold and next_from."""
    specs = grid(section, ["isolated", "visible"], order)
    for i in range(0, len(specs), 2):
        yield specs[i], specs[i + 1]


def bar(items: Iterable[Any], enabled: bool, unit: str, total: int | None = None) -> Any:
    """A tqdm progress bar on stderr (disabled when `enabled` is False); `total` for an
    iterator whose length is known apart from it."""
    from tqdm.auto import tqdm

    return tqdm(
        items, disable=not enabled, unit=unit, total=total, file=sys.stderr, dynamic_ncols=True
    )
