"""TransformerLens compatibility: every TL API a user reaches for, on a `load_model` model
(processed weights in the speed layout) against an unmodified `HookedTransformer` holding
the same converted weights, processed by TL's own `load_and_process_state_dict`.

    python -m tests.test_tl_compat      # prints the table: API, max |difference|
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import pytest
import torch
from transformer_lens import HookedTransformer, patching, utils

import tempo_lens as tl
from tempo_lens.loading import optimize_weight_layout, restore_weight_layout

KINDS = ("llama", "neox", "gpt2")
TEXT = "The cat sat on the mat"
CORRUPT = "The dog ran to the hat"
TOL = 1e-5


@functools.cache
def pair(kind: str) -> tuple[HookedTransformer, HookedTransformer]:
    """(ours, plain TL) with the same weights."""
    ours = tl.load_model(f"tiny-{kind}")
    raw = tl.load_model(f"tiny-{kind}", processing=False)
    plain = HookedTransformer(copy.deepcopy(raw.cfg), tokenizer=raw.tokenizer, move_to_device=False)
    plain.load_and_process_state_dict(
        {k: v.contiguous().clone() for k, v in raw.state_dict().items()},
        fold_ln=True,
        center_writing_weights=True,
        center_unembed=True,
        fold_value_biases=True,
    )
    plain.eval()
    assert all(p.is_contiguous() for p in plain.parameters())
    assert any(not p.is_contiguous() for p in ours.parameters())
    return ours, plain


def _tokens(model: HookedTransformer, text: str = TEXT) -> torch.Tensor:
    return model.to_tokens(text, prepend_bos=model.cfg.default_prepend_bos)


def _zero_head0(z: torch.Tensor, hook) -> torch.Tensor:
    z[:, :, 0] = 0.0
    return z


def _cache(m: HookedTransformer):
    return m.run_with_cache(_tokens(m))


def _metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[0, -1].log_softmax(-1).max()


def _patch(getter: Callable) -> Callable[[HookedTransformer], torch.Tensor]:
    def run(m: HookedTransformer) -> torch.Tensor:
        _, clean_cache = _cache(m)
        return getter(m, _tokens(m, CORRUPT), clean_cache, _metric)

    return run


def _state_dict_roundtrip(m: HookedTransformer, tmp: str) -> torch.Tensor:
    from safetensors.torch import load_file, save_file

    save_file(m.state_dict(), tmp)
    back = load_file(tmp)
    return torch.cat([back[k].flatten().float() for k in sorted(back)])


def _dtype_move(m: HookedTransformer) -> torch.Tensor:
    moved = copy.deepcopy(m).to(torch.float64)
    return moved(_tokens(m)).float()


def _view(m: HookedTransformer) -> torch.Tensor:
    clone = restore_weight_layout(copy.deepcopy(m))
    return torch.cat([clone.W_U.view(-1), clone.W_O.view(-1), clone.W_Q.view(-1)])


# API name -> what it returns on a model; ours and plain TL must agree.
APIS: dict[str, Callable[[HookedTransformer], torch.Tensor]] = {
    "forward": lambda m: m(_tokens(m)),
    "run_with_cache logits": lambda m: _cache(m)[0],
    "run_with_cache pattern": lambda m: _cache(m)[1]["pattern", 1],
    "run_with_cache resid_post": lambda m: _cache(m)[1]["resid_post", -1],
    "run_with_hooks": lambda m: m.run_with_hooks(
        _tokens(m), fwd_hooks=[(utils.get_act_name("z", 0), _zero_head0)]
    ),
    "generate (greedy ids)": lambda m: m.generate(
        _tokens(m), max_new_tokens=6, do_sample=False, verbose=False, stop_at_eos=False
    ).float(),
    "decompose_resid": lambda m: _cache(m)[1].decompose_resid(-1),
    "logit_attrs": lambda m: _cache(m)[1].logit_attrs(
        _cache(m)[1].decompose_resid(-1, pos_slice=-1), tokens=_tokens(m)[0, :1], pos_slice=-1
    ),
    "accumulated_resid(apply_ln)": lambda m: _cache(m)[1].accumulated_resid(apply_ln=True),
    "stack_activation(pattern)": lambda m: _cache(m)[1].stack_activation("pattern"),
    "stack_head_results": lambda m: _cache(m)[1].stack_head_results(layer=-1),
    "patching resid_pre": _patch(patching.get_act_patch_resid_pre),
    "patching attn_head_out_all_pos": _patch(patching.get_act_patch_attn_head_out_all_pos),
    "W_E": lambda m: m.W_E,
    "W_U": lambda m: m.W_U,
    "W_Q": lambda m: m.W_Q,
    "W_K": lambda m: m.W_K,
    "W_V": lambda m: m.W_V,
    "W_O": lambda m: m.W_O,
    "W_in": lambda m: m.W_in,
    "W_out": lambda m: m.W_out,
    "b_U": lambda m: m.b_U,
    "OV.AB": lambda m: m.OV.AB,
    "QK.AB": lambda m: m.QK.AB,
    "state_dict -> safetensors": lambda m: _state_dict_roundtrip(m, f"/tmp/tl_compat_{id(m)}.st"),
    ".to(float64) forward": _dtype_move,
    ".view() after restore_weight_layout": _view,
}


def max_diff(kind: str, api: str) -> float:
    ours, plain = pair(kind)
    a, b = APIS[api](ours), APIS[api](plain)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a.double() - b.double()).abs()
    diff[a == b] = 0.0  # equal infinities (attention-mask buffers) are no difference
    return diff.max().item()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", list(APIS))
def test_tl_api_matches_plain_hooked_transformer(kind, api):
    assert max_diff(kind, api) < TOL


def test_state_dict_is_plain_and_layout_round_trips(tmp_path):
    ours, plain = pair("llama")
    assert all(v.is_contiguous() for v in ours.state_dict().values())
    assert ours.state_dict().keys() == plain.state_dict().keys()
    clone = restore_weight_layout(copy.deepcopy(ours))
    assert all(p.is_contiguous() for p in clone.parameters())
    optimize_weight_layout(clone)
    assert [p.stride() for p in clone.parameters()] == [p.stride() for p in ours.parameters()]
    # loading a plain state dict keeps the speed layout
    clone.load_state_dict(plain.state_dict())
    assert [p.stride() for p in clone.parameters()] == [p.stride() for p in ours.parameters()]


def main() -> None:
    torch.set_grad_enabled(False)
    width = max(map(len, APIS))
    print(f"{'API':<{width}}  " + "  ".join(f"{k:>9}" for k in KINDS))
    for api in APIS:
        print(f"{api:<{width}}  " + "  ".join(f"{max_diff(k, api):9.2e}" for k in KINDS))


if __name__ == "__main__":
    main()
