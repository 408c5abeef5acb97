"""The backend seam: how one forward of a layout's newest block reaches the model.

Two backends run the same mechanism (docs/backends.md):

- `HookedBackend` (`HookedTransformer`, TransformerLens 3.x): logical positions enter at
  the position hooks (`hooks.position_hooks`), TL's own KV cache
  (`TransformerLensKeyValueCache`) stores un-rotated keys and re-rotates all of them on
  every call, so `hook_rot_k` covers every key.
- `BridgeBackend` (`TransformerBridge`, TransformerLens 3.x and 4.x): logical positions go
  to Hugging Face as `position_ids` (its own `rotary_emb` or position table applies them),
  always with an explicit 4D causal mask, on Hugging Face's `DynamicCache`, which stores
  keys already rotated (`hook_rot_k` sees only the new block).

Both share the one mask builder (`hooks.mask_hooks` at `hook_attn_scores`): isolation,
pads and pruning are the same hooks on either backend. Two traps of the bridge are closed
here: it silently ignores a cache argument it does not know (`past_kv_cache=`), so every
cache is type-checked before the call; and repeated `position_ids` without an explicit
mask make Hugging Face treat the input as packed sequences, so `BridgeBackend.forward`
always builds the mask itself.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from tempo_lens.errors import TempoError
from tempo_lens.layout import PAD_STEP, LayoutBatch

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    Model = HookedTransformer | TransformerBridge
else:
    Model = Any  # a HookedTransformer or a TransformerBridge

BACKENDS = ("hooked", "bridge")
Kwargs = dict[str, Any]  # keyword arguments of the model call


def tl_major_version() -> int:
    """The installed TransformerLens major version (3 or 4)."""
    return int(importlib.metadata.version("transformer-lens").split(".")[0])


def has_hooked_transformer() -> bool:
    """Whether this TransformerLens still ships `HookedTransformer` (removed in 4.0)."""
    return tl_major_version() < 4


def default_backend() -> str:
    """`"hooked"` where TransformerLens 3.x is installed, `"bridge"` under 4.x."""
    return "hooked" if has_hooked_transformer() else "bridge"


def check_backend_name(backend: str | None) -> str:
    """The backend a `load_model(..., backend=...)` call gets."""
    if backend is None:
        return default_backend()
    if backend not in BACKENDS:
        raise TempoError(f"backend must be 'hooked' or 'bridge', got {backend!r}")
    if backend == "hooked" and not has_hooked_transformer():
        raise TempoError(
            "TransformerLens 4 removed HookedTransformer; use backend='bridge' "
            "(or install transformer-lens<4)"
        )
    return backend


def is_bridge(model: Any) -> bool:
    """Whether `model` is a TransformerLens `TransformerBridge`."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # pragma: no cover - every supported TL has the bridge
        return False
    return isinstance(model, TransformerBridge)


def _query_block(batch: LayoutBatch, n_query: int) -> tuple[torch.Tensor, int]:
    n = len(batch)
    if not 0 < n_query <= n:
        raise TempoError(f"a forward needs 1..{n} query tokens, got {n_query}")
    return batch.tokens[:, n - n_query :], n


class Backend:
    """What both backends share: one forward of a layout's newest block, the backend's
    own keyword arguments (`model_kwargs`) and cache check around it."""

    wrong_cache = "{}"  # the message for a cache of another type

    cache_class = ("builtins", "object")  # (module, class) of the cache it runs on

    def cached_keys(self, cache: Any) -> int:
        raise NotImplementedError

    def check_cache(self, cache: Any, n_cached: int) -> None:
        """A cache this backend runs on, holding exactly the `n_cached` keys before the
        query block (None: no cache)."""
        if cache is None:
            return
        module, name = self.cache_class
        if not isinstance(cache, getattr(importlib.import_module(module), name)):
            raise TempoError(self.wrong_cache.format(type(cache).__name__))
        have = self.cached_keys(cache)
        if have != n_cached:
            raise TempoError(
                f"the KV cache holds {have} keys but the layout has {n_cached} before the "
                "query block; run the decoder's own cache"
            )

    def model_kwargs(self, model: Model, batch: LayoutBatch, n_query: int, cache: Any) -> Kwargs:
        raise NotImplementedError

    def forward(
        self, model: Model, batch: LayoutBatch, n_query: int, hooks: list, cache: Any
    ) -> torch.Tensor:
        """Logits `[batch, n_query, vocab]` of the last `n_query` tokens of every row."""
        tokens, n = _query_block(batch, n_query)
        self.check_cache(cache, n - n_query if cache is not None else 0)
        kwargs = self.model_kwargs(model, batch, n_query, cache)
        first, last = self.around_hooks(model, batch, n_query)
        hooks = first + list(hooks) + last
        with torch.no_grad(), model.hooks(fwd_hooks=hooks), self.forward_context(model):
            return model(tokens.to(model.cfg.device), **kwargs)

    def around_hooks(self, model: Model, batch: LayoutBatch, n_query: int) -> tuple[list, list]:
        """Hooks of the backend's own that run before and after every given hook at their
        hook points (none, unless a backend says)."""
        return [], []

    def forward_context(self, model: Model) -> contextlib.AbstractContextManager[None]:
        """What surrounds every forward this backend makes (nothing, unless a backend says)."""
        return contextlib.nullcontext()


