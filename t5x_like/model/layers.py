"""The shared Flax layers that every layout is built from (there is no other copy).

Owns: dense projections, embeddings, norms, the MLP, multi-head attention
(projections, RoPE, the key/value cache), relative-position bias, and the
Transformer block (self-attention, optional cross-attention, MLP). Which
attention kernel a call runs, and the kernels, are `attention.py`'s
(`attention.attend`, called once per MultiHeadAttention call). How blocks are
stacked into encoders and decoders, and which mask each stack uses, is
`transformer.py`'s business; what a mask means is `masks.py`'s.

Every parameter carries logical axis names (`nn.with_logical_partitioning`)
and key activations are constrained by logical names
(`nn.with_logical_constraint`); `training/partitioning.py` maps both onto a device mesh.
Parameter axes: vocab, embed, heads, kv_heads (key/value projections), kv, mlp,
relpos_buckets, abspos, layers.
Activation axes: activation_batch, activation_length, activation_embed,
activation_heads, activation_kv_heads, activation_kv, activation_mlp, activation_vocab.

Dropout is active exactly when a 'dropout' RNG is supplied to `apply`.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like.model import attention as attention_lib
from t5x_like.model import masks as mask_lib
from t5x_like.model import positions as position_lib
from t5x_like.model.config import TransformerConfig

Array = jnp.ndarray

ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "silu": nn.silu,
    "linear": lambda x: x,
}

BATCH_LENGTH_EMBED = ("activation_batch", "activation_length", "activation_embed")
BATCH_LENGTH_HEADS_KV = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
# Keys and values: num_kv_heads heads (grouped-/multi-query attention), named apart from the
# queries' so that the rules can shard them differently.
BATCH_LENGTH_KV_HEADS_KV = ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv")
# The decoding cache's layout (MultiHeadAttention): key/value heads before slots (attention.CACHE_LAYOUT).
CACHE_AXES = ("activation_batch", "activation_kv_heads", "activation_length", "activation_kv")


def partitioned(init, axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(init, axes)


def constrain(x: Array, axes: tuple[str, ...]) -> Array:
    return nn.with_logical_constraint(x, axes)


def is_training(module: nn.Module) -> bool:
    return module.has_rng("dropout")


class Dense(nn.Module):
    """y = x · W (+ b), contracting the last `num_contracted` axes of x.

    `kernel_axes` names every kernel axis: the contracted input axes, then the
    output axes. Init: normal with std = init_scale / sqrt(fan_in).
    """

    features: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    num_contracted: int = 1
    use_bias: bool = False
    init_scale: float = 1.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        contracted_shape = x.shape[x.ndim - self.num_contracted:]
        fan_in = math.prod(contracted_shape)
        kernel = self.param(
            "kernel",
            partitioned(nn.initializers.normal(self.init_scale / math.sqrt(fan_in)), self.kernel_axes),
            contracted_shape + tuple(self.features), jnp.dtype(self.param_dtype))
        lhs_axes = tuple(range(x.ndim - self.num_contracted, x.ndim))
        rhs_axes = tuple(range(self.num_contracted))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                                ((lhs_axes, rhs_axes), ((), ())))
        if self.use_bias:
            bias = self.param("bias", partitioned(nn.initializers.zeros,
                                                  self.kernel_axes[self.num_contracted:]),
                              tuple(self.features), jnp.dtype(self.param_dtype))
            y = y + bias.astype(self.dtype)
        return y


def dense(config: TransformerConfig, features, kernel_axes, name: str, num_contracted: int = 1,
          init_scale: float = 1.0) -> Dense:
    features = tuple(features) if isinstance(features, (tuple, list)) else (features,)
    return Dense(features=features, kernel_axes=kernel_axes, num_contracted=num_contracted,
                 use_bias=config.use_bias, init_scale=init_scale, dtype=config.dtype,
                 param_dtype=config.param_dtype, name=name)


class Embed(nn.Module):
    """A [num_embeddings, features] table; `attend` is the tied output projection."""

    num_embeddings: int
    features: int
    axes: tuple[str, str] = ("vocab", "embed")
    init_std: float = 1.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self):
        self.embedding = self.param(
            "embedding", partitioned(nn.initializers.normal(self.init_std), self.axes),
            (self.num_embeddings, self.features), jnp.dtype(self.param_dtype))

    def __call__(self, ids: Array) -> Array:
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: Array) -> Array:
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding.astype(self.dtype))


def make_norm(config: TransformerConfig, name: str) -> nn.Module:
    """RMSNorm (T5, scale only) or LayerNorm (GPT-2, scale and bias)."""
    scale_init = partitioned(nn.initializers.ones, ("embed",))
    if config.norm == "rms":
        return nn.RMSNorm(epsilon=config.norm_epsilon, dtype=config.dtype,
                          param_dtype=config.param_dtype, scale_init=scale_init, name=name)
    return nn.LayerNorm(epsilon=config.norm_epsilon, dtype=config.dtype,
                        param_dtype=config.param_dtype, scale_init=scale_init,
                        bias_init=partitioned(nn.initializers.zeros, ("embed",)), name=name)


class MLP(nn.Module):
    """Position-wise feed-forward: plain (one activation) or gated (two, multiplied)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        gated = cfg.is_gated
        branches = []
        for i, activation in enumerate(cfg.mlp_activations):
            name = f"wi_{i}" if gated else "wi"
            branches.append(ACTIVATIONS[activation](dense(cfg, cfg.d_ff, ("embed", "mlp"), name)(x)))
        hidden = functools.reduce(jnp.multiply, branches)
        hidden = constrain(hidden, ("activation_batch", "activation_length", "activation_mlp"))
        hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=not is_training(self))
        return dense(cfg, cfg.d_model, ("mlp", "embed"), "wo")(hidden)


