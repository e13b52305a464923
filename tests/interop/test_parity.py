"""Imported Hugging Face T5 / GPT-2 / LLaMA models give HF's logits; export then import is the identity.

Every HF model here is built from a config in the test and randomized (no
downloads). Parity is fp32 teacher-forced logits on padded batches, compared
at the real (non-padding) positions. Skipped without torch and transformers
(the `hf` extra).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from flax import traverse_util

from t5x_like.cli import convert as convert_cli
from t5x_like.cli import gin_loading
from t5x_like.inference import decoding
from t5x_like.interop import common, convert
from t5x_like.model import config as config_lib
from t5x_like.model import model as models
from t5x_like.model.positions import relative_position_bucket

TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class T5Case:
    name: str
    hf_config: dict
    untied: bool = False  # give lm_head its own random weights


T5_CASES = [
    # T5 1.0: ReLU, tied + scaled; num_heads * d_kv (48) != d_model (32); unequal depths.
    T5Case("t5_1_0_tied", {
        "vocab_size": 96, "d_model": 32, "d_kv": 12, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 3,
        "num_heads": 4, "feed_forward_proj": "relu",
        "relative_attention_num_buckets": 16, "relative_attention_max_distance": 40}),
    # T5 1.1: gated-GELU, untied lm_head, T5's own 32 buckets / 128.
    T5Case("t5_1_1_untied", {
        "vocab_size": 80, "d_model": 48, "d_kv": 8, "d_ff": 72, "num_layers": 2, "num_heads": 6,
        "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128}, untied=True),
    # Gated-GELU with a tied but unscaled head (what transformers 5 builds for tie_word_embeddings=False).
    T5Case("t5_1_1_tied_unscaled", {
        "vocab_size": 64, "d_model": 64, "d_kv": 16, "d_ff": 32, "num_layers": 2, "num_heads": 2,
        "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "layer_norm_epsilon": 1e-5,
        "relative_attention_num_buckets": 8, "relative_attention_max_distance": 20}),
    # Gated SiLU (a LLaMA-style MLP in T5), untied.
    T5Case("t5_gated_silu_untied", {
        "vocab_size": 64, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 1, "num_decoder_layers": 2,
        "num_heads": 4, "feed_forward_proj": "gated-silu", "tie_word_embeddings": False,
        "relative_attention_num_buckets": 12, "relative_attention_max_distance": 64}, untied=True),
]

GPT2_CASES = {
    "gpt2_small_tied": {"vocab_size": 96, "n_embd": 32, "n_head": 4, "n_layer": 2, "n_positions": 32},
    "gpt2_wider_untied_exact_gelu": {
        "vocab_size": 80, "n_embd": 64, "n_head": 2, "n_layer": 3, "n_positions": 24, "n_inner": 96,
        "activation_function": "gelu", "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False},
}


# LLaMA: unusual shapes (head_dim 10 and 6, vocabularies of 203 and 131, widths that are not
# heads x head_dim), grouped- and multi-query attention, every RoPE scaling, tied and untied heads.
LLAMA_CASES = {
    # llama3 scaling whose wavelengths fall in all three of its regions (kept, smoothed, divided)
    "llama3_gqa_untied": {
        "vocab_size": 203, "hidden_size": 48, "intermediate_size": 56, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 10, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "rope_theta": 500.0, "tie_word_embeddings": False,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32}},
    "llama_mqa_tied_linear": {
        "vocab_size": 131, "hidden_size": 42, "intermediate_size": 40, "num_hidden_layers": 2,
        "num_attention_heads": 6, "num_key_value_heads": 1, "head_dim": 6, "max_position_embeddings": 32,
        "tie_word_embeddings": True, "rope_scaling": {"rope_type": "linear", "factor": 2.5}},
    "llama_mha_default_rope": {
        "vocab_size": 96, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
        "num_attention_heads": 4, "max_position_embeddings": 32, "tie_word_embeddings": False},
}


def randomize(model, seed: int) -> None:
    """Moves every parameter off its init (norm scales off 1, biases off 0) so a swapped tensor shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            spread = p.std() if p.numel() > 1 and p.std() > 0 else p.abs().mean()  # 1 for norm scales
            p.add_(torch.randn(p.shape, generator=generator) * (0.2 * spread if spread > 0 else 0.02))


