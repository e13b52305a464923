"""Pretraining objectives as seqio preprocessors, and how their lengths are chosen.

Owns: full causal LM, prefix LM, T5 span corruption, BERT MLM (80/10/10) and
the UL2 denoisers, each a list of seqio preprocessors that runs after
tokenization on a "targets" feature holding one document's token ids; plus the
arithmetic that picks the raw text length per example and the task feature
lengths per layout. It does not own sources (`corpora.py`), task registration
(`tasks.py`) or model features (`feature_converters.py`).

Every random choice uses stateless TF ops seeded by `seqio.map_over_dataset(
num_seeds=...)`, so a pipeline built with the same `seed` yields the same
examples.

How lengths are chosen
----------------------
A task's feature lengths are the *model's* budget; each objective works out
how much raw text fits, so nothing is ever trimmed after corruption (no text is
lost, and the inputs+targets of one example always reconstruct its text):

  causal LM        raw = targets - 1                            (+ EOS)
  prefix LM        raw = largest n such that every split point allowed by the
                   bounds gives inputs <= inputs - 1 and targets <= targets - 1,
                   and (general prefix LM, not UL2's S) at most half the decoder row
                   (inputs + targets), so that two examples pack into one row
  span corruption  raw = largest n with nonnoise + spans + 1 <= inputs and
                   noise + spans + 1 <= targets (T5's `random_spans_helper`:
                   inputs 512 at density 0.15, mean span 3 -> raw 568, targets 114)
                   and spans <= 100 sentinels (so the configured statistics hold)
  MLM              raw = inputs - 1; inputs (corrupted) and targets (original)
                   are aligned and equally long
  UL2              each denoiser as above, with one input token kept for the mode

Documents longer than `raw` are split into several examples; shorter ones stay
short and packing fills the row.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from t5x_like.data import vocab as vocab_lib

Preprocessor = Callable[..., tf.data.Dataset]

# ---------------------------------------------------------------- lengths


def _span_counts(n: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int, int]:
    """(noise tokens, non-noise tokens, spans) for n tokens, as the TF graph computes them."""
    length = max(n, 2)
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = max(round(noise / mean_noise_span_length), 1)
    return noise, length - noise, spans


def span_corruption_raw_length(inputs_length: int, targets_length: int | None,
                               noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                               extra_inputs_tokens: int = 0) -> int:
    """Most raw tokens whose span corruption fits inputs (and targets, if given) with EOS."""
    def fits(n: int) -> bool:
        noise, nonnoise, spans = _span_counts(n, noise_density, mean_noise_span_length)
        if spans > min(vocab_lib.NUM_SENTINELS, noise, nonnoise):
            return False
        if nonnoise + spans + 1 + extra_inputs_tokens > inputs_length:
            return False
        return targets_length is None or noise + spans + 1 <= targets_length

    if not fits(2):
        raise ValueError(
            f"inputs_length={inputs_length}, targets_length={targets_length} cannot hold even two "
            f"tokens of span corruption (density {noise_density}, mean span {mean_noise_span_length})")
    n = 2
    while fits(n + 1):
        n += 1
    return n


def span_corruption_targets_length(inputs_length: int, noise_density: float = 0.15,
                                   mean_noise_span_length: float = 3.0) -> int:
    """T5's targets length for an inputs length (512 -> 114 at the defaults)."""
    n = span_corruption_raw_length(inputs_length, None, noise_density, mean_noise_span_length)
    noise, _, spans = _span_counts(n, noise_density, mean_noise_span_length)
    return noise + spans + 1


def _prefix_split_bounds(n: int, bounds: tuple[float, float]) -> tuple[int, int]:
    """[lo, hi] of the number of prefix tokens for a document of n tokens."""
    lo = max(1, math.ceil(n * bounds[0]))
    hi = max(lo, min(n - 1, math.floor(n * bounds[1])))
    return lo, hi


