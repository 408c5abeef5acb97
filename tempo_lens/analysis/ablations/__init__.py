"""Ablations of the TEMPO mechanism: one file per family, all on one driver.

`driver.ablate(model, sources, variants, metric)` replays (source × variant) in padded
batches (`generic_activation_patch`'s shape); each family module only builds its
variants, measures them, and returns a typed result with `.summary()` (JSON-able),
`.plot()` (a matplotlib Figure) and `.to_pandas()`. Each family also defines its
experiment kind (a `Kind` value, registered in `KINDS`) for
`tempo-lens experiment experiments/ablations/<family>.yaml`; docs/ablations.md says what
each asks and what it found. The masks themselves are `tempo_lens.hooks.mask_hooks`.
"""

from __future__ import annotations

from tempo_lens.analysis.ablations.activation_patching import (
    ACTIVATION_PATCHING,
    DIRECTIONS,
    GROUPS,
    HOOK_ALIASES,
    ActivationPatching,
    activation_patching,
    group_positions,
    hook_name,
)
from tempo_lens.analysis.ablations.driver import (
    Distances,
    Patch,
    Replays,
    Restored,
    Source,
    Variant,
    ablate,
    restored_fraction,
    schedule_sweep,
)
from tempo_lens.analysis.ablations.dynamic_threshold import (
    DYNAMIC_THRESHOLD,
    DynamicThreshold,
    PruneResult,
    ThresholdSchedule,
    bezier_threshold,
    dynamic_threshold,
    mark_pruned,
    marked_text,
    prune_by_attention,
    relu_threshold,
    retroactive_prune,
    threshold_from_spec,
)
from tempo_lens.analysis.ablations.layer_patching import (
    LAYER_MODES,
    LAYER_PATCHING,
    HeadPatching,
    LayerPatching,
    head_patching,
    layer_patching,
)
from tempo_lens.analysis.ablations.member_knockout import (
    MEMBER_KNOCKOUT,
    MemberKnockout,
    member_knockout,
)
from tempo_lens.analysis.ablations.partial_isolation import (
    PARTIAL_ISOLATION,
    PartialIsolation,
    bias_sweep,
    partial_isolation,
)
from tempo_lens.analysis.ablations.positions import (
    POSITION_ABLATION,
    PositionAblation,
    gap_layout,
    offset_layout,
    position_ablation,
    sequential_layout,
    standard_variants,
)

KINDS = (
    LAYER_PATCHING,
    ACTIVATION_PATCHING,
    PARTIAL_ISOLATION,
    POSITION_ABLATION,
    DYNAMIC_THRESHOLD,
    MEMBER_KNOCKOUT,
)

__all__ = [
    "DIRECTIONS",
    "GROUPS",
    "HOOK_ALIASES",
    "KINDS",
    "LAYER_MODES",
    "ActivationPatching",
    "Distances",
    "DynamicThreshold",
    "HeadPatching",
    "LayerPatching",
    "MemberKnockout",
    "PartialIsolation",
    "Patch",
    "PositionAblation",
    "PruneResult",
    "Replays",
    "Restored",
    "Source",
    "ThresholdSchedule",
    "Variant",
    "ablate",
    "activation_patching",
    "bezier_threshold",
    "bias_sweep",
    "dynamic_threshold",
    "gap_layout",
    "group_positions",
    "head_patching",
    "hook_name",
    "layer_patching",
    "mark_pruned",
    "member_knockout",
    "marked_text",
    "offset_layout",
    "partial_isolation",
    "position_ablation",
    "prune_by_attention",
    "relu_threshold",
    "restored_fraction",
    "retroactive_prune",
    "schedule_sweep",
    "sequential_layout",
    "standard_variants",
    "threshold_from_spec",
]
