"""The two figures every ablation result draws: curves over a swept value, and a heat
map. Both return a matplotlib `Figure` (no pyplot state); `fig.savefig(path)` writes it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure


def line_figure(
    x: Sequence[float],
    curves: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    bands: Mapping[str, tuple[Sequence[float | None], Sequence[float | None]]] | None = None,
) -> Figure:
    """One line per named curve over `x` (None values are gaps), with an optional shaded
    band per curve (e.g. the inter-quartile range over prompts)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    num = lambda ys: [math.nan if v is None else float(v) for v in ys]  # noqa: E731
    for name, ys in curves.items():
        (line,) = ax.plot(list(x), num(ys), marker="o", markersize=3, label=name)
        if bands and name in bands:
            lo, hi = bands[name]
            ax.fill_between(list(x), num(lo), num(hi), color=line.get_color(), alpha=0.15)
    if logy:
        ax.set_yscale("symlog", linthresh=1e-4)
    if logx:
        ax.set_xscale("symlog", linthresh=1)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def heatmap_figure(
    values: Sequence[Sequence[float | None]],
    *,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
) -> Figure:
    """A `rows × cols` heat map with a colour bar (None cells blank)."""
    fig = Figure(figsize=(1.2 + 0.6 * max(len(cols), 1), 1.2 + 0.4 * max(len(rows), 1)))
    ax = fig.subplots()
    grid = [[math.nan if v is None else float(v) for v in r] for r in values] or [[math.nan]]
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)), list(cols))
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig
