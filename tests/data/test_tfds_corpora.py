"""C4 / WikiText-103 / LM1B from prepared TFDS directories, and the configured vocabulary.

The directories are built offline under the real builder names, versions and features
(tests/corpus_fixtures.py); the SentencePiece model is trained on their text by `t5x-like vocab`.
"""
import numpy as np
import pytest
import seqio

from t5x_like.data import objectives, pipeline, task_sources, task_vocab, tasks
from t5x_like.data import vocab as vocab_lib
from tests.corpus_fixtures import CORPORA

OBJECTIVE_TASKS = ("causal_lm", "prefix_lm", "span_corruption", "mlm")


@pytest.fixture
def sp_corpora(real_corpora):
    """The corpora configured with their SentencePiece vocabulary (the defaults come back after)."""
    sp = vocab_lib.sentencepiece_vocabulary(real_corpora.sentencepiece_model)
    tasks.configure(tfds_data_dir=real_corpora.data_dir, vocabulary=sp)
    return real_corpora, sp


def test_every_objective_is_registered_for_each_corpus_with_its_tfds_name_and_splits():
    expected = {"c4": ("c4/en", ("train", "validation")),
                "wikitext103": ("wikitext103", ("train", "validation", "test")),
                "lm1b": ("lm1b", ("train", "test"))}
    for corpus, (dataset, splits) in expected.items():
        assert tasks.TFDS_CORPORA[corpus][0] == dataset
        for objective in OBJECTIVE_TASKS:
            task = seqio.get_mixture_or_task(f"{corpus}_{objective}")
            assert tuple(task.splits) == splits and task.source.dataset == dataset
            assert ("inputs" in task.output_features) == (objective in objectives.OBJECTIVES_WITH_INPUTS)
        ul2 = seqio.get_mixture_or_task(f"{corpus}_ul2")
        assert isinstance(ul2, seqio.Mixture) and len(ul2.tasks) == len(objectives.UL2_DENOISERS)


def test_the_configured_vocabulary_reaches_every_task_and_the_defaults_restore_bytes(real_corpora, tmp_path):
    sp = vocab_lib.sentencepiece_vocabulary(real_corpora.sentencepiece_model)
    (tmp_path / "mine.txt").write_text("some local text\n\nand more of it")
    tasks.register_text_files_task("test_local_files_follow", str(tmp_path / "mine.txt"))
    explicit = tasks.register_pretraining_tasks("test_explicit_bytes", task_sources.shakespeare_source,
                                                vocab_lib.default_vocabulary(), ("causal_lm",))[0]
    following = ["c4_span_corruption", "wikitext103_mlm", "lm1b_causal_lm", "c4_ul2", "shakespeare_prefix_lm",
                 "probe_copy", "sentiment_finefood_rank", "test_local_files_follow"]

    def vocabularies(names):  # the distinct vocabularies of the tasks' features (not hashable)
        found = []
        for name in names:
            for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)):
                for feature in task.output_features.values():
                    if not any(feature.vocabulary == v for v in found):
                        found.append(feature.vocabulary)
        return found

    tasks.configure(vocabulary=sp)
    assert tasks.configured_vocabulary() is sp and vocabularies(following) == [sp]
    assert vocabularies([explicit]) == [vocab_lib.default_vocabulary()]  # an explicit choice stays
    assert task_vocab.task_vocabulary("c4_ul2") is sp and task_vocab.task_vocabulary("synthetic") is None
    tasks.configure()
    assert vocabularies(following) == [vocab_lib.default_vocabulary()]


def test_span_corruption_on_c4_uses_sentencepiece_ids_and_its_extra_ids_as_sentinels(sp_corpora):
    corpora, sp = sp_corpora
    ds = pipeline.get_dataset("c4_span_corruption", {"inputs": 64, "targets": 16}, "validation", "encoder_decoder",
                              batch_size=8, shuffle=False, pack=False)
    batch = next(ds.as_numpy_iterator())
    inputs, targets = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
    assert inputs.max() < sp.vocab_size and (inputs[(inputs > 258) & (inputs < 400)]).size > 100  # pieces, not bytes
    specials = set(np.unique(np.concatenate([inputs.ravel(), targets.ravel()]))) & set(range(400, sp.vocab_size))
    assert specials and specials <= set(vocab_lib.sentinel_ids(sp))
    assert vocab_lib.sentinel_id(0, sp) == sp.vocab_size - 1 == 524 and 524 in specials
    documents = " ".join(corpora.documents["c4"]["validation"])
    for row_inputs, row_targets in zip(inputs, targets):
        text = sp.decode(objectives.reconstruct_from_spans(row_inputs, row_targets, sp))
        assert text and text in documents, text


