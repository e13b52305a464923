"""The sizing tool against the initialized parameter trees, and the solver against its targets."""
import glob
import json
import os

import flax.linen as nn
import jax
import pytest

from t5x_like.cli.gin_loading import model_config_from_file as load_model_config
from t5x_like.cli.size import main as size_main
from t5x_like.model import model as models
from t5x_like.model import sizing
from t5x_like.model.config import TransformerConfig
from tests import REPO_ROOT as REPO
from tests.model_fixtures import tiny_config

MODEL_GIN_FILES = sorted(glob.glob(os.path.join(REPO, "gin_configs/models/*/*.gin")))
MODEL_GIN_FILES = [f for f in MODEL_GIN_FILES if "/sizes/" not in f]


def initialized_param_count(config) -> int:
    model = models.Model(config)
    batch = model.dummy_batch(1, {"inputs": 4, "targets": 4})
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), batch))["params"])
    return sum(leaf.size for leaf in jax.tree.leaves(shapes))


@pytest.mark.parametrize("gin_file", MODEL_GIN_FILES, ids=lambda f: os.path.relpath(f, REPO))
def test_count_equals_initialized_tree_for_every_model_config(gin_file):
    config = load_model_config(gin_file, [])
    assert sizing.count_params(config).total == initialized_param_count(config)


VARIANTS = [
    dict(layout="decoder_only", position="learned", use_bias=True, norm="layer", tie_embeddings=False),
    dict(layout="prefix_lm", position="relative", mlp_activations=("silu", "linear")),
    dict(layout="encoder_only", position="rope", encoder_mask="forward_backward_heads"),
    dict(layout="encoder_decoder", position="learned", use_bias=True),
    dict(layout="encoder_decoder", share_encoder_decoder=True, tie_embeddings=False, use_bias=True, norm="layer"),
    dict(layout="decoder_only", position="alibi", scan_layers=True),
    dict(layout="encoder_decoder", position="relative", scan_layers=True, remat_policy="full"),
    dict(layout="decoder_only", position="rope", num_kv_heads=2, use_bias=True),
    dict(layout="encoder_decoder", num_kv_heads=1, share_encoder_decoder=True),
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_count_equals_initialized_tree_for_variants(overrides):
    config = tiny_config(**overrides)
    assert sizing.count_params(config).total == initialized_param_count(config)


@pytest.mark.parametrize("name,published", [("llama_8b", 8_030_261_248), ("llama_1b", 1_235_814_400)])
def test_llama_configs_have_the_published_llama_3_sizes(name, published):
    """LLaMA 3 8B (8.03B) and LLaMA 3.2 1B (1.24B, tied): the counts of their safetensors files."""
    config = load_model_config(os.path.join(REPO, f"gin_configs/models/decoder_only/{name}.gin"), [])
    assert sizing.count_params(config).total == published


def test_base_encoder_decoder_has_t5_base_size():
    config = load_model_config(os.path.join(REPO, "gin_configs/models/encoder_decoder/base.gin"), [])
    assert sizing.count_params(config).total == 222_903_552  # T5-base (32128 vocab)


def test_t5_table2_cost_conventions():
    """2P/M, P/M, P/M/2: enc-dec 12+12 ≈ decoder-only 12 over inputs+targets in FLOPs."""
    load = lambda layout: load_model_config(os.path.join(REPO, f"gin_configs/models/{layout}/base.gin"), [])
    flops = lambda c: sizing.train_flops_per_example(c, 512, 512)
    params = lambda c: sizing.count_params(c).non_embedding
    encdec, lm, half = load("encoder_decoder"), load("decoder_only"), load("encoder_decoder_half")
    assert params(encdec) == pytest.approx(2 * params(lm), rel=0.2)     # 2P vs P (cross-attention extra)
    assert flops(encdec) == pytest.approx(flops(lm), rel=0.1)           # both M
    assert flops(half) == pytest.approx(flops(encdec) / 2, rel=0.1)     # M/2
    assert params(half) == pytest.approx(params(lm), rel=0.2)           # P


@pytest.mark.parametrize("knob", ["d_ff", "d_model"])
def test_solver_matches_params_within_one_percent(knob):
    reference = tiny_config("encoder_decoder", d_model=256, d_ff=1024, num_heads=8, head_dim=32, num_encoder_layers=4, num_decoder_layers=4)
    start = tiny_config("decoder_only", d_model=256, d_ff=1024, num_heads=8, head_dim=32, num_decoder_layers=4)
    target = sizing.count_params(reference).total
    result = sizing.match(start, target, sizing.params_metric, knob=knob, max_value=1 << 14)
    assert abs(result.relative_residual) < 0.01
    assert sizing.count_params(result.config).total == result.achieved == initialized_param_count(result.config)


def test_solver_depth_is_the_closest_whole_layer_count():
    reference = tiny_config("encoder_decoder", num_encoder_layers=4, num_decoder_layers=4)
    target = sizing.count_params(reference).total
    result = sizing.match(tiny_config("decoder_only"), target, sizing.params_metric, knob="depth", max_value=64)
    for neighbour in (result.value - 1, result.value + 1):
        other = sizing.count_params(result.config.replace(num_decoder_layers=neighbour)).total
        assert abs(other - target) >= abs(result.achieved - target)


def test_solver_matches_train_flops_within_one_percent():
    reference = tiny_config("encoder_decoder", d_model=256, d_ff=1024, num_encoder_layers=4, num_decoder_layers=4)
    metric = sizing.train_flops_metric(96, 32)
    result = sizing.match(tiny_config("prefix_lm", d_model=256, d_ff=1024, num_decoder_layers=4),
                          metric(reference), metric, knob="d_ff")
    assert abs(result.relative_residual) < 0.01


def test_solver_reports_unreachable_target():
    with pytest.raises(ValueError, match="out of reach"):
        sizing.match(tiny_config(), 1e15, sizing.params_metric, knob="d_ff", max_value=1024)


def test_flops_attention_term_grows_quadratically():
    config = tiny_config()
    f = lambda n: sizing.forward_flops_per_example(config, 0, n)
    assert f(128) - 2 * f(64) == pytest.approx(4 * 64 * 64 * 2 * config.num_heads * config.head_dim * config.num_decoder_layers)


def test_size_command_prints_table_and_json(tmp_path, capsys):
    out = tmp_path / "sizes.json"
    files = [f"--gin_file=gin_configs/models/{layout}/tiny.gin"
             for layout in ("decoder_only", "prefix_lm", "encoder_only", "encoder_decoder", "encoder_decoder_shared")]
    assert size_main(files + [f"--json={out}"]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["models"]
    assert len(rows) == 5
    for row in rows:
        assert f"{row['params']:,}" in printed


@pytest.mark.parametrize("binding,named", [("no_such_field=3", "no_such_field"), ("num_kv_heads=3", "num_kv_heads=3")])
def test_size_command_names_a_bad_binding(capsys, binding, named):
    code = size_main(["--gin_file=gin_configs/models/decoder_only/tiny.gin", f"--gin.TransformerConfig.{binding}"])
    assert code == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1


def test_a_run_s_flops_count_an_mlm_text_once():
    """An encoder-only run's task lengths name the same text twice (inputs = the corrupted text,
    targets = the original): its FLOPs are those of one pass over the text."""
    config = TransformerConfig(layout="encoder_only", num_encoder_layers=2, num_decoder_layers=0)
    task = {"inputs": 64, "targets": 64}
    assert sizing.train_flops_for_task(config, task) == sizing.train_flops_per_example(config, 64, 0)
    assert sizing.train_flops_for_task(config, task) < sizing.train_flops_per_example(config, 64, 64)