class MultiHeadAttention(nn.Module):
    """Attention of queries over keys/values under a mask and an optional bias.

    mask: masks.AttentionMask, which keys each query may see (its dense form is
    [B or 1, H or 1, Lq, Lk], True = may attend; see masks.py).
    bias: [B or 1, H or 1, Lq, Lk] added to the logits (relative position, ALiBi).
    query_positions / key_positions: [B, L], used for RoPE (and, when decoding,
    as the cache slot of each query).

    Key/value cache for generation (flax collection 'cache', see transformer.py and inference/decoding.py):
      cache_mode=None       no cache (training, scoring).
      cache_mode="prefill"  attend as usual and store this call's keys/values.
                          Self-attention (cache_length given) stores them in
                          `cache_length` slots, slot = position 0..L-1; cross-
                          attention (cache_length None) stores the encoder's.
      cache_mode="step"     one query per row at position query_positions[:, 0].
                          Self-attention writes its key/value into that slot
                          and attends over all slots (the caller's mask hides
                          unwritten ones); cross-attention reuses the stored
                          encoder keys/values and ignores inputs_kv.
    The kernel is `config.attention_kernel` as `attention.attend` resolves it
    (attention.kernel_for): "einsum" and "dot_product_attention" run as
    configured, decoding steps included; "blockwise" runs einsum for a
    decoding step, for training with attention dropout and at lengths too
    short for blocks to pay; "accelerated" runs einsum for a decoding step,
    and a call no fused kernel takes (logged once) runs by blockwise's rules.
    Only einsum sows the weights ('intermediates', attention analysis) and
    applies attention dropout.
    Keys and values have config.kv_heads heads (num_kv_heads: grouped- or multi-query
    attention when fewer than num_heads; query head h reads key/value head
    h // (num_heads / kv_heads)), and the cache holds only those.
    Keys are cached after RoPE, so a cached key never needs re-rotating. The
    cache is heads-major, [B, Hkv, slots, head_dim] (CACHE_AXES): a step's
    q·k and weights·v then contract it as it lies in memory, where a
    [B, slots, H, head_dim] cache was transposed whole, per layer, every step.
    """

    config: TransformerConfig
    use_rope: bool = False

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array, mask: mask_lib.AttentionMask, bias: Array | None = None,
                 query_positions: Array | None = None, key_positions: Array | None = None,
                 cache_mode: str | None = None, cache_length: int | None = None) -> Array:
        cfg = self.config
        if cache_mode not in (None, "prefill", "step"):
            raise ValueError(f"cache_mode={cache_mode!r}, expected None, 'prefill' or 'step'")
        project_query = dense(cfg, (cfg.num_heads, cfg.head_dim), ("embed", "heads", "kv"), "query")
        query = self._rotate(constrain(project_query(inputs_q), BATCH_LENGTH_HEADS_KV), query_positions)
        project = lambda name, x: constrain(dense(cfg, (cfg.kv_heads, cfg.head_dim), ("embed", "kv_heads", "kv"),
                                                  name)(x), BATCH_LENGTH_KV_HEADS_KV)
        if cache_mode == "step" and cache_length is None:  # cross: projected once, at prefill
            key, value = self._cache_variable("cached_key").value, self._cache_variable("cached_value").value
        else:
            key = self._rotate(project("key", inputs_kv), key_positions)
            value = project("value", inputs_kv)
            if cache_mode == "prefill":
                self._store_cache(key, value, cache_length)
            elif cache_mode == "step":
                key, value = self._extend_cache(key, value, query_positions)
        out = attention_lib.attend(
            query, key, value, mask, bias, kernel=cfg.attention_kernel,
            scale=cfg.head_dim ** -0.5 if cfg.scale_attention_by_head_dim else 1.0,
            blocks=(cfg.attention_block_q, cfg.attention_block_k),
            kv_layout=attention_lib.CACHE_LAYOUT if cache_mode == "step" else "bkhd",
            implementation=cfg.attention_implementation,
            attention_dropout=cfg.dropout_rate > 0 and is_training(self),
            transform_weights=self._sow_and_drop, weights_dtype=cfg.dtype)
        out = constrain(out, BATCH_LENGTH_HEADS_KV)
        return dense(cfg, cfg.d_model, ("heads", "kv", "embed"), "out", num_contracted=2)(out)

    def _rotate(self, x: Array, positions: Array | None) -> Array:
        if not self.use_rope:
            return x
        cfg = self.config
        frequencies = position_lib.rope_inverse_frequencies(
            cfg.head_dim, cfg.rope_max_wavelength, cfg.rope_scaling, cfg.rope_scaling_factor, cfg.rope_low_freq_factor,
            cfg.rope_high_freq_factor, cfg.rope_original_max_length)
        return position_lib.apply_rope(x, positions, inverse_frequencies=frequencies)

    def _cache_variable(self, name: str, initial: Array | None = None):
        if initial is None and not self.has_variable("cache", name):
            raise ValueError(f"{self.path}: no cached '{name}'; run a prefill (cache_mode='prefill') "
                             "before decoding steps, and pass the 'cache' collection back in")
        return self.variable("cache", name, lambda: initial)

    def _store_cache(self, key: Array, value: Array, cache_length: int | None):
        """Prefill: keys/values [B, L, Hkv, D] into the heads-major cache, `cache_length` slots for
        self-attention (room for the tokens still to come), the encoder's L for cross-attention."""
        length = key.shape[1] if cache_length is None else cache_length
        if key.shape[1] > length:
            raise ValueError(f"prefill of {key.shape[1]} positions exceeds cache_length={cache_length}")
        pad = [(0, 0), (0, 0), (0, length - key.shape[1]), (0, 0)]
        for name, x in (("cached_key", key), ("cached_value", value)):
            self._cache_variable(name, jnp.zeros(())).value = constrain(jnp.pad(jnp.swapaxes(x, 1, 2), pad),
                                                                        CACHE_AXES)

    def _extend_cache(self, key: Array, value: Array, positions: Array) -> tuple[Array, Array]:
        """Step: writes each row's key/value [B, 1, Hkv, D] into slot positions[:, 0]; returns the
        whole heads-major cache [B, Hkv, slots, D] to attend over."""
        if key.shape[1] != 1:
            raise ValueError(f"a decoding step takes one token per row, got {key.shape[1]}")
        rows, slots = jnp.arange(key.shape[0]), positions[:, 0]
        cached = []
        for name, x in (("cached_key", key), ("cached_value", value)):
            variable = self._cache_variable(name)
            variable.value = variable.value.at[rows, :, slots].set(x[:, 0])  # [B, Hkv, D] at (row, slot)
            cached.append(constrain(variable.value, CACHE_AXES))
        return cached[0], cached[1]

    def _sow_and_drop(self, weights: Array) -> Array:
        """The einsum kernel's weights [B, H, Lq, Lk]: sown (kept only when 'intermediates' is
        mutable: attention analysis; free otherwise), then dropped out when training."""
        self.sow("intermediates", "attention_weights", weights)
        return nn.Dropout(self.config.dropout_rate)(weights, deterministic=not is_training(self))


