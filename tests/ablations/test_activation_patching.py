"""Activation patching: the ends (embeddings do not depend on the mask; the last
residual stream is everything), the position groups, and one layer against Hugging Face
with the visible run's layer input written into the isolated forward."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import tempo_lens as tl
from tempo_lens.analysis import ablations as ab
from tests.ablations.hf_checks import hf_logits, kl_rows, masks_of


def test_ends(case):
    model, run = case
    pre = ab.activation_patching(model, run, hook="resid_pre").restored.per_prompt[0]
    post = ab.activation_patching(model, run, hook="resid_post").restored.per_prompt[0]
    assert abs(pre[0]) < 1e-6 and abs(post[-1] - 1) < 1e-6
    assert ((pre > -1e-6) & (pre < 1 + 1e-6)).all() and ((post > -1e-6) & (post < 1 + 1e-6)).all()
    back = ab.activation_patching(model, run, hook="resid_post", direction="iso_to_vis")
    assert abs(back.restored.per_prompt[0, -1] - 1) < 1e-6
    with pytest.raises(tl.TempoError, match="direction"):
        ab.activation_patching(model, run, direction="sideways")


def test_resid_pre_patch_matches_hf(llama_case):
    model, hf, runs = llama_case
    result = ab.activation_patching(model, runs, hook="resid_pre", group="members")
    for p, run in enumerate(runs):
        iso_mask, vis_mask = masks_of(run)
        rows = run.layout.step >= 0
        iso = hf_logits(hf, run, isolate=True)
        vis = hf_logits(hf, run, isolate=False)
        pos = ab.group_positions(run.layout, "members")  # checked on a hand layout below
        captured = {}
        hf_logits(hf, run, isolate=False, pre_layer={1: lambda h, c=captured: c.setdefault(1, h)})
        patched = hf_logits(hf, run, isolate=True, pre_layer={1: _writer(pos, captured[1])})
        want = 1 - kl_rows(vis, patched, rows) / kl_rows(vis, iso, rows)
        assert float(result.restored.per_prompt[p, 1]) == pytest.approx(want, abs=1e-4)


def _writer(pos, source):
    def write(h):
        h = h.clone()
        h[0, pos] = source[0, pos]
        return h

    return write


def test_position_groups_partition_generated_tokens():
    layout = tl.Layout.from_sets([5, 6], [[7, 8, 9], [10], [11, 12]])
    assert ab.group_positions(layout, "members").tolist() == [2, 3, 4, 6, 7]
    assert ab.group_positions(layout, "later").tolist() == [5]
    assert ab.group_positions(layout, "all").tolist() == list(range(8))
    with pytest.raises(tl.TempoError, match="position group"):
        ab.group_positions(layout, "siblings")
    assert ab.hook_name("hook_z", 3) == "blocks.3.attn.hook_z"


def test_result_structures(llama_case):
    model, _, runs = llama_case
    res = ab.activation_patching(model, runs, hook="attn_out", layers=[1])
    s = json.loads(json.dumps(res.summary()))
    assert (s["hook"], s["group"], s["direction"], s["layers"]) == (
        "attn_out",
        "all",
        "vis_to_iso",
        [1],
    )
    assert s["restored"]["n_prompts"] == 2 and len(s["restored"]["median"]) == 1
    assert isinstance(res.plot(), Figure)
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 2
    assert torch.tensor(df["restored"].tolist()).allclose(res.restored.per_prompt[:, 0].float())
