"""Position encodings: learned absolute, sinusoidal, T5 relative bias, RoPE, ALiBi.

This module holds the pure functions (buckets, tables, rotations, slopes); the
parameterized pieces (learned tables) are built from them in `layers.py`.

Relative-position bucketing follows T5 (Raffel et al. 2020): exact buckets for
small distances, logarithmic ones up to `max_distance`. In *bidirectional*
mode half the buckets are for keys before the query and half for keys after
it; in *unidirectional* mode every bucket is for keys at or before the query
(future keys are masked anyway). t5x_like uses bidirectional buckets wherever
attention is bidirectional, including inside a prefix-LM's prefix.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray


def relative_position_bucket(relative_position: Array, bidirectional: bool,
                             num_buckets: int = 32, max_distance: int = 128) -> Array:
    """T5's bucket of `relative_position = key_position - query_position`.

    Examples (num_buckets=32, max_distance=128): unidirectional: 0 -> 0,
    -1 -> 1, -15 -> 15, -16 -> 16, -127 -> 31, +5 -> 0 (a future key, masked).
    Bidirectional: 0 -> 0, -1 -> 1, +1 -> 17, +15 -> 31 (logarithmic range).
    """
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # Guard log(0): the value is discarded by the `where` for small n anyway.
    val_if_large = max_exact + (
        jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
        / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


def sinusoidal_embedding(positions: Array, features: int, max_timescale: float = 10_000.0) -> Array:
    """[..., features] Transformer sinusoids (sin in the first half, cos in the second)."""
    half = features // 2
    inv_freq = 1.0 / (max_timescale ** (jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1)))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    embedding = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if features % 2:
        embedding = jnp.pad(embedding, [(0, 0)] * (embedding.ndim - 1) + [(0, 1)])
    return embedding


def apply_rope(x: Array, positions: Array, max_wavelength: float = 10_000.0) -> Array:
    """Rotary embedding of x [B, L, H, D] at positions [B, L] (rotate-half form)."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (max_wavelength ** (jnp.arange(half, dtype=jnp.float32) / half))
    angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq  # [B, L, 1, D/2]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Press et al.'s head slopes: a geometric sequence starting at 2^(-8/n)."""
    def power_of_two_slopes(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]
    if math.log2(num_heads).is_integer():
        return np.asarray(power_of_two_slopes(num_heads), np.float32)
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return np.asarray(power_of_two_slopes(closest) + extra, np.float32)


def alibi_bias(query_positions: Array, key_positions: Array, num_heads: int) -> Array:
    """[B, H, Lq, Lk] linear distance penalty -slope * |i - j| (symmetric, so it
    serves bidirectional attention; under a causal mask it equals ALiBi's)."""
    distance = jnp.abs(key_positions[:, None, :] - query_positions[:, :, None]).astype(jnp.float32)
    return -jnp.asarray(alibi_slopes(num_heads))[None, :, None, None] * distance[:, None]
