"""Model dirs as `t5x-like train` leaves them (model_config.json, config.gin, a checkpoint), without training."""
from __future__ import annotations

import os

import flax.linen as nn
import jax
import numpy as np

from t5x_like.model import model as models
from t5x_like.model.config import TransformerConfig
from t5x_like.training import checkpoints

LENGTHS = {"inputs": 24, "targets": 20}

CONFIG_GIN = """
import t5x_like.cli.configurables
MODEL = @models.Model()
models.Model.config = @config.TransformerConfig()
TASK_FEATURE_LENGTHS = {lengths}
TransformerConfig.layout = '{layout}'
TransformerConfig.vocab_size = 384
TransformerConfig.d_model = {d_model}
TransformerConfig.num_heads = 2
TransformerConfig.head_dim = 16
TransformerConfig.d_ff = 64
TransformerConfig.num_decoder_layers = 2
"""


def tiny(layout: str, d_model: int = 32) -> TransformerConfig:
    return TransformerConfig(layout=layout, vocab_size=384, d_model=d_model, num_heads=2, head_dim=16,
                             d_ff=64, num_decoder_layers=2)


def write_run(model_dir: str, config: TransformerConfig, step: int = 7, claimed: TransformerConfig | None = None,
              older: bool = False):
    """A model dir as `t5x-like train` leaves it: model_config.json, config.gin and
    checkpoints/<step>/{params,...}; `older`: as runs left it before model_config.json (no such file).
    `claimed`: the config the files state, when it should differ from the checkpoint's."""
    claimed = claimed or config
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
        f.write(CONFIG_GIN.format(lengths=LENGTHS, layout=claimed.layout, d_model=claimed.d_model))
    if not older:
        checkpoints.write_model_config(model_dir, checkpoints.SavedModelConfig(claimed, LENGTHS))
    model = models.Model(config)
    init = jax.jit(lambda rng: nn.unbox(model.init(rng, model.dummy_batch(1, LENGTHS)))["params"])
    params = init(jax.random.key(0))
    saver = checkpoints.Checkpointer(os.path.join(model_dir, checkpoints.CHECKPOINT_SUBDIR), async_save=False)
    saver.save(step, params, {"count": np.zeros(())}, {"batches_consumed": step})
    saver.close()
    return model, params
