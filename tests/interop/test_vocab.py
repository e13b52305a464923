"""An imported model's vocabulary: SentencePiece (T5) and GPT-2 byte-level BPE, from local files only."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from t5x_like.interop import convert
from t5x_like.model import config as config_lib
from t5x_like.model.model import Model

TINY_T5 = config_lib.t5_1_0(vocab_size=64, d_model=16, num_heads=2, head_dim=4, d_ff=24, num_encoder_layers=1,
                            num_decoder_layers=1)


def hf_dir_with(tmp_path, config) -> str:
    """An HF directory exported from random params of `config`."""
    pytest.importorskip("safetensors")
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), Model(config).abstract_params())
    convert.to_hf_dir(config, params, str(tmp_path / "hf"))
    return str(tmp_path / "hf")


def test_t5_sentencepiece_model_travels_with_the_checkpoint(tmp_path):
    import sentencepiece as spm
    hf_dir = hf_dir_with(tmp_path, TINY_T5)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the quick brown fox jumps over the lazy dog"] * 50))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "hf" / "spiece"), vocab_size=30,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 4}))
    model_dir = str(tmp_path / "model")
    convert.import_hf(hf_dir, model_dir)
    vocabulary = convert.load_vocabulary(model_dir)
    assert vocabulary.vocab_size == 30 + 4
    assert vocabulary.decode(vocabulary.encode("the lazy fox")) == "the lazy fox"
    convert.export_hf(model_dir, str(tmp_path / "out"))
    assert (tmp_path / "out" / "spiece.model").read_bytes() == (tmp_path / "hf" / "spiece.model").read_bytes()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def write_gpt2_tokenizer(directory, merges: list[str]) -> dict[str, int]:
    """A byte-level BPE tokenizer in `directory` (pathlib): bytes, then `merges`, then <|endoftext|>
    (also BOS, EOS and UNK); returns its vocabulary."""
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
         "bos_token": "<|endoftext|>"}))
    return vocab


def test_gpt2_bpe_vocabulary_encodes_and_decodes_in_python_and_tf(tmp_path):
    pytest.importorskip("transformers")
    tf = pytest.importorskip("tensorflow")
    from t5x_like.interop import hf_gpt2
    vocab = write_gpt2_tokenizer(tmp_path, ["h e", "l l", "he ll", "hell o", "Ġ w"])
    vocabulary = hf_gpt2.bpe_vocabulary(str(tmp_path))
    ids = vocabulary.encode("hello world!")
    assert ids[0] == vocab["hello"] and ids[1] == vocab["Ġw"] and ids[-1] == 0  # "!" is id 0 in byte-level BPE
    assert vocabulary.decode(ids) == "hello world!"
    assert vocabulary.eos_id == vocab["<|endoftext|>"] and vocabulary.vocab_size == len(vocab)
    tf_ids = vocabulary.encode_tf(tf.constant("hello world!"))
    assert tf_ids.numpy().tolist() == ids
    assert vocabulary.decode_tf(tf_ids).numpy().decode() == "hello world!"
