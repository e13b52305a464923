"""The lm-evaluation-harness model: each layout scores a request as its own training features
would, independently of batching, and an imported Hugging Face model as lm-eval's `hf` model does.
"""
from __future__ import annotations

import functools
import logging

import numpy as np
import pytest

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from t5x_like.data import feature_converters, tasks  # noqa: E402
from t5x_like.inference import decoding, evaluation, harness  # noqa: E402
from t5x_like.model import model as models  # noqa: E402
from tests.model_fixtures import init_params, tiny_config  # noqa: E402

LAYOUTS = ("decoder_only", "prefix_lm", "encoder_decoder")


def one_fast(fast: str) -> list:
    """Every layout, the others than `fast` in the slow suite (the fast loop's time is shared)."""
    return [layout if layout == fast else pytest.param(layout, marks=pytest.mark.slow) for layout in LAYOUTS]
LENGTHS = {"inputs": 64, "targets": 24}
REQUESTS = [("The cat sat on the", " mat"), ("One, two,", " three four"), ("", "Hello there"),
            ("A much longer context that goes on and on", "!"), ("x", " y z")]


@functools.lru_cache(maxsize=None)
def model_and_params(layout: str):
    return init_params(tiny_config(layout, vocab_size=384))


class ShowingIds:
    """The byte vocabulary, except that decode shows the ids ("7,7,300,"): a random model's
    generations are mostly ids that decode to nothing."""

    def __init__(self):
        self.bytes = tasks.configured_vocabulary()
        self.eos_id = self.bytes.eos_id

    def encode(self, text):
        return self.bytes.encode(text)

    def decode(self, ids):
        return "".join(f"{i}," for i in ids)


def adapter(layout: str, vocabulary=None, **kwargs) -> harness.HarnessLM:
    model, params = model_and_params(layout)
    kwargs.setdefault("task_feature_lengths", LENGTHS)
    return harness.HarnessLM(model, params, vocabulary or tasks.configured_vocabulary(), **kwargs)


def instances(kind: str, arguments) -> list[Instance]:
    return [Instance(kind, {}, args, n) for n, args in enumerate(arguments)]


def reference_score(layout: str, context: str, continuation: str) -> float:
    """Model.score on the batch the layout's own seqio feature converter makes of one example
    (inputs end with EOS where the layout has an input/target boundary, as seqio's tasks do)."""
    import tensorflow as tf
    vocabulary = tasks.configured_vocabulary()
    inputs = list(vocabulary.encode(context)) + ([vocabulary.eos_id] if layout != "decoder_only" else [])
    targets = list(vocabulary.encode(continuation))
    example = {"inputs": np.asarray(inputs, np.int32), "targets": np.asarray(targets, np.int32)}
    dataset = tf.data.Dataset.from_tensors(example)
    converter = feature_converters.for_layout(layout, True, pack=False)
    batch = next(converter(dataset, LENGTHS).batch(1).as_numpy_iterator())  # padded: one compile per layout
    model, params = model_and_params(layout)
    return float(evaluation.jitted(model, "score")(params, batch)[0])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_loglikelihoods_equal_model_score_on_the_layouts_own_features(layout):
    lm = adapter(layout, batch_size=3)
    ours = [score for score, _ in lm.loglikelihood(instances("loglikelihood", REQUESTS), disable_tqdm=True)]
    # an empty context: the decoder's start id alone (causal) or an encoder of just EOS
    expected = [reference_score(layout, c, k) for c, k in REQUESTS]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", one_fast("prefix_lm"))
def test_shared_contexts_through_the_cache_score_as_whole_sequences_do(layout):
    """Multiple-choice requests (a context, several answers): prefilling each context once and
    decoding its answers from the cache gives the one-forward-pass scores."""
    choices = [(context, answer) for context, _ in REQUESTS[:3] for answer in (" mat", " three four", "?")]
    requests = instances("loglikelihood", choices)
    cached = adapter(layout, batch_size=4).loglikelihood(requests, disable_tqdm=True)
    whole = adapter(layout, batch_size=4, share_contexts=False).loglikelihood(requests, disable_tqdm=True)
    np.testing.assert_allclose([s for s, _ in cached], [s for s, _ in whole], rtol=1e-5, atol=1e-5)
    assert [g for _, g in cached] == [g for _, g in whole]


