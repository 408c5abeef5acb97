"""The backends' forwards: `fast_attention` (TL's unmasked paths under an all-ones mask,
grouped-query attention without repeated keys) and `fast_unembed` (the unembedding in
vocabulary blocks) compute TL's own values, to float32 rounding (the same products summed
in another order)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tempo_lens.backend import backend_of, fast_attention
from tempo_lens.layout import PAD_STEP

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


def test_fast_attention_takes_tls_masked_paths_under_padding(tiny_pair) -> None:
    """Given a mask with zeros (TL's own left padding), the rotary and causal mask are
    TL's masked paths: the logits of the real tokens are TL's and Hugging Face's."""
    model, hf, _ = tiny_pair
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(4))
    tokens = tokens.to(model.cfg.device)
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # row 0: three pads on the left
    slow = model(tokens, attention_mask=mask)
    with fast_attention(model):
        fast = model(tokens, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(fast[real], slow[real], rtol=1e-6, atol=1e-5)
    # row 0's real tokens are the 4-token prompt on its own, positions from 0
    with fast_attention(model):
        alone = model(tokens[:1, 3:], attention_mask=torch.ones_like(tokens[:1, 3:]))
    torch.testing.assert_close(fast[0, 3:], alone[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(alone[0], hf(tokens[:1, 3:]).logits[0], rtol=1e-4, atol=1e-4)


def _padded_batch():
    from tempo_lens.layout import Layout, LayoutBatch

    short = Layout.from_sets([1, 5, 6], [[7, 8]])
    long = Layout.from_sets([1, 9, 10, 11], [[12], [13, 14, 15]])
    return LayoutBatch.of([short, long]), [short, long]


def test_unembed_real_rows_only_pads_zero_and_hooks_see_tls_shapes(tiny_pair) -> None:
    """A padded forward unembeds only real tokens; every hook and the caller still see
    `[batch, q, ·]`, pads' logits are zeros, and real rows equal each layout's own."""
    from tempo_lens.generate import forward, mechanism_hooks

    model = tiny_pair[0]
    batch, layouts = _padded_batch()
    seen: dict[str, tuple[int, ...]] = {}

    def shape(act: torch.Tensor, hook) -> None:
        seen[hook.name] = tuple(act.shape)

    user = [("unembed.hook_in", shape), ("unembed.hook_out", shape)]
    hooks = mechanism_hooks(model, batch, True) + user
    logits = backend_of(model).forward(model, batch, len(batch), hooks, None)
    n = len(batch)
    assert seen == {
        "unembed.hook_in": (2, n, model.cfg.d_model),
        "unembed.hook_out": (2, n, model.cfg.d_vocab),
    }
    pads = batch.step == PAD_STEP
    assert int(pads.sum()) == n - len(layouts[0]) and bool((logits[pads] == 0).all())
    for b, layout in enumerate(layouts):
        own = forward(model, layout, isolate=True)[0][0]
        torch.testing.assert_close(logits[b, batch.real_columns(b)], own, rtol=1e-5, atol=1e-5)


def test_unembed_real_rows_steps_aside_for_the_models_own_hooks(tiny_pair) -> None:
    """A hook the model carries at the unembed would see another shape: then every row
    is unembedded, as TL does."""
    from tempo_lens.backend import unembed_real_rows

    model = tiny_pair[0]
    batch, _ = _padded_batch()
    assert unembed_real_rows(model, batch, len(batch)) != ([], [])
    model.add_hook("unembed.hook_out", lambda act, hook: None)
    try:
        assert unembed_real_rows(model, batch, len(batch)) == ([], [])
        logits = backend_of(model).forward(model, batch, len(batch), [], None)
        assert not bool((logits[batch.step == PAD_STEP] == 0).all())
    finally:
        model.reset_hooks(including_permanent=True)


def test_fast_unembed_equals_tls_own_unembedding_and_hugging_face(tiny_pair) -> None:
    """In vocabulary blocks (7 tokens here, so the last block is short) the logits are
    TL's own (to float32 rounding) and Hugging Face's; `hook_in` / `hook_out` fire once
    each with TL's shapes; one row, or gradients on, take TL's own line; on exit the
    module is as before."""
    from tempo_lens.backend import fast_unembed

    model, hf, _ = tiny_pair
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 6), generator=torch.Generator().manual_seed(2))
    tokens = tokens.to(model.cfg.device)
    seen: list[tuple[str, tuple[int, ...]]] = []

    def record(act: torch.Tensor, hook) -> None:
        seen.append((hook.name, tuple(act.shape)))

    user = [("unembed.hook_in", record), ("unembed.hook_out", record)]
    with torch.no_grad():
        own, own_one = model(tokens), model(tokens[:1, :1])
        with fast_unembed(model, block=7), model.hooks(fwd_hooks=user):
            assert "forward" in vars(model.unembed)
            with fast_unembed(model, block=3):  # nested use: the outer context owns it
                pass
            assert model.unembed.forward.args[1] == 7
            blocked = model(tokens)
            one = model(tokens[:1, :1])
        ref = hf(tokens).logits
    assert model.cfg.d_vocab % 7 and model.cfg.d_vocab > 7
    # a 7-token block may take another kernel than the whole product: float32 rounding
    torch.testing.assert_close(blocked, own, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blocked, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(one, own_one)  # one row: TL's own line
    d, v = model.cfg.d_model, model.cfg.d_vocab
    assert seen == [
        ("unembed.hook_in", (3, 6, d)),
        ("unembed.hook_out", (3, 6, v)),
        ("unembed.hook_in", (1, 1, d)),
        ("unembed.hook_out", (1, 1, v)),
    ]
    assert "forward" not in vars(model.unembed)
    resid = torch.randn(3, 6, d, device=model.cfg.device, requires_grad=True)
    with torch.enable_grad(), fast_unembed(model, block=7):  # TL's own line, differentiable
        model.unembed(resid).sum().backward()
    assert resid.grad is not None and resid.grad.shape == resid.shape


@pytest.mark.embedded
def test_fast_unembed_is_tls_own_unembedding_exactly_on_the_embedded_model(embedded) -> None:
    """On the embedded model's 49 152-token vocabulary every logit of a 16-row
    unembedding in blocks is the very float TL's one product gives; at 4 rows (another
    MKL kernel) within float32 rounding."""
    from tempo_lens.backend import UNEMBED_BLOCK, fast_unembed

    resid = torch.randn(2, 8, embedded.cfg.d_model, generator=torch.Generator().manual_seed(3))
    resid = resid.to(embedded.cfg.device)
    with torch.no_grad():
        own = embedded.unembed(resid)
        with fast_unembed(embedded):
            blocked = embedded.unembed(resid)
        few = resid[:1, :4]
        own_few = embedded.unembed(few)
        with fast_unembed(embedded):
            blocked_few = embedded.unembed(few)
    assert embedded.cfg.d_vocab > UNEMBED_BLOCK
    if resid.device.type == "cpu":  # on CUDA TL's own path runs: equal trivially
        assert torch.equal(blocked, own)
    torch.testing.assert_close(blocked_few, own_few, rtol=1e-5, atol=1e-5)
