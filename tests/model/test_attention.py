"""The blockwise attention kernel computes the einsum kernel's function: values and gradients
(query, key, value, bias) under every mask kind, and whole models give the same loss and
parameter gradients with either kernel. The dispatcher (`attend`, `kernel_for`) picks each
case's kernel, names its fallback, and runs the kernel on the mask's dense form unchanged."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.model import attention, masks, positions
from tests.model_fixtures import init_params, random_tokens, tiny_config

BATCH, HEADS, DIM = 2, 4, 8
LENGTH = 20  # not a multiple of the blocks below: padding is exercised everywhere
BLOCK = 8
TOL = dict(atol=2e-5, rtol=2e-5)


def _valid(length, real_lengths=(LENGTH, 13)):
    return jnp.arange(length)[None, :] < jnp.asarray(real_lengths)[:, None]


def _segments(length):
    """Two packed examples in row 0 (split at 7), one in row 1; padding after 17 in both."""
    positions = np.arange(length)
    ids = np.stack([np.where(positions < 7, 1, 2), np.ones(length, int)])
    ids[:, 17:] = 0
    return jnp.asarray(ids)


MASKS = {
    "causal": lambda: masks.causal_mask(LENGTH),
    "prefix_per_example": lambda: masks.prefix_lm_mask(jnp.arange(LENGTH)[None] < jnp.array([[5], [12]])),
    "bidirectional": lambda: masks.bidirectional_mask(LENGTH),
    "forward_backward_heads": lambda: masks.forward_backward_heads_mask(LENGTH, HEADS),
    "forward_backward_layers_odd": lambda: masks.forward_backward_layer_mask(LENGTH, 1),
    # Padding rows see nothing: fully masked rows (uniform attention in the einsum path).
    "causal_padding": lambda: masks.combine(masks.causal_mask(LENGTH), masks.padding_mask(_valid(LENGTH),
                                                                                          _valid(LENGTH))),
    "causal_packing": lambda: masks.combine(masks.causal_mask(LENGTH), masks.segment_mask(_segments(LENGTH),
                                                                                          _segments(LENGTH))),
    "bidirectional_packing_padding": lambda: masks.combine(
        masks.segment_mask(_segments(LENGTH), _segments(LENGTH)), masks.padding_mask(_valid(LENGTH), _valid(LENGTH))),
}


def _bias(kind, q_len, k_len, rng):
    if kind is None:
        return None
    if kind == "relative":  # a learned table's output: one [1, H, Lq, Lk] shared by the batch
        return jnp.asarray(rng.normal(size=(1, HEADS, q_len, k_len)), jnp.float32)
    if kind == "per_example":
        return jnp.asarray(rng.normal(size=(BATCH, HEADS, q_len, k_len)), jnp.float32)
    return positions.alibi_bias(jnp.arange(q_len)[None], jnp.arange(k_len)[None], HEADS)


def _value_and_grads(kernel, q, k, v, mask, bias, scale=0.35):
    """Output and d/d(q, k, v, bias) of a loss that weighs every output element differently."""
    weights = jnp.asarray(np.random.default_rng(7).normal(size=q.shape[:3] + (v.shape[-1],)), jnp.float32)

    def loss(q, k, v, bias):
        out = kernel(q, k, v, mask, bias, scale)
        return jnp.sum(out * weights), out

    argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=argnums, has_aux=True))(q, k, v, bias)
    return out, grads


def _blockwise(block_q=BLOCK, block_k=BLOCK):
    return lambda *args: attention.blockwise_attention(*args, block_q=block_q, block_k=block_k)


def _assert_kernels_agree(q, k, v, mask, bias, **blocks):
    expected_out, expected_grads = _value_and_grads(attention.einsum_attention, q, k, v, mask, bias)
    out, grads = _value_and_grads(_blockwise(**blocks), q, k, v, mask, bias)
    np.testing.assert_allclose(out, expected_out, **TOL)
    for name, got, want in zip(("query", "key", "value", "bias"), grads, expected_grads):
        np.testing.assert_allclose(got, want, err_msg=f"d/d{name}", **TOL)


def _qkv(rng, q_len=LENGTH, k_len=LENGTH):
    normal = lambda length: jnp.asarray(rng.normal(size=(BATCH, length, HEADS, DIM)), jnp.float32)
    return normal(q_len), normal(k_len), normal(k_len)


# Every mask kind with a bias in the fast loop (the bias's gradient too); without one in the full suite.
@pytest.mark.parametrize("bias_kind", [pytest.param(None, marks=pytest.mark.slow), "relative"])
@pytest.mark.parametrize("mask_kind", sorted(MASKS))
def test_blockwise_matches_einsum_values_and_gradients(mask_kind, bias_kind):
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng)
    _assert_kernels_agree(q, k, v, MASKS[mask_kind](), _bias(bias_kind, LENGTH, LENGTH, rng))


@pytest.mark.parametrize("bias_kind", ["alibi", "per_example"])
def test_blockwise_matches_einsum_with_other_biases(bias_kind):
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng)
    _assert_kernels_agree(q, k, v, MASKS["causal_padding"](), _bias(bias_kind, LENGTH, LENGTH, rng))


@pytest.mark.parametrize("block_q,block_k", [(8, 16), pytest.param(16, 8, marks=pytest.mark.slow),
                                             pytest.param(8, 64, marks=pytest.mark.slow)])
def test_blockwise_matches_einsum_for_cross_attention(block_q, block_k):
    """Lq != Lk, unequal blocks, padded keys and queries, blocks longer than the sequence."""
    rng = np.random.default_rng(2)
    q_len, k_len = 12, 30
    q, k, v = _qkv(rng, q_len, k_len)
    mask = masks.padding_mask(_valid(q_len, (12, 9)), _valid(k_len, (30, 17)))
    _assert_kernels_agree(q, k, v, mask, _bias("relative", q_len, k_len, rng), block_q=block_q, block_k=block_k)


def test_fully_masked_rows_attend_uniformly_like_einsum():
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng)
    mask = MASKS["causal_padding"]()
    out, _ = _value_and_grads(_blockwise(), q, k, v, mask, None)
    padding_rows = out[1, 13:]  # row 1 has 13 real positions
    np.testing.assert_allclose(padding_rows, jnp.broadcast_to(jnp.mean(v[1], axis=0), padding_rows.shape), **TOL)


@pytest.mark.parametrize("bias_shape", [(1, 4, 16, 24), (1, 1, 16, 24), (3, 1, 16, 24), (3, 4, 16, 24)])
def test_add_bias_gradient_sums_the_broadcast_axes(bias_shape):
    rng = np.random.default_rng(5)
    logits = jnp.asarray(rng.normal(size=(3, 4, 16, 24)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=bias_shape), jnp.float32)
    weights = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)
    loss = lambda add: lambda x, b: jnp.sum(jnp.tanh(add(x, b)) * weights)
    ours = jax.grad(loss(attention.add_bias), argnums=(0, 1))(logits, bias)
    plain = jax.grad(loss(jnp.add), argnums=(0, 1))(logits, bias)
    for a, b in zip(ours, plain):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sum_to_shape_adds_leading_rows_in_order():
    rows = jnp.asarray(np.random.default_rng(6).normal(size=(16, 2, 8, 8)) * 1e-3, jnp.float32)
    in_order = rows[0]
    for row in rows[1:]:
        in_order = in_order + row
    np.testing.assert_array_equal(jax.jit(attention.sum_to_shape, static_argnums=1)(rows, (1, 2, 8, 8))[0],
                                  in_order)


def test_hidden_block_pairs_are_skipped():
    """Values in a key block that no query block may see are never read: NaN there stays out."""
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng, 16, 16)
    v = v.at[:, 8:].set(jnp.nan)  # keys 8..15: hidden from queries 0..7 by the causal mask
    out = attention.blockwise_attention(q, k, v, masks.causal_mask(16), None, 1.0, block_q=8, block_k=8)
    assert np.isfinite(np.asarray(out[:, :8])).all()
    assert np.isnan(np.asarray(out[:, 8:])).all()
    np.testing.assert_array_equal(attention.needed_block_pairs(masks.causal_mask(16), 8, 8), [[1, 0], [1, 1]])


def test_a_pair_is_needed_if_any_row_or_head_needs_it():
    prefix = jnp.arange(16)[None] < jnp.array([[4], [12]])  # row 1's prefix reaches into keys 8..15
    needed = attention.needed_block_pairs(masks.prefix_lm_mask(prefix), 8, 8)
    np.testing.assert_array_equal(needed, [[1, 1], [1, 1]])
    np.testing.assert_array_equal(attention.needed_block_pairs(masks.prefix_lm_mask(prefix[:1]), 8, 8),
                                  [[1, 0], [1, 1]])


# --- the dispatcher ----------------------------------------------------------------------------

def _shapes(q_len, k_len=None, head_dim=DIM, dtype=jnp.float32):
    """Query and key as kernel_for reads them: shapes (and dtype) only."""
    return (jax.ShapeDtypeStruct((BATCH, q_len, HEADS, head_dim), dtype),
            jax.ShapeDtypeStruct((BATCH, k_len or q_len, HEADS, head_dim), dtype))


def _causal(length=LENGTH, rows=(LENGTH, 13)):
    return masks.self_attention_mask(("causal",), _valid(length, rows))


def _prefix_lm(length=LENGTH, prefixes=(5, 12)):
    prefix = jnp.arange(length)[None] < jnp.asarray(prefixes)[:, None]
    return masks.self_attention_mask(("causal",), _valid(length), prefix_indicator=prefix)


SMALL_BLOCKS = dict(blocks=(4, 4))  # 20 positions in blocks of 4: blocks pay (blockwise_pays)
BIAS = jnp.zeros((1, HEADS, LENGTH, LENGTH))
# (configured kernel, mask, bias, kernel_for options) -> (kernel that runs, words of the fallback or None, logged)
CHOICES = {
    "einsum": ("einsum", _causal, None, {}, ("einsum", None, False)),
    "dot_product_attention decoding": ("dot_product_attention", _causal, None, dict(decoding_step=True),
                                       ("dot_product_attention", None, False)),
    "blockwise": ("blockwise", _causal, None, SMALL_BLOCKS, ("blockwise", None, False)),
    "blockwise decoding": ("blockwise", _causal, None, dict(decoding_step=True), ("einsum", "decoding step", False)),
    "blockwise dropout": ("blockwise", _causal, None, dict(attention_dropout=True, **SMALL_BLOCKS),
                          ("einsum", "attention dropout", True)),
    "blockwise short": ("blockwise", _causal, None, {}, ("einsum", "do not pay", False)),
    "accelerated decoding": ("accelerated", _causal, None, dict(decoding_step=True),
                             ("einsum", "decoding step", False)),
    "accelerated prefix-LM cpu": ("accelerated", _prefix_lm, None, SMALL_BLOCKS,
                                  ("blockwise", "no accelerator kernel on cpu", True)),
    "accelerated bias off-block lengths tpu": ("accelerated", _causal, BIAS, dict(platform="tpu", **SMALL_BLOCKS),
                                               ("blockwise", "multiples of 128", True)),
    "accelerated dropout tpu": ("accelerated", _causal, None,
                                dict(platform="tpu", attention_dropout=True, **SMALL_BLOCKS), ("einsum", "dropout", True)),
    "accelerated cpu": ("accelerated", _causal, None, dict(platform="cpu", **SMALL_BLOCKS),
                        ("blockwise", "no accelerator kernel on cpu", True)),
    "accelerated cpu short": ("accelerated", _causal, None, dict(platform="cpu"),
                              ("einsum", "no accelerator kernel on cpu", True)),
    "accelerated tpu off-block lengths": ("accelerated", _causal, None, dict(platform="tpu", **SMALL_BLOCKS),
                                          ("blockwise", "multiples of 128", True)),
}


@pytest.mark.parametrize("case", sorted(CHOICES))
def test_kernel_for_picks_each_case_and_names_its_fallback(case):
    configured, mask, bias, options, (kernel, words, logged) = CHOICES[case]
    choice = attention.kernel_for(configured, *_shapes(LENGTH), mask(), bias, **options)
    assert (choice.kernel, choice.logged) == (kernel, logged), choice
    assert choice.fallback is None if words is None else words in choice.fallback, choice


def test_accelerated_runs_splash_where_it_takes_the_call():
    mask = _causal(128, (128, 100))
    assert attention.kernel_for("accelerated", *_shapes(128, head_dim=16), mask, platform="tpu") == ("accelerated",
                                                                                                       None, False)
    bf16 = _shapes(128, head_dim=16, dtype=jnp.bfloat16)
    assert attention.kernel_for("accelerated", *bf16, mask, platform="gpu").kernel == "accelerated"


def test_kernel_for_refuses_an_unknown_kernel():
    with pytest.raises(ValueError, match="attention_kernel='flash'"):
        attention.kernel_for("flash", *_shapes(LENGTH), _causal())


@pytest.mark.parametrize("length,pays", [(512, True), (384, True), (1000, True), (256, False), (320, False),
                                         (134, False), (128, False)])
def test_blockwise_runs_only_at_lengths_where_its_blocks_can_beat_einsum(length, pays):
    # Blocks of 128, as benchmarks/attention_kernel.py measured them on CPU (see blockwise_pays).
    chosen = attention.kernel_for("blockwise", *_shapes(length), _causal(length, (length, length)), blocks=(128, 128))
    assert chosen.kernel == ("blockwise" if pays else "einsum")


@pytest.fixture
def fallback_lines(caplog):
    """The dispatcher's fallback log lines, with its once-per-process memory cleared around the test."""
    attention.log_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        yield lambda: [r.getMessage() for r in caplog.records if r.name == attention.__name__]
    attention.log_fallback.cache_clear()


