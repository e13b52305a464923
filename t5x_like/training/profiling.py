"""Profiling a run: a jax.profiler trace of a window of steps, device memory profiles, and the
names the loop's phases carry in a trace.

Owns: `StepProfiler` (starts the trace before step START and stops it after step END, both
counted as the loop counts steps, 1 = the first step a fresh run takes; writes a device memory
profile after one step) and `phase` (a `jax.profiler.TraceAnnotation` around a host phase of the
loop: data, evaluate, checkpoint; free when no trace is running). The train step itself is a
`jax.profiler.StepTraceAnnotation` (`train_step_annotation`), which is what TensorBoard's profile plugin groups
its step-time breakdown by.

Files, under MODEL_DIR/profile (`profile_dir`):

    plugins/profile/<time>/<host>.xplane.pb       the trace: `tensorboard --logdir MODEL_DIR/profile`
                                                  (profile plugin), or xprof
    plugins/profile/<time>/<host>.trace.json.gz   the same for https://ui.perfetto.dev
    memory_step<N>[_process<P>].prof              pprof device memory profile: `pprof -http=: FILE`

Does not own: when a step runs (trainer.train_loop) or which steps to trace (TrainConfig's
`profile_steps` and `memory_profile_step`, checked there).
"""
from __future__ import annotations

import contextlib
import logging
import os

import jax

log = logging.getLogger(__name__)

PROFILE_SUBDIR = "profile"


def profile_dir(model_dir: str) -> str:
    return os.path.join(model_dir, PROFILE_SUBDIR)


def phase(name: str) -> contextlib.AbstractContextManager:
    """A named span in the trace (data loading, evaluation, checkpointing)."""
    return jax.profiler.TraceAnnotation(name)


def train_step_annotation(number: int) -> contextlib.AbstractContextManager:
    """The train step `number`, as the profile plugin's step-time view counts steps."""
    return jax.profiler.StepTraceAnnotation("train", step_num=number)


class StepProfiler:
    """Traces steps START..END (inclusive) and saves a device memory profile after one step.

    The loop calls `before_step(n)` before step n and `after_step(n, outputs)` after it (with the
    step's outputs, which are waited for before the trace stops, so that the traced steps' device
    work is in it), and `close()` at the end, which stops a trace the run left running (a run that
    ended or stopped inside the window). A resumed run that starts inside the window traces the
    rest of it; one that starts after it traces nothing.
    """

    def __init__(self, directory: str, steps: tuple[int, int] | None = None, memory_step: int | None = None):
        self.directory = directory
        self.steps = tuple(steps) if steps is not None else None
        self.memory_step = memory_step
        self.tracing = False

    def before_step(self, number: int) -> None:
        if self.steps is not None and not self.tracing and self.steps[0] <= number <= self.steps[1]:
            os.makedirs(self.directory, exist_ok=True)
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.tracing = True
            log.info("profiling steps %d-%d into %s", number, self.steps[1], self.directory)

    def after_step(self, number: int, outputs) -> None:
        if self.tracing and number >= self.steps[1]:
            self._stop(outputs)
        if self.memory_step is not None and number == self.memory_step:
            jax.block_until_ready(outputs)
            os.makedirs(self.directory, exist_ok=True)
            suffix = f"_process{jax.process_index()}" if jax.process_count() > 1 else ""
            path = os.path.join(self.directory, f"memory_step{number}{suffix}.prof")
            jax.profiler.save_device_memory_profile(path)
            log.info("device memory profile of step %d: %s", number, path)

    def close(self) -> None:
        if self.tracing:
            self._stop(None)

    def _stop(self, outputs) -> None:
        if outputs is not None:
            jax.block_until_ready(outputs)
        jax.profiler.stop_trace()
        self.tracing = False
        log.info("profile written under %s", self.directory)
