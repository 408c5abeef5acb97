"""Experiments: config schema, runner (resume, reproducibility), measures on layouts
with known answers, statistics on known inputs, and the findings generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tempo_lens
from tempo_lens import Layout, TempoError
from tempo_lens.analysis import measures as M
from tempo_lens.analysis import stats as S
from tempo_lens.analysis.experiments.config import load_config, resolve
from tempo_lens.analysis.experiments.runner import run_experiment
from tempo_lens.testing import tiny_hf_model, tiny_model
from tests.reference import tempo_inputs
from tests.scripts import load_script

findings = load_script("experiments/seed_study/findings.py")

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _sweep_raw(**kw):
    raw = dict(
        name="tiny_sweep",
        kind="sweep",
        prompts=["hello", "abc d"],
        thresholds=[0.1],
        next_from=["mixture", "last"],
        max_steps=4,
        stop_at_eos=False,
    )
    return raw | kw


def _without_timing(summary):
    return {k: v for k, v in summary.items() if k != "timing"}


# -- schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (_sweep_raw(threshold=[0.1]), "'thresholds'"),
        (_sweep_raw(max_step=4), "'max_steps'"),
        (_sweep_raw(next_form=["last"]), "'next_from'"),
        (_sweep_raw(timing_rep=3), "'timing_reps'"),  # a kind-specific key
        (_sweep_raw(kind="swep"), "'sweep'"),
        (_sweep_raw(kind="positions", modes=["isolate"]), "'isolated'"),
    ],
)
def test_misspelled_key_names_the_right_one(raw, named):
    with pytest.raises(TempoError, match=named):
        resolve(raw)


def test_schema_rejects_bad_values_and_fills_defaults():
    with pytest.raises(TempoError, match="exactly one of 'prompts:'"):
        resolve({"name": "x", "kind": "sweep"})
    with pytest.raises(TempoError, match="thresholds.0: Input should be less than or equal to 1"):
        resolve(_sweep_raw(thresholds=[1.5]))
    with pytest.raises(TempoError, match="'timing_reps'"):
        resolve(_sweep_raw(kind="logits", timing_rep=1))
    c = resolve({"name": "x", "kind": "positions", "prompts": "one prompt", "thresholds": 0.2})
    assert c["thresholds"] == [0.2] and c["modes"] == ["isolated", "visible"]
    assert c["tolerance"] == 1e-3 and c["max_steps"] == 15 and c["seed"] == 42
    assert c["prompts"] == [{"id": "p000", "category": "prompts", "text": "one prompt"}]


def test_unused_and_single_keys_are_refused_naming_the_key():
    with pytest.raises(TempoError, match="^modes: the sweep kind does not read 'modes'"):
        resolve(_sweep_raw(modes=["isolated"]))
    with pytest.raises(TempoError, match="^seed: the attention kind does not read 'seed'"):
        resolve(_sweep_raw(kind="attention", next_from="mixture", seed=1))
    with pytest.raises(TempoError, match=r"^thresholds: the layer_patching kind reads one value"):
        resolve(_sweep_raw(kind="layer_patching", next_from="last", thresholds=[0.1, 0.2]))
    c = resolve(_sweep_raw(kind="layer_patching", next_from="last", thresholds=0.2))
    assert (c["thresholds"], c["next_from"], c["head_layers"]) == ([0.2], ["last"], 6)


def test_kind_keys_defaults_come_from_the_keys_model():
    from tempo_lens.analysis.experiments.registry import KINDS, kind

    assert len({k.name for k in KINDS}) == len(KINDS)
    c = resolve(_sweep_raw(kind="partial_isolation", next_from="mixture"))
    assert c["biases"] == [0, 0.5, 1, 2, 4, 8, 16, 10000] and c["windows"] == [0, 1, 2, 3]
    c = resolve(_sweep_raw(kind="position_ablation", next_from="mixture"))
    assert c["deltas"] == [0.25, 0.5, 1, 2] and c["gaps"] == [1, 5, 20, 100, 1000]
    assert kind("sweep").keys.model_fields["timing_reps"].default == 10
    with pytest.raises(TempoError, match="unknown kind 'sweeep'; did you mean 'sweep'"):
        kind("sweeep")


def _suite(tmp_path):
    path = tmp_path / "suite.yaml"
    suite = {"a": ["a0", "a1", "a2"], "b": ["b0"], "c": ["c0", "c1"]}
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("n", "how", "texts"),
    [
        (4, "first", ["a0", "a1", "a2", "b0"]),
        (4, "stratified", ["a0", "a1", "b0", "c0"]),  # round 1: a0 b0 c0, round 2: a1
        (5, "stratified", ["a0", "a1", "b0", "c0", "c1"]),  # b has no second prompt
        (9, "stratified", ["a0", "a1", "a2", "b0", "c0", "c1"]),
    ],
)
def test_max_prompts_sampling(tmp_path, n, how, texts):
    raw = _sweep_raw(prompts=None, prompt_suite="suite.yaml", max_prompts=n, sample=how)
    c = resolve({k: v for k, v in raw.items() if v is not None}, _suite(tmp_path).parent)
    assert [p["text"] for p in c["prompts"]] == texts
    assert [p["category"] for p in c["prompts"]] == [t[0] for t in texts]
    assert [p["id"] for p in c["prompts"]] == [f"p{i:03d}" for i in range(len(texts))]


def test_stratified_sampling_needs_a_suite_and_a_count(tmp_path):
    with pytest.raises(TempoError, match="sample: stratified .* give 'prompt_suite:'"):
        resolve(_sweep_raw(sample="stratified", max_prompts=1))
    with pytest.raises(TempoError, match="sample: Input should be 'first' or 'stratified'"):
        resolve(_sweep_raw(sample="random"))


def test_report_heading_leaves_out_keys_the_kind_does_not_read():
    from tempo_lens.analysis.experiments.registry import kind
    from tempo_lens.analysis.experiments.runner import render_report

    section = resolve(_sweep_raw(kind="layer_patching", next_from="last"))
    summary = {"model": "m", "n_prompts": 2, "timing": {}}
    text = render_report(kind("layer_patching"), summary, section, Path("/nonexistent"))
    assert "prompts: 2; thresholds: [0.1]; max_steps: 4; next_from: ['last']." in text
    assert "modes:" not in text and "| n_prompts | 2 |" in text


def test_cli_reports_schema_error_on_one_line(tmp_path, capsys):
    from tempo_lens.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(_sweep_raw(thresold=[0.1])))
    assert main(["experiment", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'thresholds'" in err and not (tmp_path / "o").exists()


def test_shipped_configs_match_the_seeds_table():
    suite = yaml.safe_load((EXPERIMENTS / "prompts.yaml").read_text())
    assert len(suite) >= 8 and sum(len(v) for v in suite.values()) >= 60
    expected = {  # docs/seed_study.md: prompt, max steps, threshold, modes
        "exp1_attention": ("The cat sat on the", 10, 0.1, {"isolated", "visible"}),
        "exp2_logits": ("The cat sat on the", 10, 0.1, {"isolated", "visible"}),
        "exp3_cross_parallel": ("The cat sat on the", 15, 0.08, {"visible"}),
        "exp4_positions": ("The cat sat on the", 10, 0.1, {"isolated"}),
        "exp5_high_parallelism": ("The quick brown", 8, 0.03, {"isolated", "visible"}),
    }
    for name, (prompt, steps, thr, modes) in expected.items():
        c = load_config(EXPERIMENTS / f"{name}.yaml")
        assert [p["text"] for p in c["prompts"]] == [prompt]
        assert (c["max_steps"], c["thresholds"], set(c["modes"])) == (steps, [thr], modes)
    sweep = load_config(EXPERIMENTS / "sweep.yaml")
    assert len(sweep["prompts"]) == sum(len(v) for v in suite.values())
    assert sorted(sweep["thresholds"]) == [0.05, 0.1, 0.2]
    assert sorted(sweep["next_from"]) == ["last", "mixture"]


# -- runner: outputs, resume, reproducibility -------------------------------------------------


def test_sweep_resumes_and_recomputes_identically(llama, tmp_path):
    out = tmp_path / "sweep"
    first = run_experiment(resolve(_sweep_raw()), out, model=llama)
    assert first["timing"]["generated_runs"] == 8 and first["timing"]["skipped_runs"] == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "attention_diff_by_layer.png",
        "config.yaml",
        "received_attention_by_layer.png",
        "report.md",
        "runs",
        "runs.parquet",
        "summary.json",
    ]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk.pop("tempo_lens") == {"kind": "experiment", "version": 1}
    assert on_disk == json.loads(json.dumps(first))
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 4
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 8
    loaded = tempo_lens.load_run(runs[0])
    assert loaded.config["max_steps"] == 4

    # an interrupted sweep: one run missing -> only that one is generated again
    import shutil

    shutil.rmtree(runs[3])
    second = run_experiment(resolve(_sweep_raw()), out, model=llama)
    assert second["timing"]["generated_runs"] == 1 and second["timing"]["skipped_runs"] == 7
    assert _without_timing(second) == _without_timing(first)

    # every figure recomputed from the saved runs alone: nothing generated, same summary
    third = run_experiment(resolve(_sweep_raw()), out, model=llama)
    assert third["timing"]["generated_runs"] == 0 and third["timing"]["skipped_runs"] == 8
    assert _without_timing(third) == _without_timing(first)
    assert first["n_pairs_analysed"] == first["n_pairs_planned"] == 4
    cfg = first["configs"]["t0.1/mixture"]["all"]
    assert cfg["n_pairs"] == 2 and cfg["sibling_attention_isolated_max"] in (0.0, None)


def test_changed_setting_is_not_reused(llama, tmp_path):
    out = tmp_path / "s"
    run_experiment(resolve(_sweep_raw(next_from=["last"])), out, model=llama)
    again = run_experiment(resolve(_sweep_raw(next_from=["last"], max_steps=3)), out, model=llama)
    assert again["timing"]["generated_runs"] == 4 and again["timing"]["skipped_runs"] == 0


def test_seed_kinds_write_their_figures(llama, tmp_path):
    common = dict(prompts=["hello"], max_steps=4, stop_at_eos=False)
    a = run_experiment(
        resolve(dict(common, name="a", kind="attention")), tmp_path / "a", model=llama
    )
    pair = a["pairs"][0]
    n_layers = llama.cfg.n_layers
    assert len(pair["forced_attention"]["layer_max_abs_diff"]) == n_layers
    assert np.array(pair["forced_attention"]["head_corr"]).shape == (n_layers, llama.cfg.n_heads)
    assert pair["sibling_attention_isolated"] in (0.0, None)

    d = run_experiment(
        resolve(dict(common, name="d", kind="positions", modes=["isolated"])),
        tmp_path / "d",
        model=llama,
    )
    rope = d["runs"][0]["rope"]
    assert rope["max_err_logical"] < 1e-5
    assert rope["n_shifted"] == 0 or rope["min_diff_physical"] > 1e-3

    c = run_experiment(
        resolve(dict(common, name="c", kind="cross_parallel", modes=["visible"], thresholds=0.05)),
        tmp_path / "c",
        model=llama,
    )
    run = c["runs"][0]
    assert run["captured_vs_replay_max_abs_diff"] < 1e-4
    if run["cross"]["n_rows"]:
        total = sum(
            run["cross"][f"{k}_all"] for k in ("siblings", "self", "prompt", "earlier_steps")
        )
        assert total == pytest.approx(1.0, abs=1e-4)
        assert run["siblings_isolated"] == 0.0


# -- known-answer layouts --------------------------------------------------------------------


def test_singleton_sets_modes_agree_exactly(llama):
    layout = Layout.from_sets([5, 6, 7], [[8], [9], [10]])
    li, pi = M.replay(llama, layout, True)
    lv, pv = M.replay(llama, layout, False)
    assert torch.equal(li, lv) and torch.equal(pi["hook_pattern"], pv["hook_pattern"])
    steps = [tempo_lens.ParallelSet([t], [1.0], 3 + i) for i, t in enumerate([8, 9, 10])]
    d = M.distribution_distances(
        M.step_distributions(li, layout, steps, "mixture"),
        M.step_distributions(lv, layout, steps, "mixture"),
    )
    assert d["kl"] == [0.0] * 3 and d["js"] == [0.0] * 3 and d["top20"] == [1.0] * 3
    rows = M.generated_rows(layout)
    diff = M.pattern_difference(pi["hook_pattern"][:, :, rows], pv["hook_pattern"][:, :, rows])
    assert diff["max_abs_diff"] == 0.0 and diff["corr"] == pytest.approx(1.0)


def test_two_member_set_attention_against_hf():
    """Visible: the two members attend to each other (> 0); isolated: exactly 0. The
    patterns equal Hugging Face's eager attention under an explicit 4D mask."""
    model = tiny_model("llama")
    hf, _ = tiny_hf_model("llama")
    prompt, sets = [5, 6, 7], [[8, 9], [10]]
    layout = Layout.from_sets(prompt, sets)
    for isolate in (True, False):
        _, acts = M.replay(model, layout, isolate)
        pat = acts["hook_pattern"]
        ids, pos, mask = tempo_inputs(prompt, sets, isolate)
        ref = hf(ids, position_ids=pos, attention_mask=mask, output_attentions=True).attentions
        ref = torch.stack([a[0] for a in ref]).double()
        assert (pat - ref).abs().max() < 1e-5
        sib = pat[:, :, 4, 3]  # second member -> first member
        cross = M.cross_set_attention(pat, layout)
        if isolate:
            assert torch.all(sib == 0) and cross["siblings_all"] == 0.0
        else:
            assert torch.all(sib > 0) and cross["siblings_all"] > 0


