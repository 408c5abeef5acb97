"""The parallel-set graph: steps left to right, each step's members stacked with their
probabilities, and links showing which members fed the next step's distribution.

Plain SVG (templates/set_graph.svg.j2, no JavaScript), so it shows the same in a notebook, a report
and a browser with scripts off. Structure, for tools and tests: one
`<g class="step" data-step=i>` per step holding one `<g class="member">` per member;
links are `<path class="link" data-from="i:j" data-to="i+1:k">`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tempo_lens.generate import next_distribution
from tempo_lens.run import TempoRun
from tempo_lens.viz.attention import show_token
from tempo_lens.viz.templating import render

COL_W = 112  # column pitch
NODE_W = 84
FULL_H = 150  # height of a member with probability 1
MIN_H = 16  # every member stays readable
GAP = 5
TOP = 40
LEFT = 16
LABEL_CHARS = 10
MULTI = "#2a9d8f"  # members of multi-member sets
SINGLE = "#8d99ae"


@dataclass(frozen=True)
class SetGraph:
    """An SVG document; displays inline in Jupyter (`_repr_svg_` / `_repr_html_`)."""

    svg: str

    def _repr_svg_(self) -> str:
        return self.svg

    def _repr_html_(self) -> str:
        return f'<div style="overflow-x:auto">{self.svg}</div>'

    def __str__(self) -> str:
        return self.svg


def _clip(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def feeding_weights(run: TempoRun, step: int) -> list[float]:
    """How much each member of `step` feeds the next distribution (DESIGN's `next_from`):
    generation's own mixture (`generate.next_distribution`) over rows in which member j
    predicts "j" with certainty, so its output is the members' weights."""
    k = len(run.steps[step])
    rows = torch.full((k, k), -math.inf).fill_diagonal_(0.0)
    return next_distribution(rows, run.steps[step].probs, run.config.next_from).tolist()


@dataclass(frozen=True)
class Box:
    """One member's box: its top `y` and height `h`."""

    y: float
    h: float


def set_graph(run: TempoRun) -> SetGraph:
    """The run as a parallel-set graph (see the module docstring for its structure;
    drawn by templates/set_graph.svg.j2)."""
    columns: list[list[Box]] = []  # per step: one box per member
    for ps in run.steps:
        y = float(TOP)
        col = []
        for p in ps.probs:
            col.append(Box(y, max(MIN_H, p * FULL_H)))
            y += col[-1].h + GAP
        columns.append(col)
    links = []
    for i in range(len(columns) - 1):
        x0 = LEFT + i * COL_W + NODE_W
        x1 = LEFT + (i + 1) * COL_W
        mid = (x0 + x1) / 2
        for j, (src, w) in enumerate(zip(columns[i], feeding_weights(run, i), strict=True)):
            if w <= 0:
                continue
            for k, dst in enumerate(columns[i + 1]):
                a, b = src.y + src.h / 2, dst.y + dst.h / 2
                path = f"M{x0},{a:.1f} C{mid},{a:.1f} {mid},{b:.1f} {x1},{b:.1f}"
                links.append(
                    {"source": f"{i}:{j}", "target": f"{i + 1}:{k}", "path": path, "weight": w}
                )
    steps = []
    for i, (ps, col) in enumerate(zip(run.steps, columns, strict=True)):
        members = [
            {
                "token": tok,
                "p": p,
                "y": box.y,
                "h": box.h,
                "title": repr(s),
                "label": _clip(show_token(s)),
            }
            for box, tok, p, s in zip(col, ps.tokens, ps.probs, run.step_strs(i), strict=True)
        ]
        color = MULTI if len(ps) > 1 else SINGLE
        steps.append(
            {
                "index": i,
                "position": ps.position,
                "x": LEFT + i * COL_W,
                "color": color,
                "members": members,
            }
        )
    height = int(max((c[-1].y + c[-1].h for c in columns), default=TOP) + 20)
    svg = render(
        "set_graph.svg.j2",
        width=LEFT * 2 + max(len(columns), 1) * COL_W,
        height=height,
        title=run.text(),
        links=links,
        steps=steps,
        top=TOP,
        node_w=NODE_W,
    )
    return SetGraph(str(svg))