class RelativePositionBias(nn.Module):
    """T5 relative position bias, one table per stack, shared by its layers.

    mode: "bidirectional" (encoder), "causal" (decoder) or "prefix" (prefix-LM:
    query/key pairs that are both in the prefix use bidirectional buckets from
    a second block of `num_buckets` rows; all other pairs use the causal
    buckets, so a future key inside the prefix never shares a bucket with a
    past key).
    """

    config: TransformerConfig
    mode: str

    @nn.compact
    def __call__(self, query_positions: Array, key_positions: Array,
                 prefix_indicator: Array | None = None) -> Array:
        cfg = self.config
        rows = cfg.relative_num_buckets * (2 if self.mode == "prefix" else 1)
        table = self.param("rel_embedding", partitioned(nn.initializers.normal(1.0), ("relpos_buckets", "heads")),
                           (rows, cfg.num_heads), jnp.dtype(cfg.param_dtype))
        relative = key_positions[:, None, :] - query_positions[:, :, None]  # [B, Lq, Lk]
        bucket = functools.partial(position_lib.relative_position_bucket,
                                   num_buckets=cfg.relative_num_buckets,
                                   max_distance=cfg.relative_max_distance)
        if self.mode == "bidirectional":
            buckets = bucket(relative, bidirectional=True)
        elif self.mode == "causal":
            buckets = bucket(relative, bidirectional=False)
        else:
            prefix = prefix_indicator.astype(bool)
            both_in_prefix = prefix[:, :, None] & prefix[:, None, :]
            buckets = jnp.where(both_in_prefix,
                                cfg.relative_num_buckets + bucket(relative, bidirectional=True),
                                bucket(relative, bidirectional=False))
        bias = jnp.take(table, buckets, axis=0)  # [B, Lq, Lk, H]
        return jnp.transpose(bias, (0, 3, 1, 2)).astype(cfg.dtype)


