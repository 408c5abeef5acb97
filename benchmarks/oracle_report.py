"""Print the correctness figures the test suite asserts, as numbers to quote.

    .venv/bin/python benchmarks/oracle_report.py [--model embedded|tiny-llama|...]

For one model: plain log-probabilities vs Hugging Face (`load_hf_gguf` for the embedded model),
TEMPO layouts vs HF with explicit position_ids + 4D mask (isolated and visible), branch
equivalence, KV-cache vs full recomputation, and greedy identity. The reference code is
the test suite's (tests/reference.py), which shares nothing with tempo_lens's mechanism.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tempo_lens as tl  # noqa: E402
from tests.reference import hf_tempo_logits, log_probs  # noqa: E402

PROMPT = "The cat sat on the"


def _load(name: str):
    if name == "embedded":
        from tempo_lens.loading import embedded_gguf_path, load_hf_gguf

        hf, tok = load_hf_gguf(embedded_gguf_path())
        return tl.load_model(), hf, tok
    from tempo_lens.testing import tiny_hf_model

    hf, tok = tiny_hf_model(name.removeprefix("tiny-"))
    return tl.load_model(name), hf, tok


def report(name: str, max_steps: int = 10) -> dict:
    model, hf, tok = _load(name)
    eos = -1 if name == "embedded" else None
    out: dict = {"model": model.cfg.model_name}
    ids = torch.tensor([tok(PROMPT + " mat because")["input_ids"]])
    # load_model centers the unembedding (TL's default): logits move by a constant per row,
    # so the comparison with HF is on log-probabilities
    out["plain_logprobs_max_abs_diff"] = (
        (log_probs(model(ids)) - log_probs(hf(ids).logits)).abs().max().item()
    )

    run = tl.generate(
        model, PROMPT, threshold=0.1, max_steps=max_steps, keep_logits=True, eos_token_id=eos
    )
    out["set_sizes"] = [len(s) for s in run.steps]
    prompt = run.layout.tokens[: run.layout.n_prompt].tolist()
    sets = [s.tokens for s in run.steps]
    for isolate in (True, False):
        ours, _ = tl.forward(model, run.layout, isolate=isolate)
        ref = hf_tempo_logits(hf, prompt, sets, isolate)
        out[f"oracle_{'isolated' if isolate else 'visible'}_logprobs_max_abs_diff"] = (
            (log_probs(ours) - log_probs(ref)).abs().max().item()
        )
    branch = 0.0
    for step in range(len(run.steps)):
        sl = run.layout.set_slice(step)
        before = run.layout.prefix(sl.start)
        for j, token in enumerate(run.layout.tokens[sl].tolist()):
            alone = before.append_set([token], position=int(run.layout.positions[sl.start]))
            ref, _ = tl.forward(model, alone, isolate=True)
            branch = max(branch, (run.logits[step + 1][j] - ref[0, -1]).abs().max().item())
    out["branch_equivalence_max_abs_diff"] = branch
    full = tl.generate(
        model,
        PROMPT,
        threshold=0.1,
        max_steps=max_steps,
        keep_logits=True,
        use_kv_cache=False,
        eos_token_id=eos,
    )
    out["cache_same_sets"] = sets == [s.tokens for s in full.steps]
    out["cache_vs_recompute_max_abs_diff"] = max(
        (a - b).abs().max().item() for a, b in zip(run.logits, full.logits, strict=True)
    )
    greedy = tl.generate(model, PROMPT, threshold=1.0, max_steps=max_steps, eos_token_id=None)
    tokens = model.to_tokens(PROMPT, prepend_bos=model.cfg.default_prepend_bos)
    ref = model.generate(
        tokens, max_new_tokens=max_steps, do_sample=False, stop_at_eos=False, verbose=False
    )[0, tokens.shape[1] :].tolist()
    out["greedy_identical_tokens"] = (
        f"{sum(a.tokens[0] == b for a, b in zip(greedy.steps, ref, strict=True))}/{max_steps}"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_grad_enabled(False)
    with contextlib.redirect_stdout(io.StringIO()):
        result = report(args.model)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
