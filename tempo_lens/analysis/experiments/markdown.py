"""Markdown pieces of the experiment reports: number formatting, tables, rounding."""

from __future__ import annotations

from typing import Any

from tempo_lens.analysis import stats


def fmt(x: Any) -> str:
    """A figure as report text: floats to 4 significant digits, anything else as `str`."""
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; a `|` inside a cell (`max|diff|`) is escaped, not a column break."""

    def cell(x: Any) -> str:
        return fmt(x).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rounded(x: Any) -> Any:
    """Every float in a nested structure rounded to 6 significant digits (`stats.sig`), so
    a summary re-computed from the same runs is written identically."""
    if isinstance(x, float):
        return stats.sig(x)
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [rounded(v) for v in x]
    return x
