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
from tests.model_fixtures import init_params, random_tokens, tiny_config

LOGGER = "t5x_like.model.attention"  # the dispatcher names every fallback


@pytest.fixture(autouse=True)
def _fresh_fallback_log():
    attention.log_fallback.cache_clear()
    yield
    attention.log_fallback.cache_clear()


def _fallback_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def _qkv(rng, batch, lq, lk, heads=2, head_dim=16, dtype=jnp.float32):
    q = rng.standard_normal((batch, lq, heads, head_dim))
    k, v = (rng.standard_normal((batch, lk, heads, head_dim)) for _ in range(2))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _einsum_reference(q, k, v, mask, scale):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min * 0.5)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


def _valid(batch, length, real_lengths):
    return jnp.arange(length)[None, :] < jnp.asarray(real_lengths)[:, None]


def _assert_matches_reference_on_real_queries(mask, q, k, v, scale=0.25):
    """Outputs on real queries, and the gradients of a random projection of them, equal einsum's."""
    real = mask.query_valid[:, :, None, None]
    cotangent = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape[:3] + v.shape[-1:]), q.dtype) * real

    # under jit the interpreted kernel runs as compiled loops, much faster than op by op
    @functools.partial(jax.jit, static_argnames="use_splash")
    def values_and_gradients(q, k, v, mask, use_splash):
        if use_splash:
            attend = lambda q, k, v: accel.accelerated_attention(q, k, v, mask, scale, platform="tpu", interpret=True)
        else:
            attend = lambda q, k, v: _einsum_reference(q, k, v, mask.dense(), scale)
        out, vjp = jax.vjp(attend, q, k, v)
        return out * real, vjp(cotangent)

    assert accel.fallback_reason(q, k, mask, None, False, platform="tpu", interpret=True) is None
    (got, got_grads), (want, want_grads) = (values_and_gradients(q, k, v, mask, s) for s in (True, False))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)
    for name, g, w in zip("qkv", got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=5e-5, rtol=5e-5, err_msg=f"d{name}")


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


@pytest.mark.slow  # two models' forward and backward passes, one interpreted
def test_decoder_only_model_with_splash_matches_einsum_loss_and_gradients(caplog):
    config = tiny_config("decoder_only", position="rope", num_heads=2, head_dim=16)
    model, params = init_params(config, 2, 0, 128)
    accelerated = type(model)(config.replace(attention_kernel="accelerated", attention_implementation="interpret"))
    targets = random_tokens(np.random.default_rng(3), (2, 128))
    targets[1, 90:] = 0  # right padding
    batch = {"decoder_target_tokens": targets, "decoder_loss_weights": (targets != 0).astype(np.int32),
             "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0)))}
    loss = lambda m: lambda p: m.loss_sums(p, batch)[0]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        (want, want_grads), (got, got_grads) = (jax.jit(jax.value_and_grad(loss(m)))(params)
                                                for m in (model, accelerated))
    assert _fallback_lines(caplog) == []
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4, rtol=1e-4)


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
@pytest.mark.parametrize("layout, position, reason", [
    ("prefix_lm", "rope", "prefix-LM"),             # a per-example prefix: no static mask
    ("decoder_only", "relative", "position bias"),  # T5's relative bias
    ("decoder_only", "alibi", "position bias"),
])
def test_model_falls_back_to_the_same_einsum_logits_and_logs_one_line(caplog, layout, position, reason):
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
    assert len(lines) == 1 and reason in lines[0], lines


def test_each_fallback_reason_is_logged_once(caplog):
    q, k, v = _qkv(np.random.default_rng(5), 2, 8, 8)
    causal = masks.self_attention_mask(("causal",), _valid(2, 8, [8, 6]))
    prefix_lm = masks.self_attention_mask(("causal",), _valid(2, 8, [8, 6]), prefix_indicator=_valid(2, 8, [3, 5]))
    calls = [dict(mask=causal, bias=jnp.zeros((1, 2, 8, 8))), dict(mask=causal, attention_dropout=True),
             dict(mask=causal), dict(mask=prefix_lm)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for kwargs in calls + calls:
            attention.attend(q, k, v, kernel="accelerated", scale=1.0, **kwargs)
    lines = _fallback_lines(caplog)
    assert len(lines) == 4, lines
    for words in ("position bias", "dropout", "no accelerator kernel on cpu", "prefix-LM"):
        assert sum(words in line for line in lines) == 1, (words, lines)


def test_splash_refuses_lengths_off_its_128_blocks():
    q, k, _ = _qkv(np.random.default_rng(6), 1, 64, 64)
    valid = _valid(1, 64, [64])
    assert "multiples of 128" in accel.splash_fallback_reason(q, k, masks.self_attention_mask(("causal",), valid))


def test_cudnn_takes_unpacked_causal_or_padding_masks_in_half_precision_only():
    valid = _valid(2, 128, [128, 90])
    segments = jnp.zeros((2, 128), jnp.int32)
    bf16, f32 = (jnp.zeros((2, 128, 2, 16), dtype) for dtype in (jnp.bfloat16, jnp.float32))
    causal, full = (masks.self_attention_mask((h,), valid) for h in ("causal", "bidirectional"))
    assert accel.cudnn_fallback_reason(bf16, causal) is None
    assert accel.cudnn_fallback_reason(bf16, full) is None
    assert "bfloat16" in accel.cudnn_fallback_reason(f32, causal)
    assert "packed" in accel.cudnn_fallback_reason(bf16, masks.self_attention_mask(("causal",), valid, segments))
    assert "per-head" in accel.cudnn_fallback_reason(bf16, masks.self_attention_mask(("causal", "backward"), valid))
    assert "head_dim" in accel.cudnn_fallback_reason(jnp.zeros((2, 128, 2, 12), jnp.bfloat16), causal)


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