def build_t5(case: T5Case, directory) -> transformers.T5ForConditionalGeneration:
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**case.hf_config, dropout_rate=0.0))
    if case.untied:
        model.lm_head.weight = torch.nn.Parameter(torch.empty(case.hf_config["vocab_size"], case.hf_config["d_model"]))
        torch.nn.init.normal_(model.lm_head.weight, std=case.hf_config["d_model"] ** -0.5)
    randomize(model, seed=1)
    model.eval()
    model.save_pretrained(str(directory))
    return model


def build_gpt2(hf_config: dict, directory) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    last = hf_config["vocab_size"] - 1
    config = transformers.GPT2Config(**hf_config, bos_token_id=last, eos_token_id=last,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    randomize(model, seed=2)
    with torch.no_grad():  # GPT-2's 0.02-std embeddings make a random model repeat one token
        model.transformer.wte.weight.mul_(25)
        model.transformer.wpe.weight.mul_(25)
    model.eval()
    model.save_pretrained(str(directory))
    return model


def build_llama(hf_config: dict, directory) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    last = hf_config["vocab_size"] - 1
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config, bos_token_id=last,
                                                                   eos_token_id=last, pad_token_id=0))
    randomize(model, seed=4)
    with torch.no_grad():  # 0.02-std embeddings make a random model repeat one token
        model.model.embed_tokens.weight.mul_(25)
    model.eval()
    model.save_pretrained(str(directory))
    return model


@functools.cache
def our_logits(config):
    """Jitted module.apply: one compile is much cheaper than eager op-by-op on CPU."""
    module = models.Model(config).module
    return jax.jit(lambda params, **inputs: module.apply({"params": params}, **inputs))


def right_padding_mask(lengths, length: int) -> np.ndarray:
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


def t5_logits_diff(hf_model, config, params, seed: int = 0) -> float:
    """Max |ours - HF| over real decoder positions of a padded batch (right- and left-padded encoder rows)."""
    rng = np.random.default_rng(seed)
    vocab = config.vocab_size
    encoder_valid = right_padding_mask([11, 6, 1, 11], 11)
    encoder_valid[3, :4] = False  # one left-padded row
    decoder_valid = right_padding_mask([9, 4, 9, 1], 9)
    encoder_tokens = np.where(encoder_valid, rng.integers(1, vocab, encoder_valid.shape), 0)
    decoder_tokens = np.where(decoder_valid, rng.integers(1, vocab, decoder_valid.shape), 0)
    decoder_tokens[:, 0] = 0  # T5's decoder start id
    with torch.no_grad():
        expected = hf_model(input_ids=torch.tensor(encoder_tokens),
                            attention_mask=torch.tensor(encoder_valid.astype(np.int64)),
                            decoder_input_ids=torch.tensor(decoder_tokens),
                            decoder_attention_mask=torch.tensor(decoder_valid.astype(np.int64))).logits.numpy()
    ours = our_logits(config)(params, encoder_input_tokens=encoder_tokens, decoder_input_tokens=decoder_tokens,
                              decoder_valid=decoder_valid)
    return float(np.abs(np.asarray(ours) - expected)[decoder_valid].max())


def decoder_logits_diff(hf_model, config, params, seed: int = 0) -> float:
    """Max |ours - HF| over real positions of a right-padded batch (token id 0 included)."""
    rng = np.random.default_rng(seed)
    valid = right_padding_mask([min(20, config.max_length), 7, 1], min(20, config.max_length))
    tokens = np.where(valid, rng.integers(0, config.vocab_size, valid.shape), 0)
    with torch.no_grad():
        expected = hf_model(input_ids=torch.tensor(tokens),
                            attention_mask=torch.tensor(valid.astype(np.int64))).logits.numpy()
    ours = our_logits(config)(params, decoder_input_tokens=tokens, decoder_valid=valid)
    return float(np.abs(np.asarray(ours) - expected)[valid].max())


