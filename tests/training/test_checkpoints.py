"""Checkpoints under damage: a changed byte is caught, all-damaged refuses to start over
silently, a full disk stops at the first failed save with one line; readers beside a writer;
collective checksums that cannot deadlock."""
import glob
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.training import checkpoints, partitioning
from t5x_like.training import run as train
from t5x_like.training.metrics_log import read_jsonl
from t5x_like.training.checkpoints import reading
from tests import REPO_ROOT
from tests.training_fixtures import tiny_run

pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")  # runs here recompile the same programs


def overwrite_middle_bytes(step_dir, count: int = 8) -> str:
    """Overwrites `count` bytes in the middle of the largest params data file, as a bad disk would."""
    files = [p for p in glob.glob(os.path.join(step_dir, "params", "**", "*"), recursive=True)
             if os.path.isfile(p) and "/d/" in p]
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(255 - b for b in f.read(count)))  # different from what was there
    return path


def test_checksums_change_with_any_single_bit():
    tree = {"w": jnp.arange(1000, dtype=jnp.float32) / 7, "count": jnp.array(3, jnp.int32),
            "half": jnp.ones((4, 4), jnp.bfloat16), "mask": jnp.array([True, False])}
    base = checkpoints.checksums(tree)
    flipped = np.asarray(tree["w"]).view(np.uint32).copy()
    flipped[517] ^= 1 << 9
    changed = checkpoints.checksums({**tree, "w": jnp.asarray(flipped.view(np.float32))})
    assert changed[-1] != base[-1] and changed[:-1] == base[:-1]  # leaves in key order: "w" is last
    assert checkpoints.checksums(tree) == base  # deterministic


def test_a_changed_byte_in_the_newest_checkpoint_is_caught_and_the_previous_step_used(tmp_path, caplog):
    config = tiny_run(tmp_path / "run", train_steps=6)
    train.train(config)
    overwrite_middle_bytes(tmp_path / "run" / "checkpoints" / "6")
    trainer = train.build_trainer(config, partitioning.make_mesh((1, 1, 1)))
    checkpointer = train.build_checkpointer(config)
    start = train.restore_or_init_state(trainer, checkpointer)
    state, consumed = start.state, start.batches_consumed
    checkpointer.close()
    assert int(state.step) == 4 and consumed == 4
    assert "checksum mismatch in params of step 6" in caplog.text


def test_every_checkpoint_damaged_refuses_to_start_over_unless_asked(tmp_path):
    train.train(tiny_run(tmp_path / "run", train_steps=4))
    for step in ("2", "4"):
        overwrite_middle_bytes(tmp_path / "run" / "checkpoints" / step)
    with pytest.raises(checkpoints.CheckpointsDamagedError,
                       match=r"steps 2, 4.*start_over_if_checkpoints_damaged=True"):
        train.train(tiny_run(tmp_path / "run", train_steps=4))
    result = train.train(tiny_run(tmp_path / "run", train_steps=4, start_over_if_checkpoints_damaged=True))
    assert result.step == 4 and result.train_metrics


