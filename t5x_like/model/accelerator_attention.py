"""Accelerator attention kernels behind `attention_kernel="accelerated"`.

Owns whether a fused kernel can take one attention call, which one it is, and the call itself:
  TPU  Pallas kernels, three of them (`tpu_kernel` picks):
       splash          splash attention (jax.experimental.pallas.ops.tpu.splash_attention) over a
                       static mask per head (causal, bidirectional, backward) AND-ed with segment
                       ids (padding and packing); fully masked blocks are skipped.
       splash_dynamic  a prefix-LM (its prefix length is per example): splash over a dynamic
                       mask, one [Lq, Lk] per example built on the device (structure, padding and
                       packing in one), with the batch folded into splash's head axis; its block
                       map is computed from the mask, so the target's upper triangle is skipped
                       as the causal arm's is.
       flash_bias      an additive bias (T5 relative positions, ALiBi): the Pallas flash-attention
                       kernel (jax.experimental.pallas.ops.tpu.flash_attention) with its `ab` bias,
                       which has a backward for the bias too (a learned relative table trains);
                       causal masks skip their upper blocks, other structures (a prefix, backward
                       or per-head masks) are added to `ab` as large negatives, padding and
                       packing are segment ids. `ab` is [B, H, Lq, Lk] f32 in memory.
  GPU  cuDNN flash attention (jax.nn.dot_product_attention(implementation="cudnn")): causal as
       `is_causal`, padding as sequence lengths, any other structure (prefix, backward, per
       head) and packing as its boolean `mask`, a bias as its `bias`; bfloat16/float16.
Key/value heads fewer than the query heads (grouped- or multi-query attention) are repeated to
the query heads for the TPU kernels; cuDNN takes them as they are.
`fallback_reason` says why no fused kernel can take a call (None: one can), `kernel_name` which
kernel does, `accelerated_attention` runs it. The dispatcher (attention.attend) asks the first,
runs the third or the portable kernels, and logs the reason once per process.

What falls back, and why: attention-probability dropout, a decoding step (each row's query at
its own cache slot), lengths that are not a multiple of the TPU kernels' 128-wide blocks, a
sequence-sharded length axis or per-head static masks with sharded heads (TPU), float32 or a
head_dim over 128 / not a multiple of 8 (cuDNN), and any other platform (CPU).

Does not own: what a mask means and its AttentionMask (masks.py), which mask each stack uses
(transformer.py), which kernel a call runs and the portable kernels (attention.py).
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel

from t5x_like.model import masks
from t5x_like.model.masks import AttentionMask

Array = jnp.ndarray

# The TPU kernels' query/key blocks must be multiples of 128 lanes; the largest that divides a length is used.
SPLASH_BLOCK_SIZES = (512, 256, 128)
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128  # before Hopper; Hopper and later take 256, which jax can check only on the device
# A structure masked in flash's `ab`: far below any logit, and still finite when the kernel adds its
# own mask value (-0.7 x f32 max) for a segment mismatch on top, so no row's running max is -inf.
AB_MASKED = -0.25 * float(jnp.finfo(jnp.float32).max)


def fallback_reason(query: Array, key: Array, mask: AttentionMask, bias: Array | None,
                    attention_dropout: bool, platform: str | None = None, interpret: bool = False) -> str | None:
    """Why no fused kernel can take this call, or None when `accelerated_attention` can.

    query [B, Lq, H, D], key [B, Lk, Hkv, D] (H % Hkv == 0). platform: "tpu" (Pallas), "gpu"
    (cuDNN), anything else has none; None: the platform being compiled for (`target_platform`).
    interpret=True: the TPU kernels in Pallas interpret mode, on any platform.
    """
    del bias  # every fused kernel here takes one
    reason = _common_fallback_reason(mask, attention_dropout)
    if reason is not None:
        return reason
    platform = target_platform() if platform is None else platform
    if platform == "tpu" or interpret:
        return tpu_fallback_reason(query, key, mask)
    if platform == "gpu":
        return cudnn_fallback_reason(query, mask)
    return (f"no accelerator kernel on {platform} (Pallas needs a TPU, cuDNN a GPU; "
            "attention_implementation='interpret' runs the TPU kernels interpreted)")


def kernel_name(mask: AttentionMask, bias: Array | None, platform: str | None = None,
                interpret: bool = False) -> str:
    """The fused kernel `accelerated_attention` runs for a call `fallback_reason` accepts."""
    platform = target_platform() if platform is None else platform
    return tpu_kernel(mask, bias) if platform == "tpu" or interpret else "cudnn"


def accelerated_attention(query: Array, key: Array, value: Array, mask: AttentionMask, scale: float,
                          bias: Array | None = None, platform: str | None = None,
                          interpret: bool = False) -> Array:
    """softmax(scale · q·kᵀ + bias under mask) · v by the fused kernel of `platform` (as in
    `fallback_reason`, which must have returned None for this call).

    query [B, Lq, H, D], key / value [B, Lk, Hkv, D], bias [B|1, H|1, Lq, Lk] or None;
    returns [B, Lq, H, D]. interpret=True runs the TPU kernels in Pallas interpret mode (any
    platform; slow; for numerics tests).
    """
    platform = target_platform() if platform is None else platform
    if platform != "tpu" and not interpret:
        return _cudnn(query, key, value, mask, bias, scale)
    key, value = (repeat_kv_heads(x, query.shape[2] // x.shape[2]) for x in (key, value))
    query = query * jnp.asarray(scale, query.dtype)
    kind = tpu_kernel(mask, bias)
    if kind == "splash":
        return _splash_over_mesh(query, key, value, mask, interpret)
    if kind == "splash_dynamic":
        return _splash_dynamic_over_mesh(query, key, value, mask, interpret)
    return _flash_over_mesh(query, key, value, mask, bias, interpret)


def target_platform() -> str:
    """The platform being compiled for: the mesh in context's devices (compile-only TPUs too), else the default."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def repeat_kv_heads(x: Array, groups: int) -> Array:
    """[B, L, Hkv, D] -> [B, L, Hkv * groups, D], each key/value head repeated for its group of query
    heads (query head h reads head h // groups); the gradient sums each group back. (Here rather than
    in attention.py, which imports this module: the blockwise kernel repeats heads the same way.)"""
    return x if groups == 1 else jnp.repeat(x, groups, axis=2)


