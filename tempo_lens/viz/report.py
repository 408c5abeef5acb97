"""One self-contained HTML report of a run or of an experiment directory.

Everything is inlined: circuitsvis's own browser bundle (from the installed wheel, once
per file, not its CDN link), PNG plots as base64, attention as compact base64 data that a
few lines of script hand to `CircuitsVis.render` when a layer is picked. The file opens
offline from disk.

Attention layers by default: the ones the run captured `hook_pattern` for, else every
layer; `max_layers` (no cap by default) spreads a cut over the depth. All inlined data
(attention + plots) stays within `budget_mb` (14 MB): what does not fit is left out and the
report says which layers it kept. Cells the run's mask hid (isolated siblings) are drawn
amber, apart from zero attention. Attention is stored as the lower triangle of each head's
pattern (causal: the upper one is zero), quantised to 16 bits (steps of 1.5e-5):
2.7 bytes per visible query/key pair once base64-encoded.
"""

from __future__ import annotations

import base64
import datetime
import functools
import html
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tempo_lens.errors import TempoError
from tempo_lens.run import TempoRun, load_run
from tempo_lens.storage import write_file_atomic
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
from tempo_lens.viz.graph import set_graph

MAX_LAYERS: int | None = None  # no cap: the size budget decides
BUDGET_MB = 14.0
ATTENTION_RUNS = 1
ALL_HEADS_UP_TO = 120  # tokens; longer runs open the attention view on one head
RUN_FILES = ("run.json", "tensors.safetensors")
EXPERIMENT_FILES = ("summary.json", "config.yaml", "report.md")

ModelLoader = Callable[[str], Any]


# -- size budget ----------------------------------------------------------------------------


