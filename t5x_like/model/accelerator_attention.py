"""Accelerator attention kernels behind `attention_kernel="accelerated"`.

Owns whether a fused kernel can take one attention call, and the call itself:
  TPU  Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention):
       a static mask per head (causal, bidirectional, backward) AND-ed with
       segment ids (padding and packing); fully masked blocks are skipped.
  GPU  cuDNN flash attention (jax.nn.dot_product_attention(implementation="cudnn")):
       causal or bidirectional, padding as sequence lengths; bfloat16/float16.
`fallback_reason` says why no kernel can take a call (None: one can);
`accelerated_attention` runs the kernel. The dispatcher (attention.attend)
asks the first, runs the second or the portable kernels, and logs the
reason once per process.

What falls back, and why: a prefix-LM's mask (its prefix length is per example
and dynamic; splash takes static masks), an additive bias (T5 relative, ALiBi:
neither kernel takes one here), attention-probability dropout, lengths that
are not a multiple of splash's 128-wide blocks, a sequence-sharded length axis
or per-head masks with sharded heads (TPU), packing, per-head masks, backward
masks, float32 or a head_dim over 128 / not a multiple of 8 (cuDNN), and any
other platform (CPU).

Does not own: what a mask means and its AttentionMask (masks.py), which mask
each stack uses (transformer.py), which kernel a call runs and the portable
kernels (attention.py).
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from t5x_like.model.masks import AttentionMask

Array = jnp.ndarray

# Splash's query/key blocks must be multiples of 128 lanes; the largest that divides a length is used.
SPLASH_BLOCK_SIZES = (512, 256, 128)
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128  # before Hopper; Hopper and later take 256, which jax can check only on the device


def fallback_reason(query: Array, key: Array, mask: AttentionMask, bias: Array | None,
                    attention_dropout: bool, platform: str | None = None, interpret: bool = False) -> str | None:
    """Why no fused kernel can take this call, or None when `accelerated_attention` can.

    query [B, Lq, H, D], key [B, Lk, H, D]. platform: "tpu" (splash), "gpu" (cuDNN),
    anything else has none; None: the platform being compiled for (`target_platform`).
    interpret=True: splash in Pallas interpret mode, on any platform.
    """
    reason = _common_fallback_reason(mask, bias, attention_dropout)
    if reason is not None:
        return reason
    platform = target_platform() if platform is None else platform
    if platform == "tpu" or interpret:
        return splash_fallback_reason(query, key, mask)
    if platform == "gpu":
        return cudnn_fallback_reason(query, mask)
    return (f"no accelerator kernel on {platform} (splash needs a TPU, cuDNN a GPU; "
            "attention_implementation='interpret' runs splash interpreted)")


def accelerated_attention(query: Array, key: Array, value: Array, mask: AttentionMask, scale: float,
                          platform: str | None = None, interpret: bool = False) -> Array:
    """softmax(scale · q·kᵀ under mask) · v by the fused kernel of `platform` (as in
    `fallback_reason`, which must have returned None for this call).

    query [B, Lq, H, D], key / value [B, Lk, H, D]; returns [B, Lq, H, D].
    interpret=True runs splash in Pallas interpret mode (any platform; slow; for numerics tests).
    """
    platform = target_platform() if platform is None else platform
    query_ids, key_ids = mask.segment_ids(query.shape[0])
    if platform == "tpu" or interpret:
        return _splash_over_mesh(query, key, value, mask.heads, query_ids, key_ids, scale, interpret)
    return _cudnn(query, key, value, mask.heads, query_ids, key_ids, scale)


def target_platform() -> str:
    """The platform being compiled for: the mesh in context's devices (compile-only TPUs too), else the default."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def _common_fallback_reason(mask: AttentionMask, bias: Array | None, attention_dropout: bool) -> str | None:
    if mask.dynamic:
        return mask.dynamic
    if bias is not None:
        return "an additive position bias (relative or ALiBi); use position='rope', 'learned', 'sinusoidal' or 'none'"
    if attention_dropout:
        return "attention-probability dropout (training with dropout_rate > 0)"
    return None


# --- TPU: splash attention -------------------------------------------------------------------------
def splash_fallback_reason(query: Array, key: Array, mask: AttentionMask) -> str | None:
    """Why splash cannot take this call (shapes, mesh), or None."""
    if query.shape[1] % SPLASH_BLOCK_SIZES[-1] or key.shape[1] % SPLASH_BLOCK_SIZES[-1]:
        return f"splash needs query and key lengths that are multiples of {SPLASH_BLOCK_SIZES[-1]}"
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    _, length_axes, heads_axes = _activation_mesh_axes()
    if _axes_size(mesh, length_axes) > 1:
        return "splash with the sequence axis sharded over devices"
    if len(mask.heads) > 1 and _axes_size(mesh, heads_axes) > 1:
        return "splash with per-head masks and the heads sharded over devices"
    return None


