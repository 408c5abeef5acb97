"""Benchmark: a TEMPO step against a greedy step and against Hugging Face, side by side.

    python benchmarks/bench.py [--quick] [--out benchmarks/results]   (docs/performance.md)

Everything is measured in ONE process, interleaved (each repetition runs every case once,
alternating the order ABC.../...CBA so slow drift cancels), after warm-up, and reported as
medians. Each case re-runs the *same* step: the TransformerLens KV cache is frozen and the
Hugging Face cache is cropped back after every repetition.

What is timed is what a user pays:
- `tl_greedy`: one HookedTransformer decode step on the cached prefix (no hooks);
- `hf_greedy`: the same step in Hugging Face `LlamaForCausalLM` (DynamicCache): the
  reference;
- `tempo_step`: what `generate` does per step — build the mechanism hooks from the layout,
  then one forward of the whole set as the query block on a
  `TransformerLensKeyValueCache`;
- `hf_tempo_step`: the same step written the Hugging Face way (`position_ids` plus a 4D
  additive mask built from the layout, on a DynamicCache);
- `capture`: a TEMPO step that also captures every layer's `hook_pattern` and
  `hook_resid_post` (copied out as `generate` stores them);
- `batch/tl/B` and `batch/hf/B`: one batched TEMPO step of a sweep unit, B prompts of mixed
  lengths (right-padded) with sets of mixed sizes 1-4 (pad slots), through `generate`'s
  `Decoder` on one batched KV cache, and the same step the Hugging Face way (padded input,
  per-row `position_ids`, a `[B, 1, q, n]` 4D mask, a DynamicCache). Throughput is rows
  per second; `batch_speedup` is a batch-1 step's time over the per-row time at B.

Every ratio comes with a 95 % bootstrap interval over the interleaved repetitions
(`ratio_interval`: repetitions resampled in pairs, so a slow moment hits both sides); an
interval wider than +-5 % of the ratio is flagged `noisy`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tempo_lens.errors import TempoError
from tempo_lens.generate import (
    Decoder,
    capture_hooks,
    mechanism_hooks,
    model_forward,
    resolve_hook_names,
)
from tempo_lens.layout import Layout, LayoutBatch
from tempo_lens.storage import atomic_dir, marker, write_json_atomic
from tempo_lens.testing import hf_tempo_mask

if TYPE_CHECKING:  # the benchmark times the HookedTransformer backend (TransformerLens < 4)
    from transformer_lens import HookedTransformer
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

CAPTURE = ("hook_pattern", "hook_resid_post")
MODES = ("isolated", "visible")
PREFIX_SETS = (3, 3)  # forced sets inside the cached prefix, so positions differ there too
RESULT_FILE = "bench.json"


@dataclass
class BenchConfig:
    """How much to measure. `context` is the cached prefix length for the main cases;
    `scaling_contexts` the prefix lengths of the context-scaling curve (k = 4, isolated)."""

    context: int = 128
    ks: tuple[int, ...] = (1, 2, 4, 8, 16)
    scaling_contexts: tuple[int, ...] = (64, 128, 256, 512, 1024)
    reps: int = 9
    warmup: int = 2
    seed: int = 0
    bandwidth_mb: int = 256
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64)
    bootstrap: int = 2000
    extra: dict[str, Any] = field(default_factory=dict)


QUICK = BenchConfig(context=128, scaling_contexts=(64, 256, 1024), reps=5, warmup=1)
NOISY = 0.05  # an interval wider than +-5 % of its ratio is flagged


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


@dataclass
class Case:
    """One timed step: `step` is timed, `reset` (untimed) restores the state after it."""

    step: Callable[[], Any]
    reset: Callable[[], None] = lambda: None


def measure(cases: dict[str, Case], reps: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per repetition for every case, interleaved: repetition r runs all
    cases once, in forward order for even r and reverse order for odd r."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name].step()
            cases[name].reset()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names if r % 2 == 0 else reversed(names):
            case = cases[name]
            t0 = time.perf_counter()
            case.step()
            samples[name].append((time.perf_counter() - t0) * 1000.0)
            case.reset()
    return samples


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def ratio_interval(
    num: Sequence[float], den: Sequence[float], n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """median(num) / median(den) with a 95 % percentile-bootstrap interval. `num[r]` and
    `den[r]` come from the same interleaved repetition r, so repetitions are resampled
    in pairs. `noisy`: the interval is wider than +-5 % of the ratio."""
    a = torch.tensor(list(num), dtype=torch.float64)
    b = torch.tensor(list(den), dtype=torch.float64)
    if a.shape != b.shape or a.numel() == 0:
        raise TempoError("a ratio needs the same number (>= 1) of samples on both sides")
    value = median(num) / median(den)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, a.numel(), (n_boot, a.numel()), generator=g)
    boot = a[idx].median(1).values / b[idx].median(1).values  # lower median, as torch does
    lo, hi = (float(x) for x in torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=a.dtype)))
    half = max(value - lo, hi - value) / value
    return {"value": value, "ci95": [lo, hi], "half_width": half, "noisy": half > NOISY}


def memory_bandwidth_gb_s(megabytes: int = 256, reps: int = 5) -> float:
    """Copy bandwidth (bytes read + bytes written per second), median of `reps` copies of
    a `megabytes` buffer: the speed the weights can stream from memory at."""
    n = megabytes * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * n * 4 / median(times) / 1e9


# ---------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------


def _prefix_layout(context: int, vocab: int, seed: int) -> Layout:
    """`context` tokens: random prompt ids, then the forced PREFIX_SETS."""
    n_prompt = context - sum(PREFIX_SETS)
    if n_prompt < 1:
        raise TempoError(f"context must be > {sum(PREFIX_SETS)} tokens, got {context}")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (context,), generator=g).tolist()
    sets, i = [], n_prompt
    for size in PREFIX_SETS:
        sets.append(ids[i : i + size])
        i += size
    return Layout.from_sets(ids[:n_prompt], sets)


def _set_tokens(k: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randperm(vocab - 4, generator=g)[:k].add(4).tolist()


def _tl_prefix_cache(model: HookedTransformer, prefix: Layout) -> TransformerLensKeyValueCache:
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    kv = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    model_forward(model, prefix, len(prefix), mechanism_hooks(model, prefix, True), kv)
    kv.freeze()  # every timed step now sees the same prefix and leaves it untouched
    return kv


def _hf_forward(hf: Any, layout: Layout, n_query: int, isolate: bool, cache: Any) -> Any:
    n = len(layout)
    dtype = next(hf.parameters()).dtype
    device = next(hf.parameters()).device
    with torch.no_grad():
        return hf(
            input_ids=layout.tokens[n - n_query :][None].to(device),
            position_ids=layout.positions[n - n_query :].long()[None].to(device),
            attention_mask=hf_tempo_mask(layout.step, isolate, n_query=n_query, dtype=dtype).to(
                device
            ),
            past_key_values=cache,
            use_cache=True,
        )


def _hf_prefix_cache(hf: Any, prefix: Layout) -> Any:
    return _hf_forward(hf, prefix, len(prefix), True, None).past_key_values


def _crop(cache: Any, n_new: int) -> Callable[[], None]:
    """Drop the `n_new` tokens a timed step appended (a negative crop works in
    transformers 4.x and 5.x alike)."""
    return lambda: cache.crop(-n_new)


def _tl_tempo_step(
    model: HookedTransformer,
    layout: Layout,
    n_query: int,
    isolate: bool,
    kv: TransformerLensKeyValueCache,
    capture: Sequence[str] = (),
) -> Callable[[], torch.Tensor]:
    """Exactly what `generate` runs per step (see `generate.run_block`)."""

    def step() -> torch.Tensor:
        store: dict[str, torch.Tensor] = {}
        hooks = mechanism_hooks(model, layout, isolate) + capture_hooks(capture, store)
        logits = model_forward(model, layout, n_query, hooks, kv)[0]
        for name in capture:
            store[name][0].cpu()
        return logits

    return step


def _tl_greedy_step(
    model: HookedTransformer, prefix: Layout, token: int, kv: TransformerLensKeyValueCache
) -> Callable[[], torch.Tensor]:
    layout = prefix.append_set([token])  # one new token; no mechanism hooks: plain TL
    return lambda: model_forward(model, layout, 1, [], kv)[0]


def _hf_greedy_step(hf: Any, token: int, cache: Any) -> Callable[[], Any]:
    device = next(hf.parameters()).device
    ids = torch.tensor([[token]], device=device)

    def step() -> Any:
        with torch.no_grad():
            return hf(input_ids=ids, past_key_values=cache, use_cache=True).logits

    return step


def _unit_layouts(b: int, context: int, vocab: int, seed: int) -> tuple[list[Layout], list]:
    """A sweep unit's prefixes: `b` prompts of mixed lengths (context - 0, 1, 2, 3 times
    context / 16 tokens), and each row's next set (sizes 1-4, cycling)."""
    stride = max(1, context // 16)
    prefixes = [_prefix_layout(context - stride * (i % 4), vocab, seed + i) for i in range(b)]
    sets = [_set_tokens(1 + i % 4, vocab, seed + i) for i in range(b)]
    return prefixes, sets


def _tl_batch_step(model: HookedTransformer, prefixes: list[Layout], sets: list) -> Case:
    """One batched step as `generate` runs it: the sets as one block on the frozen
    batched KV cache of the prefixes (`generate.Decoder`)."""
    dec = Decoder(model, prefixes, isolate=True)
    dec.forward()
    assert dec.kv is not None
    dec.kv.freeze()
    n_prefix = dec.cached
    dec.append(sets, [p.next_position for p in prefixes], step=prefixes[0].n_steps)

    def reset() -> None:
        dec.cached = n_prefix

    return Case(dec.forward, reset)


def _hf_batch_forward(hf: Any, batch: LayoutBatch, n_query: int, cache: Any) -> Any:
    """The Hugging Face way: padded ids, per-row position ids, a 4D additive mask."""
    n = len(batch)
    dtype = next(hf.parameters()).dtype
    device = next(hf.parameters()).device
    mask = hf_tempo_mask(batch.step, True, n_query=n_query, dtype=dtype)
    with torch.no_grad():
        return hf(
            input_ids=batch.tokens[:, n - n_query :].to(device),
            position_ids=batch.positions[:, n - n_query :].long().to(device),
            attention_mask=mask.to(device),
            past_key_values=cache,
            use_cache=True,
        )


def _hf_batch_step(hf: Any, prefixes: list[Layout], sets: list) -> Case:
    batch = LayoutBatch.of(prefixes)
    cache = _hf_batch_forward(hf, batch, len(batch), None).past_key_values
    step = [p.n_steps for p in prefixes]
    full = batch.append_block(sets, [p.next_position for p in prefixes], step)
    width = len(full) - len(batch)
    return Case(lambda: _hf_batch_forward(hf, full, width, cache).logits, _crop(cache, width))


def _agree(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max |difference| of log-probabilities (processed weights shift logits by a
    constant per row; probabilities are what TEMPO reads)."""
    return float((a.float().log_softmax(-1) - b.float().log_softmax(-1)).abs().max())


# ---------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------


def _linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least squares `y = intercept + slope * x` and its R^2."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        return {"intercept": my, "slope": 0.0, "r2": 1.0}
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {
        "intercept": intercept,
        "slope": slope,
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
    }


def weight_bytes_per_step(model: HookedTransformer) -> int:
    """Bytes of weights one forward streams: every parameter except the embedding table,
    of which a step reads only the new tokens' rows."""
    skip = {"embed.W_E"}
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n not in skip)


def kv_bytes(model: HookedTransformer, n_tokens: int) -> int:
    """Bytes of cached keys and values a step reads at `n_tokens` of context."""
    cfg = model.cfg
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    elem = torch.empty(0, dtype=cfg.dtype).element_size()
    return 2 * cfg.n_layers * n_tokens * n_kv * cfg.d_head * elem


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_benchmark(
    model: HookedTransformer,
    hf_model: Any,
    config: BenchConfig | None = None,
    *,
    progress: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Measure every case of the module docstring and return the JSON-able result."""
    cfg = config or BenchConfig()
    largest = max((cfg.context, *cfg.scaling_contexts)) + max(cfg.ks, default=0)
    if largest > model.cfg.n_ctx:
        raise TempoError(
            f"context {largest} exceeds the model's {model.cfg.n_ctx} tokens; "
            "use smaller --context / scaling contexts"
        )
    if cfg.reps < 1 or cfg.warmup < 0:
        raise TempoError("reps must be >= 1 and warmup >= 0")
    t_start = time.perf_counter()
    load_before = _load_average()
    vocab = model.cfg.d_vocab
    members = _set_tokens(max(cfg.ks), vocab, cfg.seed)

    progress("building prefix caches")
    prefix = _prefix_layout(cfg.context, vocab, cfg.seed)
    kv = _tl_prefix_cache(model, prefix)
    hf_cache = _hf_prefix_cache(hf_model, prefix)
    capture_names = resolve_hook_names(model, CAPTURE)

    cases: dict[str, Case] = {
        "hf_greedy": Case(_hf_greedy_step(hf_model, members[0], hf_cache), _crop(hf_cache, 1)),
        "tl_greedy": Case(_tl_greedy_step(model, prefix, members[0], kv)),
    }
    agreement: dict[str, float] = {}
    for k in cfg.ks:
        layout = prefix.append_set(members[:k])
        for mode in MODES:
            iso = mode == "isolated"
            ours = _tl_tempo_step(model, layout, k, iso, kv)
            cases[f"tempo/{mode}/{k}"] = Case(ours)
            theirs = Case(
                lambda layout=layout, k=k, iso=iso: (
                    _hf_forward(hf_model, layout, k, iso, hf_cache).logits
                ),
                _crop(hf_cache, k),
            )
            cases[f"hf_tempo/{mode}/{k}"] = theirs
            if k == 4 or k == max(cfg.ks):
                agreement[f"{mode}/k={k}"] = _agree(ours(), theirs.step()[0])
                theirs.reset()
    k_cap = 4 if 4 in cfg.ks else cfg.ks[0]
    layout_cap = prefix.append_set(members[:k_cap])
    cases["capture"] = Case(_tl_tempo_step(model, layout_cap, k_cap, True, kv, capture_names))

    k_scale = k_cap
    scaling_kv: dict[int, TransformerLensKeyValueCache] = {}
    for c in cfg.scaling_contexts:
        if c == cfg.context:
            continue
        p = _prefix_layout(c, vocab, cfg.seed)
        scaling_kv[c] = _tl_prefix_cache(model, p)
        lay = p.append_set(members[:k_scale])
        cases[f"ctx/tempo/{c}"] = Case(_tl_tempo_step(model, lay, k_scale, True, scaling_kv[c]))
        cases[f"ctx/greedy/{c}"] = Case(_tl_greedy_step(model, p, members[0], scaling_kv[c]))

    for b in cfg.batch_sizes:
        prefixes, sets = _unit_layouts(b, cfg.context, vocab, cfg.seed)
        ours_b = cases[f"batch/tl/{b}"] = _tl_batch_step(model, prefixes, sets)
        theirs_b = cases[f"batch/hf/{b}"] = _hf_batch_step(hf_model, prefixes, sets)
        sizes = torch.tensor([len(s) for s in sets])
        members_only = torch.arange(int(sizes.max()))[None] < sizes[:, None]  # not pad slots
        a, h = ours_b.step(), theirs_b.step()
        ours_b.reset(), theirs_b.reset()
        agreement[f"batch/B={b}"] = _agree(a[members_only], h[members_only])

    progress(f"measuring {len(cases)} cases x {cfg.reps} reps (+{cfg.warmup} warm-up)")
    samples = measure(cases, cfg.reps, cfg.warmup)
    med = {name: median(xs) for name, xs in samples.items()}

    def ctx_series(kind: str) -> list[float]:
        out = []
        for c in cfg.scaling_contexts:
            if c == cfg.context:
                out.append(
                    med[f"tempo/isolated/{k_scale}"] if kind == "tempo" else med["tl_greedy"]
                )
            else:
                out.append(med[f"ctx/{kind}/{c}"])
        return out

    tempo = {m: {str(k): med[f"tempo/{m}/{k}"] for k in cfg.ks} for m in MODES}
    hf_tempo = {m: {str(k): med[f"hf_tempo/{m}/{k}"] for k in cfg.ks} for m in MODES}
    kk = str(k_cap)
    ratios = {
        "isolation_overhead": tempo["isolated"][kk] / tempo["visible"][kk],
        "isolation_overhead_by_k": {
            str(k): tempo["isolated"][str(k)] / tempo["visible"][str(k)] for k in cfg.ks
        },
        "tempo_vs_greedy": tempo["isolated"][kk] / med["tl_greedy"],
        "tl_vs_hf": med["tl_greedy"] / med["hf_greedy"],
        "tempo_vs_hf_tempo": tempo["isolated"][kk] / hf_tempo["isolated"][kk],
        "capture_overhead": med["capture"] / tempo["isolated"][kk],
    }

    def interval(num: str, den: str, scale: float = 1.0) -> dict[str, Any]:
        r = ratio_interval(samples[num], samples[den], cfg.bootstrap, cfg.seed)
        return {**r, "value": r["value"] * scale, "ci95": [x * scale for x in r["ci95"]]}

    intervals = {
        "isolation_overhead": interval(f"tempo/isolated/{kk}", f"tempo/visible/{kk}"),
        "tempo_vs_greedy": interval(f"tempo/isolated/{kk}", "tl_greedy"),
        "tl_vs_hf": interval("tl_greedy", "hf_greedy"),
        "tempo_vs_hf_tempo": interval(f"tempo/isolated/{kk}", f"hf_tempo/isolated/{kk}"),
        "capture_overhead": interval("capture", f"tempo/isolated/{kk}"),
    }
    throughput: dict[str, Any] = {}
    if cfg.batch_sizes:
        b1 = min(cfg.batch_sizes)
        for b in cfg.batch_sizes:
            tl_ms, hf_ms = med[f"batch/tl/{b}"], med[f"batch/hf/{b}"]
            throughput[str(b)] = {
                "tl_step_ms": tl_ms,
                "hf_step_ms": hf_ms,
                "tl_row_ms": tl_ms / b,
                "hf_row_ms": hf_ms / b,
                "tl_rows_per_s": 1000.0 * b / tl_ms,
                "hf_rows_per_s": 1000.0 * b / hf_ms,
            }
            intervals[f"batch_vs_hf/B={b}"] = interval(f"batch/tl/{b}", f"batch/hf/{b}")
            if b != b1:  # a batch-1 step over the per-row cost at B: the throughput gain
                intervals[f"batch_speedup/B={b}"] = interval(
                    f"batch/tl/{b1}", f"batch/tl/{b}", scale=b / b1
                )
        ratios.update({name: iv["value"] for name, iv in intervals.items() if "B=" in name})
    ctx_tempo, ctx_greedy = ctx_series("tempo"), ctx_series("greedy")
    ks_f = [float(k) for k in cfg.ks]
    bandwidth = memory_bandwidth_gb_s(cfg.bandwidth_mb)
    w_bytes = weight_bytes_per_step(model)
    step_bytes = w_bytes + kv_bytes(model, cfg.context + k_cap)
    return {
        "model": model.cfg.model_name,
        "n_params": sum(p.numel() for p in model.parameters()),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(model.cfg.device),
            "load_average_before": load_before,
            "load_average_after": _load_average(),
        },
        "versions": _versions(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "set_size_for_ratios": k_cap,
        "hf_greedy_ms": med["hf_greedy"],
        "tl_greedy_ms": med["tl_greedy"],
        "tempo_step_ms": tempo,
        "hf_tempo_step_ms": hf_tempo,
        "capture_ms": med["capture"],
        "capture_hooks": len(capture_names),
        "ratios": ratios,
        "ratio_intervals": intervals,
        "noisy_ratios": sorted(name for name, iv in intervals.items() if iv["noisy"]),
        "throughput": throughput,
        "scaling": {
            "context": {
                "tokens": list(cfg.scaling_contexts),
                "k": k_scale,
                "tempo_ms": ctx_tempo,
                "greedy_ms": ctx_greedy,
                "tempo_fit": _linear_fit([float(c) for c in cfg.scaling_contexts], ctx_tempo),
                "greedy_fit": _linear_fit([float(c) for c in cfg.scaling_contexts], ctx_greedy),
            },
            "set_size": {
                "k": list(cfg.ks),
                "context": cfg.context,
                "isolated_ms": [tempo["isolated"][str(k)] for k in cfg.ks],
                "visible_ms": [tempo["visible"][str(k)] for k in cfg.ks],
                "hf_isolated_ms": [hf_tempo["isolated"][str(k)] for k in cfg.ks],
                "isolated_fit": _linear_fit(ks_f, [tempo["isolated"][str(k)] for k in cfg.ks]),
            },
        },
        "floor": {
            "weight_bytes_per_step": w_bytes,
            "kv_bytes_per_step": step_bytes - w_bytes,
            "bytes_per_step": step_bytes,
            "copy_bandwidth_gb_s": bandwidth,
            "floor_ms": step_bytes / (bandwidth * 1e9) * 1000.0,
        },
        "agreement_max_abs_logprob_diff": agreement,
        "samples_ms": samples,
        "seconds": time.perf_counter() - t_start,
    }


def _versions() -> dict[str, str]:
    import transformer_lens
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformer_lens": getattr(transformer_lens, "__version__", "unknown"),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------

TARGETS = {
    "isolation_overhead": 1.03,
    "tempo_vs_greedy": 1.25,
    "tl_vs_hf": 1.3,
    "tempo_vs_hf_tempo": 1.3,
    "capture_overhead": 1.5,
}
# ratio -> the value it must not exceed (TARGETS) or fall below (FLOORS)
CEILINGS = {**TARGETS, "batch_vs_hf/B=16": 1.5}  # at most 1.5x HF's batched TEMPO step
FLOORS = {"batch_speedup/B=16": 5.0}  # a B = 16 row-step at most 1/5 of a batch-1 step


def table(result: dict[str, Any]) -> str:
    """A short markdown summary of a result."""
    k = result["set_size_for_ratios"]
    t, h = result["tempo_step_ms"], result["hf_tempo_step_ms"]
    lines = [
        f"model {result['model']} | context {result['config']['context']} | "
        f"threads {result['machine']['torch_threads']} | reps {result['config']['reps']} "
        f"| load {result['machine']['load_average_before']}",
        "",
        "| step | ms (median) |",
        "|---|---|",
        f"| Hugging Face greedy (reference) | {result['hf_greedy_ms']:.1f} |",
        f"| HookedTransformer greedy | {result['tl_greedy_ms']:.1f} |",
    ]
    for kk in result["scaling"]["set_size"]["k"]:
        lines.append(
            f"| TEMPO k={kk} isolated / visible / HF-isolated | {t['isolated'][str(kk)]:.1f} / "
            f"{t['visible'][str(kk)]:.1f} / {h['isolated'][str(kk)]:.1f} |"
        )
    lines.append(f"| TEMPO k={k} isolated + capture | {result['capture_ms']:.1f} |")
    lines += ["", "| ratio | value | 95 % CI | target |", "|---|---|---|---|"]
    intervals = result.get("ratio_intervals", {})
    for name, v in result["ratios"].items():
        if not isinstance(v, float):
            continue
        iv = intervals.get(name)
        ci = f"[{iv['ci95'][0]:.3f}, {iv['ci95'][1]:.3f}]" if iv else ""
        ci += " NOISY (> +-5 %)" if iv and iv["noisy"] else ""
        goal = ""
        if name in CEILINGS:
            goal = f"<= {CEILINGS[name]} {'ok' if v <= CEILINGS[name] else 'MISSED'}"
        elif name in FLOORS:
            goal = f">= {FLOORS[name]} {'ok' if v >= FLOORS[name] else 'MISSED'}"
        lines.append(f"| {name} | {v:.3f} | {ci} | {goal} |")
    if result.get("throughput"):
        lines += [
            "",
            "| batch B | TL step ms | TL rows/s | HF step ms | HF rows/s |",
            "|---|---|---|---|---|",
        ]
        for b, row in result["throughput"].items():
            lines.append(
                f"| {b} | {row['tl_step_ms']:.1f} | {row['tl_rows_per_s']:.1f} | "
                f"{row['hf_step_ms']:.1f} | {row['hf_rows_per_s']:.1f} |"
            )
    ctx = result["scaling"]["context"]
    fl = result["floor"]
    lines += [
        "",
        f"context scaling (k={ctx['k']}, isolated): "
        + ", ".join(f"{c}: {m:.1f}" for c, m in zip(ctx["tokens"], ctx["tempo_ms"], strict=True))
        + f" ms; slope {ctx['tempo_fit']['slope'] * 1000:.1f} us/token, "
        f"R^2 {ctx['tempo_fit']['r2']:.3f}",
        f"floor: {fl['bytes_per_step'] / 1e6:.0f} MB per step at "
        f"{fl['copy_bandwidth_gb_s']:.1f} GB/s copy bandwidth = {fl['floor_ms']:.1f} ms",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Step cost vs context length and vs set size (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx, ks = result["scaling"]["context"], result["scaling"]["set_size"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ctx["tokens"], ctx["tempo_ms"], "o-", label=f"TEMPO step, k={ctx['k']}, isolated")
    a.plot(ctx["tokens"], ctx["greedy_ms"], "s--", label="HookedTransformer greedy step")
    a.set_xlabel("cached context (tokens)")
    a.set_ylabel("ms per step (median)")
    a.set_title("step cost vs context")
    a.legend(fontsize=8)
    b.plot(ks["k"], ks["isolated_ms"], "o-", label="tempo_lens isolated")
    b.plot(ks["k"], ks["visible_ms"], "^-", label="tempo_lens visible")
    b.plot(ks["k"], ks["hf_isolated_ms"], "s--", label="Hugging Face isolated (4D mask)")
    b.axhline(result["tl_greedy_ms"], color="grey", lw=0.8, label="TL greedy step")
    b.set_xscale("log", base=2)
    b.set_xlabel("set size k (query block)")
    b.set_title(f"step cost vs set size (context {ks['context']})")
    b.legend(fontsize=8)
    fig.suptitle(f"{result['model']}, {result['machine']['torch_threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_result(result: dict[str, Any], out: Path) -> None:
    """bench.json, table.md and scaling.png, written atomically as one directory."""

    with atomic_dir(out, "bench") as tmp:
        write_json_atomic(tmp / RESULT_FILE, {"tempo_lens": marker("bench"), **result})
        (tmp / "table.md").write_text(table(result))
        plot(result, tmp / "scaling.png")


# ---------------------------------------------------------------------------------------
# Command line (`python benchmarks/bench.py`)
# ---------------------------------------------------------------------------------------

DEFAULT_OUT = "benchmarks/results"


def parser() -> argparse.ArgumentParser:
    """The script's options."""
    p = argparse.ArgumentParser(
        prog="bench.py", description="time TEMPO steps against greedy and Hugging Face"
    )
    p.add_argument("--quick", action="store_true", help="fewer cases and reps (< 2 minutes)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"result directory (default {DEFAULT_OUT})")
    p.add_argument("--reps", type=int, default=None, help="repetitions per case (>= 5)")
    p.add_argument("--context", type=int, default=None, help="cached prefix length (tokens)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--batches",
        default=None,
        help="batch sizes of the throughput cases, comma-separated (default 1,4,16,64; "
        "'' for none)",
    )
    return p


def bench(args: argparse.Namespace) -> int:
    """Check the options, load the embedded model both ways, run, write and print."""
    from tempo_lens.backend import has_hooked_transformer
    from tempo_lens.loading import embedded_gguf_path, load_hf_gguf
    from tempo_lens.quiet import load_model_quietly
    from tempo_lens.storage import check_target

    if not has_hooked_transformer():
        raise TempoError(
            "benchmarks/bench.py times the HookedTransformer backend, which TransformerLens 4 "
            "removed; run it where transformer-lens<4 is installed (benchmarks/bridge_step.py "
            "times the bridge)"
        )
    base = QUICK if args.quick else BenchConfig()
    cfg = BenchConfig(**{**asdict(base), "ks": base.ks, "scaling_contexts": base.scaling_contexts})
    if args.reps is not None:
        if args.reps < 5:
            raise TempoError(f"--reps {args.reps}: medians need at least 5 repetitions")
        cfg.reps = args.reps
    if args.context is not None:
        if args.context <= sum(PREFIX_SETS):
            raise TempoError(f"--context must be > {sum(PREFIX_SETS)} tokens")
        cfg.context = args.context
    if args.batches is not None:
        try:
            cfg.batch_sizes = tuple(int(b) for b in args.batches.split(",") if b.strip())
        except ValueError:
            raise TempoError(f"--batches {args.batches!r}: give sizes like 1,4,16,64") from None
        if any(b < 1 for b in cfg.batch_sizes):
            raise TempoError("--batches: every batch size must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            raise TempoError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    check_target(args.out, "bench")

    def say(msg: str) -> None:
        print(f"[bench] {msg}", flush=True)

    t0 = time.perf_counter()
    say("loading the embedded model (TransformerLens and Hugging Face)")
    model = load_model_quietly(None)
    hf, _ = load_hf_gguf(embedded_gguf_path())
    cfg.extra["load_seconds"] = round(time.perf_counter() - t0, 2)
    result = run_benchmark(model, hf, cfg, progress=say)
    result["total_seconds"] = time.perf_counter() - t0
    write_result(result, Path(args.out))
    print(table(result), end="")
    print(f"wrote {Path(args.out) / RESULT_FILE} ({result['total_seconds']:.0f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The script: a `TempoError` is one line on stderr, exit code 2."""
    from tempo_lens.quiet import quiet

    args = parser().parse_args(argv)
    quiet()
    try:
        return bench(args)
    except TempoError as err:
        print(f"bench.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
