"""`t5x-like eval` (and infer run files): the model rebuilt from MODEL_DIR/model_config.json (or the
config.gin of an older run), a metrics table and JSON, and one clear line with exit code 2 for bad input."""
from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from t5x_like.cli import eval as eval_cli
from t5x_like.cli import gin_loading
from t5x_like.cli import train as train_cli
from t5x_like.model import model as models
from tests.checkpoint_fixtures import LENGTHS, tiny, write_run


def test_eval_prints_a_metrics_table_and_writes_json_next_to_the_checkpoint(prefix_run, capsys):
    model_dir, _, _ = prefix_run
    rc = eval_cli.main([f"--checkpoint={model_dir}", "--task=probe_copy", "--max_examples=6",
                        "--batch_size=4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "exact_match" in out and "perplexity" in out
    path = os.path.join(model_dir, "eval-probe_copy-validation-step7.json")
    report = json.load(open(path))
    metrics = report["metrics"]["probe_copy"]
    assert report["step"] == 7 and report["feature_lengths"] == LENGTHS
    assert 0.0 <= metrics["exact_match"] <= 100.0
    assert metrics["examples"] == 6
    assert len(report["examples"]["probe_copy"]) == 3 and "prediction" in report["examples"]["probe_copy"][0]


def test_model_is_rebuilt_from_the_saved_model_config(prefix_run):
    model_dir, model, params = prefix_run
    loaded = gin_loading.load_checkpoint_with_overrides(os.path.join(model_dir, "checkpoints", "7"))
    assert loaded.model.config == model.config and loaded.step == 7
    assert loaded.task_feature_lengths == LENGTHS
    jax.tree.map(np.testing.assert_array_equal, loaded.params, params)


def test_empty_checkpoint_dir_is_a_clear_error(tmp_path, capsys):
    rc = eval_cli.main([f"--checkpoint={tmp_path}", "--task=probe_copy"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no checkpoint in" in err and "expected step folders" in err and "empty directory" in err


def test_checkpoint_of_another_layout_names_the_mismatched_params(tmp_path, capsys):
    # prefix-LM params (two blocks of relative buckets) under a decoder-only config.
    write_run(str(tmp_path), tiny("prefix_lm"), claimed=tiny("decoder_only"))
    rc = eval_cli.main([f"--checkpoint={tmp_path}", "--task=probe_copy"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "does not match the model config" in err
    assert "decoder_relpos_bias/rel_embedding: model (32, 2) vs checkpoint (64, 2)" in err


def test_task_without_the_split_is_a_clear_error(prefix_run, capsys):
    model_dir, _, _ = prefix_run
    rc = eval_cli.main([f"--checkpoint={model_dir}", "--task=probe_copy", "--split=dev"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "'probe_copy' has no split 'dev'" in err and "'validation'" in err


def test_infer_run_file_generates_and_scores_like_eval(prefix_run, capsys):
    """gin_configs/runs/infer.gin through `t5x-like train` runs the same program as `t5x-like eval`."""
    model_dir, _, _ = prefix_run
    written = os.path.join(model_dir, "eval-probe_copy-validation-step7.json")
    if os.path.exists(written):  # left by the eval test above
        os.remove(written)
    rc = train_cli.main(["--gin_file=gin_configs/models/prefix_lm/tiny.gin", "--gin_file=gin_configs/runs/infer.gin",
                         f"--gin.MODEL_DIR={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=probe_copy",
                         f"--gin.TASK_FEATURE_LENGTHS={LENGTHS!r}", "--gin.EVAL_STEPS=1"])
    assert rc == 0
    assert "exact_match" in capsys.readouterr().out
    assert os.path.exists(written)


def test_config_gin_saved_before_the_package_move_still_loads(tmp_path):
    model, params = write_run(str(tmp_path), tiny("decoder_only"), older=True)
    path = tmp_path / "config.gin"
    path.write_text(path.read_text().replace("import t5x_like.cli.configurables",
                                             "import t5x_like.config\nimport t5x_like.models"))
    loaded = gin_loading.load_checkpoint_with_overrides(str(tmp_path))
    assert loaded.model.config == model.config
    jax.tree.map(np.testing.assert_array_equal, loaded.params, params)


def test_a_damaged_newest_checkpoint_is_skipped_and_the_evaluated_step_named(tmp_path, capsys, caplog):
    from tests.training.test_checkpoints import overwrite_middle_bytes
    write_run(str(tmp_path), tiny("prefix_lm"), step=7)
    write_run(str(tmp_path), tiny("prefix_lm"), step=9)
    overwrite_middle_bytes(tmp_path / "checkpoints" / "9")
    with caplog.at_level(logging.WARNING):
        rc = eval_cli.main([f"--checkpoint={tmp_path}", "--task=probe_copy", "--max_examples=2", "--batch_size=2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "step 9 is damaged" in caplog.text and "reading step 7 instead" in caplog.text
    assert json.load(open(tmp_path / "eval-probe_copy-validation-step7.json"))["step"] == 7
    assert "at step 7" in captured.out
    assert (tmp_path / "checkpoints" / "9").exists(), "evaluation must not move or delete anything"


def test_evaluating_with_a_vocabulary_larger_than_the_model_is_one_line(prefix_run, real_corpora, capsys):
    model_dir, _, _ = prefix_run  # trained with bytes: 384 rows
    rc = eval_cli.main([f"--checkpoint={model_dir}", "--task=probe_copy",
                        f"--gin.t5x_like.data.tasks.vocabulary.sentencepiece_model={real_corpora.sentencepiece_model}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "vocab_size 384" in err and "525 ids" in err and "vocab_size=640" in err


def test_a_run_dir_from_before_model_config_json_loads_from_its_config_gin(tmp_path):
    model, params = write_run(str(tmp_path), tiny("prefix_lm"), older=True)
    loaded = gin_loading.load_checkpoint_with_overrides(str(tmp_path))
    assert loaded.model.config == model.config and loaded.task_feature_lengths == LENGTHS
    jax.tree.map(np.testing.assert_array_equal, loaded.params, params)


def test_eval_needs_no_gin_file_on_a_trained_run_whose_gin_files_are_gone(tmp_path, capsys):
    from t5x_like.training import run as train
    from tests.training_fixtures import tiny_run
    config = tiny_run(tmp_path, train_steps=2, checkpoint_period=2,
                      task_feature_lengths={"inputs": 16, "targets": 16}, mixture_or_task_name="probe_copy",
                      model=models.Model(tiny("prefix_lm")))
    train.train(config)
    for name in ("config.gin", "train_config.json"):
        if os.path.exists(tmp_path / name):
            os.remove(tmp_path / name)
    rc = eval_cli.main([f"--checkpoint={tmp_path}", "--task=probe_copy", "--max_examples=2", "--batch_size=2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "at step 2 of" in captured.out
    saved = json.load(open(tmp_path / "model_config.json"))
    assert saved["model"]["layout"] == "prefix_lm" and saved["task_feature_lengths"] == {"inputs": 16, "targets": 16}


def test_eval_needs_no_gin_file_on_a_converted_model_dir(tmp_path, capsys):
    from t5x_like.interop import common
    config = tiny("decoder_only")
    params = jax.tree.map(lambda x: np.full(x.shape, 0.01, np.float32), models.Model(config).abstract_params())
    common.save_model_dir(str(tmp_path), config, params, "converted for a test")
    rc = eval_cli.main([f"--checkpoint={tmp_path}", "--task=probe_copy", "--max_examples=2", "--batch_size=2",
                        "--inputs_length=16", "--targets_length=16"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "at step 0 of" in captured.out


def test_gin_bindings_override_the_saved_model_config(prefix_run):
    model_dir, model, _ = prefix_run
    loaded = gin_loading.load_checkpoint_with_overrides(model_dir, gin_bindings=["config.TransformerConfig.dropout_rate = 0.25"])
    assert loaded.model.config == model.config.replace(dropout_rate=0.25)


def test_eval_on_a_read_only_model_dir_prints_the_metrics_and_says_where_the_report_could_not_go(tmp_path, capsys):
    from tests.cli.test_train_cli import listing, read_only
    write_run(str(tmp_path), tiny("prefix_lm"), step=7)
    before = listing(tmp_path)
    with read_only(tmp_path):
        rc = eval_cli.main([f"--checkpoint={tmp_path}", "--task=probe_copy", "--max_examples=2", "--batch_size=2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "at step 7 of" in captured.out and "exact_match" in captured.out  # the metrics, kept
    report = tmp_path / "eval-probe_copy-validation-step7.json"
    assert captured.err.count("\n") == 1 and f"could not write the report to {report}" in captured.err
    assert "--output=PATH" in captured.err
    assert listing(tmp_path) == before