def test_received_attention_known_pattern():
    # prompt 0..2, members 3,4 (step 0), single 5 (step 1), last step 6 (excluded)
    layout = Layout.from_sets([1, 2, 3], [[4, 5], [6], [7]])
    pat = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    pat[0, 0, 5:, 3:5] = 0.1
    pat[0, 0, 6, 5] = 0.4
    pat[0, 0, 3:, 1:3] = 0.2
    r = M.received_attention(pat, layout)
    assert (r["n_members"], r["n_singles"], r["n_prompt"], r["n_sets"]) == (2, 1, 2, 1)
    assert r["token_out"] == pytest.approx(0.25)
    assert r["set_out"] == pytest.approx(0.5)
    assert r["token_in"] == pytest.approx(0.1 / ((0.4 + 0.2 + 0.2) / 3))


def test_rope_reference_matches_hf_rotary():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=10000.0)
    rot = LlamaRotaryEmbedding(cfg)
    k = torch.randn(1, 2, 6, 16, dtype=torch.float64)  # [batch, heads, pos, d]
    pos = torch.tensor([[0, 1, 2, 3, 3, 4]])
    cos, sin = rot(k.float(), pos)
    _, ref = apply_rotary_pos_emb(k, k, cos.double(), sin.double())
    ours = M.rope_reference(k[0].transpose(0, 1), pos[0], 10000.0, 16)
    assert (ours - ref[0].transpose(0, 1)).abs().max() < 1e-6


