"""Seeded tiny Hugging Face models: no download, built in well under a second.

They back the `tiny-llama`, `tiny-neox` and `tiny-gpt2` names of `load_model` and the fast
tests (`tempo_lens.testing`):

- `"llama"`: rotary, grouped-query attention (4 query heads, 2 KV heads);
- `"neox"`: rotary on half of each head (partial rotary, as in Pythia);
- `"gpt2"`: learned absolute positions;
- `ROPE_VARIANTS`: Llama-like models with scaled RoPE (llama3, YaRN, linear).

The unembedding and the query/key weights are scaled up so that distributions are peaked
(several tokens pass a 0.1 threshold) and attention is far from uniform: isolation then
changes numbers visibly.
"""

from __future__ import annotations

from typing import Any

import torch

KINDS = ("llama", "neox", "gpt2")
# Llama-like models with scaled RoPE (the seeds' Llama-3.2 model has the llama3 type).
ROPE_VARIANTS = {
    "llama3rope": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
    "yarnrope": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "linearrope": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
}
_CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
VOCAB_SIZE = len(SPECIALS) + len(_CHARS)


def tiny_tokenizer() -> Any:
    """A character-level fast tokenizer: 4 specials + printable ASCII + newline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + _CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )
    # An in-memory tokenizer cannot be re-loaded by name; telling TL it already handles
    # BOS keeps TL from trying (TL adds BOS by hand when a model asks for it).
    tok.init_kwargs.update(add_bos_token=True, name_or_path="tempo_lens-tiny-char")
    return tok


def tiny_hf_model(kind: str = "llama", seed: int = 0) -> tuple[Any, Any]:
    """A seeded tiny Hugging Face causal LM of `kind` and its tokenizer (eager attention,
    so 4D masks are honoured exactly)."""
    import transformers as tf

    common = dict(vocab_size=VOCAB_SIZE, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    rotary = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        **common,
    )
    if kind == "llama" or kind in ROPE_VARIANTS:
        rope = {"rope_parameters": ROPE_VARIANTS[kind]} if kind in ROPE_VARIANTS else {}
        config = tf.LlamaConfig(num_key_value_heads=2, **rope, **rotary)
        cls = tf.LlamaForCausalLM
    elif kind == "neox":
        config = tf.GPTNeoXConfig(rotary_pct=0.5, **rotary)
        cls = tf.GPTNeoXForCausalLM
    elif kind == "gpt2":
        config = tf.GPT2Config(
            n_embd=64, n_layer=2, n_head=4, n_positions=256, tie_word_embeddings=False, **common
        )
        cls = tf.GPT2LMHeadModel
    else:
        raise ValueError(
            f"unknown tiny model kind {kind!r}; use one of {KINDS + tuple(ROPE_VARIANTS)}"
        )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lm_head" in name:
                p.mul_(25.0)
            elif name.endswith("wpe.weight"):
                p.mul_(5.0)  # make learned positions matter
            elif any(s in name for s in ("q_proj", "k_proj", "query_key_value", "c_attn")):
                p.mul_(6.0)
    model.eval()
    return model, tiny_tokenizer()
