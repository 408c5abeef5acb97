"""The bridge backend (`TransformerBridge`, TransformerLens 3.x and 4.x) against the
independent Hugging Face reference, and the two bridge traps closed.

`./dev.sh test` runs this file twice: in the main environment (TransformerLens 3.9, where
both backends exist and are also compared with each other) and in `.venv-tl4`
(TransformerLens 4.3, bridge only). It uses no HookedTransformer-only API unless
`HOOKED` says one exists.
"""

from __future__ import annotations

import pytest
import torch

import tempo_lens as tl
from tempo_lens.backend import (
    BridgeBackend,
    HookedBackend,
    default_backend,
    has_hooked_transformer,
    is_bridge,
    tl_major_version,
)
from tempo_lens.layout import LayoutBatch
from tempo_lens.testing import tiny_hf_model, tiny_model
from tests.conftest import DEVICE
from tests.reference import hf_tempo_generate, hf_tempo_logits, log_probs

HOOKED = has_hooked_transformer()
PROMPT = "The cat sat on the"
PROMPTS = ["The cat sat", "A", "Hello there, my old friend", "xyz q"]
needs_hooked = pytest.mark.skipif(not HOOKED, reason="TransformerLens 4 has no HookedTransformer")


@pytest.fixture(scope="module")
def bridge_pair(tiny_kind):
    """(TransformerBridge, HF model, tokenizer) of one tiny kind, same weights."""
    hf, tok = tiny_hf_model(tiny_kind)
    return tiny_model(tiny_kind, backend="bridge").to(DEVICE), hf.to(DEVICE), tok


def _sets(run):
    return [s.tokens for s in run.steps]


def _prompt_ids(model, text):
    return model.to_tokens(text, prepend_bos=model.cfg.default_prepend_bos)[0].tolist()


def _eos_that_splits(model, prompts, **kw):
    """A token id that makes the rows stop at different steps (EOS on some, not all)."""
    runs = [tl.generate(model, p, eos_token_id=None, **kw) for p in prompts]
    for run in runs:
        for s in run.steps[1:-1]:
            stops = [
                next((i for i, t in enumerate(r.steps) if t.tokens[0] == s.tokens[0]), None)
                for r in runs
            ]
            if len(set(stops)) >= 3:
                return s.tokens[0]
    return None


# Which backend a user gets ------------------------------------------------------------------


def test_backend_choice():
    assert default_backend() == ("hooked" if tl_major_version() < 4 else "bridge")
    bridge = tl.load_model("tiny-llama", backend="bridge")
    assert is_bridge(bridge) and tl.loading.describe(bridge)["backend"] == "bridge"
    assert is_bridge(tl.load_model("tiny-gpt2")) == (not HOOKED)
    with pytest.raises(tl.TempoError, match="backend must be"):
        tl.load_model("tiny-llama", backend="nope")
    if not HOOKED:
        with pytest.raises(tl.TempoError, match="removed HookedTransformer"):
            tl.load_model("tiny-llama", backend="hooked")


def test_describe_reads_the_hf_config_not_the_bridge_rotary_cfg():
    info = tl.loading.describe(tl.load_model("tiny-neox", backend="bridge"))
    assert info["architecture"] == "GPTNeoXForCausalLM"
    assert info["rotary_dim"] == 8  # rotary_pct 0.5 of d_head 16
    assert info["positional_embedding_type"] == "rotary"


# The oracle: sets identical, probabilities and logits within tolerance ------------------------


