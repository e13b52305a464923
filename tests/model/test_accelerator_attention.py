"""attention_kernel="accelerated" (model/accelerator_attention.py) on this CPU host.

Splash attention runs in Pallas interpret mode (the TPU kernel's own code,
interpreted) and must match the einsum reference in values and gradients on
every real query; padding queries are the one documented difference. Calls no
kernel can take fall back to the portable kernels (attention.attend) and log one
line per reason. The TPU lowering itself is checked by compiling a train step
for a v5e slice.
"""
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.model import accelerator_attention as accel
from t5x_like.model import attention, masks
from t5x_like.model.config import TransformerConfig
from t5x_like.model.model import Model
from tests.model_fixtures import init_params, random_tokens, tiny_config

LOGGER = "t5x_like.model.attention"  # the dispatcher names every fallback


@pytest.fixture(autouse=True)
def _fresh_fallback_log():
    attention.log_fallback.cache_clear()
    yield
    attention.log_fallback.cache_clear()


def _fallback_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def _qkv(rng, batch, lq, lk, heads=2, head_dim=16, dtype=jnp.float32, kv_heads=None):
    q = rng.standard_normal((batch, lq, heads, head_dim))
    k, v = (rng.standard_normal((batch, lk, kv_heads or heads, head_dim)) for _ in range(2))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _einsum_reference(q, k, v, mask, scale, bias=None):
    k, v = (accel.repeat_kv_heads(x, q.shape[2] // x.shape[2]) for x in (k, v))
    return attention.einsum_attention(q, k, v, mask, bias, scale)


def _valid(batch, length, real_lengths):
    return jnp.arange(length)[None, :] < jnp.asarray(real_lengths)[:, None]


def _bias(rng, shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _assert_matches_reference_on_real_queries(mask, q, k, v, scale=0.25, bias=None, kernel=None):
    """Outputs on real queries, and the gradients of a random projection of them (for q, k, v
    and the bias), equal einsum's; `kernel`: the TPU kernel that must have served the call."""
    real = mask.query_valid[:, :, None, None]
    cotangent = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape), q.dtype) * real
    args = (q, k, v) if bias is None else (q, k, v, bias)

    # under jit the interpreted kernel runs as compiled loops, much faster than op by op
    @functools.partial(jax.jit, static_argnames="accelerated")
    def values_and_gradients(args, mask, accelerated):
        if accelerated:
            attend = lambda q, k, v, b=None: accel.accelerated_attention(q, k, v, mask, scale, b, platform="tpu",
                                                                         interpret=True)
        else:
            attend = lambda q, k, v, b=None: _einsum_reference(q, k, v, mask.dense(), scale, b)
        out, vjp = jax.vjp(attend, *args)
        return out * real, vjp(cotangent)

    assert accel.fallback_reason(q, k, mask, bias, False, platform="tpu", interpret=True) is None
    if kernel is not None:
        assert accel.kernel_name(mask, bias, platform="tpu") == kernel
    (got, got_grads), (want, want_grads) = (values_and_gradients(args, mask, a) for a in (True, False))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)
    for name, g, w in zip(("dq", "dk", "dv", "dbias"), got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=5e-5, rtol=5e-5, err_msg=name)


def _assert_model_fused_without_fallback_matches_einsum(caplog, config, params, batch):
    """The model under accelerated (interpreted) logs no fallback and gives the einsum model's loss and gradients."""
    model = Model(config)
    accelerated = Model(config.replace(attention_kernel="accelerated", attention_implementation="interpret"))
    loss = lambda m: lambda p: m.loss_sums(p, batch)[0]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        (want, want_grads), (got, got_grads) = (jax.jit(jax.value_and_grad(loss(m)))(params)
                                                for m in (model, accelerated))
    assert _fallback_lines(caplog) == []
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4, rtol=1e-4)


