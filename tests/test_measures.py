"""tempo_lens.analysis.measures: the model's own rotation against Hugging Face's rotary
code, the position-matched attention-received measure on patterns built by hand, and the
sibling-free pattern difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tempo_lens
from tempo_lens import Layout, TempoError
from tempo_lens.analysis import measures as M
from tempo_lens.testing import tiny_hf_model, tiny_model

PROMPT = [1, 40, 41, 42]
# steps: 0 = {50, 51} (members), 1 = {52} single, 2 = {53, 54, 55} members, 3 = {56}
# single, 4 = {57} single (last step: no later queries)
SETS = [[50, 51], [52], [53, 54, 55], [56], [57]]


# -- positions: the model's own rotation ----------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "llama3rope"])
def test_model_rotation_matches_hf_rotary(kind):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hf, _ = tiny_hf_model(kind)
    model = tiny_model(kind)
    layout = Layout.from_sets(PROMPT, SETS[:3])
    _, cache = tempo_lens.forward(model, layout, cache=["hook_k"])
    keys = torch.stack([cache["k", L][0] for L in range(model.cfg.n_layers)])  # [L, n, h, d]
    positions = torch.tensor([0, 1, 2, 3, 3, 4, 9, 9, 9, 5])  # repeats, a jump, a step back
    ours = M.model_rotation(model, keys, positions)
    k = keys.transpose(1, 2)  # [L, heads, n, d] as Hugging Face lays keys out
    cos, sin = hf.model.rotary_emb(k, positions[None])
    _, ref = apply_rotary_pos_emb(k, k, cos, sin)
    assert (ours - ref.transpose(1, 2)).abs().max() < 1e-5


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_rope_check_on_tiny_models(backend):
    model = tiny_model("llama", backend=backend)
    layout = Layout.from_sets(PROMPT, SETS)
    r = M.rope_check(model, layout)
    assert r["reference_valid"] and r["n_generated"] == 8 and r["n_shifted"] == 7
    assert r["max_err_logical"] < 1e-5 * max(1.0, r["key_scale"])
    assert r["min_diff_physical"] > 1e-2
    assert r["set_positions"] == [[4.0], [5.0], [6.0], [7.0], [8.0]]


def test_rope_check_needs_rotated_keys():
    with pytest.raises(TempoError, match="hook_rot_k"):
        M.rope_check(tiny_model("gpt2"), Layout.from_sets(PROMPT, SETS[:2]))


# -- attention received, matched by query distance ------------------------------------------


def synthetic_pattern(layout: Layout, value) -> torch.Tensor:
    """[1 layer, 2 heads, n, n] with pattern[q, k] = value(distance, member) for generated
    keys k and later-step queries q (heads differ by +-0.01, so the head mean is value)."""
    step = layout.step
    sizes = torch.bincount(step[step >= 0])
    n = len(layout)
    pat = torch.zeros(1, 2, n, n, dtype=torch.float64)
    for q in range(n):
        for k in range(n):
            if step[k] >= 0 and step[q] > step[k]:
                v = value(int(step[q] - step[k]), bool(sizes[step[k]] >= 2))
                pat[0, 0, q, k], pat[0, 1, q, k] = v + 0.01, v - 0.01
    return pat


def test_received_cells_by_hand():
    layout = Layout.from_sets(PROMPT, SETS)
    pat = synthetic_pattern(layout, lambda d, m: 0.1 * d + (0.5 if m else 0.0))
    pat[0, :, 7, 4] += torch.tensor([0.2, 0.0])  # one query row of step 2 -> key 4 (step 0)
    cells = M.received_cells(pat, layout)
    # keys of steps 0..3: 2 members x 4 later steps, 1 single x 3, 3 members x 2, 1 single x 1
    assert len(cells) == 8 + 3 + 6 + 1
    first = (cells.key == 4).nonzero().flatten()
    assert cells.distance[first].tolist() == [1, 2, 3, 4] and cells.member[first].all()
    # distance 2 from key 4: step-2 rows 7, 8, 9; one of them got +0.1 in head mean
    assert float(cells.attention[first[1], 0]) == pytest.approx(0.7 + 0.1 / 3)
    single = (cells.key == 6).nonzero().flatten()
    assert not cells.member[single].any()
    assert cells.attention[single, 0].tolist() == pytest.approx([0.1, 0.2, 0.3])
    both = M.ReceivedCells.concat([cells, cells])
    assert len(both) == 2 * len(cells) and torch.equal(both.key[: len(cells)], cells.key)


def test_matched_ratio_removes_the_distance_confound():
    # attention depends on distance only: members and singles are alike at equal distance,
    # yet members (earlier steps, longer distances on average) look different unmatched
    layout = Layout.from_sets(PROMPT, SETS)
    pat = synthetic_pattern(layout, lambda d, m: 0.05 * math.exp(-0.5 * d))
    r = M.position_matched_received(pat, layout)
    assert r["matched"] == pytest.approx(1.0) and r["matched_by_layer"] == [pytest.approx(1.0)]
    assert all(v == pytest.approx(1.0) for v in r["by_distance"].values())
    assert abs(r["raw_token_out"] - 1.0) > 0.05
    assert r["regression"]["member_ratio"] == pytest.approx(1.0)
    assert r["regression"]["per_step_pct"] == pytest.approx((math.exp(-0.5) - 1) * 100)


def test_matched_ratio_by_hand():
    layout = Layout.from_sets(PROMPT, SETS)
    pat = synthetic_pattern(layout, lambda d, m: (0.3 if m else 0.2) / d)
    r = M.matched_received_ratio(M.received_cells(pat, layout))
    # distances with both kinds: 1, 2, 3 (singles at steps 1 and 3); member cells at d=4
    # (step-0 keys) have no single at d = 4 and are left out
    assert sorted(r["by_distance"]) == [1, 2, 3]
    assert r["n_member_cells_unmatched"] == 2
    assert r["matched"] == pytest.approx(1.5)
    w = {1: 5, 2: 5, 3: 2}  # member cells per distance
    num = sum(w[d] * 0.3 / d for d in w)
    den = sum(w[d] * 0.2 / d for d in w)
    assert r["matched"] == pytest.approx(num / den)


def test_distance_regression_recovers_known_coefficients():
    layout = Layout.from_sets(PROMPT, SETS)
    b0, b1, b2 = math.log(0.04), -0.3, math.log(0.8)
    pat = synthetic_pattern(layout, lambda d, m: math.exp(b0 + b1 * d + b2 * m))
    r = M.received_distance_regression(M.received_cells(pat, layout))
    assert r["member_ratio"] == pytest.approx(0.8, rel=1e-9)
    assert r["per_step_pct"] == pytest.approx((math.exp(b1) - 1) * 100, rel=1e-9)
    assert r["r2"] == pytest.approx(1.0) and r["n_cells"] == 18 and r["n_zero_cells"] == 0
    # against numpy's own polynomial-free least squares on the same design
    cells = M.received_cells(pat, layout)
    X = np.stack([np.ones(len(cells)), cells.distance.numpy(), cells.member.numpy()], 1)
    beta = np.linalg.lstsq(X, cells.attention[:, 0].log().numpy(), rcond=None)[0]
    assert r["member_ratio_by_layer"][0] == pytest.approx(math.exp(beta[2]), rel=1e-9)


def test_position_matched_none_without_both_kinds():
    layout = Layout.from_sets(PROMPT, [[50], [51], [52]])  # singles only
    pat = synthetic_pattern(layout, lambda d, m: 0.1)
    assert M.position_matched_received(pat, layout) is None


def test_position_matched_on_a_model_run():
    model = tiny_model("llama")
    layout = Layout.from_sets(PROMPT, SETS)
    _, acts = M.replay(model, layout, True)
    pat = acts["hook_pattern"]
    r = M.position_matched_received(pat, layout)
    raw = M.received_attention(pat, layout)
    assert r["raw_token_out"] == raw["token_out"]
    assert len(r["matched_by_layer"]) == model.cfg.n_layers and r["matched"] > 0


# -- pattern difference without sibling entries ---------------------------------------------


def test_pattern_difference_excluding_siblings():
    layout = Layout.from_sets(PROMPT, SETS[:3])
    rows = M.generated_rows(layout)
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, len(rows), len(layout), generator=gen, dtype=torch.float64)
    b = a + 0.01 * torch.rand(a.shape, generator=gen, dtype=torch.float64)
    sib = M.sibling_entries(layout, rows)
    b[..., sib] += 0.5  # the masked entries differ by construction
    full = M.pattern_difference(a, b)
    clean = M.pattern_difference(a, b, exclude=sib)
    assert full["max_abs_diff"] > 0.5 > 0.01 >= clean["max_abs_diff"]
    assert clean["n_excluded"] == int(sib.sum()) == 2 + 6
    keep = ~sib
    ref = np.corrcoef(a[..., keep].flatten().numpy(), b[..., keep].flatten().numpy())[0, 1]
    assert clean["corr"] == pytest.approx(ref, rel=1e-12)
    layer0 = np.corrcoef(a[0][..., keep].flatten().numpy(), b[0][..., keep].flatten().numpy())
    assert clean["layer_corr"][0] == pytest.approx(layer0[0, 1], rel=1e-12)
    none = M.pattern_difference(a, b, exclude=torch.zeros_like(sib))
    assert {k: v for k, v in none.items() if k != "n_excluded"} == {
        k: v for k, v in full.items() if k != "n_excluded"
    }
    with pytest.raises(TempoError):
        M.pattern_difference(a, b, exclude=sib[:1])


@pytest.mark.parametrize("isolate", [True, False])
def test_replay_many_equals_one_by_one(isolate):
    """The sweep's batched replays: each layout of a padded batch (three lengths) gives
    the logits and every layer's pattern of its own replay."""
    model = tiny_model("llama")
    layouts = [
        Layout.from_sets(PROMPT, SETS),
        Layout.from_sets(PROMPT[:2], SETS[:2]),
        Layout.from_sets(PROMPT, SETS[:3]),
    ]
    many = M.replay_many(model, layouts, isolate)
    for layout, (logits, acts) in zip(layouts, many, strict=True):
        want_logits, want_acts = M.replay(model, layout, isolate)
        assert logits.shape == want_logits.shape == (len(layout), model.cfg.d_vocab)
        assert torch.allclose(logits, want_logits, atol=1e-5, rtol=0)
        pattern = acts["hook_pattern"]
        assert pattern.shape == (model.cfg.n_layers, model.cfg.n_heads, len(layout), len(layout))
        assert torch.allclose(pattern, want_acts["hook_pattern"], atol=1e-6, rtol=0)