def prefix_lm_raw_length(inputs_length: int, targets_length: int,
                         bounds: tuple[float, float] = (0.0, 1.0), extra_inputs_tokens: int = 0,
                         two_per_row: bool = True) -> int:
    """Most raw tokens such that every allowed split fits inputs/targets with EOS, and (if
    two_per_row) two examples fill one packed decoder row of inputs_length + targets_length."""
    half_row = (inputs_length + targets_length) // 2 - 2 - extra_inputs_tokens
    if not two_per_row:
        half_row = inputs_length + targets_length

    def fits(n: int) -> bool:
        lo, hi = _prefix_split_bounds(n, bounds)
        return (hi + 1 + extra_inputs_tokens <= inputs_length and n - lo + 1 <= targets_length
                and (n <= half_row or n == 1))

    if not fits(1):
        raise ValueError(f"inputs_length={inputs_length}, targets_length={targets_length} too short for prefix LM")
    n = 1
    while n < inputs_length + targets_length and fits(n + 1):
        n += 1
    return n


# ---------------------------------------------------------------- shared steps


def split_tokens(dataset: tf.data.Dataset, max_tokens_each: int,
                 feature_key: str = "targets") -> tf.data.Dataset:
    """One example per consecutive piece of at most max_tokens_each tokens.

    Empty sequences are dropped; other features are dropped too (pretraining
    examples carry only their tokens).
    """
    if max_tokens_each < 1:
        raise ValueError(f"max_tokens_each must be >= 1, got {max_tokens_each}")

    def pieces(x):
        tokens = x[feature_key]
        n = tf.size(tokens)
        num = (n + max_tokens_each - 1) // max_tokens_each
        lengths = tf.minimum(max_tokens_each, n - tf.range(num) * max_tokens_each)
        return {feature_key: tf.RaggedTensor.from_row_lengths(tokens, lengths)}

    dataset = dataset.filter(lambda x: tf.size(x[feature_key]) > 0)
    return dataset.map(pieces, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def split_to_raw_length(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                        raw_length_fn: Callable[[Mapping[str, int]], int]) -> tf.data.Dataset:
    """split_tokens to the raw length an objective computes from the task's sequence_length."""
    if not sequence_length:
        raise ValueError("pretraining objectives need task_feature_lengths (sequence_length)")
    return split_tokens(dataset, raw_length_fn(sequence_length))


def _length(sequence_length: Mapping[str, int], key: str) -> int:
    if sequence_length.get(key) is None:
        raise ValueError(f"this objective needs a length for {key!r}; got {dict(sequence_length)}")
    return int(sequence_length[key])


def _with_raw_length(fn: Callable[[Mapping[str, int]], int]) -> Preprocessor:
    return functools.partial(split_to_raw_length, raw_length_fn=fn)


append_eos = seqio.preprocessors.append_eos_after_trim


# ---------------------------------------------------------------- causal LM


def causal_lm(vocabulary: seqio.Vocabulary | None = None) -> list[Preprocessor]:
    """Full language modeling: each example is a piece of text as "targets"."""
    del vocabulary  # no special tokens
    return [_with_raw_length(lambda lengths: _length(lengths, "targets") - 1), append_eos]


# ---------------------------------------------------------------- prefix LM


def prefix_lm_split(tokens: tf.Tensor, seed: tf.Tensor,
                    bounds: tuple[float, float]) -> tuple[tf.Tensor, tf.Tensor]:
    """Splits tokens at a point uniform in [ceil(lo*n), floor(hi*n)] ∩ [1, n-1]."""
    n = tf.size(tokens)
    nf = tf.cast(n, tf.float64)
    lo = tf.maximum(1, tf.cast(tf.math.ceil(nf * bounds[0]), tf.int32))
    hi = tf.maximum(lo, tf.minimum(n - 1, tf.cast(tf.math.floor(nf * bounds[1]), tf.int32)))
    k = tf.random.stateless_uniform([], seed, minval=lo, maxval=hi + 1, dtype=tf.int32)
    k = tf.minimum(k, n)
    return tokens[:k], tokens[k:]


def _prefix_lm_map(bounds: tuple[float, float], mode_id: int | None) -> Preprocessor:
    @seqio.map_over_dataset(num_seeds=1)
    def fn(x, seed):
        inputs, targets = prefix_lm_split(x["targets"], seed, bounds)
        if mode_id is not None:
            inputs = tf.concat([[mode_id], inputs], 0)
        return {"inputs": inputs, "targets": targets}
    return fn


def _check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"prefix bounds must satisfy 0 <= low <= high <= 1, got {bounds}")
    return lo, hi


