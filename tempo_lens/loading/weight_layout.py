"""The weight-layout speed fix: every weight stored in the memory order its forward reads.

Invisible to TransformerLens APIs: same shapes and values, and `state_dict()` hands out
contiguous tensors (so `safetensors.torch.save_file` works). Only `.view()` on a restrided
weight needs TL's own layout back: `restore_weight_layout`.
"""

from __future__ import annotations

from typing import Any

import torch

from tempo_lens.backend import Model


def _restride(p: torch.nn.Parameter, order: tuple[int, ...]) -> None:
    """Keep shape and values, store the data contiguous in `p.permute(order)` order."""
    inverse = [order.index(i) for i in range(len(order))]
    p.data = p.data.permute(*order).contiguous().permute(*inverse)


@torch.no_grad()
def optimize_weight_layout(model: Model) -> Model:
    """Store every weight in the memory order its forward reads it.

    TL's gated MLP and unembed call `W.T.contiguous()` on every forward and its attention
    rearranges W_Q/W_K/W_V/W_O into `(head d_head) x d_model` matrices: with the default
    row-major storage each of those is a full weight copy per call. Same shapes, same
    values, different strides: the copies become views and the logits stay bit-identical.
    (TL's plain MLP feeds `W_in`/`W_out` to `addmm` as they are, so they keep row-major.)
    """
    from transformer_lens.components import Unembed
    from transformer_lens.components.abstract_attention import AbstractAttention
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    orders = {
        GatedMLP: {"W_in": (1, 0), "W_gate": (1, 0), "W_out": (1, 0)},
        Unembed: {"W_U": (1, 0)},
        AbstractAttention: {
            # read as [head, d_head, d_model]
            **dict.fromkeys(("W_Q", "W_K", "W_V", "_W_K", "_W_V"), (0, 2, 1)),
            "W_O": (2, 0, 1),  # read as [d_model, head, d_head]
        },
    }
    for module in model.modules():
        for cls, params in orders.items():
            if isinstance(module, cls):
                for name, p in module.named_parameters(recurse=False):
                    if name in params:
                        _restride(p, params[name])
                if not getattr(module, "_tempo_lens_contiguous_state", False):
                    module.register_state_dict_post_hook(_contiguous_state)
                    module._tempo_lens_contiguous_state = True
    return model


def _contiguous_state(
    module: torch.nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """`state_dict()` hands out TL's row-major layout: exporters (safetensors) that reject
    strided tensors see what they would see on a plain `HookedTransformer`."""
    for name, _ in module.named_parameters(recurse=False):
        value = state_dict.get(prefix + name)
        if isinstance(value, torch.Tensor) and not value.is_contiguous():
            state_dict[prefix + name] = value.contiguous()


@torch.no_grad()
def restore_weight_layout(model: Model) -> Model:
    """Store every parameter row-major again, exactly as a plain `HookedTransformer`
    does (same values; forwards get slower by the per-call weight copies TL makes).

    Needed only for code that calls `.view()` on a weight (`model.W_U.view(...)`) or
    relies on `.data_ptr()` layout; every TL API works on the speed layout as it is.
    `optimize_weight_layout(model)` switches back."""
    for p in model.parameters():
        if not p.is_contiguous():
            p.data = p.data.contiguous()
    return model
