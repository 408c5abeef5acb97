"""The seeds' position-gap condition: Hugging Face's packed-sequence reading of
`position_ids`.

Given `attention_mask=None` and no cache (`use_cache=False`), Hugging Face transformers
(`masking_utils.find_packed_sequence_indices`, present in 5.x) reads `position_ids` as
several sequences packed into one row: a new sequence starts wherever a position is not
the previous one plus 1, and no token attends across sequences. A continuation moved
`gap` positions away from its prompt therefore cannot see the prompt at all, whatever the
gap — the seeds' constant KL over gaps. `packed_hidden` rebuilds that mask as hidden keys,
so `tempo_lens.forward` can run the seeds' condition next to the explicit-mask one.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool

from tempo_lens.hooks import Hook, mask_hooks
from tempo_lens.layout import Layout


def packed_sequence_ids(positions: torch.Tensor) -> torch.Tensor:
    """`[n]` Hugging Face's packed-sequence index of every token (physical order): 0 for the
    first run, +1 at every token whose position is not the previous position + 1 (a jump,
    a repeat or a step back) — `find_packed_sequence_indices`' rule."""
    pos = positions.to(torch.float64).flatten()
    if pos.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[1:] = (pos[1:] - pos[:-1]) != 1
    starts[0] = False
    return starts.long().cumsum(0)


def packed_hidden(layout: Layout) -> Bool[torch.Tensor, "n n"]:
    """`[q, k]` True where key k is hidden from query q under Hugging Face's
    packed-sequence reading of the layout's positions: k lies in another packed sequence
    (`packed_sequence_ids`) than q. For a prompt followed by a continuation that starts
    at a position jump, the continuation's queries see only keys from the jump on. Inside
    one packed sequence positions rise by 1 per token, so the model's causal mask over
    physical order is Hugging Face's causal mask over positions there."""
    seq = packed_sequence_ids(layout.positions)
    return seq[:, None] != seq[None, :]


def packed_sequence_hooks(layout: Layout) -> list[Hook]:
    """Hooks (`hooks.mask_hooks`) hiding the keys of `packed_hidden(layout)`: pass them
    as `tempo_lens.forward(model, layout, fwd_hooks=...)` to replay the layout as Hugging
    Face runs it with `attention_mask=None` and no cache. [] when the layout is one
    packed sequence."""
    hidden = packed_hidden(layout)
    return mask_hooks(layout, hidden) if bool(hidden.any()) else []
