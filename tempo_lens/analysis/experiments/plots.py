"""PNG plots of the experiment reports (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def save_plot(out_dir: Path, name: str, draw: Callable[[Any], None]) -> Path:
    """One 7×3.6 inch figure: `draw(ax)` fills its axes; saved as `out_dir/name` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
