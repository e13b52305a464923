"""Checkpoints: orbax saves, safe resume, and params-only restore for finetuning.

Owns: the layout of a checkpoint on disk, when old ones are deleted, how the
newest *good* checkpoint is found, and restoring into any mesh. Does not own:
when to save (the loop decides) or what the training state contains
(trainer.TrainState).

One checkpoint = one orbax step directory `MODEL_DIR/checkpoints/<step>/` with
these items, written atomically (orbax writes a temporary directory and
renames it when every item is committed):

    params/     the model parameters (sharded arrays, any mesh can read them)
    opt_state/  the optimizer state
    meta/       JSON: step, RNG key data, data position (batches consumed),
                seed, and a 64-bit checksum of every array's bytes in params
                and optimizer state (`checksums`)
    data/       the input stream's position when the source can save it
                (`data.sources.ResumableBatches`): one state per process,
                written synchronously at the save call, so it matches the step

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

Several Checkpointers in one process (a grid's cells trained in threads) save
one at a time: orbax keeps the id of the save in flight in process-global
state (`OperationIdGenerator`), and two saves in flight at once mix up each
other's temporary directories (seen: "Directory not empty", "File exists").

Finetuning reads the `params` item only (`restore_params`), so the
optimizer starts fresh.
"""
from __future__ import annotations

import contextlib
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
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from t5x_like.data.sources import DataStateMismatchError, ResumableBatches

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
DATA_ITEM = "data"
STREAM_RESTORED = "stream_restored"  # set in the meta `restore` returns (never saved): was `batches` moved?


class CheckpointsDamagedError(RuntimeError):
    """Every checkpoint in a directory is unreadable or fails its checksums."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the message names the step, the directory and the free space."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message says what was expected and found."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint of another model (shapes) or optimizer: not damage, never moved aside."""


# Word dtypes the checksum reads arrays as, by item size (8-byte items become two words).
_WORD_DTYPES = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def checksums(tree: Any) -> list[int | None]:
    """A 64-bit checksum of the bytes of every array leaf, computed where the arrays live.

    Each array is read as unsigned words w_i (i its flat position); the two
    32-bit halves are Σ w_i·a_i and Σ w_i·b_i (mod 2**32) with odd weights a_i =
    2i + 1 and b_i = an odd hash of i, so a changed word changes both sums and two
    changed words cancel in both only by chance. Sharded arrays are summed by XLA
    in place, without gathering them. None for a leaf of a dtype it cannot read
    (sub-byte, complex, keys)."""
    leaves = _array_leaves(tree)
    readable = [_readable(x) for x in leaves]
    sums = iter(jax.device_get([_one_at_a_time_across_processes(_word_sums(x))
                                for x, ok in zip(leaves, readable) if ok]))
    return [_join_halves(*next(sums)) if ok else None for ok in readable]


def _join_halves(low: Any, high: Any) -> int:
    return int(low) | (int(high) << 32)


def dtypes(tree: Any) -> list[str]:
    """The dtype name of every array leaf (stored beside the checksums: a restore that casts
    a leaf to another dtype cannot verify its bytes)."""
    return [str(x.dtype) for x in _array_leaves(tree)]


def _array_leaves(tree: Any) -> list[Any]:
    return [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]


def _readable(x: Any) -> bool:
    """Whether `_as_words` can read the leaf's bytes (whole bytes per element, no keys)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return False
    dtype = np.dtype(x.dtype)
    if dtype == np.bool_:
        return True
    if dtype.itemsize not in _WORD_DTYPES:
        return False
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.iinfo(dtype).bits == 8 * dtype.itemsize  # not int4 / uint4
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.finfo(dtype).bits == 8 * dtype.itemsize  # not float4
    return False


def _one_at_a_time_across_processes(result: Any) -> Any:
    """With several processes, waits for a program's result before the next is dispatched.
    A sum over an array sharded across processes is a collective; two such programs in flight
    at once may run in different orders in two processes, and each then waits for the other
    forever (seen with gloo on CPU: a 2-process run hung at its first checkpoint)."""
    return jax.block_until_ready(result) if jax.process_count() > 1 else result


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


@jax.jit
def _word_sums(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two weighted word sums of one array. One small program per shape, dtype and sharding
    (not one per tree): trees of other models and the optimizer state reuse them, and each
    compiles in a fraction of the time a whole tree's program takes. Integer sums mod 2**32
    do not depend on how they are grouped, so the value is the same either way."""
    words = _as_words(x)
    position = _flat_positions(words.shape)
    odd_a = position * jnp.uint32(2) + jnp.uint32(1)
    mixed = (position ^ (position >> 16)) * jnp.uint32(0x45D9F3B)
    odd_b = (mixed ^ (mixed >> 16)) | jnp.uint32(1)
    return jnp.sum(words * odd_a, dtype=jnp.uint32), jnp.sum(words * odd_b, dtype=jnp.uint32)