def assert_same_tree(a, b) -> None:
    flat_a, flat_b = traverse_util.flatten_dict(a, sep="/"), traverse_util.flatten_dict(b, sep="/")
    assert sorted(flat_a) == sorted(flat_b)
    for path in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[path]), np.asarray(flat_b[path]), err_msg=path)


def assert_matches_init_tree(config, params) -> None:
    expected = models.Model(config).abstract_params()
    assert jax.tree.structure(expected) == jax.tree.structure(params)
    for want, have in zip(jax.tree.leaves(expected), jax.tree.leaves(params), strict=True):
        assert want.shape == np.shape(have)


# --- parity ---------------------------------------------------------------------
@pytest.mark.parametrize("case", T5_CASES, ids=lambda c: c.name)
def test_imported_t5_gives_hf_logits_on_padded_batches(case, tmp_path):
    hf_model = build_t5(case, tmp_path)
    config, params, _ = convert.from_hf_dir(str(tmp_path))
    assert config.tie_embeddings == (not case.untied)
    assert_matches_init_tree(config, params)
    diff = t5_logits_diff(hf_model, config, params)
    print(f"\n{case.name}: max |logit diff| = {diff:.2e}")
    assert diff < TOLERANCE


DECODER_CASES = [(GPT2_CASES, build_gpt2, name) for name in sorted(GPT2_CASES)] + [
    (LLAMA_CASES, build_llama, name) for name in sorted(LLAMA_CASES)]


@pytest.mark.parametrize("cases,build,name", DECODER_CASES, ids=[case[2] for case in DECODER_CASES])
def test_imported_gpt2_or_llama_gives_hf_logits_with_right_padding(cases, build, name, tmp_path):
    hf_model = build(cases[name], tmp_path)
    config, params, _ = convert.from_hf_dir(str(tmp_path))
    assert config.tie_embeddings == cases[name].get("tie_word_embeddings", True)
    assert config.kv_heads == cases[name].get("num_key_value_heads", config.num_heads)
    assert_matches_init_tree(config, params)
    diff = decoder_logits_diff(hf_model, config, params)
    print(f"\n{name}: max |logit diff| = {diff:.2e}")
    assert diff < TOLERANCE


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 40), (8, 20), (12, 64)])
def test_relative_buckets_match_hf(num_buckets, max_distance):
    """Our bucketing equals HF's for the bucket settings tested above, both directions, |distance| <= 3000."""
    from transformers.models.t5.modeling_t5 import T5Attention
    relative = np.arange(-3000, 3001)
    for bidirectional in (True, False):
        theirs = T5Attention._relative_position_bucket(torch.tensor(relative), bidirectional=bidirectional,
                                                       num_buckets=num_buckets, max_distance=max_distance)
        ours = relative_position_bucket(jnp.asarray(relative), bidirectional, num_buckets, max_distance)
        np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())


# --- round trips ------------------------------------------------------------------
ROUND_TRIP_CONFIGS = {
    "t5_1_0": config_lib.t5_1_0(vocab_size=64, d_model=32, num_heads=4, head_dim=12, d_ff=48,
                                relative_num_buckets=16, relative_max_distance=40),
    "t5_1_1": config_lib.t5_1_1(vocab_size=64, d_model=32, num_heads=2, head_dim=8, d_ff=48,
                                num_decoder_layers=3),
    "t5_1_1_scanned": config_lib.t5_1_1(vocab_size=64, d_model=32, num_heads=2, head_dim=8, d_ff=48,
                                        scan_layers=True),
    "gpt2_tied": config_lib.gpt2(vocab_size=64, d_model=32, num_heads=4, head_dim=8, d_ff=64, max_length=16),
    "gpt2_untied": config_lib.gpt2(vocab_size=64, d_model=48, num_heads=3, head_dim=16, d_ff=40, max_length=16,
                                   num_decoder_layers=1, tie_embeddings=False),
    "llama_gqa_llama3_scanned": config_lib.llama(
        vocab_size=70, d_model=24, num_heads=6, num_kv_heads=2, head_dim=6, d_ff=40, max_length=64,
        rope_max_wavelength=5e5, rope_scaling="llama3", rope_scaling_factor=32.0, rope_original_max_length=16,
        scan_layers=True),
    "llama_mqa_tied_linear": config_lib.llama(
        vocab_size=61, d_model=16, num_heads=2, num_kv_heads=1, head_dim=12, d_ff=24, num_decoder_layers=1,
        tie_embeddings=True, rope_scaling="linear", rope_scaling_factor=4.0),
}


