"""Coherence of a continuation under a layout variant (a position gap, an offset, ...)
against the reference layout, as two defined, measured figures:

- **next-token agreement**: the share of continuation positions whose argmax under the
  variant equals the argmax under the reference, with an exact (Clopper–Pearson)
  interval over positions;
- **perplexity of the forced reference continuation**: the reference continuation is
  teacher-forced under both layouts; per prompt, log-perplexity = mean negative
  log-likelihood of its tokens. The variant/reference perplexity ratio is tested on the
  log scale over prompts (`stats.log_ratio_test`: geometric-mean ratio, bootstrap CI over
  prompts, sign-flip and t test p).

Pure functions of logits and token ids: the caller runs the forwards (`tempo_lens.forward`
on both layouts) and passes, per prompt, the logits rows that predict the continuation
tokens (`logits[i]` predicts `targets[i]`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from tempo_lens.analysis.stats import LogRatioTest, binomial_ci, log_ratio_test, rounded
from tempo_lens.errors import TempoError


def argmax_agreement(
    variant: Float[torch.Tensor, "n vocab"], reference: Float[torch.Tensor, "n vocab"]
) -> torch.Tensor:
    """`[n]` True where the variant's most likely next token (argmax of its logits or
    log-probs) is the reference's."""
    if variant.shape != reference.shape:
        raise TempoError(
            f"logits differ in shape: {tuple(variant.shape)} vs {tuple(reference.shape)}"
        )
    return variant.argmax(-1) == reference.argmax(-1)


def log_perplexity(logits: Float[torch.Tensor, "n vocab"], targets: torch.Tensor) -> float:
    """Log-perplexity of `targets` under `logits` (row i predicts `targets[i]`): the mean
    over rows of -log_softmax(logits[i])[targets[i]], in float64 (nats per token)."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise TempoError(
            f"need logits [n, vocab] and targets [n], got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if len(targets) == 0:
        raise TempoError("no targets: a perplexity needs at least one continuation token")
    logp = torch.log_softmax(logits.double(), -1)
    return float(-logp.gather(-1, targets.long()[:, None]).mean())


@dataclass(frozen=True)
class Coherence:
    """Coherence of a variant vs the reference over prompts (`coherence`)."""

    n_prompts: int
    n_positions: int  # continuation positions pooled for agreement
    agree: int  # positions whose argmax matches
    agreement: float  # agree / n_positions
    agreement_ci: tuple[float, float]  # exact Clopper–Pearson over positions
    log_ppl_reference: tuple[float, ...]  # per prompt
    log_ppl_variant: tuple[float, ...]  # per prompt
    ppl_ratio: LogRatioTest  # variant / reference perplexity, tested over prompts

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures, rounded by `sig`, with the geometric-mean perplexity of
        each layout over prompts."""
        return rounded(
            {
                **asdict(self),
                "perplexity_reference_geomean": float(np.exp(np.mean(self.log_ppl_reference))),
                "perplexity_variant_geomean": float(np.exp(np.mean(self.log_ppl_variant))),
            }
        )


def coherence(
    variant_logits: Sequence[Float[torch.Tensor, "n vocab"]],
    reference_logits: Sequence[Float[torch.Tensor, "n vocab"]],
    targets: Sequence[torch.Tensor],
    *,
    resamples: int = 2000,
    permutations: int = 10000,
    seed: int = 42,
) -> Coherence:
    """Per prompt p: `variant_logits[p]` and `reference_logits[p]` are the rows that
    predict the forced reference continuation `targets[p]` under the variant and the
    reference layout. Returns next-token agreement pooled over all positions (exact
    binomial CI; positions of one prompt are not independent, so read the interval as a
    lower bound on the uncertainty) and the perplexity ratio variant / reference per
    prompt, tested on the log scale over prompts (bootstrap CI over prompts)."""
    if not len(variant_logits) == len(reference_logits) == len(targets) > 0:
        raise TempoError("need one variant, one reference and one target tensor per prompt")
    flags = torch.cat(
        [argmax_agreement(v, r) for v, r in zip(variant_logits, reference_logits, strict=True)]
    )
    lv = [log_perplexity(v, t) for v, t in zip(variant_logits, targets, strict=True)]
    lr = [log_perplexity(r, t) for r, t in zip(reference_logits, targets, strict=True)]
    agree, n = int(flags.sum()), int(flags.numel())
    ci = binomial_ci(agree, n)
    assert ci is not None  # n > 0: every prompt has at least one target
    ratio = log_ratio_test(
        np.exp(np.subtract(lv, lr)),
        resamples=resamples,
        permutations=permutations,
        seed=seed,
    )
    return Coherence(len(targets), n, agree, agree / n, ci, tuple(lr), tuple(lv), ratio)
