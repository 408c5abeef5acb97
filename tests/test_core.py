"""The core issue's "done when" list: greedy identity, the Hugging Face oracle, branch
equivalence, cache equivalence, modes differ where they must, capture."""

from __future__ import annotations

import pytest
import torch

import tempo_lens as tl
from tempo_lens.analysis.metrics import kl
from tests.reference import hf_tempo_logits, log_probs

PROMPT = "The cat sat on the"


def _sets(run):
    return [s.tokens for s in run.steps]


def _tiny_run(model, isolate=True, **kw):
    kw = {"threshold": 0.1, "max_steps": 8, "eos_token_id": None} | kw
    return tl.generate(model, "The cat sat", isolate=isolate, **kw)


# 1. Greedy identity --------------------------------------------------------------------


def _tl_greedy(model, prompt, n):
    tokens = model.to_tokens(prompt, prepend_bos=model.cfg.default_prepend_bos)
    out = model.generate(
        tokens,
        max_new_tokens=n,
        do_sample=False,
        stop_at_eos=False,
        verbose=False,
        use_past_kv_cache=True,
    )
    return out[0, tokens.shape[1] :].tolist()


def test_greedy_identity_tiny(tiny_pair):
    model, _, _ = tiny_pair
    run = tl.generate(model, "The cat sat", threshold=1.0, max_steps=12, eos_token_id=None)
    assert all(len(s) == 1 for s in run.steps)
    assert [s.tokens[0] for s in run.steps] == _tl_greedy(model, "The cat sat", 12)


@pytest.mark.embedded
def test_greedy_identity_embedded(embedded):
    run = tl.generate(embedded, PROMPT, threshold=1.0, max_steps=12, eos_token_id=None)
    assert [s.tokens[0] for s in run.steps] == _tl_greedy(embedded, PROMPT, 12)


# 2. Independent oracle -----------------------------------------------------------------


def _check_oracle(model, hf, run, tol):
    prompt = run.layout.tokens[: run.layout.n_prompt].tolist()
    refs = {}
    for isolate in (True, False):
        ours, _ = tl.forward(model, run.layout, isolate=isolate)
        refs[isolate] = hf_tempo_logits(hf, prompt, _sets(run), isolate)
        assert (log_probs(ours) - log_probs(refs[isolate])).abs().max().item() < tol
    # the reference itself must see the mask: otherwise this test proves nothing
    assert (refs[True] - refs[False]).abs().max().item() > 1e-2


def test_oracle_tiny(tiny_pair):
    model, hf, _ = tiny_pair
    run = _tiny_run(model)
    assert sum(len(s) > 1 for s in run.steps) >= 3
    _check_oracle(model, hf, run, 1e-3)


@pytest.mark.embedded
def test_oracle_embedded(embedded, embedded_hf):
    hf, _ = embedded_hf
    run = tl.generate(embedded, PROMPT, threshold=0.1, max_steps=10)
    assert sum(len(s) > 1 for s in run.steps) >= 3
    _check_oracle(embedded, hf, run, 1e-3)


# 3. Branch equivalence -----------------------------------------------------------------


def _check_branches(model, run, tol):
    layout = run.layout
    for step in range(len(run.steps)):
        sl = layout.set_slice(step)
        rows = run.logits[step + 1]  # forward 0 is the prompt
        before = layout.prefix(sl.start)
        for j, token in enumerate(layout.tokens[sl].tolist()):
            alone = before.append_set([token], position=int(layout.positions[sl.start]))
            ref, _ = tl.forward(model, alone, isolate=True)
            assert (rows[j] - ref[0, -1].cpu()).abs().max().item() < tol


def test_branch_equivalence_tiny(tiny_pair):
    model, _, _ = tiny_pair
    run = _tiny_run(model, keep_logits=True)
    _check_branches(model, run, 1e-3)


@pytest.mark.embedded
def test_branch_equivalence_embedded(embedded):
    run = tl.generate(embedded, PROMPT, threshold=0.1, max_steps=6, keep_logits=True)
    assert max(len(s) for s in run.steps) >= 2
    _check_branches(embedded, run, 1e-3)