@pytest.mark.parametrize("use_kv_cache", [True, False], ids=["cached", "recomputed"])
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "visible"])
def test_bridge_generation_equals_hf_oracle(bridge_pair, isolate, use_kv_cache):
    """Every tiny kind (rotary GQA, partial rotary, learned positions): the bridge's
    generation picks exactly the sets the Hugging Face oracle picks, with the same
    probabilities, and every forward's logit rows match HF's for that layout."""
    model, hf, _ = bridge_pair
    kw = dict(threshold=0.1, max_steps=8, isolate=isolate)
    run = tl.generate(
        model, "The cat sat", eos_token_id=None, keep_logits=True, use_kv_cache=use_kv_cache, **kw
    )
    prompt = _prompt_ids(model, "The cat sat")
    sets, probs = hf_tempo_generate(hf, prompt, **kw)
    assert _sets(run) == sets
    assert sum(len(s) > 1 for s in sets) >= 3
    for ours, ref in zip(run.steps, probs, strict=True):
        assert ours.probs == pytest.approx(ref, abs=1e-4)
    full = log_probs(hf_tempo_logits(hf, prompt, sets, isolate))[0].cpu()
    start = len(prompt)
    assert (log_probs(run.logits[0]) - full[:start]).abs().max().item() < 1e-3
    for i, rows in enumerate(run.logits[1:]):
        k = len(sets[i])
        assert (log_probs(rows) - full[start : start + k]).abs().max().item() < 1e-3
        start += k


def test_bridge_replay_equals_hf_oracle(bridge_pair):
    model, hf, _ = bridge_pair
    run = tl.generate(model, "The cat sat", threshold=0.1, max_steps=8, eos_token_id=None)
    prompt = run.layout.tokens[: run.layout.n_prompt].tolist()
    refs = {}
    for isolate in (True, False):
        ours, _ = tl.forward(model, run.layout, isolate=isolate)
        refs[isolate] = hf_tempo_logits(hf, prompt, _sets(run), isolate)
        assert (log_probs(ours) - log_probs(refs[isolate])).abs().max().item() < 1e-3
    assert (refs[True] - refs[False]).abs().max().item() > 1e-2  # the mask matters


def test_processed_bridge_equals_hf_oracle(tiny_kind):
    """`load_model(..., backend="bridge")` processes weights (the bridge's
    compatibility mode); probabilities stay those of the unprocessed HF model."""
    model = tl.load_model(f"tiny-{tiny_kind}", backend="bridge", device=DEVICE)
    assert tl.loading.weight_processing(model).fold_ln
    hf, _ = tiny_hf_model(tiny_kind)
    hf.to(DEVICE)
    for isolate in (True, False):
        run = tl.generate(model, "The cat sat", threshold=0.1, max_steps=6, isolate=isolate)
        prompt = run.layout.tokens[: run.layout.n_prompt].tolist()
        sets, probs = hf_tempo_generate(hf, prompt, 0.1, 6, isolate, model.tokenizer.eos_token_id)
        assert _sets(run) == sets
        for ours, ref in zip(run.steps, probs, strict=True):
            assert ours.probs == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("kind", ["llama3rope", "yarnrope"])
def test_bridge_oracle_scaled_rope(kind):
    """NTK-by-parts and YaRN: Hugging Face's own rotary_emb applies them to the
    position_ids; the prompt runs past the original context, where scaling matters."""
    model = tiny_model(kind, backend="bridge").to(DEVICE)
    hf, _ = tiny_hf_model(kind)
    hf.to(DEVICE)
    text = "The cat sat on the mat and then it went away to the garden where it slept"
    run = tl.generate(model, text, threshold=0.1, max_steps=10, eos_token_id=None)
    assert run.layout.n_prompt > 64 and sum(len(s) > 1 for s in run.steps) >= 3
    prompt = run.layout.tokens[: run.layout.n_prompt].tolist()
    sets, _ = hf_tempo_generate(hf, prompt, 0.1, 10, True)
    assert _sets(run) == sets


def test_bridge_branch_equivalence(bridge_pair):
    """An isolated member's logits equal an independent forward of prefix + member."""
    model, _, _ = bridge_pair
    run = tl.generate(
        model, "The cat sat", threshold=0.1, max_steps=6, eos_token_id=None, keep_logits=True
    )
    layout = run.layout
    for step in range(len(run.steps)):
        sl = layout.set_slice(step)
        before = layout.prefix(sl.start)
        for j, token in enumerate(layout.tokens[sl].tolist()):
            alone = before.append_set([token], position=int(layout.positions[sl.start]))
            ref, _ = tl.forward(model, alone, isolate=True)
            assert (run.logits[step + 1][j] - ref[0, -1].cpu()).abs().max().item() < 1e-3


