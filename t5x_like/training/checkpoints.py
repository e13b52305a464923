"""Checkpoints: orbax saves, safe resume, and params-only restore for finetuning.

Owns: the layout of a checkpoint on disk, when old ones are deleted, how the
newest *good* checkpoint is found, and restoring into any mesh. Does not own:
when to save (the loop decides) or what the training state contains
(trainer.TrainState).

One checkpoint = one orbax step directory `MODEL_DIR/checkpoints/<step>/` with
three items, written atomically (orbax writes a temporary directory and
renames it when every item is committed):

    params/     the model parameters (sharded arrays, any mesh can read them)
    opt_state/  the optimizer state
    meta/       JSON: step, RNG key data, data position (batches consumed),
                seed, and a fingerprint (per-item sum of |x|) of params and
                optimizer state

Resume (`restore_latest`) tries the newest step first. If it cannot be read,
or its fingerprint disagrees with its contents, it is renamed aside to
`<step>.corrupt-<time>` with a warning and the previous step is tried, so a
half-written or damaged newest checkpoint never blocks training and is never
overwritten in place (orbax refuses to write a step that exists; a corrupt
step is moved away before training reaches that step again).

Finetuning reads the `params` item only (`restore_params`), so the
optimizer starts fresh.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"


def fingerprint(tree: Any) -> float:
    """Sum over leaves of sum(|x|) in float32, accumulated in float64 on host."""
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.number)]
    if not leaves:
        return 0.0
    return float(sum(np.float64(s) for s in jax.device_get(_abs_sums(leaves))))


@jax.jit
def _abs_sums(leaves: list[jax.Array]) -> list[jax.Array]:
    return [jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in leaves]


def _fingerprints_match(a: float, b: float) -> bool:
    return bool(np.isclose(a, b, rtol=1e-4, atol=1e-6))


class Checkpointer:
    """Saves and restores training state under `directory` with orbax.

    Args:
      directory: where step directories live (usually MODEL_DIR/checkpoints).
      keep: how many of the latest checkpoints to keep (None = all).
      keep_best: also keep the checkpoint with the lowest validation loss
        (`metrics['eval_loss']` passed to `save`).
      async_save: write in a background thread; `wait()` blocks until done.
    """

    def __init__(self, directory: str, keep: int | None = 3, keep_best: bool = False,
                 async_save: bool = True):
        self.directory = os.path.abspath(directory)
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(keep)]
        if keep_best:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: -float(m["eval_loss"]), n=1,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=True, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # -- saving -----------------------------------------------------------
    def save(self, step: int, params: Any, opt_state: Any, meta: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None) -> bool:
        """Starts saving (async unless disabled). Never overwrites an existing step."""
        if step in self._manager.all_steps():
            log.info("checkpoint for step %d already exists; not overwriting it", step)
            return False
        meta = dict(meta, step=int(step), params_fingerprint=fingerprint(params),
                    opt_state_fingerprint=fingerprint(opt_state))
        args = ocp.args.Composite(params=ocp.args.StandardSave(params),
                                  opt_state=ocp.args.StandardSave(opt_state),
                                  meta=ocp.args.JsonSave(meta))
        return self._manager.save(step, args=args, metrics=dict(metrics) if metrics else None,
                                  force=True)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    # -- restoring --------------------------------------------------------
    def steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, dict]:
        """Restores one step into the shardings of the abstract targets; verifies it."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(abstract_opt_state),
            meta=ocp.args.JsonRestore()))
        params = _like(abstract_params, restored["params"])
        opt_state = _like(abstract_opt_state, restored["opt_state"])
        meta = dict(restored["meta"])
        for name, tree in (("params", params), ("opt_state", opt_state)):
            expected = meta.get(f"{name}_fingerprint")
            if expected is not None and not _fingerprints_match(fingerprint(tree), expected):
                raise ValueError(f"{name} fingerprint mismatch in step {step}")
        return params, opt_state, meta

    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, dict] | None:
        """Newest readable checkpoint, moving unreadable ones aside; None if there is none."""
        for step in reversed(self.steps()):
            try:
                return self.restore(step, abstract_params, abstract_opt_state)
            except Exception as e:  # noqa: BLE001  (any read/verify failure: not a good checkpoint)
                self._quarantine(step, e)
        return None

    def _quarantine(self, step: int, error: Exception) -> None:
        path = os.path.join(self.directory, str(step))
        aside = f"{path}.corrupt-{int(time.time())}"
        log.warning("checkpoint step %d is unreadable (%s: %s); moved to %s, trying the previous one",
                    step, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "", aside)
        if jax.process_index() == 0 and os.path.exists(path):
            os.rename(path, aside)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"quarantine_{step}")
        self._manager.reload()


def _like(abstract: Any, restored: Any) -> Any:
    """Restored leaves in the abstract target's tree structure (optax namedtuples etc.)."""
    return jax.tree.unflatten(jax.tree.structure(abstract), jax.tree.leaves(restored))


def find_checkpoint_dir(path: str) -> tuple[str, int | None]:
    """Accepts MODEL_DIR, MODEL_DIR/checkpoints or MODEL_DIR/checkpoints/<step>."""
    path = os.path.abspath(path)
    base = os.path.basename(path)
    if base.isdigit():
        return os.path.dirname(path), int(base)
    if os.path.isdir(os.path.join(path, CHECKPOINT_SUBDIR)):
        return os.path.join(path, CHECKPOINT_SUBDIR), None
    return path, None


def restore_params(path: str, abstract_params: Any) -> Any:
    """Parameters only (for finetuning), from the given or newest good step, into any mesh."""
    directory, step = find_checkpoint_dir(path)
    checkpointer = Checkpointer(directory, keep=None, async_save=False)
    steps = [step] if step is not None else list(reversed(checkpointer.steps()))
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {path}")
    try:
        return _restore_params_from(checkpointer, directory, steps, abstract_params)
    finally:
        checkpointer.close()


def _restore_params_from(checkpointer: Checkpointer, directory: str, steps: list[int],
                         abstract_params: Any) -> Any:
    last_error: Exception | None = None
    for s in steps:
        try:
            restored = checkpointer._manager.restore(
                s, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params),
                                           meta=ocp.args.JsonRestore()))
            params = _like(abstract_params, restored["params"])
            expected = restored["meta"].get("params_fingerprint")
            if expected is not None and not _fingerprints_match(fingerprint(params), expected):
                raise ValueError(f"params fingerprint mismatch in step {s}")
            log.info("initialized params from %s step %d", directory, s)
            return params
        except Exception as e:  # noqa: BLE001  (try the next older step)
            log.warning("cannot read params of step %d in %s: %s", s, directory, e)
            last_error = e
    raise RuntimeError(f"no readable checkpoint under {directory}: {last_error}")
