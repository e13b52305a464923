"""Properties of the pretraining objectives (objectives.py), on real tf.data pipelines."""
from __future__ import annotations

import numpy as np
import pytest
import seqio
from hypothesis import given, settings
from hypothesis import strategies as st

from t5x_like.data import objectives
from t5x_like.data import vocab as vocab_lib
from tests.data_fixtures import EOS, SENTINELS, VOCAB, objective_task, random_texts, run, strip_eos, tokens_of

TEXTS = random_texts(60, seed=1)


# ---------------------------------------------------------------- lengths

def test_span_corruption_lengths_match_t5_for_512_inputs():
    assert objectives.span_corruption_raw_length(512, 114) == 568
    assert objectives.span_corruption_targets_length(512) == 114


@settings(max_examples=60, deadline=None)
@given(inputs=st.integers(8, 700), targets=st.integers(8, 300),
       density=st.sampled_from([0.15, 0.5]), span=st.sampled_from([3.0, 8.0]))
def test_span_corruption_raw_length_always_fits_and_is_maximal(inputs, targets, density, span):
    try:
        n = objectives.span_corruption_raw_length(inputs, targets, density, span)
    except ValueError:
        return  # too short to hold anything: reported, not silently wrong
    noise, nonnoise, spans = objectives._span_counts(n, density, span)
    assert nonnoise + spans + 1 <= inputs and noise + spans + 1 <= targets
    assert spans <= vocab_lib.NUM_SENTINELS


@settings(max_examples=60, deadline=None)
@given(inputs=st.integers(2, 600), targets=st.integers(2, 600),
       low=st.floats(0, 1), width=st.floats(0, 1))
def test_prefix_lm_raw_length_fits_every_allowed_split(inputs, targets, low, width):
    bounds = (low, min(1.0, low + width))
    n = objectives.prefix_lm_raw_length(inputs, targets, bounds)
    lo, hi = objectives._prefix_split_bounds(n, bounds)
    assert hi + 1 <= inputs and n - lo + 1 <= targets


# ---------------------------------------------------------------- span corruption

def _span_stats(examples):
    noise = spans = total = 0
    for ex in examples:
        targets = strip_eos(ex["targets"])
        spans += sum(t in SENTINELS for t in targets)
        noise += sum(t not in SENTINELS for t in targets)
        total += sum(t not in SENTINELS for t in strip_eos(ex["inputs"])) + sum(t not in SENTINELS for t in targets)
    return noise / total, noise / spans


@pytest.mark.parametrize("density,span", [(0.15, 3.0), (0.15, 8.0), (0.5, 3.0)])
def test_span_corruption_density_and_mean_span_converge_to_configured(density, span):
    task = objective_task(objectives.span_corruption(density, span), random_texts(150, seed=2, min_words=60))
    examples = run(task, {"inputs": 256, "targets": 256})
    measured_density, measured_span = _span_stats(examples)
    assert measured_density == pytest.approx(density, abs=0.01)
    assert measured_span == pytest.approx(span, rel=0.1)


def test_span_corruption_inputs_and_targets_reconstruct_the_text():
    task = objective_task(objectives.span_corruption(), TEXTS)
    examples = run(task, {"inputs": 64, "targets": 16})
    assert all(len(ex["inputs"]) <= 64 and len(ex["targets"]) <= 16 for ex in examples)
    rebuilt = [t for ex in examples for t in objectives.reconstruct_from_spans(ex["inputs"], ex["targets"])]
    assert rebuilt == tokens_of(TEXTS)
    assert VOCAB.decode(rebuilt) == "".join(TEXTS)


def test_span_corruption_sentinels_count_down_from_extra_id_0():
    task = objective_task(objectives.span_corruption(), TEXTS[:5])
    ex = run(task, {"inputs": 128, "targets": 32})[0]
    used = [t for t in ex["inputs"] if t in SENTINELS]
    assert used == [vocab_lib.sentinel_id(i) for i in range(len(used))]
    assert [t for t in ex["targets"] if t in SENTINELS] == used


def test_t5_layout_has_t5s_sentinel_ids_and_puts_modes_and_mask_just_above_the_vocabulary():
    t5 = seqio.ByteVocabulary(extra_ids=vocab_lib.NUM_SENTINELS)
    assert vocab_lib.t5_layout(t5) and not vocab_lib.t5_layout(VOCAB)
    assert vocab_lib.sentinel_ids(t5) == [t5.vocab_size - 1 - k for k in range(vocab_lib.NUM_SENTINELS)]
    specials = [vocab_lib.mode_token_id(m, t5) for m in vocab_lib.MODE_TOKENS] + [vocab_lib.mask_id(t5)]
    assert specials == list(range(t5.vocab_size, t5.vocab_size + 4))
    assert vocab_lib.ids_used(t5) == t5.vocab_size + 4 <= vocab_lib.embedding_rows(t5)
    task = objective_task(objectives.span_corruption(mode="[NLG]", vocabulary=t5), TEXTS[:5], vocabulary=t5)
    ex = run(task, {"inputs": 128, "targets": 32})[0]
    assert ex["inputs"][0] == vocab_lib.mode_token_id("[NLG]", t5)
    used = [t for t in ex["inputs"] if t in set(vocab_lib.sentinel_ids(t5))]
    assert used and used == [t5.vocab_size - 1 - k for k in range(len(used))]
    assert vocab_lib.decode_with_special_tokens(ex["inputs"], t5).startswith("[NLG]")


