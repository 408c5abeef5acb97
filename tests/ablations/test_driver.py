"""The driver: the one restored fraction on hand-made KLs, the batching of variants, and
the variant parts (mask, positions, patch, start layer) against plain replays."""

from __future__ import annotations

import math

import pytest
import torch

import tempo_lens as tl
from tempo_lens.analysis import ablations as ab
from tests.ablations.hf_checks import hf_logits, kl_rows, masks_of, next_sets


def test_restored_fraction_per_prompt_and_pooled():
    kl_base = torch.tensor([2.0, 1.0, 0.0, 4.0])
    kl_variant = torch.tensor([[1.0, 0.0], [1.5, 0.5], [0.0, 0.0], [1.0, 4.0]])
    r = ab.restored_fraction(kl_variant, kl_base)
    assert r.per_prompt[:, 0].tolist()[:2] == [0.5, -0.5]
    assert math.isnan(r.per_prompt[2, 0]) and math.isnan(r.per_prompt[2, 1])
    assert r.per_prompt[3].tolist() == [0.75, 0.0]
    # pooled: 1 - mean variant / mean base, over every prompt (base mean 7/4)
    assert r.pooled.tolist() == pytest.approx([1 - (3.5 / 4) / (7 / 4), 1 - (4.5 / 4) / (7 / 4)])
    s = r.summary()
    assert s["n_nan"] == [1, 1] and s["n_prompts"] == 4
    assert s["share_negative"] == pytest.approx([1 / 3, 0.0])
    assert s["median"] == pytest.approx([0.5, 0.5])  # of 0.5, -0.5, 0.75 / 1, 0.5, 0
    assert s["q25"][0] == pytest.approx(0.0) and s["q75"][0] == pytest.approx(0.625)
    empty = ab.restored_fraction(torch.zeros(2, 3), torch.zeros(2)).summary()
    assert empty["median"] == [None] * 3 and empty["n_nan"] == [2] * 3
    assert empty["pooled"] == [None] * 3


def test_variants_equal_plain_replays(case):
    model, run = case
    layout = run.layout
    iso = tl.forward(model, layout, isolate=True)[0][0]
    vis = tl.forward(model, layout, isolate=False)[0][0]

    def variants(ref):
        return [
            ab.Variant(),  # visible
            ab.Variant(hidden=layout.same_set()),  # isolated
            ab.Variant(hidden=layout.same_set(), start_layer=1),  # isolated, from layer 1
            ab.Variant(start_layer=1, start_isolated=False),
            ab.Variant(hidden=layout.same_set(), bias=0.0),  # a zero bias hides nothing
        ]

    def logits(ref, x):
        return x.double()

    for batch_size in (1, 2, 16):
        got = ab.ablate(model, run, variants, logits, batch_size=batch_size)[0]
        for i, want in enumerate([vis, iso, iso, vis, vis]):
            assert torch.allclose(got[i], want.double(), atol=1e-4, rtol=0), (batch_size, i)


def test_patch_writes_the_given_activation(case):
    model, run = case
    layout = run.layout
    _, cache = tl.forward(model, layout, isolate=False, cache=["hook_resid_post"])
    last = model.cfg.n_layers - 1
    name = f"blocks.{last}.hook_resid_post"
    patch = ab.Patch(name, torch.arange(len(layout)), cache[name][0])

    def variants(ref):
        return [ab.Variant(hidden=layout.same_set(), patch=patch, start_layer=last)]

    out = ab.ablate(model, [run, run], variants)
    assert all(float(d[0, 1]) < 1e-9 for d in out)  # the visible replay, rebuilt


def test_a_start_layer_is_part_of_the_variant(case):
    """Nothing hidden, but started from the isolated replay at layer 1: isolated at layer 0
    and visible after, which is neither reference replay (nor the same as when started
    from the visible one)."""
    model, run = case
    layout = run.layout
    layer0 = tl.isolation_hooks(layout, layers=[0])
    want = tl.forward(model, layout, isolate=False, fwd_hooks=layer0)
    vis = tl.forward(model, layout, isolate=False)[0][0]

    def variants(ref):
        return [ab.Variant(start_layer=1), ab.Variant(start_layer=1, start_isolated=False)]

    got = ab.ablate(model, run, variants, lambda ref, x: x.double())[0]
    assert torch.allclose(got[0], want[0][0].double(), atol=1e-4, rtol=0)
    assert torch.allclose(got[1], vis.double(), atol=1e-4, rtol=0)
    assert not torch.allclose(got[0], got[1], atol=1e-3)


@pytest.mark.parametrize("next_from", ["mixture", "first", "last"])
def test_distances_equal_float64_kls_of_hf_logits(llama_case, next_from):
    """All four `Distances` fields of a variant (Hugging Face's logits with isolation at
    layer 0 only) against KLs computed here in float64 from the same logits; each
    reference replay is at KL 0 from itself."""
    model, hf, _ = llama_case
    run = tl.generate(
        model, "The cat sat", threshold=0.1, max_steps=6, eos_token_id=None, next_from=next_from
    )
    ref = ab.Replays.of(model, [run])[0]
    iso_mask, vis_mask = masks_of(run)
    variant = hf_logits(hf, run, [iso_mask] + [vis_mask] * (model.cfg.n_layers - 1)).float()
    iso, vis, variant64 = ref.iso_logits.double(), ref.vis_logits.double(), variant.double()
    rows = run.layout.step >= 0

    def kl_next(p_logits, q_logits):
        p, q = next_sets(p_logits, run, next_from), next_sets(q_logits, run, next_from)
        return float((p * (p.log() - q.log())).sum(-1).mean())

    want = [kl_rows(iso, variant64, rows), kl_rows(vis, variant64, rows)]
    want += [kl_next(iso, variant64), kl_next(vis, variant64)]
    assert min(want[:2]) > 1e-4  # the variant differs from both references (a set's first
    # member sees no sibling: with next_from="first", KL(iso ‖ variant) of the next sets is 0)
    # float32 exponentials (~1e-7 relative), float64 sums: well inside the logits' noise
    assert ref.distances(variant).tolist() == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert ref.distances(ref.iso_logits)[[0, 2]].abs().max() < 1e-12  # KL(iso ‖ iso)
    assert ref.distances(ref.vis_logits)[[1, 3]].abs().max() < 1e-12  # KL(vis ‖ vis)
