"""Attention masks: the one place that defines what a mask means.

Semantics (everywhere in t5x_like): a mask is a boolean array of shape
`[batch, heads, query_length, key_length]` (batch and heads may be 1 and
broadcast) and **True (1) means "this query may attend to this key"**.
Masks compose with `combine` (logical AND): a layout's structural mask
(causal, prefix, bidirectional, forward/backward) is combined with the padding
and packing masks of the batch.

Worked example, a prefix-LM over 4 positions whose first 2 are the prefix
(`prefix_indicator = [1, 1, 0, 0]`): query rows, key columns

    prefix_lm_mask          causal_mask            forward_backward (backward head)
    1 1 0 0                 1 0 0 0                1 1 1 1
    1 1 0 0                 1 1 0 0                0 1 1 1
    1 1 1 0                 1 1 1 0                0 0 1 1
    1 1 1 1                 1 1 1 1                0 0 0 1

Position 0 sees position 1 (the prefix is bidirectional); no position sees a
later target. Naming note: seqio's PrefixLM feature converter calls the
prefix indicator `decoder_causal_attention` although 1 there means
*bidirectional*; t5x_like converts it once, in `model.py`, to
`prefix_indicator` and never uses the inverted name itself.

The builders above give dense arrays. What travels to an attention layer is
one `AttentionMask`: the ingredients of one call's mask (a structure per head,
validity, segment ids, a prefix-LM's prefix, a decoding step's query slots).
Kernels that take a dense mask ask it for `dense()`, which combines exactly the
builders above; kernels that take static masks (accelerator_attention.py) read
its structure and `segment_ids()` and never build the [B, H, Lq, Lk] array.
`transformer.py` builds one per stack (per layer for forward_backward_layers)
with `self_attention_mask`, `cross_attention_mask`, `decoding_step_mask` and
`decoding_step_cross_mask`.
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


def prefix_lm_mask(prefix_indicator: Array) -> Array:
    """[B, 1, L, L]: causal, plus full visibility among the prefix positions.

    prefix_indicator: [B, L], 1 where the position belongs to the bidirectional
    prefix (per example, so prefix lengths may differ).
    """
    prefix = prefix_indicator.astype(bool)
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


# --- one attention call's mask, as every kernel needs it ----------------------------------------
HeadStructure = Literal["causal", "bidirectional", "backward"]


@struct.dataclass
class AttentionMask:
    """Which keys each query of one attention call may see: one argument for every kernel.

    heads: the structure of every head (one entry: all heads alike), static. "causal" sees
        keys at or before the query's slot, "backward" at or after it, "bidirectional" all.
    lengths: (Lq, Lk), static.
    query_valid / key_valid: [B, Lq] / [B, Lk] bool, real (non-padding) positions; None:
        no padding term (a decoding step's cache: its `query_slots` hide unwritten slots).
    query_segment_ids / key_segment_ids: [B, Lq] / [B, Lk], packed examples (a query sees
        a key only with an equal id); None: unpacked.
    prefix_indicator: [B, L], a prefix-LM's bidirectional prefix per example (with heads
        ("causal",)); None otherwise.
    query_slots: [B, Lq], the key index each query sits at (a decoding step: its position
        in the cache); None: query i sits at key i.

    `dense()` is the [B|1, H|1, Lq, Lk] boolean array (True = may attend) that the einsum,
    blockwise and dot_product_attention kernels take, built by the builders above in the
    order transformer.py always combined them: structure, padding, packing. A padding query
    there sees no key. `segment_ids()` is what splash and cuDNN take instead: padding and
    packing folded into one id per position, 0 at padding, so a padding query sees the
    padding keys there (its output is never used: no loss, no real query attends it, and
    splash needs every row to see some key).

    Worked example, a packed causal row [a b | c _] (two examples, one pad):
        valid = [1, 1, 1, 0], segment_ids = [0, 0, 1, 0]
        dense():  1 0 0 0     segment_ids(): [1, 1, 2, 0]
                  1 1 0 0
                  0 0 1 0
                  0 0 0 0     (splash: padding sees padding, 0 0 0 1)
    """

    heads: tuple[HeadStructure, ...] = struct.field(pytree_node=False)
    lengths: tuple[int, int] = struct.field(pytree_node=False)
    query_valid: Array | None = None
    key_valid: Array | None = None
    query_segment_ids: Array | None = None
    key_segment_ids: Array | None = None
    prefix_indicator: Array | None = None
    query_slots: Array | None = None

    @property
    def packed(self) -> bool:
        """Several examples share a row (segment ids were given)."""
        return self.query_segment_ids is not None

    def dense(self) -> Array:
        """[B|1, H|1, Lq, Lk] bool, True = may attend: structure & padding & packing."""
        present = [m for m in (self._structure(), self._padding(), self._packing()) if m is not None]
        return combine(*present) if present else bidirectional_mask(*self.lengths)

    def segment_ids(self, batch: int) -> tuple[Array, Array]:
        """([B, Lq], [B, Lk]) int32 for kernels with static masks: 0 at padding, else 1 + segment id."""
        valid = lambda given, length: jnp.ones((batch, length), bool) if given is None else given
        return (segment_ids_with_padding(valid(self.query_valid, self.lengths[0]), self.query_segment_ids),
                segment_ids_with_padding(valid(self.key_valid, self.lengths[1]), self.key_segment_ids))

    def _structure(self) -> Array | None:
        if self.prefix_indicator is not None:
            return prefix_lm_mask(self.prefix_indicator)
        if self.query_slots is not None:
            if self.heads != ("causal",):
                raise ValueError(f"query_slots take heads ('causal',), got {self.heads}")
            return (jnp.arange(self.lengths[1])[None, None, :] <= self.query_slots[:, :, None])[:, None]
        if set(self.heads) == {"bidirectional"}:
            return None
        per_head = [_head_structure(h, *self.lengths) for h in self.heads]
        return per_head[0] if len(per_head) == 1 else jnp.concatenate(per_head, axis=1)

    def _padding(self) -> Array | None:
        if self.query_valid is not None and self.key_valid is not None:
            return padding_mask(self.query_valid, self.key_valid)
        if self.key_valid is not None:
            return self.key_valid.astype(bool)[:, None, None, :]
        if self.query_valid is not None:
            return self.query_valid.astype(bool)[:, None, :, None]
        return None

    def _packing(self) -> Array | None:
        if self.query_segment_ids is None:
            return None
        return segment_mask(self.query_segment_ids, self.key_segment_ids)


def _head_structure(head: HeadStructure, query_length: int, key_length: int) -> Array:
    """[1, 1, Lq, Lk] for one head (causal and backward need Lq = Lk)."""
    if head == "bidirectional":
        return bidirectional_mask(query_length, key_length)
    if query_length != key_length:
        raise ValueError(f"a {head} head needs equal query and key lengths, got {query_length} and {key_length}")
    return causal_mask(query_length) if head == "causal" else backward_mask(query_length)


def self_attention_mask(heads: tuple[HeadStructure, ...], valid: Array, segment_ids: Array | None = None,
                        prefix_indicator: Array | None = None) -> AttentionMask:
    """A stack's self-attention: `heads` (or a prefix-LM's prefix) & padding (& packing)."""
    length = valid.shape[1]
    return AttentionMask(tuple(heads), (length, length), valid, valid, segment_ids, segment_ids, prefix_indicator)


def cross_attention_mask(valid: Array, encoder_valid: Array, segment_ids: Array | None = None,
                         encoder_segment_ids: Array | None = None) -> AttentionMask:
    """Decoder queries over encoder keys: padding (& packing when the decoder is packed)."""
    packed = segment_ids is not None
    return AttentionMask(("bidirectional",), (valid.shape[1], encoder_valid.shape[1]), valid, encoder_valid,
                         segment_ids if packed else None, encoder_segment_ids if packed else None)


def decoding_step_mask(positions: Array, cache_length: int) -> AttentionMask:
    """One query per row at `positions` [B, 1] over `cache_length` slots: slots up to the position."""
    return AttentionMask(("causal",), (positions.shape[1], cache_length), query_slots=positions)


def decoding_step_cross_mask(encoder_valid: Array, num_queries: int = 1) -> AttentionMask:
    """A decoding step's queries over the encoder's real positions."""
    return AttentionMask(("bidirectional",), (num_queries, encoder_valid.shape[1]), key_valid=encoder_valid)


def segment_ids_with_padding(valid: Array, segment_ids: Array | None = None) -> Array:
    """[B, L] int32: 0 at padding, 1 + segment id elsewhere (1 when there are no segment ids)."""
    ids = jnp.ones(valid.shape, jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32) + 1
    return jnp.where(valid.astype(bool), ids, 0)


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
