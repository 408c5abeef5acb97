"""The settings of one generation: `GenerateConfig` and the one `Mode` type.

`GenerateConfig` is frozen, checked when it is made, stored in every `TempoRun` and written
with it (`to_dict` / `from_dict`): code reads `run.config.isolate`, never a string key with
a default of its own. The defaults for keys that runs written by older versions lack are
the dataclass's defaults, here and nowhere else.

A mode is `"isolated"` (members of a set do not see each other) or `"visible"`; `isolate`
is the same fact as a bool (`mode_of`, `isolate_of` convert).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

from tempo_lens.errors import TempoError

Mode = Literal["isolated", "visible"]
MODES: tuple[Mode, ...] = ("isolated", "visible")
NEXT_FROM = ("mixture", "last", "first")

# A fixed threshold, a schedule `(step, max_steps) -> threshold`, or, in a loaded run, the
# saved description of a schedule (its `spec` dict, or its repr).
Threshold = float | Callable[[int, int], float] | dict[str, Any] | str


def mode_of(isolate: bool) -> Mode:
    """`"isolated"` for True, `"visible"` for False."""
    return "isolated" if isolate else "visible"


def isolate_of(mode: str) -> bool:
    """True for `"isolated"`, False for `"visible"`; anything else is refused."""
    if mode not in MODES:
        raise TempoError(f"mode must be 'isolated' or 'visible', got {mode!r}")
    return mode == "isolated"


def validate(threshold: Any, max_steps: Any, next_from: Any, max_parallel: Any) -> None:
    """The checks behind `GenerateConfig`: one line naming the bad value."""
    if not callable(threshold) and not isinstance(threshold, dict | str):
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise TempoError(
                f"threshold must be a number in (0, 1] or a callable, got {threshold!r}"
            )
        if not 0.0 < threshold <= 1.0:  # NaN fails too
            raise TempoError(f"threshold must lie in (0, 1], got {threshold}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise TempoError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    if not isinstance(next_from, str) or next_from not in NEXT_FROM:
        raise TempoError(f"next_from must be one of {', '.join(NEXT_FROM)}, got {next_from!r}")
    if max_parallel is not None and (
        isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1
    ):
        raise TempoError(f"max_parallel must be an integer >= 1 or None, got {max_parallel!r}")


@dataclass(frozen=True)
class GenerateConfig:
    """Every setting of one generation (see `tempo_lens.generate`)."""

    threshold: Threshold = 0.1
    max_steps: int = 15
    isolate: bool = True
    next_from: str = "mixture"
    max_parallel: int | None = None
    eos_token_id: int | None = None
    use_kv_cache: bool = True
    prune: float | None = None

    def __post_init__(self) -> None:
        validate(self.threshold, self.max_steps, self.next_from, self.max_parallel)
        if not isinstance(self.isolate, bool):
            raise TempoError(f"isolate must be True or False, got {self.isolate!r}")
        if self.prune is not None and (
            isinstance(self.prune, bool)
            or not isinstance(self.prune, int | float)
            or not 0.0 < float(self.prune) < math.inf
        ):
            raise TempoError(f"prune must be a ratio > 0 (e.g. 0.5) or None, got {self.prune}")

    @property
    def mode(self) -> Mode:
        return mode_of(self.isolate)

    def threshold_at(self, step: int) -> float:
        t = self.threshold
        if isinstance(t, dict | str):
            raise TempoError(
                f"this config's threshold is a saved schedule ({t!r}); rebuild it with "
                "tempo_lens.analysis.ablations.threshold_from_spec to generate again"
            )
        return t(step, self.max_steps) if callable(t) else float(t)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in run.json (a schedule is stored as its `spec`)."""
        t = self.threshold
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["threshold"] = getattr(t, "spec", repr(t)) if callable(t) else t
        if self.prune is None:
            del out["prune"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerateConfig:
        """The config stored by `to_dict` (keys an older run lacks take the defaults)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TempoError(
                f"unknown generation setting {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)
