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

`MaskSpec` describes the same masks without the [B, H, Lq, Lk] array (a static
structure per head plus segment ids), for kernels that take static masks
(accelerator_attention.py).
"""
from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
from flax import struct

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


# --- a static description of the same masks, for kernels that take no dense mask ---------------
HeadStructure = Literal["causal", "bidirectional", "backward"]


@struct.dataclass
class MaskSpec:
    """A self- or cross-attention mask described as kernels with static masks need it.

    Splash attention (TPU) and cuDNN flash attention (GPU) take no [B, H, Lq, Lk]
    boolean array: they take a mask structure fixed at trace time plus segment
    ids (or sequence lengths). `transformer.py` builds this next to the dense
    mask when `attention_kernel="accelerated"`; `dense()` rebuilds the dense mask.

    heads: the structure of every head (one entry: all heads alike), static.
    query_segment_ids / key_segment_ids: [B, Lq] / [B, Lk] int32; 0 at padding,
        else 1 + the packing segment id (1 when unpacked). A query may attend
        a key only with an equal id, so padding and packing are one mechanism.
        Padding queries see padding keys here, where the dense mask lets them
        see nothing: their outputs are never used (no loss, no real query
        attends them), and splash needs every row to see some key.
    packed: several examples share a row (segment ids were given), static.
    dynamic: why no static description exists (e.g. a prefix-LM's prefix
        length differs per example), else None; heads and ids are then unused.

    Worked example, a packed causal row [a b | c _] (two examples, one pad):
        valid = [1, 1, 1, 0], segment_ids = [0, 0, 1, 0] → ids = [1, 1, 2, 0]
        heads = ("causal",)        dense() for that row: 1 0 0 0
                                                         1 1 0 0
                                                         0 0 1 0
                                                         0 0 0 1 (padding sees padding)
    """

    query_segment_ids: Array | None = None
    key_segment_ids: Array | None = None
    heads: tuple[HeadStructure, ...] = struct.field(pytree_node=False, default=("bidirectional",))
    packed: bool = struct.field(pytree_node=False, default=False)
    dynamic: str | None = struct.field(pytree_node=False, default=None)

    def dense(self) -> Array:
        """[B, H or 1, Lq, Lk] boolean: the mask this spec describes."""
        if self.dynamic:
            raise ValueError(f"no static mask to rebuild: {self.dynamic}")
        lq, lk = self.query_segment_ids.shape[1], self.key_segment_ids.shape[1]
        rows, cols = jnp.arange(lq)[:, None], jnp.arange(lk)[None, :]
        by_structure = {"causal": cols <= rows, "backward": cols >= rows, "bidirectional": jnp.ones((lq, lk), bool)}
        structure = jnp.stack([by_structure[h] for h in self.heads])[None]
        return structure & segment_mask(self.query_segment_ids, self.key_segment_ids)


def segment_ids_with_padding(valid: Array, segment_ids: Array | None = None) -> Array:
    """[B, L] int32: 0 at padding, 1 + segment id elsewhere (1 when there are no segment ids)."""
    ids = jnp.ones(valid.shape, jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32) + 1
    return jnp.where(valid.astype(bool), ids, 0)


def mask_spec(heads: tuple[HeadStructure, ...], query_valid: Array, key_valid: Array,
              query_segment_ids: Array | None = None, key_segment_ids: Array | None = None) -> MaskSpec:
    """The MaskSpec of `heads` & padding (& packing when segment ids are given)."""
    return MaskSpec(segment_ids_with_padding(query_valid, query_segment_ids),
                    segment_ids_with_padding(key_valid, key_segment_ids),
                    heads=tuple(heads), packed=query_segment_ids is not None)


def forward_backward_head_structures(num_heads: int) -> tuple[HeadStructure, ...]:
    """forward_backward_heads_mask's heads: ceil(H/2) forward (causal), the rest backward."""
    num_forward = (num_heads + 1) // 2
    return ("causal",) * num_forward + ("backward",) * (num_heads - num_forward)


def encoder_head_structures(encoder_mask: str, num_heads: int, layer_index: int) -> tuple[HeadStructure, ...]:
    """The head structures of an encoder layer under TransformerConfig.encoder_mask (see the masks above)."""
    if encoder_mask == "forward_backward_heads":
        return forward_backward_head_structures(num_heads)
    if encoder_mask == "forward_backward_layers":
        return ("causal",) if layer_index % 2 == 0 else ("backward",)
    return ("bidirectional",)
