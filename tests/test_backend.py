"""The backends' forwards: TL's unmasked attention paths under an all-ones mask."""

from __future__ import annotations

import torch

from tempo_lens.backend import unmasked_attention


def _masked_step(model, tokens, cache):
    """A cached TL forward given an all-ones mask, as tempo_lens makes them."""
    ones = torch.ones_like(tokens)
    return model(tokens, attention_mask=ones, past_kv_cache=cache)


def test_unmasked_attention_equals_tls_masked_path_and_restores(tiny_pair) -> None:
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    model = tiny_pair[0]
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.cfg.d_vocab, (3, 9), generator=g).to(model.cfg.device)
    step = torch.randint(0, model.cfg.d_vocab, (3, 2), generator=g).to(model.cfg.device)
    outs = []
    for fast in (False, True):
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 3)
        with unmasked_attention(model) if fast else torch.no_grad():
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
