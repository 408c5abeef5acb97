"""tempo_lens.analysis.packed against Hugging Face's own packed-sequence handling:
`attention_mask=None`, `use_cache=False` and gapped (or repeated) `position_ids`."""

from __future__ import annotations

import pytest
import torch

import tempo_lens
from tempo_lens.analysis import packed
from tempo_lens.layout import Layout
from tempo_lens.testing import tiny_hf_model, tiny_model

PROMPT = [1, 40, 41, 42, 43]


@pytest.fixture(scope="module")
def models():
    hf, _ = tiny_hf_model("llama")
    return hf, tiny_model("llama")


def gap_layout(layout: Layout, gap: float) -> Layout:
    return Layout(layout.tokens, layout.positions + gap * (layout.step >= 0), layout.step)


def hf_packed_logits(hf, layout: Layout) -> torch.Tensor:
    with torch.no_grad():
        return hf(
            layout.tokens[None], position_ids=layout.positions.long()[None], use_cache=False
        ).logits[0]


def test_packed_sequence_ids_rule():
    ids = packed.packed_sequence_ids(torch.tensor([0, 1, 2, 23, 24, 24, 25, 3]))
    assert ids.tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    assert packed.packed_sequence_ids(torch.arange(5)).tolist() == [0] * 5
    lay = gap_layout(Layout.from_sets(PROMPT, [[50], [51], [52]]), 20)
    hidden = packed.packed_hidden(lay)
    assert hidden[5:, :5].all() and not hidden[5:, 5:].any() and not hidden[:5, :5].any()
    assert packed.packed_sequence_hooks(Layout.from_prompt(PROMPT)) == []


@pytest.mark.parametrize("gap", [1, 5, 100])
def test_gap_continuation_equals_hf_packed(models, gap):
    hf, model = models
    lay = gap_layout(Layout.from_sets(PROMPT, [[50], [51], [52], [53]]), gap)
    ref = hf_packed_logits(hf, lay)
    ours, _ = tempo_lens.forward(model, lay, fwd_hooks=packed.packed_sequence_hooks(lay))
    assert (ours[0] - ref).abs().max() < 1e-4
    # the condition matters: with the explicit causal mask the continuation sees the prompt
    full, _ = tempo_lens.forward(model, lay)
    assert (full[0, 5:] - ref[5:]).abs().max() > 1e-2
    # and it is the seeds' plateau: the continuation's logits do not depend on the gap
    other = gap_layout(Layout.from_sets(PROMPT, [[50], [51], [52], [53]]), gap + 7)
    again, _ = tempo_lens.forward(model, other, fwd_hooks=packed.packed_sequence_hooks(other))
    assert (again[0, 5:] - ours[0, 5:]).abs().max() < 1e-4


def test_shared_positions_split_like_hf(models):
    # a multi-member set repeats a position: Hugging Face starts a new sequence there too
    hf, model = models
    lay = gap_layout(Layout.from_sets(PROMPT, [[50, 60], [51]]), 3)
    ref = hf_packed_logits(hf, lay)
    ours, _ = tempo_lens.forward(
        model, lay, isolate=False, fwd_hooks=packed.packed_sequence_hooks(lay)
    )
    assert packed.packed_sequence_ids(lay.positions).tolist() == [0] * 5 + [1, 2, 2]
    assert (ours[0] - ref).abs().max() < 1e-4
