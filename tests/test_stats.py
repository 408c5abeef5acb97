"""tempo_lens.analysis.stats against scipy on fixed inputs.

Exact methods (exact sign-flip enumeration, Clopper–Pearson, the t test, Holm) must agree
with scipy (or, for Holm, which scipy lacks, with its definition written out here) to
float precision. Monte Carlo methods (bootstrap, random sign flips) are compared with
scipy's own Monte Carlo or exact answer within a tolerance stated at each test: several
standard errors of the Monte Carlo estimate, so a correct implementation fails with
negligible probability, while a wrong one (wrong quantile, wrong tail, no +1 correction
in the wrong place) is off by far more.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as st

from tempo_lens.analysis import stats as S

RNG = np.random.default_rng(20240515)
SMALL = np.round(RNG.normal(0.3, 1.0, size=11), 3)  # n <= 14: exact sign flips
LARGE = np.round(RNG.normal(0.6, 1.0, size=16), 3)  # n > 14: Monte Carlo sign flips
RATIOS = np.round(np.exp(RNG.normal(-0.12, 0.25, size=12)), 4)


def scipy_sign_flip(d: np.ndarray) -> float:
    """Two-sided sign-flip p of the mean by exhaustive enumeration in scipy."""
    res = st.permutation_test(
        (np.asarray(d, dtype=np.float64),),
        lambda x, axis: np.abs(x.mean(axis)),
        permutation_type="samples",
        n_resamples=np.inf,
        alternative="greater",
        vectorized=True,
    )
    return float(res.pvalue)


def scipy_percentile_ci(v: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    res = st.bootstrap(
        (v,),
        np.mean,
        method="percentile",
        n_resamples=20000,
        confidence_level=level,
        random_state=1,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_se(v: np.ndarray) -> float:
    return float(v.std(ddof=1) / math.sqrt(v.size))


# -- sig, repetition_collapse: no scipy counterpart, known values -----------------------


def test_sig_known_values():
    assert S.sig(0.123456789) == 0.123457
    assert S.sig(123456789.0, 3) == 1.23e8
    assert S.sig(None) is None and S.sig(0.0) == 0.0
    assert math.isnan(S.sig(float("nan"))) and S.sig(float("inf")) == float("inf")


def test_repetition_collapse_known_values():
    assert S.repetition_collapse([1, 2, 3, 1, 2, 3, 1, 2, 3])
    assert S.repetition_collapse([7] * 5)
    assert not S.repetition_collapse(list(range(15)))
    assert not S.repetition_collapse([1, 2, 3, 1, 2, 3])
    assert S.repetition_collapse(list(range(8)) + [1, 2] * 4 + [3])  # last half: 3 distinct


# -- sign flips ------------------------------------------------------------------------------


def test_sign_flip_exact_equals_scipy_enumeration():
    for d in (SMALL, SMALL[:5], np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, -1.0, 2.0])):
        assert S.sign_flip_p(d) == pytest.approx(scipy_sign_flip(d), abs=1e-12)


def test_sign_flip_monte_carlo_within_tolerance_of_exact():
    # 10000 random flips: SE <= 0.005; tolerance 0.02 is 4 SE.
    exact = scipy_sign_flip(LARGE)
    assert S.sign_flip_p(LARGE, permutations=10000, seed=3) == pytest.approx(exact, abs=0.02)
    assert S.sign_flip_p(np.full(40, 1.0), permutations=999) == pytest.approx(1 / 1000)
    assert S.sign_flip_p([0.0, 0.0]) == 1.0 and S.sign_flip_p([]) is None


# -- effect size, description, one-sample and paired tests -----------------------------------


def test_cohens_dz_equals_scipy_t_over_sqrt_n():
    t = st.ttest_1samp(SMALL, 0.0).statistic
    assert S.cohens_dz(SMALL) == pytest.approx(t / math.sqrt(SMALL.size), rel=1e-12)
    assert S.cohens_dz([1.0]) is None and S.cohens_dz([2.0, 2.0]) is None


def test_bootstrap_ci_within_tolerance_of_scipy():
    # 2000 (ours) and 20000 (scipy) resamples: the 2.5%/97.5% quantiles of the bootstrap
    # mean differ by Monte Carlo noise ~0.02 SE; tolerance 0.15 SE of the mean.
    for v in (SMALL, LARGE):
        lo, hi = S.bootstrap_ci(v)
        ref = scipy_percentile_ci(v)
        assert lo == pytest.approx(ref[0], abs=0.15 * mean_se(v))
        assert hi == pytest.approx(ref[1], abs=0.15 * mean_se(v))
    assert S.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0) and S.bootstrap_ci([1.0]) is None
    assert S.bootstrap_ci(SMALL, seed=5) == S.bootstrap_ci(SMALL, seed=5)


def test_describe_matches_scipy():
    d = S.describe(LARGE)
    ref = st.describe(LARGE)
    assert d["n"] == ref.nobs
    assert d["mean"] == pytest.approx(ref.mean, rel=1e-5)
    assert d["sd"] == pytest.approx(math.sqrt(ref.variance), rel=1e-5)
    assert d["median"] == pytest.approx(float(np.median(LARGE)), rel=1e-5)
    lo, hi = scipy_percentile_ci(LARGE)
    assert d["ci95"][0] == pytest.approx(lo, abs=0.15 * mean_se(LARGE))  # as above
    assert d["ci95"][1] == pytest.approx(hi, abs=0.15 * mean_se(LARGE))
    assert S.describe([])["mean"] is None


def test_one_sample_matches_scipy():
    r = S.one_sample(SMALL, null=0.1)
    d = SMALL - 0.1
    assert r["p"] == pytest.approx(scipy_sign_flip(d), rel=1e-5)  # sig() keeps 6 digits
    t = st.ttest_1samp(SMALL, 0.1).statistic
    assert r["d_z"] == pytest.approx(t / math.sqrt(SMALL.size), rel=1e-5)


def test_paired_matches_scipy():
    a, b = SMALL + 1.0, SMALL[::-1] * 0.5 + 1.0
    r = S.paired(a, b)
    assert r["mean_diff"] == pytest.approx(float((a - b).mean()), rel=1e-5)
    ref = st.permutation_test(
        (a, b),
        lambda x, y, axis: np.abs((x - y).mean(axis)),
        permutation_type="samples",
        n_resamples=np.inf,
        alternative="greater",
        vectorized=True,
    )
    assert r["p"] == pytest.approx(ref.pvalue, rel=1e-5)
    t = st.ttest_rel(a, b).statistic
    assert r["d_z"] == pytest.approx(t / math.sqrt(a.size), rel=1e-5)
    with pytest.raises(ValueError):
        S.paired([1.0, 2.0], [1.0])


# -- proportions ------------------------------------------------------------------------------


def test_binomial_ci_equals_scipy_binomtest():
    for k, n in ((3, 64), (0, 10), (10, 10), (17, 40), (1, 1)):
        ref = st.binomtest(k, n).proportion_ci(0.95, method="exact")
        assert S.binomial_ci(k, n) == (pytest.approx(ref.low, abs=1e-15), ref.high)
        ref90 = st.binomtest(k, n).proportion_ci(0.9, method="exact")
        assert S.binomial_ci(k, n, level=0.9) == (ref90.low, ref90.high)
    lo, hi = S.binomial_ci(
        3, 64
    )  # 3 of 64: [1.0%, 13.1%], where a bootstrap gives 0 as lower bound
    assert (round(lo, 3), round(hi, 3)) == (0.010, 0.131)
    assert S.binomial_ci(0, 0) is None
    with pytest.raises(ValueError):
        S.binomial_ci(5, 4)


def test_proportion_exact_and_bootstrap():
    flags = [True] * 3 + [False] * 61
    r = S.proportion(flags)
    ref = st.binomtest(3, 64).proportion_ci(0.95, method="exact")
    assert (r["n"], r["count"]) == (64, 3)
    assert r["share"] == pytest.approx(3 / 64, rel=1e-5)
    assert r["ci95"] == [pytest.approx(ref.low, rel=1e-5), pytest.approx(ref.high, rel=1e-5)]
    boot = S.proportion(flags, method="bootstrap")
    assert boot["share"] == r["share"] and boot["ci95"][0] < r["ci95"][1]
    assert S.proportion([])["share"] is None
    assert S.proportion([True, False, True, True])["share"] == 0.75


# -- Holm -------------------------------------------------------------------------------------


def holm_by_definition(p: list[float], alpha: float) -> tuple[list[float], list[bool]]:
    """Holm (1979) written out: reject in ascending order while p(i) <= alpha/(m - i + 1)
    (i from 1), then stop; the adjusted p of a hypothesis is the smallest alpha at which
    that procedure rejects it, i.e. max over j <= i of min(1, (m - j + 1) p(j))."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    reject = [False] * m
    for rank, i in enumerate(order, start=1):
        if p[i] > alpha / (m - rank + 1):
            break
        reject[i] = True
    adjusted = [0.0] * m
    for rank, i in enumerate(order, start=1):
        adjusted[i] = max(min(1.0, (m - j + 1) * p[order[j - 1]]) for j in range(1, rank + 1))
    return adjusted, reject