@pytest.fixture
def small_disk(tmp_path):
    """A 640 KiB tmpfs: room for about one checkpoint of the tiny model (root only)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=640k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_stops_at_the_first_failed_save_with_one_line(small_disk):
    config = tiny_run(small_disk / "run", train_steps=30, checkpoint_period=2, keep_checkpoints=None,
                      async_checkpointing=True)
    with pytest.raises(checkpoints.CheckpointSaveError) as raised:
        train.train(config)
    message = str(raised.value)
    assert "\n" not in message and "No space left on device" in message and "MiB free" in message
    newest_started = int(message.split("newest save started: step ")[1].split(")")[0])
    logged = read_jsonl(str(small_disk / "run" / "metrics.jsonl"), "train")
    assert logged[-1]["step"] <= newest_started + 2, "training went on after the failed save"
    assert logged[-1]["step"] < 30


def test_checksums_of_a_restored_tree_match_the_saved_ones(tmp_path):
    tree = {"w": jax.random.normal(jax.random.key(0), (64, 32)), "b": jnp.zeros((32,))}
    saver = checkpoints.Checkpointer(str(tmp_path), async_save=False)
    saver.save(1, tree, tree, {})
    saver.close()
    restored = checkpoints.load_params(str(tmp_path), jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)).params
    assert checkpoints.checksums(restored) == checkpoints.checksums(tree)


def test_a_checkpoint_of_another_model_is_refused_by_name_and_never_moved_aside(tmp_path):
    from tests.training_fixtures import tiny_model
    train.train(tiny_run(tmp_path / "run", train_steps=2))
    wider = tiny_run(tmp_path / "run", train_steps=4, model=tiny_model(d_model=48))
    with pytest.raises(checkpoints.CheckpointMismatchError, match=r"does not match the model config.*model \(48,"):
        train.train(wider)
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2"]


def test_reading_params_cleans_up_nothing_and_verifies_through_a_dtype_cast(tmp_path):
    tree = {"w": jax.random.normal(jax.random.key(0), (8, 4))}
    saver = checkpoints.Checkpointer(str(tmp_path), async_save=False)
    saver.save(1, tree, tree, {})
    saver.close()
    (tmp_path / "2.orbax-checkpoint-tmp-7").mkdir()  # a save another run is writing right now
    as_bf16 = {"w": jax.ShapeDtypeStruct((8, 4), jnp.bfloat16)}
    restored = checkpoints.load_params(str(tmp_path), as_bf16).params
    assert restored["w"].dtype == jnp.bfloat16
    assert (tmp_path / "2.orbax-checkpoint-tmp-7").exists()


def test_checkpointers_in_two_threads_saving_the_same_steps_at_once_all_succeed(tmp_path):
    # A grid's cells train in threads of one process and often save the same step at the
    # same moment. Without one save at a time per process, orbax's process-global operation
    # id mixed the two saves' temporary directories up at the first step ("File exists").
    tree = {"w": jnp.arange(64.0).reshape(8, 8), "b": jnp.ones((8,))}
    steps = (1, 2, 3, 4)
    barrier = threading.Barrier(2)
    failures = []

    def save_all(name: str) -> None:
        ckpt = checkpoints.Checkpointer(str(tmp_path / name), keep=None)
        try:
            for step in steps:
                barrier.wait()
                ckpt.save(step, tree, {"m": tree["w"]}, {"seed": 0})
                ckpt.check_for_errors()
            ckpt.close()
        except Exception as e:  # noqa: BLE001  (reported below, with the other thread's)
            failures.append(f"{name}: {type(e).__name__}: {e}")
            barrier.abort()

    threads = [threading.Thread(target=save_all, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    for name in ("a", "b"):
        assert checkpoints.resolve_checkpoint(str(tmp_path / name)).steps() == list(steps)
        params = checkpoints.load_params(str(tmp_path / name), jax.tree.map(jnp.zeros_like, tree)).params
        np.testing.assert_array_equal(params["w"], tree["w"])


def test_a_step_deleted_by_the_writer_while_a_reader_lists_it_is_skipped_without_a_warning(
        tmp_path, monkeypatch, caplog):
    tree = {"w": jnp.arange(12.0).reshape(3, 4)}
    saver = checkpoints.Checkpointer(str(tmp_path), keep=None, async_save=False)
    saver.save(2, tree, tree, {})
    saver.save(4, {"w": tree["w"] + 1}, tree, {})
    saver.close()
    read_meta = reading.read_meta

    def deleted_by_keep_n_first(step_dir):  # the writer's keep-N policy wins the race for step 4
        if step_dir.endswith("/4"):
            shutil.rmtree(step_dir)
        return read_meta(step_dir)
    monkeypatch.setattr(reading, "read_meta", deleted_by_keep_n_first)
    with caplog.at_level(logging.WARNING):
        loaded = checkpoints.load_params(str(tmp_path), jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree))
    assert loaded.step == 2
    np.testing.assert_array_equal(loaded.params["w"], tree["w"])
    assert not caplog.records, caplog.text


def test_evaluating_beside_a_save_in_flight_leaves_its_temporary_directory_alone(tmp_path):
    config = tiny_run(tmp_path / "run", train_steps=2)
    train.train(config)
    in_flight = tmp_path / "run" / "checkpoints" / "4.orbax-checkpoint-tmp-1796000000"
    (in_flight / "params").mkdir(parents=True)  # what a training run saving step 4 right now has written
    metrics = train.eval_checkpoint_loss(config)
    assert metrics["loss"] > 0
    assert (in_flight / "params").is_dir()


@pytest.mark.slow  # a subprocess with 8 devices on one CPU: about 20 s
def test_saving_and_restoring_on_8_devices_with_one_cpu_thread_does_not_deadlock(tmp_path):
    """A checksum of an array sharded over 8 devices is a collective program; with several in
    flight and fewer CPU threads than devices, their parts interleaved and XLA:CPU's rendezvous
    aborted ("only 4 of 8 threads arrived"). One CPU makes that certain without the fix."""
    code = textwrap.dedent(f"""
        import os
        os.sched_setaffinity(0, {{sorted(os.sched_getaffinity(0))[0]}})
        import jax, jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec
        from t5x_like.training import checkpoints
        sharding = NamedSharding(jax.make_mesh((8,), ("fsdp",)), PartitionSpec("fsdp"))
        tree = {{f"w{{i}}": jax.device_put(jnp.arange(8.0 * (16 + i)).reshape(8, 16 + i), sharding)
                 for i in range(60)}}
        saver = checkpoints.Checkpointer({str(tmp_path)!r}, async_save=False)
        saver.save(1, tree, tree, {{}})
        saver.close()
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
        print("restored", len(checkpoints.load_params({str(tmp_path)!r}, abstract).params))
    """)
    environ = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8",
                   PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], env=environ, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0 and "restored 60" in proc.stdout, proc.stderr[-3000:]
