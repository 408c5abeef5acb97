"""docs/ablations.md, generated from the ablation experiments' summaries.

    for f in experiments/ablations/*.yaml; do tempo-lens experiment "$f"; done
    python experiments/ablations/report.py runs/experiments --out docs/ablations.md

reads `summary.json` of every ablation experiment under the given directory (by its `kind`)
and renders `experiments/ablations/ablations.md.j2`: the prose there, the figures from the
summaries. Nothing in the markdown is typed by hand.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

from tempo_lens.analysis.experiments.runner import load_summary
from tempo_lens.errors import TempoError
from tempo_lens.storage import write_file_atomic

KINDS = (
    "layer_patching",
    "activation_patching",
    "partial_isolation",
    "position_ablation",
    "dynamic_threshold",
    "member_knockout",
)
TEMPLATE = Path(__file__).with_name("ablations.md.j2")
COMMAND = ("python", "experiments/ablations/report.py")


def num(x: Any, digits: int = 3) -> str:
    """A figure as text: 3 significant digits, n/a for a missing one."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, int):
        return str(x)
    return f"{x + 0.0:.{digits}g}".replace("-0", "0") if x == 0 else f"{x:.{digits}g}"


def pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def all_positions(direction: dict[str, Any]) -> list[str]:
    """Activation patching: the `hook/all` entries of one direction (patch at every
    position), in the config's hook order."""
    return [k for k in direction if k.endswith("/all")]


def layer_rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Layer patching: the five layers whose single removal restores most (pooled), plus
    the first and the last layer, in layer order."""
    r = s["restored"]
    top = [t["layer"] for t in s["top_layers_single"]]
    layers = sorted({0, s["n_layers"] - 1, *top})
    return [
        {
            "layer": L,
            "top": L in top,
            "single": r["single"]["pooled"][L],
            "median": r["single"]["median"][L],
            "q25": r["single"]["q25"][L],
            "q75": r["single"]["q75"][L],
            "negative": r["single"]["share_negative"][L],
            "upto": r["upto"]["pooled"][L],
            "from": r["from"]["pooled"][L],
        }
        for L in layers
    ]


def build(summaries: dict[str, dict[str, Any]], command: str) -> str:
    """The markdown (a pure function of the summaries)."""
    missing = [k for k in KINDS if k not in summaries]
    if missing:
        raise TempoError(
            f"no {missing[0]!r} experiment found; run experiments/ablations/{missing[0]}.yaml"
            " (position_ablation.yaml for position_ablation) first"
        )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters |= {"num": num, "pct": pct, "all_positions": all_positions}
    template = env.get_template(TEMPLATE.name)
    return template.render(s=summaries, command=command, layer_rows=layer_rows, zip=zip)


def write_report(root: Path, out: Path) -> Path:
    """Find the ablation summaries under `root`, render, write `out` atomically."""
    summaries: dict[str, dict[str, Any]] = {}
    for d in sorted(p.parent for p in root.glob("*/summary.json")):
        s = load_summary(d)
        if s.get("kind") in KINDS:
            summaries[s["kind"]] = s
    text = build(summaries, shlex.join([*COMMAND, str(root), "--out", str(out)]))
    write_file_atomic(out, text, kind="ablations")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The script: a one-line error (exit 2) for a user mistake."""
    p = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="directory holding the experiment directories")
    p.add_argument("--out", default="docs/ablations.md", help="markdown file to write")
    args = p.parse_args(argv)
    try:
        path = write_report(Path(args.root), Path(args.out))
    except TempoError as err:
        print(f"report.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
