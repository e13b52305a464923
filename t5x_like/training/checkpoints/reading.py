"""Reading checkpoints: the one read-only way in, for every reader of a MODEL_DIR.

    location = resolve_checkpoint("/runs/gpt")          # MODEL_DIR, its checkpoints/ or a step folder
    loaded = load_params("/runs/gpt", model.abstract_params())
    loaded.params, loaded.step, loaded.run_dir

Evaluation, inference, finetuning's `init_checkpoint`, layout adaptation and
export all read parameters through `load_params`; training's resume reads the
whole state through `manager.Checkpointer`, the one writer.

A reader never writes: it takes no lock, creates nothing, and moves or cleans
up nothing, so it can run beside a training run that is saving into the same
directory (no orbax CheckpointManager is opened: a manager cleans up the
temporary directories of saves in flight). Steps are tried newest first
(or only the named one):

  - a step that vanished between listing and reading (the writer's keep-N
    policy deleted it) is skipped without a word;
  - a step that is present but unreadable, or fails its checksums, is damaged:
    skipped with a warning naming it;
  - a readable step of another model raises CheckpointMismatchError at once,
    naming the tensors (unless `plan` bridges the two trees).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from t5x_like.training.checkpoints.integrity import (
    CheckpointError,
    CheckpointMismatchError,
    check_matches,
    flat_leaves,
    flat_shapes,
    verify,
)

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
PARAMS_ITEM = "params"
META_ITEM = "meta"

# plan(source {path: shape}, target {path: shape}) -> model.adaptation.AdaptationPlan, or raises ValueError
PlanFn = Callable[[dict[str, tuple], dict[str, tuple]], Any]


@dataclasses.dataclass(frozen=True)
class CheckpointLocation:
    """Where a path given by a user points: the run, its step folders, and a step if it named one."""

    run_dir: str        # MODEL_DIR: where model_config.json and the run's files live
    directory: str      # the parent of the step folders (MODEL_DIR/checkpoints)
    step: int | None    # the step folder named, or None for "the newest good one"

    def steps(self) -> list[int]:
        """Finished steps on disk, oldest first (an orbax save in flight has a temporary name)."""
        try:
            entries = list(epath.Path(self.directory).iterdir())
        except FileNotFoundError:
            return []
        return sorted(int(entry.name) for entry in entries if entry.name.isdigit() and entry.is_dir())

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def candidates(self) -> list[int]:
        """The steps a reader tries, newest first: the named one, else every one on disk.
        CheckpointError (naming what the directory holds) when there is none."""
        candidates = [self.step] if self.step is not None else self.steps()[::-1]
        if not candidates:
            found = sorted(entry.name for entry in epath.Path(self.directory).iterdir())[:10]
            raise CheckpointError(
                f"no checkpoint in {self.directory!r}: expected step folders (e.g. checkpoints/1000/params) as "
                f"written by `t5x-like train`; found {found or 'an empty directory'}")
        return candidates


def resolve_checkpoint(path: str) -> CheckpointLocation:
    """MODEL_DIR, MODEL_DIR/checkpoints or MODEL_DIR/checkpoints/<step> (local, or remote such
    as gs://) -> CheckpointLocation; CheckpointError if the path does not exist."""
    where = epath.Path(path if "://" in path else os.path.abspath(path))
    if not where.is_dir():
        raise CheckpointError(f"checkpoint path {path!r} does not exist")
    if where.name.isdigit():
        directory, step = where.parent, int(where.name)
    elif (where / CHECKPOINT_SUBDIR).is_dir():
        directory, step = where / CHECKPOINT_SUBDIR, None
    else:
        directory, step = where, None
    run_dir = directory.parent if directory.name == CHECKPOINT_SUBDIR else directory
    return CheckpointLocation(str(run_dir), str(directory), step)


@dataclasses.dataclass
class LoadedParams:
    params: Any
    step: int
    run_dir: str


def load_params(path: str, abstract_params: Any, plan: PlanFn | None = None,
                step: int | None = None) -> LoadedParams:
    """The params of the newest good step under `path` (or of `step`, or of the step folder
    `path` names), in the shardings and tree structure of `abstract_params`. Reads only.

    `plan` (e.g. model.adaptation.adaptation_plan for the source's and the target's configs)
    allows a checkpoint of another layout: its tensors are mapped onto the model's as the plan
    says, and one log line lists what was carried, converted and dropped.
    CheckpointError if there is no step, or every step is damaged; CheckpointMismatchError
    for a checkpoint of another model that no plan bridges."""
    location = resolve_checkpoint(path)
    if step is not None:
        location = dataclasses.replace(location, step=step)
    candidates = location.candidates()
    damaged = []
    for candidate in candidates:
        step_dir = location.step_dir(candidate)
        try:
            params = _read_step(step_dir, candidate, abstract_params, plan)
        except CheckpointMismatchError:
            raise
        except Exception as e:  # noqa: BLE001  (orbax read errors, checksum mismatch)
            if location.step is None and not epath.Path(step_dir).exists():
                continue  # deleted by a writer's keep-N policy since it was listed: not damage
            log.warning("checkpoint step %d is damaged (in %s: %s)%s", candidate, location.directory,
                        " ".join(str(e).split())[:300] or type(e).__name__,
                        "" if candidate == candidates[-1] else "; trying the previous one")
            damaged.append(candidate)
            continue
        if damaged:
            log.warning("reading step %d instead: newer step(s) %s are damaged", candidate, damaged)
        return LoadedParams(params, candidate, location.run_dir)
    if not damaged:
        raise CheckpointError(f"no checkpoint left in {location.directory}: every step was deleted while "
                              "it was being read (a run writing there keeps only its newest steps)")
    raise CheckpointError(f"no readable checkpoint in {location.directory}: step(s) {damaged} are damaged")


def _read_step(step_dir: str, step: int, abstract_params: Any, plan: PlanFn | None) -> Any:
    meta = read_meta(step_dir)
    if plan is not None:
        found = item_metadata(step_dir, PARAMS_ITEM)
        mapping = _plan_for(found, step_dir, abstract_params, plan)
        if mapping.adapted:
            return _read_adapted(step_dir, step, meta, found, abstract_params, mapping)
    check_item(step_dir, PARAMS_ITEM, abstract_params, meta, check_matches)
    params = read_item(step_dir, PARAMS_ITEM, abstract_params)
    verify(params, meta, PARAMS_ITEM, step)
    log.info("read params from %s", step_dir)
    return params


def read_meta(step_dir: str) -> dict:
    """The meta item of a step folder (JSON: step, checksums, data position, ...)."""
    with _quiet_orbax_warnings(), _reader(ocp.JsonCheckpointHandler()) as reader:
        return dict(reader.restore(os.path.join(step_dir, META_ITEM), args=ocp.args.JsonRestore()))


def read_item(step_dir: str, item: str, abstract: Any) -> Any:
    """One array item of a step folder, restored into the shardings and tree structure of `abstract`."""
    with _quiet_orbax_warnings(), _reader(ocp.StandardCheckpointHandler()) as reader:
        restored = reader.restore(os.path.join(step_dir, item), args=ocp.args.StandardRestore(abstract))
    # orbax gives back plain containers; the target's own (optax namedtuples etc.) are kept
    return jax.tree.unflatten(jax.tree.structure(abstract), jax.tree.leaves(restored))


@contextlib.contextmanager
def _reader(handler: ocp.CheckpointHandler) -> Iterator[ocp.Checkpointer]:
    reader = ocp.Checkpointer(handler)
    try:
        yield reader
    finally:
        reader.close()


def item_metadata(step_dir: str, item: str) -> Any:
    """The orbax metadata tree (shapes, dtypes) of one item of a step directory."""
    with _quiet_orbax_warnings():  # "Metadata file does not exist": a file older orbax did not write
        found = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, item))
    return getattr(found, "item_metadata", found)