# 4. Cache equivalence ------------------------------------------------------------------


def _check_cache(model, prompt, tol, **kw):
    for isolate in (True, False):
        a = tl.generate(model, prompt, isolate=isolate, keep_logits=True, **kw)
        b = tl.generate(model, prompt, isolate=isolate, keep_logits=True, use_kv_cache=False, **kw)
        assert _sets(a) == _sets(b)
        assert len(a.logits) == len(b.logits)
        for x, y in zip(a.logits, b.logits, strict=True):
            assert (x - y).abs().max().item() < tol


def test_cache_equivalence_tiny(tiny_pair):
    model, _, _ = tiny_pair
    _check_cache(model, "The cat sat", 1e-4, threshold=0.1, max_steps=8, eos_token_id=None)


@pytest.mark.embedded
def test_cache_equivalence_embedded(embedded):
    _check_cache(embedded, PROMPT, 1e-4, threshold=0.1, max_steps=8)


# 5. Modes differ where they must -------------------------------------------------------


def test_modes_differ_on_multi_member_sets(tiny_pair):
    model, _, tok = tiny_pair
    prompt = tok("The cat sat")["input_ids"]
    layout = tl.Layout.from_sets(prompt, [[10, 11, 12], [13], [14, 15]])
    iso, _ = tl.forward(model, layout, isolate=True)
    vis, _ = tl.forward(model, layout, isolate=False)
    first = layout.set_slice(0)
    # the first member sees no sibling either way; later members do differ
    assert torch.equal(iso[0, first.start], vis[0, first.start])
    assert kl(iso[0, first.start + 1], vis[0, first.start + 1]).item() > 1e-4
    assert kl(iso[0, -1], vis[0, -1]).item() > 1e-4


def test_modes_identical_on_single_member_sets(tiny_pair):
    model, _, tok = tiny_pair
    prompt = tok("The cat sat")["input_ids"]
    layout = tl.Layout.from_sets(prompt, [[10], [13], [14]])
    iso, _ = tl.forward(model, layout, isolate=True)
    vis, _ = tl.forward(model, layout, isolate=False)
    assert torch.equal(iso, vis)


@pytest.mark.embedded
def test_modes_differ_embedded(embedded):
    run = tl.generate(embedded, PROMPT, threshold=0.1, max_steps=6)
    iso, _ = tl.forward(embedded, run.layout, isolate=True)
    vis, _ = tl.forward(embedded, run.layout, isolate=False)
    multi = [i for i, s in enumerate(run.steps) if len(s) > 1]
    sl = run.layout.set_slice(multi[0])
    assert kl(iso[0, sl.stop - 1], vis[0, sl.stop - 1]).item() > 1e-6


# 6. Capture ----------------------------------------------------------------------------


@pytest.mark.parametrize("isolate", [True, False])
def test_capture_patterns_cover_every_member(tiny_pair, isolate):
    model, _, _ = tiny_pair
    run = _tiny_run(model, isolate=isolate, cache=["hook_pattern"])
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    assert sorted(run.activations) == sorted(names)
    layout = run.layout
    same_set_mass = 0.0
    for name in names:
        acts = run.activations[name]
        assert len(acts) == len(run.steps) + 1  # prompt forward + one per step
        assert acts[0].shape == (model.cfg.n_heads, layout.n_prompt, layout.n_prompt)
        for step in range(len(run.steps)):
            sl = layout.set_slice(step)
            pattern = acts[step + 1]
            k = sl.stop - sl.start
            assert pattern.shape == (model.cfg.n_heads, k, sl.stop)  # a row per member
            block = pattern[:, :, sl.start : sl.stop]
            off_diagonal = block[:, ~torch.eye(k, dtype=torch.bool)]
            if isolate:
                assert torch.all(off_diagonal == 0)
            same_set_mass += off_diagonal.sum().item()
    if not isolate:
        assert same_set_mass > 0


