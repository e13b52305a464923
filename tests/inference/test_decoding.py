"""Cached decoding (decoding.py, Model.prefill/decode_step) against its definition:
repeated full forward passes of the training path, with no cache."""
from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.inference import decoding
from t5x_like.inference.decoding import DecodeConfig
from t5x_like.model import model as models
from t5x_like.model.config import TransformerConfig

STEPS = 6
BATCH_LENGTHS = np.array([4, 2, 3], np.int32)  # per-row prompt lengths, right-padded to 4


def tiny_config(layout: str, position: str, **overrides) -> TransformerConfig:
    # Untied embeddings: a tied random model mostly repeats its last token,
    # which would make token equality a weak check.
    base = dict(layout=layout, position=position, vocab_size=64, d_model=32, num_heads=2, head_dim=16,
                d_ff=64, num_decoder_layers=2, num_encoder_layers=2 if layout == "encoder_decoder" else 0,
                tie_embeddings=False, max_length=32)
    return TransformerConfig(**{**base, **overrides})


def make_prompts(layout: str, lengths=BATCH_LENGTHS, seed: int = 1) -> models.Prompts:
    rng = np.random.default_rng(seed)
    width = int(max(BATCH_LENGTHS))
    tokens = rng.integers(3, 64, size=(len(lengths), width)).astype(np.int32)
    tokens[:, 0] = 0  # BOS
    tokens *= np.arange(width)[None] < lengths[:, None]
    if layout != "encoder_decoder":
        return models.Prompts(tokens, np.asarray(lengths, np.int32))
    encoder_tokens = rng.integers(3, 64, size=(len(lengths), 5)).astype(np.int32)
    encoder_tokens[1, 3:] = 0  # padded encoder inputs too
    return models.Prompts(np.zeros((len(lengths), 1), np.int32), np.ones(len(lengths), np.int32),
                          encoder_tokens)


class Uncached:
    """The definition: every step reruns Transformer.__call__ (the training
    forward pass) over prompt + tokens so far, with no cache."""

    def __init__(self, model: models.Model, params, prompts: models.Prompts, steps: int):
        self.model, self.params, self.prompts, self.steps = model, params, prompts, steps
        self.total = prompts.tokens.shape[1] + steps

        def forward(params, sequence, valid, prefix, encoder_tokens):
            layout = model.config.layout
            return model.module.apply(
                {"params": params}, encoder_input_tokens=encoder_tokens, decoder_input_tokens=sequence,
                decoder_valid=valid, prefix_indicator=prefix if layout == "prefix_lm" else None)
        self.forward = jax.jit(forward)

    def _log_probs(self, sequence, num_tokens):
        """log p [B, V] of the token following `num_tokens` generated ones."""
        lengths = np.asarray(self.prompts.lengths)
        repeat = sequence.shape[0] // len(lengths)
        lengths = np.repeat(lengths, repeat)
        encoder = self.prompts.encoder_tokens
        encoder = None if encoder is None else np.repeat(encoder, repeat, axis=0)
        positions = np.arange(self.total)[None]
        valid = positions < (lengths + num_tokens)[:, None]
        prefix = positions < lengths[:, None]
        logits = self.forward(self.params, sequence, valid, prefix, encoder)
        last = np.asarray(logits)[np.arange(len(lengths)), lengths + num_tokens - 1]
        return np.asarray(jax.nn.log_softmax(last))

    def _start(self, repeat=1):
        prompt = np.asarray(self.prompts.tokens)
        sequence = np.zeros((prompt.shape[0], self.total), np.int32)
        sequence[:, :prompt.shape[1]] = prompt
        return np.repeat(sequence, repeat, axis=0), np.repeat(np.asarray(self.prompts.lengths), repeat)

    def greedy(self):
        sequence, lengths = self._start()
        tokens, score = [], np.zeros(len(lengths))
        for i in range(self.steps):
            log_probs = self._log_probs(sequence, i)
            token = log_probs.argmax(-1)
            score += log_probs[np.arange(len(lengths)), token]
            sequence[np.arange(len(lengths)), lengths + i] = token
            tokens.append(token)
        return np.stack(tokens, 1), score

    def sequence_log_prob(self, tokens):
        """Sum of log p of given continuations tokens [B, K, N] (teacher forced), [B, K, N] per token."""
        batch, beams, steps = tokens.shape
        sequence, lengths = self._start(beams)
        flat = tokens.reshape(batch * beams, steps)
        per_token = np.zeros((batch * beams, steps))
        for i in range(steps):
            log_probs = self._log_probs(sequence, i)
            per_token[:, i] = log_probs[np.arange(len(lengths)), flat[:, i]]
            sequence[np.arange(len(lengths)), lengths + i] = flat[:, i]
        return per_token.reshape(batch, beams, steps)


