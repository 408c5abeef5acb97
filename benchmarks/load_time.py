"""How long does `load_model()` take with a warm cache? (issue: a second load < 5 s)

    .venv/bin/python benchmarks/load_time.py [--reps 5]

Loads once to warm the cache (converting the GGUF if needed), then times `--reps` loads in
this process and prints the median, min and max as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time

from tempo_lens.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        load_model()
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            load_model()
            times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "first_load_s": round(first, 2),
                "warm_load_median_s": round(statistics.median(times), 2),
                "warm_load_min_s": round(min(times), 2),
                "warm_load_max_s": round(max(times), 2),
                "reps": args.reps,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