def _splash(query: Array, key: Array, value: Array, query_ids: Array, key_ids: Array, *,
            heads: tuple[str, ...], scale: float, interpret: bool) -> Array:
    """One device's splash call: [B, L, H, D] in and out; the kernel itself is per example, [H, L, D]."""
    num_heads, lq, lk = query.shape[2], query.shape[1], key.shape[1]
    heads = heads if len(heads) > 1 else heads * num_heads
    kernel = splash.make_splash_mha(_splash_mask(heads, lq, lk), block_sizes=_splash_block_sizes(lq, lk),
                                    head_shards=1, q_seq_shards=1, interpret=interpret)
    heads_major = lambda x: jnp.swapaxes(x, 1, 2)
    segment_ids = splash.SegmentIds(query_ids, key_ids)
    out = jax.vmap(kernel)(heads_major(query * jnp.asarray(scale, query.dtype)), heads_major(key),
                           heads_major(value), segment_ids)
    return heads_major(out)


def _splash_over_mesh(query, key, value, heads: tuple[str, ...], query_ids: Array, key_ids: Array,
                      scale: float, interpret: bool) -> Array:
    """Splash per device under the mesh in context (batch and heads split as the logical rules say)."""
    mesh = jax.sharding.get_abstract_mesh()
    run = functools.partial(_splash, heads=heads, scale=scale, interpret=interpret)
    if mesh.empty or mesh.size == 1:
        return run(query, key, value, query_ids, key_ids)
    batch_axes, _, heads_axes = _activation_mesh_axes()
    qkv = jax.sharding.PartitionSpec(batch_axes, None, heads_axes, None)
    ids = jax.sharding.PartitionSpec(batch_axes, None)
    return jax.shard_map(run, mesh=mesh, in_specs=(qkv, qkv, qkv, ids, ids), out_specs=qkv,
                         check_vma=False)(query, key, value, query_ids, key_ids)


def _splash_mask(heads: tuple[str, ...], lq: int, lk: int) -> splash.MultiHeadMask:
    shape = (lq, lk)
    masks = {"causal": lambda: splash.CausalMask(shape), "bidirectional": lambda: splash.FullMask(shape),
             "backward": lambda: splash.LocalMask(shape, window_size=(0, None), offset=0)}
    return splash.MultiHeadMask([masks[h]() for h in heads])


def _splash_block_sizes(lq: int, lk: int) -> splash.BlockSizes:
    bq = next(b for b in SPLASH_BLOCK_SIZES if lq % b == 0)
    bkv = next(b for b in SPLASH_BLOCK_SIZES if lk % b == 0)
    return splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                             block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)


def _activation_mesh_axes() -> tuple:
    """(batch, length, heads): their mesh axes under the logical rules in context (None: not split)."""
    return tuple(nn.logical_to_mesh_axes(("activation_batch", "activation_length", "activation_heads")))


def _axes_size(mesh, axes) -> int:
    names = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[name] for name in names)


# --- GPU: cuDNN flash attention --------------------------------------------------------------------
def cudnn_fallback_reason(query: Array, mask: AttentionMask) -> str | None:
    """Why cuDNN flash attention cannot take this call, or None."""
    if mask.packed:
        return "packed examples (segment ids) with cuDNN, which takes causal and padding masks only"
    if len(mask.heads) > 1 or mask.heads[0] == "backward":
        return "per-head or backward masks with cuDNN, which takes causal and padding masks only"
    if query.shape[-1] % 8 or query.shape[-1] > CUDNN_MAX_HEAD_DIM:
        return f"cuDNN flash attention needs a head_dim that is a multiple of 8 and <= {CUDNN_MAX_HEAD_DIM}"
    if jnp.dtype(query.dtype).name not in CUDNN_DTYPES:
        return f"cuDNN flash attention needs {' or '.join(CUDNN_DTYPES)} activations (dtype='bfloat16')"
    return None


def _cudnn(query: Array, key: Array, value: Array, heads: tuple[str, ...], query_ids: Array, key_ids: Array,
           scale: float) -> Array:
    """Padding as lengths: t5x_like's batches and prompts are right-padded, so real tokens come first."""
    lengths = lambda ids: jnp.sum(ids != 0, axis=1, dtype=jnp.int32)
    return jax.nn.dot_product_attention(
        query, key, value, scale=scale, is_causal=heads[0] == "causal",
        query_seq_lengths=lengths(query_ids), key_value_seq_lengths=lengths(key_ids), implementation="cudnn")