# --- the mask as splash and cuDNN take it -----------------------------------------------------------------
def test_segment_ids_describe_the_dense_decoder_mask_with_padding_and_packing():
    valid = _valid(2, 8, [8, 6])
    segments = jnp.asarray([[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 0, 0]])
    mask = masks.self_attention_mask(("causal",), valid, segments)
    query_ids, key_ids = mask.segment_ids(2)
    as_splash_sees_it = masks.causal_mask(8) & masks.segment_mask(query_ids, key_ids)
    real_rows = valid[:, None, :, None]
    np.testing.assert_array_equal(np.asarray(as_splash_sees_it & real_rows), np.asarray(mask.dense() & real_rows))
    assert mask.packed and query_ids[1].tolist() == [1, 1, 2, 2, 2, 2, 0, 0]
    # every row sees some key as splash sees it (splash needs it); the dense mask's padding rows see none
    assert bool(jnp.all(jnp.any(as_splash_sees_it, axis=-1)))
    assert not bool(jnp.all(jnp.any(mask.dense(), axis=-1)))


@pytest.mark.parametrize("encoder_mask", ["bidirectional", "forward_backward_heads", "forward_backward_layers"])
def test_splash_head_structures_follow_the_encoder_mask(encoder_mask):
    valid = _valid(1, 6, [5])
    for layer in (0, 1):
        mask = masks.self_attention_mask(masks.encoder_head_structures(encoder_mask, 4, layer), valid)
        heads = mask.heads * 4 if len(mask.heads) == 1 else mask.heads
        splash_mask = np.asarray(accel._splash_mask(heads, 6, 6)[:, :, :])[None]  # [1, H, L, L]
        real_rows = valid[:, None, :, None]
        np.testing.assert_array_equal(splash_mask & np.asarray(real_rows & valid[:, None, None, :]),
                                      np.asarray(jnp.broadcast_to(mask.dense(), (1, 4, 6, 6))))


# --- splash, interpreted, against einsum ----------------------------------------------------------------------
@pytest.mark.parametrize("heads", [pytest.param(("causal",), marks=pytest.mark.slow),
                                   pytest.param(("bidirectional",), marks=pytest.mark.slow), ("causal", "backward")])
def test_splash_matches_einsum_values_and_gradients(heads):
    q, k, v = _qkv(np.random.default_rng(0), 2, 128, 128)
    valid = _valid(2, 128, [128, 100])
    _assert_matches_reference_on_real_queries(masks.self_attention_mask(heads, valid), q, k, v)


def test_splash_with_packed_examples_and_skipped_blocks_matches_einsum(monkeypatch):
    """Two 128-blocks per axis: the causal mask's upper-right block is skipped by the kernel."""
    monkeypatch.setattr(accel, "SPLASH_BLOCK_SIZES", (128,))
    q, k, v = _qkv(np.random.default_rng(1), 1, 256, 256)
    segments = jnp.asarray([[0] * 90 + [1] * 100 + [2] * 66])
    valid = _valid(1, 256, [230])
    _assert_matches_reference_on_real_queries(masks.self_attention_mask(("causal",), valid, segments), q, k, v)


@pytest.mark.slow  # interpreted splash over 128 x 256; the fast loop keeps the per-head and packed cases
def test_splash_cross_attention_over_a_longer_padded_encoder_matches_einsum():
    q, k, v = _qkv(np.random.default_rng(2), 2, 128, 256)
    mask = masks.cross_attention_mask(_valid(2, 128, [128, 70]), _valid(2, 256, [256, 150]))
    _assert_matches_reference_on_real_queries(mask, q, k, v)


# --- prefix-LM (splash over dynamic masks), biases (Pallas flash with `ab`), grouped-query heads ------------
def test_prefix_lm_with_per_example_prefixes_packing_and_skipped_blocks_matches_einsum(monkeypatch):
    """Two 128-blocks per axis: row 0 is one example (prefix 40) whose target's upper-right block is
    skipped; row 1 packs two examples (prefixes 30 and 60) and ends in padding."""
    monkeypatch.setattr(accel, "SPLASH_BLOCK_SIZES", (128,))
    q, k, v = _qkv(np.random.default_rng(10), 2, 256, 256)
    segments = jnp.asarray([[0] * 256, [0] * 100 + [1] * 120 + [0] * 36])
    valid = _valid(2, 256, [256, 220])
    positions = jnp.asarray([list(range(256)), list(range(100)) + list(range(156))])
    prefix = positions < jnp.asarray([[40], [30]]) + jnp.asarray([[0], [30]]) * segments
    mask = masks.self_attention_mask(("causal",), valid, segments, prefix_indicator=prefix & valid)
    _assert_matches_reference_on_real_queries(mask, q, k, v, kernel="splash_dynamic")


