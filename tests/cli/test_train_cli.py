"""`t5x-like train`: one-line errors before anything is written, and the files a run writes."""
import glob
import json
import os

import jax
import numpy as np
import pytest

from t5x_like.cli import gin_loading
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


def test_the_mlm_rate_binding_reaches_the_data_settings_and_a_bad_one_is_one_line():
    from t5x_like.data import settings as data_settings

    gin_loading.load_config([], ["t5x_like.data.tasks.mlm_rate.rate = 0.3"], finalize=False)
    assert data_settings.current().mlm_rate == 0.3
    gin_loading.load_config([], [], finalize=False)
    assert data_settings.current().mlm_rate == 0.15
    with pytest.raises(gin_loading.GinConfigError, match=r"^gin config error: MLM rate must be in \(0, 1\), got 1.5$"):
        gin_loading.load_config([], ["t5x_like.data.tasks.mlm_rate.rate = 1.5"], finalize=False)


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


@pytest.mark.parametrize("run_file,mode,init", [("pretrain", "train", None), ("finetune", "train", "/tmp/pre"),
                                                ("eval", "eval", None), ("infer", "infer", None)])
def test_every_run_file_becomes_a_train_config_and_a_mode(run_file, mode, init):
    argv = [MODEL_GIN, f"--gin_file=gin_configs/runs/{run_file}.gin", "--gin.MODEL_DIR=/tmp/x",
            "--gin.MIXTURE_OR_TASK_NAME=synthetic", "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
            "--gin.TRAIN_STEPS=5", "--gin.LEARNING_RATE=0.02", "--extra"] + ([f"--gin.INIT_CHECKPOINT={init}"] if init else [])
    config, parsed_mode, rest = gin_loading.train_config_from_args(argv)
    assert parsed_mode == mode and rest == ["--extra"]
    assert config.model.config.layout == "decoder_only" and config.model_dir == "/tmp/x"
    assert config.init_checkpoint == init
    assert config.train_steps == 5  # --gin.X=V bindings come after the files
    assert float(config.optimizer.learning_rate(1)) == pytest.approx(0.02)  # the macro reached the schedule
    assert "TrainConfig.model_dir = %MODEL_DIR" in config.config_text


def test_eval_run_file_scores_the_newest_checkpoint(tmp_path, capsys):
    model_dir = tmp_path / "run"
    common = [MODEL_GIN, f"--gin.MODEL_DIR={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=synthetic",
              "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", "--gin.BATCH_SIZE=4", "--gin.EVAL_STEPS=2"]
    assert run_main(common + [RUN_GIN, "--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=2"], capsys)[0] == 0
    rc, _, err = run_main(common + ["--gin_file=gin_configs/runs/eval.gin"], capsys)
    assert rc == 0, err
    rows = read_jsonl(str(model_dir / "metrics.jsonl"), "eval")
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["loss"])


@pytest.mark.parametrize("binding,named,suggested", [("--gin.LEARNING_RAT=0.001", "LEARNING_RAT", "LEARNING_RATE"),
                                                     ("--gin.CHECKPOINT_PERIDO=2", "CHECKPOINT_PERIDO", "CHECKPOINT_PERIOD"),
                                                     ("--gin.TRAIN_STEP=3", "TRAIN_STEP", "TRAIN_STEPS")])
def test_a_misspelt_macro_is_one_line_naming_it_and_the_close_match(binding, named, suggested, capsys):
    argv = [MODEL_GIN, RUN_GIN, "--gin.MODEL_DIR=/tmp/x", "--gin.MIXTURE_OR_TASK_NAME=synthetic",
            "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", binding]
    if named != "TRAIN_STEP":
        argv.append("--gin.TRAIN_STEPS=1")
    rc, _, err = run_main(argv, capsys)
    assert rc == 2 and err.count("\n") == 1
    assert f"gin macro {named} is set" in err and suggested in err.split("did you mean")[1]


