"""Registers every seqio task and mixture; nothing is read until a dataset is built.

Owns: the registration of pretraining tasks (one per objective, plus the UL2
mixture; local text/JSONL files too) and of the downstream tasks with their
metrics, and applying the process-wide data settings (`configure`,
`apply_settings`: TFDS directory, UL2 rates, MLM masking rate, vocabulary;
the value in force is `data.settings.current()`). The sources the tasks read
are `task_sources.py`'s. Importing this module registers:

  shakespeare_{causal_lm,prefix_lm,span_corruption,mlm}, shakespeare_ul2 (mixture)
  bible_{causal_lm,prefix_lm,span_corruption,mlm}, bible_ul2 (English KJV; SWORD modules)
  {c4,wikitext103,lm1b}_{causal_lm,prefix_lm,span_corruption,mlm}, {c4,...}_ul2
  sentiment_finefood, sentiment_finefood_rank, translation_en_es_bible,
  probe_copy, probe_reverse, probe_sort, probe_addition
  suite_<family>_<template> (rank classification, one per template of each
  `task_suite` family), suite_<family> (mixture of its templates)

and on request (`register_suite_multitask`; `experiments.spec` registers the
ones an arm names) suite_mtf_<family>_<family>...: multitask prompted
finetuning over families' train splits (T0-style: prompt -> gold choice).

Vocabulary. Every task registered without an explicit vocabulary (all of the
above, and `register_text_files_task`'s) uses the *configured* one:
`configure(vocabulary=...)` (from gin: `t5x_like.data.tasks.vocabulary.sentencepiece_model`),
the byte vocabulary by default. seqio fixes a task's output features when it
is registered, so when the configured vocabulary changes those tasks are
registered again with it; a task registered with an explicit vocabulary keeps
it. Features use add_eos=True.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from t5x_like.data import corpora, metrics, objectives, task_suite
from t5x_like.data import settings as data_settings
from t5x_like.data.task_sources import InMemorySource, bible_source, shakespeare_source, tfds_text_source
from t5x_like.data import vocab as vocab_lib

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 1_000  # sources already permute whole documents; this mixes their pieces
PRETRAINING_OBJECTIVES = ("causal_lm", "prefix_lm", "span_corruption", "mlm")

# Settings (data.settings.current(): one DataSettings value). tfds_data_dir,
# ul2_mixing_rates and mlm_rate are read when a dataset is built; the vocabulary when a
# task is registered (so `configure` re-registers the tasks that follow it). Python
# callers use `configure` (or `apply_settings`); the command line sets them from gin
# (`t5x_like.data.tasks.tfds_data_dir.data_dir`, `...ul2_mixing_rates.rates`,
# `...mlm_rate.rate`, `...vocabulary.sentencepiece_model`, registered in
# cli/configurables.py). The vocabulary object the settings name:
_VOCABULARY: list[seqio.Vocabulary | None] = [None]
# Registrations made without an explicit vocabulary, replayed (in order) when it changes:
# key -> function of no arguments that registers again with configured_vocabulary().
_FOLLOWING: dict[str, Callable[[], object]] = {}


def configure(tfds_data_dir: str | None = None,
              ul2_mixing_rates: Sequence[float] = objectives.UL2_DEFAULT_RATES,
              vocabulary: seqio.Vocabulary | None = None,
              mlm_rate: float = objectives.MLM_DEFAULT_RATE) -> None:
    """Sets where prepared TFDS datasets live (None: $TFDS_DATA_DIR, else
    ~/tensorflow_datasets), the UL2 mixture's rates, the fraction of positions every
    *_mlm task selects, and the vocabulary of every task registered without one (None:
    the byte vocabulary); ValueError if the rates are malformed or the vocabulary lacks
    the objectives' extra ids. A changed vocabulary re-registers those tasks (nothing is
    read)."""
    rates = check_ul2_mixing_rates(ul2_mixing_rates)
    mlm_rate = objectives.check_mlm_rate(mlm_rate)
    vocabulary = vocabulary or vocab_lib.default_vocabulary()
    vocab_lib.check_extra_ids(vocabulary)
    changed = vocabulary != configured_vocabulary()
    _VOCABULARY[0] = vocabulary
    data_settings.set_current(data_settings.DataSettings(
        tfds_data_dir=tfds_data_dir, ul2_mixing_rates=rates, mlm_rate=mlm_rate,
        **_vocabulary_fields(vocabulary)))
    if changed:
        log.info("vocabulary is now %s: registering the tasks again", vocab_lib.describe(vocabulary))
        for register in list(_FOLLOWING.values()):
            register()


def _vocabulary_fields(vocabulary: seqio.Vocabulary) -> dict:
    """The DataSettings fields that name `vocabulary` (none for the byte vocabulary)."""
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return {"sentencepiece_model": vocabulary.sentencepiece_model_file, "extra_ids": vocabulary.extra_ids}
    return {}


def apply_settings(settings: data_settings.DataSettings) -> None:
    """`configure` from a DataSettings value (e.g. the one a run saved in its model_config.json)."""
    vocabulary = None
    if settings.sentencepiece_model:
        vocabulary = vocab_lib.sentencepiece_vocabulary(settings.sentencepiece_model,
                                                        settings.extra_ids or vocab_lib.NUM_EXTRA_IDS)
    configure(tfds_data_dir=settings.tfds_data_dir,
              ul2_mixing_rates=settings.ul2_mixing_rates or objectives.UL2_DEFAULT_RATES,
              vocabulary=vocabulary, mlm_rate=settings.mlm_rate or objectives.MLM_DEFAULT_RATE)


def configured_vocabulary() -> seqio.Vocabulary:
    """The vocabulary of tasks registered without one (`configure`; default: bytes)."""
    return _VOCABULARY[0] or vocab_lib.default_vocabulary()


def _follow(key: str, register: Callable[[], object]) -> None:
    _FOLLOWING[key] = register


# ---------------------------------------------------------------- helpers

def _features(vocabulary: seqio.Vocabulary, with_inputs: bool) -> dict[str, seqio.Feature]:
    feature = seqio.Feature(vocabulary, add_eos=True)
    return {"inputs": feature, "targets": feature} if with_inputs else {"targets": feature}


def _add_task(name: str, **kwargs) -> seqio.Task:
    if name in seqio.TaskRegistry.names():
        log.info("re-registering seqio task %s", name)
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, **kwargs)


def _add_mixture(name: str, tasks: list) -> seqio.Mixture:
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, tasks)


_TOKENIZE = functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False)
_TEXT_TO_TARGETS = functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"})


def check_ul2_mixing_rates(rates: Sequence[float]) -> tuple[float, ...]:
    """Rate of each UL2 denoiser, in the order of objectives.UL2_DENOISERS; ValueError if malformed."""
    if len(rates) != len(objectives.UL2_DENOISERS) or min(rates) < 0 or not sum(rates):
        raise ValueError(f"need {len(objectives.UL2_DENOISERS)} non-negative rates, not all 0; got {rates}")
    return tuple(float(r) for r in rates)


def _objective(objective: str, vocabulary: seqio.Vocabulary) -> list:
    """The preprocessors of a pretraining objective; MLM's rate follows `configure`."""
    if objective == "mlm":
        return objectives.mlm(rate=lambda: data_settings.current().mlm_rate, vocabulary=vocabulary)
    return objectives.OBJECTIVES[objective](vocabulary=vocabulary)


