"""TEMPO generation: select, append, forward, repeat.

One forward per logical step: every row's new set goes in as the query block on top of
one batched TransformerLens KV cache (`Decoder`), with `position_hooks` and the one mask
(`hooks.mask_hooks`: pads, isolation, pruning) built from the rows' layouts so far.
`forward` replays any layout, or many, in one pass.

Batches. Rows advance in lockstep. A prompt shorter than the longest is right-padded;
a set smaller than the step's widest is followed by pad slots; a pad is a hidden key
(no query but itself sees it), so every row computes what it computes alone. A row that
stops leaves the batch (its rows of the KV cache are dropped, and columns that are pads
in every remaining row go with them).
"""

from __future__ import annotations

import difflib
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens import ActivationCache
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name

from tempo_lens.backend import Model, backend_of
from tempo_lens.config import NEXT_FROM as NEXT_FROM  # re-exported
from tempo_lens.config import GenerateConfig, Threshold
from tempo_lens.config import validate as validate  # re-exported
from tempo_lens.errors import TempoError
from tempo_lens.hooks import Hook, batch_hidden, check_hook_points, mask_hooks, position_hooks
from tempo_lens.layout import Layout, LayoutBatch, ParallelSet, PrunedMember
from tempo_lens.provenance import Provenance, describe_run
from tempo_lens.run import TempoRun

FORWARD_MEMORY_BUDGET = 1 << 30  # bytes one batched replay may hold (`forward` splits)
TOP_K = 20


# ---------------------------------------------------------------------------------------
# Selection rule (docs/design.md, exact)
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

CacheName = str | tuple[str, int]


