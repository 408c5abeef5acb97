"""The benchmark code path (benchmarks/bench.py, loaded by path) on a tiny model:
structure and self-consistency, no timings."""

from __future__ import annotations

import json
import math

import pytest

from tempo_lens.errors import TempoError
from tempo_lens.testing import tiny_hf_model, tiny_model
from tests.scripts import load_script

bench = load_script("benchmarks/bench.py")
MODES, TARGETS, BenchConfig, Case = bench.MODES, bench.TARGETS, bench.BenchConfig, bench.Case
measure, ratio_interval, run_benchmark = bench.measure, bench.ratio_interval, bench.run_benchmark
write_result = bench.write_result

CFG = BenchConfig(
    context=24,
    ks=(1, 2, 4),
    scaling_contexts=(16, 24, 48),
    reps=3,
    warmup=0,
    bandwidth_mb=4,
    batch_sizes=(1, 4, 6),
    bootstrap=200,
)


@pytest.fixture(scope="module")
def result() -> dict:
    return run_benchmark(tiny_model("llama"), tiny_hf_model("llama")[0], CFG)


def test_structure_and_positive_times(result: dict) -> None:
    assert result["hf_greedy_ms"] > 0 and result["tl_greedy_ms"] > 0 and result["capture_ms"] > 0
    for table in ("tempo_step_ms", "hf_tempo_step_ms"):
        assert set(result[table]) == set(MODES)
        for mode in MODES:
            assert set(result[table][mode]) == {"1", "2", "4"}
            assert all(v > 0 for v in result[table][mode].values())
    assert set(TARGETS) <= set(result["ratios"])
    assert result["capture_hooks"] == 2 * 2  # hook_pattern + hook_resid_post, 2 layers
    # every timed case got exactly `reps` samples
    assert all(len(v) == CFG.reps for v in result["samples_ms"].values())


def test_ratios_are_their_parts(result: dict) -> None:
    r, t, h = result["ratios"], result["tempo_step_ms"], result["hf_tempo_step_ms"]
    assert math.isclose(r["isolation_overhead"], t["isolated"]["4"] / t["visible"]["4"])
    assert math.isclose(r["tempo_vs_greedy"], t["isolated"]["4"] / result["tl_greedy_ms"])
    assert math.isclose(r["tl_vs_hf"], result["tl_greedy_ms"] / result["hf_greedy_ms"])
    assert math.isclose(r["tempo_vs_hf_tempo"], t["isolated"]["4"] / h["isolated"]["4"])
    assert math.isclose(r["capture_overhead"], result["capture_ms"] / t["isolated"]["4"])


def test_scaling_and_floor(result: dict) -> None:
    ctx = result["scaling"]["context"]
    assert ctx["tokens"] == [16, 24, 48] and len(ctx["tempo_ms"]) == 3
    # the main context's point is the main measurement itself
    assert ctx["tempo_ms"][1] == result["tempo_step_ms"]["isolated"]["4"]
    assert ctx["greedy_ms"][1] == result["tl_greedy_ms"]
    assert result["scaling"]["set_size"]["k"] == [1, 2, 4]
    fl = result["floor"]
    assert fl["bytes_per_step"] == fl["weight_bytes_per_step"] + fl["kv_bytes_per_step"]
    assert fl["copy_bandwidth_gb_s"] > 0
    assert math.isclose(
        fl["floor_ms"], fl["bytes_per_step"] / (fl["copy_bandwidth_gb_s"] * 1e9) * 1e3
    )


def test_hf_way_computes_the_same_step(result: dict) -> None:
    """The Hugging Face baseline is only fair if it computes the same logits."""
    agreement = result["agreement_max_abs_logprob_diff"]
    assert set(agreement) == {"isolated/k=4", "visible/k=4", "batch/B=1", "batch/B=4", "batch/B=6"}
    assert max(agreement.values()) < 1e-3


def test_written_atomically_as_json_table_png(result: dict, tmp_path) -> None:
    out = tmp_path / "bench"
    write_result(result, out)
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "scaling.png", "table.md"]
    back = json.loads((out / "bench.json").read_text())
    assert back["ratios"] == result["ratios"]
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tempo_vs_greedy" in (out / "table.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bench.lock", "bench"]  # no temp left


def test_measure_interleaves_and_resets() -> None:
    log: list[str] = []
    cases = {n: Case(lambda n=n: log.append(n), lambda n=n: log.append(n + "!")) for n in "ab"}
    samples = measure(cases, reps=2, warmup=1)
    assert log == ["a", "a!", "b", "b!", "a", "a!", "b", "b!", "b", "b!", "a", "a!"]
    assert {k: len(v) for k, v in samples.items()} == {"a": 2, "b": 2}


def test_context_beyond_the_model_is_refused() -> None:
    cfg = BenchConfig(context=24, ks=(1,), scaling_contexts=(300,), reps=1, warmup=0)
    with pytest.raises(TempoError, match="exceeds the model"):
        run_benchmark(tiny_model("llama"), tiny_hf_model("llama")[0], cfg)


def test_throughput_rows_and_ratios_are_their_parts(result: dict) -> None:
    tp, r, iv = result["throughput"], result["ratios"], result["ratio_intervals"]
    assert set(tp) == {"1", "4", "6"}
    for b, row in tp.items():
        assert math.isclose(row["tl_row_ms"] * int(b), row["tl_step_ms"])
        assert math.isclose(row["tl_rows_per_s"], 1000.0 * int(b) / row["tl_step_ms"])
        assert math.isclose(r[f"batch_vs_hf/B={b}"], row["tl_step_ms"] / row["hf_step_ms"])
    assert math.isclose(r["batch_speedup/B=4"], tp["1"]["tl_step_ms"] / tp["4"]["tl_row_ms"])
    assert "batch_speedup/B=1" not in r
    for name, v in iv.items():  # every ratio has an interval around its value
        lo, hi = v["ci95"]
        assert lo <= v["value"] * (1 + 1e-9) and v["value"] <= hi * (1 + 1e-9), name
        assert v["noisy"] == (v["half_width"] > 0.05)
    assert result["noisy_ratios"] == sorted(n for n, v in iv.items() if v["noisy"])


def test_ratio_interval_resamples_repetitions_in_pairs() -> None:
    # den is num / 2 at every repetition: every paired resample gives exactly 2
    num = [10.0, 30.0, 20.0, 50.0, 40.0]
    iv = ratio_interval(num, [x / 2 for x in num], n_boot=500)
    assert iv["value"] == 2.0 and iv["ci95"] == [2.0, 2.0] and not iv["noisy"]
    # an unpaired spread shows as a wide interval
    wide = ratio_interval(num, [20.0] * 5, n_boot=500)
    assert wide["value"] == 1.5 and wide["ci95"][0] < 1.0 < 2.0 < wide["ci95"][1]
    assert wide["noisy"]
    with pytest.raises(TempoError, match="same number"):
        ratio_interval([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--reps", "3"], "--reps 3: medians need at least 5 repetitions"),
        (["--batches", "1,x"], "--batches '1,x': give sizes like 1,4,16,64"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_script_errors_are_one_line(capsys, tmp_path, argv, message) -> None:
    if not bench_backend():
        pytest.skip("benchmarks/bench.py needs the HookedTransformer backend")
    assert bench.main([*argv, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err == f"bench.py: error: {message}\n"
    assert not (tmp_path / "b").exists()


def bench_backend() -> bool:
    from tempo_lens.backend import has_hooked_transformer

    return has_hooked_transformer()