def _count_calls(monkeypatch, name):
    calls, kernel = [], getattr(attention, name)
    monkeypatch.setattr(attention, name, lambda *args, **kwargs: calls.append(name) or kernel(*args, **kwargs))
    return calls


def test_accelerated_prefix_lm_on_cpu_runs_blockwise_and_logs_the_reason_once(monkeypatch, fallback_lines):
    q, k, v = _qkv(np.random.default_rng(8))
    mask = _prefix_lm()
    calls = _count_calls(monkeypatch, "blockwise_attention")
    outs = [attention.attend(q, k, v, mask, kernel="accelerated", scale=0.35, blocks=(4, 4)) for _ in range(2)]
    assert calls == ["blockwise_attention"] * 2
    lines = fallback_lines()
    assert len(lines) == 1 and "'accelerated' falls back to the blockwise kernel: no accelerator kernel on cpu" \
        in lines[0], lines
    direct = attention.blockwise_attention(q, k, v, masks.prefix_lm_mask(mask.prefix_indicator)
                                           & masks.padding_mask(_valid(LENGTH), _valid(LENGTH)), None, 0.35, 4, 4)
    np.testing.assert_array_equal(outs[0], direct)


def test_blockwise_with_attention_dropout_runs_einsum_through_the_weights_hook(fallback_lines):
    q, k, v = _qkv(np.random.default_rng(9))
    hooked = []
    halve = lambda weights: hooked.append(weights.shape) or weights * 0.5
    for _ in range(2):
        out = attention.attend(q, k, v, _causal(), kernel="blockwise", scale=0.35, blocks=(4, 4),
                               attention_dropout=True, transform_weights=halve)
    assert hooked == [(BATCH, HEADS, LENGTH, LENGTH)] * 2
    np.testing.assert_array_equal(out, attention.einsum_attention(q, k, v, _causal().dense(), None, 0.35,
                                                                  transform_weights=lambda w: w * 0.5))
    lines = fallback_lines()
    assert len(lines) == 1 and "'blockwise' falls back to the einsum kernel: attention dropout" in lines[0], lines


