"""How far layer patching is from its compute floor: phase wall times of the study in one
process, the FLOPs its exact computation needs, and this machine's matrix-product rates.

The study is experiments/ablations/layer_patching.yaml's, on the first N prompts of its
suite (what `benchmarks/speedup.py --max-prompts N` runs): generation, the reference
replays, `layer_patching`, then `head_patching` on its top layers. The work it cannot skip
is, per (prompt, schedule) pair that is not a reference replay, every row after the
shared prefix through every layer from the pair's start layer, and the unembedding of
those rows. Its FLOPs: 2 x (weights of a block) per row-layer, 2 x d_model x d_vocab per
unembedded row. The floor is those FLOPs at the best rate `torch.nn.functional.linear`
reaches on the blocks' shapes here, and the unembedding's at the rate its blocked product
(`backend.fast_unembed`) reaches (each product timed alone, the median of 5 runs).

    python benchmarks/patching_floor.py --json benchmarks/results/patching_floor.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

import tempo_lens as tl
from tempo_lens.analysis.ablations import driver
from tempo_lens.analysis.ablations.layer_patching import (
    head_patching,
    head_schedules,
    layer_patching,
    layer_schedules,
)
from tempo_lens.analysis.experiments.config import load_prompt_suite
from tempo_lens.backend import Model, fast_unembed
from tempo_lens.storage import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "ablations" / "layer_patching.yaml"


def needed_work(refs: list[driver.Replays], bias: torch.Tensor, n_layers: int) -> dict[str, int]:
    """Row-layers and unembedded rows the schedules `bias` need: the variants `ablate`
    replays (`driver.replay_plan`), each row after its shared prefix, from its start layer."""
    per_ref = [driver.schedule_variants(bias, ref) for ref in refs]
    row_layers = rows_out = 0
    for r, i in driver.replay_plan(refs, per_ref)[2]:
        v = per_ref[r][i]
        rows = len(refs[r].layout) - refs[r].shared_rows(v)
        row_layers += rows * (n_layers - v.start_layer)
        rows_out += rows
    return {"row_layers": row_layers, "unembedded_rows": rows_out}


def gflop_s(fn, flop: int, reps: int = 5) -> float:
    """GFLOP/s of `fn()` doing `flop` FLOPs: the median of `reps` timed runs after one."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return flop / statistics.median(times) / 1e9


def linear_rate(m: int, k: int, n: int, reps: int = 5) -> float:
    """GFLOP/s of `F.linear` for `[m, k] x [k, n]` (median of `reps` timed runs)."""
    x, w = torch.randn(m, k), torch.randn(n, k)
    return gflop_s(lambda: torch.nn.functional.linear(x, w), 2 * m * k * n, reps)


def unembed_rate(model: Model, rows: int, reps: int = 5) -> float:
    """GFLOP/s of the model's unembedding of `[rows, d_model]` as the study's forwards
    run it (`backend.fast_unembed`; median of `reps` timed runs)."""
    x = torch.randn(rows, model.cfg.d_model)
    with torch.no_grad(), fast_unembed(model):
        flop = 2 * rows * model.cfg.d_model * model.cfg.d_vocab
        return gflop_s(lambda: model.unembed(x), flop, reps)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-prompts", type=int, default=24)
    p.add_argument("--json", type=Path, help="write the result here (JSON, atomically)")
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    config = yaml.safe_load(CONFIG.read_text())
    t0 = time.perf_counter()
    model = tl.load_model()
    seconds = {"load": time.perf_counter() - t0}
    suite = load_prompt_suite((CONFIG.parent / config["prompt_suite"]).resolve())
    texts = [text for prompts in suite.values() for text in prompts][: args.max_prompts]
    section = {
        "prompts": texts,
        "thresholds": config["thresholds"],
        "max_steps": config["max_steps"],
        "next_from": config.get("next_from", ["mixture"]),
    }
    batch = config["batch_size"]

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        seconds[name] = time.perf_counter() - t
        return out

    runs = timed("generate", lambda: driver.section_runs(model, section))
    refs = timed("reference_replays", lambda: driver.Replays.of(model, runs))
    lp = timed(
        "layer_patching", lambda: layer_patching(model, runs, batch_size=batch, replays=refs)
    )
    top = lp.ranked_layers()[: config["head_layers"]]
    timed("head_patching", lambda: head_patching(model, runs, top, batch_size=batch, replays=refs))

    cfg = model.cfg
    block = sum(w.numel() for w in model.blocks[0].parameters() if w.ndim >= 2)
    unembed = cfg.d_model * cfg.d_vocab
    rows = batch * 17  # a batch of rows of a typical 17 tokens after the shared prefix
    rates = {
        "mlp_in": linear_rate(rows, cfg.d_model, cfg.d_mlp),
        "mlp_out": linear_rate(rows, cfg.d_mlp, cfg.d_model),
        "unembed_f_linear": linear_rate(rows, cfg.d_model, cfg.d_vocab),
        "unembed": unembed_rate(model, rows),
    }
    work = {
        "layers": needed_work(refs, layer_schedules(cfg.n_layers, cfg.n_heads), cfg.n_layers),
        "heads": needed_work(refs, head_schedules(cfg.n_layers, cfg.n_heads, top), cfg.n_layers),
    }
    layer_flop = sum(2 * w["row_layers"] * block for w in work.values())
    unembed_flop = sum(2 * w["unembedded_rows"] * unembed for w in work.values())
    layer_rate = max(rates["mlp_in"], rates["mlp_out"])
    floor = layer_flop / 1e9 / layer_rate + unembed_flop / 1e9 / rates["unembed"]
    patching = seconds["layer_patching"] + seconds["head_patching"]
    result = {
        "max_prompts": args.max_prompts,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "top_layers": top,
        "work": work,
        "flop_per_row_layer": 2 * block,
        "flop_per_unembedded_row": 2 * unembed,
        "tflop": {"layers": layer_flop / 1e12, "unembed": unembed_flop / 1e12},
        "linear_gflop_s": {k: round(v, 1) for k, v in rates.items()},
        "matmul_floor_s": round(floor, 1),
        "patching_s": round(patching, 1),
        "patching_gflop_s_overall": round((layer_flop + unembed_flop) / 1e9 / patching, 1),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
