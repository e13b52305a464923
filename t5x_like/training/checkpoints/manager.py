"""The checkpoint writer: orbax saves of the training state, and training's safe resume.

Owns: when old checkpoints are deleted, the one writer of step folders
(`Checkpointer`: training runs, and interop's converted models through
`save_params`), and resume: the newest *good* step restored into any mesh,
damaged steps moved aside. Does not own: when to save (the loop decides),
what the training state contains (trainer.TrainState), checksums
(integrity.py) or reading params for anything but resume (reading.py).

One checkpoint = one orbax step directory `MODEL_DIR/checkpoints/<step>/` with
these items, written atomically (orbax writes a temporary directory and
renames it when every item is committed):

    params/     the model parameters (sharded arrays, any mesh can read them)
    opt_state/  the optimizer state (absent in a converted model's step)
    meta/       JSON: step, RNG key data, data position (batches consumed),
                seed, and a 64-bit checksum of every array's bytes in params
                and optimizer state (`integrity.checksums`)
    data/       the input stream's position when the source can save it
                (`data.sources.ResumableBatches`): one state per process,
                written synchronously at the save call, so it matches the step

Resume (`restore_latest`) tries the newest step first. If it cannot be read,
or one array's checksum disagrees with its restored bytes (a single changed
bit is caught), the previous step is tried, with a warning; once a good step
is found, the damaged newer ones are renamed aside to `<step>.corrupt-<time>`,
so a half-written or damaged newest checkpoint never blocks training and is
never overwritten in place (orbax refuses to write a step that exists; a
corrupt step is moved away before training reaches that step again). When
every step is damaged, nothing is moved and `restore_latest` raises
`CheckpointsDamagedError` naming them (its `steps`): starting over is the
caller's decision (`move_aside`), and until it is taken every retry finds the
same damaged steps and refuses the same way.
A save that fails (a full disk, a lost mount) raises `CheckpointSaveError`
at the first step that notices it (`check_for_errors`, every step).

Several Checkpointers in one process (a grid's cells trained in threads) save
one at a time: orbax keeps the id of the save in flight in process-global
state (`OperationIdGenerator`), and two saves in flight at once mix up each
other's temporary directories (seen: "Directory not empty", "File exists").
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from t5x_like.data.sources import DataStateMismatchError, ResumableBatches
from t5x_like.training.checkpoints.integrity import (
    CheckpointMismatchError,
    check_matches,
    checksums,
    dtypes,
    verify,
)
from t5x_like.training.checkpoints.reading import check_item, read_item, read_meta

log = logging.getLogger(__name__)

DATA_ITEM = "data"
MetaCheck = Callable[[int, dict], None]  # (step, its meta) -> None, or CheckpointMismatchError
STREAM_RESTORED = "stream_restored"  # set in the meta `restore` returns (never saved): was `batches` moved?


class CheckpointsDamagedError(RuntimeError):
    """Every checkpoint in a directory is unreadable or fails its checksums (`steps`, all left in place)."""

    def __init__(self, message: str, steps: tuple[int, ...] = ()):
        super().__init__(message)
        self.steps = tuple(steps)


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the message names the step, the directory and the free space."""


# Every Checkpointer of this process that has started a save (changed and read under `_SAVERS_LOCK`);
# `_SAVE_START` is held while one waits for the others' saves and starts its own.
_SAVERS: weakref.WeakSet = weakref.WeakSet()
_SAVERS_LOCK = threading.Lock()
_SAVE_START = threading.Lock()
_SAVE_WAIT_WARNING_SECONDS = 300


def _register_saver(checkpointer: "Checkpointer", saving: bool) -> None:
    with _SAVERS_LOCK:
        if saving:
            _SAVERS.add(checkpointer)
        else:
            _SAVERS.discard(checkpointer)