def _ul2_rate(index: int, task: seqio.Task) -> float:
    del task
    return data_settings.current().ul2_mixing_rates[index]


# ---------------------------------------------------------------- pretraining


def register_pretraining_tasks(corpus: str, make_source: Callable[[str], seqio.DataSource],
                               vocabulary: seqio.Vocabulary | None = None,
                               objective_names: Sequence[str] = PRETRAINING_OBJECTIVES + ("ul2",)) -> list[str]:
    """Registers {corpus}_{objective} for each objective; "ul2" is a mixture of its denoisers.

    make_source(salt) returns the corpus's source (rows with a "text" field). Without a
    vocabulary the tasks use the configured one, and follow it (see `configure`).
    """
    if vocabulary is None:
        _follow(f"pretraining:{corpus}", functools.partial(
            register_pretraining_tasks, corpus, make_source, None, tuple(objective_names)))
    vocabulary = vocabulary or configured_vocabulary()
    names = []
    for objective in objective_names:
        name = f"{corpus}_{objective}"
        if objective == "ul2":
            register_ul2_mixture(name, make_source, vocabulary)
        elif objective in objectives.OBJECTIVES:
            _add_task(name, source=make_source(name),
                      preprocessors=[_TEXT_TO_TARGETS, _TOKENIZE,
                                     *_objective(objective, vocabulary)],
                      output_features=_features(vocabulary, objective in objectives.OBJECTIVES_WITH_INPUTS),
                      metric_fns=[], shuffle_buffer_size=SHUFFLE_BUFFER)
        else:
            raise ValueError(f"unknown objective {objective!r}; expected one of "
                             f"{tuple(objectives.OBJECTIVES) + ('ul2',)}")
        names.append(name)
    return names