def test_causal_attention_with_a_relative_position_bias_matches_einsum_and_trains_the_bias():
    rng = np.random.default_rng(11)
    q, k, v = _qkv(rng, 2, 128, 128)
    mask = masks.self_attention_mask(("causal",), _valid(2, 128, [128, 90]))
    _assert_matches_reference_on_real_queries(mask, q, k, v, bias=_bias(rng, (1, 2, 128, 128)), kernel="flash_bias")


def test_grouped_and_multi_query_key_value_heads_match_einsum():
    q, k, v = _qkv(np.random.default_rng(12), 1, 128, 128, heads=4, kv_heads=1)
    _assert_matches_reference_on_real_queries(masks.self_attention_mask(("causal",), _valid(1, 128, [120])),
                                              q, k, v, kernel="splash")


def _bias_cases():
    valid = _valid(2, 128, [128, 100])
    segments = jnp.asarray([[0] * 60 + [1] * 68, [0] * 128])
    prefix = _valid(2, 128, [50, 20])
    return {
        "prefix_lm": (masks.self_attention_mask(("causal",), valid, prefix_indicator=prefix), (1, 2)),
        "packed": (masks.self_attention_mask(("causal",), valid, segments), (1, 2)),
        "bidirectional": (masks.self_attention_mask(("bidirectional",), valid), (1, 2)),
        "per_head": (masks.self_attention_mask(("causal", "backward"), valid), (1, 2)),
        "alibi_per_example": (masks.self_attention_mask(("causal",), valid), (2, 2)),
    }


@pytest.mark.slow  # five interpreted forward and backward passes
@pytest.mark.parametrize("case", sorted(_bias_cases()))
def test_flash_with_a_bias_matches_einsum_for_every_mask_kind(case):
    mask, bias_batch_heads = _bias_cases()[case]
    rng = np.random.default_rng(13)
    q, k, v = _qkv(rng, 2, 128, 128, kv_heads=1 if case == "packed" else 2)
    _assert_matches_reference_on_real_queries(mask, q, k, v, bias=_bias(rng, bias_batch_heads + (128, 128)),
                                              kernel="flash_bias")


@pytest.mark.slow  # an interpreted cross-attention with a bias over a longer padded encoder
def test_flash_cross_attention_with_a_bias_over_a_longer_padded_encoder_matches_einsum():
    rng = np.random.default_rng(14)
    q, k, v = _qkv(rng, 2, 128, 256)
    mask = masks.cross_attention_mask(_valid(2, 128, [128, 70]), _valid(2, 256, [256, 150]))
    _assert_matches_reference_on_real_queries(mask, q, k, v, bias=_bias(rng, (1, 2, 128, 256)), kernel="flash_bias")


@pytest.mark.slow  # an interpreted prefix-LM with T5's relative bias, forward and backward
def test_prefix_lm_model_with_relative_bias_runs_fused_and_matches_einsum_loss_and_gradients(caplog):
    config = tiny_config("prefix_lm", position="relative", num_heads=2, head_dim=16)
    _, params = init_params(config, 2, 64, 64)
    targets = random_tokens(np.random.default_rng(15), (2, 128))
    targets[1, 100:] = 0
    prefix = (np.arange(128) < np.array([[40], [70]])).astype(np.int32)
    batch = {"decoder_target_tokens": targets, "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
             "decoder_loss_weights": ((targets != 0) & (prefix == 0)).astype(np.int32),
             "decoder_causal_attention": prefix}
    _assert_model_fused_without_fallback_matches_einsum(caplog, config, params, batch)


