"""`TempoRun`: the result of one generation, its text views, and its on-disk form.

On disk a run is a directory with `run.json` (everything small and human-readable) and
`tensors.safetensors` (layout, top-k, captured activations, optional logits). Both are
written into a temporary sibling directory that is renamed into place, so a crash never
leaves a half-written run. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tempo_lens.errors import TempoError
from tempo_lens.layout import Layout, ParallelSet, PrunedMember

FORMAT_VERSION = 1
ANSI_SET = "\033[36m"
ANSI_RESET = "\033[0m"


def _common_leading_space(strs: list[str]) -> str:
    lead = [s[: len(s) - len(s.lstrip())] for s in strs]
    common = os.path.commonprefix(lead)
    return common


def _visible(member: str) -> str:
    """Inside brackets a newline or tab would break the line: show it escaped."""
    return member.replace("\n", "\\n").replace("\t", "\\t")


@dataclass
class TempoRun:
    prompt: str | None
    model_name: str
    config: dict[str, Any]
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
            "format_version": FORMAT_VERSION,
            "prompt": self.prompt,
            "model_name": self.model_name,
            "config": self.config,
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
        """Write the run atomically to `directory` (replacing an earlier run there)."""
        target = Path(directory)
        write_atomic_dir(
            target,
            lambda tmp: (
                _save_tensors(self.tensors(), tmp / "tensors.safetensors"),
                (tmp / "run.json").write_text(json.dumps(self.to_json(), indent=1)),
            ),
        )
        return target


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def write_atomic_dir(target: Path, write: Any) -> None:
    """Call `write(tmp_dir)` on a fresh sibling directory, then rename it to `target`."""
    parent = target.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}.tmp-"))
    except OSError as err:
        raise TempoError(f"cannot write to {parent}: {err.strerror}; choose another --out") from err
    try:
        write(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(staged: Path, target: Path) -> None:
    """Rename the finished directory `staged` to `target`, replacing an earlier one there
    (moved aside first, then removed), so `target` is never half-written."""
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.resolve().parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / "x")
        os.replace(staged, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, target)


def load_run(directory: str | os.PathLike) -> TempoRun:
    """Load a run written by `TempoRun.save`."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / "run.json").is_file() or not (d / "tensors.safetensors").is_file():
        raise TempoError(f"{d} is not a saved run (run.json and tensors.safetensors expected)")
    meta = json.loads((d / "run.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise TempoError(
            f"{d} has run format {meta.get('format_version')}, this tempo_lens reads "
            f"{FORMAT_VERSION}; regenerate the run"
        )
    t = load_file(str(d / "tensors.safetensors"))
    acts: dict[str, list[torch.Tensor]] = {
        name: [t[f"act.{name}.{i}"] for i in range(n)] for name, n in meta["captured"].items()
    }
    logits = None
    if meta["has_logits"]:
        logits = [
            t[k]
            for k in sorted(
                (k for k in t if k.startswith("logits.")), key=lambda k: int(k.split(".")[1])
            )
        ]
    return TempoRun(
        prompt=meta["prompt"],
        model_name=meta["model_name"],
        config=meta["config"],
        layout=Layout(t["layout.tokens"], t["layout.positions"], t["layout.step"]),
        steps=[ParallelSet(s["tokens"], s["probs"], s["position"]) for s in meta["steps"]],
        token_strs=meta["token_strs"],
        topk_ids=t["topk.ids"],
        topk_probs=t["topk.probs"],
        stop_reason=meta["stop_reason"],
        seconds=meta["seconds"],
        activations=acts,
        logits=logits,
        pruned=[PrunedMember(**p) for p in meta.get("pruned", [])],
    )
