"""Attention of a whole run, and circuitsvis views of it.

Views use the *full-layout* pattern `[heads, n, n]`: one row per physical token, every set
member included. A run captured with `cache=["hook_pattern"]` holds it in pieces (forward 0
= the prompt rows, forward s + 1 = step s's rows, each over all keys so far); a run without
it is replayed in one `forward` over its layout — under the same mechanism, that is the
same pattern generation computed, assembled.

Set members share a logical position, so a label is `token·position` and siblings stay
apart (`The·7`, `She·7`); circuitsvis only draws what we hand it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Float

from tempo_lens.errors import TempoError
from tempo_lens.run import TempoRun
from tempo_lens.viz.notebook import CircuitsVisView

PATTERN = "hook_pattern"
# Masked cells (a sibling hidden by isolation) are drawn as this value in this colour,
# apart from attention that is merely ~0 (white).
MASKED = -1.0
FALLBACK_MARK = " †"  # a set that is the top-1 fallback: no token passed the threshold
MASKED_COLOR = "#f59e0b"  # amber: apart from the grey upper triangle


def pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.{PATTERN}"


def show_token(token: str) -> str:
    """A token as a short visible label: inner text kept, whitespace-only tokens drawn."""
    body = token.strip()
    if body:
        return body.replace("\n", "⏎")
    return "⏎" * token.count("\n") if "\n" in token else "␣" * max(len(token), 1)


def _position(p: float | int) -> str:
    return str(int(p)) if float(p).is_integer() else f"{float(p):g}"


def token_labels(run: TempoRun) -> list[str]:
    """One label per physical token, numbered once: circuitsvis already appends each row's
    physical index, so prompt tokens are just their text. A generated set's members are
    grouped by brackets (`┌The @7`, `├She`, `└It`) and its first member carries the set's
    logical position (`@7`); a single-member set reads `The @7`, and `The @7 †` when it is
    the top-1 fallback (no token passed the threshold). Members that still read
    the same (different ids that decode alike) get their token id appended."""
    labels = [show_token(s) for s in run.token_strs]
    fallback = set(fallback_steps(run))
    for i in range(len(run.steps)):
        sl = run.layout.set_slice(i)
        k = sl.stop - sl.start
        for j in range(k):
            mark = "" if k == 1 else "┌" if j == 0 else "└" if j == k - 1 else "├"
            where = f" @{_position(run.layout.positions[sl.start])}" if j == 0 else ""
            where += FALLBACK_MARK if i in fallback else ""
            labels[sl.start + j] = f"{mark}{labels[sl.start + j]}{where}"
        body = [lab.lstrip("┌├└").split(" @")[0].removesuffix(FALLBACK_MARK) for lab in labels[sl]]
        ids = run.layout.tokens[sl].tolist()
        for j, b in enumerate(body):
            if body.count(b) > 1:
                labels[sl.start + j] += f"#{ids[j]}"
    return labels


def replay_caveat(run: TempoRun) -> str:
    """Why a replay of `run` is not the run: it had forward hooks a replay cannot rerun."""
    p = run.provenance
    if p is None or p.replayable:
        return ""
    hooks = ", ".join(f"{h.hook} <- {h.function}" for h in p.fwd_hooks)
    return (
        f"the run was generated with {len(p.fwd_hooks)} forward hook(s) ({hooks}); a replay "
        "runs without them, so replayed attention is not the run's"
    )


def masked_cells(run: TempoRun) -> torch.Tensor:
    """`[n, n]` True where the run's mask hid a key from a query that causality allows
    (isolated siblings): drawn apart from attention that is merely zero."""
    if not run.config.isolate:
        return torch.zeros(len(run.layout), len(run.layout), dtype=torch.bool)
    return run.layout.same_set().tril()


def fallback_steps(run: TempoRun) -> list[int]:
    """Steps whose set is the top-1 fallback: no token passed the (numeric) threshold."""
    threshold = run.config.threshold
    if not isinstance(threshold, int | float):
        return []
    return [i for i, ps in enumerate(run.steps) if len(ps) == 1 and ps.probs[0] < float(threshold)]


def captured_layers(run: TempoRun) -> list[int]:
    """Layers whose pattern the run captured at every forward."""
    out = []
    for name, acts in run.activations.items():
        if name.endswith(f".attn.{PATTERN}") and acts:
            rows = sum(a.shape[-2] for a in acts)
            if rows == len(run.layout):
                out.append(int(name.split(".")[1]))
    return sorted(out)


def assemble_pattern(run: TempoRun, layer: int) -> Float[torch.Tensor, "heads n n"]:
    """A captured layer's per-forward pieces `[heads, Q, K]` stacked into `[heads, n, n]`."""
    name = pattern_name(layer)
    pieces = run.activations.get(name) or []
    if not pieces:
        raise TempoError(f"{name} was not captured; pass a model to replay it")
    n = len(run.layout)
    out = torch.zeros(pieces[0].shape[0], n, n)
    row = 0
    for piece in pieces:
        q, k = piece.shape[-2:]
        out[:, row : row + q, :k] = piece.float()
        row += q
    if row != n:
        raise TempoError(
            f"layer {layer}'s captured pattern covers {row} of {n} tokens; replay the run "
            "with a model instead (pass model=...)"
        )
    return out


