"""Ablations on the tiny models: the ends of every sweep are the isolated and visible
modes exactly, the rules are the documented ones, every script runs."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch

import tempo_lens as tl
from tempo_lens.analysis import ablations as ab
from tempo_lens.testing import tiny_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "experiments" / "ablations").glob("*.py"))


@pytest.fixture(scope="module")
def case(tiny_kind):
    """(model, run with multi-member sets) for one tiny kind."""
    model = tiny_model(tiny_kind)
    run = tl.generate(model, "The cat sat", threshold=0.1, max_steps=6, eos_token_id=None)
    assert run.layout.same_set().any()  # isolation must matter in this case
    return model, run


def _modes(model, layout):
    iso = tl.forward(model, layout, isolate=True)[0]
    vis = tl.forward(model, layout, isolate=False)[0]
    assert (iso - vis).abs().max() > 1e-2
    return iso, vis


def test_isolation_removed_everywhere_or_nowhere(case):
    model, run = case
    iso, vis = _modes(model, run.layout)
    n_layers = model.cfg.n_layers
    nowhere = tl.isolation_hooks(run.layout, layers=range(n_layers))
    everywhere = tl.isolation_hooks(run.layout, layers=[])
    assert torch.equal(tl.forward(model, run.layout, isolate=False, fwd_hooks=everywhere)[0], vis)
    assert torch.equal(tl.forward(model, run.layout, isolate=False, fwd_hooks=nowhere)[0], iso)


def test_bias_ends(case):
    model, run = case
    iso, vis = _modes(model, run.layout)
    b0 = tl.forward(
        model, run.layout, isolate=False, fwd_hooks=tl.isolation_hooks(run.layout, bias=0.0)
    )
    big = tl.forward(
        model, run.layout, isolate=False, fwd_hooks=tl.isolation_hooks(run.layout, bias=-1e4)
    )
    assert torch.allclose(b0[0], vis, atol=1e-4, rtol=0)
    assert torch.allclose(big[0], iso, atol=1e-4, rtol=0)
    sweep = ab.bias_sweep(model, run, [0, 1, 1e4])  # batched schedules
    assert sweep[0].kl_vis_members < 1e-9 and sweep[-1].kl_iso_members < 1e-9
    assert sweep[0].kl_iso_members > sweep[1].kl_iso_members > sweep[2].kl_iso_members


def test_layer_patching_matches_single_replays(case):
    model, run = case
    n_layers = model.cfg.n_layers
    lp = ab.layer_patching(model, run)
    base = lp.baseline.kl_vis_members
    assert base > 0 and lp.baseline.kl_iso_members == 0
    assert lp.layers["upto"]["kl_vis_members"][-1] < 1e-9  # 0..last = visible
    assert lp.layers["from"]["kl_vis_members"][0] < 1e-9  # 0..end = visible
    for L in range(n_layers):
        keep = {
            "single": [x for x in range(n_layers) if x != L],
            "upto": list(range(L + 1, n_layers)),
            "from": list(range(L)),
        }
        variants = {m: tl.isolation_hooks(run.layout, layers=k) for m, k in keep.items()}
        for mode, d in ab.compare_hooks(model, run, variants).items():
            assert math.isclose(
                d.kl_iso_members, lp.layers[mode]["kl_iso_members"][L], abs_tol=1e-7
            )
            assert math.isclose(d.kl_vis_next, lp.layers[mode]["kl_vis_next"][L], abs_tol=1e-7)
    heads = ab.head_patching(model, run, [0])
    assert len(heads[0]) == model.cfg.n_heads and all(v >= 0 for v in heads[0])


def test_activation_patching_ends(case):
    model, run = case
    layout = run.layout
    iso, vis = _modes(model, layout)
    last = model.cfg.n_layers - 1
    everywhere = torch.arange(len(layout))
    p0 = ab.patch_activation(model, layout, "blocks.0.hook_resid_pre", everywhere)
    pl = ab.patch_activation(model, layout, f"blocks.{last}.hook_resid_post", everywhere)
    assert torch.equal(p0, iso[0])  # embeddings do not depend on the mask
    assert torch.equal(pl, vis[0])
    rows = (layout.step >= 0).nonzero().flatten()
    assert ab.fraction_restored(vis[0], iso[0], p0, rows) == 0.0
    assert ab.fraction_restored(vis[0], iso[0], pl, rows) == 1.0
    pre = ab.activation_patching(model, run, hook="resid_pre")
    post = ab.activation_patching(model, run, hook="resid_post")
    assert abs(pre[0]) < 1e-6 and abs(post[-1] - 1) < 1e-6
    assert all(-1e-6 <= f <= 1 + 1e-6 for f in pre + post)
    back = ab.activation_patching(model, run, hook="resid_post", source_isolate=True)
    assert abs(back[-1] - 1) < 1e-6


def test_position_groups_partition_generated_tokens(case):
    _, run = case
    layout = run.layout
    members = set(ab.group_positions(layout, "members").tolist())
    later = set(ab.group_positions(layout, "later").tolist())
    assert not members & later
    assert members | later == set((layout.step >= 0).nonzero().flatten().tolist())
    with pytest.raises(tl.TempoError, match="position group"):
        ab.group_positions(layout, "siblings")


def test_sibling_window_ends(case):
    model, run = case
    iso, vis = _modes(model, run.layout)
    largest = max(len(s) for s in run.steps)
    win0 = ab.sibling_window_hooks(run.layout, 0)
    wide = ab.sibling_window_hooks(run.layout, largest)
    assert torch.equal(tl.forward(model, run.layout, isolate=False, fwd_hooks=win0)[0], iso)
    assert torch.equal(tl.forward(model, run.layout, isolate=False, fwd_hooks=wide)[0], vis)


def _hand_layout():
    # prompt [5, 6], set 0 = [7, 8, 9], set 1 = [10], set 2 = [11, 12]
    return tl.Layout.from_sets([5, 6], [[7, 8, 9], [10], [11, 12]])


def test_branch_hidden_and_offsets_on_hand_built_layout():
    layout = _hand_layout()
    hidden = ab.branch_hidden(layout)
    # later tokens (10, 11, 12 at indices 5, 6, 7) no longer see members 8, 9 (3, 4)
    assert hidden.nonzero().tolist() == [[5, 3], [5, 4], [6, 3], [6, 4], [7, 3], [7, 4]]
    assert ab.offset_layout(layout, 0).positions.tolist() == layout.positions.tolist()
    assert ab.sequential_layout(layout).positions.tolist() == list(range(8))
    half = ab.offset_layout(layout, 0.5).positions.tolist()
    assert half == [0, 1, 2, 2.5, 3, 4, 5, 5.5]
    assert ab.gap_layout(layout, 10).positions.tolist() == [0, 1, 12, 12, 12, 13, 14, 14]


def test_sequential_positions_equal_a_plain_forward(case):
    model, run = case
    layout = ab.sequential_layout(run.layout)
    plain = model(layout.tokens[None])
    ours = tl.forward(model, layout, isolate=False)[0]
    assert torch.allclose(ours, plain, atol=1e-5, rtol=0)
    table = ab.position_ablation(model, run, {"same": run.layout, "seq": layout})
    assert table["same"]["kl_members"] == 0 and table["same"]["top1_agree"] == 1
    assert table["seq"]["kl_members"] > 0


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
    assert run.config["threshold"] == relu.spec
    for s, ps in enumerate(run.steps):  # each set obeys the threshold of its step
        thr = relu(s, 8)
        assert all(p >= thr for p in ps.probs) or len(ps) == 1
    assert all(len(ps) == 1 for ps in run.steps[-2:])  # thresholds near 1 → top-1 fallback
    assert tl.load_run(run.save(tmp_path / "r")).config["threshold"] == relu.spec


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
    assert "retroactive_pruning" not in run.config
    loaded = tl.load_run(marked.save(tmp_path / "m"))
    info = loaded.config["retroactive_pruning"]
    assert len(info["pruned"]) == int(res.pruned.sum())
    assert info["marked_text"].count("~") == 2 * int(res.pruned.sum())
    # hiding the pruned members: no later token attends to them any more
    hooks = ab.pruning_hooks(run.layout, res.pruned)
    _, cache = tl.forward(model, run.layout, isolate=True, fwd_hooks=hooks, cache=["hook_pattern"])
    later = run.layout.step[:, None] > run.layout.step[None, :]
    pattern = cache["blocks.0.attn.hook_pattern"][0]
    assert pattern[:, later & res.pruned[None, :]].abs().max() == 0


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_script_runs_fast(script, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--fast", "--out", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    pngs = list(tmp_path.glob("*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 1000
    assert f"wrote {pngs[0]}" in out
    assert len(script.read_text().splitlines()) <= 60
    imports = [ln for ln in script.read_text().splitlines() if ln.startswith(("import", "from"))]
    assert {ln.split()[1] for ln in imports} <= {
        "argparse",
        "pathlib",
        "tempo_lens",
        "tempo_lens.analysis",
    }
    if script.stem in ("layer_patching", "activation_patching"):
        table = [ln for ln in out.splitlines() if ln.split() and ln.split()[0].isdigit()]
        assert [int(ln.split()[0]) for ln in table] == [0, 1]  # one row per layer (tiny: 2)


KIND_CONFIGS = sorted((ROOT / "experiments" / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("config", KIND_CONFIGS, ids=[c.stem for c in KIND_CONFIGS])
def test_config_kind_runs_on_tiny(config, tmp_path):
    import yaml

    from tempo_lens.analysis.experiments.config import resolve
    from tempo_lens.analysis.experiments.runner import run_experiment

    raw = yaml.safe_load(config.read_text())
    raw.pop("prompt_suite", None)
    raw.pop("max_prompts", None)
    raw |= {"prompts": ["The cat sat", "Once upon"], "max_steps": 4}
    summary = run_experiment(
        resolve(raw, config.parent), tmp_path / "out", model=tiny_model("llama")
    )
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["kind"] == raw["kind"]
    assert list((tmp_path / "out").glob("*.png"))
    if raw["kind"] == "layer_patching":
        assert all(len(v) == 2 for v in summary["per_layer"].values())
        assert summary["per_layer"]["upto.restored"][-1] == pytest.approx(1.0)
