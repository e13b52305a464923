"""The profiler switch: a trace of exactly the configured steps, with the loop's phases named in
it, and a device memory profile after one step."""
import glob
import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from t5x_like.training import profiling
from t5x_like.training import run as train
from tests.training_fixtures import tiny_run


def traced_names(directory) -> set[str]:
    """Event names of the one trace under `directory` (the Chrome-format JSON beside TensorBoard's xplane.pb)."""
    [run] = glob.glob(str(directory / "plugins" / "profile" / "*"))
    assert glob.glob(f"{run}/*.xplane.pb") and glob.glob(f"{run}/perfetto_trace.json.gz")
    [chrome] = [p for p in glob.glob(f"{run}/*.trace.json.gz") if not p.endswith("perfetto_trace.json.gz")]
    with gzip.open(chrome) as f:
        return {event.get("name", "") for event in json.load(f)["traceEvents"]}


def test_the_trace_holds_the_window_s_steps_and_only_those(tmp_path):
    profiler = profiling.StepProfiler(str(tmp_path), steps=(2, 3), memory_step=2)
    square = jax.jit(lambda x: x @ x)
    for number in range(1, 6):
        profiler.before_step(number)
        with profiling.phase(f"data_{number}"):
            x = jnp.full((32, 32), float(number))
        with profiling.train_step_annotation(number):
            out = square(x)
        profiler.after_step(number, out)
    profiler.close()
    names = traced_names(tmp_path)
    assert {"data_2", "data_3", "train"} <= names and not {"data_1", "data_4", "data_5"} & names
    assert (tmp_path / "memory_step2.prof").stat().st_size > 0
    assert not profiler.tracing


def test_a_run_that_ends_inside_the_window_still_writes_its_trace(tmp_path):
    profiler = profiling.StepProfiler(str(tmp_path), steps=(1, 10))
    profiler.before_step(1)
    with profiling.phase("only_step"):
        jax.block_until_ready(jnp.ones(4) + 1)
    profiler.after_step(1, None)
    profiler.close()
    assert "only_step" in traced_names(tmp_path)


@pytest.mark.slow  # a whole run (compiles a train step)
def test_profile_steps_trace_a_run_s_train_step_data_and_checkpointing(tmp_path):
    result = train.train(tiny_run(tmp_path / "run", train_steps=3, profile_steps=(2, 3), memory_profile_step=2))
    assert result.step == 3
    profile = tmp_path / "run" / "profile"
    assert {"train", "data", "checkpoint"} <= traced_names(profile)
    assert (profile / "memory_step2.prof").stat().st_size > 0