def register_ul2_mixture(name: str, make_source: Callable[[str], seqio.DataSource],
                         vocabulary: seqio.Vocabulary | None = None) -> seqio.Mixture:
    """A task per UL2 denoiser ({name}_{denoiser}) and the mixture `name` over them,
    at the configured UL2 rates (read when the dataset is built; see `configure`).
    Without a vocabulary: the configured one, followed."""
    if vocabulary is None:
        _follow(f"ul2:{name}", functools.partial(register_ul2_mixture, name, make_source, None))
    vocabulary = vocabulary or configured_vocabulary()
    members = []
    for index, denoiser in enumerate(objectives.UL2_DENOISERS):
        task_name = f"{name}_{denoiser.name}"
        _add_task(task_name, source=make_source(task_name),
                  preprocessors=[_TEXT_TO_TARGETS, _TOKENIZE, *denoiser.preprocessors(vocabulary)],
                  output_features=_features(vocabulary, True), metric_fns=[],
                  shuffle_buffer_size=SHUFFLE_BUFFER)
        members.append((task_name, functools.partial(_ul2_rate, index)))
    return _add_mixture(name, members)


def on_corpus(task_name: str, corpus: str) -> str:
    """The same objective's task on another corpus: ('shakespeare_prefix_lm', 'bible') ->
    'bible_prefix_lm'. Names that are not <corpus>_<pretraining objective> come back as they are."""
    for objective in (*PRETRAINING_OBJECTIVES, "ul2"):
        if task_name.endswith("_" + objective):
            return f"{corpus}_{objective}"
    return task_name


def register_text_files_task(name: str, glob: str | Mapping[str, str], objective: str = "causal_lm",
                             text_key: str = "text", max_chars: int = corpora.DOCUMENT_CHARS) -> list[str]:
    """Registers a pretraining task (or UL2 mixture) named `name` over local files.

    glob: one pattern (the "train" split) or {split: pattern}. .txt files are
    grouped into documents of about max_chars by paragraphs; .jsonl files give
    one document per line (field `text_key`). A pattern that matches nothing is
    an error now, naming the pattern. Returns the registered task names. The task uses
    the configured vocabulary, and follows it (see `configure`).
    """
    patterns = {"train": glob} if isinstance(glob, str) else dict(glob)
    for split, pattern in patterns.items():
        if split not in corpora.SPLITS:
            raise ValueError(f"unknown split {split!r} in glob mapping; expected {corpora.SPLITS}")
        corpora.list_files(pattern)  # fail early, with the pattern in the message
    if objective != "ul2" and objective not in objectives.OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of "
                         f"{tuple(objectives.OBJECTIVES) + ('ul2',)}")
    register = functools.partial(_register_text_files_task, name, patterns, objective, text_key, max_chars)
    _follow(f"files:{name}", register)
    return register()


