"""Compiled programs shared by the training runs of one process (a comparison grid's cells).

Owns `ProgramCache`: built objects that hold jitted programs (a `Trainer`: its
train, eval, init and optimizer-init steps; a jitted scoring function), kept
under a key that names everything those programs depend on, so a second run
with the same key reuses the first one's compiled programs instead of tracing
and compiling them again. Runs that differ only in their seed, MODEL_DIR,
data, step count, logging or checkpoint settings share a Trainer: none of
those enters a program (the seed reaches the steps only through the state's
params and rng, which are arguments).

A key is made only where it is complete: the model must be a plain `Model`
(its behaviour is its frozen, hashable config) and the optimizer must carry a
recipe (`optimizers.Optimizer.recipe`, set by this package's factories). Any
other model or optimizer gives no key, and the run builds its own programs.
Nothing is ever evicted: a grid has a handful of distinct programs.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Hashable
from typing import Any

import jax

from t5x_like.model.model import Model
from t5x_like.training.trainer import LossOptions, Trainer


def model_key(model: Any) -> Hashable | None:
    """What a model's programs depend on: its config, for a plain Model with a hashable config."""
    if type(model) is not Model:
        return None
    try:
        hash(model.config)
    except TypeError:
        return None
    return model.config


def trainer_key(model: Any, optimizer: Any, mesh: jax.sharding.Mesh, rules, batch_size: int,
                task_feature_lengths: dict[str, int], num_microbatches: int, loss: LossOptions) -> Hashable | None:
    """Everything a Trainer's programs depend on (all of its constructor's arguments but the seed),
    or None when the model or the optimizer cannot be described by value."""
    config = model_key(model)
    recipe = getattr(optimizer, "recipe", None)
    if config is None or recipe is None:
        return None
    return ("trainer", config, recipe, mesh, tuple(rules), batch_size,
            tuple(sorted(task_feature_lengths.items())), num_microbatches, loss)


class ProgramCache:
    """Built objects holding jitted programs, by key; `None` keys are never cached."""

    def __init__(self) -> None:
        self._built: dict[Hashable, Any] = {}
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: Hashable | None, build: Callable[[], Any]) -> Any:
        """The object built for `key`; a thread asking for a key another is building waits for it."""
        if key is None:
            return build()
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key in self._built:
                self.hits += 1
            else:
                self._built[key] = build()
            return self._built[key]

    def trainer(self, key: Hashable | None, seed: int, build: Callable[[], Trainer]) -> Trainer:
        """The cached Trainer for `key`, as one for `seed` (its programs shared), or a new one."""
        shared = self.get(key, build)
        if shared.seed == seed:
            return shared
        for_seed = copy.copy(shared)  # the jitted steps stay the shared ones: the seed is not in them
        for_seed.seed = seed
        return for_seed

    def score_fn(self, model: Any) -> Callable:
        """`jax.jit(model.score)`, shared by every model of the same config."""
        return self.get(("score", model_key(model)) if model_key(model) is not None else None,
                        lambda: jax.jit(model.score))
