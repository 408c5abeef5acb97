"""The independent reference: Hugging Face transformers given explicit `position_ids` and
a 4D additive mask. Positions and steps are built here from the list of sets with plain
loops, and the mask by `tempo_lens.testing.hf_tempo_mask` from the steps alone —
sharing no code with tempo_lens's Layout or hooks."""

from __future__ import annotations

import torch

from tempo_lens.testing import hf_tempo_mask


def tempo_inputs(
    prompt: list[int],
    sets: list[list[int]],
    isolate: bool,
    pruned: dict[tuple[int, int], int] | None = None,
):
    """Token ids, logical positions and the [1, 1, n, n] additive mask of a TEMPO layout.

    `pruned` maps (set index, member index) to the step after which that member is
    hidden: every query of a later set may not attend to it."""
    ids, pos, steps = list(prompt), list(range(len(prompt))), [-1] * len(prompt)
    hidden_after = {}
    for i, members in enumerate(sets):
        for j, t in enumerate(members):
            if (pruned or {}).get((i, j)) is not None:
                hidden_after[len(ids)] = pruned[(i, j)]
            ids.append(t)
            pos.append(len(prompt) + i)
            steps.append(i)
    mask = hf_tempo_mask(steps, isolate, hidden_after=hidden_after)
    return torch.tensor([ids]), torch.tensor([pos]), mask


def hf_tempo_logits(hf, prompt: list[int], sets: list[list[int]], isolate: bool, pruned=None):
    ids, pos, mask = (t.to(hf.device) for t in tempo_inputs(prompt, sets, isolate, pruned))
    with torch.no_grad():
        return hf(input_ids=ids, position_ids=pos, attention_mask=mask).logits


def hf_live_pruning(
    hf, prompt: list[int], sets: list[list[int]], isolate: bool, ratio: float
) -> dict[tuple[int, int], int]:
    """Live retroactive pruning recomputed with Hugging Face, step by step: after set t is
    read, every member of an earlier multi-member set is scored by the mean attention
    (over layers, heads and every query of sets after its own, up to t) it receives,
    with the members pruned so far masked; members scoring <= ratio x their set's mean
    are hidden from later sets. Returns {(set, member): step after which it is hidden}."""
    pruned: dict[tuple[int, int], int] = {}
    for t in range(len(sets)):
        ids, pos, mask = (
            x.to(hf.device) for x in tempo_inputs(prompt, sets[: t + 1], isolate, pruned)
        )
        with torch.no_grad():
            out = hf(input_ids=ids, position_ids=pos, attention_mask=mask, output_attentions=True)
        attn = torch.stack([a[0].double() for a in out.attentions]).mean((0, 1)).cpu()
        start = [len(prompt)]
        for members in sets:
            start.append(start[-1] + len(members))
        for s in range(t):
            if len(sets[s]) < 2:
                continue
            queries = range(start[s + 1], start[t + 1])
            scores = [
                sum(float(attn[q, start[s] + j]) for q in queries) / len(queries)
                for j in range(len(sets[s]))
            ]
            mean = sum(scores) / len(scores)
            for j, score in enumerate(scores):
                if score <= ratio * mean and (s, j) not in pruned:
                    pruned[(s, j)] = t
    return pruned


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """What stays fixed when TL processes weights: `center_unembed` shifts each logit row
    by a constant, so processed models are compared with HF on log-softmax."""
    return logits.float().log_softmax(-1)


def hf_tempo_generate(
    hf, prompt: list[int], threshold: float, max_steps: int, isolate: bool, eos_token_id=None
) -> tuple[list[list[int]], list[list[float]]]:
    """TEMPO's selection rule (docs: "Selection rule", next_from="mixture") run on Hugging
    Face logits alone, recomputing the whole layout every step: the sets and their
    members' probabilities."""
    sets: list[list[int]] = []
    probs: list[list[float]] = []
    for _ in range(max_steps):
        logits = hf_tempo_logits(hf, prompt, sets, isolate)[0].float().cpu()
        if not sets:
            dist = logits[-1].softmax(-1)
        else:
            rows = logits[-len(sets[-1]) :].softmax(-1)
            w = torch.tensor(probs[-1])
            dist = ((w / w.sum())[:, None] * rows).sum(0)
        values = dist.tolist()
        passing = sorted(
            (t for t, p in enumerate(values) if p >= threshold), key=lambda t: -values[t]
        )
        members = passing or [int(dist.argmax())]
        if eos_token_id is not None:
            members = [t for i, t in enumerate(members) if i == 0 or t != eos_token_id]
        sets.append(members)
        probs.append([values[t] for t in members])
        if eos_token_id is not None and members[0] == eos_token_id:
            break
    return sets, probs
