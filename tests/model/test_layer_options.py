"""Options that must not change the function a model computes: scan, remat, attention kernel;
and a kernel that cannot do what the config asks is refused."""
import jax
import numpy as np
import pytest

from tests.model_fixtures import init_params, random_tokens, tiny_config


def _batch(layout, rng):
    tokens = random_tokens(rng, (2, 8))
    targets = np.roll(tokens, -1, 1)
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": targets, "decoder_loss_weights": np.ones_like(tokens),
             "encoder_input_tokens": random_tokens(rng, (2, 8))}
    if layout == "prefix_lm":
        batch["decoder_causal_attention"] = (np.arange(8) < np.array([[3], [5]])).astype(np.int32)
    return batch


def _stack_layers(params, prefix, num_layers):
    """Unscanned {prefix_0: tree, prefix_1: tree} -> scanned {prefix: tree with a leading layer axis}."""
    layers = [params.pop(f"{prefix}_{i}") for i in range(num_layers)]
    params[prefix] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
    return params


@pytest.mark.parametrize("layout", ["decoder_only", "prefix_lm", "encoder_decoder"])
def test_scan_and_remat_compute_the_same_function(layout):
    config = tiny_config(layout)
    model, params = init_params(config, 2, 8, 8)
    batch = _batch(layout, np.random.default_rng(0))
    expected = np.asarray(model.logits(params, batch))
    scanned = dict(jax.tree.map(np.asarray, params))
    for prefix, depth in (("encoder_layers", config.num_encoder_layers), ("decoder_layers", config.num_decoder_layers)):
        if depth:
            scanned = _stack_layers(scanned, prefix, depth)
    scan_model = type(model)(config.replace(scan_layers=True, remat_policy="dots_saveable"))
    np.testing.assert_allclose(np.asarray(scan_model.logits(scanned, batch)), expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("layout,position", [("decoder_only", "relative"), ("prefix_lm", "alibi"), ("encoder_decoder", "rope")])
def test_dot_product_attention_kernel_matches_einsum(layout, position):
    config = tiny_config(layout, position=position, attention_kernel="einsum")
    model, params = init_params(config, 2, 8, 8)
    batch = _batch(layout, np.random.default_rng(1))
    fused = type(model)(config.replace(attention_kernel="dot_product_attention"))
    np.testing.assert_allclose(np.asarray(fused.logits(params, batch)), np.asarray(model.logits(params, batch)),
                               atol=2e-5, rtol=2e-5)


def test_dropout_only_with_a_dropout_rng():
    config = tiny_config("decoder_only", dropout_rate=0.3)
    model, params = init_params(config, 2, 0, 8)
    batch = _batch("decoder_only", np.random.default_rng(2))
    deterministic = [np.asarray(model.logits(params, batch)) for _ in range(2)]
    np.testing.assert_array_equal(*deterministic)
    a, b = (np.asarray(model.logits(params, batch, jax.random.PRNGKey(k))) for k in (0, 1))
    assert not np.allclose(a, b)
    assert not np.allclose(a, deterministic[0])


def test_a_kernel_without_attention_dropout_is_refused_with_dropout():
    with pytest.raises(ValueError) as refused:
        tiny_config("decoder_only", dropout_rate=0.1, attention_kernel="dot_product_attention")
    message = str(refused.value)
    assert message.startswith("invalid TransformerConfig: attention_kernel='dot_product_attention' has no "
                              "attention dropout"), message
    assert "dropout_rate=0.1" in message and "attention_kernel='einsum'" in message, message
    # The kernels that drop attention weights out (einsum), or fall back to einsum for it, are accepted.
    for kernel in ("einsum", "blockwise", "accelerated"):
        tiny_config("decoder_only", dropout_rate=0.1, attention_kernel=kernel)
    tiny_config("decoder_only", dropout_rate=0.0, attention_kernel="dot_product_attention")


@pytest.mark.parametrize("layout", ["decoder_only", "encoder_decoder"])
def test_grouped_query_attention_is_multi_head_attention_with_key_value_heads_repeated(layout):
    """A model with num_kv_heads=2 (of 4 heads) computes the logits of the multi-head model whose
    key and value kernels repeat each of its key/value heads for its group of query heads."""
    config = tiny_config(layout, position="rope", num_kv_heads=2)
    model, params = init_params(config, 2, 8, 8)
    groups = config.num_heads // config.kv_heads

    def repeat_heads(path, x):
        names = [getattr(p, "key", "") for p in path]
        return np.repeat(x, groups, axis=1) if names[-2] in ("key", "value") and names[-1] == "kernel" else x

    mha_params = jax.tree_util.tree_map_with_path(repeat_heads, jax.tree.map(np.asarray, params))
    mha_model = type(model)(config.replace(num_kv_heads=None))
    batch = _batch(layout, np.random.default_rng(3))
    np.testing.assert_allclose(np.asarray(mha_model.logits(mha_params, batch)), np.asarray(model.logits(params, batch)),
                               atol=2e-5, rtol=2e-5)
