"""Kill -9 at random moments: a run save, an experiment and a weight-cache build.

    PYTHONPATH=. .venv/bin/python benchmarks/fault_injection.py [--kills 20] [--only save]

Each trial forks a child process that starts the write (it signals when it starts), sleeps a
random delay drawn from the measured duration of an uninterrupted write (half of the trials
uniform over [0, 1.2 T], half over [0.8 T, 1.05 T], where the final renames happen), then
SIGKILLs it. After every kill the target must hold the old artefact, the new one, or (cache
only) nothing yet — never a partial one — and after the next run no temporary
(`.NAME.tmp-*`, `.NAME.old-*`) and no experiment staging directory may survive.

Prints one JSON object with the counts per scenario; exits 1 if any trial broke a rule.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import tempo_lens as tl  # noqa: E402
from tempo_lens.errors import TempoError  # noqa: E402

torch.set_grad_enabled(False)


def orphans(directory: Path) -> list[str]:
    """Temporaries and staging directories left in `directory`."""
    if not directory.is_dir():
        return []
    return sorted(
        p.name
        for p in directory.iterdir()
        if ".tmp-" in p.name or ".old-" in p.name or p.name.endswith(".partial")
    )


def _fork_and_kill(work: Callable[[], Any], delay: float, limit: float) -> tuple[str, float]:
    ctx = mp.get_context("fork")
    started = ctx.Event()

    def child() -> None:
        torch.set_num_threads(1)  # no inherited thread pool in a forked child
        started.set()
        work()

    proc = ctx.Process(target=child)
    proc.start()
    if not started.wait(limit):
        proc.kill()
        raise RuntimeError("the child never started")
    t0 = time.perf_counter()
    proc.join(delay)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        return "killed", time.perf_counter() - t0
    outcome = "finished" if proc.exitcode == 0 else f"failed ({proc.exitcode})"
    return outcome, time.perf_counter() - t0


def kill_during(work: Callable[[], Any], delay: float, limit: float = 900.0) -> str:
    """Fork a child running `work`, SIGKILL it `delay` s after it signals its start.
    Returns "killed" or "finished" (the write ended before the kill)."""
    return _fork_and_kill(work, delay, limit)[0]


def timed(work: Callable[[], Any]) -> float:
    """Duration of an uninterrupted `work` in a forked child, from its start signal."""
    outcome, seconds = _fork_and_kill(work, 3600.0, 900.0)
    if outcome != "finished":
        raise RuntimeError(f"calibration run {outcome}")
    return seconds


def delays(rng: random.Random, duration: float, n: int) -> list[float]:
    return [
        rng.uniform(0, 1.2 * duration) if i % 2 == 0 else rng.uniform(0.8, 1.05) * duration
        for i in range(n)
    ]


# -- scenarios ----------------------------------------------------------------------------


def _big_run(model: Any, prompt: str, seed: int) -> tl.TempoRun:
    run = tl.generate(model, prompt, threshold=0.1, max_steps=4, eos_token_id=None)
    gen = torch.Generator().manual_seed(seed)
    run.activations = {"big": [torch.randn(4_000_000, generator=gen) for _ in range(3)]}
    return run


def save_scenario(root: Path, kills: int, rng: random.Random) -> dict[str, Any]:
    from tempo_lens.testing import tiny_model

    model = tiny_model("llama")
    old, new = _big_run(model, "old prompt", 1), _big_run(model, "new prompt", 2)
    target = root / "run"
    tl.save_run(old, target)
    duration = timed(lambda: tl.save_run(new, root / "calibration"))
    counts: Counter[str] = Counter()
    for delay in delays(rng, duration, kills):
        counts[kill_during(lambda: tl.save_run(new, target), delay)] += 1
        try:
            back = tl.load_run(target)
            want = old if back.prompt == "old prompt" else new
            same = torch.equal(back.activations["big"][2], want.activations["big"][2])
            counts["target_old" if want is old else "target_new"] += 1
            counts["target_partial"] += not same
        except TempoError:
            counts["target_partial"] += 1
        tl.save_run(old, target)  # the next run
        counts["orphans_after_next_run"] += len(orphans(root))
    return {"write_seconds": round(duration, 3), **counts}


def _exp_raw(max_steps: int) -> dict[str, Any]:
    return dict(
        name="fault",
        kind="sweep",
        prompts=["hello there", "abc d", "The cat sat"],
        thresholds=[0.1],
        next_from=["mixture", "last"],
        max_steps=max_steps,
        stop_at_eos=False,
    )


def _experiment_state(out: Path) -> str:
    """old / new / partial: summary, config and every run must agree and load."""
    import yaml

    from tempo_lens.analysis.experiments.runner import load_summary

    try:
        load_summary(out)
        steps = yaml.safe_load((out / "config.yaml").read_text())["max_steps"]
        runs = sorted((out / "runs").iterdir())
        if len(runs) != 12 or any(tl.load_run(r).config["max_steps"] != steps for r in runs):
            return "partial"
    except (TempoError, OSError, KeyError):
        return "partial"
    return {3: "old", 5: "new"}.get(steps, "partial")


def experiment_scenario(root: Path, kills: int, rng: random.Random) -> dict[str, Any]:
    from tempo_lens.analysis.experiments.config import resolve
    from tempo_lens.analysis.experiments.runner import run_experiment
    from tempo_lens.testing import tiny_model

    model = tiny_model("llama")
    out = root / "exp"

    def run(max_steps: int, where: Path = out) -> None:
        run_experiment(resolve(_exp_raw(max_steps)), where, model=model)

    run(3)
    duration = timed(lambda: run(5, root / "calibration"))
    counts: Counter[str] = Counter()
    for delay in delays(rng, duration, kills):
        counts[kill_during(lambda: run(5), delay)] += 1
        counts[f"target_{_experiment_state(out)}"] += 1
        run(3)  # the next run (resumes from whatever the kill left)
        counts["orphans_after_next_run"] += len(orphans(root)) + len(orphans(out / "runs"))
    return {"write_seconds": round(duration, 3), **counts}


def cache_scenario(root: Path, kills: int, rng: random.Random) -> dict[str, Any]:
    from tempo_lens import loading

    os.environ[loading.CACHE_ENV] = str(root / "cache")
    entry = loading.cache_dir() / loading.CACHE_ENTRY
    key = loading.embedded_cache_key(loading.embedded_gguf_path())

    def build() -> None:
        loading.load_model()

    duration = timed(build)  # the first (uninterrupted) build
    counts: Counter[str] = Counter()
    for delay in delays(rng, duration, kills):
        shutil.rmtree(entry, ignore_errors=True)  # every trial builds
        counts[kill_during(build, delay)] += 1
        if not entry.exists():
            counts["target_absent"] += 1
        elif loading.read_cache(entry, key) is not None:
            counts["target_new"] += 1
        else:
            counts["target_partial"] += 1
    loading.load_model()  # the next run
    counts["orphans_after_next_run"] += len(orphans(entry.parent))
    return {"build_seconds": round(duration, 3), **counts}


SCENARIOS = {"save": save_scenario, "experiment": experiment_scenario, "cache": cache_scenario}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kills per scenario")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    result: dict[str, Any] = {}
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix=f"fault-{name}-") as tmp:
            t0 = time.perf_counter()
            result[name] = SCENARIOS[name](Path(tmp), args.kills, rng)
            result[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({name: result[name]}), flush=True)
    bad = sum(
        r.get("target_partial", 0) + r.get("orphans_after_next_run", 0) for r in result.values()
    )
    print(json.dumps({"violations": bad, **result}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
