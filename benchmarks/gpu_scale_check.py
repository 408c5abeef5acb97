"""The seeds' model shape at full scale, on a GPU: oracle check and step timing.

    python benchmarks/gpu_scale_check.py [--device cuda] [--out result.json]

Builds a randomly initialised Llama with the configuration of
deepcogito/cogito-v1-preview-llama-3B (a Llama-3.2-3B fine-tune: 28 layers, 24 query / 8
KV heads, d_model 3072, llama3 RoPE scaling) — its weights cannot be downloaded here, its
shape can be reproduced — converts it with `model_from_hf`, and checks a forced TEMPO
layout against Hugging Face's `LlamaForCausalLM` given explicit `position_ids` and a 4D
mask, in both modes. Then it times a TEMPO step (k = 4, isolated and visible) against a
greedy decode step on the same model. Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

COGITO_3B = dict(
    vocab_size=128256,
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=28,
    num_attention_heads=24,
    num_key_value_heads=8,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    hidden_act="silu",
    rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
)


def _hf_reference(hf, layout, isolate: bool) -> torch.Tensor:
    """HF logits with position_ids and the 4D mask `testing.hf_tempo_mask` builds from the
    layout's steps alone."""
    from tempo_lens.testing import hf_tempo_mask

    dev = hf.device
    with torch.no_grad():
        return hf(
            input_ids=layout.tokens[None].to(dev),
            position_ids=layout.positions[None].to(dev),
            attention_mask=hf_tempo_mask(layout.step, isolate).to(dev),
        ).logits


def _time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    import transformers as tf
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    import tempo_lens as tl
    from tempo_lens.generate import mechanism_hooks, model_forward
    from tempo_lens.loading import model_from_hf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = tf.LlamaConfig(**COGITO_3B)
    config._attn_implementation = "eager"
    with torch.device(args.device):
        hf = tf.LlamaForCausalLM(config).eval()
    model = model_from_hf(hf, None, device=args.device, model_name="cogito-3B-shape-random")

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 128000, (40,), generator=g).tolist()
    sets = [torch.randint(0, 128000, (k,), generator=g).tolist() for k in (1, 3, 2, 4, 1, 3, 2)]
    layout = tl.Layout.from_sets(prompt, sets)
    result: dict = {
        "model": "random Llama, cogito-v1-preview-llama-3B shape",
        "n_tokens": len(layout),
    }
    for isolate in (True, False):
        ours, _ = tl.forward(model, layout, isolate=isolate)
        ref = _hf_reference(hf, layout, isolate)
        result[f"max_abs_diff_{'iso' if isolate else 'vis'}"] = (ours - ref).abs().max().item()
        result[f"logit_scale_{'iso' if isolate else 'vis'}"] = ref.abs().max().item()
    result["iso_vs_vis_ref_diff"] = (
        (_hf_reference(hf, layout, True) - _hf_reference(hf, layout, False)).abs().max().item()
    )
    del hf
    torch.cuda.empty_cache()

    # Step timing: a prefix of 256 tokens in the cache, then one step of k = 4 (or greedy).
    prefix = tl.Layout.from_prompt(torch.randint(0, 128000, (256,), generator=g))
    kv = TransformerLensKeyValueCache.init_cache(model.cfg, args.device, 1)
    model_forward(model, prefix, len(prefix), [], kv)
    kv.freeze()
    greedy = prefix.append_set([5])
    step4 = prefix.append_set([5, 6, 7, 8])

    def tempo(isolate: bool):
        return lambda: model_forward(model, step4, 4, mechanism_hooks(model, step4, isolate), kv)

    greedy_fn = lambda: model_forward(model, greedy, 1, [], kv)  # noqa: E731
    for fn in (greedy_fn, tempo(True), tempo(False)):
        _time(fn, 3)  # warm-up
    res = {"greedy": [], "iso": [], "vis": []}
    for _ in range(5):  # interleaved
        res["greedy"].append(_time(greedy_fn, 5))
        res["iso"].append(_time(tempo(True), 5))
        res["vis"].append(_time(tempo(False), 5))
    med = {k: statistics.median(v) for k, v in res.items()}
    result |= {
        "greedy_step_ms": round(med["greedy"], 3),
        "tempo_step_k4_iso_ms": round(med["iso"], 3),
        "tempo_step_k4_vis_ms": round(med["vis"], 3),
        "isolation_overhead": round(med["iso"] / med["vis"], 4),
        "tempo_vs_greedy": round(med["iso"] / med["greedy"], 4),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