def test_capture_matches_replay(tiny_pair):
    """Per-step captured patterns equal the rows of a one-pass replay of the layout."""
    model, _, _ = tiny_pair
    run = _tiny_run(model, cache=["blocks.0.attn.hook_pattern"])
    _, cache = tl.forward(model, run.layout, isolate=True, cache=["blocks.0.attn.hook_pattern"])
    full = cache["blocks.0.attn.hook_pattern"][0].cpu()
    for step in range(len(run.steps)):
        sl = run.layout.set_slice(step)
        got = run.activations["blocks.0.attn.hook_pattern"][step + 1]
        assert (got - full[:, sl, : sl.stop]).abs().max().item() < 1e-5


# Selection rule --------------------------------------------------------------------------


def test_select_rule():
    probs = torch.tensor([0.05, 0.3, 0.1, 0.5, 0.05])
    assert tl.select(probs, 0.1) == ([3, 1, 2], pytest.approx([0.5, 0.3, 0.1]))
    assert tl.select(probs, 0.1, max_parallel=2)[0] == [3, 1]
    assert tl.select(probs, 0.9)[0] == [3]  # none passes: top-1
    assert tl.select(probs, 0.1, eos_token_id=1)[0] == [3, 2]  # lower-ranked EOS dropped
    assert tl.select(probs, 0.1, eos_token_id=3)[0] == [3, 1, 2]  # top EOS stays


def test_next_from_variants():
    from tempo_lens.generate import next_distribution

    rows = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    first = next_distribution(rows, [0.75, 0.25], "first")
    last = next_distribution(rows, [0.75, 0.25], "last")
    mix = next_distribution(rows, [0.75, 0.25], "mixture")
    assert torch.allclose(mix, 0.75 * first + 0.25 * last)
    assert first[0] > first[1] and last[1] > last[0]


def test_eos_stops_and_n_ctx_stops(tiny_pair):
    model, _, tok = tiny_pair
    greedy = _tl_greedy(model, "The cat sat", 10)
    first_new = next(i for i, t in enumerate(greedy) if t not in greedy[:i] and i > 0)
    run = tl.generate(
        model, "The cat sat", threshold=1.0, max_steps=30, eos_token_id=greedy[first_new]
    )
    assert run.stop_reason == "eos" and len(run.steps) == first_new + 1
    long_prompt = "x" * (model.cfg.n_ctx - 3)
    run = tl.generate(model, long_prompt, threshold=0.05, max_steps=50, eos_token_id=None)
    assert run.stop_reason == "n_ctx"
    assert len(run.layout) <= model.cfg.n_ctx


# Layout and positions --------------------------------------------------------------------


def test_layout_positions_shared():
    layout = tl.Layout.from_sets([5, 6, 7], [[1, 2], [3], [4, 8, 9]])
    assert layout.positions.tolist() == [0, 1, 2, 3, 3, 4, 5, 5, 5]
    assert layout.step.tolist() == [-1, -1, -1, 0, 0, 1, 2, 2, 2]
    assert layout.set_slice(2) == slice(6, 9)
    mask = layout.attention_mask(isolate=True)
    assert not mask[4, 3] and mask[5, 3] and mask[5, 4] and not mask[8, 6] and mask[8, 8]


def test_shared_position_changes_logits(tiny_pair):
    """Positions reach the model: the same tokens at sequential positions give other logits."""
    model, _, tok = tiny_pair
    prompt = tok("The cat")["input_ids"]
    shared = tl.Layout.from_sets(prompt, [[10, 11]])
    sequential = tl.Layout(shared.tokens, torch.arange(len(shared)), shared.step)
    a, _ = tl.forward(model, shared, isolate=False)
    b, _ = tl.forward(model, sequential, isolate=False)
    assert (a[0, -1] - b[0, -1]).abs().max().item() > 1e-3
    assert torch.equal(a[0, :-1], b[0, :-1])


