"""tempo_lens.analysis.coherence against direct torch / scipy computations on fixed
tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as st

from tempo_lens.analysis import coherence as C
from tempo_lens.errors import TempoError

GEN = torch.Generator().manual_seed(7)
LENGTHS = (5, 8, 3, 6, 7, 4, 9, 5)  # eight prompts
VOCAB = 11
REF = [torch.randn(n, VOCAB, generator=GEN) * 3 for n in LENGTHS]
VAR = [r + torch.randn(r.shape, generator=GEN) * 2 for r in REF]
TARGETS = [torch.randint(0, VOCAB, (n,), generator=GEN) for n in LENGTHS]


def test_argmax_agreement_is_elementwise_argmax_equality():
    got = C.argmax_agreement(VAR[0], REF[0])
    want = np.argmax(VAR[0].numpy(), -1) == np.argmax(REF[0].numpy(), -1)
    assert got.tolist() == want.tolist()
    with pytest.raises(TempoError):
        C.argmax_agreement(VAR[0], REF[1])


def test_log_perplexity_equals_torch_cross_entropy():
    for logits, t in zip(VAR, TARGETS, strict=True):
        ref = torch.nn.functional.cross_entropy(logits.double(), t, reduction="mean")
        assert C.log_perplexity(logits, t) == pytest.approx(float(ref), rel=1e-12)
    # log-probs in, same figure out (log_softmax is idempotent)
    lp = torch.log_softmax(VAR[1].double(), -1)
    assert C.log_perplexity(lp, TARGETS[1]) == pytest.approx(
        C.log_perplexity(VAR[1], TARGETS[1]), rel=1e-12
    )
    with pytest.raises(TempoError):
        C.log_perplexity(VAR[0], TARGETS[1])


def test_coherence_figures_match_scipy():
    c = C.coherence(VAR, REF, TARGETS)
    flags = np.concatenate(
        [
            np.argmax(v.numpy(), -1) == np.argmax(r.numpy(), -1)
            for v, r in zip(VAR, REF, strict=True)
        ]
    )
    k, n = int(flags.sum()), flags.size
    assert (c.n_prompts, c.n_positions, c.agree) == (8, sum(LENGTHS), k)
    assert c.agreement == k / n
    ci = st.binomtest(k, n).proportion_ci(0.95, method="exact")
    assert c.agreement_ci == (ci.low, ci.high)

    def nll(logits, t):
        return float(torch.nn.functional.cross_entropy(logits.double(), t))

    log_ratio = np.array([nll(v, t) - nll(r, t) for v, r, t in zip(VAR, REF, TARGETS, strict=True)])
    assert c.ppl_ratio.n == 8
    assert c.ppl_ratio.geometric_mean == pytest.approx(math.exp(log_ratio.mean()), rel=1e-9)
    tt = st.ttest_1samp(log_ratio, 0.0)
    assert c.ppl_ratio.p_t == pytest.approx(tt.pvalue, rel=1e-6)
    # bootstrap over prompts: scipy's percentile bootstrap with 20000 resamples; our 2000
    # resamples put each bound within Monte Carlo noise of ~0.03 SE: tolerance 0.15 SE.
    boot = st.bootstrap(
        (log_ratio,), np.mean, method="percentile", n_resamples=20000, random_state=1
    ).confidence_interval
    se = log_ratio.std(ddof=1) / math.sqrt(log_ratio.size)
    assert math.log(c.ppl_ratio.ci[0]) == pytest.approx(boot.low, abs=0.15 * se)
    assert math.log(c.ppl_ratio.ci[1]) == pytest.approx(boot.high, abs=0.15 * se)
    s = c.summary()
    assert s["agree"] == k and s["ppl_ratio"]["n"] == 8


def test_identical_variant_is_fully_coherent():
    c = C.coherence(REF, REF, TARGETS)
    assert c.agreement == 1.0 and c.agreement_ci[1] == 1.0
    assert c.ppl_ratio.geometric_mean == pytest.approx(1.0) and c.ppl_ratio.p == 1.0
    with pytest.raises(TempoError):
        C.coherence([], [], [])
