"""Batches: every row of a batched generate or forward equals its own batch-1 run (same
sets, logits within 1e-4, captures without pads), and a batched replay equals the
independent Hugging Face reference row by row."""

from __future__ import annotations

import pytest
import torch

import tempo_lens as tl
from tests.reference import hf_tempo_logits

PROMPTS = ["The cat sat", "A", "Hello there, my old friend", "xyz q"]
CAPTURE = ["pattern", "resid_post", "hook_k"]


def _sets(run):
    return [s.tokens for s in run.steps]


def _check_same(batched, alone, tol=1e-4):
    assert _sets(batched) == _sets(alone)
    assert batched.stop_reason == alone.stop_reason
    assert torch.equal(batched.layout.tokens, alone.layout.tokens)
    assert torch.equal(batched.layout.positions, alone.layout.positions)
    assert batched.token_strs == alone.token_strs
    for s_b, s_a in zip(batched.steps, alone.steps, strict=True):
        assert s_b.probs == pytest.approx(s_a.probs, abs=1e-5)
    assert len(batched.logits) == len(alone.logits)
    for x, y in zip(batched.logits, alone.logits, strict=True):
        assert x.shape == y.shape
        assert (x - y).abs().max().item() < tol
    assert set(batched.activations) == set(alone.activations)
    for name, acts in alone.activations.items():
        assert len(batched.activations[name]) == len(acts)
        for x, y in zip(batched.activations[name], acts, strict=True):
            assert x.shape == y.shape, name
            assert (x - y).abs().max().item() < tol, name


def _eos_that_splits(model, prompts, **kw):
    """A token id that makes the rows stop at different steps (EOS on some, not all)."""
    runs = [tl.generate(model, p, eos_token_id=None, **kw) for p in prompts]
    for run in runs:
        for s in run.steps[1:-1]:
            eos = s.tokens[0]
            stops = [
                next((i for i, t in enumerate(r.steps) if t.tokens[0] == eos), None) for r in runs
            ]
            if len(set(stops)) >= 3:
                return eos
    return None


@pytest.mark.parametrize("isolate", [True, False])
def test_batched_generate_equals_single(tiny_pair, isolate):
    model, _, _ = tiny_pair
    kw = dict(threshold=0.1, max_steps=7, isolate=isolate)
    eos = _eos_that_splits(model, PROMPTS, **kw)
    assert eos is not None
    rotary = model.cfg.positional_embedding_type == "rotary"
    kw |= dict(eos_token_id=eos, keep_logits=True, cache=CAPTURE + ["hook_rot_k"] * rotary)
    batched = tl.generate(model, PROMPTS, **kw)
    alone = [tl.generate(model, p, **kw) for p in PROMPTS]
    assert len({len(r.steps) for r in alone}) >= 2  # rows stop at different steps
    assert len({r.stop_reason for r in alone}) == 2  # some by EOS, some by max_steps
    sizes = [[len(s) for s in r.steps] for r in alone]
    assert any(len(set(col)) > 1 for col in zip(*sizes, strict=False))  # mixed set sizes
    for b, a in zip(batched, alone, strict=True):
        _check_same(b, a)


def test_batched_generate_without_kv_cache_and_token_prompts(tiny_pair):
    model, _, _ = tiny_pair
    prompts = [[1, 40, 41, 42], [1, 50], [1, 60, 61, 62, 63, 64, 65]]
    kw = dict(threshold=0.1, max_steps=5, eos_token_id=None, keep_logits=True)
    batched = tl.generate(model, prompts, use_kv_cache=False, cache=["pattern"], **kw)
    for b, p in zip(batched, prompts, strict=True):
        _check_same(b, tl.generate(model, p, use_kv_cache=False, cache=["pattern"], **kw))
        _check_same(b, tl.generate(model, p, cache=["pattern"], **kw))


