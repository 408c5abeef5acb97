"""`tempo-lens generate`: one TEMPO generation, printed as bracket text (or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tempo_lens.errors import TempoError

NAME = "generate"
HELP = "generate with TEMPO and print bracket text"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("--threshold", type=float, default=0.1, help="keep tokens with p >= this")
    p.add_argument("--max-steps", type=int, default=15, help="logical steps (default 15)")
    p.add_argument("--visible", action="store_true", help="let set members see each other")
    p.add_argument("--next-from", default="mixture", help="mixture (default), last or first")
    p.add_argument("--max-parallel", type=int, default=None, help="cap on set size")
    p.add_argument("--model", default=None, help="model (default: embedded SmolLM2)")
    p.add_argument("--cache", nargs="*", default=None, help="hooks to capture, e.g. hook_pattern")
    p.add_argument("--out", default=None, help="save the run to this directory")
    p.add_argument("--json", action="store_true", help="print the run as JSON")


def run(args: Any) -> int:
    from tempo_lens.config import mode_of, validate
    from tempo_lens.generate import generate
    from tempo_lens.quiet import load_model_quietly
    from tempo_lens.storage import check_target

    validate(args.threshold, args.max_steps, args.next_from, args.max_parallel)
    if not args.prompt.strip():
        raise TempoError("the prompt is empty; pass some text")
    if args.out is not None:  # before any model loads
        check_target(args.out, "run")
    model = load_model_quietly(args.model)
    run = generate(
        model,
        args.prompt,
        threshold=args.threshold,
        max_steps=args.max_steps,
        isolate=not args.visible,
        next_from=args.next_from,
        max_parallel=args.max_parallel,
        cache=args.cache,
        progress=sys.stderr.isatty(),
    )
    if args.out is not None:
        run.save(args.out)
    if args.json:
        print(json.dumps(run.to_json(), indent=1))
        return 0
    print(args.prompt + run.text(color=sys.stdout.isatty()))
    s = run.stats()
    line = (
        f"steps {s['steps']} | physical tokens {s['physical_tokens']} | max set "
        f"{s['max_set_size']} | {s['seconds']:.2f} s | {s['steps_per_s']} steps/s | "
        f"{mode_of(not args.visible)} | stop: {s['stop_reason']}"
    )
    if args.out is not None:
        line += f" | saved to {args.out}"
    print(line)
    return 0
