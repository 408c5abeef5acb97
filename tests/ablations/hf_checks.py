"""Hugging Face computations of the ablations, independent of tempo_lens: the reference's
4D masks (tests/reference.py), swapped per decoder layer or edited, and each layer's
input hidden states edited by forward pre-hooks."""

from __future__ import annotations

import torch

from tests.reference import tempo_inputs


def sets_of(run):
    """(prompt ids, list of sets) of a run, as plain lists for the reference."""
    prompt = run.layout.tokens[run.layout.step < 0].tolist()
    return prompt, [list(s.tokens) for s in run.steps]


def hf_logits(hf, run, masks=None, *, isolate=True, position_ids=None, pre_layer=None):
    """HF logits `[n, vocab]` of a run's layout under the reference's 4D mask; `masks`:
    one 4D mask per layer (swapped in before each decoder layer); `pre_layer`:
    `{layer: fn(hidden_states) -> hidden_states}` applied to each layer's input."""
    prompt, sets = sets_of(run)
    ids, pos, mask = tempo_inputs(prompt, sets, isolate)
    pos = pos if position_ids is None else position_ids
    handles = []
    for L, layer in enumerate(hf.model.layers):

        def pre(mod, args, kwargs, L=L):
            if masks is not None:
                kwargs["attention_mask"] = masks[L]
            if pre_layer and L in pre_layer:
                if args:
                    args = (pre_layer[L](args[0]), *args[1:])
                else:
                    kwargs["hidden_states"] = pre_layer[L](kwargs["hidden_states"])
            return args, kwargs

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.no_grad():
            return hf(input_ids=ids, position_ids=pos, attention_mask=mask).logits[0].double()
    finally:
        for h in handles:
            h.remove()


def masks_of(run):
    """The reference's (isolated, visible) 4D masks of a run."""
    prompt, sets = sets_of(run)
    return tempo_inputs(prompt, sets, True)[2], tempo_inputs(prompt, sets, False)[2]


def kl_rows(p_logits, q_logits, rows):
    """Mean KL(p ‖ q) over `rows`, computed here from log-softmax."""
    lp, lq = p_logits[rows].log_softmax(-1), q_logits[rows].log_softmax(-1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def next_sets(logits, run, next_from="mixture"):
    """`[steps, vocab]` float64 next-set distributions of a run's logits, computed here:
    the probability-weighted mixture of each set's member rows, or its first or last."""
    out = []
    for s, step in enumerate(run.steps):
        probs = torch.softmax(logits[run.layout.set_slice(s)].double(), -1)
        w = torch.tensor(step.probs, dtype=torch.float64)
        pick = {"first": probs[0], "last": probs[-1]}
        out.append(pick.get(next_from, (w[:, None] / w.sum() * probs).sum(0)))
    return torch.stack(out)