class HookedBackend(Backend):
    """`HookedTransformer`: positions by hooks, TransformerLens's KV cache."""

    name = "hooked"
    # TL's cache keeps keys un-rotated and `hook_rot_k` re-rotates every cached key.
    rot_k_covers_all_keys = True
    positions_by_hooks = True

    def new_cache(self, model: Model, batch_size: int) -> Any:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        return TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size)

    cache_class = ("transformer_lens.cache.key_value_cache", "TransformerLensKeyValueCache")
    wrong_cache = (
        "a HookedTransformer runs on a TransformerLensKeyValueCache, got {}; let tempo_lens "
        "make the cache (Decoder)"
    )

    def cached_keys(self, cache: Any) -> int:
        return cache.entries[0].past_keys.shape[1] if cache.entries else 0

    def model_kwargs(self, model: Model, batch: LayoutBatch, n_query: int, cache: Any) -> Kwargs:
        # An explicit all-ones mask: TL would otherwise infer padding from the pad token
        # id, which for many tokenizers is also a real generated token (EOS). Pads are
        # hidden keys (`hooks.batch_hidden`), so TL's own padding logic never runs and its
        # rotary and learned positions stay physical (the position hooks move them).
        ones = torch.ones(batch.batch_size, n_query, dtype=torch.long, device=model.cfg.device)
        return {"attention_mask": ones, "past_kv_cache": cache}

    def forward_context(self, model: Model) -> contextlib.AbstractContextManager[None]:
        return fast_forward(model)

    def around_hooks(self, model: Model, batch: LayoutBatch, n_query: int) -> tuple[list, list]:
        return unembed_real_rows(model, batch, n_query)

    def keep(self, cache: Any, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Keep batch rows `rows` and cached columns `cols` of the cache."""
        for entry in cache.entries:
            keep_cols = cols.to(entry.past_keys.device)
            rows_dev = rows.to(entry.past_keys.device)
            entry.past_keys = entry.past_keys[rows_dev][:, keep_cols]
            entry.past_values = entry.past_values[rows_dev][:, keep_cols]
        mask = cache.previous_attention_mask
        cache.previous_attention_mask = mask[rows.to(mask.device)][:, cols.to(mask.device)]


def unembed_real_rows(model: Model, batch: LayoutBatch, n_query: int) -> tuple[list, list]:
    """(first, last) hooks that unembed only the query block's real tokens: nothing reads
    a pad's logits, and a batched step's pads (rows padded to the widest set, rows that
    stopped) are often a third of its rows. The last hook at `unembed.hook_in` (after
    every given one) keeps the real rows; the first at `unembed.hook_out` (before every
    given one) puts their logits back on the `[batch, q, vocab]` grid, zeros at pads, so
    every hook and the caller see TL's shapes. None when there are no pads, or when the
    model carries hooks of its own at those points (they would see the other shape)."""
    unembed = getattr(model, "unembed", None)
    points = [getattr(unembed, name, None) for name in ("hook_in", "hook_out")]
    if any(p is None or p._forward_hooks for p in points):
        return [], []
    real = batch.step[:, len(batch) - n_query :] != PAD_STEP
    if bool(real.all()):
        return [], []
    real = real.to(model.cfg.device)

    def keep(resid: torch.Tensor, hook: Any) -> torch.Tensor:
        return resid[real]

    def put_back(logits: torch.Tensor, hook: Any) -> torch.Tensor:
        grid = logits.new_zeros(*real.shape, logits.shape[-1])
        grid[real] = logits
        return grid

    return [("unembed.hook_out", put_back)], [("unembed.hook_in", keep)]


@contextlib.contextmanager
def fast_forward(model: Model) -> Iterator[None]:
    """Every forward `HookedBackend` makes: `fast_attention` and `fast_unembed` together."""
    with fast_attention(model), fast_unembed(model):
        yield


# Vocabulary rows of W_U.T per product of `fast_unembed`, and the fewest residual rows it
# splits. On the embedded model's 49 152 x 576 unembedding, TL's time over the blocked one
# (`benchmarks/unembed_blocks.py`, this 2-core machine; docs/performance.md): 2.7x at 2
# rows, 3.0x at 4, 2.0x at 8, 1.8x at 16-64, 1.45x at 272. One row keeps TL's
# matrix-vector product: split into blocks it was a little slower (0.87-0.95x).
UNEMBED_BLOCK = 2048
UNEMBED_MIN_ROWS = 2


@contextlib.contextmanager
def fast_unembed(
    model: Model, block: int = UNEMBED_BLOCK, min_rows: int = UNEMBED_MIN_ROWS
) -> Iterator[None]:
    """Inside: a HookedTransformer's unembedding computes TL's `F.linear(x, W_U.T, b_U)`
    on the CPU, when it has at least `min_rows` rows, block by block of the vocabulary:
    `block` rows of W_U.T times xᵀ, each block's `[block, rows]` product transposed into
    its columns of one `[rows, vocab]` output. MKL's product over the whole vocabulary
    at a few rows runs far below its rate (2 rows cost 2x one row); with the vocabulary
    as the long side it does not. Each logit is the same dot product (`torch.equal` to
    TL's on the embedded model at 16 rows and more; at 2-8 rows MKL sums it in another
    order, a float32 rounding: tests/test_backend.py), and `hook_in` / `hook_out` fire as in
    TL, with TL's shapes and a contiguous output. Gradients on, another device, or a
    model whose unembedding is not TL's own `Unembed` keep TL's path; nested use is left
    alone; on exit the module is as before."""
    from transformer_lens.components import Unembed

    unembed = getattr(model, "unembed", None)
    if type(unembed) is not Unembed or "forward" in vars(unembed):
        yield
        return
    vars(unembed)["forward"] = partial(_blocked_unembed, unembed, block, min_rows)
    try:
        yield
    finally:
        vars(unembed).pop("forward", None)


def _blocked_unembed(
    unembed: Any, block: int, min_rows: int, residual: torch.Tensor
) -> torch.Tensor:
    """`fast_unembed`'s forward of TL's `Unembed` (`residual` `[..., d_model]`)."""
    residual = unembed.hook_in(residual)  # a hook here may change the rows (unembed_real_rows)
    weight, bias = unembed.W_U.T, unembed.b_U  # [vocab, d_model]: TL's own F.linear weight
    x = residual.reshape(-1, residual.shape[-1])
    rows, vocab = x.shape[0], weight.shape[0]
    small = rows < min_rows or vocab <= block
    if small or x.device.type != "cpu" or torch.is_grad_enabled():  # out= has no grad
        logits = torch.nn.functional.linear(residual, weight.contiguous(), bias)  # TL's line
        return unembed.hook_out(logits)
    out = x.new_empty(rows, vocab)
    part = x.new_empty(block, rows)  # one block's product, small enough to stay in cache
    for start in range(0, vocab, block):
        cols = slice(start, min(start + block, vocab))
        p = part[: cols.stop - start]
        torch.addmm(bias[cols, None], weight[cols], x.T, out=p)
        out[:, cols].copy_(p.T)
    return unembed.hook_out(out.view(*residual.shape[:-1], vocab))


@contextlib.contextmanager
def fast_attention(model: Model) -> Iterator[None]:
    """Inside: every attention block of a HookedTransformer computes what TL's own path
    computes, the cheaper way (`tests/test_backend.py`: every attention hook and the
    logits equal to float32 rounding, since the grouped matmuls sum the same products in
    another order; on the embedded model's batched step the logits are `torch.equal`):

    - TL's unmasked rotary and causal-mask paths when the forward's `attention_mask` is
      all ones (every forward tempo_lens makes on this backend: pads are hidden keys).
      With such a mask TL's masked paths compute the same values at more cost, per layer
      and call: the rotary cos/sin gathered at cumsum positions (`get_offset_position_ids`)
      instead of sliced, and the causal mask and-ed with it. The rotary itself skips
      `rotate_every_two`'s clone and assignments (`_unmasked_rotary`). A mask with zeros
      (TL's own padding) takes TL's masked paths.
    - Grouped-query attention without `repeat_interleave`: TL copies every key and value
      of the cache once per query head of its group, per layer and call; here one batched
      matmul pairs each key-value head with its group's queries
      (`grouped_attention_scores`, `grouped_z_scores`). Same hook points, shapes and values.

    `docs/performance.md` measures each. Nested use and a block whose methods are already
    replaced are left alone; on exit every block is as before."""
    done = []
    for block in getattr(model, "blocks", ()):
        attn = block.attn
        if any(name in vars(attn) for name in _FAST_ATTENTION):
            continue
        cls = type(attn)

        rotary = partial(_unmasked_rotary, attn, cls, *_rotary_parts(attn))

        def causal(scores: Any, offset: int = 0, mask: Any = None, attn=attn, cls=cls) -> Any:
            return cls.apply_causal_mask(attn, scores, offset, None if _all_ones(mask) else mask)

        # plain instance attributes (not nn.Module state), found before the class's methods
        vars(attn).update(apply_rotary=rotary, apply_causal_mask=causal)
        if _groups_by_repeat(attn):
            vars(attn).update(
                calculate_attention_scores=partial(grouped_attention_scores, attn),
                calculate_z_scores=partial(grouped_z_scores, attn),
            )
        done.append(attn)
    try:
        yield
    finally:
        for attn in done:
            for name in _FAST_ATTENTION:
                vars(attn).pop(name, None)


_FAST_ATTENTION = (
    "apply_rotary",
    "apply_causal_mask",
    "calculate_attention_scores",
    "calculate_z_scores",
)


def _rotary_parts(attn: Any) -> tuple[Any, Any]:
    """(permute, sign) of `attn`'s `rotate_every_two` for a rotary block, else (None, None)."""
    if attn.cfg.positional_embedding_type != "rotary":
        return None, None
    from tempo_lens.hooks import rotate_every_two_parts

    return rotate_every_two_parts(attn)


def _unmasked_rotary(
    attn: Any, cls: type, flip: Any, sign: Any, x: torch.Tensor, offset: int = 0, mask: Any = None
) -> torch.Tensor:
    """TL's `apply_rotary(x, offset)` on its unmasked path (the same values: x · cos +
    rotate_every_two(x) · sin with the ±1 of `rotate_every_two` folded into sin, and no
    copy of the un-rotated tail when the whole head rotates). Anything out of the common
    case (dynamic NTK, a table to extend, another device) goes to TL's own method."""
    n, rd = x.size(1), attn.cfg.rotary_dim
    if not _all_ones(mask):  # padding: TL's masked path (positions from the mask's cumsum)
        return cls.apply_rotary(attn, x, offset, mask)
    if (
        flip is None
        or (attn.cfg.use_dynamic_ntk_rope and not attn.training)
        or offset + n > attn.rotary_cos.shape[0]
        or x.device != attn.rotary_sin.device
    ):
        return cls.apply_rotary(attn, x, offset, None)
    cos = attn.rotary_cos[None, offset : offset + n, None, :]
    sin = attn.rotary_sin[None, offset : offset + n, None, :] * sign
    if rd == x.size(-1):
        return x * cos + flip(x) * sin
    part = x[..., :rd]
    return torch.cat([part * cos + flip(part) * sin, x[..., rd:]], dim=-1)


def _all_ones(mask: torch.Tensor | None) -> bool:
    """Whether an attention mask hides nothing (None, or every entry 1)."""
    return mask is None or bool(mask.all())


def _groups_by_repeat(attn: Any) -> bool:
    """Whether `attn` is TL's grouped-query attention as TL ships it: keys and values
    `[batch, pos, kv_heads, d_head]`, repeated per query head when scores and z are made."""
    from transformer_lens.components import GroupedQueryAttention

    cls = type(attn)
    return (
        isinstance(attn, GroupedQueryAttention)
        and not attn.cfg.ungroup_grouped_query_attention
        and attn.repeat_kv_heads > 1
        and cls.calculate_attention_scores is GroupedQueryAttention.calculate_attention_scores
        and cls.calculate_z_scores is GroupedQueryAttention.calculate_z_scores
    )


def grouped_attention_scores(attn: Any, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """TL's grouped-query `calculate_attention_scores` (q `[b, q, heads, d]`, k
    `[b, k, kv_heads, d]` -> `[b, heads, q, k]`, head h reading key head h // group) as one
    batched matmul of each key-value head with its group's queries, keys not repeated."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    b, n_q, heads, d = q.shape
    kv_heads, n_k = k.shape[2], k.shape[1]
    group = heads // kv_heads
    q_ = q.reshape(b, n_q, kv_heads, group, d).permute(0, 2, 3, 1, 4)
    scores = q_.reshape(b, kv_heads, group * n_q, d) @ k.permute(0, 2, 3, 1)
    scores = scores.view(b, heads, n_q, n_k) / attn.attn_scale
    return apply_softcap(scores, attn.cfg.attn_scores_soft_cap)


def grouped_z_scores(attn: Any, v: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """TL's grouped-query `calculate_z_scores` (v `[b, k, kv_heads, d]`, pattern
    `[b, heads, q, k]` -> `hook_z` of `[b, q, heads, d]`) without repeating the values."""
    b, heads, n_q, n_k = pattern.shape
    kv_heads, d = v.shape[2], v.shape[3]
    group = heads // kv_heads
    z = pattern.reshape(b, kv_heads, group * n_q, n_k) @ v.permute(0, 2, 1, 3)
    z = z.view(b, kv_heads, group, n_q, d).permute(0, 3, 1, 2, 4).reshape(b, n_q, heads, d)
    return attn.hook_z(z)


def hf_is_rotary(hf_model: torch.nn.Module) -> bool:
    """Whether a Hugging Face model applies rotary embeddings (it has a `rotary_emb`
    module): read off the model itself, not the bridge's `cfg.rotary_*`."""
    return any(name.endswith("rotary_emb") for name, _ in hf_model.named_modules())


class BridgeBackend(Backend):
    """`TransformerBridge`: `position_ids` and an explicit 4D mask, Hugging Face's cache."""

    name = "bridge"
    # Hugging Face's cache stores rotated keys; `hook_rot_k` sees only the new block.
    rot_k_covers_all_keys = False
    positions_by_hooks = False

    def new_cache(self, model: Model, batch_size: int) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=model.original_model.config)

    cache_class = ("transformers", "Cache")
    # The bridge forwards unknown keywords to Hugging Face, which ignores them: a
    # TransformerLens cache would be dropped and every key recomputed wrongly.
    wrong_cache = (
        "a TransformerBridge runs on Hugging Face's cache (DynamicCache), got {}, which the "
        "bridge would silently ignore; let tempo_lens make the cache (Decoder)"
    )

    def cached_keys(self, cache: Any) -> int:
        return int(cache.get_seq_length())

    def position_ids(self, model: Model, batch: LayoutBatch, n_query: int) -> torch.Tensor:
        """The query block's logical positions, as Hugging Face takes them."""
        pos = batch.positions[:, len(batch) - n_query :]
        rotary = hf_is_rotary(model.original_model)
        if pos.is_floating_point():
            if not rotary and not torch.equal(pos, pos.round()):
                raise TempoError(
                    "fractional positions need a rotary model; this one has learned "
                    "absolute positions"
                )
            if not rotary:
                pos = pos.long()
        if not rotary and (int(pos.max()) >= model.cfg.n_ctx or int(pos.min()) < 0):
            raise TempoError(f"logical positions must lie in [0, {model.cfg.n_ctx}) for this model")
        return pos

    def causal_mask(self, model: Model, n: int, n_query: int, batch_size: int) -> torch.Tensor:
        """`[batch, 1, q, n]` additive causal mask over physical order for the last
        `n_query` queries: the model's own causal structure, given explicitly so that
        Hugging Face never infers a mask (or packed sequences) from `position_ids`. What a
        layout hides on top (siblings, pads, pruned keys) is `hooks.mask_hooks`."""
        dtype = model.cfg.dtype
        q_phys = torch.arange(n - n_query, n)[:, None]
        future = torch.arange(n)[None, :] > q_phys
        mask = torch.zeros(n_query, n, dtype=dtype).masked_fill(future, torch.finfo(dtype).min)
        return mask.expand(batch_size, 1, n_query, n)

    def model_kwargs(self, model: Model, batch: LayoutBatch, n_query: int, cache: Any) -> Kwargs:
        device = model.cfg.device
        n = len(batch)
        kwargs: dict[str, Any] = {
            "position_ids": self.position_ids(model, batch, n_query).to(device),
            "attention_mask": self.causal_mask(model, n, n_query, batch.batch_size).to(device),
        }
        if cache is not None:
            return kwargs | {"past_key_values": cache, "use_cache": True}
        return kwargs | {"use_cache": False}

    def keep(self, cache: Any, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Keep batch rows `rows` and cached columns `cols` (Hugging Face's cache layout:
        `[batch, kv_heads, key, d_head]` per layer)."""
        for layer in cache.layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            r, c = rows.to(layer.keys.device), cols.to(layer.keys.device)
            layer.keys = layer.keys[r][:, :, c]
            layer.values = layer.values[r][:, :, c]


def backend_of(model: Model) -> HookedBackend | BridgeBackend:
    """The backend that runs `model`."""
    return BridgeBackend() if is_bridge(model) else HookedBackend()
