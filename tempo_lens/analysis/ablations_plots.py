"""The two plots every ablation needs: curves over a swept value, and a heat map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lines(
    path: str | Path,
    x: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    logx: bool = False,
) -> Path:
    """One line per named curve over `x`, written as a PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ys in curves.items():
        ax.plot(list(x), list(ys), marker="o", markersize=3, label=name)
    if logy:
        ax.set_yscale("symlog", linthresh=1e-4)
    if logx:
        ax.set_xscale("symlog", linthresh=1)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_heatmap(
    path: str | Path,
    values: Sequence[Sequence[float]],
    *,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """A `rows × cols` heat map with a colour bar, written as a PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(cols), 1.2 + 0.4 * len(rows)))
    im = ax.imshow([list(r) for r in values], aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)), list(cols))
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
