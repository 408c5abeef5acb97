"""TEMPO step time on the two backends, side by side: TransformerBridge vs HookedTransformer.

    .venv/bin/python benchmarks/bridge_step.py [--model tiny-llama] [--reps 30] [--width 4]

One TEMPO step = one `Decoder` forward of a `--width`-member set (isolated) on top of a
cached `--context`-token prefix: the bridge on Hugging Face's DynamicCache with
`position_ids` and an explicit 4D mask, HookedTransformer on TL's KV cache with the
position hooks. Both load the same weights through `load_model` (processed, as users get
them). Samples are interleaved (`benchmarks/bench.py`'s `measure`: forward order on even
repetitions, reverse on odd), the prefix is rebuilt untimed before every sample, and the
ratio bridge / hooked is reported as the median of per-repetition ratios with a bootstrap
95% CI. Needs TransformerLens 3.x, where both backends exist.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from bench import Case, measure  # benchmarks/bench.py, beside this script

from tempo_lens import Layout, load_model
from tempo_lens.backend import tl_major_version
from tempo_lens.generate import Decoder


def step_case(model, prefix: Layout, members: list[int], isolate: bool) -> Case:
    """A timed step (append the set, forward it) and an untimed reset (fresh decoder with
    the prefix cached)."""
    state: dict[str, Decoder] = {}

    def reset() -> None:
        dec = Decoder(model, [prefix], isolate=isolate)
        dec.forward()
        state["dec"] = dec

    def step() -> torch.Tensor:
        dec = state["dec"]
        dec.append([members], [prefix.next_position], 0)
        return dec.forward()

    reset()
    return Case(step=step, reset=reset)


def bootstrap_median_ci(xs: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    arr = np.asarray(xs)
    meds = np.median(rng.choice(arr, size=(n, arr.size), replace=True), axis=1)
    return float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="load_model name (default: embedded)")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--visible", action="store_true", help="visible instead of isolated")
    args = parser.parse_args()
    if tl_major_version() >= 4:
        raise SystemExit("TransformerLens 4 has no HookedTransformer: run this in the 3.x env")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        models = {b: load_model(args.model, backend=b) for b in ("hooked", "bridge")}
    print(f"loaded both in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    vocab = models["hooked"].cfg.d_vocab
    g = torch.Generator().manual_seed(0)
    prefix = Layout.from_prompt(torch.randint(0, vocab, (args.context,), generator=g))
    members = torch.randint(0, vocab, (args.width,), generator=g).tolist()
    isolate = not args.visible
    cases = {b: step_case(m, prefix, members, isolate) for b, m in models.items()}
    # the two backends compute the same step (log-probabilities, processing shifts logits)
    a, b = (cases[k].step().float().log_softmax(-1) for k in ("hooked", "bridge"))
    for case in cases.values():
        case.reset()
    print("timing", file=sys.stderr)
    samples = measure(cases, args.reps, args.warmup)
    ratios = [x / y for x, y in zip(samples["bridge"], samples["hooked"], strict=True)]
    lo, hi = bootstrap_median_ci(ratios)
    out = {
        "model": args.model or "embedded",
        "context": args.context,
        "width": args.width,
        "isolate": isolate,
        "reps": args.reps,
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "hooked_ms_median": round(statistics.median(samples["hooked"]), 2),
        "bridge_ms_median": round(statistics.median(samples["bridge"]), 2),
        "ratio_bridge_over_hooked_median": round(statistics.median(ratios), 3),
        "ratio_ci95": [round(lo, 3), round(hi, 3)],
        "max_abs_logprob_diff": float((a - b).abs().max()),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