def test_divergence_step():
    P = tempo_lens.ParallelSet
    a = [P([1], [1.0], 3), P([2, 3], [0.5, 0.4], 4), P([4], [1.0], 5)]
    b = [P([1], [1.0], 3), P([3, 2], [0.5, 0.4], 4)]
    assert M.divergence_step(a, a) is None
    assert M.divergence_step(a, b) == 1
    assert M.divergence_step(a, a[:2]) == 2


# -- statistics on known inputs ----------------------------------------------------------------


def test_stats_known_values():
    assert S.sign_flip_p([1, 2, 3, 4]) == pytest.approx(2 / 16)  # exact: only ++++ and ----
    assert S.sign_flip_p([0, 0, 0]) == 1.0
    assert S.cohens_dz([1, 2, 3]) == pytest.approx(2.0)
    assert S.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    lo, hi = S.bootstrap_ci(list(range(100)), seed=1)
    assert lo < 49.5 < hi and S.bootstrap_ci(list(range(100)), seed=1) == (lo, hi)
    p = S.paired([3, 4, 5, 6], [1, 2, 3, 4])
    assert p["mean_diff"] == 2.0 and p["d_z"] is None and p["p"] == pytest.approx(2 / 16)
    big = S.sign_flip_p(np.full(40, 1.0), permutations=999)
    assert big == pytest.approx(1 / 1000)
    assert S.proportion([True, False, True, True])["share"] == 0.75
    assert S.sig(0.123456789) == 0.123457 and S.sig(None) is None