class Block(nn.Module):
    """One Transformer layer: self-attention, optional cross-attention, MLP.

    Cross-attention parameters are created only if the block is ever called
    with `encoded`, so the same block class serves encoders and decoders, and
    an encoder block reused by a decoder (shared encoder-decoder) gains just
    its cross-attention. `mask` / `cross_mask` are masks.AttentionMasks;
    `cache_mode` / `cache_length` are MultiHeadAttention's decoding arguments
    (self-attention gets both, cross-attention cache_mode only).
    """

    config: TransformerConfig
    use_rope: bool = False

    def setup(self):
        cfg = self.config
        self.self_attention = MultiHeadAttention(cfg, use_rope=self.use_rope)
        self.self_attention_norm = make_norm(cfg, "self_attention_norm")
        self.cross_attention = MultiHeadAttention(cfg, use_rope=False)
        self.cross_attention_norm = make_norm(cfg, "cross_attention_norm")
        self.mlp = MLP(cfg)
        self.mlp_norm = make_norm(cfg, "mlp_norm")
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def __call__(self, x: Array, mask: mask_lib.AttentionMask, bias: Array | None, positions: Array,
                 encoded: Array | None = None, cross_mask: mask_lib.AttentionMask | None = None,
                 cache_mode: str | None = None, cache_length: int | None = None) -> Array:
        x = self._residual(x, self.self_attention_norm,
                           lambda h: self.self_attention(h, h, mask, bias, positions, positions, cache_mode=cache_mode,
                                                         cache_length=cache_length))
        if encoded is not None:
            x = self._residual(x, self.cross_attention_norm,
                               lambda h: self.cross_attention(h, encoded, cross_mask, cache_mode=cache_mode))
        x = self._residual(x, self.mlp_norm, self.mlp)
        return constrain(x, BATCH_LENGTH_EMBED)

    def _residual(self, x, norm, sublayer):
        deterministic = not is_training(self)
        if self.config.norm_position == "pre":
            return x + self.dropout(sublayer(norm(x)), deterministic=deterministic)
        return norm(x + self.dropout(sublayer(x), deterministic=deterministic))


class ScannableBlock(Block):
    """A Block with the (carry, output) signature that nn.scan needs."""

    def __call__(self, x, mask, bias, positions, encoded=None, cross_mask=None, cache_mode=None,
                 cache_length=None):
        return super().__call__(x, mask, bias, positions, encoded, cross_mask, cache_mode, cache_length), None


REMAT_POLICIES = {
    "full": None,  # recompute everything
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
}


def layer_stack(config: TransformerConfig, num_layers: int, name: str, use_rope: bool):
    """The layers of one stack: a list of Blocks, or one scanned Block over a 'layers' axis."""
    block_class = ScannableBlock if config.scan_layers else Block
    if config.remat_policy != "none":
        block_class = nn.remat(block_class, policy=REMAT_POLICIES[config.remat_policy],
                               prevent_cse=not config.scan_layers)
    if not config.scan_layers:
        return [block_class(config, use_rope=use_rope, name=f"{name}_{i}") for i in range(num_layers)]
    # 'cache' (decoding's keys/values) is stacked over layers like the params.
    scanned = nn.scan(block_class, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True, "dropout": True},
                      in_axes=nn.broadcast, length=num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
    return scanned(config, use_rope=use_rope, name=name)