def test_mlm_and_ul2_on_wikitext_use_the_vocabularys_mask_and_mode_tokens(sp_corpora):
    _, sp = sp_corpora
    lengths = {"inputs": 48, "targets": 48}
    mlm = next(pipeline.get_dataset("wikitext103_mlm", lengths, "validation", "encoder_only", batch_size=4,
                                    shuffle=False, pack=False).as_numpy_iterator())
    assert vocab_lib.mask_id(sp) == sp.vocab_size - 1 - 103 and vocab_lib.mask_id(sp) in mlm["encoder_input_tokens"]
    assert set(mlm["encoder_input_tokens"][mlm["encoder_input_tokens"] >= 400]) == {vocab_lib.mask_id(sp)}
    modes = {vocab_lib.mode_token_id(m, sp) for m in vocab_lib.MODE_TOKENS}
    ul2 = next(pipeline.get_dataset("wikitext103_ul2", {"inputs": 64, "targets": 32}, "train", "encoder_decoder",
                                    batch_size=16, shuffle=True, seed=1, pack=False).as_numpy_iterator())
    assert set(ul2["encoder_input_tokens"][:, 0]) <= modes


def test_each_shard_reads_its_own_part_of_the_prepared_split(sp_corpora):
    corpora, sp = sp_corpora
    source = seqio.get_mixture_or_task("c4_causal_lm").source
    assert source.supports_arbitrary_sharding
    parts = [[x["text"].decode() for x in source.get_dataset(
        "train", shuffle=False, shard_info=seqio.ShardInfo(i, 2)).as_numpy_iterator()] for i in range(2)]
    assert len(parts[0]) == len(parts[1]) == 120 and set(parts[0]) | set(parts[1]) == set(corpora.documents["c4"]["train"])
    firsts = [next(pipeline.get_dataset("c4_causal_lm", {"targets": 32}, "train", "decoder_only", batch_size=2,
                                        seed=0, shard_id=i, num_shards=2).as_numpy_iterator())["decoder_target_tokens"]
              for i in range(2)]
    assert not np.array_equal(firsts[0], firsts[1])


def test_a_model_smaller_than_the_vocabulary_is_one_line_naming_both_sizes_and_the_fix(sp_corpora):
    _, sp = sp_corpora
    task_vocab.check_model_vocab_size("c4_prefix_lm", 525)  # room for every id: fine
    task_vocab.check_model_vocab_size("synthetic", 1)        # no vocabulary: not checked
    task_vocab.check_model_vocab_size("no_such_task", 1)     # reported elsewhere, with close matches
    with pytest.raises(ValueError) as error:
        task_vocab.check_model_vocab_size("c4_prefix_lm", 384)
    message = str(error.value)
    assert "\n" not in message and "vocab_size 384" in message and "525 ids" in message
    assert f"--gin.TransformerConfig.vocab_size={vocab_lib.embedding_rows(sp)}" in message and "=640" in message


def test_too_few_extra_ids_and_a_missing_model_file_are_one_line_errors(real_corpora, tmp_path):
    with pytest.raises(ValueError, match="extra_ids=99 is too few: the objectives use 104"):
        vocab_lib.sentencepiece_vocabulary(real_corpora.sentencepiece_model, extra_ids=99)
    with pytest.raises(FileNotFoundError, match="cc_all.32000"):
        vocab_lib.sentencepiece_vocabulary(str(tmp_path / "missing.model"))
    (tmp_path / "not.model").write_text("not a model")
    with pytest.raises(ValueError, match="is not a SentencePiece model"):
        vocab_lib.sentencepiece_vocabulary(str(tmp_path / "not.model"))
    with pytest.raises(ValueError, match="the objectives need 104"):
        tasks.configure(vocabulary=seqio.ByteVocabulary(extra_ids=99))


def test_corpus_fixtures_use_the_real_builder_versions():
    import tensorflow_datasets as tfds
    assert tfds.builder_cls("c4").builder_configs["en"].version == CORPORA["c4"][2]
    assert str(tfds.builder_cls("lm1b").VERSION) == CORPORA["lm1b"][2]


def test_a_c4_stream_continues_from_its_saved_position(sp_corpora, tmp_path):
    from t5x_like.data import sources
    from tests.training_fixtures import tiny_model
    model = tiny_model(layout="encoder_decoder", num_encoder_layers=1, num_decoder_layers=1, vocab_size=640)
    request = sources.DataRequest("c4_span_corruption", {"inputs": 64, "targets": 16}, "train", batch_size=2,
                                  shuffle=True, seed=0, pack=True, shard_id=1, num_shards=2)
    first = sources.default_dataset_fn(request, model)
    for _ in range(3):
        next(first)
    first.save_state(str(tmp_path))
    expected = [next(first) for _ in range(2)]
    second = sources.default_dataset_fn(request, model)
    second.restore_state(str(tmp_path))
    for want, got in zip(expected, [next(second) for _ in range(2)]):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
