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

PATTERN = "hook_pattern"


def pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.{PATTERN}"


def _show(token: str) -> str:
    """A token as a short visible label: inner text kept, whitespace-only tokens drawn."""
    body = token.strip()
    if body:
        return body.replace("\n", "⏎")
    return "⏎" * token.count("\n") if "\n" in token else "␣" * max(len(token), 1)


def _position(p: float | int) -> str:
    return str(int(p)) if float(p).is_integer() else f"{float(p):g}"


def token_labels(run: TempoRun) -> list[str]:
    """One label per physical token, `token·position`, unique within every position.

    Members of one set share a position; if two of them still read the same (different
    ids that decode alike), the token id is appended so no two siblings ever collide."""
    positions = run.layout.positions.tolist()
    ids = run.layout.tokens.tolist()
    labels = [f"{_show(s)}·{_position(p)}" for s, p in zip(run.token_strs, positions, strict=True)]
    seen: dict[str, int] = {}
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
    return [
        f"{label}#{tid}" if seen[label] > 1 else label
        for label, tid in zip(labels, ids, strict=True)
    ]


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
    isolate = run.config.get("isolate", True)
    if not isinstance(isolate, bool):
        raise TempoError(
            f"the run's isolate setting {isolate!r} is not a plain on/off; capture "
            "hook_pattern during generation to view its attention"
        )
    _, cache = forward(model, run.layout, isolate=isolate, cache=[pattern_name(x) for x in layers])
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
) -> Any:
    """circuitsvis `attention_heads` of one layer, rows = every physical token.

    `step=None` shows the whole run; `step=i` the layout as it stood after step i's set
    (what generation had attended over by then). Without a captured `hook_pattern` the
    run is replayed on `model`. Displays inline in Jupyter."""
    import circuitsvis as cv

    pattern = full_patterns(run, [layer], model)[layer]
    end = _prefix_end(run, step)
    chosen = _heads(pattern.shape[0], heads)
    return cv.attention.attention_heads(
        attention=pattern[chosen, :end, :end],
        tokens=token_labels(run)[:end],
        attention_head_names=[f"L{layer}H{h}" for h in chosen],
        mask_upper_tri=True,
    )


def selection_values(run: TempoRun) -> list[float]:
    """Per physical token: its selection probability (prompt tokens: 0)."""
    values = [0.0] * run.layout.n_prompt
    for ps in run.steps:
        values += [float(p) for p in ps.probs]
    return values


def tokens_view(run: TempoRun) -> Any:
    """circuitsvis colored tokens: every physical token shaded by its selection
    probability (prompt tokens unshaded). Displays inline in Jupyter."""
    import circuitsvis as cv

    return cv.tokens.colored_tokens(
        tokens=token_labels(run), values=selection_values(run), min_value=0.0, max_value=1.0
    )
