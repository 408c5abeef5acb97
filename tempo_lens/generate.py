"""TEMPO generation: select, append, forward, repeat.

One forward per logical step: the whole new set goes in as the query block on top of a
TransformerLens KV cache, with `position_hooks` and (when isolated) `isolation_hooks`
built from the layout so far. `forward` replays any layout in one pass.
"""

from __future__ import annotations

import difflib
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from transformer_lens import ActivationCache, HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from tempo_lens.errors import TempoError
from tempo_lens.hooks import Hook, check_hook_points, isolation_hooks, position_hooks
from tempo_lens.layout import Layout, ParallelSet
from tempo_lens.run import TempoRun

NEXT_FROM = ("mixture", "last", "first")
TOP_K = 20


# ---------------------------------------------------------------------------------------
# Selection rule (DESIGN.md, exact)
# ---------------------------------------------------------------------------------------


def select(
    probs: torch.Tensor,
    threshold: float,
    max_parallel: int | None = None,
    eos_token_id: int | None = None,
) -> tuple[list[int], list[float]]:
    """Every token with `prob >= threshold`, by descending probability, cut to
    `max_parallel`; the top-1 token if none passes; an EOS below rank 0 is dropped."""
    if not bool(torch.isfinite(probs).all()):
        raise TempoError(
            "the model gave NaN or infinite probabilities; check its weights and the layout's "
            "positions (a damaged weight cache is rebuilt by deleting it)"
        )
    passing = (probs >= threshold).nonzero().flatten()
    if passing.numel() == 0:
        passing = probs.argmax().reshape(1)
    order = torch.sort(probs[passing], descending=True, stable=True).indices
    chosen = passing[order]
    if max_parallel is not None:
        chosen = chosen[:max_parallel]
    tokens = chosen.tolist()
    if eos_token_id is not None and eos_token_id in tokens[1:]:
        tokens = [t for i, t in enumerate(tokens) if i == 0 or t != eos_token_id]
    return tokens, probs[tokens].tolist()


def next_distribution(
    rows: torch.Tensor, member_probs: Sequence[float], next_from: str
) -> torch.Tensor:
    """The distribution the next set is selected from, given the set's logit rows
    `[k, vocab]` in physical (= descending probability) order."""
    if next_from == "last":
        return torch.softmax(rows[-1].float(), -1)
    if next_from == "first":
        return torch.softmax(rows[0].float(), -1)
    w = torch.tensor(member_probs, dtype=torch.float32, device=rows.device)
    w = w / w.sum()
    return (w[:, None] * torch.softmax(rows.float(), -1)).sum(0)


# ---------------------------------------------------------------------------------------
# Capture and one forward
# ---------------------------------------------------------------------------------------


