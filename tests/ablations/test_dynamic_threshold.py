"""Dynamic threshold schedules (values at known t, recorded in the run) and retroactive
pruning (the rule on a hand-built attention matrix, marks kept with a saved run)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import tempo_lens as tl
from tempo_lens.analysis import ablations as ab
from tempo_lens.hooks import pruning_hooks
from tempo_lens.testing import tiny_model


def _hand_layout():
    # prompt [5, 6], set 0 = [7, 8, 9], set 1 = [10], set 2 = [11, 12]
    return tl.Layout.from_sets([5, 6], [[7, 8, 9], [10], [11, 12]])


def test_threshold_schedules_at_known_t():
    bez = ab.bezier_threshold(p1=0.2, p2=0.8, final=1.0, base=0.1)
    assert bez(0, 10) == pytest.approx(0.1)
    assert bez(5, 10) == pytest.approx(0.1 + 0.9 * 0.5)  # 3·¼·½·0.2 + 3·½·¼·0.8 + ⅛ = ½
    assert bez(10, 10) == pytest.approx(1.0)
    assert bez(2, 10) == pytest.approx(
        0.1 + 0.9 * (3 * 0.64 * 0.2 * 0.2 + 3 * 0.8 * 0.04 * 0.8 + 0.008)
    )
    relu = ab.relu_threshold(activation=0.5, final=1.0, base=0.1)
    assert relu(2, 8) == pytest.approx(0.1) and relu(4, 8) == pytest.approx(0.1)
    assert relu(6, 8) == pytest.approx(0.55) and relu(8, 8) == pytest.approx(1.0)
    assert json.loads(json.dumps(bez.spec)) == {
        "schedule": "bezier",
        "base": 0.1,
        "final": 1.0,
        "p1": 0.2,
        "p2": 0.8,
    }
    assert ab.threshold_from_spec(relu.spec) == relu
    with pytest.raises(tl.TempoError, match="final"):
        ab.bezier_threshold(final=1.5)
    with pytest.raises(tl.TempoError, match="schedule"):
        ab.threshold_from_spec({"schedule": "cosine"})


def test_schedule_drives_generation_and_is_recorded(tmp_path):
    model = tiny_model("llama")
    relu = ab.relu_threshold(activation=0.5, final=1.0, base=0.05)
    run = tl.generate(model, "The cat sat", threshold=relu, max_steps=8, eos_token_id=None)
    assert run.config.threshold == relu
    for s, ps in enumerate(run.steps):  # each set obeys the threshold of its step
        thr = relu(s, 8)
        assert all(p >= thr for p in ps.probs) or len(ps) == 1
    assert all(len(ps) == 1 for ps in run.steps[-2:])  # thresholds near 1 → top-1 fallback
    assert tl.load_run(run.save(tmp_path / "r")).config.threshold == relu.spec


def test_pruning_rule_on_hand_built_attention():
    layout = _hand_layout()
    attn = torch.zeros(8, 8)
    attn[5, :5] = torch.tensor([0.1, 0.1, 0.4, 0.35, 0.05])  # token 10 reads set 0
    attn[6, :7] = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.0, 0.2, 0.1])
    attn[7, :6] = torch.tensor([0.1, 0.1, 0.4, 0.3, 0.0, 0.1])
    res = ab.prune_by_attention(layout, attn, ratio=0.5)
    # set 0 scores: mean over queries 5, 6, 7 → (1/3, 0.95/3, 0.05/3); set mean 0.7/3
    assert res.scores[2:5].tolist() == pytest.approx([1 / 3, 0.95 / 3, 0.05 / 3])
    assert res.pruned.tolist() == [False, False, False, False, True, False, False, False]
    assert torch.isnan(res.scores[[0, 1, 5, 6, 7]]).all()  # prompt, single set, last set
    assert ab.prune_by_attention(layout, attn, ratio=0.05).pruned.sum() == 0  # 0.05·0.7/3 < 0.05/3


def test_retroactive_prune_marks_run(tmp_path):
    model = tiny_model("llama")
    run = tl.generate(model, "The cat sat", threshold=0.05, max_steps=6, eos_token_id=None)
    res = ab.retroactive_prune(model, run, ratio=0.9)
    assert res.pruned.any()  # a high ratio prunes something on this run
    scored = ~torch.isnan(res.scores)
    assert not (res.pruned & ~scored).any()
    marked = ab.mark_pruned(run, res)
    assert len(marked.layout) == len(run.layout)  # nothing removed
    assert "retroactive_pruning" not in run.notes
    loaded = tl.load_run(marked.save(tmp_path / "m"))
    info = loaded.notes["retroactive_pruning"]
    assert len(info["pruned"]) == int(res.pruned.sum())
    assert info["marked_text"].count("~") == 2 * int(res.pruned.sum())
    # hiding the pruned members: no later token attends to them any more
    hooks = pruning_hooks(run.layout, res.pruned)
    _, cache = tl.forward(model, run.layout, isolate=True, fwd_hooks=hooks, cache=["hook_pattern"])
    later = run.layout.step[:, None] > run.layout.step[None, :]
    pattern = cache["blocks.0.attn.hook_pattern"][0]
    assert pattern[:, later & res.pruned[None, :]].abs().max() == 0


def test_result_structures():
    model = tiny_model("llama")
    schedules = [ab.bezier_threshold(base=0.05), ab.relu_threshold(base=0.05)]
    res = ab.dynamic_threshold(model, ["The cat sat", "Once upon"], schedules, max_steps=5)
    s = json.loads(json.dumps(res.summary()))
    assert list(s) == ["0: bezier", "1: relu"]
    one = s["0: bezier"]
    assert one["spec"] == schedules[0].spec and len(one["thresholds"]) == 5
    assert one["thresholds"][0] == pytest.approx(0.05) and len(one["mean_set_size"]) == 5
    assert 0 <= one["pruned_members"] <= one["scored_members"]
    assert isinstance(res.plot(), Figure)
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame) and set(df["schedule"]) == {"0: bezier", "1: relu"}
    assert len(df) == sum(len(r) for sizes in res.set_sizes for r in sizes)
