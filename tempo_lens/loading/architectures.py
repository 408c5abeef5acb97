"""The one architecture table: Hugging Face `model_type` -> how to build its TransformerLens
config and convert its weights.

Every model-specific branch of tempo_lens lives in `ARCHITECTURES`. An entry names the
causal-LM class, the function that turns the Hugging Face config into
`HookedTransformerConfig` fields, TransformerLens's weight converter, and the Hugging Face
config attributes the function reads (`handled`) or may safely ignore (`ignored`). Any
other attribute set to a value other than its class default is refused
(`check_attributes`, the pattern of penzai's `handled_or_ignored_attributes`): a setting
tempo_lens does not implement is never silently dropped. Attributes the config class does
not define at all (custom metadata such as `transformers.js_config`) are not read by the
Hugging Face model either, so they change nothing and are passed over.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tempo_lens.errors import TempoError


class ModelLoadError(TempoError):
    """A model could not be found, converted or loaded."""


# Attributes of every Hugging Face config that cannot change a forward pass.
COMMON_IGNORED = frozenset(
    {
        "_name_or_path",
        "architectures",  # checked against the entry's class by `config_from_hf`
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "dtype",
        "torch_dtype",
        "transformers_version",
        "use_cache",
        "initializer_range",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "id2label",  # classification heads only
        "label2id",
        "problem_type",
        "quantization_config",  # a GGUF is dequantized by transformers before conversion
        "model_type",
        "tie_word_embeddings",  # the converters read the tied or untied head as it is
    }
)
# RoPE attributes (transformers 4.x: `rope_theta`/`rope_scaling`; 5.x: `rope_parameters`),
# read by `rotary_fields`, which checks the RoPE dictionary's keys the same way.
ROPE_ATTRIBUTES = frozenset({"rope_parameters", "rope_scaling", "rope_theta"})
# Keys of the RoPE dictionary each rope type reads (besides `rope_type`/`type`/`rope_theta`).
ROPE_KEYS = {
    "default": frozenset(),
    "linear": frozenset({"factor"}),
    "llama3": frozenset(
        {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    ),
    "yarn": frozenset(
        {
            "factor",
            "attention_factor",
            "beta_fast",
            "beta_slow",
            "truncate",
            "original_max_position_embeddings",
            "mscale",
            "mscale_all_dim",
        }
    ),
}


def rope_params(hf_config: Any) -> dict[str, Any]:
    """RoPE settings across transformers 4.x (`rope_theta`/`rope_scaling`) and 5.x
    (`rope_parameters`), as one dictionary."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    merged = {**scaling, **params}
    if "rope_theta" not in merged and getattr(hf_config, "rope_theta", None) is not None:
        merged["rope_theta"] = hf_config.rope_theta
    return merged