def _flat_positions(shape: tuple[int, ...]) -> jax.Array:
    """Row-major flat index of every element, built from broadcast iotas (no reshape of sharded data)."""
    position = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        position = position + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return position


def _as_words(x: jax.Array) -> jax.Array:
    """The array's bytes as uint32 words: one per element of up to 4 bytes, two (a trailing
    axis) per 8-byte element."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, _WORD_DTYPES[x.dtype.itemsize]).astype(jnp.uint32)


def verify(tree: Any, meta: Mapping[str, Any], name: str, step: int) -> None:
    """Raises ValueError if `tree` does not have the checksums `meta` recorded for item `name`.

    Leaves restored into another dtype than they were saved in (a cast) are not checked."""
    expected = meta.get(f"{name}_checksums")
    if expected is None:  # written before checksums existed: nothing to compare
        return
    found = checksums(tree)
    if len(found) != len(expected):
        raise ValueError(f"{name} of step {step} has {len(found)} arrays, the checksums list {len(expected)}")
    saved_dtypes = meta.get(f"{name}_dtypes") or [None] * len(found)
    now_dtypes = dtypes(tree)
    bad = [i for i, (a, b) in enumerate(zip(found, expected))
           if a is not None and b is not None and a != b and saved_dtypes[i] in (None, now_dtypes[i])]
    if bad:
        paths = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
                 if hasattr(leaf, "dtype")]
        raise ValueError(f"checksum mismatch in {name} of step {step}: {len(bad)} array(s) changed on disk "
                         f"since they were saved, e.g. {paths[bad[0]]}")


def check_matches(expected: Any, found: Any, where: str) -> None:
    """Raises CheckpointMismatchError naming missing, unexpected and differently shaped arrays
    of a checkpoint item (`found`: its orbax metadata) against the model's (`expected`)."""
    want, have = _flat_shapes(expected), _flat_shapes(found)
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    reshaped = [f"{k}: model {want[k]} vs checkpoint {have[k]}" for k in sorted(set(want) & set(have))
                if want[k] != have[k]]
    if not (missing or unexpected or reshaped):
        return
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint ({len(missing)}): {', '.join(missing[:5])}")
    if unexpected:
        parts.append(f"not in the model ({len(unexpected)}): {', '.join(unexpected[:5])}")
    if reshaped:
        parts.append(f"different shapes ({len(reshaped)}): {'; '.join(reshaped[:5])}")
    raise CheckpointMismatchError(
        f"the checkpoint at {where} does not match the model config (another layout or size?): "
        + " | ".join(parts))


def _flat_shapes(tree) -> dict[str, tuple]:
    return {path: tuple(leaf.shape) for path, leaf in _flat_leaves(tree).items()}


