"""tempo_lens: a TransformerLens toolkit for studying parallel-token (TEMPO) generation.

    import tempo_lens
    model = tempo_lens.load_model()
    run = tempo_lens.generate(model, "The cat sat on the", threshold=0.1, max_steps=15)
    print(run.text())

Names are imported on first use (PEP 562), so `import tempo_lens` and `tempo-lens --help`
do not load torch or TransformerLens.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from tempo_lens.errors import TempoError

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "GenerateConfig": "tempo_lens.config",
    "Mode": "tempo_lens.config",
    "forward": "tempo_lens.generate",
    "generate": "tempo_lens.generate",
    "generate_stream": "tempo_lens.generate",
    "mechanism_hooks": "tempo_lens.generate",
    "select": "tempo_lens.generate",
    "isolation_hooks": "tempo_lens.hooks",
    "mask_hooks": "tempo_lens.hooks",
    "position_hooks": "tempo_lens.hooks",
    "Layout": "tempo_lens.layout",
    "LayoutBatch": "tempo_lens.layout",
    "ParallelSet": "tempo_lens.layout",
    "PrunedMember": "tempo_lens.layout",
    "load_model": "tempo_lens.loading",
    "optimize_weight_layout": "tempo_lens.loading",
    "process_weights": "tempo_lens.loading",
    "restore_weight_layout": "tempo_lens.loading",
    "Provenance": "tempo_lens.provenance",
    "TempoRun": "tempo_lens.run",
    "load_run": "tempo_lens.run",
    "save_run": "tempo_lens.run",
}

__all__ = [
    "GenerateConfig",
    "Mode",
    "Layout",
    "LayoutBatch",
    "ParallelSet",
    "Provenance",
    "PrunedMember",
    "TempoError",
    "TempoRun",
    "forward",
    "generate",
    "generate_stream",
    "isolation_hooks",
    "load_model",
    "load_run",
    "mask_hooks",
    "mechanism_hooks",
    "optimize_weight_layout",
    "position_hooks",
    "process_weights",
    "restore_weight_layout",
    "save_run",
    "select",
]

if TYPE_CHECKING:
    from tempo_lens.config import GenerateConfig, Mode
    from tempo_lens.generate import forward, generate, generate_stream, mechanism_hooks, select
    from tempo_lens.hooks import isolation_hooks, mask_hooks, position_hooks
    from tempo_lens.layout import Layout, LayoutBatch, ParallelSet, PrunedMember
    from tempo_lens.loading import (
        load_model,
        optimize_weight_layout,
        process_weights,
        restore_weight_layout,
    )
    from tempo_lens.provenance import Provenance
    from tempo_lens.run import TempoRun, load_run, save_run


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tempo_lens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """Importing the submodule `tempo_lens.generate` (e.g. `from tempo_lens.generate import
    tokenize`) makes Python set the package attribute `generate` to that module; the
    public name is the function, as it was when `__init__` imported it eagerly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == _LAZY.get(name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