@pytest.mark.parametrize("kernel", ["einsum", "blockwise", "dot_product_attention"])
def test_attend_runs_the_kernel_on_the_dense_mask_unchanged(kernel, fallback_lines):
    rng = np.random.default_rng(10)
    q, k, v = _qkv(rng)
    mask, bias = _causal(), _bias("relative", LENGTH, LENGTH, rng)
    got = attention.attend(q, k, v, mask, bias, kernel=kernel, scale=0.35, blocks=(4, 4))
    dense = masks.combine(masks.causal_mask(LENGTH), masks.padding_mask(_valid(LENGTH), _valid(LENGTH)))
    want = {"einsum": lambda: attention.einsum_attention(q, k, v, dense, bias, 0.35),
            "blockwise": lambda: attention.blockwise_attention(q, k, v, dense, bias, 0.35, 4, 4),
            "dot_product_attention": lambda: jax.nn.dot_product_attention(
                q, k, v, bias=bias, mask=jnp.broadcast_to(dense, (BATCH, HEADS, LENGTH, LENGTH)), scale=0.35)}[kernel]()
    np.testing.assert_array_equal(got, want)
    assert fallback_lines() == []


@pytest.mark.parametrize("kernel", ["einsum", "blockwise", "dot_product_attention", "accelerated"])
def test_a_decoding_step_over_the_heads_major_cache_matches_the_reference(kernel):
    rng = np.random.default_rng(11)
    q, k, v = _qkv(rng, 1, 12)
    positions = jnp.asarray([[7], [3]])
    mask = masks.decoding_step_mask(positions, 12)
    cache = lambda x: jnp.swapaxes(x, 1, 2)  # [B, H, slots, D]
    got = attention.attend(q, cache(k), cache(v), mask, kernel=kernel, scale=0.35, kv_layout=attention.CACHE_LAYOUT)
    want = attention.einsum_attention(q, k, v, jnp.arange(12)[None, None, None] <= positions[:, None, :, None],
                                      None, 0.35)
    np.testing.assert_allclose(got, want, **TOL)
    if kernel != "dot_product_attention":  # the einsum kernel itself, not another one
        np.testing.assert_array_equal(got, attention.einsum_attention(q, cache(k), cache(v), mask.dense(), None,
                                                                      0.35, attention.CACHE_LAYOUT))


