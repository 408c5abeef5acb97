"""`tempo_lens.testing`: the Hugging Face reference mask, checked against visibility
matrices written out by hand."""

from __future__ import annotations

import torch

from tempo_lens.testing import hf_tempo_mask

# prompt of 2, then step 0's set of 2 members, then step 1's set of 1
STEPS = [-1, -1, 0, 0, 1]
VISIBLE = [  # [q][k]: 1 = may attend, visible mode
    [1, 0, 0, 0, 0],
    [1, 1, 0, 0, 0],
    [1, 1, 1, 0, 0],
    [1, 1, 1, 1, 0],
    [1, 1, 1, 1, 1],
]
ISOLATED = [
    [1, 0, 0, 0, 0],
    [1, 1, 0, 0, 0],
    [1, 1, 1, 0, 0],
    [1, 1, 0, 1, 0],  # a member does not see its sibling
    [1, 1, 1, 1, 1],
]


def _visible(mask: torch.Tensor) -> list:
    assert set(mask.unique().tolist()) <= {0.0, torch.finfo(mask.dtype).min}
    return (mask == 0).int().tolist()


def test_visible_and_isolated_masks():
    assert _visible(hf_tempo_mask(STEPS, False)) == [[VISIBLE]]
    assert _visible(hf_tempo_mask(STEPS, True)) == [[ISOLATED]]


def test_query_rows_dtype_and_hidden_after():
    mask = hf_tempo_mask(STEPS, True, n_query=2, dtype=torch.float16)
    assert mask.dtype == torch.float16 and _visible(mask) == [[ISOLATED[3:]]]
    # key 2 (step 0's first member) hidden after step 0: step 1's query no longer sees it
    pruned = _visible(hf_tempo_mask(STEPS, True, hidden_after={2: 0}))
    assert pruned == [[ISOLATED[:4] + [[1, 1, 0, 1, 1]]]]


def test_a_batch_with_pad_slots():
    """Pads (steps below -1) are hidden from every query but themselves."""
    rows = [[-1, 0, 0, 1], [-1, 0, -2, 1]]
    assert _visible(hf_tempo_mask(rows, True)) == [
        [[[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]]],
        [[[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]]],
    ]
