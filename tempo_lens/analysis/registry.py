"""Experiment kinds that `tempo-lens experiment CONFIG.yaml` can run.

A kind is a function `(model, section: dict, out_dir: Path, progress: bool) -> dict`
returning the JSON-able summary figures of that section. Modules register their kinds
with `@experiment_kind("name")`; the runner looks them up by the config's `kind:` key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

ExperimentFn = Callable[[Any, dict[str, Any], Path, bool], dict[str, Any]]
KINDS: dict[str, ExperimentFn] = {}


def experiment_kind(name: str) -> Callable[[ExperimentFn], ExperimentFn]:
    def register(fn: ExperimentFn) -> ExperimentFn:
        KINDS[name] = fn
        return fn

    return register
