"""The train step: microbatch accumulation, loss normalization, z-loss and label smoothing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.training import optimizers
from t5x_like.training.trainer import LossOptions
from tests.training_fixtures import make_trainer, synthetic_batch, tiny_model

pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")  # runs here recompile the same programs


@pytest.fixture(scope="module")
def sgd_trainers():
    """Same model and SGD step, with 1 and with 4 microbatches."""
    model = tiny_model()
    return model, {k: make_trainer(optimizers.sgd(1.0), k, model=model) for k in (1, 4)}


def test_accumulating_four_microbatches_gives_the_large_batch_update(sgd_trainers):
    model, trainers = sgd_trainers
    params = trainers[1].init_params()
    batch = synthetic_batch(model)
    batch["decoder_loss_weights"][:2, 20:] = 0  # uneven token counts across microbatches
    results = {}
    for k, t in trainers.items():
        state = t.init_state(jax.tree.map(jnp.copy, params))
        results[k] = jax.device_get(t.train_step(state, t.global_batch(batch)))
    (big, big_metrics), (acc, acc_metrics) = results[1], results[4]
    assert acc_metrics["loss"] == pytest.approx(big_metrics["loss"], rel=1e-6)
    assert acc_metrics["weight_sum"] == big_metrics["weight_sum"] == 8 * 32 - 2 * 12
    for a, b in zip(jax.tree.leaves(acc.params), jax.tree.leaves(big.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(acc.step) == 1


def test_constant_loss_normalizing_factor_scales_the_update(sgd_trainers):
    model, trainers = sgd_trainers
    by_tokens = trainers[1]
    constant = make_trainer(optimizers.sgd(1.0), model=model,
                            loss=LossOptions(z_loss=1e-4, loss_normalizing_factor=1000.0))
    params = by_tokens.init_params()
    batch = synthetic_batch(model)
    new = {}
    for name, t in (("tokens", by_tokens), ("constant", constant)):
        state, metrics = t.train_step(t.init_state(jax.tree.map(jnp.copy, params)), t.global_batch(batch))
        new[name] = jax.tree.map(lambda a, b: a - b, jax.device_get(state.params), jax.device_get(params))
    ratio = float(metrics["weight_sum"]) / 1000.0  # tokens / constant
    for a, b in zip(jax.tree.leaves(new["constant"]), jax.tree.leaves(new["tokens"])):
        np.testing.assert_allclose(a, b * ratio, rtol=1e-3, atol=1e-6)


def test_z_loss_is_reported_and_label_smoothing_changes_only_the_objective(sgd_trainers):
    model, trainers = sgd_trainers
    params = trainers[1].init_params()
    batch = synthetic_batch(model)
    both = jax.jit(lambda p, b: (model.loss_sums(p, b, None, z_loss=0.0),
                                 model.loss_sums(p, b, None, z_loss=1e-2, label_smoothing=0.1)))
    (plain, m0), (smoothed, m1) = both(params, batch)
    assert float(m1["z_loss_sum"]) > 0 and float(m0["z_loss_sum"]) == 0
    assert float(m1["loss_sum"]) == pytest.approx(float(m0["loss_sum"]), rel=1e-6)
    assert float(smoothed) != pytest.approx(float(plain), rel=1e-6)
