"""What one work unit of the seed-study sweep costs on a 3B-shaped model, on this CPU.

    python -m benchmarks.unit_cost_3b [--layers 1 4] [--threads 1] [--out result.json]

The seeds' model (deepcogito/cogito-v1-preview-llama-3B) cannot be downloaded here and
its 28 layers in float32 (~13 GB, twice that while converting) do not fit beside the
other work of a 24 GB machine, so this builds random-weight Llamas of its exact widths
(`benchmarks/gpu_scale_check.py`'s `COGITO_3B`: d_model 3072, 24/8 heads, d_mlp 8192,
vocab 128256) truncated to `--layers` layers, times one whole work unit on each, and fits
unit time = a + b × layers (a: embedding, unembedding and the per-step bookkeeping; b: one
layer) to extrapolate to 28 layers.

The unit is what the runner would send one engine call for this model: the
experiments/sweep.yaml setting (15 steps) at the batch size `batch_rows` gives the
28-layer shape (its KV cache sets the rows), prompts of the suite's token lengths (as
the embedded tokenizer counts them; random ids, since the cogito tokenizer is not here
either). Random weights give flat distributions that no threshold passes, so every set
is forced to two members (`threshold=1e-9, max_parallel=2`): the seed study's sets
average a little under two members at threshold 0.1 (docs/findings.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks.gpu_scale_check import COGITO_3B
from tempo_lens import generate, load_model
from tempo_lens.analysis.experiments.config import load_config
from tempo_lens.analysis.experiments.runs import RunOptions, batch_rows, grid, work_units
from tempo_lens.errors import TempoError
from tempo_lens.generate import tokenize
from tempo_lens.storage import result_target, write_file_atomic

RESULT_KEYS = ("sweep_cpu_hours_one_worker",)  # an earlier result has these (--out replaces it)

ROOT = Path(__file__).resolve().parents[1]
FULL_LAYERS = 28


def truncated(layers: int) -> torch.nn.Module:
    import transformers as tf

    from tempo_lens.loading import model_from_hf

    torch.manual_seed(0)
    config = tf.LlamaConfig(**(COGITO_3B | {"num_hidden_layers": layers}))
    hf = tf.LlamaForCausalLM(config).eval()
    model = model_from_hf(hf, None, model_name=f"cogito-3B-shape-{layers}-layers")
    del hf
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (a Ray worker of one CPU has one)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    try:  # refused before any work
        result_file = result_target(args.out, RESULT_KEYS) if args.out else None
    except TempoError as err:
        parser.error(str(err))
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)

    section = load_config(ROOT / "experiments" / "sweep.yaml")
    embedded = load_model(section["model"])
    lengths = [len(tokenize(embedded, p["text"])) for p in section["prompts"]]
    del embedded
    options = RunOptions(
        max_steps=section["max_steps"], max_parallel=section["max_parallel"], eos_token_id=None
    )
    specs = grid(section, ["isolated", "visible"], "config")

    seconds: dict[int, float] = {}
    rows = units = None
    for layers in args.layers:
        model = truncated(layers)
        if rows is None:  # the runner's batch size for the full 28-layer shape
            full = copy.copy(model.cfg)
            full.n_layers = FULL_LAYERS
            rows = batch_rows(SimpleNamespace(cfg=full), options, max(lengths))
            units = work_units(specs, size=rows)
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, 128000, (n,), generator=g).tolist() for n in lengths[:rows]]
        t0 = time.perf_counter()
        runs = generate(
            model,
            prompts,
            threshold=1e-9,
            max_parallel=2,
            max_steps=options.max_steps,
            isolate=True,
            eos_token_id=None,
        )
        seconds[layers] = time.perf_counter() - t0
        assert all(len(r.steps) == options.max_steps for r in runs)
        print(f"{layers} layers: one unit of {len(prompts)} rows in {seconds[layers]:.1f} s")
        del model, runs

    xs = sorted(seconds)
    b, a = np.polyfit(xs, [seconds[x] for x in xs], 1)
    if b <= 0:
        raise SystemExit(f"unit time did not grow with layers ({seconds}): too noisy to fit")
    per_unit = a + b * FULL_LAYERS
    result = {
        "model": "random Llama, cogito-v1-preview-llama-3B widths, truncated",
        "unit": f"{rows} prompts x {options.max_steps} steps, sets of 2, isolated",
        "rows_per_unit": rows,
        "units_in_seed_sweep": len(units),
        "runs_in_seed_sweep": len(specs),
        "unit_seconds_by_layers": {str(k): round(v, 2) for k, v in seconds.items()},
        "fit_seconds": {"a": round(float(a), 2), "b_per_layer": round(float(b), 2)},
        "unit_seconds_28_layers": round(float(per_unit), 1),
        "sweep_cpu_hours_one_worker": round(float(per_unit) * len(units) / 3600, 2),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if result_file is not None:
        write_file_atomic(result_file, text + "\n")


if __name__ == "__main__":
    main()
