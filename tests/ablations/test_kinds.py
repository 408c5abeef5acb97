"""Every ablation kind of `KINDS` runs on a tiny model from its typed defaults, writes
its plots and a JSON-able summary, and declares the common keys it ignores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tempo_lens.analysis.ablations import KINDS
from tempo_lens.testing import tiny_model

PROMPTS = ["The cat sat", "Once upon"]


def section(kind, **keys):
    """A resolved section: the common keys a kind reads, its own typed defaults."""
    common = {
        "name": "t",
        "kind": kind.name,
        "prompts": [{"id": f"p{i}", "category": "c", "text": t} for i, t in enumerate(PROMPTS)],
        "thresholds": [0.1],
        "max_steps": 4,
        "next_from": ["mixture"],
        "max_parallel": None,
        "stop_at_eos": True,
    }
    return common | kind.keys().model_dump() | keys


SMALL = {
    "activation_patching": {"hooks": ["resid_pre"], "groups": ["all"]},
    "partial_isolation": {"biases": [0, 1], "windows": [0]},
    "position_ablation": {"deltas": [0.5], "gaps": [1, 5]},
}


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_kind_runs_from_its_defaults(kind, tmp_path):
    assert "modes" in kind.unused and "next_from" in kind.single
    summary = kind.run(
        tiny_model("llama"), section(kind, **SMALL.get(kind.name, {})), tmp_path, False
    )
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    with pytest.raises(ValidationError):
        kind.keys(not_a_key=1)


def test_kind_names_are_unique():
    assert len({k.name for k in KINDS}) == len(KINDS)


def test_partial_isolation_defaults_are_the_documented_ones():
    keys = next(k for k in KINDS if k.name == "partial_isolation").keys()
    assert keys.biases == [0, 0.5, 1, 2, 4, 8, 16, 10000] and keys.windows == [0, 1, 2, 3]
    pos = next(k for k in KINDS if k.name == "position_ablation").keys()
    assert pos.deltas == [0.25, 0.5, 1, 2] and pos.gaps == [1, 5, 20, 100, 1000]


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "experiments" / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_config_runs_through_the_runner(config, tmp_path):
    from tempo_lens.analysis.experiments.config import resolve
    from tempo_lens.analysis.experiments.runner import run_experiment

    raw = yaml.safe_load(config.read_text())
    assert raw["kind"] in {k.name for k in KINDS}
    raw.pop("prompt_suite", None)
    raw.pop("max_prompts", None)
    raw |= {"prompts": PROMPTS, "max_steps": 3} | SMALL.get(raw["kind"], {})
    summary = run_experiment(
        resolve(raw, config.parent), tmp_path / "out", model=tiny_model("llama")
    )
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["kind"] == raw["kind"]
    assert list((tmp_path / "out").glob("*.png"))
    if raw["kind"] == "layer_patching":
        assert summary["restored"]["upto"]["pooled"][-1] == pytest.approx(1.0)


def test_ignored_common_keys_are_refused():
    from tempo_lens.analysis.experiments.config import resolve
    from tempo_lens.errors import TempoError

    raw = {"name": "x", "kind": "member_knockout", "prompts": PROMPTS}
    with pytest.raises(TempoError, match="modes"):
        resolve(raw | {"modes": ["isolated"]})
    with pytest.raises(TempoError, match="thresholds"):
        resolve(raw | {"thresholds": [0.1, 0.2]})