def _register_text_files_task(name: str, patterns: Mapping[str, str], objective: str, text_key: str,
                              max_chars: int) -> list[str]:
    def rows(split: str) -> list[str]:
        return corpora.documents_from_files(patterns[split], text_key, max_chars)

    make_source = lambda salt: InMemorySource(rows, ["text"], tuple(patterns), salt)
    vocabulary = configured_vocabulary()
    if objective == "ul2":
        register_ul2_mixture(name, make_source, vocabulary)
        return [name]
    _add_task(name, source=make_source(name),
              preprocessors=[_TEXT_TO_TARGETS, _TOKENIZE, *_objective(objective, vocabulary)],
              output_features=_features(vocabulary, objective in objectives.OBJECTIVES_WITH_INPUTS),
              metric_fns=[], shuffle_buffer_size=SHUFFLE_BUFFER)
    return [name]


# name -> (TFDS dataset, text feature, our split -> TFDS split)
TFDS_CORPORA = {
    "c4": ("c4/en", "text", {"train": "train", "validation": "validation"}),
    "wikitext103": ("wikitext103", "text", {"train": "train", "validation": "validation", "test": "test"}),
    "lm1b": ("lm1b", "text", {"train": "train", "test": "test"}),
}

# ---------------------------------------------------------------- downstream


SENTIMENT_PREFIX = "sentiment review: "
TRANSLATION_PREFIX = "translate English to Spanish: "


@seqio.map_over_dataset
def _sentiment_text(x):
    return {"inputs": tf.strings.join([SENTIMENT_PREFIX, x["review"]]), "targets": x["label"],
            "idx": x["idx"]}


def rank_classification(dataset: tf.data.Dataset,
                        choices: Sequence[str] = corpora.SENTIMENT_LABELS) -> tf.data.Dataset:
    """One example per (example, choice): targets = the choice, with idx and is_correct."""
    choices_t = tf.constant(list(choices))

    def expand(x):
        return tf.data.Dataset.from_tensor_slices({
            "inputs": tf.fill([len(choices)], x["inputs"]),
            "targets": choices_t,
            "idx": tf.fill([len(choices)], x["idx"]),
            "is_correct": tf.equal(choices_t, x["targets"]),
        })

    return dataset.flat_map(expand)


def rank_classification_targets(output, example=None, is_target: bool = False):
    """postprocess_fn: a target becomes (idx, is_correct) for metrics.rank_classification_accuracy."""
    if is_target:
        return int(example["idx"]), bool(example["is_correct"])
    return output


def _finefood_rows(split: str) -> list[tuple[str, str, int]]:
    return [(review, label, i) for i, (review, label) in enumerate(corpora.finefood_reviews(split))]


@seqio.map_over_dataset
def _translation_text(x):
    return {"inputs": tf.strings.join([TRANSLATION_PREFIX, x["english"]]), "targets": x["spanish"]}