def test_batched_generate_max_parallel_and_next_from(tiny_pair):
    model, _, _ = tiny_pair
    for next_from in ("last", "first"):
        kw = dict(threshold=0.05, max_steps=5, max_parallel=3, next_from=next_from)
        kw |= dict(eos_token_id=None, keep_logits=True)
        batched = tl.generate(model, PROMPTS[:3], **kw)
        for b, p in zip(batched, PROMPTS[:3], strict=True):
            _check_same(b, tl.generate(model, p, **kw))


def test_single_prompt_returns_one_run_list_returns_list(tiny_pair):
    model, _, _ = tiny_pair
    one = tl.generate(model, "The cat", max_steps=2)
    assert isinstance(one, tl.TempoRun)
    many = tl.generate(model, ["The cat"], max_steps=2)
    assert isinstance(many, list) and len(many) == 1
    assert _sets(many[0]) == _sets(one)


def test_batched_forward_equals_single_replays(tiny_pair):
    model, hf, _ = tiny_pair
    runs = tl.generate(model, PROMPTS, threshold=0.1, max_steps=5, eos_token_id=None)
    layouts = [r.layout for r in runs]
    assert len({len(lay) for lay in layouts}) >= 3
    for isolate in (True, False):
        logits, caches = tl.forward(model, layouts, isolate=isolate, cache=["pattern", "resid_pre"])
        assert len(logits) == len(caches) == len(layouts)
        for run, lay, x, c in zip(runs, layouts, logits, caches, strict=True):
            y, cy = tl.forward(model, lay, isolate=isolate, cache=["pattern", "resid_pre"])
            assert x.shape == y.shape == (1, len(lay), model.cfg.d_vocab)
            assert (x - y).abs().max().item() < 1e-4
            for name in cy:
                assert c[name].shape == cy[name].shape
                assert (c[name] - cy[name]).abs().max().item() < 1e-4
            prompt = lay.tokens[: lay.n_prompt].tolist()
            ref = hf_tempo_logits(hf, prompt, _sets(run), isolate)
            assert (x - ref).abs().max().item() < 1e-3


def test_batched_forward_splits_under_its_memory_budget(tiny_pair):
    from tempo_lens.generate import replay_rows

    model, _, _ = tiny_pair
    runs = tl.generate(model, PROMPTS, threshold=0.1, max_steps=5, eos_token_id=None)
    layouts = [r.layout for r in runs]
    longest = max(len(lay) for lay in layouts)
    budget = 4 * (longest * model.cfg.d_vocab + model.cfg.n_heads * longest**2) * 2 + 64
    budget += 4 * 4 * longest * max(model.cfg.d_model, model.cfg.d_mlp or 0) * 2
    assert replay_rows(model, longest, None, budget) == 2 < len(layouts)  # the budget splits
    whole, _ = tl.forward(model, layouts, isolate=True)
    split, caches = tl.forward(model, layouts, isolate=True, cache=["pattern"], memory_budget=1)
    assert len(split) == len(caches) == len(layouts)  # a budget under one row: one per forward
    for a, b in zip(whole, split, strict=True):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-5
    halves, _ = tl.forward(model, layouts, isolate=True, memory_budget=budget)
    for a, b in zip(whole, halves, strict=True):
        assert (a - b).abs().max().item() < 1e-5


def test_batched_forward_fractional_and_gapped_positions(tiny_pair):
    model, _, _ = tiny_pair
    if model.cfg.positional_embedding_type != "rotary":
        pytest.skip("fractional positions need rotary")
    a = tl.Layout.from_sets([1, 40, 41], [[50, 51], [52]])
    b = tl.Layout(a.tokens[:4], a.positions[:4].double() + 0.5, a.step[:4])
    logits, _ = tl.forward(model, [a, b])
    for lay, x in zip([a, b], logits, strict=True):
        assert (x - tl.forward(model, lay)[0]).abs().max().item() < 1e-4


@pytest.mark.embedded
def test_batched_generate_equals_single_embedded(embedded):
    prompts = ["The cat sat on the", "Once upon a time", "Paris is the capital of"]
    kw = dict(threshold=0.1, max_steps=6, keep_logits=True)
    batched = tl.generate(embedded, prompts, **kw)
    for b, p in zip(batched, prompts, strict=True):
        _check_same(b, tl.generate(embedded, p, **kw))


