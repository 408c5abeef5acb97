"""The backends' forwards: `fast_attention` (TL's unmasked paths under an all-ones mask,
grouped-query attention without repeated keys) computes TL's own values, to float32
rounding (the grouped matmuls sum the same products in another order)."""

from __future__ import annotations

import contextlib

import torch

from tempo_lens.backend import backend_of, fast_attention

REPLACED = ("apply_rotary", "apply_causal_mask", "calculate_attention_scores", "calculate_z_scores")


def _masked_step(model, tokens, cache):
    """A cached TL forward given an all-ones mask, as tempo_lens makes them."""
    ones = torch.ones_like(tokens)
    return model(tokens, attention_mask=ones, past_kv_cache=cache)


def test_fast_attention_equals_tls_own_paths_and_restores(tiny_pair) -> None:
    model = tiny_pair[0]
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.cfg.d_vocab, (3, 9), generator=g).to(model.cfg.device)
    step = torch.randint(0, model.cfg.d_vocab, (3, 2), generator=g).to(model.cfg.device)
    outs = []
    for fast in (False, True):
        cache = backend_of(model).new_cache(model, 3)
        with fast_attention(model) if fast else contextlib.nullcontext():
            if fast:  # nested use: the outer context owns the blocks
                with fast_attention(model):
                    pass
                assert all("apply_rotary" in vars(b.attn) for b in model.blocks)
                grouped = [all(n in vars(b.attn) for n in REPLACED[2:]) for b in model.blocks]
                # the tiny llama has 2 key-value heads for 4 query heads; neox and gpt2 none
                assert all(grouped) == bool(model.cfg.n_key_value_heads)
            outs.append((_masked_step(model, prompt, cache), _masked_step(model, step, cache)))
    for slow, fast in zip(*outs, strict=True):
        # the grouped matmuls sum the same products in another order: float32 rounding
        torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-5)
    assert not any(name in vars(b.attn) for b in model.blocks for name in REPLACED)


def test_fast_attention_hooks_see_tls_own_values(tiny_pair) -> None:
    """Every attention hook point gets the same shapes and values on either path."""
    model = tiny_pair[0]
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(1))
    names = lambda n: ".attn.hook_" in n  # noqa: E731
    ones = torch.ones_like(tokens)
    _, slow = model.run_with_cache(tokens, attention_mask=ones, names_filter=names)
    with fast_attention(model):
        _, fast = model.run_with_cache(tokens, attention_mask=ones, names_filter=names)
    assert sorted(slow.keys()) == sorted(fast.keys()) and len(slow) >= 6 * model.cfg.n_layers
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-6, atol=1e-5, msg=name)
