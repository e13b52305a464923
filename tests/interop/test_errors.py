"""Bad input to the Hugging Face converter fails with an error naming the file, field or tensor.

The config-level checks need neither torch nor safetensors and always run;
the weight-level ones need safetensors (the `hf` extra) and skip without it.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from t5x_like.cli import convert as convert_cli
from t5x_like.interop import common, convert
from t5x_like.interop.common import ConversionError
from t5x_like.model import config as config_lib
from t5x_like.model.model import Model

T5_CONFIG = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "vocab_size": 32,
             "d_model": 16, "d_kv": 4, "d_ff": 24, "num_layers": 1, "num_heads": 2, "feed_forward_proj": "relu",
             "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16}
LLAMA_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32, "hidden_size": 16,
                "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}
GPT2_CONFIG = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 32, "n_embd": 16,
               "n_head": 2, "n_layer": 1, "n_positions": 8}


def write_config(directory, config: dict) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


def random_params(config):
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), Model(config).abstract_params())


def exported(tmp_path, config, **config_json_changes) -> str:
    """An HF directory exported from random params, with config.json then edited."""
    pytest.importorskip("safetensors")
    params = random_params(config)
    if "logits_dense" in params and config.use_bias:
        params["logits_dense"]["bias"][:] = 0
    convert.to_hf_dir(config, params, str(tmp_path / "hf"))
    path = tmp_path / "hf" / "config.json"
    hf = json.loads(path.read_text())
    hf.update(config_json_changes)
    path.write_text(json.dumps(hf))
    return str(tmp_path / "hf")


TINY_T5 = config_lib.t5_1_0(vocab_size=32, d_model=16, num_heads=2, head_dim=4, d_ff=24, num_encoder_layers=1,
                            num_decoder_layers=1, relative_num_buckets=8, relative_max_distance=16)
TINY_GPT2 = config_lib.gpt2(vocab_size=32, d_model=16, num_heads=2, head_dim=8, d_ff=64, num_decoder_layers=1,
                            max_length=8)


# --- config.json ----------------------------------------------------------------
def test_directory_without_config_json_is_rejected(tmp_path):
    with pytest.raises(ConversionError, match="has no config.json"):
        convert.from_hf_dir(str(tmp_path))


def test_missing_directory_is_rejected(tmp_path):
    with pytest.raises(ConversionError, match="is not a directory"):
        convert.from_hf_dir(str(tmp_path / "nope"))


def test_unsupported_architecture_names_model_type(tmp_path):
    bert = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 16, "num_attention_heads": 2}
    with pytest.raises(ConversionError, match=r"model_type = 'bert' \(architectures \['BertForMaskedLM'\]\)"):
        convert.from_hf_dir(write_config(tmp_path, bert))


def test_missing_config_field_is_named_before_weights_are_read(tmp_path):
    config = {k: v for k, v in T5_CONFIG.items() if k != "d_model"}
    with pytest.raises(ConversionError, match="required field 'd_model' is missing"):
        convert.from_hf_dir(write_config(tmp_path, config))


def test_wrongly_typed_config_field_is_named(tmp_path):
    with pytest.raises(ConversionError, match="'n_head' = '2' should be of type int"):
        convert.from_hf_dir(write_config(tmp_path, dict(GPT2_CONFIG, n_head="2")))


@pytest.mark.parametrize("value", ["gated-gelu-new", "swiglu", "gelu_fast"])
def test_unsupported_feed_forward_proj_is_named(tmp_path, value):
    with pytest.raises(ConversionError, match="feed_forward_proj"):
        convert.from_hf_dir(write_config(tmp_path, dict(T5_CONFIG, feed_forward_proj=value)))


def test_gpt2_heads_that_do_not_divide_the_width_are_rejected(tmp_path):
    with pytest.raises(ConversionError, match="n_embd = 16 is not divisible by n_head = 3"):
        convert.from_hf_dir(write_config(tmp_path, dict(GPT2_CONFIG, n_head=3)))


@pytest.mark.parametrize("changes,message", [
    ({"num_key_value_heads": 3}, "num_key_value_heads = 3 does not divide num_attention_heads = 4"),
    ({"attention_bias": True}, "attention_bias = true is not supported"),
    ({"mlp_bias": True}, "mlp_bias = true is not supported"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope_type = 'yarn' is not supported"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor = 0.5 is not supported"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "required field 'low_freq_factor' is missing"),
    ({"head_dim": 5}, "rope needs an even head_dim"),
    ({"hidden_act": "gelu_fast"}, "hidden_act = 'gelu_fast' is not supported"),
])
def test_llama_config_that_t5x_like_cannot_hold_is_refused_in_one_line(tmp_path, changes, message):
    with pytest.raises(ConversionError, match=message) as refusal:
        convert.from_hf_dir(write_config(tmp_path, dict(LLAMA_CONFIG, **changes)))
    assert "\n" not in str(refusal.value)


def test_cli_refuses_a_llama_config_whose_key_value_heads_do_not_divide_its_heads(tmp_path, capsys):
    hf_dir = write_config(tmp_path / "hf", dict(LLAMA_CONFIG, num_key_value_heads=3))
    assert convert_cli.main(["--from-hf", hf_dir, "--to", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_key_value_heads = 3 does not divide" in err


def test_directory_without_weights_is_rejected(tmp_path):
    with pytest.raises(ConversionError, match="has no weights"):
        convert.from_hf_dir(write_config(tmp_path, T5_CONFIG))


# --- weights ------------------------------------------------------------------------
def test_t5_tensor_of_the_wrong_shape_is_named(tmp_path):
    hf_dir = exported(tmp_path, TINY_T5, d_ff=32)
    with pytest.raises(ConversionError, match=r"'encoder\.block\.0\.layer\.1\.DenseReluDense\.wi\.weight' has shape "
                                              r"\(24, 16\), expected \(32, 16\) from d_ff, d_model"):
        convert.from_hf_dir(hf_dir)


def test_t5_relative_bias_shape_names_the_bucket_field(tmp_path):
    hf_dir = exported(tmp_path, TINY_T5, relative_attention_num_buckets=32)
    with pytest.raises(ConversionError, match="relative_attention_bias.weight' has shape .* from "
                                              "relative_attention_num_buckets"):
        convert.from_hf_dir(hf_dir)


def test_gpt2_tensor_of_the_wrong_shape_is_named(tmp_path):
    hf_dir = exported(tmp_path, TINY_GPT2, n_inner=32)
    with pytest.raises(ConversionError, match=r"'h\.0\.mlp\.c_fc\.weight' has shape \(16, 64\), expected \(16, 32\)"):
        convert.from_hf_dir(hf_dir)


def test_config_with_fewer_layers_than_the_weights_leaves_tensors_unused(tmp_path):
    config = TINY_T5.replace(num_encoder_layers=2)
    hf_dir = exported(tmp_path, config, num_layers=1, num_decoder_layers=1)
    with pytest.raises(ConversionError, match=r"have no place in the converted model.*encoder\.block\.1\."):
        convert.from_hf_dir(hf_dir)


def test_missing_tensor_is_named(tmp_path):
    hf_dir = exported(tmp_path, TINY_T5, num_decoder_layers=2)
    with pytest.raises(ConversionError, match=r"tensor 'decoder\.block\.1\.layer\.0\.SelfAttention\.q\.weight' is "
                                              r"missing"):
        convert.from_hf_dir(hf_dir)


def test_params_tree_check_names_the_path():
    params = random_params(TINY_T5)
    params["decoder_layers_0"]["mlp"]["wi"]["kernel"] = np.zeros((16, 25), np.float32)
    with pytest.raises(ConversionError, match=r"decoder_layers_0/mlp/wi/kernel has shape \(16, 25\), expected "
                                              r"\(16, 24\)"):
        common.check_params(params, TINY_T5)
    del params["decoder_norm"]
    with pytest.raises(ConversionError, match="decoder_norm/scale is missing"):
        common.check_params(params, TINY_T5)


# --- export ----------------------------------------------------------------------------
@pytest.mark.parametrize("config,message", [
    (config_lib.TransformerConfig(layout="prefix_lm"), "cannot export layout='prefix_lm'"),
    (TINY_T5.replace(position="rope"), r"position='rope' \(T5 has 'relative'\)"),
    (TINY_T5.replace(mlp_activations=("silu", "gelu")), "mlp_activations"),
    (TINY_GPT2.replace(norm="rms"), r"norm='rms' \(GPT-2 has 'layer'\)"),
    (TINY_GPT2.replace(head_dim=4), "num_heads\\*head_dim = 8 != d_model = 16"),
    (TINY_GPT2.replace(num_kv_heads=1), r"num_kv_heads=1 \(GPT-2 has multi-head attention\)"),
    (TINY_T5.replace(num_kv_heads=1), r"num_kv_heads=1 \(T5 has multi-head attention\)"),
    (config_lib.llama(num_kv_heads=2, norm="layer"), r"norm='layer' \(LLaMA has 'rms'\)"),
    (config_lib.llama(mlp_activations=("silu",)), "mlp_activations"),
])
def test_export_of_an_architecture_hf_cannot_hold_names_the_field(tmp_path, config, message):
    with pytest.raises(ConversionError, match=message):
        convert.to_hf_dir(config, {}, str(tmp_path))


def test_exporting_a_trained_prefix_lm_dir_is_the_one_line_refusal_with_no_gin_file(tmp_path, capsys):
    config = TINY_GPT2.replace(layout="prefix_lm")
    common.save_model_dir(str(tmp_path / "model"), config, random_params(config))
    assert convert_cli.main(["--from", str(tmp_path / "model"), "--to-hf", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot export layout='prefix_lm'" in err


def test_cli_reports_errors_in_one_line_and_usage_with_code_2(tmp_path, capsys):
    assert convert_cli.main(["--from-hf", str(tmp_path), "--to", str(tmp_path / "model")]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert convert_cli.main(["--from-hf", str(tmp_path)]) == 2
    assert convert_cli.main(["--from-hf", str(tmp_path), "--to-hf", str(tmp_path)]) == 2


def test_truncated_safetensors_is_one_line_and_a_failing_exit_code(tmp_path, capsys):
    hf_dir = exported(tmp_path, TINY_GPT2)
    weights = os.path.join(hf_dir, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(ConversionError, match="cannot read the weights.*is the file complete"):
        convert.from_hf_dir(hf_dir)
    assert convert_cli.main(["--from-hf", hf_dir, "--to", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors" in err
