"""Member knockout against Hugging Face with that member's key column masked for every
later query in the 4D attention mask (tests/reference.py's `pruned`), next-set
mixtures computed here from the run's member probabilities."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from matplotlib.figure import Figure

from tempo_lens.analysis.ablations import member_knockout
from tests.ablations.hf_checks import next_sets, sets_of
from tests.reference import hf_tempo_logits


def test_knockout_matches_hf_masked_key(llama_case):
    model, hf, runs = llama_case
    result = member_knockout(model, runs)
    checked = 0
    for p, run in enumerate(runs):
        prompt, sets = sets_of(run)
        plain = next_sets(hf_tempo_logits(hf, prompt, sets, True)[0], run).log()
        for (q, s, j, _), kls in zip(result.members, result.kl_next, strict=True):
            if q != p:
                continue
            knocked = next_sets(hf_tempo_logits(hf, prompt, sets, True, {(s, j): s})[0], run).log()
            for t in range(len(sets)):
                if t <= s:
                    assert math.isnan(kls[t])
                    continue
                a, b = plain[t], knocked[t]
                want = float((a.exp() * (a - b)).sum())
                assert float(kls[t]) == pytest.approx(want, rel=1e-3, abs=1e-6)
            checked += 1
    assert checked == len(result.members) > 0
    assert (result.later_mean() > 0).any()  # knocking a member out changes something


def test_only_multi_member_sets_before_the_last_are_knocked_out(case):
    model, run = case
    result = member_knockout(model, run)
    want = [
        (s, j)
        for s, ps in enumerate(run.steps[:-1])
        if len(ps.tokens) > 1
        for j in range(len(ps.tokens))
    ]
    assert [(s, j) for _, s, j, _ in result.members] == want


def test_result_structures(llama_case):
    model, _, runs = llama_case
    result = member_knockout(model, runs, isolate=False)
    s = json.loads(json.dumps(result.summary()))
    assert s["n_members"] == len(result.members) == len(s["per_member"])
    assert s["isolate"] is False and "0" in s["kl_later_next_by_rank"]
    assert isinstance(result.plot(), Figure)
    df = result.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == s["n_members"]
    assert {"prompt", "step", "rank", "kl_later_next"} <= set(df.columns)
