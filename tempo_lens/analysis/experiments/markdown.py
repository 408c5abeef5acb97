"""Markdown pieces of the experiment reports: number formatting, tables, rounding."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tempo_lens.analysis import stats

T = TypeVar("T")


def sections(
    heading: str, items: Iterable[T], lines: Callable[[T], list[str]], tail: Iterable[str] = ()
) -> str:
    """A report body: `heading`, each item's `lines(item)`, then `tail`."""
    out = [heading, ""]
    for item in items:
        out += lines(item)
    return "\n".join([*out, *tail])


def sections_report(
    heading: str,
    key: str,
    lines: Callable[[dict[str, Any]], list[str]],
    tail: Callable[[dict[str, Any]], list[str]] | None = None,
) -> Callable[[dict[str, Any], dict[str, Any]], str]:
    """A kind's `report`: `heading`, `lines(item)` for each item of `summary[key]`, then
    `tail(summary)`."""

    def report(summary: dict[str, Any], section: dict[str, Any]) -> str:
        return sections(heading, summary[key], lines, tail(summary) if tail else ())

    return report


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


def layer_table(columns: dict[str, list[Any]]) -> str:
    """A markdown table of per-layer figures: a `layer` column, then each named column's
    value at that layer (a column shorter than the first shows `-`)."""
    n = len(next(iter(columns.values())))
    rows = [[L, *(c[L] if L < len(c) else "-" for c in columns.values())] for L in range(n)]
    return table(["layer", *columns], rows)


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
