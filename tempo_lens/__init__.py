"""tempo_lens: a TransformerLens toolkit for studying parallel-token (TEMPO) generation.

import tempo_lens
model = tempo_lens.load_model()
run = tempo_lens.generate(model, "The cat sat on the", threshold=0.1, max_steps=15)
print(run.text())
"""

from tempo_lens.errors import TempoError
from tempo_lens.generate import forward, generate, mechanism_hooks, select
from tempo_lens.hooks import isolation_hooks, position_hooks
from tempo_lens.layout import Layout, ParallelSet
from tempo_lens.loading import load_model, optimize_weight_layout
from tempo_lens.run import TempoRun, load_run, save_run

__version__ = "0.1.0"

__all__ = [
    "Layout",
    "ParallelSet",
    "TempoError",
    "TempoRun",
    "forward",
    "generate",
    "isolation_hooks",
    "load_model",
    "load_run",
    "mechanism_hooks",
    "optimize_weight_layout",
    "position_hooks",
    "save_run",
    "select",
]
