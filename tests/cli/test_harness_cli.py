"""`t5x-like harness`: lm-eval task YAMLs a user wrote, on a checkpoint of every layout, and one
line with exit 2 for what it cannot run."""
from __future__ import annotations

import glob
import json

import pytest

pytest.importorskip("lm_eval")

from t5x_like.cli import harness as harness_cli  # noqa: E402
from t5x_like.model.config import TransformerConfig  # noqa: E402
from tests.checkpoint_fixtures import tiny, write_run  # noqa: E402

EXAMPLES = [{"q": "The cat sat on the", "choices": [" mat", " dog", " sky"], "gold": 0},
            {"q": "One, two,", "choices": [" three", " blue"], "gold": 0},
            {"q": "Hello", "choices": [" world", " there"], "gold": 1}]
TASKS = {
    "tiny_mc": "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\n"
               "doc_to_target: '{{gold}}'\nmetric_list:\n  - metric: acc\n",
    "tiny_rolling": "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{q}}'\n"
                    "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n",
    "tiny_generate": "output_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{choices[gold]}}'\n"
                     "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 4\nmetric_list:\n  - metric: exact_match\n",
}


def write_tasks(directory) -> str:
    """The three kinds of lm-eval task, each a YAML over a local JSONL file (no hub access)."""
    directory.mkdir(exist_ok=True)
    data = directory / "examples.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    for name, body in TASKS.items():
        (directory / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}")
    return str(directory)


def run(*argv) -> int:
    return harness_cli.main(list(argv))


def test_an_unknown_task_is_one_line_with_close_matches(tmp_path, capsys):
    include = write_tasks(tmp_path / "tasks")
    assert run(f"--model_dir={tmp_path}/none", "--tasks=tiny_mcq", f"--include_path={include}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown task 'tiny_mcq'" in err and "tiny_mc" in err, err


def test_a_yaml_that_does_not_parse_is_named(tmp_path, capsys):
    include = write_tasks(tmp_path / "tasks")
    (tmp_path / "tasks" / "broken.yaml").write_text("task: broken\n  dataset_path: [json\n")
    assert run(f"--model_dir={tmp_path}/none", "--tasks=tiny_mc", f"--include_path={include}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.yaml does not parse" in err, err


@pytest.mark.slow
def test_an_encoder_only_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    include = write_tasks(tmp_path / "tasks")
    config = TransformerConfig(layout="encoder_only", vocab_size=384, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                               num_encoder_layers=1, num_decoder_layers=0)
    write_run(str(tmp_path / "mlm"), config)
    assert run(f"--model_dir={tmp_path}/mlm", "--tasks=tiny_mc", f"--include_path={include}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "encoder_only model" in err, err


@pytest.mark.slow
def test_every_layout_runs_the_three_kinds_of_task_and_writes_lm_evals_results_json(tmp_path, capsys):
    include = write_tasks(tmp_path / "tasks")
    for layout in ("decoder_only", "prefix_lm", "encoder_decoder"):
        config = TransformerConfig(layout=layout, vocab_size=384, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                   num_encoder_layers=int(layout == "encoder_decoder"), num_decoder_layers=1)
        write_run(str(tmp_path / layout), config)
        out = tmp_path / f"{layout}.json"
        assert run(f"--model_dir={tmp_path / layout}", "--tasks=tiny_mc,tiny_rolling,tiny_generate",
                   f"--include_path={include}", f"--output_path={out}", "--batch_size=2") == 0
        printed = capsys.readouterr().out
        assert "tiny_mc" in printed and "bits_per_byte" in printed
        written, = glob.glob(str(tmp_path / f"{layout}_*.json"))  # lm-eval dates the file name
        results = json.loads(open(written).read())
        assert {"results", "configs", "versions", "n-shot", "n-samples", "config"} <= set(results)
        assert set(results["results"]) == set(TASKS)
        assert 0.0 <= results["results"]["tiny_mc"]["acc,none"] <= 1.0
        assert results["n-samples"]["tiny_mc"]["effective"] == len(EXAMPLES)


@pytest.mark.slow
def test_lm_evals_own_entry_point_finds_the_registered_model(tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from t5x_like.inference import harness  # registers "t5x_like" with lm-eval
    include = write_tasks(tmp_path / "tasks")
    write_run(str(tmp_path / "run"), tiny("prefix_lm"))
    by_name = lm_eval.simple_evaluate(model="t5x_like", model_args=f"model_dir={tmp_path / 'run'}", tasks=["tiny_mc"],
                                      task_manager=TaskManager(include_path=include))
    by_object = lm_eval.simple_evaluate(model=harness.HarnessLM.from_model_dir(str(tmp_path / "run")),
                                        tasks=["tiny_mc"], task_manager=TaskManager(include_path=include))
    assert by_name["results"]["tiny_mc"]["acc,none"] == by_object["results"]["tiny_mc"]["acc,none"]
