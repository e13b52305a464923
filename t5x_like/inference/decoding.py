"""Generation with a key/value cache: greedy, sampling, and beam search; and scoring given
continuations through the same cache (`score_continuations`).

Owns the *search*: which token comes next, when a row stops, how beams are
kept. The model's side (running the encoder once, prefilling the cache over a
prompt, extending it by one token) is `model.Model.prefill / decode_step`.
Everything here is batched, in two jitted programs per (model, config): the
prefill, and the search loop (one while_loop, no host round trip per token).
They are two so that each gets the XLA options that suit it: on a CPU the
loop's matmuls have as many rows as the batch and read every weight from
memory at each step, where XLA:CPU's Eigen kernels beat its YNN ones
(`CPU_SEARCH_OPTIONS`, measured in docs/performance.md), while the prefill's
matmuls over whole prompts keep the defaults.

Prompts of different lengths share a batch **right-padded with per-row
lengths** (not left-padded). A row's generated token i sits at position
`lengths[row] + i` and overwrites the padding slot there, so positions (and
with them relative-position buckets, RoPE angles, learned position rows) are
exactly those of the training forward pass over prompt + output; no per-row
offsets anywhere. Example, P = 3, two new tokens:

    prompts.tokens  [[0, a, b], [0, c, 0]]    lengths [3, 2]
    cache slots     row 0: 0 a b x y          row 1: 0 c x y -
    output tokens   [[x, y], [x, y]]

Output: `tokens` [B, max_new_tokens], the EOS included, 0 (PAD) after it.

    result = generate(model, params, model.prompts(batch), DecodeConfig(method="beam"))
    tokens = predict_batch(model, params, batch)   # the same, greedy, from a feature-converted batch
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.model import model as model_lib

Array = jnp.ndarray
EOS_ID = 1  # seqio's default vocabularies: pad 0, eos 1
PAD_ID = model_lib.PAD_ID
# XLA options of the search loop's program on a CPU: no YNN fusions, so its dots run on Eigen
# (1.2-1.3x the tokens/s at batch 16 on an AVX2 EPYC, the same tokens; docs/performance.md).
CPU_SEARCH_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How to generate. `temperature=0` with method="sample" is greedy."""

    method: Literal["greedy", "sample", "beam"] = "greedy"
    max_new_tokens: int = 64
    eos_id: int | None = EOS_ID  # None: never stop early
    # sampling
    temperature: float = 1.0
    top_k: int = 0        # 0: no top-k cut
    top_p: float = 1.0    # 1.0: no nucleus cut
    # beam search; score = sum log p / ((5 + length) / 6) ** length_penalty (Wu et al. 2016)
    num_beams: int = 4
    length_penalty: float = 0.6

    def __post_init__(self):
        errors = []
        if self.method not in ("greedy", "sample", "beam"):
            errors.append(f"method={self.method!r}, expected 'greedy', 'sample' or 'beam'")
        if self.max_new_tokens < 1:
            errors.append(f"max_new_tokens={self.max_new_tokens}, expected >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            errors.append(f"temperature={self.temperature} (>= 0), top_k={self.top_k} (>= 0), "
                          f"top_p={self.top_p} (in (0, 1])")
        if self.num_beams < 1:
            errors.append(f"num_beams={self.num_beams}, expected >= 1")
        if errors:
            raise ValueError("invalid DecodeConfig: " + "; ".join(errors))


@flax.struct.dataclass
class DecodeResult:
    """tokens [B, N]; scores [B]: sum of the model's log-probabilities of the
    generated tokens up to EOS (beam search: the length-penalized beam score).
    Beam search also returns every beam, best first: beam_tokens [B, K, N],
    beam_scores [B, K]."""

    tokens: Array
    scores: Array
    beam_tokens: Array | None = None
    beam_scores: Array | None = None


def generate(model: model_lib.Model, params, prompts: model_lib.Prompts,
             config: DecodeConfig = DecodeConfig(), rng: jax.Array | None = None) -> DecodeResult:
    """Generates `config.max_new_tokens` tokens after each prompt (see the module docstring)."""
    if config.method == "sample" and config.temperature > 0 and rng is None:
        raise ValueError("sampling needs an rng: generate(..., rng=jax.random.key(seed))")
    lengths = jnp.asarray(prompts.lengths)
    if prompts.tokens.shape[0] and int(jnp.min(lengths)) < 1:
        raise ValueError("every prompt needs at least one token (the BOS id 0)")
    logits, state = _prefill(model, config, params, prompts)
    return _search_program()(model, config, params, lengths, logits, state,
                             rng if rng is not None else jax.random.key(0))


