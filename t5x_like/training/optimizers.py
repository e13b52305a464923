"""Optimizers and learning-rate schedules, built from optax only.

Owns: the two recipes the comparison uses (Adafactor with T5's defaults and an
inverse-square-root schedule; AdamW with linear warmup and cosine decay),
global-norm gradient clipping, and the weight-decay mask (no decay on norm
scales and biases). Does not own: gradient accumulation or loss normalization
(trainer.py), or anything about the model.

Every factory returns an `Optimizer`: the optax transformation plus its
schedule, so the trainer can log the learning rate without inspecting state,
plus its `recipe`: the factory's name and arguments as a hashable value (None
when an argument is a callable this module did not build), so runs whose
optimizers come from the same recipe can share one compiled train step.
Plain functions; gin files select one with `TrainConfig.optimizer = @optimizers.adafactor()`
(registered in cli/configurables.py).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array], jax.Array]

# Parameter names (last path component) that never get weight decay, besides
# every parameter with fewer than 2 dimensions.
NO_DECAY_NAMES = ("bias", "scale", "norm", "layer_norm", "ln")


@dataclasses.dataclass(frozen=True)
class Optimizer:
    tx: optax.GradientTransformation
    learning_rate: Schedule
    # How it was built, e.g. ('adafactor', (('decay_rate', 'float', 0.8), ...)): equal recipes give
    # the same transformation. None: not known (a hand-made tx or schedule).
    recipe: tuple | None = None


def recipe(name: str, **arguments: Any) -> tuple | None:
    """A factory call as a hashable value; None if an argument has no recipe (an unknown callable)."""
    parts = []
    for key, value in sorted(arguments.items()):
        if callable(value):
            value = getattr(value, "recipe", None)
            if value is None:
                return None
        elif not isinstance(value, (int, float, bool, str, type(None))):
            return None
        parts.append((key, type(value).__name__, value))  # the type too: 1, 1.0 and True hash alike
    return (name, tuple(parts))


def _with_recipe(schedule: Schedule, value: tuple | None) -> Schedule:
    schedule.recipe = value  # type: ignore[attr-defined]
    return schedule


def inverse_sqrt_schedule(peak_learning_rate: float = 0.01, warmup_steps: int = 10_000,
                          linear_warmup: bool = False) -> Schedule:
    """T5's schedule: lr(step) = peak * sqrt(warmup / max(step, warmup)).

    With T5's defaults (0.01, 10^4) this is 1/sqrt(max(step, 10^4)): constant
    0.01 for 10^4 steps, then decaying as step^-1/2. `linear_warmup` ramps
    from 0 over the warmup instead of starting at the peak (often needed
    with AdamW, not with Adafactor).
    """
    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        lr = peak_learning_rate * jnp.sqrt(warmup_steps / jnp.maximum(step, warmup_steps))
        if linear_warmup:
            lr = lr * jnp.minimum(1.0, (step + 1.0) / warmup_steps)
        return lr
    return _with_recipe(schedule, recipe("inverse_sqrt_schedule", peak_learning_rate=peak_learning_rate,
                                         warmup_steps=warmup_steps, linear_warmup=linear_warmup))


def constant_schedule(value: float = 1e-3) -> Schedule:
    """The same learning rate at every step (T5 finetuning: 1e-3 with Adafactor)."""
    return _as_schedule(value)


def warmup_cosine_schedule(peak_learning_rate: float = 3e-4, warmup_steps: int = 1000,
                           total_steps: int = 100_000, end_ratio: float = 0.1) -> Schedule:
    """Linear warmup to the peak, then cosine decay to peak * end_ratio at total_steps."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak_learning_rate, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=peak_learning_rate * end_ratio)
    return _with_recipe(schedule, recipe("warmup_cosine_schedule", peak_learning_rate=peak_learning_rate,
                                         warmup_steps=warmup_steps, total_steps=total_steps,
                                         end_ratio=end_ratio))


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: matrices and embeddings, not norms or biases."""
    def decays(path, leaf) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", k))).lower() for k in path]
        last = names[-1] if names else ""
        if any(last == n or last.endswith("_" + n) for n in NO_DECAY_NAMES):
            return False
        if any("norm" in n for n in names):
            return False
        return jnp.ndim(leaf) >= 2
    return jax.tree_util.tree_map_with_path(decays, params)


def _with_clipping(tx: optax.GradientTransformation, grad_clip_norm: float | None):
    if grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
    return tx


def adafactor(learning_rate: Schedule | float | None = None, decay_rate: float = 0.8,
              clipping_threshold: float | None = 1.0, min_dim_size_to_factor: int = 128,
              multiply_by_parameter_scale: bool = True, momentum: float | None = None,
              weight_decay_rate: float | None = None, grad_clip_norm: float | None = None) -> Optimizer:
    """Adafactor with T5's defaults: factored second moments, decay 0.8, update
    clipping 1.0, parameter-scale-relative steps, no momentum; inverse-sqrt
    schedule (0.01 for 10^4 steps) unless another is given."""
    schedule = _as_schedule(learning_rate if learning_rate is not None else inverse_sqrt_schedule())
    tx = optax.adafactor(
        learning_rate=schedule, decay_rate=decay_rate, clipping_threshold=clipping_threshold,
        min_dim_size_to_factor=min_dim_size_to_factor,
        multiply_by_parameter_scale=multiply_by_parameter_scale, momentum=momentum,
        weight_decay_rate=weight_decay_rate, weight_decay_mask=decay_mask if weight_decay_rate else None)
    return Optimizer(_with_clipping(tx, grad_clip_norm), schedule, recipe(
        "adafactor", learning_rate=schedule, decay_rate=decay_rate, clipping_threshold=clipping_threshold,
        min_dim_size_to_factor=min_dim_size_to_factor, multiply_by_parameter_scale=multiply_by_parameter_scale,
        momentum=momentum, weight_decay_rate=weight_decay_rate, grad_clip_norm=grad_clip_norm))


def adamw(learning_rate: Schedule | float | None = None, b1: float = 0.9, b2: float = 0.95,
          eps: float = 1e-8, weight_decay: float = 0.1, grad_clip_norm: float | None = 1.0) -> Optimizer:
    """AdamW (decoupled weight decay, masked off norms and biases), clipped by
    global norm, warmup + cosine schedule unless another is given."""
    schedule = _as_schedule(learning_rate if learning_rate is not None else warmup_cosine_schedule())
    tx = optax.adamw(learning_rate=schedule, b1=b1, b2=b2, eps=eps,
                     weight_decay=weight_decay, mask=decay_mask)
    return Optimizer(_with_clipping(tx, grad_clip_norm), schedule, recipe(
        "adamw", learning_rate=schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
        grad_clip_norm=grad_clip_norm))


def sgd(learning_rate: Schedule | float = 0.1, grad_clip_norm: float | None = None) -> Optimizer:
    """Plain SGD: tests use it to compare updates exactly."""
    schedule = _as_schedule(learning_rate)
    return Optimizer(_with_clipping(optax.sgd(schedule), grad_clip_norm), schedule,
                     recipe("sgd", learning_rate=schedule, grad_clip_norm=grad_clip_norm))


def _as_schedule(learning_rate: Schedule | float) -> Schedule:
    if callable(learning_rate):
        return learning_rate
    value = float(learning_rate)
    return _with_recipe(lambda step: jnp.full((), value, jnp.float32), recipe("constant", value=value))
