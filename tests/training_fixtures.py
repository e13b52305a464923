"""Helpers for the training and command-line tests: tiny models, tiny runs, one-device trainers."""
from __future__ import annotations

import jax

from t5x_like.data.sources import DataRequest, synthetic_batches
from t5x_like.model import model as models
from t5x_like.model.config import TransformerConfig
from t5x_like.training import optimizers, partitioning
from t5x_like.training import run as train
from t5x_like.training.trainer import LossOptions, Trainer

LENGTHS = {"targets": 32}


def tiny_model(**overrides) -> models.Model:
    base = {"layout": "decoder_only", "vocab_size": 128, "d_model": 32, "num_heads": 4, "head_dim": 8,
            "d_ff": 64, "num_decoder_layers": 2}
    return models.Model(TransformerConfig(**{**base, **overrides}))


def tiny_run(model_dir, **overrides) -> train.TrainConfig:
    base = {"model": tiny_model(), "model_dir": str(model_dir), "mixture_or_task_name": "synthetic",
            "task_feature_lengths": LENGTHS, "train_steps": 6, "batch_size": 8, "log_period": 1,
            "checkpoint_period": 2, "eval_split": None, "tensorboard": False, "async_checkpointing": False,
            "optimizer": optimizers.adamw(learning_rate=3e-3)}
    return train.TrainConfig(**{**base, **overrides})


def one_device_mesh():
    return partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def make_trainer(optimizer, num_microbatches=1, loss=None, model=None):
    return Trainer(model or tiny_model(), optimizer, one_device_mesh(), partitioning.logical_axis_rules(),
                   batch_size=8, task_feature_lengths=LENGTHS, num_microbatches=num_microbatches,
                   loss=loss or LossOptions(z_loss=1e-4))


def synthetic_batch(model, index=0):
    request = DataRequest("synthetic", LENGTHS, "train", 8, False, 0, False, start_batch=index)
    return next(synthetic_batches(request, model))