def _common_fallback_reason(mask: AttentionMask, attention_dropout: bool) -> str | None:
    if mask.query_slots is not None:
        return "a decoding step: each row's query sits at its own cache slot"
    if attention_dropout:
        return "attention-probability dropout (training with dropout_rate > 0)"
    return None


# --- TPU -------------------------------------------------------------------------------------------
def tpu_kernel(mask: AttentionMask, bias: Array | None) -> str:
    """Which Pallas kernel takes the call: "flash_bias" (a bias), "splash_dynamic" (a prefix-LM) or "splash"."""
    if bias is not None:
        return "flash_bias"
    return "splash_dynamic" if mask.prefix_indicator is not None else "splash"


def tpu_fallback_reason(query: Array, key: Array, mask: AttentionMask) -> str | None:
    """Why no Pallas kernel can take this call (shapes, mesh), or None."""
    if query.shape[1] % SPLASH_BLOCK_SIZES[-1] or key.shape[1] % SPLASH_BLOCK_SIZES[-1]:
        return f"the TPU kernels need query and key lengths that are multiples of {SPLASH_BLOCK_SIZES[-1]}"
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    _, length_axes, heads_axes = _activation_mesh_axes()
    if _axes_size(mesh, length_axes) > 1:
        return "the TPU kernels with the sequence axis sharded over devices"
    if len(mask.heads) > 1 and _axes_size(mesh, heads_axes) > 1:
        return "per-head masks with the heads sharded over devices"
    return None


def _splash(query: Array, key: Array, value: Array, query_ids: Array, key_ids: Array, *,
            heads: tuple[str, ...], interpret: bool) -> Array:
    """One device's splash call: [B, L, H, D] in and out; the kernel itself is per example, [H, L, D]."""
    num_heads, lq, lk = query.shape[2], query.shape[1], key.shape[1]
    heads = heads if len(heads) > 1 else heads * num_heads
    kernel = splash.make_splash_mha(_splash_mask(heads, lq, lk), block_sizes=_splash_block_sizes(lq, lk),
                                    head_shards=1, q_seq_shards=1, interpret=interpret)
    segment_ids = splash.SegmentIds(query_ids, key_ids)
    out = jax.vmap(kernel)(_heads_major(query), _heads_major(key), _heads_major(value), segment_ids)
    return _heads_major(out)


def _splash_over_mesh(query, key, value, mask: AttentionMask, interpret: bool) -> Array:
    """Splash per device under the mesh in context (batch and heads split as the logical rules say)."""
    query_ids, key_ids = mask.segment_ids(query.shape[0])
    run = functools.partial(_splash, heads=mask.heads, interpret=interpret)
    return _over_mesh(run, (query, key, value, query_ids, key_ids), ("qkv", "qkv", "qkv", "ids", "ids"))


