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
                seed, and a 64-bit checksum of every array's bytes in params
                and optimizer state (`checksums`)

Resume (`restore_latest`) tries the newest step first. If it cannot be read,
or one array's checksum disagrees with its restored bytes (a single changed
bit is caught), it is renamed aside to `<step>.corrupt-<time>` with a warning
and the previous step is tried, so a half-written or damaged newest checkpoint
never blocks training and is never overwritten in place (orbax refuses to write
a step that exists; a corrupt step is moved away before training reaches that
step again). When every step is damaged, `restore_latest` raises
`CheckpointsDamagedError` naming them: starting over is the caller's decision.
A save that fails (a full disk, a lost mount) raises `CheckpointSaveError`
at the first step that notices it (`check_for_errors`, every step).

Finetuning reads the `params` item only (`restore_params`), so the
optimizer starts fresh.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"


class CheckpointsDamagedError(RuntimeError):
    """Every checkpoint in a directory is unreadable or fails its checksums."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the message names the step, the directory and the free space."""


# Two odd multipliers per word position: a changed word changes both sums (an
# odd multiplier is invertible mod 2**32), so any changed bit is detected.
_MULTIPLIERS = (0x9E3779B1, 0x85EBCA77)


def checksums(tree: Any) -> list[int]:
    """A 64-bit checksum of the bytes of every array leaf, computed where the arrays live.

    Each array is viewed as unsigned words; the checksum is the pair of sums
    Σ word_i · (2i + 1) · m (mod 2**32) for two odd constants m. Sharded arrays
    are summed by XLA, with no copy to the host."""
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]
    return [int(lo) | (int(hi) << 32) for lo, hi in jax.device_get(_word_sums(leaves))]


@jax.jit
def _word_sums(leaves: list[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
    sums = []
    for x in leaves:
        words = _as_words(x).reshape(-1)
        odd = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
        sums.append(tuple(jnp.sum(words * odd * jnp.uint32(m), dtype=jnp.uint32) for m in _MULTIPLIERS))
    return sums


def _as_words(x: jax.Array) -> jax.Array:
    """The array's bytes as uint32 words (one word per element of 4 bytes or less)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def verify(tree: Any, meta: Mapping[str, Any], name: str, step: int) -> None:
    """Raises ValueError if `tree` does not have the checksums `meta` recorded for item `name`."""
    expected = meta.get(f"{name}_checksums")
    if expected is None:  # written before checksums existed: nothing to compare
        return
    found = checksums(tree)
    if len(found) != len(expected):
        raise ValueError(f"{name} of step {step} has {len(found)} arrays, the checksums list {len(expected)}")
    bad = [i for i, (a, b) in enumerate(zip(found, expected)) if a != b]
    if bad:
        paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
        raise ValueError(f"checksum mismatch in {name} of step {step}: {len(bad)} array(s) changed on disk "
                         f"since they were saved, e.g. {paths[bad[0]] if bad[0] < len(paths) else bad[0]}")


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
        self._last_save_step: int | None = None  # the newest save started, for error messages

    # -- saving -----------------------------------------------------------
    def save(self, step: int, params: Any, opt_state: Any, meta: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None) -> bool:
        """Starts saving (async unless disabled). Never overwrites an existing step."""
        if step in self._manager.all_steps():
            log.info("checkpoint for step %d already exists; not overwriting it", step)
            return False
        meta = dict(meta, step=int(step), params_checksums=checksums(params),
                    opt_state_checksums=checksums(opt_state))
        args = ocp.args.Composite(params=ocp.args.StandardSave(params),
                                  opt_state=ocp.args.StandardSave(opt_state),
                                  meta=ocp.args.JsonSave(meta))
        try:
            started = self._manager.save(step, args=args, metrics=dict(metrics) if metrics else None,
                                         force=True)
        except Exception as e:  # noqa: BLE001  (orbax wraps I/O errors in several types)
            raise self._save_error(e) from e
        self._last_save_step = step
        return started

    def check_for_errors(self) -> None:
        """Raises CheckpointSaveError if a background save has failed (cheap; call every step).

        Never blocks: a save still in flight is checked on a later call."""
        try:
            self._manager.check_for_errors()
            if self._last_save_step is not None and not self._manager.is_saving_in_progress():
                self._manager.wait_until_finished()  # returns at once; raises if finalizing failed
        except Exception as e:  # noqa: BLE001
            raise self._save_error(e) from e

    def wait(self) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_error(e) from e

    def close(self) -> None:
        self.wait()
        self._manager.close()

    def _save_error(self, error: Exception) -> CheckpointSaveError:
        cause = _root_cause(error)
        try:
            free = f"{shutil.disk_usage(self.directory).free / 2**20:,.1f} MiB free there"
        except OSError:
            free = "free space unknown"
        text = " ".join(str(cause).split())
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC or any(
                sign in text for sign in ("No space left", "RESOURCE_EXHAUSTED: Error writing")):
            reason = "No space left on device"  # tensorstore reports ENOSPC as RESOURCE_EXHAUSTED
        else:
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else text
        where = f" (newest save started: step {self._last_save_step})" if self._last_save_step is not None else ""
        return CheckpointSaveError(f"saving a checkpoint to {self.directory} failed{where}: "
                                   f"{reason[:300] or type(cause).__name__} ({free})")

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
        verify(params, meta, "params", step)
        verify(opt_state, meta, "opt_state", step)
        return params, opt_state, meta

    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, dict] | None:
        """Newest good checkpoint, moving damaged ones aside; None if there is no checkpoint.

        Raises CheckpointsDamagedError when there were checkpoints and every one is damaged."""
        steps = self.steps()
        for index, step in enumerate(reversed(steps)):
            try:
                return self.restore(step, abstract_params, abstract_opt_state)
            except Exception as e:  # noqa: BLE001  (any read/verify failure: not a good checkpoint)
                self._quarantine(step, e, older=len(steps) - 1 - index)
        if steps:
            raise CheckpointsDamagedError(
                f"every checkpoint in {self.directory} is damaged (steps {', '.join(map(str, steps))}, "
                "moved aside as <step>.corrupt-*)")
        return None

    def _quarantine(self, step: int, error: Exception, older: int) -> None:
        path = os.path.join(self.directory, str(step))
        aside = f"{path}.corrupt-{int(time.time())}"
        log.warning("checkpoint step %d is unreadable (%s: %s); moved to %s, %s",
                    step, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "", aside,
                    "trying the previous one" if older else "and it was the oldest")
        if jax.process_index() == 0 and os.path.exists(path):
            os.rename(path, aside)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"quarantine_{step}")
        self._manager.reload()


def _root_cause(error: BaseException) -> BaseException:
    """The innermost OSError in an exception chain (orbax wraps them), else the error itself."""
    seen, current, found = set(), error, error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            found = current
        current = current.__cause__ or current.__context__
    return found


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
            verify(params, restored["meta"], "params", s)
            log.info("initialized params from %s step %d", directory, s)
            return params
        except Exception as e:  # noqa: BLE001  (try the next older step)
            log.warning("cannot read params of step %d in %s: %s", s, directory, e)
            last_error = e
    raise RuntimeError(f"no readable checkpoint under {directory}: {last_error}")
