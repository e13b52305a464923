"""Pretraining on prepared C4 / WikiText-103 directories with a SentencePiece vocabulary, all from
gin (`t5x-like train`'s main), then scoring the checkpoint (runs/eval.gin); and per-host sharding
with 2 processes. The corpora and the model file are tests/corpus_fixtures.py's (built offline)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from t5x_like.cli import train as train_cli
from t5x_like.data import objectives
from t5x_like.data import vocab as vocab_lib
from t5x_like.training import run as run_lib
from t5x_like.training.metrics_log import read_jsonl
from tests import REPO_ROOT

pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")
VOCAB_BINDING = "--gin.t5x_like.data.tasks.vocabulary.sentencepiece_model"


def gin_args(corpora, model_dir, task: str, layout: str, lengths: dict, steps: int = 6) -> list[str]:
    return [f"--gin_file=gin_configs/models/{layout}/tiny.gin", "--gin_file=gin_configs/runs/pretrain.gin",
            f"--gin.MODEL_DIR={model_dir}", f"--gin.MIXTURE_OR_TASK_NAME={task}",
            f"--gin.TASK_FEATURE_LENGTHS={lengths!r}", f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=4",
            "--gin.EVAL_STEPS=2", "--gin.LOG_PERIOD=1", f"--gin.CHECKPOINT_PERIOD={steps}", "--gin.WARMUP_STEPS=1",
            f"--gin.t5x_like.data.tasks.tfds_data_dir.data_dir={corpora.data_dir}",
            f"{VOCAB_BINDING}={corpora.sentencepiece_model}"]


def record_batches(monkeypatch) -> list[dict]:
    """The batches the run's data source hands the loop (train first), as a list that fills."""
    seen = []
    original = run_lib.default_dataset_fn

    def recording(request, model):
        for i, batch in enumerate(original(request, model)):
            if i < 2:
                seen.append({"split": request.split, "model_vocab_size": model.config.vocab_size, **batch})
            yield batch
    monkeypatch.setattr(run_lib, "default_dataset_fn", recording)
    return seen


def check_run_and_eval(args, model_dir, capsys, steps: int = 6):
    assert train_cli.main(args) == 0, capsys.readouterr().err
    train_rows = read_jsonl(str(model_dir / "metrics.jsonl"), "train")
    assert [r["step"] for r in train_rows] == list(range(1, steps + 1))
    assert all(np.isfinite(r["loss"]) for r in train_rows) and train_rows[-1]["loss"] < train_rows[0]["loss"]
    config_gin = (model_dir / "config.gin").read_text()  # what `t5x-like eval` reloads: the vocabulary too
    assert "vocabulary.sentencepiece_model" in config_gin and next(
        a.split("=", 1)[1] for a in args if a.startswith(VOCAB_BINDING)) in config_gin
    # runs/eval.gin: the newest checkpoint's teacher-forced loss on the validation split
    eval_args = [a.replace("runs/pretrain.gin", "runs/eval.gin") for a in args if "TRAIN_STEPS" not in a]
    assert train_cli.main(eval_args) == 0, capsys.readouterr().err
    evals = read_jsonl(str(model_dir / "metrics.jsonl"), "eval")
    assert evals[-1]["step"] == steps and np.isfinite(evals[-1]["loss"])
    return train_rows, evals[-1]


@pytest.mark.slow
def test_c4_span_corruption_from_gin_trains_and_evaluates_on_sentencepiece_ids(real_corpora, tmp_path, capsys,
                                                                               monkeypatch):
    sp = vocab_lib.sentencepiece_vocabulary(real_corpora.sentencepiece_model)
    batches = record_batches(monkeypatch)
    model_dir = tmp_path / "c4"
    args = gin_args(real_corpora, model_dir, "c4_span_corruption", "encoder_decoder", {"inputs": 64, "targets": 16})
    args += [f"--gin.VOCAB_SIZE={vocab_lib.embedding_rows(sp)}", "--gin.PACK=False"]
    losses, _ = check_run_and_eval(args, model_dir, capsys)
    first = next(b for b in batches if b["split"] == "train")
    inputs, targets = first["encoder_input_tokens"], first["decoder_target_tokens"]
    assert 258 < inputs.max() < sp.vocab_size  # SentencePiece pieces, not bytes
    specials = set(np.unique(np.concatenate([inputs.ravel(), targets.ravel()]))) & set(range(400, sp.vocab_size))
    assert vocab_lib.sentinel_id(0, sp) in specials and specials <= set(vocab_lib.sentinel_ids(sp))
    documents = " ".join(real_corpora.documents["c4"]["train"])
    for row_inputs, row_targets in zip(inputs, targets):
        text = sp.decode(objectives.reconstruct_from_spans(row_inputs, row_targets, sp))
        assert text and text in documents
    print("c4_span_corruption losses", [round(r["loss"], 3) for r in losses])


