"""`t5x-like compile` (cli/compile.py) and the JAX_PLATFORMS choice of cli/jax_platforms.py."""
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("libtpu")  # the TPU compiler; a test dependency (setup.py's test extra)

from t5x_like.cli import compile as compile_cli  # noqa: E402
from t5x_like.cli import jax_platforms  # noqa: E402
from t5x_like.training import aot  # noqa: E402
from tests import REPO_ROOT  # noqa: E402

# A model whose replicated parameters alone (with Adafactor and gradients) exceed v5e's 16 GiB.
TOO_BIG = ["--gin.D_MODEL=8192", "--gin.D_FF=8192", "--gin.NUM_HEADS=64", "--gin.HEAD_DIM=128",
           "--gin.VOCAB_SIZE=262144", "--gin.MESH_SHAPE=(4,1,1)", "--gin.BATCH_SIZE=8",
           "--gin.TASK_FEATURE_LENGTHS={'targets': 32}"]


def test_a_model_too_big_for_the_slice_is_one_line_naming_shortfall_and_knobs(capsys):
    rc = compile_cli.main(["--topology=v5e-4", "--gin_file=gin_configs/models/decoder_only/tiny.gin",
                           "--gin_file=gin_configs/runs/pretrain.gin", "--skip_eval", *TOO_BIG])
    err = capsys.readouterr().err
    assert rc == compile_cli.EXIT_DOES_NOT_FIT == 5
    assert err.count("\n") == 1 and "does not fit on v5e-4" in err and "GiB available" in err, err
    for knob in ("MESH_SHAPE", "remat_policy", "BATCH_SIZE", "NUM_MICROBATCHES"):
        assert knob in err


@pytest.mark.slow  # a full compile; the refusal above stays in the fast loop
def test_cli_prints_the_per_chip_table_of_a_fitting_run(capsys):
    rc = compile_cli.main(["--topology=v5e-4", "--gin_file=gin_configs/models/decoder_only/tiny.gin",
                           "--gin_file=gin_configs/runs/pretrain.gin", "--gin.BATCH_SIZE=8",
                           "--gin.TASK_FEATURE_LENGTHS={'targets': 64}", "--skip_eval", "--step_time=0.01"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "v5e-4 (v5e:2x2, 4 chips" in out and "per chip:" in out and "of 16.00 GiB HBM" in out
    assert "MFU at a measured 0.01 s" in out


@pytest.mark.parametrize("args, message", [
    (["--topology=v9-8"], "unknown TPU slice"),
    (["--topology=v5e-4", "--gin.MESH_SHAPE=(3,1,1)"], "devices"),
    (["--topology=v5e-4", "--gin.BATCH_SIZE=6"], "batch_size 6"),
    ([], "--topology is required"),
    (["--topology=v5e-4", "--stack_seeds=3"], "3 seeds and the mesh's data axis of 4 (mesh (4, 1, 1)) share no factor"),
    (["--topology=v5e-4", "--stack_seeds=0"], "stack_seeds=0"),
])
def test_cli_bad_arguments_are_one_line_exit_2(capsys, args, message):
    rc = compile_cli.main(["--gin_file=gin_configs/models/decoder_only/tiny.gin",
                           "--gin_file=gin_configs/runs/pretrain.gin", *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err


def test_no_libtpu_warnings_on_a_cpu_host_without_jax_platforms():
    """cli/jax_platforms: with JAX_PLATFORMS unset and no TPU attached, jax starts quietly on the CPU."""
    code = ("from t5x_like.cli.jax_platforms import choose_jax_platforms; print(choose_jax_platforms()); "
            "import jax; print(jax.devices()[0].platform)")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                            env={**env, "PYTHONPATH": REPO_ROOT}, timeout=120)
    if aot.host_has_tpu():
        pytest.skip("this host has TPU chips")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() in (["cpu", "cpu"], ["cuda,cpu", "gpu"])
    assert "TPU_ACCELERATOR_TYPE" not in result.stderr and "TPU_WORKER_HOSTNAMES" not in result.stderr


def test_a_jax_platforms_the_user_set_is_kept(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert jax_platforms.choose_jax_platforms() is None and os.environ["JAX_PLATFORMS"] == "cpu"
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(jax_platforms, "tpu_chips_attached", lambda: True)
    assert jax_platforms.choose_jax_platforms() is None and "JAX_PLATFORMS" not in os.environ


def test_the_dispatcher_chooses_platforms_before_running_a_command(monkeypatch, capsys):
    from t5x_like.cli import main as cli_main
    calls = []
    monkeypatch.setattr(jax_platforms, "choose_jax_platforms", lambda: calls.append(True))
    with pytest.raises(SystemExit):
        cli_main.main(["size", "--help"])
    assert calls == [True] and "t5x-like size" in capsys.readouterr().out


@pytest.mark.parametrize("topology,mesh", [
    ("v5e-1", "(1,1,1)"),
    pytest.param("v5e-4", "(4,1,1)", marks=pytest.mark.slow),  # its mesh advice compiles in full: ~100 s
])
def test_every_fix_a_refusal_suggests_is_one_the_command_accepts(capsys, topology, mesh):
    """Apply each --gin.X=V the exit-5 line suggests: the command compiles or refuses again for memory
    (exit 0 or 5), never rejects the suggestion itself (exit 2). A one-chip slice gets no mesh advice."""
    args = ["--gin_file=gin_configs/models/decoder_only/tiny.gin", "--gin_file=gin_configs/runs/pretrain.gin",
            "--skip_eval", *TOO_BIG, f"--gin.MESH_SHAPE={mesh}"]
    assert compile_cli.main([f"--topology={topology}", *args]) == compile_cli.EXIT_DOES_NOT_FIT
    err = capsys.readouterr().err
    suggested = re.findall(r"--gin\.(\S+?)(?:;|$)", err.strip())
    assert suggested, err
    assert (topology == "v5e-1") == (not any(s.startswith("MESH_SHAPE") for s in suggested)), err
    for binding in suggested:
        rc = compile_cli.main([f"--topology={topology}", *args, f"--gin.{binding}"])
        assert rc in (0, compile_cli.EXIT_DOES_NOT_FIT), (binding, capsys.readouterr().err)


@pytest.mark.slow  # two TPU compiles (about 12 s each here)
@pytest.mark.parametrize("model_file, roles", [
    ("gin_configs/models/prefix_lm/tiny.gin", {"decoder self": "flash_bias"}),
    ("gin_configs/models/encoder_decoder/tiny.gin",
     {"encoder self": "flash_bias", "decoder self": "flash_bias", "cross": "splash"}),
])
def test_prefix_lm_and_t5_bias_compile_for_tpu_on_the_fused_kernels_without_fallback(capsys, model_file, roles):
    """T5's relative bias (architecture.gin) and a packed prefix-LM: the printed kernel table names
    the Pallas kernel of every attention role and no fallback."""
    rc = compile_cli.main(["--topology=v5e:2x2", f"--gin_file={model_file}", "--gin_file=gin_configs/runs/pretrain.gin",
                           "--gin.BATCH_SIZE=8", "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 128}",
                           "--gin.TransformerConfig.attention_kernel='accelerated'",
                           "--gin.TransformerConfig.dtype='bfloat16'", "--skip_eval"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = dict(re.split(r"\s{2,}", line.strip().removeprefix("attention, "), maxsplit=1)
                for line in out.splitlines() if line.strip().startswith("attention, "))
    assert rows == {role: f"accelerated: {kernel}" for role, kernel in roles.items()}, out
    assert "fallback" not in out
