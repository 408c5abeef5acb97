"""`backend.fast_unembed` on and off (replaced by a no-op) in one process, interleaved:
what it changes in the batched step, in layer patching, and in the sweep's sets.

    python benchmarks/fast_unembed_ab.py step [--reps 15]        # B = 1, 16, 64 steps
    python benchmarks/fast_unembed_ab.py patching [--prompts 4] [--rounds 6]
    python benchmarks/fast_unembed_ab.py sets [--prompts 64] [--skip 0]

`step`: `bench.py`'s batched TEMPO step at B = 1, 16, 64, off / on time with a 95 %
bootstrap interval, and whether the logits are `torch.equal`. `patching`: `layer_patching`
of experiments/ablations/layer_patching.yaml's first N prompts, rounds alternating which
side runs first, off / on and whether the distances are `torch.equal`. `sets`: every
setting of experiments/sweep.yaml (`--skip` the first K settings) generated both ways:
how many runs choose the same sets, and the largest probability difference among them.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bench  # benchmarks/bench.py, beside this script
import torch
import yaml

import tempo_lens as tl
import tempo_lens.backend as backend
from tempo_lens.analysis.ablations import driver
from tempo_lens.analysis.ablations.layer_patching import layer_patching
from tempo_lens.analysis.experiments.config import load_prompt_suite

ROOT = Path(__file__).resolve().parent.parent
ON = backend.fast_unembed


def _off(model, *args, **kwargs) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def side(on: bool, fn: Callable, *args, **kwargs):
    """`fn(...)` with `fast_unembed` on or off (`backend.fast_forward` looks it up per call)."""
    backend.fast_unembed = ON if on else _off
    try:
        return fn(*args, **kwargs)
    finally:
        backend.fast_unembed = ON


def prompts(config: Path, n: int) -> list[str]:
    cfg = yaml.safe_load(config.read_text())
    suite = load_prompt_suite((config.parent / cfg["prompt_suite"]).resolve())
    return [t for ps in suite.values() for t in ps][:n]


def step_ab(model, reps: int) -> None:
    cases: dict[str, bench.Case] = {}
    for b in (1, 16, 64):
        prefixes, sets = bench._unit_layouts(b, 128, model.cfg.d_vocab, 0)
        case = bench._tl_batch_step(model, prefixes, sets)
        for on in (True, False):
            cases[f"{b}/{on}"] = bench.Case(lambda c=case, on=on: side(on, c.step), case.reset)
    equal = {}
    for b in (1, 16, 64):
        out = []
        for on in (True, False):
            out.append(cases[f"{b}/{on}"].step())
            cases[f"{b}/{on}"].reset()
        equal[b] = torch.equal(*out)
    samples = bench.measure(cases, reps, 1)
    for b in (1, 16, 64):
        on, off = samples[f"{b}/True"], samples[f"{b}/False"]
        r = bench.ratio_interval(off, on)
        print(
            f"B={b}: off {statistics.median(off):.1f} ms, on {statistics.median(on):.1f} ms, "
            f"off/on {r['value']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}], "
            f"logits equal {equal[b]}"
        )


def patching_ab(model, n: int, rounds: int) -> None:
    config = ROOT / "experiments" / "ablations" / "layer_patching.yaml"
    cfg = yaml.safe_load(config.read_text())
    section = {
        "prompts": prompts(config, n),
        "thresholds": cfg["thresholds"],
        "max_steps": cfg["max_steps"],
        "next_from": ["mixture"],
    }
    runs = driver.section_runs(model, section)
    refs = driver.Replays.of(model, runs)
    times: dict[bool, list[float]] = {True: [], False: []}
    result = {}
    for r in range(rounds):
        for on in (True, False) if r % 2 == 0 else (False, True):
            t0 = time.perf_counter()
            lp = side(on, layer_patching, model, runs, batch_size=cfg["batch_size"], replays=refs)
            times[on].append(time.perf_counter() - t0)
            result[on] = lp.distances
    ratio = bench.ratio_interval(times[False], times[True])
    print(
        f"layer_patching, {n} prompts, {rounds} rounds: off {statistics.median(times[False]):.2f}"
        f" s, on {statistics.median(times[True]):.2f} s, off/on {ratio['value']:.3f} "
        f"[{ratio['ci95'][0]:.3f}, {ratio['ci95'][1]:.3f}], "
        f"distances equal {torch.equal(result[True], result[False])}"
    )


def sets_ab(model, n: int, skip: int) -> None:
    config = ROOT / "experiments" / "sweep.yaml"
    cfg = yaml.safe_load(config.read_text())
    texts = prompts(config, n)
    settings = list(itertools.product((True, False), cfg["thresholds"], cfg["next_from"]))
    same = total = 0
    worst = 0.0
    for isolate, threshold, next_from in settings[skip:]:
        kwargs = dict(threshold=threshold, isolate=isolate, next_from=next_from)
        out = [
            side(
                on, tl.generate, model, texts, max_steps=cfg["max_steps"], progress=False, **kwargs
            )
            for on in (True, False)
        ]
        for a, b in zip(*out, strict=True):
            total += 1
            if [s.tokens for s in a.steps] == [s.tokens for s in b.steps]:
                same += 1
                for x, y in zip(a.steps, b.steps, strict=True):
                    worst = max(worst, *(abs(p - q) for p, q in zip(x.probs, y.probs, strict=True)))
        print(f"{kwargs}: {same} / {total} runs the same sets so far, max |dp| {worst:.3g}")
    print(f"same sets {same} / {total}; largest probability difference among them {worst:.3g}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("step", "patching", "sets"))
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--prompts", type=int, help="prompts (patching: 4, sets: 64)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--skip", type=int, default=0, help="sets: settings already checked")
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = tl.load_model()
    if args.what == "step":
        step_ab(model, args.reps)
    elif args.what == "patching":
        patching_ab(model, args.prompts or 4, args.rounds)
    else:
        sets_ab(model, args.prompts or 64, args.skip)
    print(f"load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
