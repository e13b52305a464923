"""Training across devices and processes, and surviving being killed.

Each test runs training in subprocesses (fake CPU devices need XLA flags
before JAX starts; preemption needs a process to kill). All runs share one
persistent compilation cache, so identical programs compile once.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from t5x_like.training.metrics_log import read_jsonl
from tests import REPO_ROOT as REPO

# A tiny run built in Python; `steps` train steps, losses logged every step.
SETUP = textwrap.dedent("""
    import json, os, sys
    import jax
    from t5x_like.model import model as models
    from t5x_like.training import optimizers
    from t5x_like.training import partitioning
    from t5x_like.training import run as train
    from t5x_like.model.config import TransformerConfig
    from t5x_like.training.metrics_log import read_jsonl
    from t5x_like.data.sources import synthetic_batches

    def tiny_run(model_dir, steps=3, mesh_shape=(-1, 1, 1), **overrides):
        model = models.Model(TransformerConfig(
            layout="decoder_only", vocab_size=128, d_model=32, num_heads=4, head_dim=8, d_ff=64,
            num_decoder_layers=2, dropout_rate=0.1))
        base = dict(model=model, model_dir=model_dir, mixture_or_task_name="synthetic",
                    task_feature_lengths={"targets": 32}, train_steps=steps, batch_size=8,
                    num_microbatches=2, log_period=1, checkpoint_period=100, eval_split=None,
                    tensorboard=False, mesh_shape=mesh_shape, async_checkpointing=False,
                    optimizer=optimizers.adamw(learning_rate=1e-2), peak_flops_per_device=1e12)
        return train.TrainConfig(**{**base, **overrides})

    def losses(model_dir):
        return [row["loss"] for row in read_jsonl(os.path.join(model_dir, "metrics.jsonl"), "train")]
""")


def env(cache_dir, devices: int = 1, **extra) -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}",  # + conftest's
             JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    e.update(extra)
    return e


def run_python(code: str, environ: dict, timeout: float = 300) -> str:
    proc = subprocess.run([sys.executable, "-c", SETUP + textwrap.dedent(code)], env=environ, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "jax_cache"


@pytest.mark.slow
def test_losses_match_on_1_and_8_devices_under_data_fsdp_and_tensor_sharding(tmp_path, cache_dir):
    """With dropout on and 2 microbatches: same losses (float tolerance) on
    one device and on 8 under pure data, pure FSDP and data x tensor
    parallelism; a checkpoint written on one mesh restores onto another."""
    one = run_python(f"""
        config = tiny_run(os.path.join({str(tmp_path)!r}, "one"), mesh_shape=(1, 1, 1))
        train.train(config)
        print("RESULT", json.dumps(losses(config.model_dir)))
    """, env(cache_dir, devices=1))
    out = run_python(f"""
        from t5x_like.training import checkpoints
        meshes = {{"data": (8, 1, 1), "fsdp": (1, 8, 1), "tensor": (2, 1, 4)}}
        results = {{}}
        for name, shape in meshes.items():
            config = tiny_run(os.path.join({str(tmp_path)!r}, name), mesh_shape=shape)
            train.train(config)
            results[name] = losses(config.model_dir)
        # restore the data-parallel run's checkpoint onto the tensor-parallel mesh
        config = tiny_run("unused", mesh_shape=(2, 1, 4))
        trainer = train.build_trainer(config, partitioning.make_mesh((2, 1, 4)))
        params = checkpoints.load_params(os.path.join({str(tmp_path)!r}, "data"), trainer.abstract_params).params
        specs = sorted({{str(x.sharding.spec) for x in jax.tree.leaves(params)}})
        results["restored_specs"] = specs
        print("RESULT", json.dumps(results))
    """, env(cache_dir, devices=8))
    results = json.loads(out.split("RESULT", 1)[1])
    reference = json.loads(one.split("RESULT", 1)[1])
    assert len(reference) == 3
    assert any("tensor" in s for s in results.pop("restored_specs"))
    for name, got in results.items():
        np.testing.assert_allclose(got, reference, rtol=2e-5, err_msg=name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_two_devices_each_match_one_device(tmp_path, cache_dir):
    """jax.distributed on localhost (gloo): each process feeds its half of the
    global batch; losses equal a one-process, one-device run."""
    port = free_port()
    code = f"""
        partitioning.initialize_distributed("127.0.0.1:{port}", 2, int(sys.argv[1]))
        assert jax.device_count() == 4 and jax.local_device_count() == 2
        train.train(tiny_run({str(tmp_path / 'multi')!r}, mesh_shape=(2, 2, 1)))
        print("RESULT", json.dumps(losses({str(tmp_path / 'multi')!r})) if jax.process_index() == 0 else "")
    """
    procs = [subprocess.Popen([sys.executable, "-c", SETUP + textwrap.dedent(code), str(i)],
                              env=env(cache_dir, devices=2), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        single = run_python(f"""
            train.train(tiny_run({str(tmp_path / 'single')!r}, mesh_shape=(1, 1, 1)))
            print("RESULT", json.dumps(losses({str(tmp_path / 'single')!r})))
        """, env(cache_dir, devices=1))
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:  # a hung pair must not outlive the test (it would hold its cores for the rest of the suite)
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    multi = json.loads(outputs[0][0].split("RESULT", 1)[1])
    np.testing.assert_allclose(multi, json.loads(single.split("RESULT", 1)[1]), rtol=2e-5)


# -- preemption -------------------------------------------------------------------------
STEPS = 14
PREEMPTIBLE = f"""
    import time
    def slow_batches(request, model):  # ~0.15 s per step, so signals land mid-run
        for batch in synthetic_batches(request, model):
            time.sleep(0.15)
            yield batch
    config = tiny_run(sys.argv[1], steps={STEPS}, num_microbatches=1, batch_size=4, checkpoint_period=3,
                      async_checkpointing=True, dataset_fn=slow_batches)
    result = train.train(config)
    sys.exit(128 + result.signal_number if result.stopped_by_signal else 0)