def test_head_and_layer_schedules(tiny_pair):
    model, _, tok = tiny_pair
    layout = tl.Layout.from_sets(tok("The cat")["input_ids"], [[10, 11, 12]])
    full, _ = tl.forward(model, layout, isolate=True)
    vis, _ = tl.forward(model, layout, isolate=False)
    all_layers = tl.isolation_hooks(layout, layers=range(model.cfg.n_layers))
    by_list, _ = tl.forward(model, layout, isolate=False, fwd_hooks=all_layers)
    assert torch.equal(by_list, full)
    heads = tl.isolation_hooks(layout, heads={0: [0, 1]})
    partial, _ = tl.forward(model, layout, isolate=False, fwd_hooks=heads)
    assert not torch.equal(partial, full) and not torch.equal(partial, vis)


@pytest.mark.parametrize("kind", ["llama3rope", "yarnrope"])
def test_oracle_scaled_rope(kind):
    """NTK-by-parts (Llama 3, the seeds' model family) and YaRN frequencies stay exact:
    the position hook reads them off TL's own tables. The prompt runs past the original
    context length, where the scaling matters."""
    from tempo_lens.testing import tiny_hf_model, tiny_model
    from tests.conftest import DEVICE

    model, (hf, _) = tiny_model(kind).to(DEVICE), tiny_hf_model(kind)
    hf.to(DEVICE)
    long_prompt = "The cat sat on the mat and then it went away to the garden where it slept"
    run = tl.generate(model, long_prompt, threshold=0.1, max_steps=10, eos_token_id=None)
    assert run.layout.n_prompt > 64 and sum(len(s) > 1 for s in run.steps) >= 3
    _check_oracle(model, hf, run, 1e-3)


def test_hook_lists_compose_with_plain_run_with_hooks(tiny_pair):
    """The documented recipe: position + isolation hooks on TL's own run_with_hooks."""
    model, _, tok = tiny_pair
    layout = tl.Layout.from_sets(tok("The cat")["input_ids"], [[10, 11, 12], [13, 14]])
    hooks = tl.position_hooks(model, layout) + tl.isolation_hooks(layout)
    plain = model.run_with_hooks(layout.tokens[None].to(model.cfg.device), fwd_hooks=hooks)
    ours, _ = tl.forward(model, layout, isolate=True)
    assert torch.equal(plain, ours)


# Per-step hooks ----------------------------------------------------------------------------


def test_step_hooks_run_once_per_forward_and_only_there(tiny_pair):
    """`step_hooks(step)` is asked once per forward (0 = the prompt's); an intervention
    returned for one step changes that step's set onward and nothing before it; the
    provenance names it."""
    model, _, _ = tiny_pair
    plain = _tiny_run(model)
    asked = []

    def record(step):
        asked.append(step)
        return []

    assert _sets(_tiny_run(model, step_hooks=record)) == _sets(plain)
    assert asked == list(range(len(plain.steps)))  # the last set is never read back

    def boost_eos_at_3(act, hook):  # push every query of that forward towards token 5
        return act + 50.0 * model.W_U[:, 5]

    def at_three(step):
        return [("ln_final.hook_normalized", boost_eos_at_3)] if step == 3 else []

    run = _tiny_run(model, step_hooks=at_three)
    assert _sets(run)[:3] == _sets(plain)[:3]
    assert run.steps[3].tokens[0] == 5 != plain.steps[3].tokens[0]
    assert [h.hook for h in run.provenance.fwd_hooks] == ["ln_final.hook_normalized"]


def test_capture_is_a_step_hook(tiny_pair):
    """What `cache=` captures equals what a user's own per-step saving hook sees."""
    model, _, _ = tiny_pair
    name = "blocks.1.hook_resid_post"
    seen = []

    def save_at(step):
        return [(name, lambda act, hook: seen.append(act.detach().clone()))]

    run = _tiny_run(model, cache=[name], step_hooks=save_at)
    assert len(seen) == len(run.activations[name])
    for mine, got in zip(seen, run.activations[name], strict=True):
        assert torch.equal(mine[0], got)
