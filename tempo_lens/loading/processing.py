"""Weight processing, as `HookedTransformer.from_pretrained` does it by default: fold
LayerNorm, center the writing weights and the unembedding, fold value biases (TL's own
`ProcessWeights`), so direct logit attribution and the logit lens are right. Centering the
unembedding shifts every logit row by a constant: probabilities are unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from tempo_lens.backend import Model
from tempo_lens.errors import TempoError
from tempo_lens.loading.architectures import ModelLoadError
from tempo_lens.loading.weight_layout import optimize_weight_layout


@dataclass(frozen=True)
class WeightProcessing:
    """The processing applied to a model's weights (TL's `from_pretrained` flags)."""

    fold_ln: bool = False
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


def weight_processing(model: Model) -> WeightProcessing:
    """What `process_weights` did to `model` (all False for an unprocessed model)."""
    done = getattr(model, "tempo_lens_processing", None)
    return done if isinstance(done, WeightProcessing) else WeightProcessing()


def _use_pre_norms(model: Model) -> bool:
    """Swap every norm for its weightless `Pre` form, as TL does before folding
    (LN -> LNPre, RMS -> RMSPre); False when there is nothing to fold."""
    from transformer_lens.components import LayerNormPre, RMSNormPre

    cfg = model.cfg
    pre = {"LN": ("LNPre", LayerNormPre), "RMS": ("RMSPre", RMSNormPre)}.get(
        cfg.normalization_type or ""
    )
    if pre is None:
        return False
    cfg.normalization_type, norm = pre
    model.ln_final = norm(cfg)
    for block in model.blocks:
        block.ln1, block.ln2 = norm(cfg), norm(cfg)
        if cfg.is_layer_norm_activation():
            block.mlp.ln = norm(cfg)
    return True


@torch.no_grad()
def process_weights(
    model: Model,
    *,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
) -> Model:
    """Process an unprocessed model's weights in place, with TL's own
    `load_and_process_state_dict` and `from_pretrained`'s defaults, then restore the speed
    layout. Folding LayerNorm turns `ln*` into `LNPre`/`RMSPre` (TL's behaviour)."""
    if weight_processing(model) != WeightProcessing():
        raise TempoError(
            "this model's weights are already processed; load it with processing=False"
        )
    cfg = model.cfg
    if cfg.positional_embedding_type == "shortformer":  # TL: cannot fold or center
        fold_ln = center_writing_weights = center_unembed = False
    if cfg.output_logits_soft_cap and cfg.output_logits_soft_cap > 0:
        center_unembed = False  # softcapping is not shift-invariant
    from transformer_lens.weight_processing import ProcessWeights

    state = model.fill_missing_keys(model.state_dict())
    if fold_ln and not _use_pre_norms(model):
        fold_ln = False  # no LayerNorm weights to fold (TL skips the same way)
    state = ProcessWeights.process_weights(
        state,
        cfg,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
        refactor_factored_attn_matrices=False,
    )
    # One load for all keys (TL's load_and_process_state_dict loads key by key, ~10x slower).
    missing = model.load_state_dict(state, strict=False).missing_keys
    if missing:
        raise ModelLoadError(f"processing lost weights {missing[:3]}; load with processing=False")
    if fold_ln:
        model.setup()
    model.tempo_lens_processing = WeightProcessing(
        fold_ln, center_writing_weights, center_unembed, fold_value_biases
    )
    return optimize_weight_layout(model)