def test_holm_equals_its_definition():
    families = [
        [0.01, 0.04, 0.03, 0.005],
        [0.001, 0.02, 0.02, 0.5, 0.049, 0.0001],  # with a tie
        list(np.round(RNG.uniform(0, 0.2, size=30), 5)),
        [0.9, 0.8],
    ]
    for p in families:
        for alpha in (0.05, 0.01, 0.1):
            adj, rej = holm_by_definition(p, alpha)
            r = S.holm(p, alpha=alpha)
            assert r.m == len(p) and r.p == tuple(p)
            assert list(r.p_adjusted) == pytest.approx(adj, abs=1e-15)
            assert list(r.reject) == rej


def test_holm_skips_missing_p_values():
    r = S.holm([0.01, None, 0.04])
    assert r.m == 2 and r.p_adjusted == (pytest.approx(0.02), None, pytest.approx(0.04))
    assert r.reject == (True, False, True)
    assert S.holm([]).m == 0


# -- log ratios and families ------------------------------------------------------------------


def test_log_ratio_test_matches_scipy():
    r = S.log_ratio_test(RATIOS)
    logs = np.log(RATIOS)
    assert r.n == RATIOS.size and r.n_invalid == 0
    assert r.geometric_mean == pytest.approx(st.gmean(RATIOS), rel=1e-12)
    assert r.mean_log == pytest.approx(logs.mean(), rel=1e-12)
    tt = st.ttest_1samp(logs, 0.0)
    assert (r.t, r.p_t) == (pytest.approx(tt.statistic, rel=1e-12), pytest.approx(tt.pvalue))
    assert r.p == pytest.approx(scipy_sign_flip(logs), abs=1e-12)  # n = 12: exact
    assert r.d_z == pytest.approx(tt.statistic / math.sqrt(logs.size), rel=1e-12)
    lo, hi = scipy_percentile_ci(logs)  # the CI is exp(CI of the mean log); tolerance as above
    assert math.log(r.ci[0]) == pytest.approx(lo, abs=0.15 * mean_se(logs))
    assert math.log(r.ci[1]) == pytest.approx(hi, abs=0.15 * mean_se(logs))
    assert r.summary()["geometric_mean"] == pytest.approx(r.geometric_mean, rel=1e-5)