def prefix_lm(bounds: tuple[float, float] = (0.0, 1.0), mode: str | None = None,
              vocabulary: seqio.Vocabulary | None = None, two_per_row: bool = True) -> list[Preprocessor]:
    """Prefix LM: inputs = text[:k], targets = text[k:], k uniform within `bounds`
    (fractions of the text). inputs + targets == the text (plus a mode token if given)."""
    bounds = _check_bounds(bounds)
    mode_id = None if mode is None else vocab_lib.mode_token_id(mode, vocabulary)
    extra = 0 if mode is None else 1
    raw = lambda lengths: prefix_lm_raw_length(_length(lengths, "inputs"), _length(lengths, "targets"),
                                               bounds, extra, two_per_row)
    return [_with_raw_length(raw), _prefix_lm_map(bounds, mode_id), append_eos]


# ---------------------------------------------------------------- span corruption


def random_spans_noise_mask(length: tf.Tensor, noise_density: float, mean_noise_span_length: float,
                            seeds: Sequence[tf.Tensor]) -> tf.Tensor:
    """T5's noise mask: about noise_density of the tokens in spans of mean length
    mean_noise_span_length, span lengths random; starts with non-noise, ends with noise.

    Same algorithm as `t5.data.preprocessors.random_spans_noise_mask`, with the
    number of spans also bounded by the number of sentinels.
    """
    orig_length = length
    length = tf.maximum(length, 2)
    num_noise = tf.cast(tf.round(tf.cast(length, tf.float64) * noise_density), tf.int32)
    num_noise = tf.clip_by_value(num_noise, 1, length - 1)
    num_nonnoise = length - num_noise
    num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float64) / mean_noise_span_length), tf.int32)
    num_spans = tf.clip_by_value(num_spans, 1, tf.minimum(vocab_lib.NUM_SENTINELS,
                                                          tf.minimum(num_noise, num_nonnoise)))

    def segment_lengths(num_items, num_segments, seed):
        """Random partition of num_items into num_segments positive lengths."""
        first = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
        first = tf.pad(seqio.utils.stateless_shuffle(first, seed), [[1, 0]])
        return tf.math.segment_sum(tf.ones_like(first), tf.cumsum(first))

    noise_lengths = segment_lengths(num_noise, num_spans, seeds[0])
    nonnoise_lengths = segment_lengths(num_nonnoise, num_spans, seeds[1])
    interleaved = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [num_spans * 2])
    starts = tf.cumsum(interleaved)[:-1]
    start_indicator = tf.math.unsorted_segment_sum(tf.ones_like(starts), starts, length)
    is_noise = tf.equal(tf.cumsum(start_indicator) % 2, 1)
    return is_noise[:orig_length]


def spans_to_sentinels(tokens: tf.Tensor, mask: tf.Tensor, first_sentinel: int) -> tf.Tensor:
    """Replaces each masked span by one sentinel (first_sentinel, first_sentinel-1, ...)."""
    previous = tf.pad(mask[:-1], [[1, 0]])
    first = tf.logical_and(mask, tf.logical_not(previous))
    subsequent = tf.logical_and(mask, previous)
    sentinels = first_sentinel + 1 - tf.cumsum(tf.cast(first, tokens.dtype))
    return tf.boolean_mask(tf.where(first, sentinels, tokens), tf.logical_not(subsequent))


