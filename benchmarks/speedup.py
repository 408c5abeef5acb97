"""Wall time of one experiment config on this code against an earlier commit, side by side.

Both run as fresh `tempo-lens experiment` processes on the same machine, alternating
(round r runs base then head for even r, head then base for odd r, so drift in the
machine's load hits both), each into a fresh output directory. Reported: every wall
time with the load average before it, the speed-up (median base / median head) with
its range over rounds, and how many runs chose the same sets at every step.

    python benchmarks/speedup.py experiments/sweep.yaml --max-prompts 16 --rounds 2
    python benchmarks/speedup.py experiments/ablations/layer_patching.yaml --max-prompts 6
    python benchmarks/speedup.py experiments/sweep.yaml --rounds 1 --keep runs/speedup_sweep

`--base` (default: the commit before batched TEMPO) is checked out as a detached git
worktree in a temporary directory; both sides use this environment's packages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tempo_lens.errors import TempoError
from tempo_lens.storage import result_target, write_file_atomic

ROOT = Path(__file__).resolve().parent.parent
RESULT_KEYS = ("config", "speedup_median")  # what an earlier result has (`--json` replaces it)
BASE = "88a9d22"  # "Experiments: work units ..." — the parent of the batched-TEMPO commit

# Run the CLI of the checkout at argv[1], not the editable install of this one.
LAUNCH = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)];"
    "sys.path.insert(0, sys.argv.pop(1)); from tempo_lens.cli import main; sys.exit(main())"
)


def subset_config(config: Path, max_prompts: int | None, out: Path) -> Path:
    """The config with `max_prompts` and its prompt suite made absolute. Both sides get
    the same prompts, the suite's first N: a `sample:` key (which the earlier commit does
    not know) is dropped."""
    raw = yaml.safe_load(config.read_text())
    raw.pop("sample", None)
    if max_prompts is not None:
        raw["max_prompts"] = max_prompts
    if raw.get("prompt_suite"):
        raw["prompt_suite"] = str((config.parent / raw["prompt_suite"]).resolve())
    path = out / config.name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_once(checkout: Path, config: Path, out: Path) -> float:
    cmd = [sys.executable, "-c", LAUNCH, str(checkout), "experiment", str(config)]
    cmd += ["--out", str(out), "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=checkout, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


SETTINGS = ("threshold", "isolate", "next_from", "max_steps", "max_parallel")


def run_sets(out: Path) -> dict[str, list[list[int]]]:
    """(prompt, settings) -> the token ids of every step's set. Keyed by what the run
    is, not by its id, whose scheme changed between the commits."""
    sets = {}
    for meta in sorted((out / "runs").glob("*/run.json")):
        run = json.loads(meta.read_text())
        config = run.get("config") or {}
        key = json.dumps([run.get("prompt"), *(config.get(k) for k in SETTINGS)])
        sets[key] = [s["tokens"] for s in run["steps"]]
    return sets


SWEEP_FIGURES = ("forced_kl_mean", "free_kl_mean", "forced_attention_corr", "divergence_step")


def headline(out: Path) -> dict[str, float | None]:
    """The figures both sides' summary.json carry under the same names: an ablation's
    KLs, or the sweep's means at every setting (`<setting>/<figure>`)."""
    summary = json.loads((out / "summary.json").read_text())
    keys = ("kl_vis_iso_members", "kl_vis_iso_next", "n_prompts")
    found = {k: summary[k] for k in keys if isinstance(summary.get(k), int | float)}
    for setting, blocks in (summary.get("configs") or {}).items():
        for k in SWEEP_FIGURES:
            found[f"{setting}/{k}"] = (blocks.get("all", {}).get(k) or {}).get("mean")
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("--base", default=BASE, help=f"the earlier commit (default {BASE})")
    p.add_argument("--max-prompts", type=int, default=None)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="a new directory to keep both sides' experiment outputs in (<side>-<round>/)",
    )
    args = p.parse_args()
    try:  # refused before any work
        result_file = result_target(args.json, RESULT_KEYS) if args.json else None
    except TempoError as err:
        p.error(str(err))
    if args.keep is not None and args.keep.exists():
        p.error(f"--keep {args.keep} exists; name a new directory")
    with tempfile.TemporaryDirectory(prefix="tempo-speedup-") as tmp:
        tmp_dir = Path(tmp)
        base_tree = tmp_dir / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.base],
            check=True,
            capture_output=True,
        )
        try:
            config = subset_config(args.config.resolve(), args.max_prompts, tmp_dir)
            sides = {"base": base_tree, "head": ROOT}
            times: dict[str, list[float]] = {"base": [], "head": []}
            loads: dict[str, list[float]] = {"base": [], "head": []}
            sets: dict[str, dict[str, list[list[int]]]] = {}
            figures: dict[str, dict[str, float | None]] = {}
            for r in range(args.rounds):
                for side in ("base", "head") if r % 2 == 0 else ("head", "base"):
                    out = tmp_dir / f"{side}-{r}"
                    loads[side].append(round(os.getloadavg()[0], 2))
                    times[side].append(run_once(sides[side], config, out))
                    sets.setdefault(side, run_sets(out))
                    figures.setdefault(side, headline(out))
                    if args.keep is not None:
                        shutil.copytree(out, args.keep / out.name)
                    print(f"round {r} {side}: {times[side][-1]:.1f} s (load {loads[side][-1]})")
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)],
                check=False,
                capture_output=True,
            )
    ratios = [b / h for b in times["base"] for h in times["head"]]
    common = sorted(set(sets["base"]) & set(sets["head"]))
    same = sum(sets["base"][k] == sets["head"][k] for k in common)
    result = {
        "config": str(args.config),
        "max_prompts": args.max_prompts,
        "base": args.base,
        "runs": len(common),
        "same_sets": same,
        "seconds": times,
        "load_before": loads,
        "figures": figures,
        "speedup_median": statistics.median(times["base"]) / statistics.median(times["head"]),
        "speedup_range": [min(ratios), max(ratios)],
    }
    print(json.dumps(result, indent=2))
    if result_file is not None:
        write_file_atomic(result_file, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
