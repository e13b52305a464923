"""Where a run starts: resume from MODEL_DIR's newest good checkpoint, else finetune init, else fresh.

Owns: `restore_or_init_state` and its refusals (every checkpoint damaged: the
damaged steps stay in place and every rerun refuses the same way until
`start_over_if_damaged` moves them aside; checkpoints of another batch shape:
`same_batch_shape`), `StartingPoint` (the state, and where the input stream
must continue), and `batch_shape`, the record of the batch shape saved in
every step's meta. Does not own reading or writing checkpoints
(checkpoints/manager.py) or building the stream (run.py).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from t5x_like.model import adaptation
from t5x_like.training.checkpoints import (
    STREAM_RESTORED,
    Checkpointer,
    CheckpointMismatchError,
    CheckpointsDamagedError,
    load_params,
    read_model_config,
)
from t5x_like.training.trainer import Trainer, TrainState

log = logging.getLogger(__name__)


def batch_shape(batch_size: int, task_feature_lengths: Mapping[str, int]) -> dict[str, Any]:
    """What a step's meta records of the batch it was trained on (JSON-ready)."""
    return {"batch_size": int(batch_size),
            "task_feature_lengths": {name: int(length) for name, length in task_feature_lengths.items()}}


@dataclasses.dataclass
class StartingPoint:
    """Where a run starts: its state, how many training batches were consumed before it,
    whether the input stream was moved there (restored from the checkpoint), and whether
    damaged checkpoints were tried first (a failed read may have moved the stream)."""

    state: TrainState
    batches_consumed: int = 0
    stream_restored: bool = False
    started_over: bool = False

    def stream_needs_rebuild(self) -> bool:
        """The stream passed in is not at batches_consumed: build it again (replaying if > 0)."""
        return not self.stream_restored and (self.batches_consumed > 0 or self.started_over)


def restore_or_init_state(trainer: Trainer, checkpointer: Checkpointer, init_checkpoint: str | None = None,
                          start_over_if_damaged: bool = False, batches: Any = None) -> StartingPoint:
    """Resume from MODEL_DIR if it has a good checkpoint (moving `batches`, the training
    stream, to its saved position when both allow), else params from `init_checkpoint`
    with a fresh optimizer, else a fresh init.

    If MODEL_DIR has checkpoints but every one is damaged, CheckpointsDamagedError
    (naming the flag), leaving them in place so that every retry refuses the same way,
    unless `start_over_if_damaged`: then they are moved aside and training starts at 0.

    CheckpointMismatchError if MODEL_DIR's checkpoints were trained with another batch
    size or other sequence lengths (`same_batch_shape`)."""
    try:
        restored = checkpointer.restore_latest(trainer.abstract_params, trainer.abstract_opt_state,
                                               batches=batches, check_meta=same_batch_shape(trainer, checkpointer))
    except CheckpointsDamagedError as e:
        if not start_over_if_damaged:
            raise CheckpointsDamagedError(
                f"{e}; not starting over silently: set --gin.TrainConfig.start_over_if_checkpoints_damaged=True "
                "to train from step 0 in this MODEL_DIR (the damaged steps are then moved aside)", e.steps) from None
        log.warning("%s; starting over from step 0 as start_over_if_checkpoints_damaged allows", e)
        checkpointer.move_aside(e.steps)
        return StartingPoint(trainer.init_state(), started_over=True)
    if restored is not None:
        params, opt_state, meta = restored
        log.info("resuming from step %d", meta["step"])
        state = trainer.make_state(meta["step"], params, opt_state, meta.get("rng"))
        return StartingPoint(state, int(meta.get("batches_consumed", meta["step"])), meta[STREAM_RESTORED])
    if init_checkpoint:
        source = read_model_config(init_checkpoint)  # None for a checkpoint older than saved configs
        plan = functools.partial(adaptation.adaptation_plan, target_config=trainer.model.config,
                                 source_config=source.model if source else None)
        return StartingPoint(trainer.init_state(load_params(init_checkpoint, trainer.abstract_params, plan).params))
    return StartingPoint(trainer.init_state())


def same_batch_shape(trainer: Trainer, checkpointer: Checkpointer) -> Callable[[int, dict], None]:
    """A check of a step's meta: CheckpointMismatchError, naming both shapes and the ways on, if
    the step was trained with another batch size or other sequence lengths (its saved data
    position, and the count of batches consumed, mean nothing for the new shape). Steps saved
    before the shape was recorded pass."""
    wanted = batch_shape(trainer.batch_size, trainer.task_feature_lengths)

    def check(step: int, meta: dict) -> None:
        saved = {name: meta[name] for name in wanted if name in meta}
        if all(saved[name] == wanted[name] for name in saved):
            return
        run_dir = os.path.dirname(checkpointer.directory)
        was = ", ".join(f"{name} {saved[name]}" for name in saved if saved[name] != wanted[name])
        now = ", ".join(f"{name} {wanted[name]}" for name in saved if saved[name] != wanted[name])
        raise CheckpointMismatchError(
            f"{run_dir} was trained with {was} (step {step}); this run asks for {now}: the saved data position "
            f"cannot serve the new shape. Rerun with the old values, or train in a new MODEL_DIR from these "
            f"weights with --gin.TrainConfig.init_checkpoint={run_dir}")
    return check
