"""Reads SWORD zText Bible modules (Debian `sword-text-*`) in pure Python.

This module owns the on-disk format and the verse alignment of two Bibles; it
does not know about tasks or tokenization (`tasks.py` builds the translation
task from `aligned_verses`).

A zText module is, per testament (`ot`, `nt`), three files:

  *.bzs  block index: (offset u32, compressed size u32, raw size u32) per block
  *.bzz  the zlib-compressed blocks, concatenated
  *.bzv  verse index: (block u32, offset in raw block u32, size u16) per entry

Entries follow the versification in order: entry 0 is empty, entry 1 the
testament heading, then per book a book heading and per chapter a chapter
heading (an OSIS `<chapter sID=...>` milestone) followed by the verses. Verse
text is OSIS XML; we keep the words (including `<transChange>` additions) and
drop markup, footnotes and headings.
"""
from __future__ import annotations

import dataclasses
import functools
import html
import os
import re
import struct
import zlib

SWORD_ROOT = "/usr/share/sword"
ENGLISH_MODULE = "engKJV2006eb"   # Debian package sword-text-kjv
SPANISH_MODULE = "spaRV1909eb"    # Debian package sword-text-sparv
INSTALL_COMMAND = "apt-get install -y sword-text-kjv sword-text-sparv"
INSTALL_SCRIPT = "launch/install_translation_data.sh"

# KJV versification totals; a module that parses to other counts is rejected.
EXPECTED_BOOKS = {"ot": 39, "nt": 27}
EXPECTED_CHAPTERS = {"ot": 929, "nt": 260}
EXPECTED_VERSES = {"ot": 23145, "nt": 7957}


class SwordDataMissingError(FileNotFoundError):
    """A SWORD module is not installed; the message gives the install command."""


@dataclasses.dataclass(frozen=True)
class Verse:
    book: str      # OSIS book id, e.g. "Gen"
    chapter: int
    verse: int
    text: str      # plain text, markup removed

    @property
    def ref(self) -> str:
        return f"{self.book}.{self.chapter}.{self.verse}"


def module_dir(module: str, root: str = SWORD_ROOT) -> str:
    return os.path.join(root, "modules", "texts", "ztext", module)


def check_installed(modules: tuple[str, ...] = (ENGLISH_MODULE, SPANISH_MODULE),
                    root: str = SWORD_ROOT) -> None:
    """Raises SwordDataMissingError naming the missing files and the fix."""
    missing = [os.path.join(module_dir(m, root), f"{t}.{ext}")
               for m in modules for t in ("ot", "nt") for ext in ("bzs", "bzv", "bzz")
               if not os.path.exists(os.path.join(module_dir(m, root), f"{t}.{ext}"))]
    if missing:
        raise SwordDataMissingError(
            f"SWORD Bible modules for the translation task are not installed "
            f"(missing {missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}). "
            f"Install them as root with `{INSTALL_COMMAND}` (or run {INSTALL_SCRIPT}).")


def _read_entries(module: str, testament: str, root: str) -> list[str]:
    """All index entries of one testament, decompressed and decoded."""
    base = os.path.join(module_dir(module, root), testament)
    with open(base + ".bzs", "rb") as f:
        bzs = f.read()
    with open(base + ".bzv", "rb") as f:
        bzv = f.read()
    with open(base + ".bzz", "rb") as f:
        bzz = f.read()
    blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs) - len(bzs) % 12, 12)]
    raw_blocks: dict[int, bytes] = {}

    def block(n: int) -> bytes:
        if n not in raw_blocks:
            offset, size, raw_size = blocks[n]
            data = zlib.decompress(bzz[offset:offset + size])
            if len(data) != raw_size:
                raise ValueError(f"{base}.bzz block {n}: {len(data)} bytes, index says {raw_size}")
            raw_blocks[n] = data
        return raw_blocks[n]

    entries = []
    for i in range(0, len(bzv) - len(bzv) % 10, 10):
        n, offset, size = struct.unpack_from("<IIH", bzv, i)
        entries.append(block(n)[offset:offset + size].decode("utf-8", errors="replace") if size else "")
    return entries


_BOOK = re.compile(r'<div\b(?=[^>]*\btype="book")(?=[^>]*\bsID=)[^>]*>')
_OSIS_ID = re.compile(r'osisID="([^".]+)')
_CHAPTER_START = re.compile(r'<chapter\b[^>]*\bsID=')
_DROPPED_ELEMENTS = re.compile(r"<(note|title)\b[^>]*?(?<!/)>.*?</\1>", re.S)
_TAG = re.compile(r"<[^>]*>")


def osis_to_text(osis: str) -> str:
    """Plain text of one verse: footnotes and titles dropped, tags removed."""
    text = _DROPPED_ELEMENTS.sub(" ", osis)
    text = _TAG.sub("", text)
    text = html.unescape(text).replace("¶", " ")
    return " ".join(text.split())


def read_module(module: str, root: str = SWORD_ROOT) -> list[Verse]:
    """Every verse of a KJV-versified zText module, in canonical order."""
    check_installed((module,), root)
    verses: list[Verse] = []
    for testament in ("ot", "nt"):
        book, chapter, verse = "", 0, 0
        books = chapters = count = 0
        for entry in _read_entries(module, testament, root)[2:]:
            book_tag = _BOOK.search(entry)  # the book's start milestone, not its end (eID)
            if book_tag:
                match = _OSIS_ID.search(book_tag.group(0))
                books += 1
                book, chapter = (match.group(1) if match else f"book{books}"), 0
            elif _CHAPTER_START.search(entry):
                chapter, verse, chapters = chapter + 1, 0, chapters + 1
            else:
                verse, count = verse + 1, count + 1
                verses.append(Verse(book, chapter, verse, osis_to_text(entry)))
        expected = (EXPECTED_BOOKS[testament], EXPECTED_CHAPTERS[testament], EXPECTED_VERSES[testament])
        if (books, chapters, count) != expected:
            raise ValueError(
                f"SWORD module {module} ({testament}): parsed {books} books, {chapters} chapters, "
                f"{count} verses; expected the KJV versification's {expected}")
    return verses


@functools.lru_cache(maxsize=4)
def aligned_verses(source: str = ENGLISH_MODULE, target: str = SPANISH_MODULE,
                   root: str = SWORD_ROOT) -> tuple[tuple[str, str, str], ...]:
    """(ref, source text, target text) for every verse non-empty in both modules."""
    check_installed((source, target), root)
    pairs = []
    for a, b in zip(read_module(source, root), read_module(target, root)):
        if (a.book, a.chapter, a.verse) != (b.book, b.chapter, b.verse):
            raise ValueError(f"modules {source} and {target} disagree at {a.ref} vs {b.ref}")
        if a.text and b.text:
            pairs.append((a.ref, a.text, b.text))
    return tuple(pairs)