def test_batch_that_does_not_divide_over_the_data_parallel_devices_is_refused_before_writing(tmp_path, capsys,
                                                                                           monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    model_dir = tmp_path / "run"
    rc, _, err = run_main([MODEL_GIN, RUN_GIN, f"--gin.MODEL_DIR={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=synthetic",
                           "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=6"],
                          capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "batch_size 6" in err and "8 data-parallel devices" in err and "multiple of 8" in err
    assert not model_dir.exists()


def test_second_run_on_a_model_dir_in_use_refuses_with_one_line(tmp_path, capsys):
    from t5x_like.training import run_dir
    model_dir = tmp_path / "run"
    with run_dir.exclusive(str(model_dir)):  # the first run, still training
        rc, _, err = run_main([MODEL_GIN, RUN_GIN, f"--gin.MODEL_DIR={model_dir}",
                               "--gin.MIXTURE_OR_TASK_NAME=synthetic", "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
                               "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4"], capsys)
    assert rc == 4 and err.count("\n") == 1
    assert f"pid {os.getpid()}" in err and "in use by another run" in err
    assert not (model_dir / "checkpoints").exists()


def test_eval_run_file_on_an_empty_model_dir_is_one_line_and_writes_nothing(tmp_path, capsys):
    rc, _, err = run_main([MODEL_GIN, "--gin_file=gin_configs/runs/eval.gin", f"--gin.MODEL_DIR={tmp_path}",
                           "--gin.MIXTURE_OR_TASK_NAME=synthetic", "--gin.TASK_FEATURE_LENGTHS={'targets': 32}"],
                          capsys)
    assert rc == 2 and err.count("\n") == 1 and "no checkpoint in" in err
    assert list(tmp_path.iterdir()) == []


def test_a_malformed_jsonl_corpus_is_one_line_naming_file_and_line(tmp_path, capsys):
    from t5x_like.data import tasks
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "fine"}\n{"text": "cut off\n')
    tasks.register_text_files_task("test_malformed_jsonl", str(corpus))
    rc, _, err = run_main([MODEL_GIN, RUN_GIN, f"--gin.MODEL_DIR={tmp_path / 'run'}",
                           "--gin.MIXTURE_OR_TASK_NAME=test_malformed_jsonl", "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
                           "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=4"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "corpus.jsonl:2: not valid JSON" in err


VOCAB_BINDING = "--gin.t5x_like.data.tasks.vocabulary.sentencepiece_model"


def test_a_sentencepiece_vocabulary_larger_than_the_model_is_one_line_with_the_fix(real_corpora, tmp_path, capsys):
    model_dir = tmp_path / "run"
    argv = [MODEL_GIN, RUN_GIN, f"--gin.MODEL_DIR={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=c4_span_corruption",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}", "--gin.TRAIN_STEPS=1",
            f"--gin.t5x_like.data.tasks.tfds_data_dir.data_dir={real_corpora.data_dir}",
            f"{VOCAB_BINDING}={real_corpora.sentencepiece_model}"]
    rc, _, err = run_main(argv, capsys)  # tiny.gin's VOCAB_SIZE = 384 < 400 pieces + 125 extra ids
    assert rc == 2 and err.count("\n") == 1
    assert "vocab_size 384" in err and "= 525 ids" in err and "--gin.TransformerConfig.vocab_size=640" in err
    assert not model_dir.exists()
    for mode in ("pretrain", "eval"):  # the suggested binding is accepted by the train and eval run files
        config, _, _ = gin_loading.train_config_from_args(
            [a.replace("pretrain", mode) for a in argv] + ["--gin.TransformerConfig.vocab_size=640"])
        config.validate()
        assert config.model.config.vocab_size == 640


def test_a_missing_sentencepiece_file_or_too_few_extra_ids_is_one_line(real_corpora, tmp_path, capsys):
    common = [MODEL_GIN, RUN_GIN, "--gin.MODEL_DIR=/tmp/x", "--gin.MIXTURE_OR_TASK_NAME=c4_prefix_lm",
              "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}", "--gin.TRAIN_STEPS=1"]
    rc, _, err = run_main(common + [f"{VOCAB_BINDING}={tmp_path / 'nope.model'}"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "nope.model" in err and "does not exist" in err
    rc, _, err = run_main(common + [f"{VOCAB_BINDING}={real_corpora.sentencepiece_model}",
                                    "--gin.t5x_like.data.tasks.vocabulary.extra_ids=100"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "extra_ids=100 is too few" in err
