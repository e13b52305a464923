"""Running a grid's cells several at a time, in threads of one process (`run_jobs`).

Owns: the thread pool; the order (a job starts only after the job it names in `after` has
finished); the stop request the jobs share (a SIGTERM or SIGINT, or a failing job, asks every
running job to save and stop, and jobs not yet started never start: `GridStopped`); and the
output, where each whole line a job prints carries its label (`LabelledLines`). Does not own
what a job does: grid.run_cell, handed over as a function of the shared StopRequested.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import signal
import sys
import threading
import time
from collections.abc import Callable

from t5x_like.training.trainer import StopRequested


class GridStopped(KeyboardInterrupt):
    """A SIGTERM or SIGINT stopped the grid; every running cell saved a checkpoint first, and
    the same command resumes. `signal_number`: the signal (None if a failing cell stopped it)."""

    def __init__(self, message: str, signal_number: int | None):
        super().__init__(message)
        self.signal_number = signal_number


@dataclasses.dataclass(frozen=True)
class Job:
    label: str                          # prefixes every line the job prints
    heading: str                        # printed when it starts and when it finishes
    run: Callable[[StopRequested], dict]
    after: str | None = None            # the label of a job that must finish first


def run_jobs(jobs: list[Job], workers: int) -> dict[str, dict]:
    """Runs `jobs` on `workers` threads, each after the job it names; returns {label: result}.
    The first error is raised once every running job has stopped (a stop raises GridStopped).
    A job's `after` must name a job earlier in the list (ValueError otherwise)."""
    labels = [job.label for job in jobs]
    for index, job in enumerate(jobs):
        if job.after is not None and job.after not in labels[:index]:
            raise ValueError(f"job {job.label} is to start after {job.after!r}, which is not a job before it")
    stop = StopRequested(signals=(signal.SIGTERM, signal.SIGINT))
    stdout = LabelledLines(sys.stdout)
    futures: dict[str, concurrent.futures.Future] = {}

    def run(job: Job, before: concurrent.futures.Future | None) -> dict:
        if before is not None:
            before.result()  # submitted earlier, so running or done, never queued behind this one
        if stop.requested:
            raise GridStopped(f"{job.label} not started: the grid is stopping", stop.signal_number)
        stdout.label(job.label)
        print(f"{job.heading} started", flush=True)
        start = time.time()
        try:
            result = job.run(stop)
        except BaseException:
            stop.requested = True
            raise
        print(f"{job.heading} finished in {time.time() - start:.0f} s", flush=True)
        return result

    try:
        with contextlib.redirect_stdout(stdout), \
                concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="cell") as pool:
            for job in jobs:
                futures[job.label] = pool.submit(run, job, futures.get(job.after) if job.after else None)
            concurrent.futures.wait(futures.values())
    finally:
        stop.restore()
    errors = [f.exception() for f in futures.values() if f.exception() is not None]
    first = next((e for e in errors if not isinstance(e, KeyboardInterrupt)), errors[0] if errors else None)
    if first is not None:
        raise first
    return {label: future.result() for label, future in futures.items()}


class LabelledLines(io.TextIOBase):
    """A text stream for jobs printing from several threads: each whole line goes out at once,
    prefixed with the label of the job the printing thread runs (set by `label`)."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._local = threading.local()
        self._lock = threading.Lock()

    def label(self, text: str) -> None:
        self._local.label = text

    def write(self, text: str) -> int:
        pending = getattr(self._local, "pending", "") + text
        *lines, self._local.pending = pending.split("\n")
        if lines:
            prefix = f"[{self._local.label}] " if getattr(self._local, "label", None) else ""
            with self._lock:
                self._stream.write("".join(f"{prefix}{line}\n" for line in lines))
                self._stream.flush()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