# Live retroactive pruning ---------------------------------------------------------------


def _pruned_map(run):
    return {(p.set_step, p.member): p.step for p in run.pruned}


@pytest.mark.parametrize("isolate", [True, False])
def test_live_pruning_matches_hf(tiny_pair, isolate):
    from tests.reference import hf_live_pruning

    model, hf, _ = tiny_pair
    kw = dict(threshold=0.08, max_steps=8, eos_token_id=None, isolate=isolate, keep_logits=True)
    run = tl.generate(model, "The cat sat", prune=0.9, **kw)
    sets = _sets(run)
    prompt = run.layout.tokens[: run.layout.n_prompt].tolist()
    expected = hf_live_pruning(hf, prompt, sets, isolate, 0.9)
    assert len(expected) >= 1  # the test must prune something
    assert _pruned_map(run) == expected
    ours = torch.cat(run.logits)
    ref = hf_tempo_logits(hf, prompt, sets, isolate, pruned=expected)[0].cpu()
    assert (ours - ref).abs().max().item() < 1e-3
    unpruned = hf_tempo_logits(hf, prompt, sets, isolate)[0].cpu()
    assert (unpruned - ref).abs().max().item() > 1e-3  # pruning changed what later sets read
    # the bracket text marks pruned members; the record survives save/load
    assert "~" in run.text()


def test_live_pruning_batched_equals_single_and_round_trips(tiny_pair, tmp_path):
    model, _, _ = tiny_pair
    kw = dict(threshold=0.08, max_steps=6, eos_token_id=None, keep_logits=True, prune=0.9)
    batched = tl.generate(model, PROMPTS, **kw)
    assert any(r.pruned for r in batched)
    for b, p in zip(batched, PROMPTS, strict=True):
        a = tl.generate(model, p, **kw)
        _check_same(b, a)
        assert _pruned_map(b) == _pruned_map(a)
        assert [p.score for p in b.pruned] == pytest.approx([p.score for p in a.pruned], abs=1e-5)
    loaded = tl.load_run(batched[0].save(tmp_path / "run"))
    assert loaded.pruned == batched[0].pruned
    assert loaded.text() == batched[0].text()
    assert loaded.config.prune == 0.9
    # the bracket text strikes a pruned member `~tok~`, the HTML report <s>tok</s>
    from tempo_lens.viz.report import bracket_html

    run = next(r for r in batched if r.pruned)
    cut = run.pruned[0]
    member = run.bracket_parts()[cut.set_step][1][cut.member]
    assert member.startswith("~") and member.endswith("~") and member in run.text()
    html = bracket_html(run)
    assert html.count('<s class="pruned"') == len(run.pruned)
    assert f"pruned after step {cut.step}" in html


# Batched drivers --------------------------------------------------------------------------


def test_generate_unit_batches_and_keeps_order(tiny_pair):
    from tempo_lens.analysis.experiments.runs import RunOptions, RunSpec, generate_unit

    model, _, _ = tiny_pair
    specs = [
        RunSpec(f"p{i}", "c", text, mode, 0.1, "mixture")
        for i, text in enumerate(PROMPTS)
        for mode in ("isolated", "visible")
    ]
    options = RunOptions(max_steps=4, max_parallel=None, eos_token_id=None, memory_budget=1)
    runs = generate_unit(model, specs, options)  # a budget of 1 byte: one row per batch
    big = generate_unit(model, specs, RunOptions(max_steps=4, max_parallel=None, eos_token_id=None))
    for spec, a, b in zip(specs, runs, big, strict=True):
        alone = tl.generate(
            model, spec.prompt, threshold=0.1, max_steps=4, isolate=spec.isolate, eos_token_id=None
        )
        assert _sets(a) == _sets(b) == _sets(alone)
        assert a.prompt == spec.prompt and a.config.isolate == spec.isolate
