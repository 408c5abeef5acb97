"""The Ray engine's overhead on one machine: the seed-study sweep's generation, in-process
against a local 2-worker Ray cluster, side by side and interleaved.

    python benchmarks/ray_overhead.py [--stride 16] [--thresholds 0.1] [--reps 4]
                                      [--worker-niceness 0] [--out result.json]

The work is experiments/sweep.yaml's grid (thresholds 0.1/0.05/0.2 × next_from
mixture/last × isolated/visible, 15 steps, the embedded SmolLM2-135M-Instruct) on a
subset: every `--stride`-th of its 64 prompts (4 prompts across the categories at the
default) and the `--thresholds` given (default: all three; `--stride 1` with all
thresholds is the whole sweep, ~15 min a pass in-process on an idle machine). Both engines get
the same work units (`work_units` at the runner's batch size) and generate them through
the same `generate_units` the runner calls; the driver's analysis, identical for both,
is not timed. The Ray cluster and its workers (each loading the model once) are started
before the timed passes; that start-up is reported on its own. Each repetition times one
in-process pass and one Ray pass (order alternating); the overhead is the ratio Ray /
in-process per repetition: median and bootstrap 95% CI over the repetitions. The machine
load (os.getloadavg) is recorded around every pass: on a shared machine it is part of
the spread. Ray starts its workers at niceness 15; `--worker-niceness 0` renices them to
the driver's, so that on a machine shared with other work the comparison is of the
engines, not of OS priorities (on a dedicated machine niceness changes nothing).
Each Ray worker computes with one thread (an actor of one CPU); `--workers 1
--inprocess-threads 1` compares the same compute on both sides, so the ratio is Ray's own
cost (scheduling, moving runs between processes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from tempo_lens import load_model
from tempo_lens.analysis.experiments.config import load_config
from tempo_lens.analysis.experiments.engines import InProcessEngine, RayEngine, model_identity
from tempo_lens.analysis.experiments.runs import RunOptions, batch_rows, grid, work_units
from tempo_lens.analysis.stats import bootstrap_ci
from tempo_lens.errors import TempoError
from tempo_lens.generate import tokenize
from tempo_lens.storage import result_target, write_file_atomic

# what an earlier result of this script has (--out may replace it)
RESULT_KEYS = ("ray_init_s", "goal")

ROOT = Path(__file__).resolve().parents[1]


def timed_pass(engine, units, options) -> tuple[float, int, list[float]]:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    runs = sum(len(r) for _, r in engine.generate_units(units, options))
    return time.perf_counter() - t0, runs, [load, os.getloadavg()[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "experiments" / "sweep.yaml"))
    parser.add_argument("--stride", type=int, default=16, help="every N-th prompt of the suite")
    parser.add_argument("--thresholds", type=float, nargs="+", default=None)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--worker-niceness", type=int, default=None)
    parser.add_argument(
        "--inprocess-threads", type=int, default=None, help="torch threads of the in-process pass"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    try:  # refused before any work
        result_file = result_target(args.out, RESULT_KEYS) if args.out else None
    except TempoError as err:
        parser.error(str(err))

    import ray

    torch.set_grad_enabled(False)
    if args.inprocess_threads:
        torch.set_num_threads(args.inprocess_threads)
    section = load_config(args.config)
    section["prompts"] = section["prompts"][:: args.stride]
    if args.thresholds:
        section["thresholds"] = args.thresholds
    model = load_model(section["model"])
    specs = grid(section, ["isolated", "visible"], "config")
    options = RunOptions(
        max_steps=section["max_steps"],
        max_parallel=section["max_parallel"],
        eos_token_id=-1 if section["stop_at_eos"] else None,
    )
    longest = max(len(tokenize(model, s.prompt)) for s in specs)
    units = work_units(specs, size=batch_rows(model, options, longest))

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0
    ray_engine = RayEngine(
        section["model"], workers=args.workers, expect_model=model_identity(model)
    )
    t_workers = time.perf_counter() - t0 - t_init
    pids = ray_engine.worker_pids()
    niceness = {pid: os.getpriority(os.PRIO_PROCESS, pid) for pid in pids}
    if args.worker_niceness is not None:
        for pid in pids:
            os.setpriority(os.PRIO_PROCESS, pid, args.worker_niceness)
    local = InProcessEngine(model)

    timing: dict[str, list[float]] = {"inprocess": [], "ray": []}
    loads: dict[str, list[list[float]]] = {"inprocess": [], "ray": []}
    for rep in range(args.reps):
        order = ("inprocess", "ray") if rep % 2 == 0 else ("ray", "inprocess")
        for name in order:
            engine = local if name == "inprocess" else ray_engine
            seconds, n, load = timed_pass(engine, units, options)
            assert n == len(specs), (name, n, len(specs))
            timing[name].append(seconds)
            loads[name].append(load)
            print(
                f"rep {rep} {name}: {seconds:.1f} s, load {load[0]:.2f} -> {load[1]:.2f}",
                flush=True,
            )
    ray_engine.close()
    ray.shutdown()

    ratios = [r / i for r, i in zip(timing["ray"], timing["inprocess"], strict=True)]
    ci = bootstrap_ci(ratios)
    result = {
        "work": (
            f"{Path(args.config).name}: every {args.stride}th prompt "
            f"({len(section['prompts'])} of 64: {[p['id'] for p in section['prompts']]}), "
            f"thresholds {section['thresholds']}, "
            f"next_from {section['next_from']}, both modes, max_steps {section['max_steps']}"
        ),
        "model": model.cfg.model_name,
        "runs_per_pass": len(specs),
        "units_per_pass": len(units),
        "rows_per_unit": max(len(u) for u in units),
        "reps": args.reps,
        "workers": args.workers,
        "torch_threads_inprocess": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "inprocess_s": [round(x, 2) for x in timing["inprocess"]],
        "ray_s": [round(x, 2) for x in timing["ray"]],
        "ratio_ray_over_inprocess": [round(x, 4) for x in ratios],
        "ratio_median": round(statistics.median(ratios), 4),
        "ratio_ci95": [round(x, 4) for x in ci] if ci else None,
        "ray_worker_niceness_default": sorted(set(niceness.values())),
        "ray_worker_niceness_used": args.worker_niceness,
        "ray_init_s": round(t_init, 2),
        "ray_workers_start_s": round(t_workers, 2),
        "loadavg_1min_before_after": loads,
        "goal": "ratio <= 1.15",
    }
    text = json.dumps(result, indent=1)
    print(text)
    if result_file is not None:
        write_file_atomic(result_file, text + "\n")


if __name__ == "__main__":
    main()
