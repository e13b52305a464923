"""`t5x-like train`: one-line errors before anything is written, and the files a run writes."""
import glob
import json

import numpy as np
import pytest

from t5x_like.cli import train as train_cli
from t5x_like.training.metrics_log import read_jsonl

pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")  # runs here recompile the same programs

MODEL_GIN = "--gin_file=gin_configs/models/decoder_only/tiny.gin"
RUN_GIN = "--gin_file=gin_configs/runs/pretrain.gin"


def run_main(args, capsys):
    rc = train_cli.main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_missing_required_macro_is_one_line_naming_it(capsys):
    rc, _, err = run_main([MODEL_GIN, RUN_GIN, "--gin.MODEL_DIR=/tmp/x",
                           "--gin.MIXTURE_OR_TASK_NAME=synthetic", "--gin.TRAIN_STEPS=1"], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and "TASK_FEATURE_LENGTHS" in err


def test_misspelled_binding_is_one_line_error(capsys):
    rc, _, err = run_main([MODEL_GIN, RUN_GIN, "--gin.TrainConfig.batch_sise=4"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "batch_sise" in err


def test_unknown_task_is_one_line_with_close_matches(capsys):
    rc, _, err = run_main([MODEL_GIN, RUN_GIN, "--gin.MODEL_DIR=/tmp/x", "--gin.TRAIN_STEPS=1",
                           "--gin.MIXTURE_OR_TASK_NAME=shakespeare_casual_lm",
                           "--gin.TASK_FEATURE_LENGTHS={'targets': 32}"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "shakespeare_causal_lm" in err


def test_cli_run_writes_config_jsonl_tensorboard_and_eval(tmp_path, capsys):
    model_dir = tmp_path / "run"
    rc, out, _ = run_main([MODEL_GIN, RUN_GIN, f"--gin.MODEL_DIR={model_dir}",
                           "--gin.MIXTURE_OR_TASK_NAME=synthetic", "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
                           "--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=4", "--gin.LOG_PERIOD=2",
                           "--gin.EVAL_PERIOD=2", "--gin.EVAL_STEPS=2", "--gin.CHECKPOINT_PERIOD=2"], capsys)
    assert rc == 0
    assert "step 4/4" in out and "tok/s" in out and "[eval @ step 4]" in out
    assert "MODEL_DIR" in (model_dir / "config.gin").read_text()
    assert "TrainConfig" in (model_dir / "operative_config.gin").read_text()
    rows = read_jsonl(str(model_dir / "metrics.jsonl"))
    assert [(r["split"], r["step"]) for r in rows] == [("train", 2), ("eval", 2), ("train", 4), ("eval", 4)]
    assert rows[-1]["perplexity"] == pytest.approx(np.exp(rows[-1]["loss"]))
    assert glob.glob(str(model_dir / "tensorboard" / "train" / "events.out.tfevents.*"))
    assert glob.glob(str(model_dir / "tensorboard" / "eval" / "events.out.tfevents.*"))
    assert json.loads((model_dir / "train_config.json").read_text())["train_steps"] == "4"
