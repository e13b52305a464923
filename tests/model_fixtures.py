"""Helpers for model tests: build, init and run tiny models of any layout."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np

from t5x_like.model import model as models
from t5x_like.model.config import TransformerConfig

TINY = dict(vocab_size=64, d_model=32, num_heads=4, head_dim=8, d_ff=64)


def tiny_config(layout: str = "decoder_only", **overrides) -> TransformerConfig:
    depth = {"decoder_only": (0, 2), "prefix_lm": (0, 2), "encoder_only": (2, 0), "encoder_decoder": (2, 2)}[layout]
    base = dict(TINY, layout=layout, num_encoder_layers=depth[0], num_decoder_layers=depth[1])
    return TransformerConfig(**{**base, **overrides})


@functools.lru_cache(maxsize=None)
def init_params(config: TransformerConfig, batch_size: int = 2, inputs_length: int = 6, targets_length: int = 6):
    model = models.Model(config)
    lengths = {"targets": targets_length} if not inputs_length else {"inputs": inputs_length, "targets": targets_length}
    variables = model.init(jax.random.PRNGKey(0), model.dummy_batch(batch_size, lengths))
    return model, nn.unbox(variables["params"])


@functools.lru_cache(maxsize=None)
def jitted_logits(config: TransformerConfig):
    model = models.Model(config)
    return jax.jit(model.logits)


def random_tokens(rng: np.random.Generator, shape, vocab_size: int = 64) -> np.ndarray:
    return rng.integers(3, vocab_size, size=shape).astype(np.int32)