def register_downstream_tasks(vocabulary: seqio.Vocabulary | None = None, suffix: str = "") -> list[str]:
    """Registers the sentiment, translation and probe tasks, each named `<task><suffix>`
    (a suffix keeps the byte-vocabulary tasks registered next to, e.g., a SentencePiece copy).
    Without a vocabulary: the configured one, followed (see `configure`)."""
    if vocabulary is None:
        _follow(f"downstream:{suffix}", functools.partial(register_downstream_tasks, None, suffix))
    vocabulary = vocabulary or configured_vocabulary()
    features = _features(vocabulary, True)
    tokenize = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
    sentiment_source = InMemorySource(_finefood_rows, ["review", "label", "idx"], corpora.SPLITS)
    names = []

    def add(name: str, **kwargs) -> None:
        names.append(_add_task(name + suffix, output_features=features, **kwargs).name)

    add("sentiment_finefood", source=sentiment_source, preprocessors=[_sentiment_text, *tokenize],
        metric_fns=[metrics.accuracy])
    add("sentiment_finefood_rank", source=sentiment_source,
        preprocessors=[_sentiment_text, rank_classification, *tokenize],
        postprocess_fn=rank_classification_targets, metric_fns=[metrics.rank_classification_accuracy])
    add("translation_en_es_bible", source=InMemorySource(corpora.bible_pairs, ["english", "spanish"], corpora.SPLITS),
        preprocessors=[_translation_text, *tokenize], metric_fns=[metrics.bleu])
    for kind in corpora.PROBES:
        add(f"probe_{kind}", source=InMemorySource(functools.partial(corpora.probe_examples, kind),
                                                    ["inputs", "targets"], corpora.SPLITS),
            preprocessors=tokenize, metric_fns=[metrics.exact_match])
    return names


def register_suite_tasks(family_names: Sequence[str] = tuple(task_suite.FAMILIES), num_fewshot: int = 0,
                         seed: int = 0, vocabulary: seqio.Vocabulary | None = None) -> list[str]:
    """Registers `task_suite.task_name(family, template, num_fewshot)` for every template of each
    family (rank classification: one row per choice, targets = the rendered choice, with idx and
    is_correct; `inference.prompted` and `metrics.rank_classification_accuracy` read them) and a
    mixture suite_<family>[_<k>shot] of its templates; for a template whose prompt reads the
    example, its content-free twin `..._content_free` too (the same rows with the example's fields
    left empty, for calibrated scoring). Nothing is read until a dataset is built.
    Without a vocabulary: the configured one, followed (see `configure`)."""
    if vocabulary is None:
        _follow(f"suite:{tuple(family_names)}:{num_fewshot}:{seed}", functools.partial(
            register_suite_tasks, tuple(family_names), num_fewshot, seed, None))
    vocabulary = vocabulary or configured_vocabulary()
    tokenize = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
    names = []
    for family_name in family_names:
        members = []
        for template in task_suite.family(family_name).templates:
            for content_free in (False, True) if template.fields else (False,):
                rows = functools.partial(_suite_rows, family_name, template.name, num_fewshot, seed, content_free)
                name = task_suite.task_name(family_name, template.name, num_fewshot, content_free)
                _add_task(name, source=InMemorySource(rows, ["inputs", "targets", "idx", "is_correct"], corpora.SPLITS),
                          preprocessors=tokenize, output_features=_features(vocabulary, True),
                          postprocess_fn=rank_classification_targets,
                          metric_fns=[metrics.rank_classification_accuracy])
            members.append(task_suite.task_name(family_name, template.name, num_fewshot))
        _add_mixture(f"suite_{family_name}" + (f"_{num_fewshot}shot" if num_fewshot else ""),
                     [(m, 1.0) for m in members])
        names.extend(members)
    return names


def _suite_rows(family_name: str, template_name: str, num_fewshot: int, seed: int, content_free: bool,
                split: str) -> list:
    return task_suite.rank_classification_rows(family_name, template_name, split, num_fewshot, seed, content_free)


# ---------------------------------------------------------------- multitask prompted finetuning

MULTITASK_PREFIX = "suite_mtf_"
MULTITASK_SPLIT = "train"   # the only split the finetuning tasks have: evaluation never sees it


def suite_multitask_name(family_names: Sequence[str]) -> str:
    """The mixture `register_suite_multitask` registers: suite_mtf_<family>_<family>..."""
    return MULTITASK_PREFIX + "_".join(family_names)


