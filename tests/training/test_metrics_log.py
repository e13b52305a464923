"""metrics.jsonl survives what a crash or a full disk leaves: a torn last line, rewritten steps."""
import json
import logging

from t5x_like.training.metrics_log import MetricsLogger, read_jsonl


def test_a_torn_last_line_is_skipped_and_the_next_writer_starts_on_a_fresh_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "split": "train", "loss": 3.0}) + "\n" + '{"step": 2, "split": "tr')
    logger = MetricsLogger(str(tmp_path), total_steps=4, batch_size=2, tokens_per_example=8, tensorboard=False)
    logger.write("train", 2, {"loss": 2.5})
    logger.close()
    with caplog.at_level(logging.WARNING):
        rows = read_jsonl(str(path))
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 3.0), (2, 2.5)]
    assert "metrics.jsonl:2: skipping a line that is not JSON" in caplog.text


def test_steps_rewritten_after_a_resume_read_once_with_the_last_values(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [(1, "train", 3.0), (2, "train", 2.9), (2, "eval", 2.8), (3, "train", 2.7),  # killed after step 3
            (3, "train", 2.6), (4, "train", 2.5), (4, "eval", 2.4)]                    # resumed from step 2
    path.write_text("".join(json.dumps({"step": s, "split": k, "loss": v}) + "\n" for s, k, v in rows))
    assert [(r["step"], r["split"], r["loss"]) for r in read_jsonl(str(path))] == [
        (1, "train", 3.0), (2, "train", 2.9), (2, "eval", 2.8), (3, "train", 2.6), (4, "train", 2.5), (4, "eval", 2.4)]
    assert [r["loss"] for r in read_jsonl(str(path), "train")] == [3.0, 2.9, 2.6, 2.5]
