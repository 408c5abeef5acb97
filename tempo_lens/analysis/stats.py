"""Statistics for experiments across prompts: paired tests, bootstrap confidence
intervals, effect sizes and the repetition-collapse flag.

Everything is seeded (`seed`) so a re-run reproduces every figure exactly. No scipy: the
paired test is a sign-flip permutation test on the mean difference (exact enumeration
for n <= 14, else `permutations` random flips), which needs no distributional assumption
— generation metrics across prompts are skewed and heavy-tailed.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

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


def proportion(flags: Sequence[bool], *, resamples: int = 2000, seed: int = 42) -> dict[str, Any]:
    """Share of True with its bootstrap 95% CI."""
    d = describe([float(f) for f in flags], resamples=resamples, seed=seed)
    return {"n": d["n"], "share": d["mean"], "ci95": d["ci95"], "count": int(sum(flags))}


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
