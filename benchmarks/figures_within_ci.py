"""Whether a re-run experiment's figures lie inside the intervals an earlier run stated.

    python benchmarks/figures_within_ci.py runs/experiments/sweep NEW_SWEEP_DIR

Walks both `summary.json` files side by side and, for every estimate the earlier one
gives with a 95% interval (a mean and `ci95`, a share and `ci95`, a paired `mean_diff`
and `ci95_diff`, a `geometric_mean` and `ci`), says whether the new run's estimate of the
same figure lies inside it. Prints the count and every figure outside; exit 1 if any is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tempo_lens.analysis.experiments.runner import load_summary
from tempo_lens.errors import TempoError

# (estimate, its interval) as the summaries name them
PAIRS = (("mean", "ci95"), ("share", "ci95"), ("mean_diff", "ci95_diff"), ("geometric_mean", "ci"))


def estimates(old: Any, new: Any, path: str = "") -> Iterator[tuple[str, float, list, Any]]:
    """(path, new estimate, old interval, old estimate) of every interval-carrying figure
    of `old` that `new` also has."""
    if isinstance(old, dict) and isinstance(new, dict):
        for est, ci in PAIRS:
            interval = old.get(ci)
            if isinstance(interval, list) and len(interval) == 2 and new.get(est) is not None:
                yield path or "/", float(new[est]), interval, old.get(est)
        for key, value in old.items():
            if key in new:
                yield from estimates(value, new[key], f"{path}/{key}")
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            if isinstance(a, dict | list):
                yield from estimates(a, b, f"{path}[{i}]")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("earlier", type=Path, help="the run whose intervals are the reference")
    p.add_argument("new", type=Path)
    p.add_argument("--under", default="", help="only figures whose path starts so, e.g. /configs")
    args = p.parse_args()
    try:
        old, new = load_summary(args.earlier), load_summary(args.new)
    except TempoError as err:
        p.error(str(err))
    rows = [r for r in estimates(old, new) if r[0].startswith(args.under)]
    outside = [r for r in rows if not (min(r[2]) <= r[1] <= max(r[2]))]
    print(f"{len(rows) - len(outside)} of {len(rows)} figures inside the earlier 95% interval")
    for path, value, interval, was in outside:
        print(f"  outside: {path}: {value:.6g} (was {was}, interval {interval})")
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