def _flat_leaves(tree) -> dict[str, Any]:
    """{"a/b/c": leaf} for every array-like leaf; the same names for a model's abstract tree
    and for orbax's metadata tree of the saved one."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path): leaf
            for path, leaf in flat if hasattr(leaf, "shape")}


def item_metadata(step_dir: str, item: str) -> Any:
    """The orbax metadata tree (shapes, dtypes) of one item of a step directory."""
    with _quiet_orbax_warnings():  # "Metadata file does not exist": a file older orbax did not write
        found = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, item))
    return getattr(found, "item_metadata", found)


@contextlib.contextmanager
def _quiet_orbax_warnings():
    """Orbax warns about what a reader does on purpose (read-only managers, optional metadata
    files); those warnings are raised to ERROR level for the duration of the block."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


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
      read_only: only restore (finetune init, evaluation): creates, moves and
        cleans up nothing, so a run writing the same directory is undisturbed.
    """

    def __init__(self, directory: str, keep: int | None = 3, keep_best: bool = False,
                 async_save: bool = True, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(keep)]
        if keep_best:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: -float(m["eval_loss"]), n=1,
                keep_checkpoints_without_metrics=False))
        with _quiet_orbax_warnings() if read_only else contextlib.nullcontext():
            options = ocp.CheckpointManagerOptions(
                enable_async_checkpointing=async_save,
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
                # A reader (finetune init, evaluation) must not clean up the temporary
                # directory of a save that a training run is writing right now.
                cleanup_tmp_directories=not read_only, create=not read_only, read_only=read_only)
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._last_save_step: int | None = None  # the newest save started, for error messages

    # -- saving -----------------------------------------------------------
    def save(self, step: int, params: Any, opt_state: Any, meta: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None, batches: Any = None) -> bool:
        """Starts saving (async unless disabled). Never overwrites an existing step.

        `batches`: the training input stream; its position is saved too when it is a
        ResumableBatches (synchronously, before this returns)."""
        if step in self._manager.all_steps():
            log.info("checkpoint for step %d already exists; not overwriting it", step)
            return False
        has_data = isinstance(batches, ResumableBatches)
        meta = dict(meta, step=int(step), params_checksums=checksums(params), params_dtypes=dtypes(params),
                    opt_state_checksums=checksums(opt_state), opt_state_dtypes=dtypes(opt_state),
                    data_state=has_data)
        items = dict(params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                     meta=ocp.args.JsonSave(meta))
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
                batches: Any = None) -> tuple[Any, Any, dict]:
        """Restores one step into the shardings of the abstract targets; verifies it.

        `batches`: the training input stream, moved to the step's saved position when
        the step has one and the stream can take it (the returned meta's STREAM_RESTORED says).
        CheckpointMismatchError (before reading any array) if the step holds another
        model's params or another optimizer's state, or a data position saved by
        another number of processes; any other error means damage."""
        meta = self.read_meta(step)
        self.check_item(step, "params", abstract_params, meta, check_matches)
        self.check_item(step, "opt_state", abstract_opt_state, meta, _check_same_shapes)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(abstract_opt_state)))
        params = _like(abstract_params, restored["params"])
        opt_state = _like(abstract_opt_state, restored["opt_state"])
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

    def read_meta(self, step: int) -> dict:
        """The meta item of a step (JSON)."""
        return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def check_item(self, step: int, item: str, expected: Any, meta: Mapping[str, Any],
                   compare: Callable[[Any, Any, str], None]) -> None:
        """CheckpointMismatchError if an intact item holds other arrays than `expected` (`compare`
        decides); ValueError (damage) if its metadata does not even agree with the step's meta."""
        step_dir = os.path.join(self.directory, str(step))
        found = item_metadata(step_dir, item)
        recorded = meta.get(f"{item}_checksums")
        count = sum(1 for x in jax.tree.leaves(found) if hasattr(x, "shape"))
        if recorded is not None and count != len(recorded):
            raise ValueError(f"the {item} metadata of step {step} lists {count} arrays where its meta "
                             f"recorded {len(recorded)}: damaged")
        compare(expected, found, step_dir)

    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any,
                       move_damaged_aside: bool = True, batches: Any = None) -> tuple[Any, Any, dict] | None:
        """Newest good checkpoint, skipping damaged ones (and moving them aside unless told not
        to); None if there is no checkpoint.

        Raises CheckpointMismatchError for a checkpoint of another model or optimizer (never
        moved), and CheckpointsDamagedError when there were checkpoints and every one is damaged."""
        steps = self.steps()
        for index, step in enumerate(reversed(steps)):
            try:
                return self.restore(step, abstract_params, abstract_opt_state, batches)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001  (any read/verify failure: not a good checkpoint)
                self._skip_damaged(step, e, older=len(steps) - 1 - index, move_aside=move_damaged_aside)
        if steps:
            raise CheckpointsDamagedError(
                f"every checkpoint in {self.directory} is damaged (steps {', '.join(map(str, steps))}"
                + (", moved aside as <step>.corrupt-*)" if move_damaged_aside else ")"))
        return None

    def _skip_damaged(self, step: int, error: Exception, older: int, move_aside: bool) -> None:
        path = os.path.join(self.directory, str(step))
        aside = f"{path}.corrupt-{int(time.time())}"
        log.warning("checkpoint step %d is unreadable (%s: %s)%s, %s",
                    step, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "",
                    f"; moved to {aside}" if move_aside else "",
                    "trying the previous one" if older else "and it was the oldest")
        if not move_aside:
            return
        if jax.process_index() == 0 and os.path.exists(path):
            os.rename(path, aside)
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


