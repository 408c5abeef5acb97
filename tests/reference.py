"""The independent reference: Hugging Face transformers given explicit `position_ids` and
a 4D additive mask. The mask and positions are built here from the list of sets with
plain loops — deliberately sharing no code with tempo_lens's Layout or hooks."""

from __future__ import annotations

import torch


def tempo_inputs(prompt: list[int], sets: list[list[int]], isolate: bool):
    """Token ids, logical positions and the [1, 1, n, n] additive mask of a TEMPO layout."""
    ids, pos, group = list(prompt), list(range(len(prompt))), [-1] * len(prompt)
    for i, members in enumerate(sets):
        for t in members:
            ids.append(t)
            pos.append(len(prompt) + i)
            group.append(i)
    n = len(ids)
    mask = torch.full((1, 1, n, n), torch.finfo(torch.float32).min)
    for q in range(n):
        for k in range(q + 1):
            hidden = isolate and k != q and group[q] >= 0 and group[q] == group[k]
            if not hidden:
                mask[0, 0, q, k] = 0.0
    return torch.tensor([ids]), torch.tensor([pos]), mask


def hf_tempo_logits(hf, prompt: list[int], sets: list[list[int]], isolate: bool):
    ids, pos, mask = (t.to(hf.device) for t in tempo_inputs(prompt, sets, isolate))
    with torch.no_grad():
        return hf(input_ids=ids, position_ids=pos, attention_mask=mask).logits
