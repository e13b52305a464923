"""The harness model on imported Hugging Face models gives lm-eval's own `hf` model's loglikelihoods.

GPT-2 end to end (text -> its byte-level BPE -> scores); T5 on token ids (this transformers
builds no T5 tokenizer from a SentencePiece file offline), both to 1e-4. Skipped without
torch, transformers, accelerate (lm-eval's `hf` model) or lm-eval.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from t5x_like.inference import evaluation, harness  # noqa: E402
from t5x_like.interop import convert  # noqa: E402
from tests.interop.test_parity import T5_CASES, build_gpt2, build_t5  # noqa: E402
from tests.interop.test_vocab import write_gpt2_tokenizer  # noqa: E402

TOLERANCE = 1e-4
MERGES = ["t h", "Ġ t", "h e", "Ġt he", "a t", "Ġ c", "Ġc at", "Ġ s", "Ġs at"]
REQUESTS = [("The cat sat on the", " mat"), ("the cat", " sat"), ("", "the cat sat"), ("!!", " !"),
            ("A longer context, with punctuation: sat", " on the mat.")]


def test_imported_gpt2_loglikelihoods_equal_lm_evals_hf_model(tmp_path):
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    vocab_size = len(write_gpt2_tokenizer(hf_dir, MERGES))
    build_gpt2({"vocab_size": vocab_size, "n_embd": 32, "n_head": 4, "n_layer": 2, "n_positions": 64}, hf_dir)
    convert.import_hf(str(hf_dir), str(tmp_path / "model"))
    requests = [Instance("loglikelihood", {}, args, n) for n, args in enumerate(REQUESTS)]
    expected = HFLM(pretrained=str(hf_dir), device="cpu", batch_size=2).loglikelihood(requests, disable_tqdm=True)
    ours = harness.HarnessLM.from_model_dir(str(tmp_path / "model"), batch_size=3).loglikelihood(
        requests, disable_tqdm=True)
    np.testing.assert_allclose([s for s, _ in ours], [s for s, _ in expected], atol=TOLERANCE, rtol=TOLERANCE)
    assert [g for _, g in ours] == [g for _, g in expected]


def test_imported_t5_token_loglikelihoods_equal_lm_evals_hf_model(tmp_path):
    case = T5_CASES[0]  # tied: transformers loads an untied head differently through lm-eval's path
    case = dataclasses.replace(case, hf_config={**case.hf_config, "decoder_start_token_id": 0, "pad_token_id": 0,
                                                "eos_token_id": 1})
    hf_dir = tmp_path / "hf"
    build_t5(case, hf_dir)
    write_gpt2_tokenizer(hf_dir, MERGES)  # HFLM loads some tokenizer; the requests below are token ids
    convert.import_hf(str(hf_dir), str(tmp_path / "model"))
    pairs = [([5, 9, 17, 3], [22, 8, 4]), ([], [7, 7]), ([11] * 30, [3]), ([40, 2, 60], [61, 62, 63, 64])]
    eos = 1
    # lm-eval's seq2seq context is the tokenizer's encoding, which for T5 ends with EOS
    hf_requests = [(("", ""), context + [eos], continuation) for context, continuation in pairs]
    expected = HFLM(pretrained=str(hf_dir), device="cpu", batch_size=2, backend="seq2seq")._loglikelihood_tokens(
        hf_requests, disable_tqdm=True)
    loaded = evaluation.load_checkpoint(str(tmp_path / "model"))
    vocabulary = type("EosOnly", (), {"eos_id": eos})()
    ours = harness.HarnessLM(loaded.model, loaded.params, vocabulary, batch_size=3).score_pairs(
        [harness.Pair(context, continuation) for context, continuation in pairs])
    np.testing.assert_allclose([s for s, _ in ours], [s for s, _ in expected], atol=TOLERANCE, rtol=TOLERANCE)
    assert [g for _, g in ours] == [g for _, g in expected]
