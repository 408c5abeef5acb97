"""A run's part of a report: bracket text, facts, provenance, set graph, colored tokens,
attention (as much as the size budget allows) and the step table.

Attention layers by default: the ones the run captured `hook_pattern` for, else every
layer. Cells the run's mask hid (isolated siblings) are drawn amber, apart from zero
attention.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from markupsafe import Markup

from tempo_lens.errors import TempoError
from tempo_lens.run import TempoRun
from tempo_lens.viz.attention import (
    MASKED,
    MASKED_COLOR,
    captured_layers,
    fallback_steps,
    full_patterns,
    masked_cells,
    n_layers_of,
    replay_caveat,
    selection_values,
    token_labels,
)
from tempo_lens.viz.brackets import bracket_html
from tempo_lens.viz.graph import set_graph
from tempo_lens.viz.report.budget import (
    MAX_LAYERS,
    encode_pattern,
    encoded_head_bytes,
    plan_attention,
)
from tempo_lens.viz.report.page import Report
from tempo_lens.viz.templating import render

ALL_HEADS_UP_TO = 120  # tokens; longer runs open the attention view on one head

ModelLoader = Callable[[str], Any]


@dataclass
class AttentionOptions:
    """How the report gets attention: which layers, a model (or a loader by name), and
    whether to skip it."""

    layers: Sequence[int] | None = None
    max_layers: int | None = MAX_LAYERS
    model: Any = None
    load: ModelLoader | None = None
    enabled: bool = True
    models: dict[str, Any] = field(default_factory=dict)  # loaded so far, by name

    def model_for(self, run: TempoRun) -> Any:
        if self.model is not None:
            return self.model
        if self.load is None:
            return None
        if run.model_name not in self.models:
            self.models[run.model_name] = self.load(run.model_name)
        return self.models[run.model_name]


def _token_names(run: TempoRun, model: Any) -> Callable[[int], str]:
    known = dict(zip(run.layout.tokens.tolist(), run.token_strs, strict=True))
    tok = getattr(model, "tokenizer", None) if model is not None else None

    def name(tid: int) -> str:
        if tid in known:
            return known[tid]
        if tok is not None:
            return tok.decode([tid], clean_up_tokenization_spaces=False)
        return f"#{tid}"

    return name


def step_table(run: TempoRun, model: Any = None, level: int = 2) -> Markup:
    """Per step: position, members with probabilities, kept mass, best left-out tokens."""
    name = _token_names(run, model)
    fallback = set(fallback_steps(run))
    rows = []
    for i, ps in enumerate(run.steps):
        left_out: list[tuple[str, float]] = []
        if i < run.topk_ids.shape[0]:
            for t, p in zip(run.topk_ids[i].tolist(), run.topk_probs[i].tolist(), strict=True):
                if t not in ps.tokens:
                    left_out.append((repr(name(t)), p))
                if len(left_out) == 3:
                    break
        rows.append(
            {
                "step": i,
                "position": ps.position,
                "size": len(ps),
                "fallback": i in fallback,
                "members": [(repr(name(t)), p) for t, p in zip(ps.tokens, ps.probs, strict=True)],
                "kept": sum(ps.probs),
                "left_out": left_out,
            }
        )
    return render("steps.html.j2", h=f"h{level}", rows=rows)


def _facts(run: TempoRun) -> dict[str, Any]:
    cfg = run.config
    facts = {
        "model": run.model_name,
        "threshold": cfg.threshold,
        "mode": cfg.mode,
        "next_from": cfg.next_from,
        "max_parallel": cfg.max_parallel,
    } | run.stats()
    fallback = fallback_steps(run)
    if fallback:
        facts["fallback steps (top-1, none passed the threshold)"] = fallback
    return facts


def _provenance(run: TempoRun) -> dict[str, Any] | None:
    p = run.provenance
    if p is None:
        return None
    return {
        "label": p.label,
        "fwd_hooks": "; ".join(f"{h.hook} ← {h.function}" for h in p.fwd_hooks)
        or "none (replayable)",
        "model": p.model_name,
        "weight hash": p.weight_hash,
        "weight processing": ", ".join(k for k, v in p.weight_processing.items() if v) or "none",
        "versions": ", ".join(f"{k} {v}" for k, v in p.versions.items()),
        "generation config": run.config.to_dict(),
    }


def _caveat(report: Report, run: TempoRun) -> str:
    """A run with forward hooks: a replay of it is not faithful (a banner at its top)."""
    caveat = replay_caveat(run)
    if not caveat:
        return ""
    label = f" (label: {run.provenance.label!r})" if run.provenance and run.provenance.label else ""
    report.note(f"cannot replay faithfully{label}: {caveat}")
    return caveat[0].upper() + caveat[1:] + label


def run_sections(
    report: Report, run: TempoRun, opts: AttentionOptions, *, attention: bool, level: int = 2
) -> Markup:
    """Bracket text, set graph, colored tokens, attention (if asked) and the step table."""
    tokens = {"kind": "tokens", "tokens": token_labels(run), "values": selection_values(run)}
    head = render(
        "run.html.j2",
        h=f"h{level}",
        caveat=_caveat(report, run),
        bracket=bracket_html(run),
        facts=_facts(run),
        provenance=_provenance(run),
        next_from=run.config.next_from,
        graph=Markup(set_graph(run).svg),
        tokens_view=report.add_view(tokens),
    )
    report.charge(head, json.dumps(tokens))
    model, problem = None, None
    if attention and opts.enabled:
        try:
            model = opts.model_for(run)
        except TempoError as err:  # no such model here: the report still has the rest
            problem = f"Attention not shown: {err}"
            report.note(f"attention not shown: {err}")
    steps = step_table(run, model, level)
    report.charge(steps)  # text and tables first: attention gets what is left
    if not (attention and opts.enabled):
        return head + steps
    if problem is None:
        return head + attention_section(report, run, opts, model, level) + steps
    return head + render("attention.html.j2", h=f"h{level}", note=problem, view=None) + steps


def default_layers(run: TempoRun, n_layers: int) -> list[int]:
    """The layers the run captured `hook_pattern` for, else every layer."""
    return captured_layers(run) or list(range(n_layers))


def _captured_heads(run: TempoRun) -> int:
    for name, acts in run.activations.items():
        if name.endswith("hook_pattern") and acts:
            return int(acts[0].shape[0])
    raise TempoError("the run has no captured hook_pattern; pass a model to replay it")


def attention_section(
    report: Report, run: TempoRun, opts: AttentionOptions, model: Any, level: int = 2
) -> Markup:
    """The attention picker: as many layers (and heads) as the budget left allows,
    captured or replayed on `model`; a note instead when there is none to show."""
    h = f"h{level}"
    if model is None and not captured_layers(run):
        msg = "the run has no captured hook_pattern and no model was given to replay it"
        report.note(f"attention not shown: {msg}")
        return render("attention.html.j2", h=h, note=f"Attention not shown: {msg}.", view=None)
    n_layers = n_layers_of(run, model)
    layers = list(opts.layers) if opts.layers is not None else default_layers(run, n_layers)
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise TempoError(f"layer {bad[0]} does not exist; the model has {n_layers} layers")
    n_heads = int(model.cfg.n_heads) if model is not None else _captured_heads(run)
    report.charge(json.dumps(token_labels(run)))
    plan = plan_attention(len(run.layout), n_heads, layers, report.budget_bytes, opts.max_layers)
    if plan.note:
        report.note(f"attention: {plan.note}")
    if not plan.layers:
        return render("attention.html.j2", h=h, note=plan.note, view=None)
    patterns = full_patterns(run, plan.layers, model)
    report.spend(len(plan.layers) * len(plan.heads) * encoded_head_bytes(len(run.layout)))
    return render(
        "attention.html.j2",
        h=h,
        note=None,
        view=report.add_view(attention_view_data(run, patterns, plan.heads)),
        source="captured during generation"
        if model is None
        else f"replayed in one forward on {model.cfg.model_name} ({run.config.mode})",
        layers=plan.layers,
        n_layers=n_layers,
        plan_note=plan.note,
        heads=plan.heads,
        # circuitsvis draws one heatmap per head plus the zoomed one: past ALL_HEADS_UP_TO
        # tokens the page opens on a single head and "all heads" is one click away
        one_head=len(run.layout) > ALL_HEADS_UP_TO,
    )


def attention_view_data(
    run: TempoRun, patterns: dict[int, torch.Tensor], heads: list[int]
) -> dict[str, Any]:
    """What the report's script hands circuitsvis for one run's attention: token labels,
    the masked cells, and each layer's heads encoded (`budget.encode_pattern`)."""
    masked = masked_cells(run)
    return {
        "kind": "attention",
        "tokens": token_labels(run),
        # (query, key) cells the run's mask hid: drawn as MASKED in MASKED_COLOR
        "masked": masked.nonzero().tolist() if bool(masked.any()) else [],
        "maskedValue": MASKED,
        "maskedColor": MASKED_COLOR,
        "layers": {
            str(layer): {"heads": heads, **encode_pattern(patterns[layer][heads])}
            for layer in sorted(patterns)
        },
    }
