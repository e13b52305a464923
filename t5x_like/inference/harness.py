"""lm-evaluation-harness over every layout: the `t5x_like` model of lm-eval 0.4.

Owns `HarnessLM` (lm-eval's `TemplateLM`, registered as "t5x_like", so both
`lm_eval.simple_evaluate(model=HarnessLM(...))` and `lm_eval --model t5x_like
--model_args model_dir=DIR` work) and how each layout reads a request:

  layout           loglikelihood(context, continuation)
  decoder_only     [start] + context + continuation in one causal pass; the
                   continuation's tokens are scored
  prefix_lm        [start] + context + EOS is the bidirectional prefix, the
                   continuation follows causally (context="causal": the same
                   tokens with no prefix, scored as a decoder-only model would)
  encoder_decoder  context + EOS into the encoder; the decoder scores the
                   continuation after its start id 0
  encoder_only     refused: an MLM encoder scores no continuation

`start` is the id 0 that seqio's shift-right puts before every decoder input of
a model trained here. An imported GPT-2 has none (`start_token=None`): its text
starts at position 0, an empty context becomes its EOS token, exactly as
lm-eval's `hf` model feeds it. The context ends with EOS where the layout has
an input/target boundary (prefix-LM, encoder-decoder), as seqio's tasks end
their inputs; an empty context gives the encoder just EOS.

loglikelihood_rolling: lm-eval's disjoint windows of the model's length (one
token of context each); a window's context is what `loglikelihood` reads as
context (so an encoder-decoder's encoder gets only EOS and its decoder scores
the window, as lm-eval's `hf` seq2seq model does).

generate_until: the project's cached decoding (greedy, or sampling when a task
asks for it), cut at EOS and at the first stop sequence.

Scoring: a batch of short continuations (at most CACHED_CONTINUATION tokens,
multiple-choice answers) prefills each distinct context once and decodes its
continuations from the cache (`decoding.score_continuations`), so a question's
context runs once, not once per choice; longer ones (perplexity windows) run
context + continuation in one forward pass (`Model.score_tokens`). The two paths
agree to float rounding (tested); `share_contexts=False` keeps to the second.

Batching: requests sorted longest first (rows sharing a context together), cut into batches of `batch_size` rows
(the last one padded with empty rows), each padded to one of eight lengths
per power of two (`_bucket`), so a task compiles a handful of shapes. Results
come back in request order and do not depend on the batch size or the order
(tested). A request longer than the
model's length loses the start of its context, as lm-eval's `hf` model does,
and the run says how many did (`truncation="error"` refuses them instead); a
continuation that cannot fit at all is refused.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm import tqdm

from t5x_like.data import tasks
from t5x_like.inference import decoding, evaluation
from t5x_like.interop import convert
from t5x_like.model import features
from t5x_like.model import model as model_lib

log = logging.getLogger(__name__)

NO_CONTEXT = -1  # lm-eval's "prefix token" of an empty context, for models that need none
MIN_BUCKET = 16
CACHED_CONTINUATION = 32  # longer continuations are scored in one forward pass with their context
PREFIX_CONTEXTS = ("bidirectional", "causal")
TRUNCATIONS = ("left", "error")


class HarnessInputError(ValueError):
    """A request or a model the adapter cannot score; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """One scoring request in tokens: the conditioning tokens and the scored ones."""

    context: list[int]
    continuation: list[int]


