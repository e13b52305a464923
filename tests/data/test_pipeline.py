"""get_dataset: determinism, sharding, clear errors; vocabulary layout; metrics; import cost."""
from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import seqio

import tests.data_fixtures  # noqa: F401  (registers the tasks)
from t5x_like.cli import vocab as vocab_cli
from t5x_like.data import metrics, pipeline, tasks, vocab_training
from t5x_like.data import vocab as vocab_lib


def _batches(seed=0, shard_id=0, num_shards=1, name="shakespeare_span_corruption", count=3):
    ds = pipeline.get_dataset(name, {"inputs": 64, "targets": 16}, "validation", "encoder_decoder",
                              batch_size=4, shuffle=True, seed=seed, shard_id=shard_id, num_shards=num_shards)
    return [b for b, _ in zip(ds.as_numpy_iterator(), range(count))]


def _same(a, b) -> bool:
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_fixed_seed_gives_identical_batches_and_other_seeds_or_shards_differ():
    first = _batches(seed=7)
    assert _same(first, _batches(seed=7))
    assert not _same(first, _batches(seed=8))
    shard0, shard1 = _batches(seed=7, shard_id=0, num_shards=2), _batches(seed=7, shard_id=1, num_shards=2)
    assert not _same(shard0, shard1)


def test_pipelines_built_in_threads_at_once_are_those_built_alone():
    # The objectives' random maps take their seeds from seqio's process-global counter while
    # a pipeline is built; grid cells build theirs in threads side by side.
    alone = {seed: _batches(seed=seed) for seed in (1, 2, 3)}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        together = dict(zip((1, 2, 3), pool.map(lambda seed: _batches(seed=seed), (1, 2, 3))))
    for seed in alone:
        assert _same(alone[seed], together[seed]), seed


def test_shards_hold_disjoint_documents():
    def documents(shard_id):
        ds = pipeline.get_dataset("shakespeare_causal_lm", {"targets": 4096}, "test", "decoder_only",
                                  batch_size=1, shuffle=False, shard_id=shard_id, num_shards=2, pack=False)
        return {bytes(b["decoder_target_tokens"][0][:200]) for b in ds.as_numpy_iterator()}
    zero, one = documents(0), documents(1)
    assert zero and one and not zero & one


@pytest.mark.parametrize("kwargs,message", [
    (dict(mixture_or_task_name="no_such_task"), "no seqio task or mixture named 'no_such_task'"),
    (dict(split="dev"), "has no split 'dev'"),
    (dict(task_feature_lengths={"targets": 16}), r"needs task_feature_lengths for \['inputs', 'targets'\]"),
    (dict(layout="decoder_encoder"), "unknown layout"),
    (dict(shard_id=2, num_shards=2), "0 <= shard_id < num_shards"),
])
def test_bad_arguments_fail_before_building_a_graph(kwargs, message):
    args = dict(mixture_or_task_name="shakespeare_prefix_lm", task_feature_lengths={"inputs": 16, "targets": 16},
                split="validation", layout="prefix_lm")
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pipeline.get_dataset(**args)


def test_encoder_only_pipeline_gives_mlm_features_with_about_15_percent_loss():
    ds = pipeline.get_dataset("shakespeare_mlm", {"inputs": 128, "targets": 128}, "validation",
                              "encoder_only", batch_size=8, seed=0)
    batch = next(ds.as_numpy_iterator())
    assert set(batch) == {"encoder_input_tokens", "encoder_target_tokens", "encoder_loss_weights",
                          "encoder_segment_ids", "encoder_positions"}
    real = batch["encoder_segment_ids"] > 0
    assert batch["encoder_loss_weights"].sum() / real.sum() == pytest.approx(0.15, abs=0.03)


