"""Attention masks: the one place that defines what a mask means.

Semantics (everywhere in t5x_like): a mask is a boolean array of shape
`[batch, heads, query_length, key_length]` (batch and heads may be 1 and
broadcast) and **True (1) means "this query may attend to this key"**.
Masks compose with `combine` (logical AND): a layout's structural mask
(causal, prefix, bidirectional, forward/backward) is combined with the padding
and packing masks of the batch.

Worked example, a prefix-LM over 4 positions whose first 2 are the prefix
(`prefix_positions = [1, 1, 0, 0]`): query rows, key columns

    prefix_lm_mask          causal_mask            forward_backward (backward head)
    1 1 0 0                 1 0 0 0                1 1 1 1
    1 1 0 0                 1 1 0 0                0 1 1 1
    1 1 1 0                 1 1 1 0                0 0 1 1
    1 1 1 1                 1 1 1 1                0 0 0 1

Position 0 sees position 1 (the prefix is bidirectional); no position sees a
later target. Naming note: seqio's PrefixLM feature converter calls the
prefix indicator `decoder_causal_attention` although 1 there means
*bidirectional*; t5x_like converts it once, in `model.py`, to
`prefix_positions` and never uses the inverted name itself.
"""
from __future__ import annotations

import jax.numpy as jnp

Array = jnp.ndarray


def causal_mask(length: int) -> Array:
    """[1, 1, L, L]: query i sees keys j <= i (lower triangle, the forward direction)."""
    idx = jnp.arange(length)
    return (idx[None, :] <= idx[:, None])[None, None]


def backward_mask(length: int) -> Array:
    """[1, 1, L, L]: query i sees keys j >= i (upper triangle)."""
    idx = jnp.arange(length)
    return (idx[None, :] >= idx[:, None])[None, None]


def bidirectional_mask(query_length: int, key_length: int | None = None) -> Array:
    """[1, 1, Lq, Lk]: every query sees every key."""
    return jnp.ones((1, 1, query_length, key_length or query_length), dtype=bool)


def prefix_lm_mask(prefix_positions: Array) -> Array:
    """[B, 1, L, L]: causal, plus full visibility among the prefix positions.

    prefix_positions: [B, L], 1 where the position belongs to the bidirectional
    prefix (per example, so prefix lengths may differ).
    """
    prefix = prefix_positions.astype(bool)
    both_in_prefix = prefix[:, :, None] & prefix[:, None, :]
    return causal_mask(prefix.shape[1]) | both_in_prefix[:, None]


def forward_backward_heads_mask(length: int, num_heads: int) -> Array:
    """[1, H, L, L]: Su's mixed attention, variant A.

    The first ceil(H/2) heads are forward (lower triangle), the rest backward
    (upper triangle); every position still sees itself.
    """
    num_forward = (num_heads + 1) // 2
    forward = jnp.broadcast_to(causal_mask(length), (1, num_forward, length, length))
    backward = jnp.broadcast_to(backward_mask(length), (1, num_heads - num_forward, length, length))
    return jnp.concatenate([forward, backward], axis=1)


def forward_backward_layer_mask(length: int, layer_index: int) -> Array:
    """[1, 1, L, L]: Su's mixed attention, variant B: even layers forward, odd backward."""
    return causal_mask(length) if layer_index % 2 == 0 else backward_mask(length)


def padding_mask(query_valid: Array, key_valid: Array) -> Array:
    """[B, 1, Lq, Lk]: only real (non-padding) queries and keys interact."""
    return (query_valid.astype(bool)[:, :, None] & key_valid.astype(bool)[:, None, :])[:, None]


def segment_mask(query_segment_ids: Array, key_segment_ids: Array) -> Array:
    """[B, 1, Lq, Lk]: packed examples never see each other (equal segment ids only)."""
    return (query_segment_ids[:, :, None] == key_segment_ids[:, None, :])[:, None]


def combine(*masks: Array | None) -> Array:
    """Logical AND of the given masks (None entries are skipped), broadcast together."""
    present = [m for m in masks if m is not None]
    if not present:
        raise ValueError("combine() needs at least one mask")
    result = present[0]
    for mask in present[1:]:
        result = result & mask
    return result


def mask_to_bias(mask: Array, dtype=jnp.float32) -> Array:
    """0 where attention is allowed, a large finite negative where it is not.

    Finite (not -inf) so that a fully masked row (a padding query) gives a
    uniform softmax instead of NaN.
    """
    big_negative = jnp.asarray(jnp.finfo(dtype).min * 0.5, dtype)
    return jnp.where(mask, jnp.asarray(0, dtype), big_negative)
