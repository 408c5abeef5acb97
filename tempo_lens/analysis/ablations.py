"""Ablations of the TEMPO mechanism, as hook lists and replays a user composes.

Everything here is built from `tempo_lens.forward`, `isolation_hooks` and
`position_hooks`: isolation at some layers only is `isolation_hooks(layout, layers=...)`,
partial isolation is `isolation_hooks(layout, bias=-b)`, the rest are the small hook
builders and replays below. The scripts in `experiments/ablations/` show each in use;
`docs/ablations.md` says what each asks and what it found.
"""

from __future__ import annotations

from typing import Any

from tempo_lens.analysis import ablations_kinds as _kinds  # noqa: F401  (registers kinds)
from tempo_lens.analysis.ablations_dynamic import (
    PruneResult,
    ThresholdSchedule,
    bezier_threshold,
    mark_pruned,
    marked_text,
    prune_by_attention,
    relu_threshold,
    retroactive_prune,
    threshold_from_spec,
)
from tempo_lens.analysis.ablations_hooks import (
    attention_mask_hooks,
    branch_hidden,
    isolate_always_hooks,
    pruning_hooks,
    same_set_bias_hooks,
    sibling_window_hooks,
)
from tempo_lens.analysis.ablations_patching import (
    GROUPS,
    HOOK_ALIASES,
    LAYER_MODES,
    Distances,
    LayerPatching,
    activation_patching,
    bias_sweep,
    compare_hooks,
    fraction_restored,
    group_positions,
    head_patching,
    hook_name,
    layer_patching,
    layout_and_weights,
    patch_activation,
    replay_batch,
    row_logprobs,
)
from tempo_lens.analysis.ablations_plots import plot_heatmap, plot_lines
from tempo_lens.analysis.ablations_positions import (
    gap_layout,
    offset_layout,
    position_ablation,
    sequential_layout,
    standard_variants,
)


def script_model(name: str | None) -> Any:
    """The model a script asked for: "tiny" is the seeded tiny rotary model of
    `tempo_lens.testing` (fast mode for tests), anything else goes to `load_model`."""
    if name == "tiny":
        from tempo_lens.testing import tiny_model

        return tiny_model("llama")
    from tempo_lens.cli import load_model_quietly

    return load_model_quietly(name)


__all__ = [
    "GROUPS",
    "HOOK_ALIASES",
    "LAYER_MODES",
    "Distances",
    "LayerPatching",
    "PruneResult",
    "ThresholdSchedule",
    "activation_patching",
    "attention_mask_hooks",
    "bezier_threshold",
    "bias_sweep",
    "branch_hidden",
    "compare_hooks",
    "fraction_restored",
    "gap_layout",
    "group_positions",
    "head_patching",
    "hook_name",
    "isolate_always_hooks",
    "layer_patching",
    "layout_and_weights",
    "mark_pruned",
    "marked_text",
    "offset_layout",
    "patch_activation",
    "plot_heatmap",
    "plot_lines",
    "position_ablation",
    "prune_by_attention",
    "pruning_hooks",
    "relu_threshold",
    "replay_batch",
    "retroactive_prune",
    "row_logprobs",
    "same_set_bias_hooks",
    "script_model",
    "sequential_layout",
    "sibling_window_hooks",
    "standard_variants",
    "threshold_from_spec",
]