def resolve_hook_names(model: HookedTransformer, names: Iterable[str]) -> list[str]:
    """Full TL hook names for `names`: exact names, or suffixes such as "hook_pattern"
    (every layer's `blocks.L.attn.hook_pattern`)."""
    if isinstance(names, str | bytes) or not isinstance(names, Iterable):
        raise TempoError(
            f"cache takes a list of hook names such as ['hook_pattern'], got {names!r}"
        )
    available = list(model.hook_dict)
    resolved: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise TempoError(f"cache: hook names are strings such as 'hook_pattern', got {name!r}")
        hits = [h for h in available if h == name or h.endswith("." + name)]
        if not hits:
            near = difflib.get_close_matches(name, {h.rsplit(".", 1)[-1] for h in available}, 1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise TempoError(f"cache name {name!r} matches no hook of this model{hint}")
        resolved += [h for h in hits if h not in resolved]
    return resolved


def _capture_hooks(names: Sequence[str], store: dict[str, torch.Tensor]) -> list[Hook]:
    def save(act: torch.Tensor, hook: Any) -> None:
        store[hook.name] = act.detach().clone()

    return [(name, save) for name in names]


def _model_forward(
    model: HookedTransformer,
    layout: Layout,
    n_query: int,
    hooks: list[Hook],
    past_kv_cache: TransformerLensKeyValueCache | None,
) -> torch.Tensor:
    device = model.cfg.device
    tokens = layout.tokens[len(layout) - n_query :][None].to(device)
    # An explicit all-ones mask: TL would otherwise infer padding from the pad token id,
    # which for many tokenizers is also a real generated token (EOS).
    attention_mask = torch.ones_like(tokens)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model(tokens, attention_mask=attention_mask, past_kv_cache=past_kv_cache)


def mechanism_hooks(model: HookedTransformer, layout: Layout, isolate: bool) -> list[Hook]:
    """Position hooks plus, when `isolate`, isolation hooks: what makes a layout a layout."""
    return position_hooks(model, layout) + (isolation_hooks(layout) if isolate else [])


def forward(
    model: HookedTransformer,
    layout: Layout,
    *,
    isolate: bool = True,
    fwd_hooks: Sequence[Hook] = (),
    cache: Iterable[str] | bool | None = None,
) -> tuple[torch.Tensor, ActivationCache | None]:
    """Replay a whole layout in one forward: logits `[1, n, d_vocab]` and, if `cache`
    names hooks (or is True for all), a TL `ActivationCache` of them.

    `fwd_hooks` run after the mechanism's own hooks at the same hook point, so they see
    logical positions and the isolation mask already applied."""
    _check_fits(model, layout, fwd_hooks)
    store: dict[str, torch.Tensor] = {}
    capture: list[Hook] = []
    if cache:
        names = list(model.hook_dict) if cache is True else resolve_hook_names(model, cache)
        capture = _capture_hooks(names, store)
    hooks = mechanism_hooks(model, layout, isolate) + list(fwd_hooks) + capture
    logits = _model_forward(model, layout, len(layout), hooks, None)
    return logits, (ActivationCache(store, model) if cache else None)


def _check_fits(model: HookedTransformer, layout: Layout, fwd_hooks: Sequence[Hook] = ()) -> None:
    """A layout (and extra hooks) this model can run: length, token ids, hook names."""
    n = len(layout)
    if n > model.cfg.n_ctx:
        raise TempoError(
            f"{n} tokens exceed the model's context of {model.cfg.n_ctx}; shorten the input"
        )
    if n and int(layout.tokens.max()) >= model.cfg.d_vocab:
        raise TempoError(
            f"token id {int(layout.tokens.max())} is outside this model's vocabulary "
            f"[0, {model.cfg.d_vocab})"
        )
    check_hook_points(model, fwd_hooks)


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------

Threshold = float | Callable[[int, int], float]


def _validate(
    threshold: Threshold, max_steps: int, next_from: str, max_parallel: int | None
) -> None:
    if not callable(threshold):
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise TempoError(
                f"threshold must be a number in (0, 1] or a callable, got {threshold!r}"
            )
        if not 0.0 < threshold <= 1.0:  # NaN fails too
            raise TempoError(f"threshold must lie in (0, 1], got {threshold}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise TempoError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    if not isinstance(next_from, str) or next_from not in NEXT_FROM:
        raise TempoError(f"next_from must be one of {', '.join(NEXT_FROM)}, got {next_from!r}")
    if max_parallel is not None and (
        isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1
    ):
        raise TempoError(f"max_parallel must be an integer >= 1 or None, got {max_parallel!r}")


def tokenize(model: HookedTransformer, prompt: str | Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise TempoError("the prompt is empty; pass some text")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise TempoError("the prompt is not valid UTF-8 text; fix its encoding") from None
        if model.tokenizer is None:
            raise TempoError("this model has no tokenizer; pass the prompt as token ids")
        ids = model.to_tokens(prompt, prepend_bos=model.cfg.default_prepend_bos, truncate=False)
        return ids[0].tolist()
    try:
        ids_t = torch.as_tensor(prompt)
    except (TypeError, ValueError, RuntimeError):
        raise TempoError(
            f"the prompt must be text or a sequence of token ids, got {type(prompt).__name__}"
        ) from None
    if ids_t.is_floating_point() or ids_t.is_complex() or ids_t.dtype == torch.bool:
        raise TempoError(f"token ids must be integers, got {ids_t.dtype}")
    tokens = ids_t.flatten().tolist()
    if not tokens:
        raise TempoError("the prompt is empty; pass some tokens")
    vocab = model.cfg.d_vocab
    bad = [t for t in tokens if not 0 <= t < vocab]
    if bad:
        raise TempoError(f"token id {bad[0]} is outside this model's vocabulary [0, {vocab})")
    return tokens


def token_strings(model: HookedTransformer, tokens: Sequence[int]) -> list[str]:
    if model.tokenizer is None:
        return [f"<{t}>" for t in tokens]
    return model.tokenizer.batch_decode([[t] for t in tokens], clean_up_tokenization_spaces=False)


def generate(
    model: HookedTransformer,
    prompt: str | Sequence[int] | torch.Tensor,
    *,
    threshold: Threshold = 0.1,
    max_steps: int = 15,
    isolate: bool = True,
    next_from: str = "mixture",
    max_parallel: int | None = None,
    cache: Iterable[str] | None = None,
    progress: bool = False,
    use_kv_cache: bool = True,
    keep_logits: bool = False,
    fwd_hooks: Sequence[Hook] = (),
    eos_token_id: int | None = -1,
) -> TempoRun:
    """Generate with TEMPO: at each logical step keep every token whose probability
    passes `threshold` (DESIGN.md's selection rule), append the set at one shared
    position, and run one forward with the set as the query block.

    `threshold` may be a callable `(step, max_steps) -> float` (dynamic schedules).
    `cache` names hooks to capture at every forward (TL names or suffixes).
    `use_kv_cache=False` recomputes the whole layout every step (the reference path).
    `keep_logits` stores each forward's logit rows in the run. `eos_token_id=-1` means
    the tokenizer's EOS; None disables EOS stopping.
    """
    _validate(threshold, max_steps, next_from, max_parallel)
    prompt_tokens = tokenize(model, prompt)
    n_ctx = model.cfg.n_ctx
    if len(prompt_tokens) >= n_ctx:
        raise TempoError(
            f"the prompt has {len(prompt_tokens)} tokens but the model's context is {n_ctx}; "
            "shorten the prompt"
        )
    names = resolve_hook_names(model, cache) if cache else []
    if eos_token_id == -1:
        eos_token_id = getattr(model.tokenizer, "eos_token_id", None)

    t0 = time.perf_counter()
    layout = Layout.from_prompt(prompt_tokens)
    kv = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    activations: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    logit_rows: list[torch.Tensor] = []

    def run_block(n_query: int) -> torch.Tensor:
        store: dict[str, torch.Tensor] = {}
        hooks = mechanism_hooks(model, layout, isolate) + list(fwd_hooks)
        hooks += _capture_hooks(names, store)
        if use_kv_cache:
            logits = _model_forward(model, layout, n_query, hooks, kv)[0]
        else:
            logits = _model_forward(model, layout, len(layout), hooks, None)[0, -n_query:]
            store = {k: _last_queries(k, v, n_query) for k, v in store.items()}
        for name in names:
            activations[name].append(store[name][0].cpu())
        if keep_logits:
            logit_rows.append(logits.detach().cpu())
        return logits

    steps: list[ParallelSet] = []
    topk_ids: list[torch.Tensor] = []
    topk_probs: list[torch.Tensor] = []
    stop_reason = "max_steps"
    rows = run_block(len(layout))
    probs = torch.softmax(rows[-1].float(), -1)
    bar = _progress(max_steps, progress)
    for step in range(max_steps):
        thr = threshold(step, max_steps) if callable(threshold) else threshold
        members, member_probs = select(probs, thr, max_parallel, eos_token_id)
        if len(layout) + len(members) > n_ctx:
            stop_reason = "n_ctx"
            break
        top = torch.topk(probs, min(TOP_K, probs.shape[-1]))
        topk_ids.append(top.indices.cpu())
        topk_probs.append(top.values.cpu())
        steps.append(ParallelSet(members, member_probs, layout.next_position))
        layout = layout.append_set(members)
        bar.update(1)
        if eos_token_id is not None and members[0] == eos_token_id:
            stop_reason = "eos"
            break
        if step == max_steps - 1 and not (names or keep_logits):
            break  # the last set's rows are only needed for capture
        rows = run_block(len(members))
        probs = next_distribution(rows, member_probs, next_from)
    bar.close()
    if stop_reason == "eos" and (names or keep_logits):
        run_block(len(steps[-1]))

    return TempoRun(
        prompt=prompt if isinstance(prompt, str) else None,
        model_name=model.cfg.model_name,
        config={
            "threshold": threshold
            if not callable(threshold)
            else getattr(threshold, "spec", repr(threshold)),
            "max_steps": max_steps,
            "isolate": isolate,
            "next_from": next_from,
            "max_parallel": max_parallel,
            "eos_token_id": eos_token_id,
            "use_kv_cache": use_kv_cache,
        },
        layout=layout,
        steps=steps,
        token_strs=token_strings(model, layout.tokens.tolist()),
        topk_ids=torch.stack(topk_ids) if topk_ids else torch.zeros(0, TOP_K, dtype=torch.long),
        topk_probs=torch.stack(topk_probs) if topk_probs else torch.zeros(0, TOP_K),
        stop_reason=stop_reason,
        seconds=time.perf_counter() - t0,
        activations=activations,
        logits=logit_rows if keep_logits else None,
    )


def _last_queries(name: str, act: torch.Tensor, n_query: int) -> torch.Tensor:
    """Cut a full-recompute activation down to what the cached path captures: the query
    rows of the new block (patterns and scores keep all keys)."""
    if name.endswith(("hook_pattern", "hook_attn_scores")):
        return act[..., -n_query:, :]
    if name.endswith("hook_rot_k"):
        return act  # re-rotated over all keys on every call, cached or not
    return act[:, -n_query:]


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="step", file=sys.stderr, leave=False)