@register_model("t5x_like")
class HarnessLM(TemplateLM):
    """A t5x_like model and its parameters, as lm-eval's LM (see the module docstring)."""

    def __init__(self, model: model_lib.Model, params: Any, vocabulary: Any, *, batch_size: int = 16,
                 max_length: int | None = None, task_feature_lengths: dict[str, int] | None = None,
                 start_token: int | None = 0, prefix_context: str = "bidirectional",
                 truncation: str = "left", max_gen_toks: int = 256, seed: int = 0, share_contexts: bool = True):
        super().__init__()
        layout = model.config.layout
        if layout == "encoder_only":
            raise HarnessInputError(
                "an encoder_only model (a masked LM) scores no continuations: lm-eval needs a decoder_only, "
                "prefix_lm or encoder_decoder checkpoint")
        if prefix_context not in PREFIX_CONTEXTS or truncation not in TRUNCATIONS:
            raise HarnessInputError(f"prefix_context={prefix_context!r} (expected one of {PREFIX_CONTEXTS}), "
                                    f"truncation={truncation!r} (expected one of {TRUNCATIONS})")
        if batch_size < 1:
            raise HarnessInputError(f"batch_size={batch_size}: expected >= 1")
        self.model, self.params, self.vocabulary = model, params, vocabulary
        self.batch_size = int(batch_size)
        self.layout = layout
        self.backend = "seq2seq" if layout == "encoder_decoder" else "causal"
        self.start_token = 0 if layout == "encoder_decoder" else start_token
        self.bidirectional_prefix = layout == "prefix_lm" and prefix_context == "bidirectional"
        self.context_eos = layout in ("prefix_lm", "encoder_decoder")
        self.truncation = truncation
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)
        self.share_contexts = bool(share_contexts)
        self.lengths = _stack_limits(model.config, task_feature_lengths or {}, max_length)
        self.truncated = 0

    # --- construction from a model dir (lm-eval's --model_args) --------------------------
    @classmethod
    def from_model_dir(cls, model_dir: str, **kwargs) -> "HarnessLM":
        """The checkpoint at `model_dir` (MODEL_DIR, its checkpoints/ or a step folder), rebuilt from
        its saved model_config.json, with its vocabulary: the configured one for a model trained
        here, the tokenizer an imported Hugging Face model came with."""
        loaded = evaluation.load_checkpoint(model_dir)
        vocabulary, start_token = vocabulary_of(loaded)
        kwargs.setdefault("start_token", start_token)
        kwargs.setdefault("task_feature_lengths", loaded.task_feature_lengths)
        return cls(loaded.model, loaded.params, vocabulary, **kwargs)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "HarnessLM":
        args = simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if k == "batch_size" and v is not None}
        if "model_dir" not in args:
            raise HarnessInputError("--model_args needs model_dir=DIR (a t5x_like MODEL_DIR)")
        return cls.from_model_dir(args.pop("model_dir"), **{**extra, **args})

    # --- lm-eval's tokenizer interface ---------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return int(self.vocabulary.eos_id)

    @property
    def prefix_token_id(self) -> int:
        return self.eot_token_id if self.start_token is None else NO_CONTEXT

    @property
    def max_length(self) -> int:
        return self.lengths["decoder"]

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Text tokens only: the start id and EOS are the layout's business (`_rows`)."""
        return [int(t) for t in self.vocabulary.encode(string)]

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.vocabulary.decode([int(t) for t in tokens])

    # --- loglikelihood ---------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = [Pair([t for t in context if t != NO_CONTEXT], list(continuation))
                 for _, context, continuation in requests]
        return self.score_pairs(pairs, disable_tqdm=disable_tqdm)

    def score_pairs(self, pairs: Sequence[Pair], disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-likelihoods, whether every continuation token is the
        argmax) per pair, in order."""
        self.truncated = 0
        rows = [self._row(pair) for pair in pairs]
        self._report_truncation(len(pairs))
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        with tqdm(total=len(rows), desc=f"loglikelihood ({self.layout})", unit="req", disable=disable_tqdm) as bar:
            for indices in self._batches([_sort_key(row) for row in rows]):
                batch_rows = [rows[i] for i in indices]
                score = self._score_through_cache if self._cacheable(batch_rows) else self._score_whole
                scores, greedy = score(batch_rows)
                for slot, i in enumerate(indices):
                    results[i] = (float(scores[slot]), bool(greedy[slot]))
                bar.update(len(indices))
        return results  # type: ignore[return-value]

    def _score_whole(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """One forward pass over context + continuation per row (`Model.score_tokens`)."""
        token_ll, is_argmax, weights = jax.device_get(
            evaluation.jitted(self.model, "score_tokens")(self.params, self._pad_batch(rows)))
        return (token_ll * weights).sum(axis=-1), (is_argmax | (weights == 0)).all(axis=-1)

    def _cacheable(self, rows: list[dict]) -> bool:
        """Whether `_score_through_cache` may take the batch: short continuations (a few decoding
        steps each), and a cache that a learned position table holds."""
        if not self.share_contexts or max(len(_continuation(r)) for r in rows) > CACHED_CONTINUATION:
            return False
        if self.model.config.position != "learned" or self.layout == "encoder_decoder":
            return True
        prompts, continuations = zip(*((_prompt(r), _continuation(r)) for r in rows))
        cache = _bucket(max(map(len, prompts)), self.lengths["decoder"]) + _steps(max(map(len, continuations)))
        return cache <= self.model.config.max_length

    def _score_through_cache(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """Each distinct context prefilled once, its continuations decoded from its cache
        (`decoding.score_continuations`): multiple-choice questions run their context once."""
        distinct: dict[tuple, int] = {}
        which = np.zeros((self.batch_size,), np.int32)
        for n, row in enumerate(rows):
            which[n] = distinct.setdefault(_prompt(row), len(distinct))
        prompts = list(distinct)
        size = 1 << (len(prompts) - 1).bit_length()
        continuations = [_continuation(r) for r in rows]
        steps = _steps(max(map(len, continuations)))
        tokens = _padded(continuations, self.batch_size, steps)
        weights = (np.arange(steps)[None, :] < np.asarray([len(c) for c in continuations] +
                                                           [0] * (self.batch_size - len(rows)))[:, None])
        scores, greedy = decoding.score_continuations(self.model, self.params, self._as_prompts(prompts, size),
                                                      which, tokens, weights.astype(np.float32))
        return jax.device_get(scores), jax.device_get(greedy)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for n, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self._rolling_window(), context_len=1)):
                windows.append(Pair([t for t in context if t != NO_CONTEXT], continuation))
                owners.append(n)
        totals = [0.0] * len(requests)
        for owner, (score, _) in zip(owners, self.score_pairs(windows, disable_tqdm)):
            totals[owner] += score
        return totals

    def _report_truncation(self, requests: int) -> None:
        """One warning if `_fit` cut contexts since `truncated` was last reset: never silent."""
        if self.truncated:
            log.warning("%d of %d requests are longer than the model's length (%s): their contexts lost their "
                        "first tokens, as lm-eval's hf model does (truncation='error' refuses them instead)",
                        self.truncated, requests, _describe(self.lengths))

    def _rolling_window(self) -> int:
        """Scored tokens per window: the decoder's positions, less the start id and (prefix-LM) the
        window's one context token and EOS."""
        reserved = (self.start_token is not None) + (2 if self.layout == "prefix_lm" else 0)
        return self.lengths["decoder"] - reserved

    # --- generation -------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        outputs: list[str | None] = [None] * len(requests)
        self.truncated = 0
        groups: dict[tuple, list[int]] = {}
        for n, req in enumerate(requests):
            groups.setdefault(self._generation_settings(req.args[1]), []).append(n)
        with tqdm(total=len(requests), desc=f"generate_until ({self.layout})", unit="req",
                  disable=disable_tqdm) as bar:
            for (max_new, temperature, until), members in groups.items():
                contexts = [self.tok_encode(requests[n].args[0]) for n in members]
                for indices in self._batches([-len(c) for c in contexts]):
                    texts = self._generate([contexts[i] for i in indices], max_new, temperature)
                    for i, text in zip(indices, texts):
                        outputs[members[i]] = _cut_at_stops(text, until)
                    bar.update(len(indices))
        self._report_truncation(len(requests))
        return outputs  # type: ignore[return-value]

    def _generation_settings(self, gen_kwargs: dict) -> tuple[int, float, tuple[str, ...]]:
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None)
        until = (until,) if isinstance(until, str) else tuple(until or ())
        max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
        return max_new, temperature, until

    def _generate(self, contexts: list[list[int]], max_new: int, temperature: float) -> list[str]:
        prompts = self._prompts(contexts, max_new)
        config = decoding.DecodeConfig(method="sample" if temperature > 0 else "greedy", max_new_tokens=max_new,
                                       temperature=temperature or 1.0, eos_id=self.eot_token_id)
        result = decoding.generate(self.model, self.params, prompts, config, jax.random.key(self.seed))
        tokens = np.asarray(result.tokens)[:len(contexts)]
        return [self.tok_decode(_until_eos(row, self.eot_token_id)) for row in tokens]

    def _prompts(self, contexts: list[list[int]], max_new: int) -> model_lib.Prompts:
        if self.layout == "encoder_decoder":
            return self._as_prompts([self._fit(c, self.lengths["encoder"] - 1, "generation") + [self.eot_token_id]
                                     for c in contexts])
        start = [] if self.start_token is None else [self.start_token]
        eos = [self.eot_token_id] if self.context_eos else []
        room = self.lengths["decoder"] - max_new - len(start) - len(eos)
        prompts = [start + self._fit(c, room, "generation") + eos for c in contexts]
        return self._as_prompts([p or [self.eot_token_id] for p in prompts])  # an empty GPT-2 prompt: EOS, as lm-eval's hf

    def _as_prompts(self, prompts: Sequence[Sequence[int]], rows: int | None = None) -> model_lib.Prompts:
        """Prompts of `rows` rows (default batch_size; rows past the prompts are one padding token):
        an encoder-decoder's `prompts` are its encoder tokens (the decoder starts at id 0), other
        layouts' the decoder's, each padded to its `_bucket` length."""
        rows = rows or self.batch_size
        if self.layout == "encoder_decoder":
            encoder = _padded(prompts, rows, _bucket(max(map(len, prompts)), self.lengths["encoder"]))
            return model_lib.Prompts(np.zeros((rows, 1), np.int32), np.ones((rows,), np.int32), encoder)
        lengths = np.ones((rows,), np.int32)
        lengths[:len(prompts)] = [len(p) for p in prompts]
        return model_lib.Prompts(_padded(prompts, rows, _bucket(int(lengths.max()), self.lengths["decoder"])), lengths)

    # --- rows and batches -------------------------------------------------------------------
    def _row(self, pair: Pair) -> dict[str, list[int] | int]:
        """One request as unpadded feature lists (the layout table of the module docstring)."""
        continuation = pair.continuation
        if not continuation:
            raise HarnessInputError("a request with an empty continuation: nothing to score")
        eos = [self.eot_token_id] if self.context_eos else []
        if self.layout == "encoder_decoder":
            if len(continuation) > self.lengths["decoder"]:
                raise self._too_long(len(continuation), "decoder")
            encoder = self._fit(pair.context, self.lengths["encoder"] - 1, "encoder") + eos
            return {"encoder_input_tokens": encoder, "decoder_input_tokens": [0] + continuation[:-1],
                    "decoder_target_tokens": continuation, "scored_from": 0}
        start = [] if self.start_token is None else [self.start_token]
        room = self.lengths["decoder"] + 1 - len(start) - len(eos) - len(continuation)
        if room < (0 if start else 1):
            raise self._too_long(len(continuation), "decoder")
        prefix = start + self._fit(pair.context, room, "decoder") + eos
        sequence = prefix + continuation
        return {"decoder_input_tokens": sequence[:-1], "decoder_target_tokens": sequence[1:],
                "scored_from": len(prefix) - 1}

    def _fit(self, context: list[int], room: int, where: str) -> list[int]:
        """`context`, less its first tokens if it has more than `room` (counted and logged)."""
        if len(context) <= room:
            return context
        if self.truncation == "error":
            raise HarnessInputError(
                f"a context of {len(context)} tokens does not fit the {where} ({_describe(self.lengths)} with this "
                f"request's other tokens): pass truncation='left' (--truncation=left) to drop its first tokens, "
                "or a larger max_length")
        self.truncated += 1
        return context[len(context) - max(room, 0):]

    def _too_long(self, tokens: int, stack: str) -> HarnessInputError:
        return HarnessInputError(f"a continuation of {tokens} tokens does not fit the model's {stack} "
                                 f"({_describe(self.lengths)}): pass a larger max_length, or a task with "
                                 "shorter targets")

    def _batches(self, keys: Sequence) -> Iterator[list[int]]:
        """Request indices in the order of their sort keys (ties: request order), in groups of batch_size."""
        order = sorted(range(len(keys)), key=lambda i: (keys[i], i))
        for start in range(0, len(order), self.batch_size):
            yield order[start:start + self.batch_size]

    def _pad_batch(self, rows: list[dict]) -> dict[str, np.ndarray]:
        """Rows -> a batch of batch_size rows (empty rows weigh nothing), each feature padded to
        its `_bucket` length."""
        size = self.batch_size
        decoder_length = _bucket(max(len(r["decoder_target_tokens"]) for r in rows), self.lengths["decoder"])
        batch = {name: _padded([r[name] for r in rows], size, decoder_length)
                 for name in ("decoder_input_tokens", "decoder_target_tokens")}
        valid = np.zeros((size, decoder_length), bool)
        weights = np.zeros((size, decoder_length), np.float32)
        for n, row in enumerate(rows):
            valid[n, :len(row["decoder_target_tokens"])] = True
            weights[n, row["scored_from"]:len(row["decoder_target_tokens"])] = 1.0
        batch.update(decoder_valid=valid, decoder_loss_weights=weights)
        if self.layout == "encoder_decoder":
            length = _bucket(max(len(r["encoder_input_tokens"]) for r in rows), self.lengths["encoder"])
            batch["encoder_input_tokens"] = _padded([r["encoder_input_tokens"] for r in rows], size, length)
        if self.layout == "prefix_lm":
            indicator = np.zeros((size, decoder_length), np.int32)
            if self.bidirectional_prefix:
                for n, row in enumerate(rows):
                    indicator[n] = features.prefix_indicator(decoder_length, row["scored_from"])
            batch["decoder_causal_attention"] = indicator
        return batch