def check_model_matches(run: TempoRun, model: Any) -> None:
    """A replay is only the run's attention under the model that generated it: the run's
    tokens must decode to the same strings under this model's tokenizer."""
    from tempo_lens.generate import token_strings

    ids = run.layout.tokens.tolist()
    if max(ids) >= model.cfg.d_vocab:
        raise TempoError(
            f"the run has token id {max(ids)} but {model.cfg.model_name} has a vocabulary of "
            f"{model.cfg.d_vocab}; pass the model that generated the run (--model)"
        )
    if model.tokenizer is not None and token_strings(model, ids) != run.token_strs:
        raise TempoError(
            f"the run's tokens decode differently under {model.cfg.model_name} than when the "
            f"run was made ({run.model_name}); pass the model that generated it (--model)"
        )


def replay_patterns(
    run: TempoRun, model: Any, layers: Iterable[int]
) -> dict[int, Float[torch.Tensor, "heads n n"]]:
    """Full-layout patterns of `layers` from one forward over the run's layout, under the
    run's own isolation setting."""
    from tempo_lens.generate import forward

    layers = sorted(set(layers))
    if not layers:
        return {}
    bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
    if bad:
        raise TempoError(f"layer {bad[0]} does not exist; the model has {model.cfg.n_layers}")
    check_model_matches(run, model)
    if run.provenance is not None and not run.provenance.replayable:
        import warnings

        warnings.warn(
            f"{replay_caveat(run)}; capture hook_pattern during generation for the real one",
            stacklevel=3,
        )
    _, cache = forward(
        model, run.layout, isolate=run.config.isolate, cache=[pattern_name(x) for x in layers]
    )
    assert cache is not None
    return {layer: cache[pattern_name(layer)][0].float().cpu() for layer in layers}


def full_patterns(
    run: TempoRun, layers: Iterable[int], model: Any = None
) -> dict[int, Float[torch.Tensor, "heads n n"]]:
    """`{layer: [heads, n, n]}`: captured where the run holds it, replayed otherwise."""
    layers = sorted(set(layers))
    have = set(captured_layers(run))
    out = {layer: assemble_pattern(run, layer) for layer in layers if layer in have}
    missing = [layer for layer in layers if layer not in have]
    if missing:
        if model is None:
            raise TempoError(
                f"the run did not capture hook_pattern for layer {missing[0]}; pass a model "
                "to replay it (--model, or model= in Python)"
            )
        out |= replay_patterns(run, model, missing)
    return out


def n_layers_of(run: TempoRun, model: Any = None) -> int:
    if model is not None:
        return int(model.cfg.n_layers)
    have = captured_layers(run)
    if not have:
        raise TempoError("the run has no captured hook_pattern; pass a model to replay it")
    return max(have) + 1


def _prefix_end(run: TempoRun, step: int | None) -> int:
    if step is None:
        return len(run.layout)
    if not 0 <= step < len(run.steps):
        raise TempoError(f"step {step} does not exist; the run has {len(run.steps)} steps")
    return run.layout.set_slice(step).stop


def _heads(n_heads: int, heads: Sequence[int] | None) -> list[int]:
    if heads is None:
        return list(range(n_heads))
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad:
        raise TempoError(f"head {bad[0]} does not exist; the layer has {n_heads} heads")
    return list(heads)


def attention_view(
    run: TempoRun,
    step: int | None = None,
    layer: int = 0,
    heads: Sequence[int] | None = None,
    *,
    model: Any = None,
) -> CircuitsVisView:
    """circuitsvis `AttentionHeads` of one layer, rows = every physical token.

    `step=None` shows the whole run; `step=i` the layout as it stood after step i's set
    (what generation had attended over by then). Without a captured `hook_pattern` the
    run is replayed on `model`. Cells the run's mask hid (isolated siblings) are drawn
    amber at value -1, apart from attention that is merely ~0. Displays inline in Jupyter,
    circuitsvis's bundle carried once per kernel (`tempo_lens.viz.notebook`)."""
    pattern = full_patterns(run, [layer], model)[layer]
    end = _prefix_end(run, step)
    chosen = _heads(pattern.shape[0], heads)
    shown = pattern[chosen, :end, :end].clone()
    shown[:, masked_cells(run)[:end, :end]] = MASKED
    return CircuitsVisView(
        "AttentionHeads",
        {
            "attention": shown,
            "tokens": token_labels(run)[:end],
            "attentionHeadNames": [f"L{layer}H{h}" for h in chosen],
            "maxValue": 1.0,
            "minValue": MASKED,
            "negativeColor": MASKED_COLOR,
            "maskUpperTri": True,
        },
    )


def selection_values(run: TempoRun) -> list[float]:
    """Per physical token: its selection probability (prompt tokens: 0)."""
    values = [0.0] * run.layout.n_prompt
    for ps in run.steps:
        values += [float(p) for p in ps.probs]
    return values


def tokens_view(run: TempoRun) -> CircuitsVisView:
    """circuitsvis colored tokens: every physical token shaded by its selection
    probability (prompt tokens unshaded). Displays inline in Jupyter."""
    return CircuitsVisView(
        "ColoredTokens",
        {
            "tokens": token_labels(run),
            "values": selection_values(run),
            "minValue": 0.0,
            "maxValue": 1.0,
        },
    )
