"""The verdict vocabulary of docs/findings.md and the rules that pick a verdict.

Every verdict is one of five words, decided by a rule written here and printed at the top of
docs/findings.md, and every verdict names the model and the n behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as sps

VERDICTS = ("reproduced", "not reproduced", "refuted", "explained", "not comparable")

RULES = """\
Verdicts (each names the model and the n it rests on):

- **reproduced**: their number lies inside our 95% CI (or, where they give a mean ± sd and
  n, a two-sided Welch test of our estimate against theirs gives p >= 0.05), and the effect
  they describe points the same way in our data.
- **not reproduced**: we do not see the effect they describe, but our data cannot exclude
  their number either (their value inside our CI, or too few repetitions to test).
- **refuted**: our estimate's 95% CI excludes their number.
- **explained**: their observation is reproduced under their own condition, and a second
  condition shows its cause (here: what the mechanism did that they did not know).
- **not comparable**: the quantities differ (another definition, a condition we cannot
  run); the row says why.
"""


@dataclass(frozen=True)
class Verdict:
    """One verdict word, why, and the model and n it rests on."""

    word: str
    reason: str
    model: str
    n: str

    def __post_init__(self) -> None:
        if self.word not in VERDICTS:
            raise ValueError(f"verdict {self.word!r} is not one of {VERDICTS}")

    def markdown(self) -> str:
        head = f"**{self.word}** ({self.model}, n = {self.n})"
        return f"{head}: {self.reason}" if self.reason else head


def inside(value: float, ci: list[float] | tuple[float, float] | None) -> bool | None:
    """Whether `value` lies in the closed interval `ci` (None: no interval)."""
    if ci is None or any(c is None or math.isnan(c) for c in ci):
        return None
    return ci[0] <= value <= ci[1]


def welch_p(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int) -> float:
    """Two-sided Welch t test of two means given as mean, sd and n (scipy)."""
    return float(
        sps.ttest_ind_from_stats(mean_a, sd_a, n_a, mean_b, sd_b, n_b, equal_var=False).pvalue
    )


def against_ci(theirs: float, ci: list[float] | None, same_direction: bool = True) -> str:
    """`refuted` when our CI excludes their value; `reproduced` when it holds it and the
    effect points their way; otherwise `not reproduced`."""
    hit = inside(theirs, ci)
    if hit is False:
        return "refuted"
    if hit and same_direction:
        return "reproduced"
    return "not reproduced"
