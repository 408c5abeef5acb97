"""Every experiment kind `tempo-lens experiment CONFIG.yaml` can run, in one tuple.

A new kind is a `Kind` value (`tempo_lens.analysis.experiments.kind`) defined beside its
code and listed here; nothing registers itself on import.
"""

from __future__ import annotations

import difflib

from tempo_lens.analysis import ablations
from tempo_lens.analysis.experiments import seed_kinds
from tempo_lens.analysis.experiments.kind import Kind
from tempo_lens.analysis.experiments.sweep import SWEEP
from tempo_lens.errors import TempoError

KINDS: tuple[Kind, ...] = (
    seed_kinds.ATTENTION,
    seed_kinds.LOGITS,
    seed_kinds.CROSS_PARALLEL,
    seed_kinds.POSITIONS,
    seed_kinds.HIGH_PARALLELISM,
    SWEEP,
    *ablations.KINDS,
)


def names() -> list[str]:
    """The kinds' names, sorted."""
    return sorted(k.name for k in KINDS)


def kind(name: object) -> Kind:
    """The kind called `name`, or a `TempoError` naming the nearest one."""
    for k in KINDS:
        if k.name == name:
            return k
    near = difflib.get_close_matches(str(name), names(), n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else f"; use one of {', '.join(names())}"
    raise TempoError(f"unknown kind {name!r}{hint}")