def _splash_dynamic(query: Array, key: Array, value: Array, visible: Array, *, interpret: bool) -> Array:
    """One device's splash over per-example dynamic masks `visible` [B, Lq, Lk]: the batch is
    folded into splash's head axis (example b's heads read mask b), so one call serves the batch."""
    batch, lq, num_heads, head_dim = query.shape
    lk = key.shape[1]
    kernel = splash.make_splash_mha(visible, block_sizes=_splash_block_sizes(lq, lk), head_shards=1,
                                    q_seq_shards=1, interpret=interpret)
    kernel = _mask_per_example_for_every_head(kernel, num_heads)
    fold = lambda x: _heads_major(x).reshape(batch * num_heads, x.shape[1], head_dim)
    out = kernel(fold(query), fold(key), fold(value))
    return _heads_major(out.reshape(batch, num_heads, lq, head_dim))


def _mask_per_example_for_every_head(kernel, num_heads: int):
    """A splash kernel built over B masks (one 'head' each) made to serve B x num_heads heads:
    each example's block map repeated for its heads, all pointing at that example's mask blocks."""
    def repeat(info):
        if info is None:
            return None
        each = lambda a: None if a is None else jnp.repeat(a, num_heads, axis=0)
        # make_splash_mha turns every field into an array, this flag too (a tracer under jit,
        # which its __call__ cannot branch on); it only names the profiler scope.
        return info._replace(data_next=each(info.data_next), mask_next=each(info.mask_next),
                             block_mask=each(info.block_mask), is_dynamic_mask=True)
    return splash_kernel.SplashAttentionKernel(repeat(kernel.fwd_mask_info), repeat(kernel.dq_mask_info),
                                               repeat(kernel.dkv_mask_info), **kernel.kwargs)


def _splash_dynamic_over_mesh(query, key, value, mask: AttentionMask, interpret: bool) -> Array:
    run = functools.partial(_splash_dynamic, interpret=interpret)
    return _over_mesh(run, (query, key, value, visible_with_padding_rows(mask, query.shape[0])),
                      ("qkv", "qkv", "qkv", "example_mask"))


def visible_with_padding_rows(mask: AttentionMask, batch: int) -> Array:
    """[B, Lq, Lk] bool: structure & segment ids as `segment_ids()` folds padding and packing in,
    so a padding query sees the padding keys (splash needs every row to see some key)."""
    query_ids, key_ids = mask.segment_ids(batch)
    structure = structure_only(mask).dense()
    return jnp.broadcast_to(structure[:, 0] & (query_ids[:, :, None] == key_ids[:, None, :]),
                            (batch,) + mask.lengths)


def structure_only(mask: AttentionMask) -> AttentionMask:
    """The mask without padding and packing: its causal / prefix / per-head structure alone."""
    return mask.replace(query_valid=None, key_valid=None, query_segment_ids=None, key_segment_ids=None)


def _flash(query: Array, key: Array, value: Array, ab: Array, query_ids: Array, key_ids: Array, *,
           causal: bool, interpret: bool) -> Array:
    """One device's Pallas flash attention with bias `ab` [B|1, H|1, Lq, Lk]: [B, L, H, D] in and out."""
    batch, lq, num_heads, _ = query.shape
    lk = key.shape[1]
    ab = jnp.broadcast_to(ab.astype(jnp.float32), (batch, num_heads, lq, lk))
    bq, bk = (next(b for b in SPLASH_BLOCK_SIZES if n % b == 0) for n in (lq, lk))
    blocks = pallas_flash.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1, block_q_major_dkv=bq,
                                     block_k_major_dkv=bk, block_k_dkv=bk, block_q_dkv=bq, block_k_major_dq=bk,
                                     block_k_dq=bk, block_q_dq=bq)

    def run(q, k, v, ab):
        return pallas_flash.flash_attention(q, k, v, ab, pallas_flash.SegmentIds(query_ids, key_ids), causal=causal,
                                            sm_scale=1.0, block_sizes=blocks)

    run = _in_tpu_interpret_mode(run) if interpret else run
    return _heads_major(run(_heads_major(query), _heads_major(key), _heads_major(value), ab))


def _flash_over_mesh(query, key, value, mask: AttentionMask, bias: Array, interpret: bool) -> Array:
    causal = mask.heads == ("causal",) and mask.prefix_indicator is None
    ab = bias.astype(jnp.float32)
    if not causal and (set(mask.heads) != {"bidirectional"} or mask.prefix_indicator is not None):
        ab = ab + jnp.where(structure_only(mask).dense(), 0.0, AB_MASKED)
    query_ids, key_ids = mask.segment_ids(query.shape[0])
    run = functools.partial(_flash, causal=causal, interpret=interpret)
    return _over_mesh(run, (query, key, value, ab, query_ids, key_ids), ("qkv", "qkv", "qkv", "ab", "ids", "ids"))