@pytest.mark.slow  # two models' forward and backward passes, one interpreted
def test_decoder_only_model_with_splash_matches_einsum_loss_and_gradients(caplog):
    config = tiny_config("decoder_only", position="rope", num_heads=2, head_dim=16)
    _, params = init_params(config, 2, 0, 128)
    targets = random_tokens(np.random.default_rng(3), (2, 128))
    targets[1, 90:] = 0  # right padding
    batch = {"decoder_target_tokens": targets, "decoder_loss_weights": (targets != 0).astype(np.int32),
             "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0)))}
    _assert_model_fused_without_fallback_matches_einsum(caplog, config, params, batch)


@pytest.mark.slow  # an interpreted encoder-decoder (about 15 s here)
def test_scanned_encoder_decoder_passes_its_masks_to_splash(caplog):
    """nn.scan broadcasts the AttentionMasks to every layer: scanned + splash gives unscanned einsum's logits."""
    from tests.model.test_layer_options import _stack_layers

    config = tiny_config("encoder_decoder", position="rope", num_heads=2, head_dim=16, num_encoder_layers=1,
                         num_decoder_layers=1)
    model, params = init_params(config, 1, 128, 128)
    rng = np.random.default_rng(7)
    targets = random_tokens(rng, (1, 128))
    batch = {"decoder_target_tokens": targets, "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
             "encoder_input_tokens": random_tokens(rng, (1, 128))}
    scanned = dict(jax.tree.map(np.asarray, params))
    for prefix in ("encoder_layers", "decoder_layers"):
        scanned = _stack_layers(scanned, prefix, 1)
    accelerated = type(model)(config.replace(scan_layers=True, attention_kernel="accelerated",
                                             attention_implementation="interpret"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        got = jax.jit(accelerated.logits)(scanned, batch)
    assert _fallback_lines(caplog) == []  # splash ran in every attention call
    np.testing.assert_allclose(np.asarray(got), np.asarray(model.logits(params, batch)), atol=2e-5, rtol=2e-5)


# --- falling back ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout, position", [("prefix_lm", "rope"), ("decoder_only", "relative"),
                                              ("decoder_only", "alibi")])
def test_model_off_the_kernels_blocks_falls_back_to_the_same_einsum_logits_and_logs_one_line(caplog, layout,
                                                                                              position):
    config = tiny_config(layout, position=position)
    model, params = init_params(config, 2, *((4, 4) if layout == "prefix_lm" else (0, 8)))
    accelerated = type(model)(config.replace(attention_kernel="accelerated", attention_implementation="interpret"))
    targets = random_tokens(np.random.default_rng(4), (2, 8))
    batch = {"decoder_target_tokens": targets, "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
             "decoder_causal_attention": (np.arange(8) < np.array([[3], [5]])).astype(np.int32)}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(2):  # two layers, two traces: still one line
            got = accelerated.logits(params, batch)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(model.logits(params, batch)))
    lines = _fallback_lines(caplog)
    assert len(lines) == 1 and "multiples of 128" in lines[0], lines


def test_each_fallback_reason_is_logged_once(caplog):
    q, k, v = _qkv(np.random.default_rng(5), 2, 8, 8)
    causal = masks.self_attention_mask(("causal",), _valid(2, 8, [8, 6]))
    prefix_lm = masks.self_attention_mask(("causal",), _valid(2, 8, [8, 6]), prefix_indicator=_valid(2, 8, [3, 5]))
    calls = [dict(mask=causal, bias=jnp.zeros((1, 2, 8, 8))), dict(mask=causal, attention_dropout=True),
             dict(mask=causal), dict(mask=prefix_lm), dict(mask=causal, implementation="interpret")]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for kwargs in calls + calls:
            attention.attend(q, k, v, kernel="accelerated", scale=1.0, **kwargs)
    lines = _fallback_lines(caplog)
    assert len(lines) == 3, lines
    for words in ("dropout", "no accelerator kernel on cpu", "multiples of 128"):
        assert sum(words in line for line in lines) == 1, (words, lines)


def test_tpu_kernels_refuse_lengths_off_their_128_blocks():
    q, k, _ = _qkv(np.random.default_rng(6), 1, 64, 64)
    valid = _valid(1, 64, [64])
    assert "multiples of 128" in accel.tpu_fallback_reason(q, k, masks.self_attention_mask(("causal",), valid))


