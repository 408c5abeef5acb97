"""Experiment kinds that `tempo-lens experiment CONFIG.yaml` can run.

A kind is a function `(model, section: dict, out_dir: Path, progress: bool) -> dict`
returning the JSON-able summary figures of that section. Modules register their kinds
with `@experiment_kind("name")`; the runner looks them up by the config's `kind:` key.

Each kind also declares (additively, as attributes set by the decorator):

- `schema`: `{key: default}` of the keys it accepts beyond the common keys of
  `tempo_lens.analysis.config.COMMON` (a key whose default is `REQUIRED` must be given).
  The runner rejects every other key, naming the nearest valid one, and passes the kind
  a `section` in which every common and kind key is present (defaults filled in).
- `report`: optional `(summary, section) -> str`, the markdown body of `report.md`; when
  absent the runner renders the summary's figures as generic tables.

`section["out_dir"]` is not set; the kind writes its runs (`runs/<id>/`, via
`tempo_lens.analysis.experiment.ensure_runs` or `TempoRun.save`) and PNG plots under
`out_dir`, which the runner renames into place when the kind returns. Figures that are
not reproducible (wall times) go under the summary key `"timing"`; everything else must
come out identical when the experiment is re-run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

ExperimentFn = Callable[[Any, dict[str, Any], Path, bool], dict[str, Any]]
ReportFn = Callable[[dict[str, Any], dict[str, Any]], str]
KINDS: dict[str, ExperimentFn] = {}


def experiment_kind(
    name: str, schema: dict[str, Any] | None = None, report: ReportFn | None = None
) -> Callable[[ExperimentFn], ExperimentFn]:
    """Register `fn` as kind `name`, with its extra config keys (`schema`) and report."""

    def register(fn: ExperimentFn) -> ExperimentFn:
        fn.schema = dict(schema or {})  # type: ignore[attr-defined]
        fn.report = report  # type: ignore[attr-defined]
        KINDS[name] = fn
        return fn

    return register