# plan(source {path: shape}, target {path: shape}) -> model.adaptation.AdaptationPlan, or raises ValueError
PlanFn = Callable[[dict[str, tuple], dict[str, tuple]], Any]


def restore_params(path: str, abstract_params: Any, plan: PlanFn | None = None) -> Any:
    """Parameters only (for finetuning), from the given or newest good step, into any mesh.
    Reads only: nothing in `path` is created, moved or cleaned up.

    `plan` (e.g. model.adaptation.adaptation_plan for the target config) allows a checkpoint of
    another layout: its tensors are mapped onto the model's as the plan says, and one
    log line lists what was carried, converted, initialised and dropped. A checkpoint no
    plan bridges raises CheckpointMismatchError naming the tensors."""
    directory, step = find_checkpoint_dir(path)
    checkpointer = Checkpointer(directory, keep=None, async_save=False, read_only=True)
    steps = [step] if step is not None else list(reversed(checkpointer.steps()))
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {path}")
    try:
        return _restore_params_from(checkpointer, directory, steps, abstract_params, plan)
    finally:
        checkpointer.close()


def _restore_params_from(checkpointer: Checkpointer, directory: str, steps: list[int],
                         abstract_params: Any, plan: PlanFn | None) -> Any:
    last_error: Exception | None = None
    for s in steps:
        try:
            meta = checkpointer.read_meta(s)
            if plan is not None:
                found = item_metadata(os.path.join(directory, str(s)), "params")
                mapping = _plan_for(found, directory, s, abstract_params, plan)
                if mapping.adapted:
                    return _restore_adapted(checkpointer, directory, s, meta, found, abstract_params, mapping)
            checkpointer.check_item(s, "params", abstract_params, meta, check_matches)
            restored = checkpointer._manager.restore(
                s, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
            params = _like(abstract_params, restored["params"])
            verify(params, meta, "params", s)
            log.info("initialized params from %s step %d", directory, s)
            return params
        except CheckpointMismatchError:
            raise
        except Exception as e:  # noqa: BLE001  (try the next older step)
            log.warning("cannot read params of step %d in %s: %s", s, directory, e)
            last_error = e
    raise RuntimeError(f"no readable checkpoint under {directory}: {last_error}")


def _plan_for(found: Any, directory: str, step: int, abstract_params: Any, plan: PlanFn) -> Any:
    """The adaptation plan from a step's saved params (`found`: their metadata) to the model's."""
    try:
        return plan(_flat_shapes(found), _flat_shapes(abstract_params))
    except ValueError as e:
        raise CheckpointMismatchError(f"cannot initialise this model from {directory} step {step}: {e}") from None


def _restore_adapted(checkpointer: Checkpointer, directory: str, step: int, meta: Mapping[str, Any],
                     found: Any, abstract_params: Any, mapping: Any) -> Any:
    """Reads the saved params (`found`: their metadata) in their own tree, replicated on the target's
    devices, verifies them, and builds the model's tree as `mapping` (an adaptation.AdaptationPlan) says."""
    target_leaves = _flat_leaves(abstract_params)
    some_sharding = next(iter(target_leaves.values())).sharding
    replicated = jax.sharding.NamedSharding(some_sharding.mesh, jax.sharding.PartitionSpec())
    abstract_source = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), found)
    restored = checkpointer._manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_source)))["params"]
    verify(restored, meta, "params", step)
    source = {path: np.asarray(jax.device_get(x)) for path, x in _flat_leaves(restored).items()}
    paths = list(target_leaves)
    values = []
    for path in paths:
        leaf = target_leaves[path]
        origin, convert = mapping.loads[path]
        value = source[origin] if convert is None else convert(source[origin])
        values.append(jax.device_put(value.astype(leaf.dtype), leaf.sharding))
    log.info("initialized params from %s step %d, adapted: %s", directory, step, mapping.describe())
    return jax.tree.unflatten(jax.tree.structure(abstract_params), values)