"""


def start_run(model_dir, cache_dir) -> subprocess.Popen:
    code = SETUP + textwrap.dedent(PREEMPTIBLE)
    return subprocess.Popen([sys.executable, "-c", code, str(model_dir)], env=env(cache_dir), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_step(model_dir, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    path = os.path.join(model_dir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"run ended early: {proc.stderr.read()[-3000:]}"
        if os.path.exists(path) and any(r["step"] >= step for r in read_jsonl(path, "train")):
            return
        time.sleep(0.02)
    raise TimeoutError(f"step {step} not reached")


def losses_by_step(model_dir) -> dict[int, list[float]]:
    """Every logged training loss per step, the rows a resume rewrote included (read_jsonl keeps the last)."""
    out: dict[int, list[float]] = {}
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        if row["split"] == "train":
            out.setdefault(row["step"], []).append(row["loss"])
    return out


@pytest.mark.slow  # the fast loop checks resume in-process (tests/training/test_data_resume.py)
def test_sigkill_then_restart_reproduces_the_uninterrupted_losses_bitwise(tmp_path, cache_dir):
    """Killed at a random step (mid-training, maybe mid async save), the
    restarted run resumes from the last good checkpoint, replays the same
    batches and dropout masks, and every logged loss equals the uninterrupted
    run's exactly. A SIGTERM'd run saves at the step it stopped, exits 143."""
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference = start_run(reference_dir, cache_dir)
    victim = start_run(killed_dir, cache_dir)
    kill_at = random.Random().randint(4, 8)
    wait_for_step(killed_dir, kill_at, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    resumed = start_run(killed_dir, cache_dir)  # restart, then stop it politely
    wait_for_step(killed_dir, kill_at + 2, resumed)
    resumed.send_signal(signal.SIGTERM)
    assert resumed.wait(timeout=120) == 143, resumed.stderr.read()[-3000:]
    last_logged = max(losses_by_step(killed_dir))
    assert str(last_logged) in os.listdir(killed_dir / "checkpoints"), "SIGTERM did not save"
    final = start_run(killed_dir, cache_dir)
    assert final.wait(timeout=240) == 0, final.stderr.read()[-3000:]
    assert reference.wait(timeout=240) == 0, reference.stderr.read()[-3000:]
    expected = {s: v[0] for s, v in losses_by_step(reference_dir).items()}
    got = losses_by_step(killed_dir)
    assert sorted(got) == list(range(1, STEPS + 1)) == sorted(expected)
    for step, values in got.items():  # steps replayed after the kill appear twice
        assert all(v == expected[step] for v in values), (step, values, expected[step])


def test_ctrl_c_saves_like_sigterm_and_exits_130(tmp_path, cache_dir):
    run = start_run(tmp_path / "run", cache_dir)
    wait_for_step(tmp_path / "run", 4, run)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=120) == 130, run.stderr.read()[-3000:]
    last_logged = max(losses_by_step(tmp_path / "run"))
    assert last_logged < STEPS and str(last_logged) in os.listdir(tmp_path / "run" / "checkpoints")
    assert "Traceback" not in run.stderr.read()