def test_every_mask_kind_and_bias_has_a_fused_kernel_on_tpu_and_gpu():
    valid = _valid(2, 128, [128, 90])
    segments = jnp.zeros((2, 128), jnp.int32)
    bias = jnp.zeros((1, 2, 128, 128))
    bf16 = jnp.zeros((2, 128, 2, 16), jnp.bfloat16)
    kinds = [masks.self_attention_mask((h,), valid) for h in ("causal", "bidirectional")] + [
        masks.self_attention_mask(("causal",), valid, segments),
        masks.self_attention_mask(("causal",), valid, prefix_indicator=_valid(2, 128, [10, 50])),
        masks.self_attention_mask(("causal", "backward"), valid),
        masks.cross_attention_mask(valid, valid)]
    for mask in kinds:
        for b in (None, bias):
            for platform in ("tpu", "gpu"):
                assert accel.fallback_reason(bf16, bf16, mask, b, False, platform=platform) is None, (mask, platform)
    assert accel.kernel_name(kinds[3], None, "tpu") == "splash_dynamic"
    assert accel.kernel_name(kinds[0], bias, "tpu") == "flash_bias" and accel.kernel_name(kinds[0], None, "gpu") == "cudnn"


def test_cudnn_refuses_float32_and_head_dims_it_cannot_tile():
    causal = masks.self_attention_mask(("causal",), _valid(2, 128, [128, 90]))
    assert "bfloat16" in accel.cudnn_fallback_reason(jnp.zeros((2, 128, 2, 16), jnp.float32), causal)
    assert "head_dim" in accel.cudnn_fallback_reason(jnp.zeros((2, 128, 2, 12), jnp.bfloat16), causal)


@pytest.mark.parametrize("kind", [pytest.param("causal", marks=pytest.mark.slow), "prefix_lm_packed_with_bias",
                                  pytest.param("per_head", marks=pytest.mark.slow)])
def test_cudnn_arguments_describe_the_mask_and_bias(kind):
    """The arguments handed to cuDNN, given to jax's XLA implementation of the same function
    (cuDNN itself needs a GPU), give einsum's outputs on every real query."""
    rng = np.random.default_rng(16)
    q, k, v = _qkv(rng, 2, 16, 16, heads=2, kv_heads=1)
    valid = _valid(2, 16, [16, 12])
    segments = jnp.asarray([[0] * 7 + [1] * 9, [0] * 16])
    bias = _bias(rng, (1, 2, 16, 16)) if "bias" in kind else None
    mask = {"causal": masks.self_attention_mask(("causal",), valid),
            "prefix_lm_packed_with_bias": masks.self_attention_mask(("causal",), valid, segments,
                                                                    prefix_indicator=_valid(2, 16, [4, 9])),
            "per_head": masks.self_attention_mask(("causal", "backward"), valid)}[kind]
    got = jax.nn.dot_product_attention(q, k, v, scale=0.25, implementation="xla",
                                       **accel.cudnn_arguments(mask, bias, 2, q.dtype))
    want = _einsum_reference(q, k, v, mask.dense(), 0.25, bias)
    real = valid[:, :, None, None]
    np.testing.assert_allclose(np.asarray(got * real), np.asarray(want * real), atol=2e-5, rtol=2e-5)


def test_accelerated_takes_no_other_implementation():
    with pytest.raises(ValueError, match="attention_implementation None or 'interpret'"):
        TransformerConfig(attention_kernel="accelerated", attention_implementation="cudnn")


# --- the TPU lowering ------------------------------------------------------------------------------------------
@pytest.mark.slow  # a TPU compile on this CPU host (about 10 s)
def test_train_step_compiled_for_a_v5e_slice_calls_the_splash_kernel(caplog):
    pytest.importorskip("libtpu")
    from t5x_like.model.model import Model
    from t5x_like.training import aot, run

    config = tiny_config("decoder_only", position="rope", attention_kernel="accelerated")
    train_config = run.TrainConfig(model=Model(config), task_feature_lengths={"targets": 128}, batch_size=8)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = aot.compile_train_step(train_config, "v5e:2x2", eval_step=False)
    # 2 layers x (forward, dq, dkv kernels)
    assert report.pallas_kernel_calls == 6 and "Pallas kernel calls" in report.table()
    assert _fallback_lines(caplog) == []