def resolve_hook_names(model: Model, names: Iterable[CacheName]) -> list[str]:
    """Full TL hook names for `names`: exact names; suffixes such as "hook_pattern"
    (every layer's `blocks.L.attn.hook_pattern`); TL short names such as "pattern" or
    "resid_post" (every layer); `(name, layer)` pairs as `get_act_name(name, layer)`."""
    if isinstance(names, str | bytes) or not isinstance(names, Iterable):
        raise TempoError(
            f"cache takes a list of hook names such as ['hook_pattern'], got {names!r}"
        )
    available = list(model.hook_dict)
    resolved: list[str] = []
    for name in names:
        if not isinstance(name, str | tuple):
            raise TempoError(f"cache: hook names are strings such as 'pattern', got {name!r}")
        if isinstance(name, tuple):
            short, layer = name
            hits = [get_act_name(short, layer)]
            hits = [h for h in hits if h in model.hook_dict]
            label = repr(name)
        else:
            suffixes = {name}
            if "." not in name and not name.startswith("hook_"):
                suffixes.add(get_act_name(name, 0).removeprefix("blocks.0."))
                suffixes.add(get_act_name(name))
            hits = [
                h
                for h in available
                if h in suffixes or h.endswith(tuple("." + s for s in suffixes))
            ]
            label = repr(name)
        if not hits:
            short = name[0] if isinstance(name, tuple) else name
            near = difflib.get_close_matches(short, {h.rsplit(".", 1)[-1] for h in available}, 1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise TempoError(f"cache name {label} matches no hook of this model{hint}")
        resolved += [h for h in hits if h not in resolved]
    return resolved


def capture_hooks(names: Sequence[str], store: dict[str, torch.Tensor]) -> list[Hook]:
    # Stored under the name asked for: a TransformerBridge resolves TL alias names
    # (`blocks.0.hook_resid_post`) to hook points that carry their own name.
    def saver(name: str) -> Callable[[torch.Tensor, Any], None]:
        def save(act: torch.Tensor, hook: Any) -> None:
            store[name] = act.detach().clone()

        return save

    return [(name, saver(name)) for name in names]


def model_forward(
    model: Model,
    layout: Layout | LayoutBatch,
    n_query: int,
    hooks: list[Hook],
    past_kv_cache: Any,
) -> torch.Tensor:
    """Logits `[batch, n_query, vocab]` of the last `n_query` tokens of every row, through
    the model's backend (`backend.HookedBackend` / `backend.BridgeBackend`)."""
    return backend_of(model).forward(model, LayoutBatch.of(layout), n_query, hooks, past_kv_cache)


def mechanism_hooks(
    model: Model,
    layout: Layout | LayoutBatch,
    isolate: bool,
    n_query: int | None = None,
    hidden: torch.Tensor | None = None,
) -> list[Hook]:
    """Position hooks plus the mask (pads, isolation when `isolate`, and any extra
    `hidden` `[batch, q, n]`) for the last `n_query` queries: what makes a layout a
    layout."""
    mask = batch_hidden(layout, isolate, n_query)
    if hidden is not None:
        mask = mask | hidden
    masks = mask_hooks(layout, mask) if bool(mask.any()) else []
    if not backend_of(model).positions_by_hooks:
        return masks  # the bridge takes logical positions as position_ids
    return position_hooks(model, layout) + masks


def forward(
    model: Model,
    layout: Layout | Sequence[Layout],
    *,
    isolate: bool = True,
    fwd_hooks: Sequence[Hook] = (),
    cache: Iterable[CacheName] | bool | None = None,
    memory_budget: int = FORWARD_MEMORY_BUDGET,
) -> tuple[Any, Any]:
    """Replay a whole layout in one forward: logits `[1, n, d_vocab]` and, if `cache`
    names hooks (or is True for all), a TL `ActivationCache` of them.

    A list of layouts (any lengths) runs as right-padded batches with per-row
    positions and masks, as many rows per forward as `memory_budget` bytes allow (see
    `replay_rows`); it returns a list of logits `[1, n_b, d_vocab]` and a list of
    caches (or None), each exactly what that layout's own replay gives (pads removed).

    `fwd_hooks` run after the mechanism's own hooks at the same hook point, so they see
    logical positions and the isolation mask already applied (on a batch: the padded
    `[batch, ...]` activations)."""
    single = isinstance(layout, Layout)
    layouts = [layout] if single else list(layout)  # type: ignore[list-item]
    if not single and layouts:
        rows = replay_rows(model, max(len(lay) for lay in layouts), cache, memory_budget)
        if rows < len(layouts):
            parts = [
                forward(
                    model,
                    layouts[i : i + rows],
                    isolate=isolate,
                    fwd_hooks=fwd_hooks,
                    cache=cache,
                    memory_budget=memory_budget,
                )
                for i in range(0, len(layouts), rows)
            ]
            logits = [x for part in parts for x in part[0]]
            caches = [c for part in parts for c in part[1]] if cache else None
            return logits, caches
    batch = LayoutBatch.of(layouts)
    _check_fits(model, batch, fwd_hooks)
    store: dict[str, torch.Tensor] = {}
    capture: list[Hook] = []
    if cache:
        names = list(model.hook_dict) if cache is True else resolve_hook_names(model, cache)
        capture = capture_hooks(names, store)
    hooks = mechanism_hooks(model, batch, isolate) + list(fwd_hooks) + capture
    logits = model_forward(model, batch, len(batch), hooks, None)
    if single:
        return logits, (ActivationCache(store, model) if cache else None)
    rows, caches = [], []
    for b in range(len(layouts)):
        cols = batch.real_columns(b)
        rows.append(logits[b : b + 1, cols])
        acts = {
            k: unpad_rows(k, v, b, cols, cols, len(batch), rot_k_all_keys=True)[None]
            for k, v in store.items()
        }
        caches.append(ActivationCache(acts, model))
    return rows, (caches if cache else None)


def replay_rows(
    model: Model, n: int, cache: Any = None, memory_budget: int = FORWARD_MEMORY_BUDGET
) -> int:
    """How many layouts of `n` tokens one replay forward may hold under `memory_budget`
    bytes: per row its logits, one layer's attention scores and MLP activations, and
    (when `cache` names hooks) a pattern-sized capture per layer."""
    cfg = model.cfg
    floats = n * cfg.d_vocab + cfg.n_heads * n * n + 4 * n * max(cfg.d_model, cfg.d_mlp or 0)
    if cache:
        floats += cfg.n_layers * cfg.n_heads * n * n
    return max(1, memory_budget // (4 * floats))


def unpad_rows(
    name: str,
    act: torch.Tensor,
    row: int,
    query_cols: torch.Tensor,
    key_cols: torch.Tensor,
    n: int,
    *,
    rot_k_all_keys: bool = True,
) -> torch.Tensor:
    """Row `row` of an activation captured on a padded grid of `n` columns, pads
    removed: `query_cols` / `key_cols` are the row's own physical columns; the activation
    covers the grid's last queries (all n without a KV cache). `rot_k_all_keys`: whether
    `hook_rot_k` covers every key (HookedTransformer re-rotates the whole cache on every
    call) or only the new block (the bridge's cache stores rotated keys)."""
    x = act[row]
    if name.endswith(("hook_pattern", "hook_attn_scores")):
        return x[..., query_cols - (n - x.shape[-2]), :][..., key_cols]
    if name.endswith("hook_rot_k") and rot_k_all_keys:
        return x[key_cols]
    return x[query_cols - (n - x.shape[0])]


def _check_fits(model: Model, layout: Layout | LayoutBatch, fwd_hooks: Sequence[Hook] = ()) -> None:
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


def tokenize(model: Model, prompt: str | Sequence[int] | torch.Tensor) -> list[int]:
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


def token_strings(model: Model, tokens: Sequence[int]) -> list[str]:
    if model.tokenizer is None:
        return [f"<{t}>" for t in tokens]
    return model.tokenizer.batch_decode([[t] for t in tokens], clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------

Prompt = str | Sequence[int] | torch.Tensor
# `step_hooks(step)`: TL `(name, fn)` hooks for one forward only — the one that gives the
# distribution set `step` is selected from (0: the prompt's forward).
StepHooks = Callable[[int], Sequence[Hook]]


def prune_rule(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """The original TEMPO retroactive-pruning rule on one set's members' attention
    scores: a member is pruned when its score is <= `ratio` x the set's mean score."""
    return scores <= ratio * scores.mean()


class Decoder:
    """A batch of layouts on one TL KV cache. `forward()` runs the newest block (every
    column not yet in the cache) and returns its logits `[batch, q, vocab]`;
    `append(...)` adds the next step's sets; `keep(rows)` lets the other rows leave;
    `hide(row, col, after_step)` hides a key from every query of a later step.

    With `track_attention`, each forward also adds up, per key, the attention (mean over
    layers and heads) it receives from the newest block's queries of later steps
    (`attention_received`, `queries_seen`): the scores live pruning reads."""

    def __init__(
        self,
        model: Model,
        layouts: Sequence[Layout],
        *,
        isolate: bool,
        use_kv_cache: bool = True,
        fwd_hooks: Sequence[Hook] = (),
        track_attention: bool = False,
    ):
        self.model = model
        self.isolate = isolate
        self.fwd_hooks = list(fwd_hooks)
        self.track_attention = track_attention
        self.batch = LayoutBatch.of(list(layouts))
        shape = self.batch.tokens.shape
        # Per key, [batch, n]: the step after which it is hidden (inf: never), attention
        # received from later steps' queries, and how many such queries saw it.
        self.hidden_after = torch.full(shape, math.inf)
        self.attention_received = torch.zeros(shape, dtype=torch.float64)
        self.queries_seen = torch.zeros(shape, dtype=torch.float64)
        self.backend = backend_of(model)
        self.kv = self.backend.new_cache(model, self.batch.batch_size) if use_kv_cache else None
        self.block_start = 0  # first column of the newest block
        self.cached = 0  # columns already in the KV cache

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def rot_k_all_keys(self) -> bool:
        """Whether a cached forward's `hook_rot_k` covers every key (HookedTransformer)
        or only the new block (the bridge)."""
        return self.kv is None or self.backend.rot_k_covers_all_keys

    def _per_key(self) -> list[str]:
        return ["hidden_after", "attention_received", "queries_seen"]

    def forward(self, step_hooks: Sequence[Hook] = ()) -> torch.Tensor:
        """Logits `[batch, q, vocab]` of the newest block; `step_hooks` run at this forward
        only, after the mechanism's and the decoder's `fwd_hooks`."""
        n = len(self.batch)
        n_query = n - self.cached if self.kv is not None else n
        q_step = self.batch.step[:, n - n_query :].to(torch.float64)
        hidden = q_step[:, :, None] > self.hidden_after[:, None, :]
        hooks = mechanism_hooks(self.model, self.batch, self.isolate, n_query, hidden)
        hooks += self.fwd_hooks + list(step_hooks)
        received: list[torch.Tensor] = []
        if self.track_attention:

            def add(pattern: torch.Tensor, hook: HookPoint) -> None:
                received.append(pattern.detach().double().mean(1).cpu())  # [batch, q, n]

            hooks.append((lambda name: name.endswith("attn.hook_pattern"), add))
        logits = model_forward(self.model, self.batch, n_query, hooks, self.kv)
        if received:
            self._add_attention(torch.stack(received).mean(0))
        self.cached = n
        return logits

    def _add_attention(self, attn: torch.Tensor) -> None:
        """Add the newest block's queries' attention to keys of earlier steps."""
        n = len(self.batch)
        q0 = self.block_start
        attn = attn[:, q0 - (n - attn.shape[1]) :]
        s_q = self.batch.step[:, q0:, None]
        later = (s_q > self.batch.step[:, None, :]) & (self.batch.step[:, None, :] >= 0)
        self.attention_received += (attn * later).sum(1)
        self.queries_seen += later.sum(1)

    def hide(self, row: int, col: int, after_step: int) -> None:
        self.hidden_after[row, col] = after_step

    def append(
        self, members: Sequence[Sequence[int]], positions: Sequence[float], step: int
    ) -> None:
        self.block_start = len(self.batch)
        self.batch = self.batch.append_block(members, positions, [step] * len(members))
        extra = self.batch.tokens.shape[1] - self.hidden_after.shape[1]
        for name in self._per_key():
            old = getattr(self, name)
            fill = math.inf if name == "hidden_after" else 0.0
            setattr(self, name, torch.cat([old, old.new_full((len(members), extra), fill)], 1))

    def block_columns(self, row: int) -> torch.Tensor:
        """Row `row`'s own columns in the newest block."""
        cols = self.batch.real_columns(row)
        return cols[cols >= self.block_start]

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only batch rows `rows` (in that order); drop columns that are now pads in
        every row (physical positions shift; the position hooks follow)."""
        if list(rows) == list(range(self.batch.batch_size)):
            return
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        batch = self.batch.select_rows(rows)
        cols = (~batch.pad).any(0).nonzero().flatten()
        self.batch = batch.select_columns(cols)
        for name in self._per_key():
            setattr(self, name, getattr(self, name)[idx][:, cols])
        self.block_start = int((cols < self.block_start).sum())
        if self.kv is not None:
            cached_cols = cols[cols < self.cached]
            self.backend.keep(self.kv, idx, cached_cols)
            self.cached = int(cached_cols.numel())


@dataclass
class _Row:
    """One prompt's generation so far."""

    layout: Layout
    steps: list[ParallelSet] = field(default_factory=list)
    topk_ids: list[torch.Tensor] = field(default_factory=list)
    topk_probs: list[torch.Tensor] = field(default_factory=list)
    activations: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    logits: list[torch.Tensor] = field(default_factory=list)
    probs: torch.Tensor | None = None
    stop_reason: str | None = None
    redo: bool = False
    pruned: list[PrunedMember] = field(default_factory=list)


class _Generation:
    """The loop shared by `generate` and `generate_stream`: `sets()` yields
    `(row, ParallelSet)` as each is chosen; afterwards `rows` holds every row's result."""

    def __init__(
        self,
        model: Model,
        prompts: list[list[int]],
        config: GenerateConfig,
        names: list[str],
        keep_logits: bool,
        fwd_hooks: Sequence[Hook],
        step_hooks: StepHooks | None = None,
    ):
        self.model, self.config, self.names = model, config, names
        self.keep_logits = keep_logits
        self.step_hooks = step_hooks
        self.step = 0  # the forward about to run: 0 reads the prompt, s + 1 reads set s
        self.used_step_hooks: list[Hook] = []  # each distinct (point, function) once
        self._seen: set[tuple[str, str]] = set()
        self.rows = [
            _Row(Layout.from_prompt(p), activations={n: [] for n in names}) for p in prompts
        ]
        self.decoder = Decoder(
            model,
            [r.layout for r in self.rows],
            isolate=config.isolate,
            use_kv_cache=config.use_kv_cache,
            fwd_hooks=fwd_hooks,
            track_attention=config.prune is not None,
        )
        self.live = list(range(len(prompts)))  # run index of every batch row

    def _forward(self, first: bool) -> None:
        """One forward over the newest block, with this step's hooks (the capture and the
        user's `step_hooks`); record each row's logit rows and captures and the
        distribution its next set is selected from."""
        dec, cfg = self.decoder, self.config
        store: dict[str, torch.Tensor] = {}
        hooks = capture_hooks(self.names, store)
        if self.step_hooks is not None:
            user = list(self.step_hooks(self.step))
            check_hook_points(self.model, user)
            self.used_step_hooks += [h for h in user if _hook_key(h) not in self._seen]
            self._seen |= {_hook_key(h) for h in user}
            hooks += user
        logits = dec.forward(hooks)
        self.step += 1
        n = len(dec)
        for b, i in enumerate(self.live):
            row = self.rows[i]
            q_cols = dec.block_columns(b)
            rows = logits[b, q_cols - (n - logits.shape[1])]
            for name in self.names:
                if name not in store:
                    raise TempoError(
                        f"hook {name!r} exists but did not run in this model's forward (a "
                        "TransformerBridge adapter may not call it); capture another hook"
                    )
                key_cols = dec.batch.real_columns(b)
                act = unpad_rows(
                    name, store[name], b, q_cols, key_cols, n, rot_k_all_keys=dec.rot_k_all_keys
                )
                row.activations[name].append(act.cpu())
            if self.keep_logits:
                row.logits.append(rows.detach().cpu())
            if first:
                row.probs = torch.softmax(rows[-1].float(), -1)
            elif row.stop_reason is None:
                row.probs = next_distribution(rows, row.steps[-1].probs, cfg.next_from)
            if cfg.prune is not None and not first:
                self._prune(b, row)

    def _prune(self, b: int, row: _Row) -> None:
        """Live retroactive pruning after the forward of the row's newest set: every
        earlier multi-member set's members are scored by the mean attention the later
        steps' queries paid them so far; `prune_rule` failures are hidden from every
        query of a later step."""
        dec, step = self.decoder, len(row.steps) - 1
        cols = dec.batch.real_columns(b)
        key_step = dec.batch.step[b, cols]
        seen = dec.queries_seen[b, cols]
        score = dec.attention_received[b, cols] / seen.clamp(min=1)
        for s in range(step):
            members = (key_step == s).nonzero().flatten()
            if members.numel() < 2:
                continue
            fails = prune_rule(score[members], float(self.config.prune))  # type: ignore[arg-type]
            for j in fails.nonzero().flatten().tolist():
                col = int(cols[members[j]])
                if dec.hidden_after[b, col] < math.inf:
                    continue  # already pruned
                dec.hide(b, col, step)
                token = row.steps[s].tokens[j]
                row.pruned.append(PrunedMember(step, s, j, token, float(score[members[j]])))

    def sets(self) -> Iterator[tuple[int, ParallelSet]]:
        cfg, model = self.config, self.model
        n_ctx = model.cfg.n_ctx
        capture = bool(self.names or self.keep_logits)
        self._forward(first=True)
        for step in range(cfg.max_steps):
            thr = cfg.threshold_at(step)
            chosen: dict[int, list[int]] = {}
            for i in self.live:
                row = self.rows[i]
                assert row.probs is not None
                members, member_probs = select(row.probs, thr, cfg.max_parallel, cfg.eos_token_id)
                if len(row.layout) + len(members) > n_ctx:
                    row.stop_reason = "n_ctx"
                    continue
                top = torch.topk(row.probs, min(TOP_K, row.probs.shape[-1]))
                row.topk_ids.append(top.indices.cpu())
                row.topk_probs.append(top.values.cpu())
                ps = ParallelSet(members, member_probs, row.layout.next_position)
                row.steps.append(ps)
                row.layout = row.layout.append_set(members)
                if cfg.eos_token_id is not None and members[0] == cfg.eos_token_id:
                    row.stop_reason = "eos"
                elif step == cfg.max_steps - 1:
                    row.stop_reason = "max_steps"
                chosen[i] = members
                yield i, ps
            # Rows whose set is still read (or captured) stay; the others leave.
            need = [i for i in self.live if i in chosen and (row_open(self.rows[i]) or capture)]
            if not need:
                break
            self._keep(need)
            width = max(len(chosen[i]) for i in self.live)
            if len(self.decoder) + width > n_ctx:  # padding alone would overflow
                for i in self.live:
                    self.rows[i].redo = True
                break
            self.decoder.append(
                [chosen[i] for i in self.live],
                [self.rows[i].steps[-1].position for i in self.live],
                step,
            )
            self._forward(first=False)
            self._keep([i for i in self.live if row_open(self.rows[i])])
        for row in self.rows:
            row.stop_reason = row.stop_reason or "max_steps"

    def _keep(self, runs: list[int]) -> None:
        self.decoder.keep([self.live.index(i) for i in runs])
        self.live = runs

    def run(
        self, row: _Row, prompt: Prompt, seconds: float, provenance: Provenance | None = None
    ) -> TempoRun:
        return TempoRun(
            prompt=prompt if isinstance(prompt, str) else None,
            model_name=self.model.cfg.model_name,
            config=self.config,
            layout=row.layout,
            steps=row.steps,
            token_strs=token_strings(self.model, row.layout.tokens.tolist()),
            topk_ids=torch.stack(row.topk_ids)
            if row.topk_ids
            else torch.zeros(0, TOP_K, dtype=torch.long),
            topk_probs=torch.stack(row.topk_probs) if row.topk_probs else torch.zeros(0, TOP_K),
            stop_reason=row.stop_reason or "max_steps",
            seconds=seconds,
            activations=row.activations,
            logits=row.logits if self.keep_logits else None,
            pruned=row.pruned,
            provenance=provenance,
        )


def _hook_key(hook: Hook) -> tuple[str, str]:
    point, fn = hook
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    return (point if isinstance(point, str) else repr(point), f"{fn.__module__}.{name}")


def row_open(row: _Row) -> bool:
    return row.stop_reason is None


def generate(
    model: Model,
    prompt: Prompt | list[Prompt],
    *,
    threshold: Threshold = 0.1,
    max_steps: int | None = None,
    max_new_tokens: int | None = None,
    isolate: bool = True,
    next_from: str = "mixture",
    max_parallel: int | None = None,
    cache: Iterable[CacheName] | None = None,
    progress: bool = True,
    use_kv_cache: bool = True,
    keep_logits: bool = False,
    fwd_hooks: Sequence[Hook] = (),
    eos_token_id: int | None = -1,
    prune: float | None = None,
    label: str | None = None,
    step_hooks: StepHooks | None = None,
) -> Any:
    """Generate with TEMPO: at each logical step keep every token whose probability
    passes `threshold` (docs/design.md's selection rule), append the set at one shared
    position, and run one forward with the set as the query block.

    `prompt`: text or token ids (returns one TempoRun), or a list of them (returns a list
    of TempoRun, one per prompt, generated as one batch: one forward per step for all
    rows; each equals its own single run). `threshold` may be a callable
    `(step, max_steps) -> float` (dynamic schedules). `max_new_tokens` is an alias of
    `max_steps` (logical steps; default 15). `cache` names hooks to capture at every
    forward (TL names, suffixes such as "hook_pattern", short names such as "pattern",
    or `(name, layer)` pairs). `use_kv_cache=False` recomputes the whole layout every step
    (the reference path). `keep_logits` stores each forward's logit rows in the run.
    `eos_token_id=-1` means the tokenizer's EOS; None disables EOS stopping. `prune`
    (off by default): live retroactive pruning with that ratio (see `prune_step`).
    On a batch, `fwd_hooks` see the padded `[batch, ...]` activations, and each run's
    `seconds` is the batch's wall time divided by the number of prompts.
    `progress` (on by default) shows a tqdm bar over the logical steps once a run passes 2 s
    (stderr; a widget in notebooks). Captures are in `run.activations`, kept logits in
    `run.logits`. `fwd_hooks` (TL `(name, fn)` pairs) run at every forward after the
    mechanism's hooks; the run's `provenance` names them (and `label`, a note of yours),
    since a saved run cannot replay them. `step_hooks(step)` gives hooks for one forward
    only, the one whose logits set `step` is selected from (0: the prompt's forward): an
    intervention that varies per step; `cache` is built the same way. The provenance
    names every hook it returned.
    """
    config, names = _settings(
        model,
        max_steps,
        max_new_tokens,
        eos_token_id,
        cache,
        threshold=threshold,
        isolate=isolate,
        next_from=next_from,
        max_parallel=max_parallel,
        use_kv_cache=use_kv_cache,
        prune=prune,
    )
    single = not _is_batch(prompt)
    prompts: list[Prompt] = [prompt] if single else list(prompt)  # type: ignore[list-item]
    if not prompts:
        raise TempoError("the list of prompts is empty; give at least one prompt")
    tokens = [_prompt_tokens(model, p) for p in prompts]
    t0 = time.perf_counter()
    gen = _Generation(model, tokens, config, names, keep_logits, fwd_hooks, step_hooks)
    bar = _progress(config.max_steps * len(prompts), progress)
    for _ in gen.sets():
        bar.update(1)
    bar.close()
    seconds = (time.perf_counter() - t0) / len(prompts)
    rows, used = [], gen.used_step_hooks
    for row, toks in zip(gen.rows, tokens, strict=True):
        if row.redo:  # the padded batch outgrew the context; this row alone does not
            redo = _Generation(model, [toks], config, names, keep_logits, fwd_hooks, step_hooks)
            for _ in redo.sets():
                pass
            row, used = redo.rows[0], used + redo.used_step_hooks
        rows.append(row)
    provenance = describe_run(model, list(fwd_hooks) + used, label)
    runs = [gen.run(row, p, seconds, provenance) for row, p in zip(rows, prompts, strict=True)]
    return runs[0] if single else runs


def generate_stream(model: Model, prompt: Prompt, **kwargs: Any) -> Iterator[ParallelSet]:
    """Yield each ParallelSet of a single-prompt `generate` as soon as it is chosen
    (same arguments as `generate`, minus `progress`)."""
    kwargs.pop("progress", None)
    keep_logits = bool(kwargs.pop("keep_logits", False))
    fwd_hooks = kwargs.pop("fwd_hooks", ())
    step_hooks = kwargs.pop("step_hooks", None)
    kwargs.pop("label", None)
    steps = kwargs.pop("max_steps", None), kwargs.pop("max_new_tokens", None)
    config, names = _settings(
        model, *steps, kwargs.pop("eos_token_id", -1), kwargs.pop("cache", None), **kwargs
    )
    tokens = [_prompt_tokens(model, prompt)]
    gen = _Generation(model, tokens, config, names, keep_logits, fwd_hooks, step_hooks)
    for _, ps in gen.sets():
        yield ps


def _settings(
    model: Model,
    max_steps: int | None,
    max_new_tokens: int | None,
    eos_token_id: int | None,
    cache: Iterable[CacheName] | None,
    **config: Any,
) -> tuple[GenerateConfig, list[str]]:
    """The run's `GenerateConfig` (`config`: its other fields as `generate` takes them)
    and the resolved capture names."""
    if max_steps is not None and max_new_tokens is not None and max_steps != max_new_tokens:
        raise TempoError("give max_steps or max_new_tokens (an alias), not both")
    steps = max_steps if max_steps is not None else max_new_tokens
    if eos_token_id == -1:
        eos_token_id = getattr(model.tokenizer, "eos_token_id", None)
    threshold = config.get("threshold")
    if isinstance(threshold, dict | str):  # only a saved run holds a schedule's description
        raise TempoError(f"threshold must be a number in (0, 1] or a callable, got {threshold!r}")
    unknown = sorted(set(config) - set(GenerateConfig.__dataclass_fields__))
    if unknown:
        raise TempoError(f"generate() got an unexpected argument {unknown[0]!r}")
    settings = GenerateConfig(
        max_steps=15 if steps is None else steps, eos_token_id=eos_token_id, **config
    )
    return settings, resolve_hook_names(model, cache) if cache else []


def _is_batch(prompt: Any) -> bool:
    """A list (or tuple) of prompts, not one prompt given as a list of token ids."""
    return isinstance(prompt, list | tuple) and any(
        not isinstance(p, int) and not (isinstance(p, torch.Tensor) and p.ndim == 0) for p in prompt
    )


def _prompt_tokens(model: Model, prompt: Prompt) -> list[int]:
    tokens = tokenize(model, prompt)
    n_ctx = model.cfg.n_ctx
    if len(tokens) >= n_ctx:
        raise TempoError(
            f"the prompt has {len(tokens)} tokens but the model's context is {n_ctx}; "
            "shorten the prompt"
        )
    return tokens


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, disable=not enabled, unit="set", file=sys.stderr, leave=False, delay=2.0
    )