CASES = [
    ("decoder_only", "relative", {}), ("decoder_only", "rope", {}), ("decoder_only", "learned", {}),
    ("decoder_only", "alibi", {"scan_layers": True}),
    ("prefix_lm", "relative", {}), ("prefix_lm", "rope", {}), ("prefix_lm", "learned", {}),
    ("encoder_decoder", "relative", {}), ("encoder_decoder", "rope", {}), ("encoder_decoder", "learned", {}),
    ("encoder_decoder", "sinusoidal", {"attention_kernel": "dot_product_attention", "share_encoder_decoder": True}),
    # blockwise prefill and passes, einsum steps over the cache
    ("prefix_lm", "alibi", {"attention_kernel": "blockwise", "attention_block_q": 2, "attention_block_k": 2}),
    # grouped- and multi-query attention: the cache holds only the key/value heads
    ("prefix_lm", "relative", {"num_kv_heads": 1}),
]
SLOW_CASES = [  # the full suite's: grouped-query decoder-only and encoder-decoder
    ("decoder_only", "rope", {"num_kv_heads": 2}),
    ("encoder_decoder", "rope", {"num_kv_heads": 2, "attention_kernel": "dot_product_attention"}),
]


def _case_id(case) -> str:
    return f"{case[0]}-{case[1]}" + ("-" + "-".join(case[2]) if case[2] else "")


def build(layout, position, overrides, seed=0):
    model = models.Model(tiny_config(layout, position, **overrides))
    batch = model.dummy_batch(2, {"inputs": 4, "targets": 4})
    params = nn.unbox(model.init(jax.random.key(seed), batch))["params"]
    return model, params


@pytest.mark.parametrize("layout,position,overrides", [pytest.param(*c, id=_case_id(c)) for c in CASES] + [
    pytest.param(*c, id=_case_id(c), marks=pytest.mark.slow) for c in SLOW_CASES])
def test_cached_greedy_equals_repeated_uncached_forward_passes(layout, position, overrides):
    model, params = build(layout, position, overrides)
    prompts = make_prompts(layout)
    result = decoding.generate(model, params, prompts, DecodeConfig(max_new_tokens=STEPS, eos_id=None))
    expected_tokens, expected_scores = Uncached(model, params, prompts, STEPS).greedy()
    np.testing.assert_array_equal(np.asarray(result.tokens), expected_tokens)
    np.testing.assert_allclose(np.asarray(result.scores), expected_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout,overrides", [("decoder_only", {}), ("encoder_decoder", {}),
                                              ("encoder_decoder", {"num_kv_heads": 2}),
                                              pytest.param("prefix_lm", {}, marks=pytest.mark.slow),
                                              pytest.param("decoder_only", {"scan_layers": True},
                                                           marks=pytest.mark.slow)])
def test_cached_steps_give_the_uncached_log_probs_at_every_position(layout, overrides):
    """Teacher forcing a fixed continuation through prefill + decode_step gives, step by
    step, the log-probs of the uncached forward pass; the cache is heads-major and holds only
    the key/value heads."""
    model, params = build(layout, "relative", overrides)
    prompts = make_prompts(layout)
    reference = Uncached(model, params, prompts, STEPS)
    sequence, lengths = reference._start()
    rows = np.arange(len(lengths))
    forced = np.random.default_rng(2).integers(3, 64, size=(len(rows), STEPS)).astype(np.int32)
    for i in range(STEPS):  # later tokens are padding to the reference until step i
        sequence[rows, lengths + i] = forced[:, i]

    cache_length = prompts.tokens.shape[1] + STEPS
    logits, state = jax.jit(model.prefill, static_argnums=2)(params, prompts, cache_length)
    cfg = model.config
    for path, array in jax.tree_util.tree_leaves_with_path(state.cache):
        if "self_attention" in jax.tree_util.keystr(path):
            assert array.shape[-4:] == (len(rows), cfg.kv_heads, cache_length, cfg.head_dim), path
    step = jax.jit(model.decode_step)
    for i in range(STEPS):
        np.testing.assert_allclose(np.asarray(jax.nn.log_softmax(logits)), reference._log_probs(sequence, i),
                                   rtol=1e-5, atol=1e-5, err_msg=f"step {i}")
        logits, state = step(params, state, jnp.asarray(forced[:, i]), jnp.asarray(lengths + i))


# --- one shared model for the search tests -------------------------------------------
@pytest.fixture(scope="module")
def rel_decoder():
    model, params = build("decoder_only", "relative", {})
    prompts = make_prompts("decoder_only")
    greedy = decoding.generate(model, params, prompts, DecodeConfig(max_new_tokens=STEPS, eos_id=None))
    # An EOS id that row 0 produces at step 2 under greedy decoding (planted stop).
    eos = int(greedy.tokens[0, 2])
    return model, params, prompts, np.asarray(greedy.tokens), eos


