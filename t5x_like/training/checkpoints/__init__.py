"""Checkpoints: what a run leaves on disk next to its step folders, and the one way to read it.

    integrity     checksums of every array, shape checks against a model
    reading       resolve a user's path; `load_params` (read-only, every reader's way in)
    manager       `Checkpointer`: the one writer, and training's resume (damaged steps moved aside)
    saved_config  MODEL_DIR/model_config.json: the model, task lengths and data settings, gin-free

The only modules of t5x_like that use orbax (tests/test_architecture.py checks).
"""
from t5x_like.training.checkpoints.integrity import CheckpointError, CheckpointMismatchError, checksums
from t5x_like.training.checkpoints.manager import (
    DATA_ITEM,
    STREAM_RESTORED,
    Checkpointer,
    CheckpointSaveError,
    CheckpointsDamagedError,
)
from t5x_like.training.checkpoints.reading import (
    CHECKPOINT_SUBDIR,
    CheckpointLocation,
    LoadedParams,
    PlanFn,
    load_params,
    resolve_checkpoint,
)
from t5x_like.training.checkpoints.saved_config import (
    MODEL_CONFIG_FILE,
    SavedModelConfig,
    read_model_config,
    write_model_config,
)

__all__ = [
    "CHECKPOINT_SUBDIR", "DATA_ITEM", "MODEL_CONFIG_FILE", "STREAM_RESTORED", "CheckpointError",
    "CheckpointLocation", "CheckpointMismatchError", "CheckpointSaveError", "Checkpointer",
    "CheckpointsDamagedError", "LoadedParams", "PlanFn", "SavedModelConfig", "checksums", "load_params",
    "read_model_config", "resolve_checkpoint", "write_model_config",
]