# ---------------------------------------------------------------- prefix LM

@pytest.mark.parametrize("bounds", [(0.0, 1.0), (0.25, 0.5)])
def test_prefix_lm_inputs_plus_targets_equal_the_text(bounds):
    task = objective_task(objectives.prefix_lm(bounds), TEXTS)
    examples = run(task, {"inputs": 48, "targets": 48})
    pieces = [(strip_eos(ex["inputs"]), strip_eos(ex["targets"])) for ex in examples]
    assert [t for i, tg in pieces for t in i + tg] == tokens_of(TEXTS)
    fractions = [len(i) / (len(i) + len(tg)) for i, tg in pieces if len(i) + len(tg) >= 20]
    assert min(fractions) >= bounds[0] - 0.06 and max(fractions) <= bounds[1] + 0.06
    assert len(set(len(i) for i, _ in pieces)) > 3  # the split point varies


# ---------------------------------------------------------------- MLM

def test_mlm_selects_15_percent_with_80_10_10():
    task = objective_task(objectives.mlm(), random_texts(120, seed=3, min_words=50))
    examples = run(task, {"inputs": 128, "targets": 128})
    selected = kept = masked = candidates = 0
    for ex in examples:
        inputs, targets, weights = ex["inputs"], ex["targets"], ex[objectives.MLM_WEIGHTS_KEY]
        assert len(inputs) == len(targets) == len(weights) and targets[-1] == inputs[-1] == EOS
        assert weights[-1] == 1  # EOS is never selected
        assert np.all((inputs == targets) | (weights == 2))  # only selected positions change
        sel = weights == 2
        candidates += len(targets) - 1
        selected += sel.sum()
        masked += (inputs[sel] == vocab_lib.mask_id()).sum()
        kept += (inputs[sel] == targets[sel]).sum()
    assert selected / candidates == pytest.approx(0.15, abs=0.01)
    assert masked / selected == pytest.approx(0.8, abs=0.03)
    assert kept / selected == pytest.approx(0.1 + 0.1 / 256, abs=0.03)
    assert 1 - (masked + kept) / selected == pytest.approx(0.1, abs=0.03)


def test_mlm_targets_are_the_original_text():
    examples = run(objective_task(objectives.mlm(), TEXTS), {"inputs": 40, "targets": 40})
    assert [t for ex in examples for t in strip_eos(ex["targets"])] == tokens_of(TEXTS)


def test_mlm_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="equal inputs and targets"):
        run(objective_task(objectives.mlm(), TEXTS), {"inputs": 40, "targets": 20})


# ---------------------------------------------------------------- UL2

@pytest.mark.parametrize("denoiser", objectives.UL2_DENOISERS, ids=lambda d: d.name)
def test_ul2_mode_token_matches_the_denoiser(denoiser):
    task = objective_task(denoiser.preprocessors(), TEXTS[:20])
    examples = run(task, {"inputs": 128, "targets": 128})
    mode = vocab_lib.mode_token_id(denoiser.family)
    assert all(ex["inputs"][0] == mode for ex in examples)
    has_sentinels = [any(t in SENTINELS for t in ex["inputs"]) for ex in examples]
    if denoiser.family == "S":
        assert not any(has_sentinels)
        rebuilt = [t for ex in examples for t in strip_eos(ex["inputs"])[1:] + strip_eos(ex["targets"])]
        assert rebuilt == tokens_of(TEXTS[:20])
    else:
        assert all(has_sentinels)
        rebuilt = [t for ex in examples for t in objectives.reconstruct_from_spans(ex["inputs"], ex["targets"])]
        assert rebuilt == tokens_of(TEXTS[:20])


def test_ul2_mixture_draws_all_three_modes():
    ds = seqio.get_mixture_or_task("shakespeare_ul2").get_dataset(
        {"inputs": 128, "targets": 128}, split="validation", shuffle=True, seed=0, num_epochs=1)
    modes = {int(ex["inputs"][0]) for ex, _ in zip(ds.as_numpy_iterator(), range(60))}
    assert modes == {vocab_lib.mode_token_id(m) for m in vocab_lib.MODE_TOKENS}


# ---------------------------------------------------------------- bad input

def test_empty_documents_are_dropped_and_long_ones_split():
    texts = ["", "   ", "x" * 1000, "short"]
    examples = run(objective_task(objectives.causal_lm(), texts, with_inputs=False), {"targets": 100})
    lengths = [len(ex["targets"]) for ex in examples]
    # "" dropped; "   " is 3 tokens + EOS; 1000 bytes -> 10 pieces of 99 and one of 10, each + EOS.
    assert lengths == [4] + [100] * 10 + [11] + [6]
    assert all(ex["targets"][-1] == EOS for ex in examples)
