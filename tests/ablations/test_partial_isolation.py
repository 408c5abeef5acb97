"""Partial isolation: a finite same-set bias against Hugging Face given the same
additive 4D mask; windows and "isolate always" at their ends and on a hand layout."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import tempo_lens as tl
from tempo_lens.analysis import ablations as ab
from tempo_lens.hooks import isolate_always_hooks
from tests.ablations.hf_checks import hf_logits, kl_rows, masks_of


def test_bias_matches_hf_additive_mask(llama_case):
    model, hf, runs = llama_case
    biases = [0, 0.7, 3.0, 10000]
    sweep = ab.bias_sweep(model, runs, biases)
    n_layers = model.cfg.n_layers
    for p, run in enumerate(runs):
        iso_mask, vis_mask = masks_of(run)
        same = (iso_mask != 0) & (vis_mask == 0)
        rows = run.layout.step >= 0
        iso = hf_logits(hf, run, isolate=True)
        vis = hf_logits(hf, run, isolate=False)
        for j, b in enumerate(biases):
            mask = vis_mask + torch.where(same, -float(b), 0.0)
            ref = hf_logits(hf, run, [mask] * n_layers)
            assert float(sweep[p, j, 0]) == pytest.approx(
                kl_rows(iso, ref, rows), rel=1e-3, abs=1e-6
            )
            assert float(sweep[p, j, 1]) == pytest.approx(
                kl_rows(vis, ref, rows), rel=1e-3, abs=1e-6
            )
    assert (sweep[:, 0, 1] < 1e-9).all() and (sweep[:, -1, 0] < 1e-9).all()
    assert (sweep[:, 0, 0] > sweep[:, 1, 0]).all() and (sweep[:, 1, 0] > sweep[:, 2, 0]).all()


def test_windows_and_isolate_always(case):
    model, run = case
    largest = max(len(s) for s in run.steps)
    res = ab.partial_isolation(model, run, [0], [0, largest])
    assert res.variants == ["window 0", f"window {largest}", "isolate always"]
    assert res.variant_distances[0, 0, 0] < 1e-9  # window 0 = isolated
    assert res.variant_distances[0, 1, 1] < 1e-9  # the widest window = visible
    always = tl.forward(
        model, run.layout, isolate=False, fwd_hooks=isolate_always_hooks(run.layout)
    )
    iso = tl.forward(model, run.layout, isolate=True)[0][0]
    lp, lq = iso.double().log_softmax(-1), always[0][0].double().log_softmax(-1)
    rows = run.layout.step >= 0
    want = float((lp.exp() * (lp - lq)).sum(-1)[rows].mean())
    assert float(res.variant_distances[0, 2, 0]) == pytest.approx(want, rel=1e-4, abs=1e-7)


def test_result_structures(llama_case):
    model, _, runs = llama_case
    res = ab.partial_isolation(model, runs, [0, 1], [0])
    s = json.loads(json.dumps(res.summary()))
    assert s["biases"] == [0, 1] and set(s["variants"]) == {"window 0", "isolate always"}
    assert len(s["bias_sweep"]["kl_iso_members"]) == 2
    assert isinstance(res.plot(), Figure)
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 2 * (2 + 2)
    assert set(df["variant"]) == {"bias 0", "bias 1", "window 0", "isolate always"}