def predict_batch(model: model_lib.Model, params, batch: dict, config: DecodeConfig | None = None,
                  rng: jax.Array | None = None, prompt_length: int | None = None) -> np.ndarray:
    """Generated tokens [B, max_new_tokens] for a feature-converted batch (greedy by default)."""
    result = generate(model, params, model.prompts(batch, prompt_length), config or DecodeConfig(), rng)
    return np.asarray(result.tokens)


@functools.partial(jax.jit, static_argnames=("model", "config"))
def _prefill(model, config, params, prompts):
    return model.prefill(params, prompts, prompts.tokens.shape[1] + config.max_new_tokens)


def _search(model, config, params, lengths, logits, state, rng):
    if config.method == "beam":
        return _beam_search(model, config, params, lengths, logits, state)
    return _sample_or_greedy(model, config, params, lengths, logits, state, rng)


@functools.cache
def _search_program():
    """`_search` jitted (the cache donated), with CPU_SEARCH_OPTIONS when JAX runs on a CPU."""
    options = CPU_SEARCH_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(_search, static_argnames=("model", "config"), donate_argnames=("state",),
                   compiler_options=options)


def score_continuations(model: model_lib.Model, params, prompts: model_lib.Prompts, rows: Array, tokens: Array,
                        weights: Array) -> tuple[Array, Array]:
    """Teacher-forced scores of continuations after shared prompts, through the cache: each prompt
    is prefilled once; row r continues prompt `rows[r]` with `tokens[r]` (weights[r]: 1 on its real
    tokens, 0 on padding). Returns (sum of weighted log-likelihoods [R], whether every weighted
    token is the argmax [R]): what `Model.score_tokens` gives for prompt + continuation, without
    running the prompt once per continuation (multiple-choice questions share their context)."""
    return _score_continuations(model, params, prompts, jnp.asarray(rows), jnp.asarray(tokens), jnp.asarray(weights))


@functools.partial(jax.jit, static_argnames=("model",))
def _score_continuations(model, params, prompts, rows, tokens, weights):
    logits, state = model.prefill(params, prompts, prompts.tokens.shape[1] + tokens.shape[1])
    logits, state, lengths = logits[rows], state.take_rows(rows), jnp.asarray(prompts.lengths)[rows]

    def step(carry, t):
        logits, state, score, greedy = carry
        token, weight = tokens[:, t], weights[:, t]
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[:, 0]
        greedy = greedy & ((jnp.argmax(logits, axis=-1) == token) | (weight == 0))
        logits, state = model.decode_step(params, state, token, lengths + t)
        return (logits, state, score + log_prob * weight, greedy), None

    start = (logits, state, jnp.zeros(tokens.shape[0]), jnp.ones(tokens.shape[0], bool))
    (_, _, score, greedy), _ = jax.lax.scan(step, start, jnp.arange(tokens.shape[1]))
    return score, greedy