def rotary_fields(hf_config: Any, d_head: int, partial: bool = False) -> dict[str, Any]:
    """The rotary fields of a `HookedTransformerConfig`: base, and the scaling of the rope
    type (default, linear, llama3 NTK-by-parts, YaRN). `partial`: the model rotates only a
    fraction of each head (`partial_rotary_factor`, GPT-NeoX); elsewhere it must be 1."""
    rope = rope_params(hf_config)
    rope_type = (rope.get("rope_type") or rope.get("type") or "default").lower()
    if rope_type not in ROPE_KEYS:
        raise ModelLoadError(
            f"rope type {rope_type!r} is not supported; use a model with "
            f"{', '.join(ROPE_KEYS)} RoPE"
        )
    known = ROPE_KEYS[rope_type] | {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
    unknown = {k: v for k, v in rope.items() if k not in known}
    fraction = rope.get("partial_rotary_factor", 1.0)
    if not partial and fraction != 1.0:
        unknown["partial_rotary_factor"] = fraction
    if unknown:
        raise ModelLoadError(
            f"{rope_type} RoPE with {_listing(unknown)} is not supported; "
            "use a model without these RoPE settings"
        )
    fields: dict[str, Any] = {
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": round(fraction * d_head),
        "rotary_base": rope.get("rope_theta", 10000.0),
    }
    original_ctx = rope.get("original_max_position_embeddings", hf_config.max_position_embeddings)
    if rope_type == "linear":
        # TL divides every angle by `rotary_scaling_factor`, as HF's linear type does
        fields["rotary_scaling_factor"] = float(rope.get("factor", 1.0))
    elif rope_type == "llama3":
        fields.update(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=original_ctx,
            NTK_by_parts_low_freq_factor=rope.get("low_freq_factor", 1.0),
            NTK_by_parts_high_freq_factor=rope.get("high_freq_factor", 4.0),
            NTK_by_parts_factor=rope.get("factor", 1.0),
        )
    elif rope_type == "yarn":
        fields.update(_yarn_fields(rope, original_ctx))
    return fields


def _yarn_fields(rope: Mapping[str, Any], original_ctx: int) -> dict[str, Any]:
    factor = rope.get("factor", 1.0)
    if rope.get("mscale") or rope.get("mscale_all_dim"):
        raise ModelLoadError("YaRN with mscale/mscale_all_dim is not supported")
    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return {
        "use_yarn_rope": True,
        "yarn_factor": factor,
        "yarn_attention_factor": attention_factor,
        "yarn_truncate": rope.get("truncate", True),
        "yarn_original_max_position_embeddings": original_ctx,
        "yarn_beta_fast": rope.get("beta_fast", 32.0),
        "yarn_beta_slow": rope.get("beta_slow", 1.0),
    }


# ---------------------------------------------------------------------------------------
# Config functions: HF config -> HookedTransformerConfig fields
# ---------------------------------------------------------------------------------------


def llama_like(c: Any) -> dict[str, Any]:
    """Llama, Mistral and Qwen2: RMSNorm, gated MLP, rotary, grouped-query attention."""
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return {
        "d_model": c.hidden_size,
        "d_head": d_head,
        "n_heads": c.num_attention_heads,
        "n_key_value_heads": n_kv if n_kv != c.num_attention_heads else None,
        "d_mlp": c.intermediate_size,
        "n_layers": c.num_hidden_layers,
        "n_ctx": c.max_position_embeddings,
        "eps": c.rms_norm_eps,
        "d_vocab": c.vocab_size,
        "act_fn": c.hidden_act,
        "normalization_type": "RMS",
        "final_rms": True,
        "gated_mlp": True,
        **rotary_fields(c, d_head),
    }


def mistral(c: Any) -> dict[str, Any]:
    """Llama-like; a sliding window never applies within `n_ctx <= sliding_window`, so the
    context is capped there (exact, where TL's local attention would be one more path)."""
    fields = llama_like(c)
    window = getattr(c, "sliding_window", None)
    if window:
        fields["n_ctx"] = min(fields["n_ctx"], window)
    return fields


def qwen2(c: Any) -> dict[str, Any]:
    """Llama-like with query/key/value biases (TL's converter reads them); every layer
    must use full attention (`use_sliding_window` is refused unless False)."""
    sliding = [t for t in getattr(c, "layer_types", None) or () if t != "full_attention"]
    if sliding:
        raise ModelLoadError(
            f"qwen2 config attribute layer_types with {sliding[0]!r} layers is not "
            "supported; use a model with full attention in every layer"
        )
    return llama_like(c)


def gpt2(c: Any) -> dict[str, Any]:
    """GPT-2: LayerNorm, learned absolute positions."""
    return {
        "d_model": c.n_embd,
        "d_head": c.n_embd // c.n_head,
        "n_heads": c.n_head,
        "d_mlp": c.n_inner or 4 * c.n_embd,
        "n_layers": c.n_layer,
        "n_ctx": c.n_positions,
        "eps": c.layer_norm_epsilon,
        "d_vocab": c.vocab_size,
        "act_fn": c.activation_function,
        "normalization_type": "LN",
        "positional_embedding_type": "standard",
        "use_attn_scale": getattr(c, "scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": getattr(c, "scale_attn_by_inverse_layer_idx", False),
    }


def neox(c: Any) -> dict[str, Any]:
    """GPT-NeoX (Pythia): LayerNorm, partial rotary, parallel attention and MLP."""
    d_head = c.hidden_size // c.num_attention_heads
    rotary = rotary_fields(c, d_head, partial=True)
    rotary_pct = getattr(c, "rotary_pct", None)  # transformers 4.x
    if rotary_pct is not None:
        rotary["rotary_dim"] = round(rotary_pct * d_head)
    if getattr(c, "rotary_emb_base", None) is not None:  # transformers 4.x
        rotary["rotary_base"] = c.rotary_emb_base
    return {
        "d_model": c.hidden_size,
        "d_head": d_head,
        "n_heads": c.num_attention_heads,
        "d_mlp": c.intermediate_size,
        "n_layers": c.num_hidden_layers,
        "n_ctx": c.max_position_embeddings,
        "eps": c.layer_norm_eps,
        "d_vocab": c.vocab_size,
        "act_fn": c.hidden_act,
        "normalization_type": "LN",
        "parallel_attn_mlp": getattr(c, "use_parallel_residual", True),
        **rotary,
    }


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """One supported Hugging Face model type."""

    hf_class: str  # its causal-LM class: TL's `original_architecture`
    config: Callable[[Any], dict[str, Any]]  # HookedTransformerConfig fields
    converter: str  # in transformer_lens.pretrained.weight_conversions
    handled: frozenset[str]  # HF config attributes `config` reads
    ignored: frozenset[str] = frozenset()  # attributes that cannot change the forward


LLAMA_HANDLED = ROPE_ATTRIBUTES | {
    "hidden_size",
    "head_dim",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "num_hidden_layers",
    "max_position_embeddings",
    "rms_norm_eps",
    "vocab_size",
    "hidden_act",
}
DROPOUT = frozenset({"attention_dropout"})  # models run in eval mode

ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(
        "LlamaForCausalLM",
        llama_like,
        "convert_llama_weights",
        LLAMA_HANDLED,
        # pretraining_tp only splits the matmuls (transformers 4.x); same values
        DROPOUT | {"pretraining_tp"},
    ),
    "mistral": Architecture(
        "MistralForCausalLM",
        mistral,
        "convert_mistral_weights",
        LLAMA_HANDLED | {"sliding_window"},
        DROPOUT,
    ),
    "qwen2": Architecture(
        "Qwen2ForCausalLM",
        qwen2,
        "convert_qwen2_weights",
        LLAMA_HANDLED | {"layer_types"},
        # read by Hugging Face only when use_sliding_window (refused unless False) is set
        DROPOUT | {"sliding_window", "max_window_layers"},
    ),
    "gpt2": Architecture(
        "GPT2LMHeadModel",
        gpt2,
        "convert_gpt2_weights",
        frozenset(
            {
                "n_embd",
                "n_head",
                "n_inner",
                "n_layer",
                "n_positions",
                "layer_norm_epsilon",
                "vocab_size",
                "activation_function",
                "scale_attn_weights",
                "scale_attn_by_inverse_layer_idx",
            }
        ),
        frozenset(
            {
                "attn_pdrop",
                "embd_pdrop",
                "resid_pdrop",
                # the sequence-summary head is not part of the causal LM
                "summary_activation",
                "summary_first_dropout",
                "summary_proj_to_labels",
                "summary_type",
                "summary_use_proj",
                # upcasts attention to float32: the same values on a float32 model
                "reorder_and_upcast_attn",
            }
        ),
    ),
    "gpt_neox": Architecture(
        "GPTNeoXForCausalLM",
        neox,
        "convert_neox_weights",
        ROPE_ATTRIBUTES
        | {
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "num_hidden_layers",
            "max_position_embeddings",
            "layer_norm_eps",
            "vocab_size",
            "hidden_act",
            "use_parallel_residual",
            "rotary_pct",  # transformers 4.x
            "rotary_emb_base",  # transformers 4.x (rope_theta there)
        },
        DROPOUT | {"hidden_dropout", "classifier_dropout", "is_decoder"},
    ),
}


def supported_architectures() -> list[str]:
    """The supported Hugging Face causal-LM classes."""
    return sorted(a.hf_class for a in ARCHITECTURES.values())


def _listing(attributes: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in sorted(attributes.items()))


def check_attributes(hf_config: Any, model_type: str, arch: Architecture) -> None:
    """Refuse every attribute of `hf_config` that `arch` neither handles nor ignores and
    that differs from its config class's default."""
    reference = type(hf_config)().to_dict()
    allowed = arch.handled | arch.ignored | COMMON_IGNORED
    bad = {
        k: v
        for k, v in hf_config.to_dict().items()
        if k not in allowed and k in reference and v != reference[k]
    }
    if bad:
        many = len(bad) > 1
        raise ModelLoadError(
            f"{model_type} config attribute{'s' if many else ''} {_listing(bad)} "
            f"{'are' if many else 'is'} not supported by tempo_lens (it would be dropped); "
            f"use a model without {'them' if many else 'it'}"
        )


def architecture_of(hf_config: Any) -> Architecture:
    """The table entry of a Hugging Face config, after checking its attributes."""
    model_type = getattr(hf_config, "model_type", None) or ""
    arch = ARCHITECTURES.get(model_type)
    listed = (getattr(hf_config, "architectures", None) or [None])[0]
    if arch is None or listed not in (None, arch.hf_class):
        name = listed or model_type
        raise ModelLoadError(
            f"architecture {name!r} is not supported; supported: "
            f"{', '.join(supported_architectures())}"
        )
    check_attributes(hf_config, model_type, arch)
    return arch


def config_from_hf(hf_config: Any) -> dict[str, Any]:
    """A `HookedTransformerConfig` keyword dict built from a Hugging Face config object
    (refusing any attribute the table does not handle)."""
    arch = architecture_of(hf_config)
    cfg = arch.config(hf_config)
    cfg["original_architecture"] = arch.hf_class
    cfg["tie_word_embeddings"] = bool(getattr(hf_config, "tie_word_embeddings", False))
    return cfg


def weight_converter(cfg_dict: Mapping[str, Any]) -> Callable[..., dict[str, Any]]:
    """TL's weight converter for a `config_from_hf` dict (HookedTransformer backend only:
    TransformerLens 4 dropped the converters with HookedTransformer)."""
    from transformer_lens.pretrained import weight_conversions

    arch = next(
        a for a in ARCHITECTURES.values() if a.hf_class == cfg_dict["original_architecture"]
    )
    return getattr(weight_conversions, arch.converter)