# --- helpers ------------------------------------------------------------------------------------
def vocabulary_of(loaded: evaluation.LoadedCheckpoint) -> tuple[Any, int | None]:
    """(vocabulary, start token) of a loaded checkpoint: an imported Hugging Face model's own
    tokenizer (a GPT-2 starts its text at position 0: no start token), else the configured
    vocabulary (which `load_checkpoint` set from the saved data settings) and the start id 0."""
    if os.path.isdir(os.path.join(loaded.model_dir, convert.common.HF_SUBDIR)):
        vocabulary = convert.load_vocabulary(loaded.model_dir)
        return vocabulary, None if loaded.model.config.layout == "decoder_only" else 0
    return tasks.configured_vocabulary(), 0


def _stack_limits(config, task_feature_lengths: dict[str, int], max_length: int | None) -> dict[str, int]:
    """Positions each stack may hold: `max_length` for every stack if given, else the lengths the
    model was trained at, else (an imported model) its position table or 2048; never more than a
    learned position table."""
    trained = features.stack_lengths(config.layout, task_feature_lengths) if task_feature_lengths else {}
    stacks = ("encoder", "decoder") if config.layout == "encoder_decoder" else ("decoder",)
    limits = {}
    for stack in stacks:
        limit = max_length or trained.get(stack) or config.max_length
        if config.position == "learned":
            limit = min(limit, config.max_length)
        limits[stack] = int(limit)
    return limits


