"""`TempoRun`: the result of one generation, its text views, and its on-disk form.

On disk a run is a directory with `run.json` (everything small and human-readable) and
`tensors.safetensors` (layout, top-k, captured activations, optional logits), written by
`save_run` through `tempo_lens.storage.atomic_dir` (a crash never leaves a half-written
run; nothing but an earlier run is ever replaced) and checked by `load_run` against the
`RunFile` schema. No pickle anywhere.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

from tempo_lens.config import GenerateConfig
from tempo_lens.errors import TempoError
from tempo_lens.layout import Layout, ParallelSet, PrunedMember
from tempo_lens.provenance import Provenance
from tempo_lens.storage import atomic_dir, marker, read_json, write_json_atomic

FORMAT_VERSION = 1
ANSI_SET = "\033[36m"
ANSI_RESET = "\033[0m"


def _common_leading_space(strs: list[str]) -> str:
    lead = [s[: len(s) - len(s.lstrip())] for s in strs]
    common = os.path.commonprefix(lead)
    return common


def _short(text: str | None, n: int = 40) -> str | None:
    return text if text is None or len(text) <= n else text[: n - 3] + "..."


def _visible(member: str) -> str:
    """Inside brackets a newline or tab would break the line: show it escaped."""
    return member.replace("\n", "\\n").replace("\t", "\\t")


@dataclass(repr=False)
class TempoRun:
    prompt: str | None
    model_name: str
    config: GenerateConfig
    layout: Layout
    steps: list[ParallelSet]
    token_strs: list[str]
    topk_ids: torch.Tensor
    topk_probs: torch.Tensor
    stop_reason: str
    seconds: float
    activations: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    logits: list[torch.Tensor] | None = None
    pruned: list[PrunedMember] = field(default_factory=list)  # live retroactive pruning
    # what made the run beyond `config`: fwd_hooks, label, versions, weight hash
    provenance: Provenance | None = None
    # analysis results attached to the run (JSON-able; e.g. after-the-fact pruning scores)
    notes: dict[str, Any] = field(default_factory=dict)

    # -- text views ---------------------------------------------------------------------
    def step_strs(self, step: int) -> list[str]:
        sl = self.layout.set_slice(step)
        return self.token_strs[sl]

    def bracket_parts(self) -> list[tuple[str, list[str], list[float]]]:
        """Per step: (leading whitespace shared by all members, member strings without
        it, member probabilities). Single-member steps keep their whole string; members
        hidden by live pruning are written `~tok~`. The one
        source of every bracket rendering (terminal text, HTML report)."""
        parts = []
        for i, ps in enumerate(self.steps):
            strs = self.step_strs(i)
            if len(ps) == 1:
                parts.append(("", strs, ps.probs))
                continue
            lead = _common_leading_space(strs)
            shown = [_visible(s[len(lead) :]) for s in strs]
            for p in self.pruned:  # struck through: `~tok~`
                if p.set_step == i:
                    shown[p.member] = f"~{shown[p.member]}~"
            parts.append((lead, shown, ps.probs))
        return parts

    def text(self, color: bool = False) -> str:
        """Bracket text of the generation: `[a/b/c]` for multi-member sets, e.g.
        `" windowsill[,/.] [The/She/It]"`. Whitespace shared by all members is written
        once, before the bracket."""
        out = []
        for lead, members, _ in self.bracket_parts():
            if len(members) == 1:
                out.append(members[0])
                continue
            body = "[" + "/".join(members) + "]"
            out.append(lead + (ANSI_SET + body + ANSI_RESET if color else body))
        return "".join(out)

    def clean_text(self) -> str:
        """The top member of every step, concatenated."""
        return "".join(self.step_strs(i)[0] for i in range(len(self.steps)))

    # -- notebook display ---------------------------------------------------------------------
    def __repr__(self) -> str:
        """One line: what the run is, never its tensors."""
        s = self.stats()
        text = self.text()
        text = text if len(text) <= 60 else text[:57] + "..."
        names = sorted(self.activations)
        extras = [f"captured={names if len(names) <= 3 else f'{len(names)} hooks'}"] * bool(names)
        extras += ["logits=kept"] if self.logits is not None else []
        if self.provenance and not self.provenance.replayable:
            extras.append(f"fwd_hooks={len(self.provenance.fwd_hooks)}")
        return (
            f"TempoRun(model={self.model_name!r}, prompt={_short(self.prompt)!r}, "
            f"steps={s['steps']}, physical_tokens={s['physical_tokens']}, "
            f"max_set={s['max_set_size']}, config={self.config}, stop={self.stop_reason!r}, "
            + "".join(f"{e}, " for e in extras)
            + f"text={text!r})"
        )

    def _repr_html_(self) -> str:
        """Jupyter: the bracket text and a few facts (the full report: `tempo-lens report`)."""
        import html

        from tempo_lens.viz.brackets import bracket_html

        s = self.stats()
        facts = (
            f"{self.model_name} | {s['steps']} steps | {s['physical_tokens']} physical tokens | "
            f"max set {s['max_set_size']} | threshold {self.config.threshold} | "
            f"{self.config.mode} | "
            f"stop: {self.stop_reason}"
        )
        if self.activations:
            facts += f" | captured: {len(self.activations)} hooks"
        hooks = ""
        if self.provenance and not self.provenance.replayable:
            hooks = f"<div>{html.escape(self.provenance.summary())}</div>"
        return (
            f"<div><b>TempoRun</b> <small>{html.escape(facts)}</small>{hooks}"
            f"{bracket_html(self)}</div>"
        )

    # -- stats ----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        sizes = [len(s) for s in self.steps]
        n_steps = len(self.steps)
        return {
            "steps": n_steps,
            "physical_tokens": len(self.layout) - self.layout.n_prompt,
            "prompt_tokens": self.layout.n_prompt,
            "max_set_size": max(sizes, default=0),
            "multi_member_steps": sum(1 for k in sizes if k > 1),
            "seconds": round(self.seconds, 4),
            "steps_per_s": round(n_steps / self.seconds, 3) if self.seconds > 0 else None,
            "stop_reason": self.stop_reason,
        }

    def captured(self, name: str, forward_index: int) -> torch.Tensor:
        """A captured activation: forward 0 is the prompt, forward s + 1 is step s's set."""
        if name not in self.activations:
            raise TempoError(f"{name!r} was not captured; captured: {sorted(self.activations)}")
        return self.activations[name][forward_index]

    # -- disk -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "tempo_lens": marker("run"),
            "format_version": FORMAT_VERSION,
            "prompt": self.prompt,
            "model_name": self.model_name,
            "config": self.config.to_dict(),
            "stop_reason": self.stop_reason,
            "seconds": self.seconds,
            "steps": [
                {"tokens": s.tokens, "probs": s.probs, "position": s.position} for s in self.steps
            ],
            "token_strs": self.token_strs,
            "layout": self.layout.to_dict(),
            "text": self.text(),
            "clean_text": self.clean_text(),
            "stats": self.stats(),
            "captured": {k: len(v) for k, v in self.activations.items()},
            "has_logits": self.logits is not None,
            "pruned": [asdict(p) for p in self.pruned],
            "provenance": self.provenance.model_dump() if self.provenance else None,
            "notes": self.notes,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {
            "layout.tokens": self.layout.tokens,
            "layout.positions": self.layout.positions,
            "layout.step": self.layout.step,
            "topk.ids": self.topk_ids,
            "topk.probs": self.topk_probs,
        }
        for name, acts in self.activations.items():
            for i, a in enumerate(acts):
                out[f"act.{name}.{i}"] = a
        for i, rows in enumerate(self.logits or []):
            out[f"logits.{i}"] = rows
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the run atomically to `directory` (see `save_run`)."""
        return save_run(self, directory)


class _Marker(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Literal["run"]
    version: Literal[1]


class _StepFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    tokens: list[NonNegativeInt] = Field(min_length=1)
    probs: list[float]
    position: int


class _LayoutFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    tokens: list[NonNegativeInt]
    positions: list[float]
    step: list[int]


class _PrunedFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    step: NonNegativeInt
    set_step: NonNegativeInt
    member: NonNegativeInt
    token: NonNegativeInt
    score: float


class RunFile(BaseModel):
    """The schema of `run.json` (format 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    tempo_lens: _Marker | None = None  # absent in runs written before markers existed
    format_version: Literal[1]
    prompt: str | None
    model_name: str
    config: dict[str, Any]
    stop_reason: str
    seconds: float = Field(ge=0)
    steps: list[_StepFile]
    token_strs: list[str]
    layout: _LayoutFile
    text: str
    clean_text: str
    stats: dict[str, Any]
    captured: dict[str, NonNegativeInt]
    has_logits: bool
    pruned: list[_PrunedFile] = []
    provenance: Provenance | None = None  # absent in runs written before provenance existed
    notes: dict[str, Any] = {}


def save_run(run: TempoRun, directory: str | os.PathLike, *, lock: bool = True) -> Path:
    """Write `run` atomically as `directory/` (`run.json` + `tensors.safetensors`). An
    existing run there is replaced; any other existing non-empty directory or file is
    refused (`tempo_lens.storage.atomic_dir`). `lock=False` when the caller holds a lock
    covering `directory` (an experiment writing its runs)."""
    from safetensors.torch import save_file

    with atomic_dir(directory, "run", lock_timeout=60.0 if lock else None) as tmp:
        save_file(run.tensors(), str(tmp / "tensors.safetensors"))
        write_json_atomic(tmp / "run.json", run.to_json())
    return Path(directory)


def load_run(directory: str | os.PathLike) -> TempoRun:
    """Load a run written by `save_run`; a damaged or incomplete run is a `TempoError`
    naming the file and what is wrong (regenerate it)."""
    d = Path(directory)
    if not (d / "run.json").is_file() or not (d / "tensors.safetensors").is_file():
        raise TempoError(f"{d} is not a saved run (run.json and tensors.safetensors expected)")
    raw = read_json(d / "run.json")
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise TempoError(
            f"{d} has run format {version}, this tempo_lens reads {FORMAT_VERSION}; "
            "regenerate the run"
        )
    meta = read_json(d / "run.json", RunFile)
    t = _load_tensors(d / "tensors.safetensors")
    _check_tensors(d, meta, t)
    acts: dict[str, list[torch.Tensor]] = {
        name: [t[f"act.{name}.{i}"] for i in range(n)] for name, n in meta.captured.items()
    }
    logits = None
    if meta.has_logits:
        keys = [k for k in t if k.startswith("logits.")]
        logits = [t[f"logits.{i}"] for i in range(len(keys))]
    try:
        config = GenerateConfig.from_dict(meta.config)
    except TempoError as err:
        raise TempoError(f"{d / 'run.json'}: config: {err}; regenerate the run") from None
    return TempoRun(
        prompt=meta.prompt,
        model_name=meta.model_name,
        config=config,
        layout=Layout(t["layout.tokens"], t["layout.positions"], t["layout.step"]),
        steps=[ParallelSet(s.tokens, s.probs, s.position) for s in meta.steps],
        token_strs=meta.token_strs,
        topk_ids=t["topk.ids"],
        topk_probs=t["topk.probs"],
        stop_reason=meta.stop_reason,
        seconds=meta.seconds,
        activations=acts,
        logits=logits,
        pruned=[PrunedMember(**p.model_dump()) for p in meta.pruned],
        provenance=meta.provenance,
        notes=meta.notes,
    )


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types on damaged files
        raise TempoError(f"{path} is damaged ({_first_line(err)}); regenerate the run") from None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else err.__class__.__name__


def _check_tensors(d: Path, meta: RunFile, t: dict[str, torch.Tensor]) -> None:
    """The tensors must be the ones `run.json` describes."""
    path = d / "tensors.safetensors"
    expected = ["layout.tokens", "layout.positions", "layout.step", "topk.ids", "topk.probs"]
    expected += [f"act.{name}.{i}" for name, n in meta.captured.items() for i in range(n)]
    if meta.has_logits:
        expected += [f"logits.{i}" for i in range(sum(k.startswith("logits.") for k in t))]
    missing = [k for k in expected if k not in t]
    if missing:
        raise TempoError(f"{path} lacks {missing[0]!r}; regenerate the run")
    n = len(meta.layout.tokens)
    n_steps = len(meta.steps)
    problems = [
        (t["layout.tokens"].tolist() != meta.layout.tokens, "layout.tokens differs from run.json"),
        (t["layout.step"].tolist() != meta.layout.step, "layout.step differs from run.json"),
        (t["layout.positions"].shape != (n,), "layout.positions has the wrong length"),
        (len(meta.token_strs) != n, "run.json has one token string per token"),
        (t["topk.ids"].shape[:1] != (n_steps,), "topk.ids has the wrong number of steps"),
        (t["topk.probs"].shape != t["topk.ids"].shape, "topk.probs and topk.ids differ in shape"),
        (sum(len(s.tokens) for s in meta.steps) > n, "run.json has more set members than tokens"),
    ]
    for bad, what in problems:
        if bad:
            raise TempoError(f"{path}: {what}; regenerate the run")