def test_configured_mlm_rate_is_read_when_the_dataset_is_built():
    def masked_fraction():
        ds = pipeline.get_dataset("shakespeare_mlm", {"inputs": 128, "targets": 128}, "validation",
                                  "encoder_only", batch_size=8, seed=0)
        batch = next(ds.as_numpy_iterator())
        return batch["encoder_loss_weights"].sum() / (batch["encoder_segment_ids"] > 0).sum()

    tasks.configure(mlm_rate=0.4)  # the task was registered at 0.15, before this
    assert masked_fraction() == pytest.approx(0.4, abs=0.03)
    tasks.configure()
    assert masked_fraction() == pytest.approx(0.15, abs=0.03)
    with pytest.raises(ValueError, match=r"MLM rate must be in \(0, 1\)"):
        tasks.configure(mlm_rate=1.5)


def test_downstream_tasks_build_text_to_text_examples():
    ds = pipeline.get_dataset("probe_reverse", {"inputs": 32, "targets": 32}, "test", "encoder_decoder",
                              batch_size=2, shuffle=False, pack=False)
    batch = next(ds.as_numpy_iterator())
    source = vocab_lib.default_vocabulary().decode(batch["encoder_input_tokens"][0].tolist())
    target = vocab_lib.default_vocabulary().decode(batch["decoder_target_tokens"][0].tolist())
    assert source.startswith("reverse: ") and target == source.split(": ")[1][::-1]


# ---------------------------------------------------------------- vocabulary

def test_default_vocabulary_fits_the_models_and_special_ids_are_distinct():
    vocab = vocab_lib.default_vocabulary()
    assert vocab.vocab_size == vocab_lib.DEFAULT_VOCAB_SIZE == 384
    specials = vocab_lib.special_token_names()
    assert len(specials) == vocab_lib.NUM_SENTINELS + 4
    low, high = vocab_lib.regular_id_range()
    assert all(i >= high for i in specials) and low == 3 and high == 259
    assert vocab_lib.sentinel_id(0) == 383  # seqio: <extra_id_0> is the last id


def test_decode_with_special_tokens_names_sentinels_and_modes():
    vocab = vocab_lib.default_vocabulary()
    ids = [vocab_lib.mode_token_id("X"), *vocab.encode("ab"), vocab_lib.sentinel_id(0), *vocab.encode("c"), 1, 0]
    assert vocab_lib.decode_with_special_tokens(ids) == "[NLG]ab<extra_id_0>c"