def encoded_head_bytes(n_tokens: int) -> int:
    """Bytes one head's pattern takes in the report: base64 of n(n+1)/2 uint16 values."""
    return 4 * math.ceil(n_tokens * (n_tokens + 1) // 2 * 2 / 3)


def spread(items: Sequence[int], k: int) -> list[int]:
    """`k` items evenly spread over `items`, first and last included."""
    items = list(items)
    if k >= len(items):
        return items
    if k <= 1:
        return items[:k]
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


@dataclass
class AttentionPlan:
    layers: list[int]
    heads: list[int]
    note: str = ""


def plan_attention(
    n_tokens: int,
    n_heads: int,
    layers: Sequence[int],
    budget_bytes: int,
    max_layers: int | None = MAX_LAYERS,
) -> AttentionPlan:
    """Which layers (and heads) fit: at most `max_layers` layers, spread over the ones
    asked for; fewer, then fewer heads of one layer, when the bytes would pass the budget."""
    wanted = spread(layers, max_layers) if max_layers else list(layers)
    per_head = encoded_head_bytes(n_tokens)
    fit_layers = max(budget_bytes, 0) // (per_head * n_heads)
    notes = []
    if len(wanted) < len(layers):
        notes.append(f"{len(wanted)} of {len(layers)} layers shown (max_layers {max_layers})")
    if fit_layers >= len(wanted):
        return AttentionPlan(wanted, list(range(n_heads)), "; ".join(notes))
    mb = per_head * n_heads / 1e6
    if fit_layers >= 1:
        kept = spread(wanted, int(fit_layers))
        notes.append(
            f"{len(kept)} of {len(wanted)} layers fit the size budget "
            f"({n_tokens} tokens: {mb:.1f} MB per layer)"
        )
        return AttentionPlan(kept, list(range(n_heads)), "; ".join(notes))
    fit_heads = max(budget_bytes, 0) // per_head
    if fit_heads >= 1:
        notes.append(
            f"only heads 0-{fit_heads - 1} of layer {wanted[0]} fit the size budget "
            f"({n_tokens} tokens: {per_head / 1e6:.1f} MB per head)"
        )
        return AttentionPlan(wanted[:1], list(range(int(fit_heads))), "; ".join(notes))
    return AttentionPlan(
        [],
        [],
        f"no attention: one head of {n_tokens} tokens takes {per_head / 1e6:.1f} MB, past "
        "the size budget (raise --budget-mb, or use attention_view in a notebook)",
    )


def encode_pattern(pattern: torch.Tensor) -> dict[str, Any]:
    """`[heads, n, n]` → lower triangle per head, uint16 little-endian, base64."""
    n = pattern.shape[-1]
    if pattern.triu(1).abs().max() > 1e-6:
        raise TempoError("an attention pattern attends to later tokens; it is not causal")
    rows, cols = torch.tril_indices(n, n)
    lower = pattern[:, rows, cols].clamp(0, 1).numpy()
    q = np.round(lower * 65535).astype("<u2")
    return {"n": n, "data": base64.b64encode(q.tobytes()).decode("ascii")}


# -- report content ------------------------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape(str(x))


def bracket_html(run: TempoRun) -> str:
    """The prompt plus the bracket text, with multi-member sets marked up."""
    prompt = run.prompt or "".join(run.token_strs[: run.layout.n_prompt])
    out = [f'<span class="prompt">{_e(prompt)}</span>']
    pruned = {(p.set_step, p.member): p for p in run.pruned}
    for step, (lead, strs, probs) in enumerate(run.bracket_parts()):
        if len(strs) == 1:
            out.append(_e(strs[0]))
            continue
        shown = []
        for j, (s, p) in enumerate(zip(strs, probs, strict=True)):
            cut = pruned.get((step, j))
            if cut is None:
                shown.append(f'<span title="p={p:.3f}">{_e(s)}</span>')
            else:  # bracket_parts wrote it `~tok~`: strike it through instead
                shown.append(
                    f'<s class="pruned" title="p={p:.3f}; pruned after step {cut.step} '
                    f'(attention {cut.score:.3g})">{_e(s[1:-1])}</s>'
                )
        out.append(f'{_e(lead)}<span class="set">[{"/".join(shown)}]</span>')
    return '<pre class="bracket">' + "".join(out) + "</pre>"


def _id_strings(run: TempoRun, model: Any) -> Callable[[int], str]:
    known = dict(zip(run.layout.tokens.tolist(), run.token_strs, strict=True))
    tok = getattr(model, "tokenizer", None) if model is not None else None

    def name(tid: int) -> str:
        if tid in known:
            return known[tid]
        if tok is not None:
            return tok.decode([tid], clean_up_tokenization_spaces=False)
        return f"#{tid}"

    return name


def step_table(run: TempoRun, model: Any = None) -> str:
    """Per step: position, members with probabilities, kept mass, best left-out tokens."""
    name = _id_strings(run, model)
    fallback = set(fallback_steps(run))
    rows = []
    for i, ps in enumerate(run.steps):
        members = ", ".join(
            f"<code>{_e(repr(name(t)))}</code> {p:.3f}"
            for t, p in zip(ps.tokens, ps.probs, strict=True)
        )
        left_out = []
        if i < run.topk_ids.shape[0]:
            for t, p in zip(run.topk_ids[i].tolist(), run.topk_probs[i].tolist(), strict=True):
                if t not in ps.tokens:
                    left_out.append(f"<code>{_e(repr(name(t)))}</code> {p:.3f}")
                if len(left_out) == 3:
                    break
        rows.append(
            f"<tr><td>{i}</td><td>{ps.position}</td><td>{len(ps)}"
            + (' <span class="fallback">fallback</span>' if i in fallback else "")
            + f"</td><td>{members}</td>"
            f"<td>{sum(ps.probs):.3f}</td><td>{', '.join(left_out)}</td></tr>"
        )
    return (
        '<table class="steps"><thead><tr><th>step</th><th>position</th><th>size</th>'
        "<th>members (p)</th><th>kept mass</th><th>best left out (p)</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _kv_table(items: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in items.items())
    return f'<table class="kv">{rows}</table>'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return _e(f"{v:.4g}")
    if isinstance(v, dict | list):
        return f"<code>{_e(json.dumps(v))}</code>"
    return _e(v)


@dataclass
class Report:
    """Collects sections and inlined data; `html()` assembles the file."""

    title: str
    budget_bytes: int
    sections: list[str] = field(default_factory=list)
    views: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    on_note: Callable[[str], None] | None = None

    def note(self, text: str) -> None:
        self.notes.append(text)
        if self.on_note is not None:
            self.on_note(text)

    def __post_init__(self) -> None:
        self.charge(circuitsvis_bundle(), CSS, APP_JS)

    def charge(self, *texts: str) -> None:
        """Count parts that are always included (text, tables, graph) against the budget."""
        self.budget_bytes -= sum(len(t.encode()) for t in texts)

    def spend(self, n_bytes: int) -> bool:
        """Take `n_bytes` for an optional part (a plot, attention) if they fit."""
        if n_bytes > self.budget_bytes:
            return False
        self.budget_bytes -= n_bytes
        return True

    def add_view(self, view: dict[str, Any]) -> str:
        key = f"v{len(self.views)}"
        self.views[key] = view
        return key

    def html(self) -> str:
        data = json.dumps({"views": self.views}, separators=(",", ":")).replace("</", "<\\/")
        notes = "".join(f"<li>{_e(n)}</li>" for n in self.notes)
        made = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="generator" content="tempo_lens report">'
            f"<title>{_e(self.title)}</title><style>{CSS}</style>"
            f"<script>{circuitsvis_bundle()}</script></head><body>"
            f"<h1>{_e(self.title)}</h1>"
            + "".join(self.sections)
            + (f'<section><h2>Notes</h2><ul class="notes">{notes}</ul></section>' if notes else "")
            + f"<footer>tempo_lens report, {made}. Works offline: everything is inlined.</footer>"
            f'<script type="application/json" id="tl-data">{data}</script>'
            f"<script>{APP_JS}</script></body></html>"
        )


@functools.cache
def circuitsvis_bundle() -> str:
    """circuitsvis's browser bundle from the installed wheel, safe inside `<script>`."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise TempoError(f"circuitsvis's bundle {path} is missing; reinstall circuitsvis")
    js = path.read_text(encoding="utf-8")
    js = "\n".join(line for line in js.splitlines() if not line.startswith("//# sourceMappingURL"))
    return js.replace("</script", "<\\/script")  # same string inside JS, inert for HTML


def attention_section(
    report: Report, run: TempoRun, patterns: dict[int, torch.Tensor], heads: list[int]
) -> str:
    layers = sorted(patterns)
    masked = masked_cells(run)
    view = {
        "kind": "attention",
        "tokens": token_labels(run),
        # (query, key) cells the run's mask hid: drawn as MASKED in MASKED_COLOR
        "masked": masked.nonzero().tolist() if bool(masked.any()) else [],
        "maskedValue": MASKED,
        "maskedColor": MASKED_COLOR,
        "layers": {
            str(layer): {"heads": heads, **encode_pattern(patterns[layer][heads])}
            for layer in layers
        },
    }
    key = report.add_view(view)
    layer_opts = "".join(f'<option value="{x}">layer {x}</option>' for x in layers)
    # circuitsvis draws one heatmap per head plus the zoomed one: past ALL_HEADS_UP_TO
    # tokens the page opens on a single head and "all heads" is one click away
    one = len(run.layout) > ALL_HEADS_UP_TO
    head_opts = f'<option value="all"{"" if one else " selected"}>all heads</option>' + "".join(
        f'<option value="{i}"{" selected" if one and i == 0 else ""}>head {h}</option>'
        for i, h in enumerate(heads)
    )
    return (
        f'<div class="attention" data-tl-view="{key}"><label>Layer <select class="layer">'
        f'{layer_opts}</select></label> <label>Head <select class="head">{head_opts}'
        '</select></label><div class="cv-holder"></div></div>'
    )


@dataclass
class AttentionOptions:
    """How the report gets attention: which layers, a model (or a loader by name), and
    whether to skip it."""

    layers: Sequence[int] | None = None
    max_layers: int | None = MAX_LAYERS
    model: Any = None
    load: ModelLoader | None = None
    enabled: bool = True
    _models: dict[str, Any] = field(default_factory=dict)

    def model_for(self, run: TempoRun) -> Any:
        if self.model is not None:
            return self.model
        if self.load is None:
            return None
        if run.model_name not in self._models:
            self._models[run.model_name] = self.load(run.model_name)
        return self._models[run.model_name]


def run_sections(
    report: Report, run: TempoRun, opts: AttentionOptions, *, attention: bool, level: int = 2
) -> list[str]:
    """Bracket text, set graph, colored tokens, attention (if asked) and the step table."""
    h = f"h{level}"
    cfg = run.config
    facts = {
        "model": run.model_name,
        "threshold": cfg.get("threshold"),
        "mode": "isolated" if cfg.get("isolate", True) is True else f"isolate={cfg.get('isolate')}",
        "next_from": cfg.get("next_from"),
        "max_parallel": cfg.get("max_parallel"),
    } | run.stats()
    fallback = fallback_steps(run)
    if fallback:
        facts["fallback steps (top-1, none passed the threshold)"] = fallback
    tokens = _tokens_view(run)
    out = [
        *_replay_banner(report, run),
        f"<{h}>Text</{h}>",
        bracket_html(run),
        _kv_table(facts),
        f"<{h}>Provenance</{h}>",
        _provenance_html(run),
        f'<{h}>Parallel sets</{h}><p class="hint">Steps left to right; each box is a '
        "member, its height its selection probability; links show which members feed the "
        f"next step's distribution (next_from = {_e(cfg.get('next_from', 'mixture'))}).</p>",
        f'<div class="graph">{set_graph(run).svg}</div>',
        f"<{h}>Tokens by selection probability</{h}>",
        f'<div class="tokens" data-tl-view="{report.add_view(tokens)}">'
        '<div class="cv-holder"></div></div>',
    ]
    report.charge(*out, json.dumps(tokens))
    model, attention_part = None, []
    if attention and opts.enabled:
        attention_part.append(f"<{h}>Attention</{h}>")
        try:
            model = opts.model_for(run)
        except TempoError as err:  # no such model here: the report still has the rest
            attention_part.append(f'<p class="note">Attention not shown: {_e(err)}</p>')
            report.note(f"attention not shown: {err}")
    steps = [f"<{h}>Steps</{h}>", step_table(run, model)]
    report.charge(*steps)  # text and tables first: attention gets what is left
    if len(attention_part) == 1:
        attention_part += _attention_block(report, run, opts, model)
    return out + attention_part + steps


def _replay_banner(report: Report, run: TempoRun) -> list[str]:
    """At the top of a run: it had forward hooks, so a replay of it is not faithful."""
    caveat = replay_caveat(run)
    if not caveat:
        return []
    label = f" (label: {run.provenance.label!r})" if run.provenance and run.provenance.label else ""
    report.note(f"cannot replay faithfully{label}: {caveat}")
    return [
        '<p class="warning"><b>Not replayable faithfully.</b> '
        f"{_e(caveat[0].upper() + caveat[1:])}{_e(label)}. Attention captured during "
        "generation (hook_pattern) is the run's own; anything replayed here is not.</p>"
    ]


def _provenance_html(run: TempoRun) -> str:
    p = run.provenance
    if p is None:
        return '<p class="note">No provenance recorded (a run saved by an older tempo_lens).</p>'
    hooks = [f"{h.hook} ← {h.function}" for h in p.fwd_hooks]
    return _kv_table(
        {
            "label": p.label,
            "fwd_hooks": "; ".join(hooks) or "none (replayable)",
            "model": p.model_name,
            "weight hash": p.weight_hash,
            "weight processing": ", ".join(k for k, v in p.weight_processing.items() if v)
            or "none",
            "versions": ", ".join(f"{k} {v}" for k, v in p.versions.items()),
            "generation config": run.config,
        }
    )


def _tokens_view(run: TempoRun) -> dict[str, Any]:
    return {"kind": "tokens", "tokens": token_labels(run), "values": selection_values(run)}


def _attention_block(
    report: Report, run: TempoRun, opts: AttentionOptions, model: Any
) -> list[str]:
    if model is None and not captured_layers(run):
        msg = "the run has no captured hook_pattern and no model was given to replay it"
        report.note(f"attention not shown: {msg}")
        return [f'<p class="note">Attention not shown: {msg}.</p>']
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
        return [f'<p class="note">{_e(plan.note)}</p>']
    patterns = full_patterns(run, plan.layers, model)
    source = (
        "captured during generation"
        if model is None
        else f"replayed in one forward on {model.cfg.model_name} "
        f"(isolate={run.config.get('isolate', True)})"
    )
    report.spend(len(plan.layers) * len(plan.heads) * encoded_head_bytes(len(run.layout)))
    return [
        f'<p class="hint">Full-layout patterns (rows = every physical token, set members '
        f"included), {source}. Labels: (n) is the physical index; a set's members share a "
        "bracket ┌├└ and the first carries the set's logical position @p. Amber cells: keys "
        "the run's mask hid (isolated siblings, shown as -1), not zero attention. † marks a "
        "top-1 fallback set (no token passed the threshold). Layers "
        f"{', '.join(map(str, plan.layers))} of {n_layers}."
        + (f" {_e(plan.note)}." if plan.note else "")
        + "</p>",
        attention_section(report, run, patterns, plan.heads),
    ]


def default_layers(run: TempoRun, n_layers: int) -> list[int]:
    """The layers the run captured `hook_pattern` for, else every layer."""
    return captured_layers(run) or list(range(n_layers))


def _captured_heads(run: TempoRun) -> int:
    for name, acts in run.activations.items():
        if name.endswith("hook_pattern") and acts:
            return int(acts[0].shape[0])
    raise TempoError("the run has no captured hook_pattern; pass a model to replay it")


# -- experiment directories ----------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return all((path / f).is_file() for f in RUN_FILES)


def find_runs(root: Path, depth: int = 3) -> list[Path]:
    """Run directories under `root` (not `root` itself), up to `depth` levels down."""
    found = []
    frontier = [root]
    for _ in range(depth):
        nxt = []
        for d in frontier:
            for child in sorted(
                p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")
            ):
                (found if is_run_dir(child) else nxt).append(child)
        frontier = nxt
    return found


SHORT_LIST = 8  # lists of scalars up to this long are shown inline in a cell
MAX_ROWS = 200


def _scalar(v: Any) -> bool:
    return not isinstance(v, dict | list) or (
        isinstance(v, list)
        and len(v) <= SHORT_LIST
        and all(_scalar(x) for x in v)
        and not any(isinstance(x, list) for x in v)
    )


def _flat(v: Any) -> bool:
    return isinstance(v, dict) and all(_scalar(x) for x in v.values())


def _records_table(value: Any) -> str | None:
    """A table for flat records (a list of flat dicts, or a dict of flat dicts), a
    key/value table for a flat dict; None for anything deeper."""
    if isinstance(value, list) and value and all(_flat(v) for v in value):
        if len(value) > MAX_ROWS:
            return None
        cols = list(dict.fromkeys(k for v in value for k in v))
        head = "".join(f"<th>{_e(c)}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{_cell(v.get(c))}</td>" for c in cols) + "</tr>" for v in value
        )
        return _table(head, body)
    if isinstance(value, dict) and value and all(_flat(v) for v in value.values()):
        if len(value) > MAX_ROWS:
            return None
        cols = list(dict.fromkeys(k for v in value.values() for k in v))
        head = "<th></th>" + "".join(f"<th>{_e(c)}</th>" for c in cols)
        body = "".join(
            f"<tr><th>{_e(k)}</th>" + "".join(f"<td>{_cell(v.get(c))}</td>" for c in cols) + "</tr>"
            for k, v in value.items()
        )
        return _table(head, body)
    if _flat(value) and value:
        return _kv_table(value)
    return None


def _summary_html(value: Any) -> str:
    """summary.json readable: top-level scalars in one key/value table, each flat part as
    one table, anything deeper as collapsed, indented JSON (one click away, never a wall
    of nested tables)."""
    if not isinstance(value, dict):
        value = {"summary": value}
    scalars = {k: v for k, v in value.items() if _scalar(v)}
    parts = [_kv_table(scalars)] if scalars else []
    for key, v in value.items():
        if key in scalars:
            continue
        table = _records_table(v)
        if table is not None:
            parts.append(f"<h3>{_e(key)}</h3>{table}")
            continue
        text = json.dumps(v, indent=1)
        size = f"{len(v)} items" if isinstance(v, dict | list) else ""
        parts.append(
            f'<details class="json"><summary>{_e(key)} <small>({size}, JSON)</small></summary>'
            f"<pre>{_e(text)}</pre></details>"
        )
    return "".join(parts)


def _table(head: str, body: str) -> str:
    return f'<table class="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return "" if v is None else _fmt(v)


def _markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def experiment_report(
    root: Path,
    opts: AttentionOptions,
    budget_bytes: int,
    attention_runs: int,
    on_note: Callable[[str], None] | None = None,
) -> Report:
    report = Report(f"Experiment {root.name}", budget_bytes, on_note=on_note)
    md = ""
    if (root / "report.md").is_file():
        md = _markdown((root / "report.md").read_text())
        report.charge(md)
    texts = []
    if (root / "summary.json").is_file():
        try:
            summary = json.loads((root / "summary.json").read_text())
            texts.append(f"<section><h2>Summary</h2>{_summary_html(summary)}</section>")
        except ValueError as err:  # invalid JSON or not UTF-8
            report.note(f"summary.json is not valid JSON ({err}); not shown")
    if (root / "config.yaml").is_file():
        texts.append(
            "<section><h2>config.yaml</h2><pre>"
            + _e((root / "config.yaml").read_text())
            + "</pre></section>"
        )
    report.charge(*texts)
    uris: dict[str, str] = {}
    for png in sorted(root.glob("*.png")):
        raw = png.read_bytes()
        if report.spend(len(raw) * 4 // 3):
            uris[png.name] = "data:image/png;base64," + base64.b64encode(raw).decode("ascii")
        else:
            report.note(f"plot {png.name} ({len(raw) / 1e6:.1f} MB) left out: past the size budget")
    figs = []
    for name, uri in uris.items():
        src = f'src="{html.escape(name)}"'
        if src in md:  # shown where report.md puts it, once
            md = md.replace(src, f'src="{uri}"')
        else:
            figs.append(
                f'<figure><img alt="{_e(name)}" src="{uri}"><figcaption>{_e(name)}'
                "</figcaption></figure>"
            )
    if md:
        report.sections.append(f'<section class="md"><h2>report.md</h2>{md}</section>')
    report.sections += texts
    if figs:
        report.sections.append(f"<section><h2>Plots</h2>{''.join(figs)}</section>")
    runs = find_runs(root)
    rows, blocks = [], []
    for i, path in enumerate(runs):
        rel = path.relative_to(root)
        try:
            run = load_run(path)
        except TempoError as err:
            report.note(f"run {rel} not loaded: {err}")
            continue
        s = run.stats()
        rows.append(
            f'<tr><td><a href="#run-{i}">{_e(rel)}</a></td><td>{s["steps"]}</td>'
            f"<td>{s['max_set_size']}</td><td>{s['multi_member_steps']}</td>"
            f"<td>{_e(run.config.get('threshold'))}</td><td>{_e(run.config.get('isolate'))}</td>"
            f"<td>{_e(run.text()[:80])}</td></tr>"
        )
        body = run_sections(report, run, opts, attention=i < attention_runs, level=3)
        blocks.append(
            f'<details id="run-{i}"{" open" if i == 0 else ""}><summary>{_e(rel)}: '
            f"{_e((run.prompt or '')[:60])}</summary>{''.join(body)}</details>"
        )
    if rows:
        report.sections.append(
            '<section><h2>Runs</h2><table class="summary"><thead><tr><th>run</th><th>steps'
            "</th><th>max set</th><th>multi steps</th><th>threshold</th><th>isolate</th>"
            f"<th>text</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            + "".join(blocks)
            + "</section>"
        )
    if len(runs) > attention_runs:
        report.note(
            f"attention views for the first {attention_runs} of {len(runs)} runs "
            "(--attention-runs to change)"
        )
    if not report.sections:
        raise TempoError(
            f"{root} holds nothing to report (no summary.json, config.yaml, report.md, "
            "PNG plots or saved runs)"
        )
    return report


# -- entry points ---------------------------------------------------------------------------


def build_report(
    path: str | os.PathLike,
    *,
    model: Any = None,
    load: ModelLoader | None = None,
    layers: Sequence[int] | None = None,
    max_layers: int | None = MAX_LAYERS,
    budget_mb: float = BUDGET_MB,
    attention: bool = True,
    attention_runs: int = ATTENTION_RUNS,
    on_note: Callable[[str], None] | None = None,
) -> str:
    """The HTML of a report on a saved run or an experiment directory.

    Attention comes from the run's captured `hook_pattern` or, if absent, from one replay
    on `model` (or `load(run.model_name)`). `layers=None` means all, cut to `max_layers`;
    `budget_mb` bounds the inlined attention and plots. `on_note` hears every note the
    report makes about what it left out."""
    root = Path(path)
    if not root.exists():
        raise TempoError(
            f"{root} does not exist; pass a run directory (tempo-lens generate --out DIR) "
            "or an experiment directory"
        )
    if not root.is_dir():
        raise TempoError(f"{root} is a file; pass a run directory or an experiment directory")
    if not math.isfinite(budget_mb) or budget_mb <= 0:
        raise TempoError(f"the size budget must be a positive number of MB, got {budget_mb}")
    if not isinstance(attention_runs, int) or attention_runs < 0:
        raise TempoError(f"the number of attention runs must be >= 0, got {attention_runs}")
    opts = AttentionOptions(layers, max_layers, model, load, attention)
    budget = int(budget_mb * 1e6)
    if is_run_dir(root):
        run = load_run(root)
        report = Report(f"TEMPO run {root.name}", budget, on_note=on_note)
        report.sections += run_sections(report, run, opts, attention=True)
        return report.html()
    if (root / "run.json").is_file():
        load_run(root)  # raises the precise message about the missing half
    return experiment_report(root, opts, budget, attention_runs, on_note).html()


def write_report(html_text: str, out: str | os.PathLike) -> Path:
    """Write atomically (`tempo_lens.storage.write_file_atomic`); an existing file at
    `out` is replaced only when it is an earlier tempo_lens report."""
    return write_file_atomic(out, html_text, kind="report")


CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
pre.bracket{white-space:pre-wrap;font-size:1.05em;background:#f6f8fa;padding:10px;border-radius:4px}
.bracket .prompt{color:#666}.bracket .set{color:#1d7a70;font-weight:600}
table{border-collapse:collapse;font-size:.9em;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
table.kv th{background:#f6f8fa;font-weight:500}
.graph{overflow-x:auto;border:1px solid #eee}.hint{color:#555;font-size:.9em}
.note{color:#9a3412}.warning{background:#fef3c7;border:1px solid #d97706;padding:8px}
.fallback{background:#fde68a;border-radius:3px;padding:0 4px;font-size:.85em}
details.json pre{max-height:360px;overflow:auto;background:#f6f8fa;padding:6px}
figure{display:inline-block;margin:8px}figure img{max-width:560px}
details{margin:8px 0;border:1px solid #ddd;padding:6px}summary{cursor:pointer;font-weight:600}
select{font-size:1em}footer{margin-top:3em;color:#888;font-size:.8em}
"""

APP_JS = """
(function () {
  var data = JSON.parse(document.getElementById("tl-data").textContent);
  var count = 0;
  function mount(holder, component, props) {
    holder.replaceChildren();
    var div = document.createElement("div");
    div.id = "tl-cv-" + count++;
    div.className = "cv-root";
    holder.appendChild(div);
    CircuitsVis.render(div.id, component, props);
  }
  function decode(layer) {
    var bin = atob(layer.data), n = layer.n, k = 0, out = [];
    for (var h = 0; h < layer.heads.length; h++) {
      var rows = [];
      for (var i = 0; i < n; i++) {
        var row = new Array(n).fill(0);
        for (var j = 0; j <= i; j++, k += 2) {
          row[j] = (bin.charCodeAt(k) | (bin.charCodeAt(k + 1) << 8)) / 65535;
        }
        rows.push(row);
      }
      out.push(rows);
    }
    return out;
  }
  document.querySelectorAll("[data-tl-view]").forEach(function (el) {
    var view = data.views[el.dataset.tlView];
    var holder = el.querySelector(".cv-holder");
    if (view.kind === "tokens") {
      mount(holder, CircuitsVis.ColoredTokens,
            {tokens: view.tokens, values: view.values, minValue: 0, maxValue: 1});
      return;
    }
    var layerSel = el.querySelector("select.layer"), headSel = el.querySelector("select.head");
    function draw() {
      var layer = view.layers[layerSel.value], full = decode(layer);
      full.forEach(function (rows) {
        view.masked.forEach(function (c) { rows[c[0]][c[1]] = view.maskedValue; });
      });
      var idx = headSel.value === "all" ? layer.heads.map(function (_, i) { return i; })
                                        : [Number(headSel.value)];
      mount(holder, CircuitsVis.AttentionHeads, {
        attention: idx.map(function (i) { return full[i]; }),
        tokens: view.tokens,
        attentionHeadNames: idx.map(function (i) {
          return "L" + layerSel.value + "H" + layer.heads[i];
        }),
        maskUpperTri: true,
        maxValue: 1,
        minValue: view.maskedValue,
        negativeColor: view.maskedColor
      });
    }
    layerSel.addEventListener("change", draw);
    headSel.addEventListener("change", draw);
    draw();
  });
})();
"""