@pytest.mark.slow
def test_wikitext_prefix_lm_from_gin_with_the_model_following_the_vocabulary(real_corpora, tmp_path, capsys,
                                                                             monkeypatch):
    sp = vocab_lib.sentencepiece_vocabulary(real_corpora.sentencepiece_model)
    batches = record_batches(monkeypatch)
    model_dir = tmp_path / "wikitext"
    args = gin_args(real_corpora, model_dir, "wikitext103_prefix_lm", "prefix_lm", {"inputs": 32, "targets": 32})
    args += ["--gin.VOCAB_SIZE=@t5x_like.data.tasks.embedding_rows()"]
    losses, _ = check_run_and_eval(args, model_dir, capsys)
    first = next(b for b in batches if b["split"] == "train")
    assert first["model_vocab_size"] == vocab_lib.embedding_rows(sp) == 640  # followed the vocabulary
    first = first["decoder_target_tokens"]
    assert 258 < first.max() < 400  # pieces; no extra id in a prefix-LM batch
    documents = " ".join(real_corpora.documents["wikitext103"]["train"])
    row = [int(t) for t in first[0] if t > 1]  # packed: the first example's tokens start the row
    assert sp.decode(row[:10]) in documents
    print("wikitext103_prefix_lm losses", [round(r["loss"], 3) for r in losses])


# -- 2 processes -------------------------------------------------------------------------
TWO_PROCESS_RUN = textwrap.dedent("""
    import sys
    import numpy as np
    from t5x_like.cli import train as train_cli
    from t5x_like.training import run as run_lib
    out, process_id, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    original = run_lib.default_dataset_fn
    def recording(request, model):  # keeps this process's first train batch
        for i, batch in enumerate(original(request, model)):
            if i == 0 and request.split == "train":
                np.savez(f"{out}/first_batch_{process_id}.npz", shard=[request.shard_id, request.num_shards], **batch)
            yield batch
    run_lib.default_dataset_fn = recording
    sys.exit(train_cli.main(argv + [f"--process_id={process_id}"]))
""")


@pytest.mark.slow
def test_two_processes_each_read_their_own_shard_of_c4(real_corpora, tmp_path):
    from tests.training.test_distributed import env, free_port
    sp = vocab_lib.sentencepiece_vocabulary(real_corpora.sentencepiece_model)
    model_dir = tmp_path / "two"
    args = gin_args(real_corpora, model_dir, "c4_causal_lm", "decoder_only", {"targets": 64}, steps=3)
    args += [f"--gin.VOCAB_SIZE={vocab_lib.embedding_rows(sp)}", f"--coordinator_address=127.0.0.1:{free_port()}",
             "--num_processes=2"]
    environ = env(tmp_path / "jax_cache", devices=1)
    procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_RUN, str(tmp_path), str(i), *args], env=environ,
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    firsts = [np.load(tmp_path / f"first_batch_{i}.npz") for i in range(2)]
    assert [f["shard"].tolist() for f in firsts] == [[0, 2], [1, 2]]
    tokens = [f["decoder_target_tokens"] for f in firsts]
    assert tokens[0].shape == tokens[1].shape == (2, 64)  # each host: its half of the global batch of 4
    assert not np.array_equal(tokens[0], tokens[1]) and all(258 < t.max() < 400 for t in tokens)
    rows = read_jsonl(os.path.join(model_dir, "metrics.jsonl"), "train")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