def test_repetition_collapse_flag():
    assert S.repetition_collapse([1, 2, 3, 1, 2, 3, 1, 2, 3])
    assert S.repetition_collapse([7] * 5)
    assert not S.repetition_collapse(list(range(15)))
    assert not S.repetition_collapse([1, 2, 3, 1, 2, 3])  # twice is not collapse


# -- findings ----------------------------------------------------------------------------------


def test_findings_cover_every_claim(llama, tmp_path):
    sweep = run_experiment(resolve(_sweep_raw()), tmp_path / "s", model=llama)
    exp = run_experiment(
        resolve(
            dict(
                name="l",
                kind="logits",
                prompts=["hello"],
                max_steps=3,
                timing_reps=2,
                stop_at_eos=False,
            )
        ),
        tmp_path / "l",
        model=llama,
    )
    text = findings.build(sweep, {"logits": exp}, "findings.py X")
    assert text.count("\n| ") >= 9  # header + 8 claims
    for claim in (
        "tokens identical",
        "visible faster",
        "attention patterns",
        "13 prompts",
        "48 prompts",
        "free-running generations",
        "position gap",
        "1 prompt",
    ):
        assert claim in text
    assert "findings.py X" in text.split("\n")[5]


@pytest.mark.embedded
def test_positions_shared_in_embedded_model(embedded):
    layout = Layout.from_sets([504, 2644, 2643, 335, 260], [[2644, 28], [30]])
    r = M.rope_check(embedded, layout)
    assert r["max_err_logical"] < 1e-3 * max(1.0, r["key_scale"])
    assert r["n_shifted"] == 2 and r["min_diff_physical"] > 1e-2


