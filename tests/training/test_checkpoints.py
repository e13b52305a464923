"""Checkpoints under damage: a changed byte is caught, all-damaged refuses to start over
silently, a full disk stops at the first failed save with one line."""
import glob
import os
import shutil
import subprocess
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.training import checkpoints, partitioning
from t5x_like.training import run as train
from t5x_like.training.metrics_log import read_jsonl
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
    restored = checkpoints.restore_params(str(tmp_path), jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree))
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
    restored = checkpoints.restore_params(str(tmp_path), as_bf16)
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
        reader = checkpoints.Checkpointer(str(tmp_path / name), read_only=True)
        assert reader._manager.all_steps() == list(steps)
        params = checkpoints.restore_params(str(tmp_path / name), jax.tree.map(jnp.zeros_like, tree))
        np.testing.assert_array_equal(params["w"], tree["w"])
