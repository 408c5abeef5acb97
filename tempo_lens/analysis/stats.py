"""Statistics for experiments across prompts: paired tests, bootstrap confidence
intervals, effect sizes, exact binomial intervals, tests on log ratios, Holm correction
within a family of tests, and the repetition-collapse flag.

Everything is seeded (`seed`) so a re-run reproduces every figure exactly. The paired
test is a sign-flip permutation test on the mean difference (exact enumeration for
n <= 14, else `permutations` random flips), which needs no distributional assumption —
generation metrics across prompts are skewed and heavy-tailed. Ratios are tested on the
log scale (`log_ratio_test`): averaging `ratio - 1` treats 0.5x and 2x asymmetrically.
scipy backs what it has (Clopper–Pearson via `binomtest`, the t test); tests/test_stats.py
checks every public function here against scipy.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, Literal, TypeVar

import numpy as np
from scipy import stats as scipy_stats

from tempo_lens.errors import TempoError

EXACT_MAX_N = 14


def sig(x: float | None, digits: int = 6) -> float | None:
    """`x` rounded to `digits` significant digits (None and non-finite kept): summary
    figures are stable text, and the last-bit noise of float sums cannot leak into them."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{digits}g}")


def rounded(value: Any) -> Any:
    """`value` with every float rounded by `sig`, through dicts, lists and tuples (tuples
    become lists): JSON-ready figures from a result's fields."""
    if isinstance(value, float):
        return sig(value)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value