def test_blocks_too_large_to_pay_still_run_blockwise_where_einsum_logits_would_not_fit():
    assert not attention.blockwise_pays(1024, 1024, 512, 512)
    assert attention.blockwise_pays(2048, 2048, 1024, 1024)  # 3 of 4 pairs, but 4M logits per head


# --- whole models --------------------------------------------------------------------------------

def _model_batch(layout, rng, length=20):
    """Padding in row 1 (last 6 targets), per-example prefixes for the prefix-LM."""
    tokens = random_tokens(rng, (2, length))
    targets = np.roll(tokens, -1, 1)
    targets[1, length - 6:] = 0
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": targets,
             "decoder_loss_weights": (targets != 0).astype(np.int32)}
    if layout == "prefix_lm":
        batch["decoder_causal_attention"] = (np.arange(length) < np.array([[6], [11]])).astype(np.int32)
    if layout == "encoder_decoder":
        inputs = random_tokens(rng, (2, length + 4))
        inputs[0, length:] = 0
        batch["encoder_input_tokens"] = inputs
    return batch


@pytest.mark.parametrize("layout", ["prefix_lm", pytest.param("decoder_only", marks=pytest.mark.slow),
                                    pytest.param("encoder_decoder", marks=pytest.mark.slow)])
def test_whole_model_loss_and_gradients_match_einsum(layout, monkeypatch):
    """Relative positions: the bias table's gradient flows through the kernel's custom backward."""
    config = tiny_config(layout, position="relative")
    model, params = init_params(config, 2, 8, 8)
    batch = _model_batch(layout, np.random.default_rng(5))
    model = type(model)(config.replace(attention_kernel="einsum"))
    # Blocks of 4 over 20-24 positions: small enough that every attention runs blockwise.
    blockwise = type(model)(config.replace(attention_kernel="blockwise", attention_block_q=4, attention_block_k=4))

    def loss_and_grads(m):
        return jax.jit(jax.value_and_grad(lambda p: m.loss_sums(p, batch)[0]))(params)

    expected_loss, expected_grads = loss_and_grads(model)
    calls, run_blockwise = [], attention.blockwise_attention
    monkeypatch.setattr(attention, "blockwise_attention",
                        lambda *args, **kwargs: calls.append(1) or run_blockwise(*args, **kwargs))
    loss, grads = loss_and_grads(blockwise)
    # Every self-attention, and the decoder's cross-attention, ran the blocks (traced once each).
    cross = config.num_decoder_layers if layout == "encoder_decoder" else 0
    assert len(calls) == config.num_encoder_layers + config.num_decoder_layers + cross
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    flat_expected = jax.tree_util.tree_leaves_with_path(expected_grads)
    for (path, want), got in zip(flat_expected, jax.tree.leaves(grads)):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("kernel,step", [("einsum", False), ("blockwise", False), ("dot_product_attention", False),
                                         ("einsum", True), ("dot_product_attention", True)])
