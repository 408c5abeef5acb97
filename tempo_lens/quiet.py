"""Loading a model without the loaders' chatter on the screen.

TransformerLens prints "Moving model to device" and Hugging Face logs warnings and
progress bars; a command line, an experiment driver or a Ray worker wants neither.
`quiet()` turns that chatter off for the process; `load_model_quietly` loads with
stdout captured."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from typing import Any


def quiet() -> None:
    """Keep library chatter (TL's 'Moving model to device', HF warnings) off the screen."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    logging.getLogger("root").setLevel(logging.ERROR)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    try:  # transformers' GGUF de-quantization bars on a first (uncached) load
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def load_model_quietly(name: str | None, device: str | None = None) -> Any:
    """`tempo_lens.loading.load_model(name, device=device)` with its stdout captured."""
    from tempo_lens.loading import load_model

    with contextlib.redirect_stdout(io.StringIO()):
        return load_model(name, device=device)