def _in_tpu_interpret_mode(fn):
    """fn with every Pallas TPU kernel it traces, forward and backward, run by the TPU interpreter
    (flash_attention has no `interpret` argument; its backward kernels are traced at transpose time)."""
    @jax.custom_vjp
    def run(*args):
        with pltpu.force_tpu_interpret_mode():
            return fn(*args)

    def forward(*args):
        with pltpu.force_tpu_interpret_mode():
            return jax.vjp(fn, *args)

    def backward(vjp, cotangent):
        with pltpu.force_tpu_interpret_mode():
            return vjp(cotangent)

    run.defvjp(forward, backward)
    return run


def _heads_major(x: Array) -> Array:
    """[B, L, H, D] <-> [B, H, L, D]."""
    return jnp.swapaxes(x, 1, 2)


def _over_mesh(run, args: tuple, kinds: tuple[str, ...]) -> Array:
    """`run` per device under the mesh in context (batch and heads split as the logical rules say).
    kinds: per argument, "qkv" [B, L, H, D], "ids" [B, L], "example_mask" [B, Lq, Lk] or
    "ab" [B|1, H|1, Lq, Lk]; returns [B, Lq, H, D]."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return run(*args)
    batch_axes, _, heads_axes = _activation_mesh_axes()
    P = jax.sharding.PartitionSpec
    qkv = P(batch_axes, None, heads_axes, None)

    def spec(kind, x):
        if kind == "ab":
            return P(batch_axes if x.shape[0] > 1 else None, heads_axes if x.shape[1] > 1 else None, None, None)
        return {"qkv": qkv, "ids": P(batch_axes, None), "example_mask": P(batch_axes, None, None)}[kind]

    return jax.shard_map(run, mesh=mesh, in_specs=tuple(spec(k, x) for k, x in zip(kinds, args)), out_specs=qkv,
                         check_vma=False)(*args)


def _splash_mask(heads: tuple[str, ...], lq: int, lk: int) -> splash.MultiHeadMask:
    shape = (lq, lk)
    kinds = {"causal": lambda: splash.CausalMask(shape), "bidirectional": lambda: splash.FullMask(shape),
             "backward": lambda: splash.LocalMask(shape, window_size=(0, None), offset=0)}
    return splash.MultiHeadMask([kinds[h]() for h in heads])


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
    if query.shape[-1] % 8 or query.shape[-1] > CUDNN_MAX_HEAD_DIM:
        return f"cuDNN flash attention needs a head_dim that is a multiple of 8 and <= {CUDNN_MAX_HEAD_DIM}"
    if jnp.dtype(query.dtype).name not in CUDNN_DTYPES:
        return f"cuDNN flash attention needs {' or '.join(CUDNN_DTYPES)} activations (dtype='bfloat16')"
    return None


def cudnn_arguments(mask: AttentionMask, bias: Array | None, batch: int, dtype) -> dict:
    """jax.nn.dot_product_attention's keyword arguments for this call's mask and bias.

    Padding as sequence lengths (t5x_like's batches and prompts are right-padded, so real tokens
    come first); a plain causal structure as `is_causal`; any other structure (a prefix-LM's
    prefix, backward or per-head masks) and packing as the boolean `mask`, which cuDNN adds
    as a bias."""
    query_ids, key_ids = mask.segment_ids(batch)
    lengths = lambda ids: jnp.sum(ids != 0, axis=1, dtype=jnp.int32)
    causal = mask.heads == ("causal",) and mask.prefix_indicator is None
    plain = causal or set(mask.heads) == {"bidirectional"} and mask.prefix_indicator is None
    dense = None if plain else structure_only(mask).dense()
    if mask.packed:
        dense = masks.combine(dense, masks.segment_mask(mask.query_segment_ids, mask.key_segment_ids))
    return dict(bias=None if bias is None else bias.astype(dtype), mask=dense, is_causal=causal,
                query_seq_lengths=lengths(query_ids), key_value_seq_lengths=lengths(key_ids))


def _cudnn(query: Array, key: Array, value: Array, mask: AttentionMask, bias: Array | None, scale: float) -> Array:
    return jax.nn.dot_product_attention(query, key, value, scale=scale, implementation="cudnn",
                                        **cudnn_arguments(mask, bias, query.shape[0], query.dtype))
