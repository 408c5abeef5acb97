"""The Ray engine on a local 2-CPU cluster: the same summary as the in-process engine,
value for value; resume across engines; a worker killed mid-sweep loses no run and
duplicates none; the one-line errors; the per-run table (parquet)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys

import pytest
import yaml

from tempo_lens import load_model, load_run
from tempo_lens.analysis.experiments.config import resolve
from tempo_lens.analysis.experiments.engines import RayEngine, model_identity
from tempo_lens.analysis.experiments.frames import to_pandas
from tempo_lens.analysis.experiments.runner import run_experiment
from tempo_lens.analysis.experiments.runs import grid


def _raw(**kw):
    raw = dict(
        name="tiny_sweep",
        kind="sweep",
        model="tiny-llama",
        prompts=["hello", "abc d", "one two three"],
        thresholds=[0.1],
        next_from=["mixture", "last"],
        max_steps=4,
        stop_at_eos=False,
        bootstrap=200,
        permutations=200,
    )
    return raw | kw


def _without_timing(summary):
    """Every figure but `timing` (wall times, the engine's name and workers)."""
    return {k: v for k, v in summary.items() if k != "timing"}


def _on_disk(out):
    summary = json.loads((out / "summary.json").read_text())
    return _without_timing(summary)


def _run_ids(out):
    return sorted(p.name for p in (out / "runs").iterdir())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The driver computes with one thread like each Ray worker (an actor of one CPU), so
    the runs match bit for bit; with other thread counts matmuls round differently
    (~1e-6 in a probability; the summary's 6-digit figures then still agree)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    # "local": a new 2-CPU cluster, even if another one runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def llama():
    # the driver's model is exactly what the workers load by the config's name
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def engine(ray_cluster, llama):
    eng = RayEngine("tiny-llama", workers=2, expect_model=model_identity(llama))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def inprocess(llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("inprocess") / "sweep"
    summary = run_experiment(resolve(_raw()), out, model=llama)
    return out, summary


def test_ray_sweep_equals_inprocess_value_for_value(engine, inprocess, llama, tmp_path):
    ref_out, ref = inprocess
    out = tmp_path / "sweep"
    summary = run_experiment(resolve(_raw()), out, model=llama, engine=engine)
    assert summary["timing"]["engine"] == "ray" and summary["timing"]["workers"] == 2
    assert ref["timing"]["engine"] == "inprocess"
    assert summary["timing"]["generated_runs"] == 12 and summary["n_runs"] == 12
    assert _on_disk(out) == _on_disk(ref_out)  # summary.json, timing excluded
    assert _without_timing(summary) == _without_timing(ref)
    assert _run_ids(out) == _run_ids(ref_out)
    for run_id in _run_ids(out):  # the runs themselves: same sets, same probabilities
        a, b = load_run(out / "runs" / run_id), load_run(ref_out / "runs" / run_id)
        assert [(s.tokens, s.probs) for s in a.steps] == [(s.tokens, s.probs) for s in b.steps]
        assert a.provenance.weight_hash == b.provenance.weight_hash


def test_resume_across_engines(engine, inprocess, llama, tmp_path):
    ref_out, _ = inprocess
    # started in-process, finished on Ray
    out = tmp_path / "a"
    run_experiment(resolve(_raw()), out, model=llama)
    for run_id in _run_ids(out)[::3]:
        shutil.rmtree(out / "runs" / run_id)
    resumed = run_experiment(resolve(_raw()), out, model=llama, engine=engine)
    assert (resumed["timing"]["generated_runs"], resumed["timing"]["skipped_runs"]) == (4, 8)
    assert _on_disk(out) == _on_disk(ref_out)
    # started on Ray, finished in-process
    out = tmp_path / "b"
    run_experiment(resolve(_raw()), out, model=llama, engine=engine)
    for run_id in _run_ids(out)[1::2]:
        shutil.rmtree(out / "runs" / run_id)
    resumed = run_experiment(resolve(_raw()), out, model=llama)
    assert (resumed["timing"]["generated_runs"], resumed["timing"]["skipped_runs"]) == (6, 6)
    assert resumed["timing"]["engine"] == "inprocess"
    assert _on_disk(out) == _on_disk(ref_out)


class KillAWorker:
    """The Ray engine, with one worker SIGKILLed right after the first unit comes back,
    while the worker just handed the next unit is running it."""

    def __init__(self, inner: RayEngine) -> None:
        self.inner = inner
        self.killed: list[int] = []

    def generate_units(self, units, options):
        for i, item in enumerate(self.inner.generate_units(units, options)):
            if i == 0:
                pid = self.inner.busy_pids()[-1]
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
            yield item

    def facts(self):
        return self.inner.facts()

    def close(self):
        self.inner.close()


def test_worker_killed_mid_sweep_loses_and_duplicates_nothing(engine, llama, tmp_path):
    raw = _raw(
        prompts=[f"prompt number {i} about the cat" for i in range(6)],
        thresholds=[0.1, 0.2],
        max_steps=8,
    )
    ref_out = tmp_path / "ref"
    run_experiment(resolve(raw), ref_out, model=llama)
    killer = KillAWorker(engine)
    before = engine.resubmitted_units
    out = tmp_path / "sweep"
    summary = run_experiment(resolve(raw), out, model=llama, engine=killer)
    assert len(killer.killed) == 1
    assert engine.resubmitted_units == before + 1  # the killed worker's unit ran again
    assert summary["timing"]["resubmitted_units"] == before + 1
    pids = engine.worker_pids()  # Ray restarted the dead worker
    assert len(pids) == 2 and killer.killed[0] not in pids
    expected = sorted(s.run_id for s in grid(resolve(raw), ["isolated", "visible"]))
    assert len(expected) == 48
    assert _run_ids(out) == expected  # every run exactly once, no leftover temporaries
    assert summary["timing"]["generated_runs"] == 48  # each unit accepted once
    assert _on_disk(out) == _on_disk(ref_out)


def test_more_workers_than_cpus_is_one_line(engine):
    from tempo_lens import TempoError

    with pytest.raises(TempoError, match="3 Ray workers need 3 CPUs but the cluster has 0 free"):
        RayEngine("tiny-llama", workers=3)


def test_cli_engine_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from tempo_lens.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_raw()))
    out = tmp_path / "o"
    assert main(["experiment", str(cfg), "--out", str(out), "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--workers only apply to --engine ray" in err
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert main(["experiment", str(cfg), "--out", str(out), "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and 'pip install "tempo_lens[distributed]"' in err
    assert not out.exists()
    from tempo_lens import TempoError

    with pytest.raises(TempoError, match=r"tempo_lens\[distributed\]"):
        run_experiment(resolve(_raw()), out, engine="ray")
    monkeypatch.undo()
    assert (
        main(
            [
                "experiment",
                str(cfg),
                "--out",
                str(out),
                "--engine",
                "ray",
                "--address",
                "127.0.0.1:1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tempo-lens: error: cannot reach a Ray cluster at 127.0.0.1:1")


def test_runs_table_is_saved_as_parquet(inprocess):
    import pandas as pd

    out, summary = inprocess
    df = to_pandas(out)
    assert len(df) == 12 and list(df.run_id) == [
        s.run_id for s in grid(resolve(_raw()), ["isolated", "visible"])
    ]
    assert pd.read_parquet(out / "runs.parquet").equals(df)
    assert sorted(set(df["mode"])) == ["isolated", "visible"]
    assert set(df.next_from) == {"mixture", "last"} and set(df.threshold) == {0.1}
    for row in df.itertuples():  # each row holds its run's own facts
        run = load_run(out / "runs" / row.run_id)
        sizes = [len(s.tokens) for s in run.steps]
        assert (row.steps, row.max_set_size, row.physical_tokens) == (
            len(sizes),
            max(sizes),
            sum(sizes),
        )
        assert row.mean_set_size == pytest.approx(sum(sizes) / len(sizes))
        assert row.prompt == run.prompt and row.text == run.text()
        assert row.prompt_tokens == run.layout.n_prompt
    assert summary["n_runs"] == 12


def test_runs_table_is_schema_checked(tmp_path):
    import pandas as pd

    from tempo_lens import TempoError

    with pytest.raises(TempoError, match="has no runs.parquet"):
        to_pandas(tmp_path)
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "runs.parquet")
    with pytest.raises(TempoError, match="does not hold tempo_lens per-run metrics"):
        to_pandas(tmp_path)
    (tmp_path / "runs.parquet").write_bytes(b"not parquet")
    with pytest.raises(TempoError, match="is damaged"):
        to_pandas(tmp_path)
