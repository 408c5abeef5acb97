"""`tempo-lens info`: describe a model."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

NAME = "info"
HELP = "describe a model (layers, heads, positions, load time)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="model (default: embedded SmolLM2)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: Any) -> int:
    from tempo_lens.loading import describe
    from tempo_lens.quiet import load_model_quietly

    t0 = time.perf_counter()
    model = load_model_quietly(args.model)
    info = describe(model) | {"load_seconds": round(time.perf_counter() - t0, 2)}
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0
