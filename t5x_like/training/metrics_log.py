"""Metrics output: console progress, a JSONL log and TensorBoard event files.

Owns: where training and validation metrics go and how they look; throughput
(tokens/s), model FLOP/s and estimated MFU. Does not own: computing the loss
(trainer.py) or FLOP counts (model/sizing.py, which run.py asks for the
FLOPs per example it passes in).

Outputs, written by process 0 only:
  MODEL_DIR/metrics.jsonl    one JSON object per logged step and split:
                             {"step": 10, "split": "train", "loss": 3.91, ...}
                             floats are written with full precision (repr).
  MODEL_DIR/tensorboard/     TensorBoard scalars (train/..., eval/...), via
                             tf.summary (TensorFlow is imported on first use).
  stdout                     one self-overwriting line on a TTY, plain lines
                             otherwise (logs, CI, SLURM).
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

import jax

# Peak dense FLOP/s per device by jax device_kind (bf16 for accelerators).
PEAK_FLOPS_BY_DEVICE_KIND = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
}

log = logging.getLogger(__name__)


def peak_flops_per_device(override: float | None = None) -> float | None:
    """Override, else the table, else (CPU) a measured f32 matmul rate, else None."""
    if override:
        return float(override)
    kind = jax.devices()[0].device_kind
    if kind in PEAK_FLOPS_BY_DEVICE_KIND:
        return PEAK_FLOPS_BY_DEVICE_KIND[kind]
    if jax.devices()[0].platform == "cpu":
        return measure_matmul_flops(1024, repeats=3)
    return None


def measure_matmul_flops(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """FLOP/s of an n x n matmul on the default device (best of `repeats`)."""
    import jax.numpy as jnp
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


class _TensorBoard:
    """Scalar summaries through tf.summary.write (no tensorboard package needed)."""

    def __init__(self, logdir: str):
        self.logdir = logdir
        self._writers: dict[str, Any] = {}

    def write(self, split: str, step: int, scalars: Mapping[str, float]) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(os.path.join(self.logdir, split))
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        with self._writers[split].as_default():
            for name, value in scalars.items():
                tf.summary.write(name, tf.constant(float(value), tf.float32), step=step, metadata=metadata)
        self._writers[split].flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


class MetricsLogger:
    """Writes metrics to the console, MODEL_DIR/metrics.jsonl and TensorBoard.

    Args:
      model_dir: run directory.
      total_steps: for the progress display.
      tokens_per_example: positions processed per example (all features).
      flops_per_example: training FLOPs per example (forward + backward), or
        None to skip FLOP/s and MFU.
      tensorboard: write TensorBoard event files.
      peak_flops: peak FLOP/s per device for MFU (default: table or measured).
    """

    def __init__(self, model_dir: str, total_steps: int, batch_size: int, tokens_per_example: int,
                 flops_per_example: float | None = None, tensorboard: bool = True,
                 peak_flops: float | None = None, stream: IO[str] | None = None):
        self.is_chief = jax.process_index() == 0
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.tokens_per_example = tokens_per_example
        self.flops_per_example = flops_per_example
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._peak_override = peak_flops
        self._peak: float | None = None
        self._jsonl = None
        self._tb = None
        if self.is_chief:
            os.makedirs(model_dir, exist_ok=True)
            path = os.path.join(model_dir, "metrics.jsonl")
            torn = _ends_mid_line(path)
            self._jsonl = open(path, "a")  # noqa: SIM115  (closed in close())
            if torn:  # a crash or full disk cut the last row: start ours on a fresh line
                self._jsonl.write("\n")
            if tensorboard:
                self._tb = _TensorBoard(os.path.join(model_dir, "tensorboard"))
        self._last_time: float | None = None
        self._last_step: int | None = None

    def start(self, step: int) -> None:
        """Marks the start of timing (call after compilation, before the first step)."""
        self._last_time, self._last_step = time.perf_counter(), step

    def throughput(self, step: int) -> dict[str, float]:
        """Examples/s, tokens/s, model FLOP/s and MFU since the previous call."""
        now = time.perf_counter()
        if self._last_time is None or self._last_step is None or step <= self._last_step:
            self._last_time, self._last_step = now, step
            return {}
        seconds = now - self._last_time
        examples = (step - self._last_step) * self.batch_size
        self._last_time, self._last_step = now, step
        out = {"steps_per_sec": (examples / self.batch_size) / seconds,
               "tokens_per_sec": examples * self.tokens_per_example / seconds}
        if self.flops_per_example:
            flops = examples * self.flops_per_example / seconds
            out["model_flops_per_sec"] = flops
            if self._peak is None:
                self._peak = peak_flops_per_device(self._peak_override) or 0.0
            if self._peak:
                out["mfu"] = flops / (self._peak * jax.device_count())
        return out

    def write(self, split: str, step: int, metrics: Mapping[str, float]) -> None:
        if not self.is_chief:
            return
        row = {"step": int(step), "split": split, "time": time.time(),
               **{k: float(v) for k, v in metrics.items()}}
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.write(split, step, metrics)
        self._console(split, step, metrics)

    def _console(self, split: str, step: int, m: Mapping[str, float]) -> None:
        if split == "train":
            parts = [f"step {step}/{self.total_steps}", f"loss {m.get('loss', float('nan')):.4f}"]
            if "tokens_per_sec" in m:
                parts.append(f"{m['tokens_per_sec']:,.0f} tok/s")
            if "mfu" in m:
                parts.append(f"MFU {100 * m['mfu']:.1f}%")
            if "learning_rate" in m:
                parts.append(f"lr {m['learning_rate']:.2e}")
            line = " | ".join(parts)
            if self.tty:
                self.stream.write("\r\033[K" + line)
            else:
                self.stream.write(line + "\n")
        else:
            line = f"[{split} @ step {step}] " + "  ".join(
                f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, (int, float)))
            self.stream.write(("\n" if self.tty else "") + line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.is_chief:
            self.stream.write(("\n" if self.tty else "") + text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty and self.is_chief:
            self.stream.write("\n")
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _ends_mid_line(path: str) -> bool:
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def read_jsonl(path: str, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl (optionally one split): one row per (split, step), the last
    written (a resumed run rewrites the steps after its checkpoint), in step order (at one
    step, in the order first written: train before eval).

    A line that is not JSON (cut by a crash or a full disk) is skipped with a warning."""
    rows: dict[tuple, dict[str, Any]] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping a line that is not JSON (cut off by a crash?)", path, number)
                continue
            if split is None or row.get("split") == split:
                rows[(row.get("split"), row.get("step"))] = row
    return sorted(rows.values(), key=lambda r: (r.get("step") if isinstance(r.get("step"), int) else -1))
