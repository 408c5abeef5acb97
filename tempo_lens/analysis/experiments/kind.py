"""What an experiment kind is: a name, its own typed config keys, a run and a report.

A kind is a `Kind` value; the runner finds it in the explicit registry tuple
(`tempo_lens.analysis.experiments.registry.KINDS`), never through import side effects.

- `keys`: a pydantic model (subclass of `KindKeys`) of the keys the kind accepts beyond the
  common keys of every experiment (`tempo_lens.analysis.experiments.config.CommonKeys`);
  its field defaults are the defaults. A field without a default must be given.
- `unused`: common keys the kind does not read (e.g. `modes` for a kind that always
  generates isolated runs); a config that sets one is refused, naming the key, so nothing
  is accepted and silently ignored.
- `single`: common list keys of which the kind reads exactly one value (e.g.
  `thresholds`); a config giving more than one is refused.
- `run(model, section, out_dir, progress) -> summary`: `section` is the resolved config
  as a plain dict (every common and kind key present, defaults filled in, `prompts`
  expanded to `{"id", "category", "text"}` dicts). The kind writes its runs and PNG plots
  under `out_dir` and returns its JSON-able summary; wall times go under `"timing"`.
- `report(summary, section) -> str`: the markdown body of report.md (None: generic tables).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

RunFn = Callable[[Any, dict[str, Any], Path, bool], dict[str, Any]]
ReportFn = Callable[[dict[str, Any], dict[str, Any]], str]

PositiveInt = Annotated[StrictInt, Field(ge=1)]
Count = Annotated[StrictInt, Field(ge=0, le=10_000_000)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Unit = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class KindKeys(BaseModel):
    """Base of every kind's own config keys: strict types, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


@dataclass(frozen=True)
class Kind:
    """One experiment kind (see the module docstring)."""

    name: str
    run: RunFn
    keys: type[KindKeys] = KindKeys
    report: ReportFn | None = None
    unused: tuple[str, ...] = ()
    single: tuple[str, ...] = ()