def span_corrupt(tokens: tf.Tensor, seeds: Sequence[tf.Tensor], noise_density: float,
                 mean_noise_span_length: float, first_sentinel: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(inputs, targets): noise spans -> sentinels in inputs; non-noise spans -> sentinels in targets."""
    mask = random_spans_noise_mask(tf.size(tokens), noise_density, mean_noise_span_length, seeds)
    return (spans_to_sentinels(tokens, mask, first_sentinel),
            spans_to_sentinels(tokens, tf.logical_not(mask), first_sentinel))


def _span_corruption_map(noise_density: float, mean_noise_span_length: float,
                         first_sentinel: int, mode_id: int | None) -> Preprocessor:
    @seqio.map_over_dataset(num_seeds=2)
    def fn(x, seeds):
        inputs, targets = span_corrupt(x["targets"], seeds, noise_density, mean_noise_span_length,
                                       first_sentinel)
        if mode_id is not None:
            inputs = tf.concat([[mode_id], inputs], 0)
        return {"inputs": inputs, "targets": targets}
    return fn


def span_corruption(noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                    mode: str | None = None,
                    vocabulary: seqio.Vocabulary | None = None) -> list[Preprocessor]:
    """T5 span corruption (defaults: 15% of tokens, mean span 3), optional UL2 mode token."""
    if not 0.0 < noise_density < 1.0 or mean_noise_span_length < 1.0:
        raise ValueError(f"need 0 < noise_density < 1 and mean_noise_span_length >= 1, "
                         f"got {noise_density}, {mean_noise_span_length}")
    first_sentinel = vocab_lib.sentinel_id(0, vocabulary)
    mode_id = None if mode is None else vocab_lib.mode_token_id(mode, vocabulary)
    extra = 0 if mode is None else 1
    raw = lambda lengths: span_corruption_raw_length(
        _length(lengths, "inputs"), _length(lengths, "targets"), noise_density,
        mean_noise_span_length, extra)
    return [_with_raw_length(raw),
            _span_corruption_map(noise_density, mean_noise_span_length, first_sentinel, mode_id),
            append_eos]


def reconstruct_from_spans(inputs: Sequence[int], targets: Sequence[int],
                           vocabulary: seqio.Vocabulary | None = None) -> list[int]:
    """Inverse of span corruption on id lists: puts each target span back at its sentinel.

    EOS, padding and a leading UL2 mode token are ignored.
    """
    vocabulary = vocabulary or vocab_lib.default_vocabulary()
    sentinels = set(vocab_lib.sentinel_ids(vocabulary))
    modes = {vocab_lib.mode_token_id(m, vocabulary) for m in vocab_lib.MODE_TOKENS}
    drop = {vocabulary.eos_id, vocabulary.pad_id}
    inputs = [int(t) for t in inputs if int(t) not in drop]
    if inputs and inputs[0] in modes:
        inputs = inputs[1:]
    spans: dict[int, list[int]] = {}
    current = None
    for t in (int(t) for t in targets):
        if t in drop:
            continue
        if t in sentinels:
            current = spans.setdefault(t, [])
        elif current is not None:
            current.append(t)
    out: list[int] = []
    for t in inputs:
        out.extend(spans.get(t, []) if t in sentinels else [t])
    return out


# ---------------------------------------------------------------- BERT MLM

MLM_WEIGHTS_KEY = "mlm_weights"  # 2 = selected (predict it), 1 = not selected, 0 = padding


def bert_mask(tokens: tf.Tensor, seeds: Sequence[tf.Tensor], rate: float, mask_token: int,
              random_low: int, random_high: int, eos_id: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(corrupted, selected): round(rate * n) non-EOS positions (at least one) are selected;
    of those 80% become mask_token, 10% a uniform random regular token, 10% stay."""
    n = tf.size(tokens)
    candidate = tf.not_equal(tokens, eos_id)
    num_candidates = tf.reduce_sum(tf.cast(candidate, tf.int32))
    k = tf.cast(tf.round(tf.cast(num_candidates, tf.float64) * rate), tf.int32)
    k = tf.minimum(tf.maximum(k, 1), num_candidates)
    scores = tf.where(candidate, tf.random.stateless_uniform([n], seeds[0]), 2.0)
    ranks = tf.argsort(tf.argsort(scores))
    selected = ranks < k
    action = tf.random.stateless_uniform([n], seeds[1])
    random_tokens = tf.random.stateless_uniform([n], seeds[2], minval=random_low,
                                                maxval=random_high, dtype=tf.int32)
    corrupted = tf.where(selected & (action < 0.8), tf.cast(mask_token, tokens.dtype),
                         tf.where(selected & (action < 0.9), tf.cast(random_tokens, tokens.dtype), tokens))
    return corrupted, selected


MLM_DEFAULT_RATE = 0.15  # BERT's


def check_mlm_rate(rate: float) -> float:
    if not 0.0 < rate < 1.0:
        raise ValueError(f"MLM rate must be in (0, 1), got {rate}")
    return float(rate)


def mlm(rate: float | Callable[[], float] = MLM_DEFAULT_RATE,
        vocabulary: seqio.Vocabulary | None = None) -> list[Preprocessor]:
    """BERT MLM: inputs = corrupted text, targets = original text (aligned, both with EOS),
    and MLM_WEIGHTS_KEY marking the selected positions for EncoderOnlyMLMFeatureConverter.

    rate: the fraction of positions selected, or a function that returns it when the
    dataset is built (how data.tasks follows its configured rate)."""
    if not callable(rate):
        check_mlm_rate(rate)
    vocabulary = vocabulary or vocab_lib.default_vocabulary()
    mask_token = vocab_lib.mask_id(vocabulary)
    low, high = vocab_lib.regular_id_range(vocabulary)
    eos_id = vocabulary.eos_id

    @seqio.map_over_dataset(num_seeds=3)
    def corrupt(x, seeds):
        tokens = x["targets"]
        current_rate = check_mlm_rate(rate()) if callable(rate) else rate
        corrupted, selected = bert_mask(tokens, seeds, current_rate, mask_token, low, high, eos_id)
        return {"inputs": corrupted, "targets": tokens,
                MLM_WEIGHTS_KEY: 1 + tf.cast(selected, tf.int32)}

    def check_lengths(sequence_length):
        if _length(sequence_length, "inputs") != _length(sequence_length, "targets"):
            raise ValueError(f"MLM needs equal inputs and targets lengths, got {dict(sequence_length)}")
        return _length(sequence_length, "targets") - 1

    # EOS is appended before corruption so that inputs, targets and weights stay aligned.
    return [_with_raw_length(check_lengths), append_eos, corrupt]


# ---------------------------------------------------------------- UL2


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """One UL2 denoiser. family R/X: span corruption; S: prefix LM keeping `target_fraction`."""
    family: str
    mean_noise_span_length: float = 3.0
    noise_density: float = 0.15
    target_fraction: float = 0.25

    @property
    def name(self) -> str:
        if self.family == "S":
            return f"s_target{self.target_fraction:g}"
        return f"{self.family.lower()}_span{self.mean_noise_span_length:g}_density{self.noise_density:g}"

    def preprocessors(self, vocabulary: seqio.Vocabulary | None = None) -> list[Preprocessor]:
        if self.family == "S":
            split = 1.0 - self.target_fraction
            return prefix_lm((split, split), mode="S", vocabulary=vocabulary, two_per_row=False)
        return span_corruption(self.noise_density, self.mean_noise_span_length,
                               mode=self.family, vocabulary=vocabulary)


# Tay et al. (UL2): R (3, 0.15), (8, 0.15); S prefix LM ~25% target; X (3, 0.5), (8, 0.5), (64, 0.15), (64, 0.5).
UL2_DENOISERS = (
    Denoiser("R", 3, 0.15), Denoiser("R", 8, 0.15),
    Denoiser("S", target_fraction=0.25),
    Denoiser("X", 3, 0.5), Denoiser("X", 8, 0.5), Denoiser("X", 64, 0.15), Denoiser("X", 64, 0.5),
)
# Mixing rate per denoiser (by position in UL2_DENOISERS): uniform by default.
UL2_DEFAULT_RATES = (1.0,) * len(UL2_DENOISERS)


OBJECTIVES: dict[str, Callable[..., list[Preprocessor]]] = {
    "causal_lm": causal_lm,
    "prefix_lm": prefix_lm,
    "span_corruption": span_corruption,
    "mlm": mlm,
}
OBJECTIVES_WITH_INPUTS = ("prefix_lm", "span_corruption", "mlm")
