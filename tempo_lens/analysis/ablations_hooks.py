"""Hook builders for ablations: masks other than "isolate every sibling", and batches of
isolation schedules run in one forward.

Same convention as `tempo_lens.hooks`: a forward over a layout of n tokens feeds the last
Q tokens as queries and sees all n tokens as keys. Each builder returns a hook list for
`tempo_lens.forward(..., isolate=False, fwd_hooks=...)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from jaxtyping import Bool, Float

from tempo_lens import Layout, TempoError
from tempo_lens.hooks import Hook, batch_hidden, mask_hooks
from tempo_lens.layout import LayoutBatch


def attention_mask_hooks(
    layout: Layout,
    hidden: Bool[torch.Tensor, "n n"],
    *,
    layers: Iterable[int] | None = None,
    bias: float = -math.inf,
) -> list[Hook]:
    """Add `bias` to the attention score of every (query, key) pair marked in `hidden`
    (`tempo_lens.hooks.mask_hooks`, the one mask builder, on a whole-layout `hidden`).

    The general form of isolation: `hidden = layout.same_set()` is isolation itself;
    any other boolean matrix (a window of siblings, pruned members, branches) is another
    ablation with the same one-line mechanism."""
    n = len(layout)
    if hidden.shape != (n, n):
        raise TempoError(f"hidden must be [{n}, {n}] for this layout, got {tuple(hidden.shape)}")
    return mask_hooks(layout, hidden, layers=layers, bias=bias)


def sibling_window_hooks(
    layout: Layout, k: int, *, layers: Iterable[int] | None = None
) -> list[Hook]:
    """Each member sees only its `k` physically nearest siblings (k=0: isolated; k at
    least the largest set size: visible). Attention is causal, so these are the k
    siblings just before it."""
    if k < 0:
        raise TempoError(f"k must be >= 0, got {k}")
    idx = torch.arange(len(layout))
    far = (idx[:, None] - idx[None, :]).abs() > k
    return attention_mask_hooks(layout, layout.same_set() & far, layers=layers)


def branch_hidden(layout: Layout) -> Bool[torch.Tensor, "n n"]:
    """`[q, k]` True where key k is a non-top member of an earlier set than q's: the
    pairs that "isolation always" (every branch stays on its own) additionally hides."""
    step = layout.step
    first = torch.zeros(len(layout), dtype=torch.bool)
    for s in range(layout.n_steps):
        first[layout.set_slice(s).start] = True
    non_top = (step >= 0) & ~first
    return (step[:, None] > step[None, :]) & non_top[None, :]


def isolate_always_hooks(layout: Layout) -> list[Hook]:
    """Isolation that does not end once a set has been read: siblings never see each
    other AND later tokens see only each set's top member (the others become dead
    branches). Compare with ordinary isolation, which only applies while the set is read:
    later tokens see every member."""
    return attention_mask_hooks(layout, layout.same_set() | branch_hidden(layout))


def pruning_hooks(layout: Layout, pruned: torch.Tensor) -> list[Hook]:
    """Hide `pruned` tokens from every later set (their own siblings are untouched):
    the replay a generation would have seen had those members been pruned."""
    later = layout.step[:, None] > layout.step[None, :]
    return attention_mask_hooks(layout, later & pruned[None, :])


def same_set_bias_hooks(
    layout: Layout | LayoutBatch, bias: Float[torch.Tensor, "batch n_layers n_heads"]
) -> list[Hook]:
    """A batch of isolation schedules in one forward: batch element b adds
    `bias[b, L, h]` to same-set scores of head h at layer L (0 = visible, -inf =
    isolated, finite = partial). Run a Layout's tokens repeated `batch` times, or a
    LayoutBatch with one row per schedule (`replay_batch` hides its pads)."""
    same = batch_hidden(layout, isolate=True) & ~batch_hidden(layout, isolate=False)
    hooks: list[Hook] = []
    for layer in range(bias.shape[1]):
        b_layer = bias[:, layer]
        if bool((b_layer == 0).all()):
            continue
        hooks += mask_hooks(layout, same, layers=[layer], bias=b_layer)
    return hooks
