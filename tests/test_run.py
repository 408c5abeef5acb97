"""TempoRun: bracket text, save/load round trip (JSON + safetensors, atomic)."""

from __future__ import annotations

import json

import pytest
import torch

import tempo_lens as tl
from tempo_lens.storage import atomic_dir


def _run(model, **kw):
    return tl.generate(model, "The cat sat", threshold=0.1, max_steps=6, eos_token_id=None, **kw)


def test_bracket_text_format(tiny_pair):
    model, _, _ = tiny_pair
    run = _run(model)
    text = run.text()
    assert "\033[" not in text
    assert run.text(color=True).count("\033[36m[") == sum(len(s) > 1 for s in run.steps)
    tops = [run.token_strs[run.layout.set_slice(i).start] for i in range(len(run.steps))]
    assert run.clean_text() == "".join(tops)


def test_bracket_text_hoists_common_space():
    layout = tl.Layout.from_sets([1], [[7], [8, 9, 10]])
    run = tl.TempoRun(
        prompt="p",
        model_name="m",
        config=tl.GenerateConfig(),
        layout=layout,
        steps=[tl.ParallelSet([7], [0.9], 1), tl.ParallelSet([8, 9, 10], [0.3, 0.2, 0.1], 2)],
        token_strs=["p", " windowsill", " The", " She", " It"],
        topk_ids=torch.zeros(2, 20, dtype=torch.long),
        topk_probs=torch.zeros(2, 20),
        stop_reason="max_steps",
        seconds=1.0,
    )
    assert run.text() == " windowsill [The/She/It]"
    assert run.clean_text() == " windowsill The"


def test_save_load_round_trip(tiny_pair, tmp_path):
    model, _, _ = tiny_pair
    run = _run(model, cache=["blocks.0.attn.hook_pattern", "hook_resid_post"], keep_logits=True)
    run.save(tmp_path / "r")
    back = tl.load_run(tmp_path / "r")
    assert back.text() == run.text() and back.steps == run.steps
    assert torch.equal(back.layout.tokens, run.layout.tokens)
    assert torch.equal(back.layout.positions, run.layout.positions)
    assert torch.equal(back.topk_probs, run.topk_probs)
    for name, acts in run.activations.items():
        assert all(torch.equal(a, b) for a, b in zip(acts, back.activations[name], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(run.logits, back.logits, strict=True))
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["format_version"] == 1 and meta["stats"]["steps"] == 6
    assert meta["tempo_lens"] == {"kind": "run", "version": 1}
    # overwrite in place keeps exactly one run there (plus its lock file)
    run.save(tmp_path / "r")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.lock", "r"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out", "run") as d:
        (d / "half.json").write_text("{")
        raise RuntimeError("crash mid-write")
    assert [p.name for p in tmp_path.iterdir()] == [".out.lock"]


def test_load_run_errors(tmp_path):
    with pytest.raises(tl.TempoError, match="is not a saved run"):
        tl.load_run(tmp_path)


def test_topk_is_the_selection_distribution(tiny_pair):
    model, _, _ = tiny_pair
    run = _run(model)
    for step, ps in enumerate(run.steps):
        top = run.topk_ids[step].tolist()
        assert top[: len(ps)] == ps.tokens  # members are the most probable tokens
        assert torch.allclose(run.topk_probs[step, : len(ps)], torch.tensor(ps.probs))


# Provenance and notebook display ---------------------------------------------------------


def _boost_head(z, hook, scale=2.0):
    return z * scale


def test_provenance_names_hooks_label_versions_and_weights(tmp_path):
    import functools

    from tempo_lens.provenance import weight_hash

    model = tl.load_model("tiny-llama")
    hooks = [("blocks.0.attn.hook_z", functools.partial(_boost_head, scale=3.0))]
    run = _run(model, fwd_hooks=hooks, label="head boost")
    p = run.provenance
    assert p.label == "head boost" and not p.replayable
    assert [(h.hook, h.function) for h in p.fwd_hooks] == [
        (
            "blocks.0.attn.hook_z",
            "functools.partial(tests.test_run._boost_head, scale=3.0)",
        )
    ]
    assert p.model_name == "tiny-llama" and p.weight_processing["fold_ln"] is True
    assert {"python", "tempo_lens", "transformer_lens", "torch", "transformers"} <= set(p.versions)
    plain = _run(model)
    assert plain.provenance.replayable and plain.provenance.fwd_hooks == []
    assert plain.provenance.weight_hash == p.weight_hash
    with torch.no_grad():
        model.W_U[0, 0] += 1.0  # an in-place edit changes the hash
    assert weight_hash(model) != p.weight_hash
    run.save(tmp_path / "r")
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["provenance"]["fwd_hooks"][0]["hook"] == "blocks.0.attn.hook_z"
    assert tl.load_run(tmp_path / "r").provenance == p
    meta["provenance"]["weight_hash"] = 7
    (tmp_path / "r" / "run.json").write_text(json.dumps(meta))
    with pytest.raises(tl.TempoError, match="provenance.weight_hash"):
        tl.load_run(tmp_path / "r")


def test_run_displays_compactly(tiny_pair):
    model, _, _ = tiny_pair
    run = _run(model, cache=["hook_pattern", "hook_resid_post"], keep_logits=True)
    text = repr(run)
    assert text.startswith("TempoRun(model=") and len(text) < 1000
    assert "captured=" in text and "logits=kept" in text
    page = run._repr_html_()
    assert len(page) < 20_000 and 'class="bracket"' in page
