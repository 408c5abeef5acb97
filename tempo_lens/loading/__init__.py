"""Load a `HookedTransformer`: the embedded default, a TransformerLens name, or a HF model.

All model-specific knowledge of tempo_lens lives in this package, and every model-specific
branch in ONE table (`architectures.ARCHITECTURES`: Hugging Face `model_type` -> config
function, TransformerLens weight converter, the config attributes it handles). Every
loader ends in the same steps: a `HookedTransformerConfig` built from a Hugging Face config
(`config_from_hf`, which refuses any attribute it does not handle), weights converted with
TransformerLens's own converters, and then `optimize_weight_layout`, which stores each
weight in the memory order its forward reads.

Weights are converted *unprocessed* (that is what the weight cache stores and what
`model_from_hf` returns: every hook value equals the Hugging Face hidden state). `load_model`
then processes them the way `HookedTransformer.from_pretrained` does by default
(`process_weights`: fold LayerNorm, center writing weights and the unembedding, fold value
biases), so direct logit attribution and the logit lens are right; `processing=False`
mirrors `from_pretrained_no_processing`. Centering the unembedding shifts every logit row
by a constant: probabilities and log-probabilities are unchanged.

The speed layout is invisible to TransformerLens APIs: same shapes and values, and
`state_dict()` hands out contiguous tensors (so `safetensors.torch.save_file` works).
Only `.view()` on a restrided weight needs TL's own layout back: `restore_weight_layout`.

Modules: `architectures` (the table), `convert` (a loaded Hugging Face model -> TL),
`embedded` (the embedded GGUF and its weight cache), `weight_layout`, `processing`,
`tiny` (the seeded tiny models) and `load` (`load_model`).
"""

from __future__ import annotations

from tempo_lens.loading.architectures import (
    ARCHITECTURES,
    Architecture,
    ModelLoadError,
    config_from_hf,
    supported_architectures,
)
from tempo_lens.loading.convert import bridge_from_hf, model_from_hf
from tempo_lens.loading.embedded import (
    CACHE_ENTRY,
    CACHE_ENV,
    CACHE_FORMAT,
    CACHE_LOCK_TIMEOUT,
    EMBEDDED_GGUF,
    EMBEDDED_NAME,
    EMBEDDED_PACKAGE,
    INSTALL_EMBEDDED,
    cache_dir,
    embedded_cache_key,
    embedded_gguf_path,
    file_digest,
    load_hf_gguf,
    read_cache,
)
from tempo_lens.loading.load import describe, load_model, timed_load
from tempo_lens.loading.processing import WeightProcessing, process_weights, weight_processing
from tempo_lens.loading.weight_layout import optimize_weight_layout, restore_weight_layout

__all__ = [
    "ARCHITECTURES",
    "CACHE_ENTRY",
    "CACHE_ENV",
    "CACHE_FORMAT",
    "CACHE_LOCK_TIMEOUT",
    "EMBEDDED_GGUF",
    "EMBEDDED_NAME",
    "EMBEDDED_PACKAGE",
    "INSTALL_EMBEDDED",
    "Architecture",
    "ModelLoadError",
    "WeightProcessing",
    "bridge_from_hf",
    "cache_dir",
    "config_from_hf",
    "describe",
    "embedded_cache_key",
    "embedded_gguf_path",
    "file_digest",
    "load_hf_gguf",
    "load_model",
    "model_from_hf",
    "optimize_weight_layout",
    "process_weights",
    "read_cache",
    "restore_weight_layout",
    "supported_architectures",
    "timed_load",
    "weight_processing",
]