def test_findings_script_writes_and_rewrites_its_file(llama, tmp_path, capsys):
    run_experiment(resolve(_sweep_raw(name="sweep")), tmp_path / "sweep", model=llama)
    out = tmp_path / "findings.md"
    for _ in range(2):  # the second run replaces the file the first one wrote
        assert findings.main([str(tmp_path / "sweep"), "--out", str(out)]) == 0
        assert capsys.readouterr().out == f"wrote {out}\n"
    lines = out.read_text().split("\n")
    assert lines[0].startswith("# Findings") and lines[5].startswith(
        "python experiments/seed_study/findings.py "
    )
    assert findings.main([str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("findings.py: error: ") and err.count("\n") == 1


def test_findings_position_gap_row_verdicts():
    position_gap_row = findings.position_gap_row

    def pos(k5, k1000):
        v = {"kl_members": 0.0, "kl_next": 0.0, "top1_agree": 1.0}
        return {
            "n_prompts": 3,
            "variants": {"gap 5": v | {"kl_members": k5}, "gap 1000": v | {"kl_members": k1000}},
        }

    assert position_gap_row(None)[3].startswith("not comparable")
    row = position_gap_row(pos(0.1, 1.0))
    assert row[3].startswith("**refuted**") and "10% of gap 1000" in row[3]
    assert "n = 3 prompts" in row[2] and "gap 5: KL 0.1" in row[2]
    assert position_gap_row(pos(0.9, 1.0))[3].startswith("confirmed")