def test_log_ratio_test_null_and_invalid_values():
    r = S.log_ratio_test([*RATIOS, 0.0, float("nan"), -1.0], null=0.9)
    logs = np.log(RATIOS) - math.log(0.9)
    assert r.n == RATIOS.size and r.n_invalid == 3
    assert r.p == pytest.approx(scipy_sign_flip(logs), abs=1e-12)
    assert r.p_t == pytest.approx(st.ttest_1samp(np.log(RATIOS), math.log(0.9)).pvalue)
    # a 2x and a 0.5x ratio average to 1 on the log scale (but to 1.25 as ratio - 1)
    assert S.log_ratio_test([2.0, 0.5]).geometric_mean == pytest.approx(1.0)
    empty = S.log_ratio_test([float("nan")])
    assert (empty.n, empty.geometric_mean, empty.p, empty.ci) == (0, None, None, None)
    with pytest.raises(ValueError):
        S.log_ratio_test(RATIOS, null=0.0)


def test_holm_family_per_layer():
    layers = {0: RATIOS, 1: RATIOS * 0.7, 2: RATIOS * 1.4, 3: np.ones(5)}
    fam = S.holm_family(layers)
    raw = [scipy_sign_flip(np.log(np.asarray(v, dtype=np.float64))) for v in layers.values()]
    raw[3] = 1.0  # all logs 0: p = 1 by definition
    adj, rej = holm_by_definition(raw, 0.05)
    assert fam.labels == (0, 1, 2, 3)
    assert list(fam.holm.p_adjusted) == pytest.approx(adj, abs=1e-12)
    assert fam.significant() == [lab for lab, r in zip(layers, rej, strict=True) if r]
    assert 1 in fam.significant() and 3 not in fam.significant()
    s = fam.summary()
    assert s["m"] == 4 and s["elements"][1]["reject"] is True
    assert s["elements"][1]["geometric_mean"] == pytest.approx(st.gmean(RATIOS * 0.7), rel=1e-5)


def test_holm_family_with_dict_tests():
    fam = S.holm_family({"a": SMALL, "b": SMALL - 10}, S.one_sample, alpha=0.05)
    ref = [scipy_sign_flip(SMALL), scipy_sign_flip(SMALL - 10)]
    adj, _ = holm_by_definition(ref, 0.05)
    assert list(fam.holm.p_adjusted) == pytest.approx(adj, rel=1e-5)
    assert fam.significant() == ["b"] and fam.summary()["elements"][0]["label"] == "a"


def test_exact_enumeration_bound():
    # The exact branch enumerates 2^n sign patterns up to EXACT_MAX_N; beyond, Monte Carlo.
    d = np.arange(1.0, S.EXACT_MAX_N + 1)
    expected = (
        sum(abs(np.dot(s, d)) >= d.sum() - 1e-9 for s in itertools.product((1, -1), repeat=d.size))
        / 2**d.size
    )
    assert S.sign_flip_p(d) == pytest.approx(expected, abs=1e-15)
