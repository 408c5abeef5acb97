"""Position variants: hand-checked positions, sequential positions equal a plain
forward, and a prompt gap against Hugging Face given the shifted position_ids."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import tempo_lens as tl
from tempo_lens.analysis import ablations as ab
from tests.ablations.hf_checks import hf_logits, kl_rows, sets_of


def _hand_layout():
    # prompt [5, 6], set 0 = [7, 8, 9], set 1 = [10], set 2 = [11, 12]
    return tl.Layout.from_sets([5, 6], [[7, 8, 9], [10], [11, 12]])


def test_offsets_on_hand_built_layout():
    layout = _hand_layout()
    assert ab.offset_layout(layout, 0).positions.tolist() == layout.positions.tolist()
    assert ab.sequential_layout(layout).positions.tolist() == list(range(8))
    half = ab.offset_layout(layout, 0.5).positions.tolist()
    assert half == [0, 1, 2, 2.5, 3, 4, 5, 5.5]
    assert ab.gap_layout(layout, 10).positions.tolist() == [0, 1, 12, 12, 12, 13, 14, 14]
    names = ab.standard_variants(layout, [0.5, 1], [3], fractional=False)
    assert list(names) == ["offset 1", "sequential", "gap 3"]


def test_sequential_positions_equal_a_plain_forward(case):
    model, run = case
    layout = ab.sequential_layout(run.layout)
    plain = model(layout.tokens[None])
    ours = tl.forward(model, layout, isolate=False)[0]
    assert torch.allclose(ours, plain, atol=1e-5, rtol=0)
    res = ab.position_ablation(
        model, run, lambda lay: {"same": lay, "seq": ab.sequential_layout(lay)}
    )
    same, seq = res.values[0]
    assert same[:3].tolist() == [0.0, 0.0, 1.0] and seq[0] > 0
    n_targets, agree, ppl_variant, ppl_reference = same[3:].tolist()
    assert n_targets == len(run.steps) - 1 and agree == n_targets
    assert ppl_variant == ppl_reference


def test_gap_matches_hf_position_ids(llama_case):
    model, hf, runs = llama_case
    res = ab.position_ablation(model, runs, lambda lay: {"gap 7": ab.gap_layout(lay, 7)})
    for p, run in enumerate(runs):
        prompt, sets = sets_of(run)
        shifted = list(range(len(prompt)))
        for i, members in enumerate(sets):
            shifted += [len(prompt) + i + 7] * len(members)
        rows = run.layout.step >= 0
        ref = hf_logits(hf, run, isolate=True)
        gapped = hf_logits(hf, run, isolate=True, position_ids=torch.tensor([shifted]))
        assert float(res.values[p, 0, 0]) == pytest.approx(kl_rows(ref, gapped, rows), rel=1e-3)
        agree = float((ref[rows].argmax(-1) == gapped[rows].argmax(-1)).double().mean())
        assert float(res.values[p, 0, 2]) == agree


def test_result_structures(llama_case):
    model, _, runs = llama_case

    def variants(lay):
        return ab.standard_variants(lay, [0.5], [1, 5], fractional=True)

    res = ab.position_ablation(model, runs, variants)
    s = json.loads(json.dumps(res.summary()))
    assert list(s["variants"]) == ["offset 0.5", "sequential", "gap 1", "gap 5"]
    assert set(s["variants"]["gap 5"]) == {"kl_members", "kl_next", "top1_agree"}
    assert isinstance(res.plot(), Figure)
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 2 * 4


def test_packed_gaps_plateau_and_coherence_summary(case):
    """The seeds' condition (no explicit mask: packed sequences) makes every gap >= 1 the
    same replay — the continuation cannot see the prompt, and rotary attention depends
    only on position differences — while with the mask kept the effect changes with the
    gap; every variant's coherence has an exact interval and a perplexity ratio."""
    model, run = case
    if model.cfg.positional_embedding_type != "rotary":
        pytest.skip("the plateau is a property of relative (rotary) positions")
    variants = lambda lay: {  # noqa: E731
        **{f"gap {g}": ab.gap_layout(lay, g) for g in (5, 1000)},
        **{f"packed gap {g}": ab.gap_layout(lay, g) for g in (5, 1000)},
    }
    res = ab.position_ablation(model, run, variants)
    v = res.summary()["variants"]
    assert v["packed gap 5"]["kl_members"] == pytest.approx(
        v["packed gap 1000"]["kl_members"], abs=1e-4
    )
    assert v["gap 5"]["kl_members"] != pytest.approx(v["gap 1000"]["kl_members"], abs=1e-4)
    c = res.summary()["coherence"]["packed gap 5"]
    lo, hi = c["agreement"]["ci95"]
    assert 0 <= lo <= c["agreement"]["share"] <= hi <= 1 and c["ppl_ratio"]["n"] == 1
