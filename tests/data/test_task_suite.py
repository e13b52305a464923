"""The prompted task suite: families, templates, held-out text, seqio rows and lm-eval YAMLs agree."""
from __future__ import annotations

import pytest
import seqio

from t5x_like.data import corpora, task_suite, tasks

AVAILABLE, SKIPPED = task_suite.available(tuple(task_suite.FAMILIES))


def test_at_least_six_families_with_three_templates_and_a_chance_level():
    assert len(task_suite.FAMILIES) >= 6
    for family in task_suite.FAMILIES.values():
        assert len(family.templates) >= 3 and len({t.name for t in family.templates}) == len(family.templates)
        assert family.chance == pytest.approx(1 / family.num_choices)


@pytest.mark.parametrize("name", AVAILABLE)
def test_examples_are_well_formed_and_deterministic(name):
    family = task_suite.family(name)
    examples = task_suite.examples(name, "validation", seed=0)
    assert 0 < len(examples) <= task_suite.MAX_EXAMPLES
    for example in examples:
        assert len(example.choices) == family.num_choices == len(set(example.choices))
        assert 0 <= example.gold < family.num_choices
    assert task_suite.family(name).build("validation", 0) == list(examples)
    assert task_suite.family(name).build("validation", 1) != list(examples)
    # the gold index is not a constant a model could learn without reading the choices
    assert len({e.gold for e in examples}) == family.num_choices


@pytest.mark.parametrize("name", [n for n in ("next_line", "word_order", "spelling", "last_word", "attribution")
                                  if n in AVAILABLE])
def test_play_families_read_only_the_split_plays(name):
    held_out = " ".join(" ".join(corpora.shakespeare_documents("validation")).split())
    training = " ".join(" ".join(corpora.shakespeare_documents("train")).split())
    for example in task_suite.examples(name, "validation")[:40]:
        gold = example.choices[example.gold] if name != "last_word" else example.fields["context"]
        # (a speech's lines are joined across the stage directions between them: its first 30 characters)
        text = example.fields.get("line") or gold if name != "attribution" else example.fields["passage"].split(". ", 1)[1][:30]
        assert text in held_out
    if name == "next_line":  # a held-out pair of lines is not in the training plays
        pairs = [e.fields["line"] + " " + e.choices[e.gold] for e in task_suite.examples(name, "validation")]
        assert sum(p in training for p in pairs) == 0


def test_a_misspelt_line_differs_from_its_line_by_two_adjacent_letters_of_one_word_not_its_first():
    for example in task_suite.examples("spelling", "validation"):
        line, misspelt = example.choices[example.gold], example.choices[1 - example.gold]
        changed = [(a, b) for a, b in zip(line.split(), misspelt.split()) if a != b]
        assert len(line.split()) == len(misspelt.split()) and len(changed) == 1
        word, typo = changed[0]
        j = next(k for k in range(len(word)) if word[k] != typo[k])
        assert j >= 1 and typo == word[:j] + word[j + 1] + word[j] + word[j + 2:]


def test_few_shot_prefix_holds_k_training_demonstrations_with_their_gold_choice():
    template = task_suite.family("word_order").templates[1]
    prefix = task_suite.few_shot_prefix("word_order", template, 3, seed=0)
    shots = prefix.split(task_suite.FEWSHOT_DELIMITER)[:-1]
    train = {template.render(e)[0] + template.render(e)[1][e.gold] for e in task_suite.examples("word_order", "train")}
    assert len(shots) == 3 and set(shots) <= train
    rendered = task_suite.rendered("word_order", template.name, "validation", num_fewshot=3)
    assert all(r.inputs.startswith(prefix) for r in rendered)


def test_unknown_family_and_template_name_the_known_ones():
    with pytest.raises(ValueError, match="sentiment"):
        task_suite.family("sentimental")
    with pytest.raises(ValueError, match="plain"):
        task_suite.template("word_order", "nope")


