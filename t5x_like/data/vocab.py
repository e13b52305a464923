"""Vocabularies and the ids of the special tokens every objective uses.

Owns: the default vocabulary (UTF-8 bytes, no download), the layout of its
extra ids (span-corruption sentinels, UL2 mode tokens, the MLM mask token),
loading a locally trained SentencePiece model, and decoding ids with those
special tokens spelled out. Training a SentencePiece model is `vocab_training.py` (`t5x-like vocab`).

Extra ids follow seqio/T5: they sit at the top of the vocabulary and are
numbered downwards, so `<extra_id_0>` is `vocab_size - 1`. Here:

  extra id 0..99   span-corruption sentinels (<extra_id_0> ... <extra_id_99>)
  extra id 100     [NLU]  UL2 R-denoiser mode token
  extra id 101     [S2S]  UL2 S-denoiser mode token
  extra id 102     [NLG]  UL2 X-denoiser mode token
  extra id 103     [MASK] BERT-style MLM mask token
  extra id 104..   reserved (pads the byte vocabulary to 384 = the models' default)

The byte vocabulary is 3 specials (pad 0, eos 1, unk 2) + 256 bytes + 125
extra ids = 384 ids.

A SentencePiece model gets the same 125 extra ids on top of its own pieces
(seqio's `SentencePieceVocabulary(extra_ids=N)` appends N ids after the
model's pieces), so every objective works with any model file. For T5's
public model (`cc_all.32000`: 32,000 pieces) that is 32,125 ids; T5 itself
used 100 extra ids (32,100 ids) in an embedding of 32,128 rows, and 32,125
still fits those rows (`embedding_rows` = 32,128). The ids differ from T5's
checkpoints, though: T5's `<extra_id_0>` is 32,099, ours is 32,124
(`<extra_id_k>` = vocab_size - 1 - k), so a T5 checkpoint's sentinel rows are
not our sentinel rows. Fewer than NEEDED_EXTRA_IDS (104) extra ids is an error,
except exactly 100:

T5's layout (the option for T5 / UL2 checkpoints): a vocabulary with exactly
NUM_SENTINELS = 100 extra ids (`SentencePieceVocabulary(path, extra_ids=100)`,
from gin `t5x_like.data.tasks.vocabulary.extra_ids = 100`) has T5's ids: the
100 sentinels are its extra ids (`<extra_id_0>` = vocab_size - 1 = 32,099 with
T5's model, as seqio spells `<extra_id_k>` itself), and the ids the objectives
need beyond them ([NLU], [S2S], [NLG], [MASK]) sit just above the vocabulary,
at vocab_size + 0..3 (32,100..32,103: rows T5's 32,128-row embedding has and
never trained), so they never collide with a T5 id. `ids_used` counts them.
"""
from __future__ import annotations

import functools
import os

import seqio

NUM_SENTINELS = 100
MODE_TOKENS = ("[NLU]", "[S2S]", "[NLG]")
MASK_TOKEN = "[MASK]"
NUM_EXTRA_IDS = 125           # 100 sentinels + 3 modes + mask + 21 reserved
NEEDED_EXTRA_IDS = 104        # 100 sentinels + 3 modes + mask: what the objectives use
DEFAULT_VOCAB_SIZE = 384      # 3 + 256 + NUM_EXTRA_IDS
_MODE_EXTRA_ID = {name: NUM_SENTINELS + i for i, name in enumerate(MODE_TOKENS)}
_MASK_EXTRA_ID = NUM_SENTINELS + len(MODE_TOKENS)
# UL2 denoiser families -> the mode token the released checkpoint uses.
MODE_OF_DENOISER = {"R": "[NLU]", "S": "[S2S]", "X": "[NLG]"}


@functools.lru_cache(maxsize=1)
def default_vocabulary() -> seqio.ByteVocabulary:
    """UTF-8 bytes with NUM_EXTRA_IDS extra ids; vocab_size == 384."""
    return seqio.ByteVocabulary(extra_ids=NUM_EXTRA_IDS)


def sentencepiece_vocabulary(path: str, extra_ids: int = NUM_EXTRA_IDS) -> seqio.SentencePieceVocabulary:
    """A SentencePiece model file (trained by `t5x-like vocab`, or T5's), with our extra-id layout
    added after its pieces. FileNotFoundError / ValueError (one line) for a missing file or
    fewer than NEEDED_EXTRA_IDS extra ids."""
    return _sentencepiece_vocabulary(os.path.abspath(os.path.expanduser(path)), int(extra_ids))


@functools.lru_cache(maxsize=8)
def _sentencepiece_vocabulary(path: str, extra_ids: int) -> seqio.SentencePieceVocabulary:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"SentencePiece model {path!r} does not exist; train one with "
            "`t5x-like vocab --task shakespeare_causal_lm --size 8000 --out DIR`, or copy T5's "
            "(gs://t5-data/vocabs/cc_all.32000/sentencepiece.model) here")
    if extra_ids < NEEDED_EXTRA_IDS and extra_ids != NUM_SENTINELS:
        raise ValueError(f"extra_ids={extra_ids} is too few: the objectives use {NEEDED_EXTRA_IDS} "
                         f"(100 sentinels, 3 UL2 mode tokens, [MASK]); use {NUM_EXTRA_IDS}, or exactly "
                         f"{NUM_SENTINELS} for T5's sentinel ids")
    vocabulary = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
    try:
        vocabulary.vocab_size  # loads the model: a file that is not one fails here, not mid-run
    except Exception as e:  # sentencepiece raises RuntimeError / google.protobuf DecodeError
        reason = str(e).splitlines()[0] if str(e) else repr(e)
        raise ValueError(f"{path!r} is not a SentencePiece model: {reason}") from None
    return vocabulary