def bootstrap_ci(
    values: Sequence[float], *, resamples: int = 2000, seed: int = 42, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean; None for fewer than two values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def sign_flip_p(
    diffs: Sequence[float], *, permutations: int = 10000, seed: int = 42
) -> float | None:
    """Two-sided p of H0 'the differences are symmetric around 0' (paired permutation
    test on the mean). Exact for n <= 14; otherwise (hits + 1) / (permutations + 1)."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n == 0:
        return None
    observed = abs(d.mean())
    if np.all(d == 0):
        return 1.0
    tol = 1e-12 * max(1.0, observed)
    if n <= EXACT_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        stats = np.abs((signs * d).mean(1))
        return float((stats >= observed - tol).mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(permutations, n))
    stats = np.abs((signs * d).mean(1))
    return float(((stats >= observed - tol).sum() + 1) / (permutations + 1))


def cohens_dz(diffs: Sequence[float]) -> float | None:
    """Paired effect size: mean difference / SD of the differences (None if SD is 0)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return None
    sd = d.std(ddof=1)
    return float(d.mean() / sd) if sd > 0 else None


def describe(values: Sequence[float], *, resamples: int = 2000, seed: int = 42) -> dict[str, Any]:
    """n, mean, SD, median and bootstrap 95% CI of the mean."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": None, "sd": None, "median": None, "ci95": None}
    ci = bootstrap_ci(v, resamples=resamples, seed=seed)
    return {
        "n": int(v.size),
        "mean": sig(v.mean()),
        "sd": sig(v.std(ddof=1)) if v.size > 1 else None,
        "median": sig(np.median(v)),
        "ci95": [sig(ci[0]), sig(ci[1])] if ci else None,
    }


def one_sample(
    values: Sequence[float],
    null: float = 0.0,
    *,
    resamples: int = 2000,
    permutations: int = 10000,
    seed: int = 42,
) -> dict[str, Any]:
    """`describe(values)` plus a sign-flip test of mean == `null` and d_z."""
    d = np.asarray(values, dtype=np.float64) - null
    out = describe(values, resamples=resamples, seed=seed)
    out["p"] = sig(sign_flip_p(d, permutations=permutations, seed=seed))
    out["d_z"] = sig(cohens_dz(d))
    return out


def paired(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 2000,
    permutations: int = 10000,
    seed: int = 42,
) -> dict[str, Any]:
    """Paired comparison of a and b over the same prompts: means, mean(a - b) with its
    bootstrap CI, sign-flip p and Cohen's d_z."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    d = x - y
    diff = one_sample(d, resamples=resamples, permutations=permutations, seed=seed)
    return {
        "n": int(d.size),
        "mean_a": sig(x.mean()) if d.size else None,
        "mean_b": sig(y.mean()) if d.size else None,
        "mean_diff": diff["mean"],
        "ci95_diff": diff["ci95"],
        "p": diff["p"],
        "d_z": diff["d_z"],
    }


def binomial_ci(successes: int, n: int, *, level: float = 0.95) -> tuple[float, float] | None:
    """Exact (Clopper–Pearson) confidence interval of a proportion `successes / n`, from
    `scipy.stats.binomtest(...).proportion_ci(method="exact")`; None when n is 0. Unlike a
    bootstrap it never collapses to [0, 0] or [1, 1] and covers at least `level`."""
    if n == 0:
        return None
    if not 0 <= successes <= n:
        raise TempoError(f"successes must lie in [0, {n}], got {successes}")
    ci = scipy_stats.binomtest(int(successes), int(n)).proportion_ci(level, method="exact")
    return float(ci.low), float(ci.high)


def proportion(
    flags: Sequence[bool],
    *,
    method: Literal["exact", "bootstrap"] = "exact",
    resamples: int = 2000,
    seed: int = 42,
) -> dict[str, Any]:
    """Share of True with its 95% CI: exact Clopper–Pearson (`binomial_ci`, default) or,
    `method="bootstrap"`, the percentile bootstrap of the mean (`resamples`, `seed`)."""
    count, n = int(sum(bool(f) for f in flags)), len(flags)
    if method == "bootstrap":
        d = describe([float(f) for f in flags], resamples=resamples, seed=seed)
        return {"n": d["n"], "share": d["mean"], "ci95": d["ci95"], "count": count}
    if method != "exact":
        raise TempoError(f"method must be 'exact' or 'bootstrap', got {method!r}")
    ci = binomial_ci(count, n)
    return {
        "n": n,
        "share": sig(count / n) if n else None,
        "ci95": [sig(ci[0]), sig(ci[1])] if ci else None,
        "count": count,
    }


# ---------------------------------------------------------------------------------------
# Log ratios and families of tests
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogRatioTest:
    """Paired ratios tested on the log scale (`log_ratio_test`)."""

    n: int  # ratios used: finite and > 0
    n_invalid: int  # ratios dropped (NaN, inf, <= 0): counted, never silently lost
    null: float  # the ratio under H0
    geometric_mean: float | None  # exp(mean log ratio)
    ci: tuple[float, float] | None  # exp of the bootstrap CI of the mean log ratio
    level: float
    mean_log: float | None
    sd_log: float | None
    p: float | None  # sign-flip p of the log ratios around log(null)
    t: float | None  # one-sample t statistic of the logs against log(null)
    p_t: float | None  # its two-sided p
    d_z: float | None  # mean / SD of log(ratio) - log(null)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures, rounded by `sig`."""
        return rounded(asdict(self))


def log_ratio_test(
    ratios: Sequence[float],
    null: float = 1.0,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    permutations: int = 10000,
    seed: int = 42,
) -> LogRatioTest:
    """Test paired ratios (one per prompt, e.g. a / b) against `null` on the log scale:
    the geometric-mean ratio exp(mean log r) with exp of the percentile-bootstrap CI of
    mean log r (`bootstrap_ci`), the sign-flip p of log r - log(null) (`sign_flip_p`:
    exact for n <= 14) and a one-sample t test of the logs (`scipy.stats.ttest_1samp`).
    Ratios that are NaN, infinite or <= 0 have no log: they are dropped and counted in
    `n_invalid`."""
    if not null > 0:
        raise TempoError(f"null must be a positive ratio, got {null}")
    r = np.asarray(ratios, dtype=np.float64).ravel()
    valid = np.isfinite(r) & (r > 0)
    logs = np.log(r[valid])
    d = logs - math.log(null)
    n = int(logs.size)
    ci = bootstrap_ci(logs, resamples=resamples, seed=seed, level=level)
    t = p_t = None
    if n >= 2 and d.std(ddof=1) > 0:
        res = scipy_stats.ttest_1samp(d, 0.0)
        t, p_t = float(res.statistic), float(res.pvalue)
    return LogRatioTest(
        n=n,
        n_invalid=int(r.size - n),
        null=float(null),
        geometric_mean=float(np.exp(logs.mean())) if n else None,
        ci=(math.exp(ci[0]), math.exp(ci[1])) if ci else None,
        level=level,
        mean_log=float(logs.mean()) if n else None,
        sd_log=float(logs.std(ddof=1)) if n >= 2 else None,
        p=sign_flip_p(d, permutations=permutations, seed=seed),
        t=t,
        p_t=p_t,
        d_z=cohens_dz(d),
    )


@dataclass(frozen=True)
class HolmResult:
    """Holm step-down adjustment of one family of p-values (`holm`)."""

    p: tuple[float | None, ...]  # as given; None = no test possible, not in the family
    p_adjusted: tuple[float | None, ...]
    reject: tuple[bool, ...]  # p_adjusted <= alpha (False where p is None)
    alpha: float
    m: int  # family size: the p-values that are not None


def holm(p_values: Sequence[float | None], *, alpha: float = 0.05) -> HolmResult:
    """Holm's step-down adjustment: with the m non-None p-values sorted ascending,
    p_adj(i) = max over j <= i of min(1, (m - j + 1) p(j)) (ranks from 1), and H(i) is
    rejected where p_adj(i) <= alpha — the same decisions as stopping at the first
    p(i) > alpha / (m - i + 1). Controls the family-wise error rate at alpha under any
    dependence. None entries stay None and are not counted in m."""
    given = tuple(None if p is None else float(p) for p in p_values)
    idx = [i for i, p in enumerate(given) if p is not None]
    m = len(idx)
    adjusted: list[float | None] = [None] * len(given)
    if m:
        p = np.array([given[i] for i in idx])
        order = np.argsort(p, kind="stable")
        scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
        for rank, value in zip(order, np.maximum.accumulate(scaled), strict=True):
            adjusted[idx[rank]] = float(value)
    reject = tuple(a is not None and a <= alpha for a in adjusted)
    return HolmResult(given, tuple(adjusted), reject, alpha, m)


T = TypeVar("T")


def p_value_of(result: Any) -> float | None:
    """The p-value of a test result: its `.p`, or its `["p"]` for the dict summaries
    (`one_sample`, `paired`)."""
    return result["p"] if isinstance(result, Mapping) else result.p


@dataclass(frozen=True)
class FamilyResult(Generic[T]):
    """One test per element of a family (e.g. per layer), Holm-corrected (`holm_family`)."""

    labels: tuple[Hashable, ...]
    tests: tuple[T, ...]
    holm: HolmResult

    def significant(self) -> list[Hashable]:
        """Labels whose Holm-adjusted p is <= alpha."""
        return [lab for lab, rej in zip(self.labels, self.holm.reject, strict=True) if rej]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: alpha, family size, the significant labels and, per element, its
        test's figures with `p_holm` and `reject`."""
        elements = []
        for lab, test, adj, rej in zip(
            self.labels, self.tests, self.holm.p_adjusted, self.holm.reject, strict=True
        ):
            figures = dict(test) if isinstance(test, Mapping) else test.summary()  # type: ignore[attr-defined]
            elements.append({"label": lab, **figures, "p_holm": sig(adj), "reject": rej})
        return {
            "alpha": self.holm.alpha,
            "m": self.holm.m,
            "significant": self.significant(),
            "elements": elements,
        }


def holm_family(
    samples: Mapping[Hashable, Sequence[float]],
    test: Callable[[Sequence[float]], T] = log_ratio_test,  # type: ignore[assignment]
    *,
    alpha: float = 0.05,
) -> FamilyResult[T]:
    """Run `test` on each element's sample (e.g. `{layer: per-prompt ratios}`; default
    `log_ratio_test`, or `one_sample` / any function whose result has `.p` or `["p"]`)
    and Holm-correct the p-values within this family (`holm`). Elements keep the
    mapping's order."""
    labels = tuple(samples)
    tests = tuple(test(samples[lab]) for lab in labels)
    return FamilyResult(labels, tests, holm([p_value_of(t) for t in tests], alpha=alpha))


# ---------------------------------------------------------------------------------------
# Repetition collapse
# ---------------------------------------------------------------------------------------

COLLAPSE_NGRAM = 3  # an n-gram of >= 3 tokens ...
COLLAPSE_REPEATS = 3  # ... occurring >= 3 times (overlaps allowed)
COLLAPSE_MIN_DISTINCT = 0.3  # or the last half has < 30% distinct tokens
COLLAPSE_MIN_LEN = 8  # the distinct-token rule needs at least 8 tokens


def repetition_collapse(tokens: Sequence[int]) -> bool:
    """True when a generation has collapsed into repetition: some n-gram of
    `COLLAPSE_NGRAM` tokens occurs `COLLAPSE_REPEATS` or more times, or (for at least
    `COLLAPSE_MIN_LEN` tokens) its last half has fewer than 30% distinct tokens.

    Applied to the clean text (top member per step), so a degenerate loop is reported
    separately instead of being pooled with healthy generations."""
    t = list(tokens)
    grams = Counter(tuple(t[i : i + COLLAPSE_NGRAM]) for i in range(len(t) - COLLAPSE_NGRAM + 1))
    if grams and max(grams.values()) >= COLLAPSE_REPEATS:
        return True
    if len(t) >= COLLAPSE_MIN_LEN:
        half = t[len(t) // 2 :]
        return len(set(half)) / len(half) < COLLAPSE_MIN_DISTINCT
    return False