def test_seqio_task_holds_one_row_per_choice_in_the_suite_order():
    name = task_suite.task_name("word_order", "verse")
    rows = task_suite.rank_classification_rows("word_order", "verse", "validation")
    task = seqio.get_mixture_or_task(name)
    got = list(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
    assert len(got) == len(rows)
    vocabulary = tasks.configured_vocabulary()
    for row, example in zip(rows[:6], got):
        assert vocabulary.decode(list(example["targets"][:-1])) == row[1]
        assert (int(example["idx"]), bool(example["is_correct"])) == (row[2], row[3])


def test_content_free_rows_keep_the_choices_and_gold_but_drop_every_example_field():
    rows = task_suite.rank_classification_rows("attribution", "question", "validation")
    free = task_suite.rank_classification_rows("attribution", "question", "validation", content_free=True)
    assert [r[1:] for r in free] == [r[1:] for r in rows]
    assert {r[0] for r in free} == {"Which play is this from? \nAnswer:"}
    examples = task_suite.examples("attribution", "validation")
    assert all(example.fields["passage"] in row[0] for example, row in zip(examples, rows[::3]))
    name = task_suite.task_name("attribution", "question", content_free=True)
    got = next(seqio.get_mixture_or_task(name).get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
    assert tasks.configured_vocabulary().decode(list(got["inputs"][:-1])) == free[0][0]
    # a prompt that reads no field has no content-free twin: its raw scores are already content-free
    assert task_suite.template("word_order", "verse").fields == ()
    assert task_suite.task_name("word_order", "verse", content_free=True) not in seqio.TaskRegistry.names()


def test_lm_eval_yamls_build_the_same_requests_as_the_seqio_tasks(tmp_path):
    lm_eval_tasks = pytest.importorskip("lm_eval.tasks")
    written = task_suite.write_lm_eval_tasks(str(tmp_path), ["word_order"])
    assert written == {"word_order": [task_suite.task_name("word_order", t.name)
                                      for t in task_suite.family("word_order").templates]}
    manager = lm_eval_tasks.TaskManager(include_path=str(tmp_path), include_defaults=False)
    task_dict = lm_eval_tasks.get_task_dict(["suite_word_order"], manager)
    assert sorted(task_dict) == sorted(written["word_order"])
    for name, task in task_dict.items():
        task.build_all_requests(limit=None, rank=0, world_size=1)
        template = name[len("suite_word_order_"):]
        rows = task_suite.rank_classification_rows("word_order", template, "validation")
        assert [(i.args[0], i.args[1]) for i in task.instances] == [(r[0], r[1]) for r in rows]


def test_multitask_mixture_holds_every_template_of_its_families_with_the_gold_choice_as_target():
    families = ("word_order", "last_word")
    name = tasks.register_suite_multitask(families)
    assert name == tasks.suite_multitask_name(families) and tasks.suite_multitask_families(name) == families
    members = {t.name for t in seqio.get_mixture_or_task(name).tasks}
    assert members == {f"suite_mtf_{f}_{t.name}" for f in families for t in task_suite.family(f).templates}
    vocabulary = tasks.configured_vocabulary()
    member = seqio.get_mixture_or_task("suite_mtf_last_word_quoted")
    assert member.source.splits == ("train",)  # evaluation's validation/test text is never trained on
    got = list(member.get_dataset(None, split="train", shuffle=False).take(5).as_numpy_iterator())
    for example, rendered in zip(got, task_suite.rendered("last_word", "quoted", "train")):
        assert vocabulary.decode(list(example["inputs"][:-1])) == rendered.inputs
        assert vocabulary.decode(list(example["targets"][:-1])) == rendered.choices[rendered.gold]
    held_out = {r.inputs for r in task_suite.rendered("last_word", "quoted", "validation")}
    assert not held_out & {vocabulary.decode(list(e["inputs"][:-1])) for e in got}


def test_multitask_names_parse_to_families_and_are_registered_on_request():
    assert tasks.suite_multitask_families("shakespeare_prefix_lm") is None
    assert tasks.suite_multitask_families("suite_mtf_next_line_sentiment") == ("next_line", "sentiment")
    with pytest.raises(ValueError, match="'nope_sentiment' does not start with a task-suite family"):
        tasks.suite_multitask_families("suite_mtf_nope_sentiment")
    name = "suite_mtf_attribution_word_order"
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    tasks.register_on_request(name)
    assert name in seqio.MixtureRegistry.names()
    for member in ("suite_mtf_word_order_plain", "suite_mtf_nope"):  # a member task, a wrong name: left alone
        tasks.register_on_request(member)
    assert "suite_mtf_nope" not in seqio.MixtureRegistry.names()
