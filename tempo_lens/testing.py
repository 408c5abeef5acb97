"""Tiny models and the Hugging Face reference used by tests and benchmarks.

- `tiny_hf_model(kind)` / `tiny_model(kind)`: a seeded tiny Hugging Face causal LM (the
  independent reference) and the TransformerLens model converted from it through the same
  `model_from_hf` path as every real model (kinds: `KINDS` and `ROPE_VARIANTS`, defined in
  `tempo_lens.loading.tiny`, which also backs `load_model("tiny-llama")`);
- `hf_tempo_mask(steps, isolate)`: the 4D additive attention mask a Hugging Face model
  takes for a TEMPO layout, built from each token's step alone (no `Layout`, no hooks), so
  comparisons against Hugging Face stay independent of tempo_lens's own mask builder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float

from tempo_lens.backend import Model, check_backend_name
from tempo_lens.loading import bridge_from_hf, model_from_hf
from tempo_lens.loading.tiny import (
    KINDS,
    ROPE_VARIANTS,
    SPECIALS,
    VOCAB_SIZE,
    tiny_hf_model,
    tiny_tokenizer,
)

__all__ = [
    "KINDS",
    "ROPE_VARIANTS",
    "SPECIALS",
    "VOCAB_SIZE",
    "hf_tempo_mask",
    "tiny_hf_model",
    "tiny_model",
    "tiny_tokenizer",
]


def tiny_model(kind: str = "llama", seed: int = 0, backend: str | None = None) -> Model:
    """The `HookedTransformer` (or, `backend="bridge"`, the `TransformerBridge`; default:
    `backend.default_backend()`) of `tiny_hf_model(kind, seed)`, unprocessed: hook values
    equal the HF hidden states."""
    hf, tok = tiny_hf_model(kind, seed)
    if check_backend_name(backend) == "bridge":
        return bridge_from_hf(hf, tok, model_name=f"tiny-{kind}")
    return model_from_hf(hf, tok, model_name=f"tiny-{kind}")


def hf_tempo_mask(
    steps: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor,
    isolate: bool,
    *,
    hidden_after: Mapping[int, int] | None = None,
    n_query: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Float[torch.Tensor, "batch 1 n_query n"]:
    """The `[batch, 1, q, n]` additive attention mask (0 where a query may attend, the
    dtype's minimum elsewhere) that a Hugging Face model takes, with explicit
    `position_ids`, for a TEMPO layout.

    `steps`: per token in physical order, `-1` for a prompt token, `i >= 0` for a member
    of step i's set, anything below -1 for a pad slot (as `LayoutBatch`'s `PAD_STEP`);
    one row `[n]` or a batch `[batch, n]`. Query q sees key k when k <= q, except (the
    diagonal always stays visible): a pad key; when `isolate`, a sibling (same step >= 0);
    a key `hidden_after` maps (physical index -> step) to a step the query's step is
    later than (live pruning). Only the last `n_query` query rows (default all), as for a
    forward on a cache."""
    step = torch.as_tensor(steps, dtype=torch.long)
    step = step[None] if step.dim() == 1 else step
    n = step.shape[-1]
    q = n if n_query is None else n_query
    rows = torch.arange(n - q, n)
    s_q = step[:, n - q :, None]
    s_k = step[:, None, :]
    diagonal = rows[:, None] == torch.arange(n)[None, :]
    hidden = (rows[:, None] < torch.arange(n)[None, :]) | (s_k < -1)
    if isolate:
        hidden |= (s_q == s_k) & (s_q >= 0)
    for key, after in (hidden_after or {}).items():
        hidden[:, :, key] |= s_q[..., 0] > after
    mask = torch.zeros(hidden.shape, dtype=dtype)
    mask.masked_fill_(hidden & ~diagonal, torch.finfo(dtype).min)
    return mask[:, None]
