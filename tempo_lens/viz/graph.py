"""The parallel-set graph: steps left to right, each step's members stacked with their
probabilities, and links showing which members fed the next step's distribution.

Plain SVG written here (no JavaScript), so it shows the same in a notebook, a report
and a browser with scripts off. Structure, for tools and tests: one
`<g class="step" data-step=i>` per step holding one `<g class="member">` per member;
links are `<path class="link" data-from="i:j" data-to="i+1:k">`.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from tempo_lens.run import TempoRun
from tempo_lens.viz.attention import show_token

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
    mixture weights p_j / sum p, or all weight on the last / the first member."""
    probs = run.steps[step].probs
    mode = run.config.get("next_from", "mixture")
    if mode == "last":
        return [0.0] * (len(probs) - 1) + [1.0]
    if mode == "first":
        return [1.0] + [0.0] * (len(probs) - 1)
    total = sum(probs)
    return [p / total for p in probs]


def set_graph(run: TempoRun) -> SetGraph:
    """The run as a parallel-set graph (see the module docstring for its structure)."""
    columns: list[list[tuple[float, float]]] = []  # per step: (y, height) per member
    for ps in run.steps:
        y = float(TOP)
        col = []
        for p in ps.probs:
            h = max(MIN_H, p * FULL_H)
            col.append((y, h))
            y += h + GAP
        columns.append(col)
    height = int(max((c[-1][0] + c[-1][1] for c in columns), default=TOP) + 20)
    width = LEFT * 2 + max(len(columns), 1) * COL_W
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="tempo-set-graph" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" '
        'font-size="11">',
        f"<title>{escape(run.text())}</title>",
        '<g class="links" fill="none" stroke="#264653">',
    ]
    for i in range(len(columns) - 1):
        weights = feeding_weights(run, i)
        x0 = LEFT + i * COL_W + NODE_W
        x1 = LEFT + (i + 1) * COL_W
        for j, ((y0, h0), w) in enumerate(zip(columns[i], weights, strict=True)):
            if w <= 0:
                continue
            for k, (y1, h1) in enumerate(columns[i + 1]):
                a, b = y0 + h0 / 2, y1 + h1 / 2
                mid = (x0 + x1) / 2
                parts.append(
                    f'<path class="link" data-from="{i}:{j}" data-to="{i + 1}:{k}" '
                    f'd="M{x0},{a:.1f} C{mid},{a:.1f} {mid},{b:.1f} {x1},{b:.1f}" '
                    f'stroke-width="{0.5 + 4 * w:.2f}" stroke-opacity="{0.15 + 0.5 * w:.2f}"/>'
                )
    parts.append("</g>")
    strs_per_step = [run.step_strs(i) for i in range(len(run.steps))]
    for i, (ps, col) in enumerate(zip(run.steps, columns, strict=True)):
        x = LEFT + i * COL_W
        parts.append(f'<g class="step" data-step="{i}" data-position="{ps.position}">')
        parts.append(
            f'<text class="step-label" x="{x}" y="{TOP - 22}" fill="#333">step {i}</text>'
            f'<text x="{x}" y="{TOP - 9}" fill="#777">pos {ps.position}</text>'
        )
        color = MULTI if len(ps) > 1 else SINGLE
        for j, ((y, h), tok, p, s) in enumerate(
            zip(col, ps.tokens, ps.probs, strs_per_step[i], strict=True)
        ):
            label = show_token(s)
            parts.append(
                f'<g class="member" data-step="{i}" data-rank="{j}" data-token-id="{tok}" '
                f'data-prob="{p:.6f}">'
                f"<title>{escape(repr(s))} p={p:.4f} (id {tok}, position {ps.position})</title>"
                f'<rect x="{x}" y="{y:.1f}" width="{NODE_W}" height="{h:.1f}" rx="3" '
                f'fill="{color}" fill-opacity="{0.35 + 0.65 * min(p * 2, 1):.2f}"/>'
                f'<text x="{x + 4}" y="{y + 12:.1f}" fill="#000">{escape(_clip(label))}</text>'
                f'<text x="{x + NODE_W - 3}" y="{y + 12:.1f}" text-anchor="end" '
                f'fill="#000">{p:.2f}</text></g>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return SetGraph("".join(parts))
