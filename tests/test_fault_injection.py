"""A few SIGKILLs at random moments of a run save and an experiment (the full run with
>= 20 kills each, and the weight cache, is benchmarks/fault_injection.py)."""

from __future__ import annotations

import random

import pytest

from benchmarks.fault_injection import experiment_scenario, save_scenario


@pytest.mark.parametrize(("scenario", "kills"), [(save_scenario, 4), (experiment_scenario, 3)])
def test_kill_minus_9_leaves_old_or_new_and_no_orphan(tmp_path, scenario, kills):
    counts = scenario(tmp_path, kills, random.Random(1))
    assert counts.get("killed", 0) + counts.get("finished", 0) == kills
    assert counts.get("target_old", 0) + counts.get("target_new", 0) == kills
    assert counts.get("target_partial", 0) == 0
    assert counts["orphans_after_next_run"] == 0
