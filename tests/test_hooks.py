"""The masks built on `mask_hooks`: sibling windows, isolate-always, pruning and
per-row bias schedules, at their ends and on a hand-built layout."""

from __future__ import annotations

import math

import pytest
import torch

import tempo_lens as tl
from tempo_lens.hooks import (
    branch_hidden,
    later_hidden,
    pruning_hooks,
    same_set_bias_hooks,
    sibling_window_hidden,
    sibling_window_hooks,
)
from tempo_lens.testing import tiny_model


@pytest.fixture(scope="module")
def case():
    model = tiny_model("llama")
    run = tl.generate(model, "The cat sat", threshold=0.1, max_steps=6, eos_token_id=None)
    assert run.layout.same_set().any()
    return model, run


def _hand_layout():
    # prompt [5, 6], set 0 = [7, 8, 9], set 1 = [10], set 2 = [11, 12]
    return tl.Layout.from_sets([5, 6], [[7, 8, 9], [10], [11, 12]])


def test_hidden_matrices_on_hand_built_layout():
    layout = _hand_layout()
    # later tokens (10, 11, 12 at indices 5, 6, 7) no longer see members 8, 9 (3, 4)
    assert branch_hidden(layout).nonzero().tolist() == [
        [5, 3],
        [5, 4],
        [6, 3],
        [6, 4],
        [7, 3],
        [7, 4],
    ]
    assert sibling_window_hidden(layout, 1).nonzero().tolist() == [[2, 4], [4, 2]]
    keys = torch.zeros(8, dtype=torch.bool)
    keys[3] = True
    assert later_hidden(layout, keys).nonzero().tolist() == [[5, 3], [6, 3], [7, 3]]
    with pytest.raises(tl.TempoError, match="window"):
        sibling_window_hidden(layout, -1)


def test_sibling_window_ends(case):
    model, run = case
    iso = tl.forward(model, run.layout, isolate=True)[0]
    vis = tl.forward(model, run.layout, isolate=False)[0]
    largest = max(len(s) for s in run.steps)
    win0 = sibling_window_hooks(run.layout, 0)
    wide = sibling_window_hooks(run.layout, largest)
    assert torch.equal(tl.forward(model, run.layout, isolate=False, fwd_hooks=win0)[0], iso)
    assert torch.equal(tl.forward(model, run.layout, isolate=False, fwd_hooks=wide)[0], vis)


def test_bias_schedule_rows_equal_isolation_hooks(case):
    model, run = case
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    bias = torch.zeros(2, n_layers, n_heads, dtype=torch.float64)
    bias[1, 0] = -math.inf  # row 1: isolated at layer 0 only
    layout = tl.layout.LayoutBatch.of([run.layout, run.layout])
    hooks = same_set_bias_hooks(layout, bias)
    both = [x[0] for x in tl.forward(model, [run.layout] * 2, isolate=False, fwd_hooks=hooks)[0]]
    vis = tl.forward(model, run.layout, isolate=False)[0][0]
    layer0 = tl.forward(
        model, run.layout, isolate=False, fwd_hooks=tl.isolation_hooks(run.layout, layers=[0])
    )[0][0]
    assert torch.allclose(both[0], vis, atol=1e-5) and torch.allclose(both[1], layer0, atol=1e-5)


def test_pruning_hooks_hide_pruned_keys_from_later_sets(case):
    model, run = case
    pruned = torch.zeros(len(run.layout), dtype=torch.bool)
    pruned[run.layout.set_slice(0).start + 1] = True
    hooks = pruning_hooks(run.layout, pruned)
    _, cache = tl.forward(model, run.layout, isolate=True, fwd_hooks=hooks, cache=["hook_pattern"])
    later = run.layout.step[:, None] > run.layout.step[None, :]
    pattern = cache["blocks.0.attn.hook_pattern"][0]
    assert pattern[:, later & pruned[None, :]].abs().max() == 0