def check_item(step_dir: str, item: str, expected: Any, meta: dict,
               compare: Callable[[Any, Any, str], None]) -> None:
    """CheckpointMismatchError if an intact item holds other arrays than `expected` (`compare`
    decides); ValueError (damage) if its metadata does not even agree with the step's meta."""
    found = item_metadata(step_dir, item)
    recorded = meta.get(f"{item}_checksums")
    count = sum(1 for x in jax.tree.leaves(found) if hasattr(x, "shape"))
    if recorded is not None and count != len(recorded):
        raise ValueError(f"the {item} metadata of {step_dir} lists {count} arrays where its meta "
                         f"recorded {len(recorded)}: damaged")
    compare(expected, found, step_dir)


@contextlib.contextmanager
def _quiet_orbax_warnings():
    """Orbax warns about what a reader does on purpose (read-only access, optional metadata
    files); those warnings are raised to ERROR level for the duration of the block."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def _plan_for(found: Any, step_dir: str, abstract_params: Any, plan: PlanFn) -> Any:
    """The adaptation plan from a step's saved params (`found`: their metadata) to the model's."""
    try:
        return plan(flat_shapes(found), flat_shapes(abstract_params))
    except ValueError as e:
        raise CheckpointMismatchError(f"cannot initialise this model from {step_dir}: {e}") from None


def _read_adapted(step_dir: str, step: int, meta: dict, found: Any, abstract_params: Any, mapping: Any) -> Any:
    """Reads the saved params (`found`: their metadata) in their own tree, replicated on the target's
    devices, verifies them, and builds the model's tree as `mapping` (an adaptation.AdaptationPlan) says."""
    target_leaves = flat_leaves(abstract_params)
    some_sharding = next(iter(target_leaves.values())).sharding
    replicated = jax.sharding.NamedSharding(some_sharding.mesh, jax.sharding.PartitionSpec()) \
        if isinstance(some_sharding, jax.sharding.NamedSharding) else some_sharding
    abstract_source = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), found)
    restored = read_item(step_dir, PARAMS_ITEM, abstract_source)
    verify(restored, meta, PARAMS_ITEM, step)
    source = {path: np.asarray(jax.device_get(x)) for path, x in flat_leaves(restored).items()}
    values = []
    for path, leaf in target_leaves.items():
        origin, convert = mapping.loads[path]
        value = source[origin] if convert is None else convert(source[origin])
        values.append(jax.device_put(value.astype(leaf.dtype), leaf.sharding))
    log.info("read params from %s, adapted: %s", step_dir, mapping.describe())
    return jax.tree.unflatten(jax.tree.structure(abstract_params), values)