def _describe(lengths: dict[str, int]) -> str:
    return ", ".join(f"{stack} {n} positions" for stack, n in lengths.items())


def _prompt(row: dict) -> tuple[int, ...]:
    """What a row's continuation follows: the encoder's tokens, or the decoder's inputs up to the
    first scored position."""
    if "encoder_input_tokens" in row:
        return tuple(row["encoder_input_tokens"])
    return tuple(row["decoder_input_tokens"][:row["scored_from"] + 1])


def _continuation(row: dict) -> list[int]:
    return row["decoder_target_tokens"][row["scored_from"]:]


def _sort_key(row: dict) -> tuple:
    """Longest first; rows that share a context next to each other."""
    prompt = _prompt(row)
    return -len(prompt) - len(row["decoder_target_tokens"]), prompt


def _steps(length: int) -> int:
    """Decoding steps for a batch whose longest continuation has `length` tokens: a power of two."""
    return 1 << max(length - 1, 0).bit_length()


def _bucket(length: int, limit: int) -> int:
    """The padded length of a batch whose longest row has `length` tokens: the next multiple of an
    eighth of the next power of two (at least MIN_BUCKET), capped at the stack's limit. Eight
    shapes per octave: at most 1/8 of a batch is padding, and a task compiles a handful of shapes."""
    step = max(MIN_BUCKET, (1 << max(length - 1, 0).bit_length()) // 8)
    return min(-(-length // step) * step, max(limit, length))


def _padded(rows: Sequence[Sequence[int]], size: int, length: int) -> np.ndarray:
    out = np.zeros((size, length), np.int32)
    for n, row in enumerate(rows):
        out[n, :len(row)] = row
    return out


def _until_eos(tokens: np.ndarray, eos_id: int) -> list[int]:
    """Generated ids before the first EOS (all of them if there is none)."""
    tokens = tokens.tolist()
    return tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens


def _cut_at_stops(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
