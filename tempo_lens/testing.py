"""Tiny models for tests and benchmarks.

- `tiny_hf_model(kind)` / `tiny_model(kind)`: a seeded tiny Hugging Face causal LM (the
  independent reference) and the TransformerLens model converted from it through the same
  `model_from_hf` path as every real model (kinds: `KINDS` and `ROPE_VARIANTS`, defined in
  `tempo_lens.loading.tiny`, which also backs `load_model("tiny-llama")`);
"""

from __future__ import annotations

from tempo_lens.backend import Model, check_backend_name
from tempo_lens.loading import bridge_from_hf, model_from_hf
from tempo_lens.loading.tiny import (
    KINDS,
    ROPE_VARIANTS,
    SPECIALS,
    VOCAB_SIZE,
    tiny_hf_model,
    tiny_tokenizer,
)

__all__ = [
    "KINDS",
    "ROPE_VARIANTS",
    "SPECIALS",
    "VOCAB_SIZE",
    "tiny_hf_model",
    "tiny_model",
    "tiny_tokenizer",
]


def tiny_model(kind: str = "llama", seed: int = 0, backend: str | None = None) -> Model:
    """The `HookedTransformer` (or, `backend="bridge"`, the `TransformerBridge`; default:
    `backend.default_backend()`) of `tiny_hf_model(kind, seed)`, unprocessed: hook values
    equal the HF hidden states."""
    hf, tok = tiny_hf_model(kind, seed)
    if check_backend_name(backend) == "bridge":
        return bridge_from_hf(hf, tok, model_name=f"tiny-{kind}")
    return model_from_hf(hf, tok, model_name=f"tiny-{kind}")
