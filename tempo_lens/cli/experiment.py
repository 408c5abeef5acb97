"""`tempo-lens experiment`: run an experiment config into an output directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

NAME = "experiment"
HELP = "run an experiment config (YAML) into an output directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment config (YAML), e.g. experiments/exp1_attention.yaml")
    p.add_argument("--out", default=None, help="output directory (default runs/experiments/NAME)")
    p.add_argument("--model", default=None, help="model, overriding the config's model:")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--engine",
        choices=["inprocess", "ray"],
        default="inprocess",
        help="who generates the runs: this process (default) or Ray tasks on a cluster "
        '(pip install "tempo_lens[distributed]"; docs/distributed.md)',
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray: 'auto' or HOST:PORT of a running cluster (default: a local one)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="Ray: actors, each loading the model once"
    )
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        help="Ray: GPUs of each actor (the model then loads on cuda)",
    )


def run(args: Any) -> int:
    from tempo_lens.analysis.experiments.config import load_config
    from tempo_lens.analysis.experiments.engines import check_engine
    from tempo_lens.analysis.experiments.runner import default_out, run_experiment
    from tempo_lens.storage import check_target

    section = load_config(args.config)
    if args.model is not None:
        section["model"] = args.model
    check_engine(args.engine, args.address, args.workers, args.gpus_per_worker)
    if args.out is not None:  # as given: Path("") would be the current directory
        check_target(args.out, "experiment")
    out = Path(args.out) if args.out is not None else default_out(section)
    check_target(out, "experiment")  # before any model loads
    summary = run_experiment(
        section,
        out,
        progress=not args.no_progress,
        engine=args.engine,
        address=args.address,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
    )
    t = summary["timing"]
    print(
        f"{section['name']} ({section['kind']}): wrote {out}/summary.json, report.md, "
        f"config.yaml, runs/ | {t.get('generated_runs', 0)} runs generated, "
        f"{t.get('skipped_runs', 0)} reused | {t['wall_seconds']:.1f} s"
        + (f" | engine {t['engine']}" if "engine" in t else "")
    )
    return 0