def test_grouped_keys_and_values_are_multi_head_attention_over_keys_repeated_per_group(kernel, step):
    """Hkv = 2 key/value heads for H = 4 query heads: the values, and the gradients of query,
    key, value and bias, equal those of multi-head attention over each key/value head repeated
    for its group (query heads 0-1 read head 0, 2-3 head 1), in training calls and decoding steps."""
    rng = np.random.default_rng(12)
    q_len = 1 if step else LENGTH
    q = jnp.asarray(rng.normal(size=(BATCH, q_len, HEADS, DIM)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(BATCH, LENGTH, 2, DIM)), jnp.float32) for _ in range(2))
    mask = masks.decoding_step_mask(jnp.asarray([[7], [3]]), LENGTH) if step else _causal()
    bias = _bias("relative", q_len, LENGTH, rng)
    layout = attention.CACHE_LAYOUT if step else "bkhd"
    as_laid = (lambda x: jnp.swapaxes(x, 1, 2)) if step else (lambda x: x)

    def grouped(q, k, v, mask, bias, scale):
        return attention.attend(q, as_laid(k), as_laid(v), mask, bias, kernel=kernel, scale=scale, blocks=(4, 4),
                                kv_layout=layout)

    def repeated(q, k, v, mask, bias, scale):
        return grouped(q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2), mask, bias, scale)

    out, grads = _value_and_grads(grouped, q, k, v, mask, bias)
    expected_out, expected_grads = _value_and_grads(repeated, q, k, v, mask, bias)
    np.testing.assert_allclose(out, expected_out, **TOL)
    for name, got, want in zip(("query", "key", "value", "bias"), grads, expected_grads):
        np.testing.assert_allclose(got, want, err_msg=f"d/d{name}", **TOL)