# --- one token per row: greedy and sampling ----------------------------------------
def sample_logits(logits: Array, rng: jax.Array, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> Array:
    """Token ids [B] drawn from softmax(logits / temperature) [B, V], cut to the
    top_k tokens and to the smallest set whose probability reaches top_p."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k:
        kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if top_p < 1.0:
        descending = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(descending, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # exclusive: the top token is always kept
        kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)
        threshold = jnp.take_along_axis(descending, kept - 1, axis=-1)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1)


def _sample_or_greedy(model, config, params, lengths, logits, state, rng):
    batch, steps = logits.shape[0], config.max_new_tokens
    greedy = config.method == "greedy" or config.temperature == 0

    def choose(step, logits, done):
        if greedy:
            token = jnp.argmax(logits, axis=-1)
        else:
            token = sample_logits(logits, jax.random.fold_in(rng, step), config.temperature,
                                  config.top_k, config.top_p)
        token = jnp.where(done, PAD_ID, token).astype(jnp.int32)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[:, 0]
        finished = done | (token == config.eos_id) if config.eos_id is not None else done
        return token, jnp.where(done, 0.0, log_prob), finished

    # Token 0 comes from the prefill; each loop iteration feeds token i-1 and picks token i.
    token, score, done = choose(0, logits, jnp.zeros((batch,), bool))
    tokens = jnp.zeros((batch, steps), jnp.int32).at[:, 0].set(token)

    def body(carry):
        i, tokens, score, done, state = carry
        logits, state = model.decode_step(params, state, tokens[:, i - 1], lengths + i - 1)
        token, log_prob, done = choose(i, logits, done)
        return i + 1, tokens.at[:, i].set(token), score + log_prob, done, state

    def not_finished(carry):
        i, _, _, done, _ = carry
        return (i < steps) & ~jnp.all(done)

    _, tokens, score, _, _ = jax.lax.while_loop(not_finished, body, (1, tokens, score, done, state))
    return DecodeResult(tokens, score)


# --- beam search -----------------------------------------------------------------
def length_penalty(length, alpha: float):
    """GNMT's ((5 + length) / 6) ** alpha; beam scores are sum log p divided by it."""
    return ((5.0 + length) / 6.0) ** alpha


def _beam_search(model, config, params, lengths, logits, state):
    """Keeps K alive beams (no EOS yet) and the K best finished ones per row.

    Each step extends every alive beam by every token, keeps the 2K best
    extensions (so K non-EOS ones always remain), moves those ending in EOS to
    `finished` with their length-penalized score, and continues with the K best
    others. Stops when no alive beam can still beat the worst finished one.
    At max_new_tokens, unfinished beams compete with the finished as they are.
    """
    batch, vocab = logits.shape
    k, steps, eos, alpha = config.num_beams, config.max_new_tokens, config.eos_id, config.length_penalty
    state = state.take_rows(jnp.repeat(jnp.arange(batch), k))
    lengths = jnp.repeat(lengths, k)
    neg_inf = jnp.array(-1e30, jnp.float32)  # finite so that -inf - -inf never makes NaN

    # Only beam 0 starts alive, so the first step does not pick K copies of one token.
    alive_logp = jnp.where(jnp.arange(k) == 0, 0.0, neg_inf)[None].repeat(batch, 0)
    alive_tokens = jnp.zeros((batch, k, steps), jnp.int32)
    finished_tokens = jnp.zeros((batch, k, steps), jnp.int32)
    finished_scores = jnp.full((batch, k), neg_inf)
    step_log_probs = jnp.repeat(jax.nn.log_softmax(logits)[:, None], k, axis=1)  # [B, K, V]

    def top(scores, candidates, n):
        best, index = jax.lax.top_k(scores, n)
        return best, jnp.take_along_axis(candidates, index[:, :, None], axis=1), index

    def body(carry):
        i, alive_tokens, alive_logp, finished_tokens, finished_scores, step_log_probs, state = carry
        flat = (alive_logp[:, :, None] + step_log_probs).reshape(batch, k * vocab)
        cand_logp, cand_index = jax.lax.top_k(flat, 2 * k)
        parent, token = cand_index // vocab, (cand_index % vocab).astype(jnp.int32)
        cand_tokens = jnp.take_along_axis(alive_tokens, parent[:, :, None], axis=1).at[:, :, i].set(token)
        ends = (token == eos) if eos is not None else jnp.zeros_like(token, bool)

        fin_scores = jnp.where(ends, cand_logp / length_penalty(i + 1, alpha), neg_inf)
        finished_scores, finished_tokens, _ = top(
            jnp.concatenate([finished_scores, fin_scores], 1),
            jnp.concatenate([finished_tokens, cand_tokens], 1), k)

        alive_logp, alive_tokens, chosen = top(jnp.where(ends, neg_inf, cand_logp), cand_tokens, k)
        rows = (jnp.arange(batch)[:, None] * k + jnp.take_along_axis(parent, chosen, 1)).reshape(-1)
        next_tokens = jnp.take_along_axis(token, chosen, 1).reshape(-1)
        logits, state = model.decode_step(params, state.take_rows(rows), next_tokens, lengths + i)
        step_log_probs = jax.nn.log_softmax(logits).reshape(batch, k, vocab)
        return i + 1, alive_tokens, alive_logp, finished_tokens, finished_scores, step_log_probs, state

    def not_finished(carry):
        i, _, alive_logp, _, finished_scores, _, _ = carry
        # log-probs only fall, so the best an alive beam can reach is its log-prob
        # under the largest penalty still possible.
        best_penalty = jnp.maximum(length_penalty(i + 1, alpha), length_penalty(steps, alpha))
        can_improve = jnp.max(alive_logp, axis=1) / best_penalty > jnp.min(finished_scores, axis=1)
        return (i < steps) & jnp.any(can_improve)

    carry = (0, alive_tokens, alive_logp, finished_tokens, finished_scores, step_log_probs, state)
    i, alive_tokens, alive_logp, finished_tokens, finished_scores, _, _ = jax.lax.while_loop(
        not_finished, body, carry)
    alive_scores = alive_logp / length_penalty(i, alpha)
    beam_scores, beam_tokens, _ = top(jnp.concatenate([finished_scores, alive_scores], 1),
                                      jnp.concatenate([finished_tokens, alive_tokens], 1), k)
    return DecodeResult(beam_tokens[:, 0], beam_scores[:, 0], beam_tokens, beam_scores)
