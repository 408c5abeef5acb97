"""Shared fixtures: tiny models (seconds) and the embedded model (loaded once)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from tempo_lens.testing import tiny_hf_model, tiny_model

warnings.filterwarnings("ignore")
torch.set_grad_enabled(False)

# Run the tiny-model suite on another device (e.g. TEMPO_LENS_TEST_DEVICE=cuda on a GPU box).
DEVICE = os.environ.get("TEMPO_LENS_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session", params=["llama", "neox", "gpt2"])
def tiny_kind(request):
    return request.param


@pytest.fixture(scope="session")
def tiny_pair(tiny_kind):
    """(HookedTransformer, HF model, tokenizer) of one tiny kind, same weights."""
    hf, tok = tiny_hf_model(tiny_kind)
    return tiny_model(tiny_kind).to(DEVICE), hf.to(DEVICE), tok


@pytest.fixture(scope="session")
def embedded():
    from tempo_lens import load_model

    return load_model()


@pytest.fixture(scope="session")
def embedded_hf():
    from tempo_lens.loading import embedded_gguf_path, load_hf_gguf

    hf, tok = load_hf_gguf(embedded_gguf_path())
    hf.config._attn_implementation = "eager"
    return hf, tok
