"""`t5x-like train`: one-line errors before anything is written, refusals that hold on a rerun, exit 3 for
a diverged run, and the files a run writes."""
import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from t5x_like.cli import gin_loading
from t5x_like.cli import train as train_cli
from t5x_like.training.metrics_log import read_jsonl
from tests import REPO_ROOT

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
                                    "--gin.t5x_like.data.tasks.vocabulary.extra_ids=99"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "extra_ids=99 is too few" in err


# -- issue 30: refusals that hold, divergence without NaN, user errors as one line -------------
TINY_RUN = [MODEL_GIN, RUN_GIN, "--gin.MIXTURE_OR_TASK_NAME=synthetic", "--gin.EVAL_PERIOD=0", "--gin.EVAL_STEPS=1",
            "--gin.CHECKPOINT_PERIOD=2"]


def tiny_run_args(model_dir, steps=2, batch=4, length=32, *extra):
    return TINY_RUN + [f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={steps}", f"--gin.BATCH_SIZE={batch}",
                       f"--gin.TASK_FEATURE_LENGTHS={{'targets': {length}}}", *extra]


def listing(directory) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@contextlib.contextmanager
def read_only(directory):
    """`directory` (existing, filled or not) read-only for the block: a read-only bind mount as root
    (root writes through permissions), its permissions otherwise; skips where neither works."""
    directory = str(directory)
    if os.geteuid() != 0:
        mode = os.stat(directory).st_mode
        os.chmod(directory, 0o555)
        try:
            yield
        finally:
            os.chmod(directory, mode)
        return
    if not shutil.which("mount") or subprocess.run(["mount", "--bind", directory, directory],
                                                   capture_output=True).returncode:
        pytest.skip("a read-only directory for root needs a bind mount (mount(8), CAP_SYS_ADMIN)")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", directory], capture_output=True).returncode:
            pytest.skip("cannot remount a bind mount read-only here")
        yield
    finally:
        subprocess.run(["umount", directory], check=False)


def test_a_refusal_over_damaged_checkpoints_holds_on_every_rerun_until_start_over_is_asked(tmp_path, capsys):
    from tests.training.test_checkpoints import overwrite_middle_bytes
    model_dir = tmp_path / "run"
    assert run_main(tiny_run_args(model_dir, steps=4), capsys)[0] == 0
    for step in ("2", "4"):
        overwrite_middle_bytes(model_dir / "checkpoints" / step)
    for attempt in (1, 2):  # a SLURM requeue, a retry loop: the same command again
        rc, _, err = run_main(tiny_run_args(model_dir, steps=4), capsys)
        assert rc == 4 and err.count("\n") == 1, (attempt, err)
        assert "steps 2, 4" in err and "start_over_if_checkpoints_damaged=True" in err
        assert sorted(os.listdir(model_dir / "checkpoints")) == ["2", "4"], "a refused run moves nothing"
    start_over = "--gin.TrainConfig.start_over_if_checkpoints_damaged=True"
    rc, _, err = run_main(tiny_run_args(model_dir, 4, 4, 32, start_over), capsys)
    assert rc == 0, err
    names = os.listdir(model_dir / "checkpoints")
    assert {"2", "4"} <= set(names) and sum(name.startswith(("2.corrupt-", "4.corrupt-")) for name in names) == 2


def test_a_run_that_collapses_without_nan_exits_3_with_one_line_on_stderr(tmp_path, capsys):
    # Adafactor at 1e6: from the first step the loss sits at ln(384) with gradient norm 0.0 and the
    # parameter norm explodes, nothing is NaN (it used to train to the end and exit 0).
    model_dir = tmp_path / "run"
    rc, out, err = run_main(tiny_run_args(model_dir, 6, 4, 32, "--gin.LEARNING_RATE=1e6"), capsys)
    assert rc == 3 and err.count("\n") == 1, err
    # (on this project's CI CPUs it collapses; float rounding elsewhere may reach NaN first: exit 3 as well)
    assert "lower the learning rate" in err and "collapsed" not in out and "non-finite" not in out
    assert not [name for name in os.listdir(model_dir / "checkpoints") if name.isdigit()], "a collapsed state was saved"


def test_a_non_finite_loss_is_one_line_on_stderr_not_stdout(tmp_path, capsys):
    rc, out, err = run_main(tiny_run_args(tmp_path / "run", 4, 4, 32, "--gin.LEARNING_RATE=1e30"), capsys)
    assert rc == 3 and err.count("\n") == 1 and "non-finite training loss" in err
    assert "non-finite" not in out


@pytest.mark.parametrize("binding,named", [("--gin.BATCH_SIZE=0", "BATCH_SIZE"), ("--gin.BATCH_SIZE=-8", "BATCH_SIZE"),
                                           ("--gin.TASK_FEATURE_LENGTHS={'targets': 0}", "TASK_FEATURE_LENGTHS"),
                                           ("--gin.TRAIN_STEPS='ten'", "TRAIN_STEPS"),
                                           ("--gin.TrainConfig.log_period=0", "TrainConfig.log_period")])
def test_a_bad_size_or_a_wrong_typed_binding_is_one_line_naming_it_and_writes_nothing(binding, named, tmp_path,
                                                                                     capsys):
    model_dir = tmp_path / "run"
    rc, _, err = run_main(tiny_run_args(model_dir) + [binding], capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert f"--gin.{named}:" in err and "not supported" not in err
    assert not model_dir.exists()


def test_a_model_dir_that_is_a_file_or_read_only_is_one_line_and_nothing_is_written(tmp_path, capsys):
    a_file = tmp_path / "run.txt"
    a_file.write_text("not a directory")
    rc, _, err = run_main(tiny_run_args(a_file), capsys)
    assert rc == 4 and err.count("\n") == 1 and "is a file, not a directory" in err
    locked_out = tmp_path / "ro"
    locked_out.mkdir()
    with read_only(locked_out):
        for model_dir in (locked_out, locked_out / "run"):
            rc, _, err = run_main(tiny_run_args(model_dir), capsys)
            assert rc == 4 and err.count("\n") == 1, err
            assert f"MODEL_DIR {model_dir} cannot be used" in err and "writable directory" in err
    assert listing(locked_out) == []


@pytest.mark.parametrize("changed,was,now", [({"batch": 8}, "batch_size 4", "batch_size 8"),
                                             ({"length": 64}, "{'targets': 32}", "{'targets': 64}")])
def test_resuming_with_another_batch_shape_is_one_line_naming_both_values(changed, was, now, tmp_path, capsys):
    model_dir = tmp_path / "run"
    assert run_main(tiny_run_args(model_dir), capsys)[0] == 0
    before = listing(model_dir)
    rc, _, err = run_main(tiny_run_args(model_dir, **{"steps": 4, **changed}), capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert was in err and now in err and f"--gin.TrainConfig.init_checkpoint={model_dir}" in err
    assert listing(model_dir) == before


@pytest.mark.slow  # two runs in subprocesses: the noise is printed by the interpreter, outside any capture
def test_a_zero_byte_manifest_is_recovered_without_event_loop_tracebacks(tmp_path):
    model_dir = tmp_path / "run"
    environ = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def train(steps):
        return subprocess.run([sys.executable, "-m", "t5x_like.train", *tiny_run_args(model_dir, steps)], env=environ,
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert train(4).returncode == 0
    (model_dir / "checkpoints" / "4" / "params" / "manifest.ocdbt").write_bytes(b"")
    done = train(6)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checkpoint step 4 is unreadable" in done.stderr
    assert "Event loop is closed" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