def test_vocab_command_trains_once_then_reuses(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("\n\n".join(f"line {i} of the tiny corpus" for i in range(300)))
    tasks.register_text_files_task("test_vocab_corpus", str(tmp_path / "corpus.txt"))
    argv = ["--task", "test_vocab_corpus", "--size", "300", "--out", str(tmp_path / "vocab")]
    assert vocab_cli.main(argv) == 0
    assert "trained" in capsys.readouterr().out
    assert vocab_cli.main(argv) == 0
    assert "reused" in capsys.readouterr().out
    sp = vocab_lib.sentencepiece_vocabulary(vocab_training.model_path(str(tmp_path / "vocab"), "test_vocab_corpus", 300))
    assert sp.vocab_size == 300 + vocab_lib.NUM_EXTRA_IDS
    assert sp.decode(sp.encode("line 7 of the tiny corpus")) == "line 7 of the tiny corpus"
    assert vocab_lib.mask_id(sp) == sp.vocab_size - 1 - 103
    # T5's sentinel layout, as seqio's SentencePiece vocabulary spells the extra ids itself
    t5 = vocab_lib.sentencepiece_vocabulary(sp.sentencepiece_model_file, extra_ids=vocab_lib.NUM_SENTINELS)
    for v in (sp, t5):
        for k in (0, 1, vocab_lib.NUM_SENTINELS - 1):
            assert v.encode(f"<extra_id_{k}>") == [vocab_lib.sentinel_id(k, v)] == [v.vocab_size - 1 - k]
    assert vocab_lib.mask_id(t5) == t5.vocab_size + 3 == 300 + vocab_lib.NUM_SENTINELS + 3


def test_vocab_command_trains_on_several_tasks(tmp_path):
    for name, line in (("a", "line {i} of the tiny corpus"), ("b", "café número {i} del corpus")):
        (tmp_path / f"{name}.txt").write_text("\n\n".join(line.format(i=i) for i in range(300)))
        tasks.register_text_files_task(f"test_vocab_{name}", str(tmp_path / f"{name}.txt"))
    out = str(tmp_path / "vocab")
    pieces = {}
    for task in ("test_vocab_a", "test_vocab_a,test_vocab_b"):
        assert vocab_cli.main(["--task", task, "--size", "300", "--out", out]) == 0
        pieces[task] = len(vocab_lib.sentencepiece_vocabulary(vocab_training.model_path(out, task, 300)).encode("é"))
    assert vocab_training.model_path(out, "test_vocab_a,test_vocab_b", 300).endswith("test_vocab_a+test_vocab_b.sp300.model")
    # A character only the second task has gets a piece of its own when both tasks' text is
    # used; from the first task alone it falls back to its two UTF-8 bytes.
    assert pieces["test_vocab_a,test_vocab_b"] < pieces["test_vocab_a"], pieces


def test_downstream_tasks_registered_with_a_suffix_use_that_vocabulary_beside_the_byte_ones(tmp_path):
    (tmp_path / "corpus.txt").write_text("\n\n".join(f"a great review number {i}" for i in range(300)))
    tasks.register_text_files_task("test_suffix_corpus", str(tmp_path / "corpus.txt"))
    sp = vocab_lib.sentencepiece_vocabulary(vocab_training.train_sentencepiece("test_suffix_corpus", 300, str(tmp_path / "vocab")))
    names = tasks.register_downstream_tasks(sp, suffix="_sp300test")
    assert "sentiment_finefood_rank_sp300test" in names and all(n.endswith("_sp300test") for n in names)
    for name, vocabulary in (("sentiment_finefood", vocab_lib.default_vocabulary()),
                             ("sentiment_finefood_sp300test", sp)):
        task = seqio.get_mixture_or_task(name)
        row = next(task.get_dataset({"inputs": 64, "targets": 8}, "test", shuffle=False).as_numpy_iterator())
        assert task.output_features["inputs"].vocabulary is vocabulary
        assert row["inputs"].tolist() == vocabulary.encode(row["inputs_pretokenized"].decode())[:63] + [1]
    assert vocab_lib.embedding_rows(sp) == 512 and vocab_lib.embedding_rows(vocab_lib.default_vocabulary()) == 384


# ---------------------------------------------------------------- metrics

def test_metrics_values():
    assert metrics.accuracy(["great", "other"], ["great", "great"]) == {"accuracy": 50.0}
    assert metrics.exact_match(["12"], [" 12 "]) == {"exact_match": 100.0}
    assert metrics.bleu(["el rey de los judios"], ["el rey de los judios"])["bleu"] == pytest.approx(100.0)
    assert metrics.bleu(["el rey de los judios"], ["la casa"])["bleu"] < 10
    targets = [(0, True), (0, False), (1, False), (1, True)]
    assert metrics.rank_classification_accuracy(targets, [-1.0, -2.0, -1.0, -3.0]) == {"accuracy": 50.0}
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        metrics.accuracy(["a", "b"], ["a"])


# ---------------------------------------------------------------- import cost

def test_importing_the_tasks_module_registers_tasks_without_reading_data():
    code = textwrap.dedent("""
        import time, seqio
        import t5x_like.data.corpora as corpora, t5x_like.data.sword as sword
        start = time.perf_counter()
        import t5x_like.data.tasks  # noqa: F401  (registers the tasks)
        elapsed = time.perf_counter() - start
        assert corpora.shakespeare_documents.cache_info().currsize == 0
        assert sword.aligned_verses.cache_info().currsize == 0
        print(elapsed, len(seqio.TaskRegistry.names()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tests.data_fixtures.__file__.rsplit("/tests/", 1)[0])
    elapsed, registered = out.stdout.split()
    assert float(elapsed) < 3.0
    assert int(registered) >= 30
