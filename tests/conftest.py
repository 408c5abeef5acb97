"""Shared fixtures: tiny models (seconds) and the embedded model (loaded once)."""

from __future__ import annotations

import os
import warnings

# Under pytest-xdist (`./dev.sh test` runs two workers) each worker computes on one thread:
# two workers of two threads each on a 2-core machine would oversubscribe it. Set before
# torch loads, so subprocesses the tests start inherit it too.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tempo_lens.testing import tiny_hf_model, tiny_model

warnings.filterwarnings("ignore")
torch.set_grad_enabled(False)
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

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