# Batches ---------------------------------------------------------------------------------


def test_bridge_batched_generate_equals_single(bridge_pair):
    """Rows of a batched bridge generation (pads, rows leaving, captures including
    `hook_rot_k`, which the bridge's cache gives for the new block only) equal their
    own runs."""
    model, hf, _ = bridge_pair
    # the bridge's Llama adapter runs hook_rot_k (its NeoX adapter does not)
    llama = tl.loading.describe(model)["architecture"] == "LlamaForCausalLM"
    capture = ["pattern", "resid_post", "hook_k"] + ["hook_rot_k"] * llama
    kw = dict(threshold=0.1, max_steps=7, keep_logits=True, cache=capture)
    eos = _eos_that_splits(model, PROMPTS, threshold=0.1, max_steps=7)
    assert eos is not None
    batched = tl.generate(model, PROMPTS, eos_token_id=eos, **kw)
    alone_runs = [tl.generate(model, p, eos_token_id=eos, **kw) for p in PROMPTS]
    assert len({len(r.steps) for r in alone_runs}) >= 2  # rows leave the batch early
    for b, alone in zip(batched, alone_runs, strict=True):
        assert _sets(b) == _sets(alone) and b.stop_reason == alone.stop_reason
        for x, y in zip(b.logits, alone.logits, strict=True):
            assert x.shape == y.shape and (x - y).abs().max().item() < 1e-4
        for name, acts in alone.activations.items():
            for x, y in zip(b.activations[name], acts, strict=True):
                assert x.shape == y.shape, name
                assert (x - y).abs().max().item() < 1e-4, name
    layouts = [r.layout for r in batched]
    rows, _ = tl.forward(model, layouts, isolate=True)
    for r, logits in zip(batched, rows, strict=True):
        prompt = r.layout.tokens[: r.layout.n_prompt].tolist()
        ref = hf_tempo_logits(hf, prompt, _sets(r), True)
        assert (log_probs(logits) - log_probs(ref)).abs().max().item() < 1e-3


def test_bridge_live_pruning_equals_hf(bridge_pair):
    from tests.reference import hf_live_pruning

    model, hf, _ = bridge_pair
    kw = dict(threshold=0.08, max_steps=8, eos_token_id=None, keep_logits=True)
    run = tl.generate(model, "The cat sat", prune=0.9, **kw)
    sets = _sets(run)
    prompt = run.layout.tokens[: run.layout.n_prompt].tolist()
    expected = hf_live_pruning(hf, prompt, sets, True, 0.9)
    assert len(expected) >= 1
    assert {(p.set_step, p.member): p.step for p in run.pruned} == expected
    ref = hf_tempo_logits(hf, prompt, sets, True, pruned=expected)[0].cpu()
    assert (torch.cat(run.logits) - ref).abs().max().item() < 1e-3


# Both backends where both exist ------------------------------------------------------------


@needs_hooked
def test_bridge_runs_equal_hooked_runs(bridge_pair, tiny_kind):
    model, _, _ = bridge_pair
    hooked = tiny_model(tiny_kind, backend="hooked").to(DEVICE)
    for isolate in (True, False):
        kw = dict(threshold=0.1, max_steps=8, isolate=isolate, eos_token_id=None)
        a, b = tl.generate(model, "The cat sat", **kw), tl.generate(hooked, "The cat sat", **kw)
        assert _sets(a) == _sets(b)
        for x, y in zip(a.steps, b.steps, strict=True):
            assert x.probs == pytest.approx(y.probs, abs=1e-4)


# The two traps -------------------------------------------------------------------------------