class DataStateHandler(ocp.CheckpointHandler):
    """The `data` item: every process writes its input stream's position into the item's
    (shared) directory, and reads its own back. Synchronous: the position is taken at
    the save call, before the next batch is drawn."""

    def save(self, directory, args: "DataStateSave") -> None:
        args.batches.save_state(os.fspath(directory))

    def restore(self, directory, args: "DataStateRestore") -> None:
        args.batches.restore_state(os.fspath(directory))


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    batches: ResumableBatches


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    batches: ResumableBatches


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
             metrics: Mapping[str, float] | None = None, batches: Any = None) -> bool:
        """Starts saving (async unless disabled). Never overwrites an existing step.

        `opt_state`: None for a step of params only (a converted model's).
        `batches`: the training input stream; its position is saved too when it is a
        ResumableBatches (synchronously, before this returns)."""
        if step in self._manager.all_steps():
            log.info("checkpoint for step %d already exists; not overwriting it", step)
            return False
        has_data = isinstance(batches, ResumableBatches)
        meta = dict(meta, step=int(step), params_checksums=checksums(params), params_dtypes=dtypes(params),
                    data_state=has_data)
        items = dict(params=ocp.args.StandardSave(params))
        if opt_state is not None:
            meta.update(opt_state_checksums=checksums(opt_state), opt_state_dtypes=dtypes(opt_state))
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        items["meta"] = ocp.args.JsonSave(meta)
        if has_data:
            items[DATA_ITEM] = DataStateSave(batches)
        args = ocp.args.Composite(**items)
        try:
            with _SAVE_START:
                self._wait_for_other_savers()
                _register_saver(self, True)
                started = self._manager.save(step, args=args, metrics=dict(metrics) if metrics else None,
                                             force=True)
        except Exception as e:  # noqa: BLE001  (orbax wraps I/O errors in several types)
            _register_saver(self, False)  # its manager may still say "saving": nobody waits on it now
            raise self._save_error(e) from e
        self._last_save_step = step
        return started

    def _wait_for_other_savers(self) -> None:
        """Returns once no other Checkpointer of this process has a save in flight (see the
        module docstring). Their own threads finish those saves; nothing here waits on them."""
        start = time.time()
        while True:
            with _SAVERS_LOCK:
                others = [other for other in _SAVERS if other is not self]
            saving = [other for other in others if other._manager.is_saving_in_progress()]
            if not saving:
                return
            if time.time() - start > _SAVE_WAIT_WARNING_SECONDS:
                log.warning("saving to %s: waited %d s for a save to %s; saving now", self.directory,
                            _SAVE_WAIT_WARNING_SECONDS, saving[0].directory)
                return
            time.sleep(0.005)

    def check_for_errors(self) -> None:
        """Raises CheckpointSaveError if a background save has failed (cheap; call every step).

        Never blocks: a save still in flight is checked on a later call. With several
        processes they agree (orbax reports a failed finalize on the primary only), so
        every process stops, none is left waiting in a collective."""
        error = None
        try:
            self._manager.check_for_errors()
            if self._last_save_step is not None and not self._manager.is_saving_in_progress():
                self._manager.wait_until_finished()  # returns at once; raises if finalizing failed
        except Exception as e:  # noqa: BLE001
            error = self._save_error(e)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # deferred: multi-process runs only
            if np.any(multihost_utils.process_allgather(np.int32(error is not None))) and error is None:
                error = CheckpointSaveError(f"saving a checkpoint to {self.directory} failed on another process")
        if error is not None:
            raise error

    def wait(self) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_error(e) from e

    def close(self) -> None:
        try:
            self.wait()
        finally:
            _register_saver(self, False)
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

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any,
                batches: Any = None, check_meta: MetaCheck | None = None) -> tuple[Any, Any, dict]:
        """Restores one step into the shardings of the abstract targets; verifies it.

        `batches`: the training input stream, moved to the step's saved position when
        the step has one and the stream can take it (the returned meta's STREAM_RESTORED says).
        CheckpointMismatchError (before reading any array) if the step holds another
        model's params or another optimizer's state, or a data position saved by
        another number of processes, or if `check_meta(step, meta)` raises it (the
        caller's own conditions on the saved meta); any other error means damage."""
        step_dir = os.path.join(self.directory, str(step))
        meta = read_meta(step_dir)
        if check_meta is not None:
            check_meta(step, meta)
        check_item(step_dir, "params", abstract_params, meta, check_matches)
        check_item(step_dir, "opt_state", abstract_opt_state, meta, _check_same_shapes)
        params = read_item(step_dir, "params", abstract_params)
        opt_state = read_item(step_dir, "opt_state", abstract_opt_state)
        verify(params, meta, "params", step)
        verify(opt_state, meta, "opt_state", step)
        meta[STREAM_RESTORED] = self.restore_data_state(step, meta, batches)
        return params, opt_state, meta

    def restore_data_state(self, step: int, meta: Mapping[str, Any], batches: Any) -> bool:
        """Moves `batches` to the position saved with `step` if both allow it; whether it did."""
        if not (meta.get("data_state") and isinstance(batches, ResumableBatches)):
            return False
        try:
            self._manager.restore(step, args=ocp.args.Composite(**{DATA_ITEM: DataStateRestore(batches)}))
        except DataStateMismatchError as e:
            raise CheckpointMismatchError(f"step {step}: {e}") from None
        return True

    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any, batches: Any = None,
                       check_meta: MetaCheck | None = None) -> tuple[Any, Any, dict] | None:
        """Newest good checkpoint, skipping damaged ones (moved aside once a good one is found);
        None if there is no checkpoint.

        Raises CheckpointMismatchError for a checkpoint of another model or optimizer (never
        moved), and CheckpointsDamagedError, moving nothing, when there were checkpoints and
        every one is damaged."""
        steps = self.steps()
        damaged: list[int] = []
        for index, step in enumerate(reversed(steps)):
            try:
                restored = self.restore(step, abstract_params, abstract_opt_state, batches, check_meta)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001  (any read/verify failure: not a good checkpoint)
                log.warning("checkpoint step %d is unreadable (%s: %s), %s", step, type(e).__name__,
                            str(e).splitlines()[0][:200] if str(e) else "",
                            "trying the previous one" if index < len(steps) - 1 else "and it was the oldest")
                damaged.append(step)
                continue
            self.move_aside(damaged)
            return restored
        if steps:
            raise CheckpointsDamagedError(
                f"every checkpoint in {self.directory} is damaged (steps {', '.join(map(str, steps))}; "
                "left in place)", tuple(steps))
        return None

    def move_aside(self, steps: list[int] | tuple[int, ...]) -> None:
        """Renames each step folder to `<step>.corrupt-<time>` (process 0; every process waits for it)."""
        stamp = int(time.time())
        for step in steps:
            path = os.path.join(self.directory, str(step))
            log.warning("moving damaged checkpoint step %d to %s.corrupt-%d", step, path, stamp)
            if jax.process_index() == 0 and os.path.exists(path):
                os.rename(path, f"{path}.corrupt-{stamp}")
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils
                multihost_utils.sync_global_devices(f"quarantine_{step}")
        self._manager.reload()


def _check_same_shapes(expected: Any, found: Any, where: str) -> None:
    """CheckpointMismatchError if the optimizer state's array shapes differ (another optimizer);
    compared as multisets, since orbax's metadata tree does not keep optax's namedtuples."""
    want = sorted(tuple(x.shape) for x in jax.tree.leaves(expected) if hasattr(x, "shape"))
    have = sorted(tuple(x.shape) for x in jax.tree.leaves(found) if hasattr(x, "shape"))
    if want != have:
        raise CheckpointMismatchError(
            f"the optimizer state at {where} does not match this run's optimizer ({len(have)} arrays saved, "
            f"{len(want)} expected): another optimizer? Finetune from it with init_checkpoint instead")


def _root_cause(error: BaseException) -> BaseException:
    """The innermost OSError in an exception chain (orbax wraps them), else the error itself."""
    seen, current, found = set(), error, error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            found = current
        current = current.__cause__ or current.__context__
    return found
