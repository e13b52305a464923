"""Attention: softmax(q·kᵀ·scale + bias, masked)·v, the one function that decides which kernel
computes it for a call, and the portable kernels.

Owns:
  attend               the dispatcher: MultiHeadAttention's one call. Picks the kernel
                       (`kernel_for`), names a fallback in the log once per process
                       (`log_fallback`), and runs it on the call's masks.AttentionMask: its
                       dense form for einsum, blockwise and dot_product_attention, its
                       structure and segment ids for the accelerated kernels.
  kernel_for           which kernel runs, and why it is not the configured one:
                         decoding step (one query over the heads-major cache) under
                           blockwise or accelerated          -> einsum
                         accelerated that no fused kernel takes (accelerator_attention.
                           fallback_reason: CPU, attention dropout, lengths off the
                           TPU kernels' blocks, ...)        -> blockwise's rules below; logged
                         blockwise with attention dropout    -> einsum (the only kernel that
                                                                drops weights out); logged
                         blockwise at lengths where blocks
                           cannot pay (`blockwise_pays`)     -> einsum
                       einsum and dot_product_attention always run as configured
                       (TransformerConfig refuses dot_product_attention with dropout).
  einsum_attention     the reference: the full [B, H, Lq, Lk] logits, the mask's finite fill,
                       one softmax. Serves every case, the decoding step's heads-major cache
                       included, and is the only kernel that shows its weights (attention
                       analysis) or drops them out.
  blockwise_attention  the same function one (query block, key block) pair at a time, with an
                       online softmax (running max and sum, f32), skipping the pairs that the
                       mask hides for every batch row and head (a causal mask's upper blocks, a
                       prefix-LM's target upper triangle, packing's cross-segment blocks,
                       padding). Its backward (`jax.custom_vjp`) keeps only the output and the
                       log-sum-exp per query and recomputes each pair's weights, so neither pass
                       holds [B, H, Lq, Lk] floats; it returns gradients for query, key, value
                       and bias (a learned relative-position table trains through it).
  recording_kernels    while open, collects the kernel each attention role (encoder self,
                       decoder self, cross) traced, by name (`describe_choice`), with any
                       fallback: what `t5x-like compile` prints.
  add_bias             logits + a bias that broadcasts over batch (and heads), whose gradient sums
                       the broadcast rows as a matrix product with ones: XLA:CPU's reduce over a
                       leading axis ran ~80x slower (a third of a tiny model's train step), and the
                       product adds the rows in order, first to last.

Shapes everywhere: query [B, Lq, H, D]; key/value [B, Lk, Hkv, D] (or, for the einsum path, the
decoding cache's [B, Hkv, slots, D]) with H a multiple of Hkv: grouped-query attention (Hkv = 1:
multi-query; Hkv = H: multi-head), query head h reading key/value head h // (H / Hkv); a dense
mask [B|1, H|1, Lq, Lk], True = may attend (masks.py); bias the same shape or None. Einsum
contracts each key/value head with its group of query heads as they lie (no repeated keys);
jax.nn.dot_product_attention takes groups itself; blockwise repeats each key/value head over its
group (`repeat_kv_heads`) before its blocks. Does not own projections, caches, RoPE (applied to q
and k before any kernel, so kernels need nothing for it), what a mask means (masks.py) or the
fused accelerator kernels (accelerator_attention.py).

A query row whose mask is all False (a padding query) gets, like the einsum path's finite fill,
uniform weights over all Lk keys: the mean of the values.

Worked example of the skipping, causal mask over L = 8 with blocks of 4 (2 x 2 pairs):

    needed pairs       the upper-right pair (queries 0-3, keys 4-7) is hidden for every
    1 0                row and head: it is never computed, forward or backward. With
    1 1                B rows of different padding, a pair is skipped only if all rows hide it.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from t5x_like.model import accelerator_attention
from t5x_like.model.accelerator_attention import repeat_kv_heads
from t5x_like.model.masks import AttentionMask

Array = jnp.ndarray
F32 = jnp.float32
KERNELS = ("einsum", "dot_product_attention", "blockwise", "accelerated")

CACHE_LAYOUT = "bhkd"  # a decoding step's key/value cache: heads before slots

_log = logging.getLogger(__name__)


class KernelChoice(NamedTuple):
    """The kernel a call runs; `fallback`: why it is not the configured one (None: it is);
    `logged`: whether `attend` names that fallback in the log (once per process)."""

    kernel: str
    fallback: str | None = None
    logged: bool = False


def attend(query: Array, key: Array, value: Array, mask: AttentionMask, bias: Array | None = None, *,
           kernel: str, scale: float, blocks: tuple[int, int] = (128, 128), kv_layout: str = "bkhd",
           implementation: str | None = None, attention_dropout: bool = False,
           transform_weights: Callable[[Array], Array] | None = None, weights_dtype=F32) -> Array:
    """softmax(q·kᵀ·scale + bias under mask)·v [B, Lq, H, D] by the kernel `kernel_for` picks.

    key/value: [B, Lk, Hkv, D] (or [B, Hkv, slots, D] with kv_layout=CACHE_LAYOUT), Hkv
    dividing H (grouped-query attention; see the module docstring).

    kernel: TransformerConfig.attention_kernel; blocks: its (attention_block_q,
    attention_block_k); implementation: its attention_implementation (dot_product_attention's
    `implementation`; "interpret" runs accelerated's splash interpreted). kv_layout: "bkhd", or
    CACHE_LAYOUT for a decoding step's cache (which makes the call a decoding step).
    transform_weights: applied by the einsum kernel to the weights [B, H, Lq, Lk] before they
    multiply the values (MultiHeadAttention's `sow` and attention dropout); attention_dropout:
    whether it drops weights out, so that a kernel without dropout falls back to einsum.
    weights_dtype: the einsum kernel's weights dtype.
    """
    choice = kernel_for(kernel, query, key, mask, bias, decoding_step=kv_layout == CACHE_LAYOUT,
                        attention_dropout=attention_dropout, blocks=blocks, interpret=implementation == "interpret")
    if choice.logged:
        log_fallback(kernel, choice.kernel, choice.fallback)
    if _recorded is not None:
        _recorded.setdefault(attention_role(), set()).add(
            describe_choice(choice, mask, bias, interpret=implementation == "interpret"))
    if choice.kernel == "accelerated":
        return accelerator_attention.accelerated_attention(query, key, value, mask, scale, bias,
                                                           interpret=implementation == "interpret")
    if choice.kernel == "dot_product_attention":
        return _dot_product_attention(query, key, value, mask.dense(), bias, scale, kv_layout, implementation)
    if choice.kernel == "blockwise":
        groups = _query_groups(query, key.shape[2])
        return blockwise_attention(query, repeat_kv_heads(key, groups), repeat_kv_heads(value, groups),
                                   mask.dense(), bias, scale, *blocks)
    return einsum_attention(query, key, value, mask.dense(), bias, scale, kv_layout, weights_dtype=weights_dtype,
                            transform_weights=transform_weights)


def kernel_for(configured: str, query: Array, key: Array, mask: AttentionMask, bias: Array | None = None, *,
               decoding_step: bool = False, attention_dropout: bool = False, blocks: tuple[int, int] = (128, 128),
               interpret: bool = False, platform: str | None = None) -> KernelChoice:
    """The kernel a call runs (see the module docstring's table). query and key are only read
    for their shapes (and, under accelerated, dtype); platform: as accelerator_attention's
    `fallback_reason` (None: the platform being compiled for)."""
    if configured not in KERNELS:
        raise ValueError(f"attention_kernel={configured!r}, expected one of {KERNELS}")
    if configured in ("einsum", "dot_product_attention"):
        return KernelChoice(configured)
    if decoding_step:
        return KernelChoice("einsum", "a decoding step: one query over the heads-major cache")
    if configured == "accelerated":
        refusal = accelerator_attention.fallback_reason(query, key, mask, bias, attention_dropout, platform, interpret)
        if refusal is None:
            return KernelChoice("accelerated")
        portable = _portable_choice(attention_dropout, (query.shape[1], key.shape[1]), blocks)
        return KernelChoice(portable.kernel, refusal, logged=True)
    return _portable_choice(attention_dropout, (query.shape[1], key.shape[1]), blocks)


def _portable_choice(attention_dropout: bool, lengths: tuple[int, int], blocks: tuple[int, int]) -> KernelChoice:
    """blockwise, unless the call needs attention dropout or its lengths are too short for blocks to pay."""
    if attention_dropout:
        return KernelChoice("einsum", "attention dropout (training with dropout_rate > 0): blockwise has none, "
                                      "einsum drops the weights out", logged=True)
    if not blockwise_pays(*lengths, *blocks):
        return KernelChoice("einsum", f"blocks of {blocks} do not pay at (query, key) lengths {lengths}")
    return KernelChoice("blockwise")


# --- which kernel each attention ran, as `t5x-like compile` prints it ---------------------------
_recorded: dict[str, set[str]] | None = None


@contextlib.contextmanager
def recording_kernels() -> Iterator[dict[str, set[str]]]:
    """While open, every `attend` traced adds `describe_choice` of its call to the yielded dict
    under its `attention_role` (several layers of one role add one entry)."""
    global _recorded
    outer, _recorded = _recorded, {}
    try:
        yield _recorded
    finally:
        _recorded = outer


def attention_role() -> str:
    """"encoder self", "decoder self" or "cross", from the Flax module running the call
    (transformer.py names its stacks encoder_layers / decoder_layers and layers.py the
    attentions self_attention / cross_attention); "attention" outside a model."""
    from flax.linen import module as flax_module  # its module stack: the one public-enough path to the caller
    current = flax_module._context.module_stack[-1]
    path = "/".join(getattr(current, "path", ()) or ()) if current is not None else ""
    if "cross_attention" in path:
        return "cross"
    return "encoder self" if "encoder" in path else "decoder self" if path else "attention"


def describe_choice(choice: KernelChoice, mask: AttentionMask, bias: Array | None, interpret: bool = False) -> str:
    """The kernel a call runs, by name (the fused kernel's own under accelerated), and any fallback."""
    if choice.kernel == "accelerated":
        return f"accelerated: {accelerator_attention.kernel_name(mask, bias, interpret=interpret)}"
    return choice.kernel if choice.fallback is None else f"{choice.kernel} (fallback: {choice.fallback})"


def _query_groups(query: Array, kv_heads: int) -> int:
    """Query heads per key/value head (1: multi-head attention)."""
    heads = query.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot be grouped over {kv_heads} key/value heads: "
                         "num_kv_heads must divide num_heads")
    return heads // kv_heads


@functools.lru_cache(maxsize=None)
def log_fallback(configured: str, kernel: str, reason: str) -> None:
    """One log line per distinct fallback per process (not per call or trace); cache_clear() resets."""
    _log.warning("attention_kernel=%r falls back to the %s kernel: %s", configured, kernel, reason)


def _dot_product_attention(query: Array, key: Array, value: Array, mask: Array, bias: Array | None, scale: float,
                           kv_layout: str, implementation: str | None) -> Array:
    """jax.nn.dot_product_attention (XLA or cuDNN picks a fused kernel; it has no attention dropout)."""
    if kv_layout == CACHE_LAYOUT:  # the kernel takes [B, L, H, D]
        key, value = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)
    return jax.nn.dot_product_attention(
        query, key, value, bias=None if bias is None else bias.astype(query.dtype),
        mask=jnp.broadcast_to(mask, (query.shape[0], query.shape[2]) + mask.shape[2:]),
        scale=scale, implementation=implementation)


# Above this many logits per (row, head) blockwise runs whatever the lengths: it never holds them.
EINSUM_MAX_LOGITS = 1024 * 1024


def blockwise_pays(q_len: int, k_len: int, block_q: int, block_k: int) -> bool:
    """Whether blocks can beat the einsum kernel at these lengths: even when the mask hides
    every pair above the diagonal (causal, its best case), blockwise computes whole padded
    pairs, so it pays only if those cover under 3/4 of einsum's Lq x Lk. On 2 CPU cores
    (benchmarks/attention_kernel.py, blocks of 128, einsum ms / blockwise ms, two runs;
    benchmarks/results/attention_lengths.json): causal 512 (1.63, 1.48), 384 (1.32, 1.36)
    and 1000 (1.56, 1.88) pay; 320 (0.71, 0.82), 200 (0.64, 0.64) and a prefix-LM over 134
    positions (0.25, 0.24: its pairs cover 3.6x einsum's products) do not; causal 256
    (0.88, 1.13) is a toss-up and runs einsum. Beyond EINSUM_MAX_LOGITS (e.g. large blocks
    on an accelerator over 2 x 1024 positions) blocks always pay, in memory."""
    if q_len * k_len > EINSUM_MAX_LOGITS:  # einsum's [B, H, Lq, Lk] would be too big to hold
        return True
    block_q, block_k = min(block_q, q_len), min(block_k, k_len)  # as blockwise_attention shrinks them
    n_q, n_k = -(-q_len // block_q), -(-k_len // block_k)
    pairs = sum(min(n_k, -(-(i + 1) * n_k // n_q)) for i in range(n_q))
    return pairs * block_q * block_k < 0.75 * q_len * k_len


# --- the reference -----------------------------------------------------------------------------

@jax.custom_vjp
def add_bias(logits: Array, bias: Array) -> Array:
    """logits + bias (bias [B|1, H|1, Lq, Lk], same dtype as logits); see the module docstring."""
    return logits + bias


def _add_bias_fwd(logits, bias):
    return logits + bias, bias


def _add_bias_bwd(bias, d_sum):
    return d_sum, sum_to_shape(d_sum, bias.shape)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def sum_to_shape(x: Array, shape: tuple[int, ...]) -> Array:
    """x summed over the axes where `shape` has 1 (x's broadcast axes), keeping them.

    Leading broadcast axes are contracted with a vector of ones (rows added in order, first to
    last, on every backend); any others are a plain sum.
    """
    broadcast = [a for a in range(x.ndim) if shape[a] == 1 and x.shape[a] != 1]
    leading = 0
    while leading < len(broadcast) and broadcast[leading] == leading:
        leading += 1
    if leading:
        rows = x.reshape((-1,) + x.shape[leading:])
        x = jnp.einsum("r,r...->...", jnp.ones(rows.shape[0], x.dtype), rows,
                       precision=lax.Precision.HIGHEST).reshape((1,) * leading + x.shape[leading:])
    rest = tuple(broadcast[leading:])
    return jnp.sum(x, axis=rest, keepdims=True) if rest else x

def einsum_attention(query: Array, key: Array, value: Array, mask: Array, bias: Array | None, scale: float,
                     kv_axes: str = "bkhd", weights_dtype=F32,
                     transform_weights: Callable[[Array], Array] | None = None) -> Array:
    """Full logits [B, H, Lq, Lk] (f32), masked entries set to finfo.min / 2, softmax, weights · v.

    kv_axes: the key/value layout, "bkhd" or the decoding cache's "bhkd"; its h axis holds Hkv
    heads. Grouped: the queries are viewed as [B, Lq, Hkv, H / Hkv, D] and each key/value head
    contracts with its group, so keys and values are never repeated; the logits' [B, Hkv, G, Lq,
    Lk] is [B, H, Lq, Lk] as it lies. transform_weights: applied to the weights [B, H, Lq, Lk]
    before they multiply the values (the module's `sow` and dropout).
    """
    batch, q_len, heads, dim = query.shape
    kv_heads = key.shape[kv_axes.index("h")]
    groups = _query_groups(query, kv_heads)
    grouped = query.reshape(batch, q_len, kv_heads, groups, dim)
    logits = jnp.einsum(f"bqhgd,{kv_axes}->bhgqk", grouped, key, preferred_element_type=F32)
    logits = logits.reshape(batch, heads, q_len, logits.shape[-1]) * scale
    if bias is not None:
        logits = add_bias(logits, bias.astype(F32))
    logits = jnp.where(mask, logits, jnp.finfo(F32).min * 0.5)
    weights = jax.nn.softmax(logits, axis=-1).astype(weights_dtype)
    if transform_weights is not None:
        weights = transform_weights(weights)
    weights = weights.reshape(batch, kv_heads, groups, q_len, weights.shape[-1])
    return jnp.einsum(f"bhgqk,{kv_axes}->bqhgd", weights, value).reshape(batch, q_len, heads, dim)


# --- blockwise ---------------------------------------------------------------------------------

def blockwise_attention(query: Array, key: Array, value: Array, mask: Array, bias: Array | None, scale: float,
                        block_q: int = 128, block_k: int = 128) -> Array:
    """`einsum_attention` (kv_axes "bkhd") computed per block pair; see the module docstring.

    Lengths that are not multiples of the blocks are padded (padded keys and queries masked
    out, padded outputs dropped); a block larger than its length shrinks to the length, and
    when one block holds both lengths the call is the einsum kernel.
    Returns [B, Lq, H, D] in query's dtype.
    """
    q_len, k_len = query.shape[1], key.shape[1]
    if q_len <= block_q and k_len <= block_k:  # one pair: nothing to skip, and einsum compiles faster
        return einsum_attention(query, key, value, mask, bias, scale, weights_dtype=query.dtype)
    block_q, block_k = min(block_q, q_len), min(block_k, k_len)
    mask = _pad_last_two(mask, block_q, block_k, False)
    bias = None if bias is None else _pad_last_two(bias, block_q, block_k, 0)
    q, k, v = (_heads_major(_pad_length(x, block)) for x, block in ((query, block_q), (key, block_k), (value, block_k)))
    needed = needed_block_pairs(mask, block_q, block_k)
    out = _flash(q, k, v, mask, bias, needed, float(scale), block_q, block_k)  # [B, Lq', H, D] f32
    out = out[:, :q_len]
    # A row that sees no key: uniform weights over the Lk real keys, as the einsum path gives.
    sees_some = jnp.any(mask[..., :q_len, :], axis=-1)  # [B|1, H|1, Lq]
    uniform = jnp.mean(value.astype(F32), axis=1)  # [B, H, D]
    out = jnp.where(jnp.swapaxes(sees_some, 1, 2)[..., None], out, uniform[:, None])
    return out.astype(query.dtype)


def needed_block_pairs(mask: Array, block_q: int, block_k: int) -> Array:
    """[Lq / block_q, Lk / block_k] bool: True where some batch row and head may attend inside the pair."""
    rows, heads, q_len, k_len = mask.shape
    blocks = mask.reshape(rows, heads, q_len // block_q, block_q, k_len // block_k, block_k)
    return jnp.any(blocks, axis=(0, 1, 3, 5))


def _pad_length(x: Array, block: int) -> Array:
    pad = -x.shape[1] % block
    return x if not pad else jnp.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0)])


def _pad_last_two(x: Array, block_q: int, block_k: int, fill) -> Array:
    pad_q, pad_k = -x.shape[2] % block_q, -x.shape[3] % block_k
    if not (pad_q or pad_k):
        return x
    return jnp.pad(x, [(0, 0), (0, 0), (0, pad_q), (0, pad_k)], constant_values=fill)


def _heads_major(x: Array) -> Array:
    """[B, L, H, D] -> [B, H, L, D]: a block of positions is then one slice per (row, head)."""
    return jnp.swapaxes(x, 1, 2)


def _block(x: Array, index, size: int, axis: int) -> Array:
    return lax.dynamic_slice_in_dim(x, index * size, size, axis=axis)


def _masked_logits(q_i, k_j, mask, bias, i, j, scale, block_q, block_k) -> Array:
    """One pair's logits [B, H, bq, bk] in f32, -inf where the mask hides the key."""
    logits = jnp.einsum("bhqd,bhkd->bhqk", q_i, k_j, preferred_element_type=F32) * scale
    if bias is not None:
        logits = logits + _block(_block(bias, i, block_q, 2), j, block_k, 3).astype(F32)
    return jnp.where(_block(_block(mask, i, block_q, 2), j, block_k, 3), logits, -jnp.inf)


def _forward(q, k, v, mask, bias, needed, scale, block_q, block_k):
    """Output [B, Lq, H, D] f32 and log-sum-exp [B, H, Lq] (0 for a row that sees no key)."""
    batch, heads, q_len, dim = q.shape
    num_k = k.shape[2] // block_k

    def query_block(i):
        q_i = _block(q, i, block_q, 2)

        def accumulate(j, carry):
            running_max, running_sum, acc = carry
            logits = _masked_logits(q_i, _block(k, j, block_k, 2), mask, bias, i, j, scale, block_q, block_k)
            new_max = jnp.maximum(running_max, jnp.max(logits, axis=-1))
            shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)  # all hidden so far: exp(-inf) = 0
            p = jnp.exp(logits - shift[..., None])
            rescale = jnp.exp(running_max - shift)
            v_j = _block(v, j, block_k, 2)
            acc = acc * rescale[..., None] + jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v_j,
                                                        preferred_element_type=F32)
            return new_max, running_sum * rescale + jnp.sum(p, axis=-1), acc

        def maybe_accumulate(j, carry):
            return lax.cond(needed[i, j], accumulate, lambda _, c: c, j, carry)

        init = (jnp.full((batch, heads, block_q), -jnp.inf, F32), jnp.zeros((batch, heads, block_q), F32),
                jnp.zeros((batch, heads, block_q, dim), F32))
        running_max, running_sum, acc = lax.fori_loop(0, num_k, maybe_accumulate, init)
        empty = running_sum == 0
        out = acc / jnp.where(empty, 1.0, running_sum)[..., None]
        return out, jnp.where(empty, 0.0, running_max + jnp.log(jnp.where(empty, 1.0, running_sum)))

    outs, lses = lax.map(query_block, jnp.arange(q_len // block_q))  # [nq, B, H, bq, D], [nq, B, H, bq]
    out = jnp.transpose(outs, (1, 0, 3, 2, 4)).reshape(batch, q_len, heads, dim)
    lse = jnp.transpose(lses, (1, 2, 0, 3)).reshape(batch, heads, q_len)
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _flash(q, k, v, mask, bias, needed, scale, block_q, block_k):
    """q, k, v heads-major [B, H, L, D] with lengths multiples of the blocks -> [B, Lq, H, D] f32."""
    return _forward(q, k, v, mask, bias, needed, scale, block_q, block_k)[0]


def _flash_fwd(q, k, v, mask, bias, needed, scale, block_q, block_k):
    out, lse = _forward(q, k, v, mask, bias, needed, scale, block_q, block_k)
    return out, (q, k, v, mask, bias, needed, out, lse)


def _flash_bwd(scale, block_q, block_k, residuals, d_out):
    """Per needed pair: recompute the weights from the log-sum-exp, then
    dV += Pᵀ·dO, dP = dO·Vᵀ, dS = P ∘ (dP − rowsum(dO ∘ O)), dQ += dS·K·scale,
    dK += dSᵀ·Q·scale, dBias = dS (summed over the dims the bias broadcasts)."""
    q, k, v, mask, bias, needed, out, lse = residuals
    d_out = _heads_major(d_out)  # [B, H, Lq, D]
    delta = jnp.sum(d_out * _heads_major(out), axis=-1)  # [B, H, Lq]
    num_q, num_k = q.shape[2] // block_q, k.shape[2] // block_k

    def key_block(carry, j):
        k_j, v_j = _block(k, j, block_k, 2), _block(v, j, block_k, 2)

        def pair(i, inner):
            d_k, d_v, d_q, d_bias = inner
            q_i = _block(q, i, block_q, 2)
            logits = _masked_logits(q_i, k_j, mask, bias, i, j, scale, block_q, block_k)
            p = jnp.exp(logits - _block(lse, i, block_q, 2)[..., None])
            do_i = _block(d_out, i, block_q, 2)
            d_v = d_v + jnp.einsum("bhqk,bhqd->bhkd", p, do_i, preferred_element_type=F32)
            d_p = jnp.einsum("bhqd,bhkd->bhqk", do_i, v_j, preferred_element_type=F32)
            d_s = p * (d_p - _block(delta, i, block_q, 2)[..., None])
            d_q_i = _block(d_q, i, block_q, 2) + scale * jnp.einsum("bhqk,bhkd->bhqd", d_s, k_j,
                                                                    preferred_element_type=F32)
            d_q = lax.dynamic_update_slice_in_dim(d_q, d_q_i, i * block_q, axis=2)
            d_k = d_k + scale * jnp.einsum("bhqk,bhqd->bhkd", d_s, q_i, preferred_element_type=F32)
            if d_bias is not None:
                d_s = sum_to_shape(d_s, bias.shape)
                d_bias = lax.dynamic_update_slice(d_bias, d_s, (0, 0, i * block_q, j * block_k))
            return d_k, d_v, d_q, d_bias

        def maybe_pair(i, inner):
            return lax.cond(needed[i, j], pair, lambda _, c: c, i, inner)

        d_q, d_bias = carry
        zeros = jnp.zeros(k_j.shape, F32)
        d_k, d_v, d_q, d_bias = lax.fori_loop(0, num_q, maybe_pair, (zeros, zeros, d_q, d_bias))
        return (d_q, d_bias), (d_k, d_v)

    d_bias0 = None if bias is None else jnp.zeros(bias.shape, F32)
    (d_q, d_bias), (d_k, d_v) = lax.scan(key_block, (jnp.zeros(q.shape, F32), d_bias0), jnp.arange(num_k))
    unstack = lambda x: jnp.transpose(x, (1, 2, 0, 3, 4)).reshape(k.shape)  # [nk, B, H, bk, D] -> [B, H, Lk, D]
    d_bias = None if bias is None else d_bias.astype(bias.dtype)
    return (d_q.astype(q.dtype), unstack(d_k).astype(k.dtype), unstack(d_v).astype(v.dtype), None, d_bias, None)


_flash.defvjp(_flash_fwd, _flash_bwd)
