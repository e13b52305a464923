"""`t5x-like eval` and evaluation.py: loading checkpoints, seqio metrics, bad input."""
from __future__ import annotations

import json
import math
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from t5x_like import checkpoints, eval as eval_cli, evaluation, models
from t5x_like.config import TransformerConfig

LENGTHS = {"inputs": 24, "targets": 20}

CONFIG_GIN = """
import t5x_like.config
import t5x_like.models
MODEL = @models.Model()
models.Model.config = @config.TransformerConfig()
TASK_FEATURE_LENGTHS = {lengths}
TransformerConfig.layout = '{layout}'
TransformerConfig.vocab_size = 384
TransformerConfig.d_model = {d_model}
TransformerConfig.num_heads = 2
TransformerConfig.head_dim = 16
TransformerConfig.d_ff = 64
TransformerConfig.num_decoder_layers = 2
"""


def tiny(layout: str, d_model: int = 32) -> TransformerConfig:
    return TransformerConfig(layout=layout, vocab_size=384, d_model=d_model, num_heads=2, head_dim=16,
                             d_ff=64, num_decoder_layers=2)


def write_run(model_dir: str, config: TransformerConfig, step: int = 7, claimed: TransformerConfig | None = None):
    """A model dir as `t5x-like train` leaves it: config.gin + checkpoints/<step>/{params,...}."""
    claimed = claimed or config
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
        f.write(CONFIG_GIN.format(lengths=LENGTHS, layout=claimed.layout, d_model=claimed.d_model))
    model = models.Model(config)
    init = jax.jit(lambda rng: nn.unbox(model.init(rng, model.dummy_batch(1, LENGTHS)))["params"])
    params = init(jax.random.key(0))
    saver = checkpoints.Checkpointer(os.path.join(model_dir, checkpoints.CHECKPOINT_SUBDIR), async_save=False)
    saver.save(step, params, {"count": np.zeros(())}, {"batches_consumed": step})
    saver.close()
    return model, params


@pytest.fixture(scope="module")
def prefix_run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("prefix_run"))
    model, params = write_run(model_dir, tiny("prefix_lm"))
    return model_dir, model, params


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


def test_loaded_checkpoint_has_the_saved_params_and_config(prefix_run):
    model_dir, model, params = prefix_run
    loaded = evaluation.load_checkpoint(os.path.join(model_dir, "checkpoints", "7"))
    assert loaded.model.config == model.config and loaded.step == 7
    assert loaded.task_feature_lengths == LENGTHS
    jax.tree.map(np.testing.assert_array_equal, loaded.params, params)


@pytest.fixture(scope="module")
def evaluated(prefix_run):
    """One library-level evaluation shared by the checks below, and the same examples as a batch."""
    _, model, params = prefix_run
    import t5x_like.data as data
    result = evaluation.evaluate(model, params, "probe_copy", "validation", LENGTHS, batch_size=4,
                                 max_examples=6, num_shown=6)
    batch = next(data.get_dataset("probe_copy", LENGTHS, "validation", layout="prefix_lm", batch_size=6,
                                  shuffle=False, pack=False).as_numpy_iterator())
    return model, params, result, batch


def test_teacher_forced_loss_matches_the_models_loss_sums(evaluated):
    model, params, result, batch = evaluated
    _, sums = jax.jit(model.loss_sums)(params, batch)
    metrics = result.metrics["probe_copy"]
    assert metrics["loss"] == pytest.approx(float(sums["loss_sum"] / sums["weight_sum"]), rel=1e-5)
    assert metrics["target_tokens"] == int(sums["weight_sum"])
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-6)


def test_predictions_are_the_models_greedy_generations(evaluated):
    model, params, result, batch = evaluated
    from t5x_like import decoding
    from t5x_like.data import default_vocabulary
    tokens = model.predict_batch(params, batch, decoding.DecodeConfig(max_new_tokens=LENGTHS["targets"]),
                                 prompt_length=LENGTHS["inputs"] + 1)
    shown = [example["prediction"] for example in result.examples["probe_copy"]]
    assert shown == [default_vocabulary().decode(t.tolist()) for t in tokens]
    assert 0.0 <= result.metrics["probe_copy"]["exact_match"] <= 100.0


def test_rank_classification_task_is_scored_not_generated(prefix_run):
    _, model, params = prefix_run
    result = evaluation.evaluate(model, params, "sentiment_finefood_rank", "validation",
                                 {"inputs": 64, "targets": 4}, batch_size=8, max_examples=8)
    metrics = result.metrics["sentiment_finefood_rank"]
    assert "accuracy" in metrics and 0.0 <= metrics["accuracy"] <= 100.0
    assert result.examples["sentiment_finefood_rank"] == []  # no generation happened


# --- bad input: one clear line each, exit code 2 ---------------------------------------------
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


def test_checkpoint_of_another_size_names_the_mismatched_params(tmp_path):
    write_run(str(tmp_path), tiny("decoder_only", d_model=48), claimed=tiny("decoder_only", d_model=32))
    with pytest.raises(evaluation.CheckpointError, match=r"mlp/wi_0/kernel: model \(32, 64\) vs "
                                                         r"checkpoint \(48, 64\)"):
        evaluation.load_checkpoint(str(tmp_path))


def test_task_without_the_split_is_a_clear_error(prefix_run, capsys):
    model_dir, _, _ = prefix_run
    rc = eval_cli.main([f"--checkpoint={model_dir}", "--task=probe_copy", "--split=dev"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "'probe_copy' has no split 'dev'" in err and "'validation'" in err


def test_infer_run_file_generates_and_scores_like_eval(prefix_run, capsys):
    """gin_configs/runs/infer.gin through `t5x-like train` runs the same program as `t5x-like eval`."""
    from t5x_like import train as train_cli
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
