"""The train step: microbatch accumulation, loss normalization, z-loss and label smoothing; the
divergence guards that stop the loop."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.training import guards, optimizers, partitioning
from t5x_like.training.trainer import LossOptions, Trainer
from tests.training_fixtures import make_trainer, one_device_mesh, synthetic_batch, tiny_model

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


# -- divergence guards (training/guards.py): which metrics stop a run, and when ----------------

UNIFORM = math.log(128)  # a 128-token vocabulary's loss at a flat prediction
HEALTHY = {"loss": 4.1, "grad_norm": 0.7, "param_norm": 31.0, "learning_rate": 1e-2}
COLLAPSED = {"loss": UNIFORM, "grad_norm": 0.0, "param_norm": 31.0, "learning_rate": 1e4}


def test_a_loss_stuck_at_the_uniform_prediction_with_no_gradient_stops_the_run_after_three_steps():
    guard = guards.DivergenceGuard(vocab_size=128, start_param_norm=30.0)
    guard.check(1, HEALTHY)
    guard.check(2, COLLAPSED)
    guard.check(3, COLLAPSED)
    with pytest.raises(guards.CollapsedRunError) as raised:
        guard.check(4, COLLAPSED)
    message = str(raised.value)
    assert "\n" not in message and "at step 4" in message and "since step 2" in message
    assert "ln(vocab_size 128) = 4.8520" in message and "lower the learning rate (it was 1e+04)" in message
    assert not isinstance(raised.value, guards.NonFiniteLossError)
    assert isinstance(raised.value, guards.TrainingDivergedError)  # the command line's exit 3


def test_a_step_showing_a_sign_of_collapse_is_never_saved_even_before_the_window_is_full():
    guard = guards.DivergenceGuard(vocab_size=128, start_param_norm=30.0)
    guard.check(1, HEALTHY)
    guard.check_savable(1, HEALTHY)
    guard.check(2, COLLAPSED)
    with pytest.raises(guards.CollapsedRunError, match="at step 2: .*stopping before saving"):
        guard.check_savable(2, COLLAPSED)


def test_an_exploding_parameter_norm_stops_the_run():
    guard = guards.DivergenceGuard(vocab_size=128, start_param_norm=30.0)
    exploded = dict(HEALTHY, param_norm=7.4e9, learning_rate=1e4)
    guard.check(1, exploded)
    guard.check(2, exploded)
    with pytest.raises(guards.CollapsedRunError, match=r"parameter norm exploded from 30 to 7.4e\+09"):
        guard.check(3, exploded)


def test_what_healthy_runs_show_never_trips_the_guard():
    guard = guards.DivergenceGuard(vocab_size=128, start_param_norm=30.0)
    for step in range(1, 20):
        guard.check(step, dict(HEALTHY, loss=UNIFORM, grad_norm=1.3))  # a fresh model: uniform loss, real gradient
        guard.check(step, dict(HEALTHY, loss=0.0, grad_norm=0.0))  # a batch without targets
        guard.check(step, dict(HEALTHY, param_norm=30.0 * 900))  # a norm grown a lot, not a thousandfold
        guard.check(step, COLLAPSED)  # a sign that does not persist
        guard.check(step, HEALTHY)
        guard.check_savable(step, HEALTHY)


def test_a_non_finite_loss_is_caught_at_its_step_before_any_collapse_rule():
    guard = guards.DivergenceGuard(vocab_size=128, start_param_norm=30.0)
    with pytest.raises(guards.NonFiniteLossError, match="non-finite training loss .* at step 7"):
        guard.check(7, dict(COLLAPSED, param_norm=float("nan")))


def test_a_trainer_for_a_large_batch_builds_and_traces_its_step_without_the_batch_s_dense_masks():
    """Parameters come from a small traced batch and the step is lowered on abstract values: nothing
    of shape batch x L x L (32 GiB of bools here) is built in host memory (issue: compile died in numpy)."""
    trainer = Trainer(tiny_model(), optimizers.adafactor(), one_device_mesh(), partitioning.logical_axis_rules(),
                      batch_size=2048, task_feature_lengths={"targets": 4096})
    lowered = trainer.train_step.lower(trainer.abstract_state(), trainer.abstract_batch())
    assert "4096" in lowered.as_text()[:20000]