def describe(vocabulary: seqio.Vocabulary) -> str:
    """One phrase naming a vocabulary, for messages: 'bytes + 125 extra ids = 384 ids'."""
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return (f"SentencePiece {vocabulary.sentencepiece_model_file} + {vocabulary.extra_ids} extra ids "
                f"= {vocabulary.vocab_size} ids")
    if isinstance(vocabulary, seqio.ByteVocabulary):
        return f"bytes + {vocabulary.extra_ids} extra ids = {vocabulary.vocab_size} ids"
    return f"{type(vocabulary).__name__} of {vocabulary.vocab_size} ids"


def t5_layout(vocabulary: seqio.Vocabulary) -> bool:
    """Whether `vocabulary` has T5's extra ids: exactly the 100 sentinels (modes and mask above it)."""
    return vocabulary.extra_ids == NUM_SENTINELS


def ids_used(vocabulary: seqio.Vocabulary) -> int:
    """How many ids the objectives use: the vocabulary's, and in T5's layout the 4 above it."""
    return vocabulary.vocab_size + (NEEDED_EXTRA_IDS - NUM_SENTINELS if t5_layout(vocabulary) else 0)


def embedding_rows(vocabulary: seqio.Vocabulary, multiple: int = 128) -> int:
    """A model's vocab_size for `vocabulary`: the ids it uses rounded up to `multiple` (aligned matmuls)."""
    return -(-ids_used(vocabulary) // multiple) * multiple


def _check_extra_ids(vocabulary: seqio.Vocabulary, needed: int) -> None:
    if t5_layout(vocabulary) and needed <= NEEDED_EXTRA_IDS:
        return
    if vocabulary.extra_ids < needed:
        raise ValueError(
            f"vocabulary has {vocabulary.extra_ids} extra ids; the objectives need "
            f"{needed} (use default_vocabulary() or extra_ids={NUM_EXTRA_IDS})")


def check_extra_ids(vocabulary: seqio.Vocabulary) -> None:
    """ValueError (one line) unless `vocabulary` has the NEEDED_EXTRA_IDS extra ids the objectives use."""
    _check_extra_ids(vocabulary, NEEDED_EXTRA_IDS)


def extra_id(k: int, vocabulary: seqio.Vocabulary | None = None) -> int:
    """Id of <extra_id_k> (seqio numbering: from the top of the vocabulary down); in T5's layout
    the ids past the sentinels (k >= 100: modes, mask) count up from vocab_size instead."""
    vocabulary = vocabulary or default_vocabulary()
    _check_extra_ids(vocabulary, k + 1)
    if t5_layout(vocabulary) and k >= NUM_SENTINELS:
        return vocabulary.vocab_size + k - NUM_SENTINELS
    return vocabulary.vocab_size - 1 - k


def sentinel_id(i: int, vocabulary: seqio.Vocabulary | None = None) -> int:
    """Id of the i-th span-corruption sentinel, 0 <= i < NUM_SENTINELS."""
    if not 0 <= i < NUM_SENTINELS:
        raise ValueError(f"sentinel index {i} outside [0, {NUM_SENTINELS})")
    return extra_id(i, vocabulary)


def sentinel_ids(vocabulary: seqio.Vocabulary | None = None) -> list[int]:
    return [sentinel_id(i, vocabulary) for i in range(NUM_SENTINELS)]


def mode_token_id(mode: str, vocabulary: seqio.Vocabulary | None = None) -> int:
    """Id of a UL2 mode token; `mode` is "[NLU]"/"[S2S]"/"[NLG]" or the family "R"/"S"/"X"."""
    name = MODE_OF_DENOISER.get(mode, mode)
    if name not in _MODE_EXTRA_ID:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODE_TOKENS} or R/S/X")
    return extra_id(_MODE_EXTRA_ID[name], vocabulary)


def mask_id(vocabulary: seqio.Vocabulary | None = None) -> int:
    """Id of the BERT [MASK] token."""
    return extra_id(_MASK_EXTRA_ID, vocabulary)


def regular_id_range(vocabulary: seqio.Vocabulary | None = None) -> tuple[int, int]:
    """[low, high) of ordinary tokens (no pad/eos/unk, no extra ids): MLM's random replacements."""
    vocabulary = vocabulary or default_vocabulary()
    return 3, vocabulary.vocab_size - vocabulary.extra_ids


def special_token_names(vocabulary: seqio.Vocabulary | None = None) -> dict[int, str]:
    """id -> printable name of every sentinel, mode and mask token."""
    names = {sentinel_id(i, vocabulary): f"<extra_id_{i}>" for i in range(NUM_SENTINELS)}
    names.update({mode_token_id(m, vocabulary): m for m in MODE_TOKENS})
    names[mask_id(vocabulary)] = MASK_TOKEN
    return names


def decode_with_special_tokens(ids, vocabulary: seqio.Vocabulary | None = None) -> str:
    """Decodes ids, writing sentinels/modes/mask by name; stops at EOS, drops padding."""
    vocabulary = vocabulary or default_vocabulary()
    names = special_token_names(vocabulary)
    pieces, run = [], []
    for i in (int(x) for x in ids):
        if i == vocabulary.eos_id:
            break
        if i == vocabulary.pad_id:
            continue
        if i in names:
            pieces.append(vocabulary.decode(run) if run else "")
            pieces.append(names[i])
            run = []
        else:
            run.append(i)
    pieces.append(vocabulary.decode(run) if run else "")
    return "".join(pieces)
