"""Position encodings: learned absolute, sinusoidal, T5 relative bias, RoPE (with linear and
LLaMA 3 frequency scaling), ALiBi.

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


ROPE_SCALINGS = ("none", "linear", "llama3")


def rope_inverse_frequencies(head_dim: int, max_wavelength: float = 10_000.0, scaling: str = "none",
                             factor: float = 1.0, low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                             original_max_length: int = 8192) -> np.ndarray:
    """RoPE's [head_dim / 2] float32 angular frequencies, max_wavelength^(-2i / head_dim), scaled:

    "none"    as they are.
    "linear"  all divided by `factor` (position interpolation: position p rotates as p / factor).
    "llama3"  LLaMA 3.1's: wavelengths 2π/f shorter than original_max_length / high_freq_factor
              kept, longer than original_max_length / low_freq_factor divided by `factor`, and
              those between interpolated smoothly, s = (original_max_length / wavelength -
              low_freq_factor) / (high_freq_factor - low_freq_factor), f' = (1 - s) f / factor + s f.
    Computed in float32 in the order Hugging Face's LLaMA computes them (logit parity).
    """
    if scaling not in ROPE_SCALINGS:
        raise ValueError(f"rope scaling {scaling!r}, expected one of {ROPE_SCALINGS}")
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(max_wavelength), exponents)).astype(np.float32)
    if scaling == "linear":
        return (inv_freq / np.float32(factor)).astype(np.float32)
    if scaling == "llama3":
        wavelength = np.float32(2 * math.pi) / inv_freq
        long_wave, short_wave = original_max_length / low_freq_factor, original_max_length / high_freq_factor
        scaled = np.where(wavelength > long_wave, inv_freq / np.float32(factor), inv_freq).astype(np.float32)
        smooth = ((original_max_length / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor))
        smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
        medium = ~(wavelength < short_wave) & ~(wavelength > long_wave)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def apply_rope(x: Array, positions: Array, max_wavelength: float = 10_000.0,
               inverse_frequencies: np.ndarray | None = None) -> Array:
    """Rotary embedding of x [B, L, H, D] at positions [B, L] (rotate-half form); the frequencies
    are `rope_inverse_frequencies(D, max_wavelength)` unless given (a scaled RoPE's)."""
    if inverse_frequencies is None:
        inverse_frequencies = rope_inverse_frequencies(x.shape[-1], max_wavelength)
    inv_freq = jnp.asarray(inverse_frequencies, jnp.float32)
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