def suite_multitask_families(name: str) -> tuple[str, ...] | None:
    """The families of a suite_mtf_ mixture name (None if `name` is not one); ValueError naming
    the part that is not a family."""
    if not name.startswith(MULTITASK_PREFIX):
        return None
    rest, families = name[len(MULTITASK_PREFIX):], []
    while rest:
        family = next((f for f in task_suite.FAMILIES if rest == f or rest.startswith(f + "_")), None)
        if family is None:
            raise ValueError(f"task {name!r}: {rest!r} does not start with a task-suite family; "
                             f"expected {MULTITASK_PREFIX}<family>_<family>... of {sorted(task_suite.FAMILIES)}")
        families.append(family)
        rest = rest[len(family) + 1:]
    if not families or len(set(families)) != len(families):
        raise ValueError(f"task {name!r}: name each task-suite family once after {MULTITASK_PREFIX!r}")
    return tuple(families)


def register_suite_multitask(family_names: Sequence[str], seed: int = 0,
                             vocabulary: seqio.Vocabulary | None = None) -> str:
    """Multitask prompted finetuning data (T0-style): for every template of each family, a task
    suite_mtf_<family>_<template> whose examples are (the template's rendered prompt, its gold
    choice) of the family's `train` split only, and the mixture of them all, equal rates, named
    `suite_multitask_name(family_names)` (returned). Feature lengths are the training run's
    (seqio trims longer prompts). Without a vocabulary: the configured one, followed."""
    family_names = tuple(family_names)
    name = suite_multitask_name(family_names)
    if suite_multitask_families(name) != family_names:
        raise ValueError(f"multitask families {family_names}: give distinct task-suite families")
    if vocabulary is None:
        _follow(f"suite_mtf:{family_names}:{seed}", functools.partial(
            register_suite_multitask, family_names, seed, None))
    vocabulary = vocabulary or configured_vocabulary()
    tokenize = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
    members = []
    for family_name in family_names:
        for template in task_suite.family(family_name).templates:
            rows = functools.partial(_suite_gold_rows, family_name, template.name, seed)
            member = f"{MULTITASK_PREFIX}{family_name}_{template.name}"
            _add_task(member, source=InMemorySource(rows, ["inputs", "targets"], (MULTITASK_SPLIT,), member),
                      preprocessors=tokenize, output_features=_features(vocabulary, True), metric_fns=[],
                      shuffle_buffer_size=SHUFFLE_BUFFER)
            members.append((member, 1.0))
    _add_mixture(name, members)
    return name


def register_on_request(name: str) -> None:
    """Registers `name` if it is a suite_mtf_ mixture not registered yet (those are made on
    request, for any list of families); other names (a member task among them) are left alone."""
    if name in seqio.MixtureRegistry.names() or name in seqio.TaskRegistry.names():
        return
    try:
        families = suite_multitask_families(name)
    except ValueError:
        return  # not a mixture name: whoever looks it up reports it as unknown
    if families:
        register_suite_multitask(families)


def _suite_gold_rows(family_name: str, template_name: str, seed: int, split: str) -> list[tuple[str, str]]:
    """(rendered prompt, gold choice) of every example of the split under one template."""
    return [(r.inputs, r.choices[r.gold]) for r in task_suite.rendered(family_name, template_name, split, 0, seed)]


def register_all() -> None:
    register_pretraining_tasks("shakespeare", shakespeare_source)
    register_pretraining_tasks("bible", bible_source)
    for corpus, (dataset, text_key, splits) in TFDS_CORPORA.items():
        register_pretraining_tasks(
            corpus, lambda salt, d=dataset, k=text_key, s=splits: tfds_text_source(d, k, s))
    register_downstream_tasks()
    register_suite_tasks()


def task_has_inputs(mixture_or_task_name: str) -> bool:
    return "inputs" in seqio.get_mixture_or_task(mixture_or_task_name).output_features


configure()  # the default settings, as values (data.settings.current())
register_all()
