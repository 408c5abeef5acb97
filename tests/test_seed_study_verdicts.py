"""The verdict rules of docs/findings.md (experiments/seed_study/verdicts.py), checked
against scipy's Welch test computed from raw samples."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

_PATH = Path(__file__).parents[1] / "experiments" / "seed_study" / "verdicts.py"
_spec = importlib.util.spec_from_file_location("seed_study_verdicts", _PATH)
verdicts = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = verdicts  # dataclasses look their module up
_spec.loader.exec_module(verdicts)


def test_welch_from_summaries_equals_welch_on_samples():
    rng = np.random.default_rng(0)
    a, b = rng.normal(-0.11, 0.29, 60), rng.normal(-0.12, 0.24, 13)
    want = sps.ttest_ind(a, b, equal_var=False).pvalue
    got = verdicts.welch_p(a.mean(), a.std(ddof=1), 60, b.mean(), b.std(ddof=1), 13)
    assert got == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize(
    "theirs, ci, same, word",
    [
        (1.0, [0.01, 0.13], True, "refuted"),
        (0.05, [0.01, 0.13], True, "reproduced"),
        (0.05, [0.01, 0.13], False, "not reproduced"),
        (0.05, None, True, "not reproduced"),
    ],
)
def test_against_ci(theirs, ci, same, word):
    assert verdicts.against_ci(theirs, ci, same) == word


def test_verdict_names_model_and_n():
    v = verdicts.Verdict("explained", "the mask was missing", "SmolLM2-135M", "24 prompts")
    assert v.markdown() == "**explained** (SmolLM2-135M, n = 24 prompts): the mask was missing"
    with pytest.raises(ValueError, match="not one of"):
        verdicts.Verdict("confirmed", "", "m", "1")
    assert all(f"**{w}**" in verdicts.RULES for w in verdicts.VERDICTS)
