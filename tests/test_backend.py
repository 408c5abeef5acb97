"""The backends' forwards: TL's unmasked attention paths under an all-ones mask."""

from __future__ import annotations

import contextlib

import torch

from tempo_lens.backend import backend_of, unmasked_attention


def _masked_step(model, tokens, cache):
    """A cached TL forward given an all-ones mask, as tempo_lens makes them."""
    ones = torch.ones_like(tokens)
    return model(tokens, attention_mask=ones, past_kv_cache=cache)


def test_unmasked_attention_equals_tls_masked_path_and_restores(tiny_pair) -> None:
    model = tiny_pair[0]
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.cfg.d_vocab, (3, 9), generator=g).to(model.cfg.device)
    step = torch.randint(0, model.cfg.d_vocab, (3, 2), generator=g).to(model.cfg.device)
    outs = []
    for fast in (False, True):
        cache = backend_of(model).new_cache(model, 3)
        with unmasked_attention(model) if fast else contextlib.nullcontext():
            if fast:  # nested use: the outer context owns the blocks
                with unmasked_attention(model):
                    pass
                assert all("apply_rotary" in vars(b.attn) for b in model.blocks)
            outs.append((_masked_step(model, prompt, cache), _masked_step(model, step, cache)))
    for slow, fast in zip(*outs, strict=True):
        assert torch.equal(slow, fast)
    assert not any(
        name in vars(b.attn) for b in model.blocks for name in ("apply_rotary", "apply_causal_mask")
    )