@pytest.mark.parametrize("layout", one_fast("encoder_decoder"))
def test_results_do_not_depend_on_batch_size_or_request_order(layout):
    requests = instances("loglikelihood", REQUESTS)
    one_by_one = adapter(layout, batch_size=1).loglikelihood(requests, disable_tqdm=True)
    order = [3, 0, 4, 2, 1]
    # batch 3, as above: the programs are compiled already, and 3 rows leave a padding row in the last batch
    shuffled = adapter(layout, batch_size=3).loglikelihood([requests[i] for i in order], disable_tqdm=True)
    back = [None] * len(order)
    for position, i in enumerate(order):
        back[i] = shuffled[position]
    np.testing.assert_allclose([s for s, _ in back], [s for s, _ in one_by_one], rtol=1e-5, atol=1e-5)
    assert [g for _, g in back] == [g for _, g in one_by_one]


def greedy_ids(layout: str, context: list[int], steps: int) -> list[int]:
    """decoding.generate's greedy ids after the layout's prompt for `context` (its own call)."""
    model, params = model_and_params(layout)
    eos = tasks.configured_vocabulary().eos_id
    if layout == "encoder_decoder":
        prompts = models.Prompts(np.zeros((1, 1), np.int32), np.ones((1,), np.int32),
                                 np.asarray([context + [eos]], np.int32))
    else:
        prompt = [0] + context + ([eos] if layout == "prefix_lm" else [])
        prompts = models.Prompts(np.asarray([prompt], np.int32), np.asarray([len(prompt)], np.int32))
    tokens = decoding.generate(model, params, prompts, decoding.DecodeConfig(max_new_tokens=steps, eos_id=eos)).tokens
    ids = [int(t) for t in np.asarray(tokens)[0]]
    return ids[:ids.index(eos)] if eos in ids else ids


@pytest.mark.parametrize("layout", LAYOUTS)
def test_generate_until_is_greedy_decoding_cut_at_the_first_stop_sequence(layout):
    lm = adapter(layout, vocabulary=ShowingIds())
    context = "The cat sat"
    expected = greedy_ids(layout, list(lm.vocabulary.encode(context)), 6)
    free, cut = lm.generate_until(instances("generate_until", [
        (context, {"until": [], "max_gen_toks": 6}),
        (context, {"until": [f"{expected[0]},"], "max_gen_toks": 6})]), disable_tqdm=True)
    assert free == "".join(f"{i}," for i in expected)
    assert cut == ""  # the first id is the stop sequence


def test_is_greedy_is_true_exactly_when_every_continuation_token_is_the_argmax():
    lm = adapter("decoder_only")
    tokens = list(lm.vocabulary.encode("The cat sat"))
    argmax = greedy_ids("decoder_only", tokens, 3)
    other = [(argmax[0] + 1) % 256 + 3] + argmax[1:]
    assert [g for _, g in lm.score_pairs([harness.Pair(tokens, argmax), harness.Pair(tokens, other)])] == [True, False]


@pytest.mark.parametrize("layout", ("decoder_only", "prefix_lm"))
def test_rolling_loglikelihood_of_a_text_within_one_window_is_its_unconditional_loglikelihood(layout):
    lm = adapter(layout)
    text = "a short document"
    rolling = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,)]), disable_tqdm=True)[0]
    whole = lm.score_pairs([harness.Pair([], list(lm.vocabulary.encode(text)))])[0][0]
    assert rolling == pytest.approx(whole, rel=1e-5, abs=1e-5)


def test_a_long_context_loses_its_first_tokens_and_says_so(caplog):
    lm = adapter("decoder_only", max_length=16)
    tokens = list(lm.vocabulary.encode("0123456789abcdefghij"))
    with caplog.at_level(logging.WARNING):
        cut = lm.score_pairs([harness.Pair(tokens, [50, 51])])
    assert "1 of 1 requests are longer" in caplog.text
    # 16 input positions: the start id, the context's last 14 tokens, the first scored token
    assert cut == lm.score_pairs([harness.Pair(tokens[-14:], [50, 51])])
    with pytest.raises(harness.HarnessInputError, match="does not fit"):
        adapter("decoder_only", max_length=16, truncation="error").score_pairs([harness.Pair(tokens, [50, 51])])
    with pytest.raises(harness.HarnessInputError, match="continuation of 20 tokens"):
        lm.score_pairs([harness.Pair([], tokens)])


def test_an_encoder_only_model_is_refused_in_one_line():
    model, params = init_params(tiny_config("encoder_only", vocab_size=384))
    with pytest.raises(harness.HarnessInputError, match="encoder_only model .* scores no continuations"):
        harness.HarnessLM(model, params, tasks.configured_vocabulary())
