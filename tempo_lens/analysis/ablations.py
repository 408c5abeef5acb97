"""Ablations of the TEMPO mechanism, as hook lists and replays a user composes.

Everything here is built from `tempo_lens.forward`, `isolation_hooks` and
`position_hooks`: isolation at some layers only is `isolation_hooks(layout, layers=...)`,
partial isolation is `isolation_hooks(layout, bias=-b)`, the rest are the small hook
builders and replays below. The scripts in `experiments/ablations/` show each in use;
`docs/ablations.md` says what each asks and what it found.
"""

from __future__ import annotations

import argparse
from typing import Any

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
from tempo_lens.analysis.ablations_kinds import KINDS
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
from tempo_lens.generate import generate
from tempo_lens.quiet import load_model_quietly
from tempo_lens.run import TempoRun


def script_model(name: str | None) -> Any:
    """The model a script asked for: "tiny" is the seeded tiny rotary model of
    `tempo_lens.testing` (fast mode for tests), anything else goes to `load_model`."""
    return load_model_quietly("tiny-llama" if name == "tiny" else name)


def script_parser(
    name: str, *, prompt: str = "The cat sat on the", steps: int = 10, fast_steps: int = 6
) -> argparse.ArgumentParser:
    """The options every ablation script shares (--prompt --model --steps --out --fast);
    a script adds its own before `parse_args()`."""
    p = argparse.ArgumentParser()
    p.add_argument("--prompt", default=prompt)
    p.add_argument("--model", default=None, help="model name, or 'tiny'")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--out", default=f"runs/ablations/{name}_script")
    p.add_argument("--fast", action="store_true", help=f"tiny model, {fast_steps} steps (tests)")
    p.set_defaults(fast_steps=fast_steps)
    return p


def script_model_for(args: argparse.Namespace) -> Any:
    """Load the script's model; --fast means the tiny model and fewer steps."""
    if args.fast:
        args.model, args.steps = "tiny", args.fast_steps
    return script_model(args.model)


def script_run(args: argparse.Namespace) -> tuple[Any, TempoRun]:
    """The script's model and one free-running isolated run on its prompt (threshold 0.1),
    whose layout the ablation then replays; prints its bracket text."""
    model = script_model_for(args)
    run = generate(model, args.prompt, threshold=0.1, max_steps=args.steps, eos_token_id=None)
    print(run.text())
    return model, run


__all__ = [
    "KINDS",
    "script_model_for",
    "script_parser",
    "script_run",
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