def test_a_cache_the_bridge_would_swallow_raises(bridge_pair):
    """The bridge hands unknown keywords to Hugging Face, which ignores them: a cache of
    the wrong kind must raise before any forward, never be dropped."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    model, _, tok = bridge_pair
    layout = tl.Layout.from_sets(tok("The cat")["input_ids"], [[10, 11]])
    batch = LayoutBatch.of(layout)
    backend = BridgeBackend()
    tl_cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    for wrong in (tl_cache, {"past": None}, object()):
        with pytest.raises(tl.TempoError, match="silently ignore"):
            backend.forward(model, batch, 2, [], wrong)
    cache = backend.new_cache(model, 1)  # the right kind, but empty: 0 keys, not len - 2
    with pytest.raises(tl.TempoError, match="holds 0 keys"):
        backend.forward(model, batch, 2, [], cache)
    with pytest.raises(tl.TempoError, match="position_ids"):
        tl.position_hooks(model, layout)
    if HOOKED:
        hooked = tiny_model("llama", backend="hooked")
        with pytest.raises(tl.TempoError, match="TransformerLensKeyValueCache"):
            HookedBackend().forward(hooked, batch, 2, [], cache)


def test_no_bridge_forward_without_an_explicit_mask(bridge_pair):
    """Every call that reaches the Hugging Face model — generation (cached, recomputed,
    batched, pruned), replays single and batched — carries logical position_ids and an
    explicit 4D mask `[batch, 1, q, keys]`, so HF never guesses packed sequences."""
    model, _, _ = bridge_pair
    calls = []

    def record(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("past_key_values")
        past = int(cache.get_seq_length()) if cache is not None else 0
        mask, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
        calls.append((tuple(ids.shape), mask, pos, past))

    handle = model.original_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        kw = dict(threshold=0.1, max_steps=4, eos_token_id=None)
        run = tl.generate(model, "The cat sat", **kw)
        tl.generate(model, "The cat sat", use_kv_cache=False, **kw)
        tl.generate(model, PROMPTS, prune=0.9, **kw)
        tl.forward(model, run.layout)
        tl.forward(model, [run.layout, run.layout.prefix(5)], isolate=False)
    finally:
        handle.remove()
    assert len(calls) >= 12
    for (b, q), mask, pos, past in calls:
        assert mask is not None and mask.ndim == 4
        assert tuple(mask.shape) == (b, 1, q, past + q)
        assert pos is not None and tuple(pos.shape) == (b, q)
    # logical positions really are shared within a set (the input HF would misread)
    assert any(bool((pos[:, 1:] == pos[:, :-1]).any()) for _, _, pos, _ in calls)


# The embedded model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_bridge():
    return tl.load_model(backend="bridge")


@pytest.mark.embedded
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "visible"])
def test_embedded_bridge_generate_equals_hf_oracle(embedded_bridge, embedded_hf, isolate):
    """`generate` on the embedded SmolLM2 (processed weights, the bridge's cache) picks the
    Hugging Face oracle's sets with its probabilities; with TransformerLens 3 the
    HookedTransformer run is the same run."""
    hf, _ = embedded_hf
    kw = dict(threshold=0.1, max_steps=10, isolate=isolate)
    run = tl.generate(embedded_bridge, PROMPT, **kw)
    prompt = _prompt_ids(embedded_bridge, PROMPT)
    eos = embedded_bridge.tokenizer.eos_token_id
    sets, probs = hf_tempo_generate(hf, prompt, eos_token_id=eos, **kw)
    assert _sets(run) == sets
    assert sum(len(s) > 1 for s in sets) >= 3
    for ours, ref in zip(run.steps, probs, strict=True):
        assert ours.probs == pytest.approx(ref, abs=1e-3)
    recomputed = tl.generate(embedded_bridge, PROMPT, use_kv_cache=False, **kw)
    assert _sets(recomputed) == sets
    if HOOKED:
        hooked = tl.generate(tl.load_model(backend="hooked"), PROMPT, **kw)
        assert _sets(hooked) == _sets(run)
        for x, y in zip(hooked.steps, run.steps, strict=True):
            assert x.probs == pytest.approx(y.probs, abs=1e-3)


def test_capturing_a_hook_the_bridge_never_runs_raises():
    """The bridge's NeoX adapter lists `hook_rot_k` but never calls it: asking for it is
    a TempoError, not a missing capture."""
    model = tiny_model("neox", backend="bridge")
    with pytest.raises(tl.TempoError, match="did not run"):
        tl.generate(model, "The cat", max_steps=2, cache=["hook_rot_k"])