def test_rows_stop_at_eos_and_are_padded_after_it(rel_decoder):
    model, params, prompts, free_tokens, eos = rel_decoder
    tokens = np.asarray(decoding.generate(model, params, prompts,
                                          DecodeConfig(max_new_tokens=STEPS, eos_id=eos)).tokens)
    for row, free in zip(tokens, free_tokens):
        hits = np.flatnonzero(free == eos)
        stop = hits[0] + 1 if hits.size else STEPS
        np.testing.assert_array_equal(row[:stop], free[:stop])
        assert (row[stop:] == 0).all()
    assert (tokens[0, 3:] == 0).all(), "row 0 emits the planted EOS by step 2"


def test_beam_search_with_one_beam_is_greedy(rel_decoder):
    model, params, prompts, _, eos = rel_decoder
    greedy = decoding.generate(model, params, prompts, DecodeConfig(max_new_tokens=STEPS, eos_id=eos))
    beam = decoding.generate(model, params, prompts, DecodeConfig(
        method="beam", num_beams=1, length_penalty=0.0, max_new_tokens=STEPS, eos_id=eos))
    np.testing.assert_array_equal(np.asarray(beam.tokens), np.asarray(greedy.tokens))
    np.testing.assert_allclose(np.asarray(beam.scores), np.asarray(greedy.scores), rtol=1e-5)


def test_beam_scores_are_length_penalized_log_probs_of_their_tokens(rel_decoder):
    model, params, prompts, _, eos = rel_decoder
    alpha = 0.6
    result = decoding.generate(model, params, prompts, DecodeConfig(
        method="beam", num_beams=3, length_penalty=alpha, max_new_tokens=STEPS, eos_id=eos))
    beams, scores = np.asarray(result.beam_tokens), np.asarray(result.beam_scores)
    per_token = Uncached(model, params, prompts, STEPS).sequence_log_prob(beams)
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "beams are returned best first"
    for b, k in itertools.product(range(beams.shape[0]), range(beams.shape[1])):
        hits = np.flatnonzero(beams[b, k] == eos)
        length = hits[0] + 1 if hits.size else STEPS
        assert (beams[b, k, length:] == 0).all()
        expected = per_token[b, k, :length].sum() / decoding.length_penalty(length, alpha)
        np.testing.assert_allclose(scores[b, k], expected, rtol=1e-4, atol=1e-4)
    assert (beams[:, 0] == eos).any() or (beams == eos).any(), "the planted EOS ends some beam"


def test_beam_search_with_enough_beams_finds_the_most_likely_sequence(rel_decoder):
    model, params, prompts, _, _ = rel_decoder
    vocab, steps = model.config.vocab_size, 2
    result = decoding.generate(model, params, prompts, DecodeConfig(
        method="beam", num_beams=vocab, length_penalty=0.0, max_new_tokens=steps, eos_id=None))
    # Exhaustive: every two-token continuation, scored by uncached passes.
    candidates = np.array(list(itertools.product(range(vocab), repeat=steps)), np.int32)
    batch = len(BATCH_LENGTHS)
    all_tokens = np.broadcast_to(candidates, (batch,) + candidates.shape)
    totals = Uncached(model, params, prompts, steps).sequence_log_prob(all_tokens).sum(-1)
    best = totals.argmax(1)
    np.testing.assert_array_equal(np.asarray(result.tokens), candidates[best])
    np.testing.assert_allclose(np.asarray(result.scores), totals.max(1), rtol=1e-4, atol=1e-4)


def test_sampling_is_reproducible_per_rng_and_varies_across_rngs(rel_decoder):
    model, params, prompts, _, _ = rel_decoder
    config = DecodeConfig(method="sample", temperature=1.5, max_new_tokens=STEPS, eos_id=None)
    draw = lambda seed: np.asarray(decoding.generate(model, params, prompts, config, jax.random.key(seed)).tokens)
    np.testing.assert_array_equal(draw(0), draw(0))
    assert not np.array_equal(draw(0), draw(1))
    with pytest.raises(ValueError, match="rng"):
        decoding.generate(model, params, prompts, config)


