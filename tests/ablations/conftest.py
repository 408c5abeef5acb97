"""Shared cases of the ablation tests: a tiny model with a run that has multi-member
sets, and the same run's inputs for the independent Hugging Face reference."""

from __future__ import annotations

import pytest

import tempo_lens as tl
from tempo_lens.testing import tiny_hf_model, tiny_model


@pytest.fixture(scope="session")
def case(tiny_kind):
    """(model, run with multi-member sets) for one tiny kind."""
    model = tiny_model(tiny_kind)
    run = tl.generate(model, "The cat sat", threshold=0.1, max_steps=6, eos_token_id=None)
    assert run.layout.same_set().any()  # isolation must matter in this case
    return model, run


@pytest.fixture(scope="session")
def llama_case():
    """(model, HF model, run, prompt ids, sets) on the tiny llama."""
    model = tiny_model("llama")
    hf, _ = tiny_hf_model("llama")
    runs = tl.generate(
        model, ["The cat sat", "Once upon"], threshold=0.1, max_steps=6, eos_token_id=None
    )
    assert all(r.layout.same_set().any() for r in runs)
    return model, hf, runs
