"""The embedded model's unembedding as TL computes it (one `F.linear` over the whole
vocabulary) against `backend.fast_unembed` (blocks of `UNEMBED_BLOCK` vocabulary rows
times xᵀ, transposed into one output), interleaved, at the row counts TEMPO's forwards
have: one row (a batch-1 step of one token), a few (a set, a batched step), hundreds (an
ablation replay of 16 layouts).

    python benchmarks/unembed_blocks.py [--reps 15] [--json FILE]

Prints, per row count, both medians in ms and TL / blocked with a 95 % bootstrap
interval (`bench.ratio_interval`: repetitions resampled in pairs), and whether the two
outputs are `torch.equal`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from bench import Case, measure, median, ratio_interval  # benchmarks/bench.py, beside this

from tempo_lens import load_model
from tempo_lens.backend import UNEMBED_BLOCK, fast_unembed
from tempo_lens.storage import write_json_atomic

ROWS = (1, 2, 4, 8, 16, 32, 64, 272)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--json", type=Path, help="write the result here (JSON, atomically)")
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = load_model()
    g = torch.Generator().manual_seed(0)
    cases: dict[str, Case] = {}
    equal: dict[int, bool] = {}
    with torch.no_grad():
        for rows in ROWS:
            x = torch.randn(rows, model.cfg.d_model, generator=g)

            def blocked(x: torch.Tensor = x) -> torch.Tensor:
                with fast_unembed(model):
                    return model.unembed(x)

            cases[f"tl/{rows}"] = Case(lambda x=x: model.unembed(x))
            cases[f"blocked/{rows}"] = Case(blocked)
            equal[rows] = torch.equal(model.unembed(x), blocked())
        samples = measure(cases, args.reps, warmup=1)
    result = {
        "block": UNEMBED_BLOCK,
        "reps": args.reps,
        "load_average": list(os.getloadavg()),
        "rows": {
            rows: {
                "tl_ms": round(median(samples[f"tl/{rows}"]), 2),
                "blocked_ms": round(median(samples[f"blocked/{rows}"]), 2),
                "tl_over_blocked": ratio_interval(
                    *(samples[f"{k}/{rows}"] for k in ("tl", "blocked"))
                ),
                "torch_equal": equal[rows],
            }
            for rows in ROWS
        },
    }
    for rows, r in result["rows"].items():
        ratio = r["tl_over_blocked"]
        lo, hi = ratio["ci95"]
        print(
            f"{rows:4d} rows: TL {r['tl_ms']:7.2f} ms, blocked {r['blocked_ms']:7.2f} ms, "
            f"TL/blocked {ratio['value']:.2f} [{lo:.2f}, {hi:.2f}]"
            f"{' NOISY' if ratio['noisy'] else ''}, equal {r['torch_equal']}"
        )
    print(f"load {result['load_average']}")
    if args.json:
        write_json_atomic(args.json, json.loads(json.dumps(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