def test_top_k_and_top_p_sample_only_from_the_kept_tokens_in_proportion():
    draws = 4000  # rows of one batch, each an independent draw
    logits = jnp.log(jnp.tile(jnp.array([[0.5, 0.3, 0.1, 0.06, 0.04]]), (draws, 1)))
    key = jax.random.key(0)
    for temperature, top_k in ((0.0, 0), (1.0, 1)):  # both greedy
        assert (decoding.sample_logits(logits, key, temperature, top_k) == 0).all()
    for top_k, top_p, kept in ((2, 1.0, [0.5, 0.3]), (0, 0.7, [0.5, 0.3]), (0, 0.85, [0.5, 0.3, 0.1]),
                               (0, 1.0, [0.5, 0.3, 0.1, 0.06, 0.04])):
        sample = decoding.sample_logits(logits, key, 1.0, top_k, top_p)
        counts = np.bincount(np.asarray(sample), minlength=5) / draws
        expected = np.zeros(5)
        expected[:len(kept)] = np.array(kept) / sum(kept)
        assert (counts[len(kept):] == 0).all()
        np.testing.assert_allclose(counts, expected, atol=4 * np.sqrt(0.25 / draws))


# --- prefix-LM: the same weights as a causal decoder, except the prefix mask ----------
def test_prefix_lm_decode_differs_from_causal_only_through_the_prefix_mask():
    prefix_model, params = build("prefix_lm", "relative", {})
    causal_model = models.Model(tiny_config("decoder_only", "relative"))
    # A causal decoder has only the causal bucket rows; the prefix-LM's first block is exactly those.
    buckets = causal_model.config.relative_num_buckets
    causal_params = jax.tree_util.tree_map(lambda x: x, params)
    table = params["decoder_relpos_bias"]["rel_embedding"]
    causal_params["decoder_relpos_bias"] = {"rel_embedding": table[:buckets]}
    config = DecodeConfig(max_new_tokens=STEPS, eos_id=None)

    # A one-token prompt: the prefix mask equals the causal mask, so decoding is identical.
    bos_only = make_prompts("prefix_lm", lengths=np.array([1, 1, 1], np.int32))
    prefix_out = decoding.generate(prefix_model, params, bos_only, config)
    causal_out = decoding.generate(causal_model, causal_params, bos_only, config)
    np.testing.assert_array_equal(np.asarray(prefix_out.tokens), np.asarray(causal_out.tokens))
    np.testing.assert_allclose(np.asarray(prefix_out.scores), np.asarray(causal_out.scores), rtol=1e-5)

    # Longer prompts: the bidirectional prefix changes what is predicted (row 1 has
    # a 2-token prompt, rows 0 and 2 longer), and every row's score moves.
    prompts = make_prompts("prefix_lm")
    prefix_out = decoding.generate(prefix_model, params, prompts, config)
    causal_out = decoding.generate(causal_model, causal_params, prompts, config)
    assert (np.abs(np.asarray(prefix_out.scores) - np.asarray(causal_out.scores)) > 1e-3).all()


# --- misuse gives clear errors --------------------------------------------------------
def test_decode_step_before_prefill_is_a_clear_error(rel_decoder):
    model, params, _, _, _ = rel_decoder
    with pytest.raises(ValueError, match="prefill"):
        model.decoding_module.apply({"params": params}, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32),
                                    8, method=models.Transformer.decode_step, mutable=["cache"])


def test_learned_positions_refuse_to_decode_past_their_table():
    model, params = build("decoder_only", "learned", {})
    with pytest.raises(ValueError, match="max_length=32"):
        decoding.generate(model, params, make_prompts("decoder_only"), DecodeConfig(max_new_tokens=40))


def test_predict_batch_reads_prompts_from_a_feature_converted_batch(rel_decoder):
    model, params, prompts, free_tokens, _ = rel_decoder
    # A PrefixLM-converted batch: decoder_causal_attention marks BOS + inputs.
    width = prompts.tokens.shape[1] + 3
    batch = {"decoder_input_tokens": np.pad(prompts.tokens, ((0, 0), (0, 3)), constant_values=7),
             "decoder_causal_attention": (np.arange(width)[None] < BATCH_LENGTHS[:, None]).astype(np.int32)}
    tokens = decoding.predict_batch(model, params, batch, DecodeConfig(max_new_tokens=STEPS, eos_id=None))
    np.testing.assert_array_equal(tokens, free_tokens)


def test_on_a_cpu_the_search_loop_compiles_without_ynn_fusions_and_the_prefill_with_them(rel_decoder):
    """The split of decoding.py's module docstring: the loop's small-row matmuls on Eigen, the
    prefill's with XLA:CPU's defaults (YNN fusions), and the cache handed from one to the other."""
    model, params, prompts, _, eos = rel_decoder
    config = DecodeConfig(max_new_tokens=STEPS, eos_id=eos)
    assert jax.default_backend() == "cpu"
    prefill = decoding._prefill.lower(model, config, params, prompts).compile().as_text()
    logits, state = decoding._prefill(model, config, params, prompts)
    search = decoding._search_program().lower(model, config, params, jnp.asarray(prompts.lengths), logits, state,
                                              jax.random.key(0)).compile().as_text()
    assert '"__ynn_fusion"' in prefill
    assert '"__ynn_fusion"' not in search and "while" in search
