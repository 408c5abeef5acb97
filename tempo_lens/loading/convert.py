"""A loaded Hugging Face causal LM -> a TransformerLens model.

`model_from_hf` builds the `HookedTransformerConfig` from the Hugging Face config
(`architectures.config_from_hf`), converts the weights with TransformerLens's own converter
and stores them in the speed layout (`weight_layout`). Weights stay *unprocessed*: every
hook value equals the Hugging Face hidden state. `bridge_from_hf` wraps the same model in a
`TransformerBridge` instead.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from tempo_lens.backend import Model
from tempo_lens.loading.architectures import ModelLoadError, config_from_hf, weight_converter
from tempo_lens.loading.processing import WeightProcessing
from tempo_lens.loading.weight_layout import optimize_weight_layout


def prepends_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer itself puts a BOS in front of plain text (then TL must too)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def model_from_hf(
    hf_model: Any,
    tokenizer: Any,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    model_name: str | None = None,
) -> Model:
    """Convert a loaded Hugging Face causal LM into a `HookedTransformer` (unprocessed)."""
    cfg_dict = config_from_hf(hf_model.config)
    cfg = make_config(cfg_dict, tokenizer, device, dtype, model_name)
    return build_model(cfg, weight_converter(cfg_dict)(hf_model, cfg), tokenizer)


def make_config(
    cfg_dict: dict[str, Any],
    tokenizer: Any,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    model_name: str | None,
) -> Any:
    """The `HookedTransformerConfig` of a `config_from_hf` dict; TL prepends BOS exactly
    when the tokenizer does."""
    from transformer_lens import HookedTransformerConfig

    kwargs = {k: v for k, v in cfg_dict.items() if k != "tie_word_embeddings"}
    return HookedTransformerConfig(
        **kwargs,
        model_name=model_name or "custom",
        device=str(device) if device is not None else "cpu",
        dtype=dtype or torch.float32,
        default_prepend_bos=prepends_bos(tokenizer) if tokenizer is not None else False,
    )


def build_model(cfg: Any, state_dict: dict[str, torch.Tensor], tokenizer: Any) -> Model:
    """A `HookedTransformer` of `cfg` holding the converted (unprocessed) `state_dict`, in
    eval mode and the speed layout."""
    from transformer_lens import HookedTransformer

    # Every parameter is overwritten below, so TL's random initialisation is skipped, and
    # the state dict goes in with one `load_state_dict` (TL's `load_and_process_state_dict`
    # without processing loads it key by key: 575 module-tree walks, 10 s on SmolLM2).
    init, cfg.init_weights = cfg.init_weights, False
    try:
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    finally:
        cfg.init_weights = init
    state_dict = model.fill_missing_keys({k: v.to(cfg.dtype) for k, v in state_dict.items()})
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"the converted weights do not fit the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    model.to(cfg.device)
    model.eval()
    optimize_weight_layout(model)
    return model


def bridge_from_hf(
    hf_model: Any,
    tokenizer: Any,
    *,
    device: str | torch.device | None = None,
    model_name: str | None = None,
    processing: WeightProcessing | None = None,
) -> Model:
    """A `TransformerBridge` around a loaded Hugging Face causal LM (its weights as they
    are; `processing` applies the bridge's `enable_compatibility_mode` with those flags).
    The architecture must be one `config_from_hf` handles, as on the HookedTransformer
    path; BOS handling follows the tokenizer, as there."""
    from transformer_lens.model_bridge import TransformerBridge

    config_from_hf(hf_model.config)
    hf_model.eval()
    if device is not None:
        hf_model.to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(
            model_name or "custom", hf_model=hf_model, tokenizer=tokenizer
        )
    bridge.cfg.default_prepend_bos = prepends_bos(tokenizer) if tokenizer is not None else False
    bridge.eval()
    if processing is not None and processing != WeightProcessing():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge.enable_compatibility_mode(disable_warnings=True, **processing.to_dict())
        bridge.tempo_lens_processing = processing
    return bridge
