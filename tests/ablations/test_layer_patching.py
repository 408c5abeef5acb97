"""Layer and head isolation patching against Hugging Face with the isolation mask
swapped in per decoder layer; the ends of every schedule are the two modes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from tempo_lens.analysis import ablations as ab
from tests.ablations.hf_checks import hf_logits, kl_rows, masks_of


def test_layer_patching_matches_hf_per_layer_masks(llama_case):
    model, hf, runs = llama_case
    result = ab.layer_patching(model, runs, batch_size=5)
    n_layers = model.cfg.n_layers
    for p, run in enumerate(runs):
        iso_mask, vis_mask = masks_of(run)
        rows = run.layout.step >= 0
        vis = hf_logits(hf, run, [vis_mask] * n_layers)
        iso = hf_logits(hf, run, [iso_mask] * n_layers)
        assert result.baseline[p, 1] == pytest.approx(kl_rows(vis, iso, rows), rel=1e-4)
        for L in range(n_layers):
            keep_visible = {
                "single": [x == L for x in range(n_layers)],
                "upto": [x <= L for x in range(n_layers)],
                "from": [x >= L for x in range(n_layers)],
            }
            for m, mode in enumerate(ab.LAYER_MODES):
                masks = [vis_mask if v else iso_mask for v in keep_visible[mode]]
                ref = hf_logits(hf, run, masks)
                got = result.distances[p, m, L]
                assert float(got[0]) == pytest.approx(kl_rows(iso, ref, rows), rel=1e-3, abs=1e-6)
                assert float(got[1]) == pytest.approx(kl_rows(vis, ref, rows), rel=1e-3, abs=1e-6)


def test_schedule_ends_are_the_modes(case):
    model, run = case
    lp = ab.layer_patching(model, run)
    assert lp.baseline[0, 1] > 0 and abs(float(lp.baseline[0, 0])) < 1e-12  # KL(iso ‖ iso)
    upto, frm = ab.LAYER_MODES.index("upto"), ab.LAYER_MODES.index("from")
    assert lp.field("kl_vis_members")[0, upto, -1] < 1e-9  # 0..last = visible
    assert lp.field("kl_vis_members")[0, frm, 0] < 1e-9  # 0..end = visible
    assert lp.restored.per_prompt[0, upto, -1] == pytest.approx(1.0)
    heads = ab.head_patching(model, run, [0])
    assert heads.kl_iso_members.shape == (1, 1, model.cfg.n_heads)
    assert (heads.kl_iso_members >= 0).all()


def test_batched_over_prompts_equals_one_by_one(llama_case):
    model, _, runs = llama_case
    together = ab.layer_patching(model, runs, batch_size=7)
    heads = ab.head_patching(model, runs, [0, 1], batch_size=5)
    for p, run in enumerate(runs):
        alone = ab.layer_patching(model, run)
        assert torch.allclose(together.distances[p], alone.distances[0], atol=1e-5, rtol=1e-4)
        alone_heads = ab.head_patching(model, run, [0, 1]).kl_iso_members[0]
        assert torch.allclose(heads.kl_iso_members[p], alone_heads, atol=1e-5, rtol=1e-4)


def test_result_structures(llama_case):
    model, _, runs = llama_case
    lp = ab.layer_patching(model, runs)
    s = json.loads(json.dumps(lp.summary()))
    assert s["n_prompts"] == 2 and s["n_layers"] == model.cfg.n_layers
    assert set(s["restored"]) == set(ab.LAYER_MODES)
    single = s["restored"]["single"]
    assert set(single) == {"median", "q25", "q75", "share_negative", "n_nan", "n_prompts", "pooled"}
    assert len(single["median"]) == model.cfg.n_layers and single["n_nan"] == [0, 0]
    assert len(s["per_layer"]) == 3 * 4
    assert isinstance(lp.plot(), Figure)
    df = lp.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 2 * 3 * model.cfg.n_layers
    assert {"prompt", "mode", "layer", "kl_vis_members", "restored"} <= set(df.columns)
    heads = ab.head_patching(model, runs, [1])
    assert json.loads(json.dumps(heads.summary()))["layers"] == [1]
    assert isinstance(heads.plot(), Figure)
    assert len(heads.to_pandas()) == 2 * model.cfg.n_heads
