"""GenerateConfig and Mode: the typed settings stored in and loaded with every run."""

from __future__ import annotations

import json

import pytest

import tempo_lens as tl
from tempo_lens.config import MODES, GenerateConfig, isolate_of, mode_of


def test_round_trip_and_defaults_in_one_place():
    c = GenerateConfig(threshold=0.2, max_steps=4, isolate=False, prune=0.5)
    assert GenerateConfig.from_dict(c.to_dict()) == c
    assert GenerateConfig.from_dict({"threshold": 0.2}) == GenerateConfig(threshold=0.2)
    assert "prune" not in GenerateConfig().to_dict()
    assert c.mode == "visible" and GenerateConfig().mode == "isolated"


def test_modes():
    assert MODES == ("isolated", "visible")
    assert [mode_of(isolate_of(m)) for m in MODES] == list(MODES)
    with pytest.raises(tl.TempoError, match="'isolated' or 'visible'"):
        isolate_of("iso")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": 0}, r"threshold must lie in \(0, 1\]"),
        ({"max_steps": 0}, "max_steps must be an integer >= 1"),
        ({"next_from": "middle"}, "next_from must be one of mixture, last, first"),
        ({"isolate": "yes"}, "isolate must be True or False"),
        ({"prune": -1.0}, "prune must be a ratio > 0"),
    ],
)
def test_bad_settings_are_one_line(kwargs, message):
    with pytest.raises(tl.TempoError, match=message):
        GenerateConfig(**kwargs)


def test_unknown_setting_in_a_saved_run_names_the_file(tiny_pair, tmp_path):
    model, _, _ = tiny_pair
    run = tl.generate(model, "The cat", threshold=0.1, max_steps=2, eos_token_id=None)
    assert isinstance(run.config, GenerateConfig) and run.config.max_steps == 2
    d = run.save(tmp_path / "r")
    assert tl.load_run(d).config == run.config
    meta = json.loads((d / "run.json").read_text())
    meta["config"]["temprature"] = 1.0
    (d / "run.json").write_text(json.dumps(meta))
    with pytest.raises(tl.TempoError, match=r"run.json: config: unknown generation setting "):
        tl.load_run(d)


def test_a_saved_schedule_cannot_generate_again():
    c = GenerateConfig.from_dict({"threshold": {"kind": "relu", "start": 0.5}})
    with pytest.raises(tl.TempoError, match="threshold_from_spec"):
        c.threshold_at(0)
