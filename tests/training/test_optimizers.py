"""Optimizer recipes: schedules, weight-decay masks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.training import optimizers


def test_inverse_sqrt_schedule_is_t5s_constant_then_rsqrt():
    schedule = optimizers.inverse_sqrt_schedule()
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(9_999)) == pytest.approx(0.01)
    assert float(schedule(40_000)) == pytest.approx(1 / np.sqrt(40_000))


def test_warmup_cosine_rises_linearly_then_decays_to_end_ratio():
    schedule = optimizers.warmup_cosine_schedule(1e-3, warmup_steps=10, total_steps=110, end_ratio=0.1)
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(110)) == pytest.approx(1e-4)


def test_weight_decay_skips_norm_scales_and_biases():
    params = {"layer_0": {"attention": {"query": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}},
                          "pre_attention_norm": {"scale": jnp.ones(4)}},
              "token_embed": {"embedding": jnp.ones((8, 4))}}
    mask = optimizers.decay_mask(params)
    assert mask["layer_0"]["attention"]["query"] == {"kernel": True, "bias": False}
    assert mask["layer_0"]["pre_attention_norm"]["scale"] is False
    assert mask["token_embed"]["embedding"] is True


def test_adamw_weight_decay_leaves_masked_parameters_alone():
    tx = optimizers.adamw(learning_rate=0.1, weight_decay=0.5, grad_clip_norm=None).tx
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    assert float(jnp.abs(updates["dense"]["bias"]).max()) == 0.0
    assert float(updates["dense"]["kernel"][0, 0]) == pytest.approx(-0.05)