def random_params(config, seed: int = 0):
    """Random values in the exact tree (and shapes) of our init; no leaf is a constant."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), models.Model(config).abstract_params())


@pytest.mark.parametrize("name", sorted(ROUND_TRIP_CONFIGS))
def test_export_then_import_is_identity_on_params(name, tmp_path):
    config = ROUND_TRIP_CONFIGS[name]
    params = random_params(config)
    if name == "gpt2_untied":
        params["logits_dense"]["bias"] = np.zeros_like(params["logits_dense"]["bias"])  # GPT-2 has none
    convert.to_hf_dir(config, params, str(tmp_path))
    imported, back, _ = convert.from_hf_dir(str(tmp_path))
    assert imported == config.replace(scan_layers=False, dropout_rate=imported.dropout_rate,
                                      embedding_init_std=imported.embedding_init_std)
    assert_same_tree(back, common.unscan_params(params, config))


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_import_then_export_reproduces_the_hf_tensors(kind, tmp_path):
    if kind == "t5":
        build_t5(T5_CASES[1], tmp_path / "hf")
    else:
        build_llama(LLAMA_CASES["llama3_gqa_untied"], tmp_path / "hf")
    config, params, _ = convert.from_hf_dir(str(tmp_path / "hf"))
    convert.to_hf_dir(config, params, str(tmp_path / "out"))
    original = common.read_hf_tensors(str(tmp_path / "hf"))
    exported = common.read_hf_tensors(str(tmp_path / "out"))
    assert sorted(exported) == sorted(original)
    for name in original:
        np.testing.assert_array_equal(exported[name], original[name], err_msg=name)


@pytest.mark.parametrize("kind", ["t5", "gpt2", "llama"])
def test_cli_round_trip_through_model_dir_keeps_hf_logits(kind, tmp_path):
    """convert --from-hf -> MODEL_DIR (model.gin + orbax) -> convert --to-hf, loaded back by transformers."""
    if kind == "t5":
        original = build_t5(T5_CASES[0], tmp_path / "hf")
        model_class = transformers.T5ForConditionalGeneration
    elif kind == "gpt2":
        original = build_gpt2(GPT2_CASES["gpt2_wider_untied_exact_gelu"], tmp_path / "hf")
        model_class = transformers.GPT2LMHeadModel
    else:
        original = build_llama(LLAMA_CASES["llama_mqa_tied_linear"], tmp_path / "hf")
        model_class = transformers.LlamaForCausalLM
    model_dir, out = str(tmp_path / "model"), str(tmp_path / "out")
    assert convert_cli.main(["--from-hf", str(tmp_path / "hf"), "--to", model_dir]) == 0
    with open(os.path.join(model_dir, "model.gin")) as f:
        gin_text = f.read()
    assert "MODEL = @models.Model()" in gin_text and "models.Model.config = @config.TransformerConfig()" in gin_text
    config, params = common.load_model_dir(model_dir)
    assert convert.from_hf_dir(str(tmp_path / "hf"))[0] == config
    assert gin_loading.model_config_from_file(os.path.join(model_dir, "model.gin"), []) == config
    assert convert_cli.main(["--from", model_dir, "--to-hf", out]) == 0
    reloaded = model_class.from_pretrained(out).eval()
    if kind == "t5":
        assert t5_logits_diff(reloaded, config, params) < TOLERANCE
    else:
        assert decoder_logits_diff(reloaded, config, params) < TOLERANCE
    for name, tensor in original.state_dict().items():
        np.testing.assert_array_equal(reloaded.state_dict()[name].numpy(), tensor.numpy(), err_msg=name)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_our_greedy_decoding_of_imported_decoder_equals_hf_generate(kind, tmp_path):
    """Cached greedy decoding (decoding.py) of right-padded prompts == HF generate, prompt by prompt
    (LLaMA: grouped-query attention, whose cache holds only the key/value heads, and llama3 RoPE)."""
    if kind == "gpt2":
        hf_model = build_gpt2(GPT2_CASES["gpt2_wider_untied_exact_gelu"], tmp_path)
    else:
        hf_model = build_llama(LLAMA_CASES["llama3_gqa_untied"], tmp_path)
    config, params, _ = convert.from_hf_dir(str(tmp_path))
    eos, steps = hf_model.config.eos_token_id, 8
    prompts = [[5, 17, 42, 8, 3], [60, 2], [0, 71, 33]]  # id 0 is an ordinary token for GPT-2
    tokens = np.zeros((len(prompts), 5), np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, :len(prompt)] = prompt
    ours = decoding.generate(models.Model(config), params,
                             models.Prompts(tokens, np.asarray([len(p) for p in prompts], np.int32)),
                             decoding.DecodeConfig(method="greedy", max_new_tokens=steps, eos_id=eos)).tokens
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            generated = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=int),
                                          max_new_tokens=steps, do_sample=False, pad_token_id=0, eos_token_id=eos)
        expected = generated[0, len(prompt):].numpy()
        np.testing.assert_array_equal(np.asarray(ours[row, :len(expected)]), expected, err_msg=f"prompt {row}")


def test_our_greedy_decoding_of_imported_t5_equals_hf_generate(tmp_path):
    """Cached greedy decoding over padded encoder inputs == HF generate (decoder starts at id 0)."""
    hf_model = build_t5(T5_CASES[1], tmp_path)
    config, params, _ = convert.from_hf_dir(str(tmp_path))
    steps = 8
    rng = np.random.default_rng(3)
    valid = right_padding_mask([7, 3], 7)
    inputs = np.where(valid, rng.integers(2, config.vocab_size, valid.shape), 0).astype(np.int32)
    with torch.no_grad():
        generated = hf_model.generate(torch.tensor(inputs, dtype=torch.long),
                                      attention_mask=torch.tensor(valid.astype(np.int64)), max_new_tokens=steps,
                                      do_sample=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    expected = generated[:, 1:].numpy()  # drop the start id
    prompts = models.Prompts(np.zeros((2, 1), np.int32), np.ones(2, np.int32), inputs)
    ours = decoding.generate(models.Model(config), params, prompts,
                             decoding.DecodeConfig(method="greedy", max_new_tokens=steps, eos_id=1)).tokens
    np.testing.assert_array_equal(np.asarray(ours)[:, :expected.shape[1]], expected)


def test_pytorch_bin_and_bfloat16_safetensors_are_read(tmp_path):
    """pytorch_model.bin (OpenAI-style names, no `transformer.` prefix, mask buffers) and bf16 weights."""
    model = build_gpt2(GPT2_CASES["gpt2_small_tied"], tmp_path / "fp32")
    _, reference, _ = convert.from_hf_dir(str(tmp_path / "fp32"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_bytes((tmp_path / "fp32" / "config.json").read_bytes())
    state = {k.removeprefix("transformer."): v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))  # the old causal-mask buffer
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    assert_same_tree(convert.from_hf_dir(str(tmp_path / "bin"))[1], reference)

    model.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    _, bf16, _ = convert.from_hf_dir(str(tmp_path / "bf16"))
    for a, b in zip(jax.tree.leaves(bf16), jax.tree.leaves(reference), strict=True):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2)
