"""Launch scripts parse, and their --dry-run prints the command they would run."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests import REPO_ROOT as REPO

SCRIPTS = ("launch/local.sh", "launch/tpu_pod.sh", "launch/slurm_gpu.sbatch")
GIN = ["--gin_file=gin_configs/models/decoder_only/tiny.gin", "--gin.MODEL_DIR=/tmp/run"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_launch_script_is_valid_bash(script):
    subprocess.run(["bash", "-n", os.path.join(REPO, script)], check=True)


@pytest.mark.parametrize("script, expected", [
    ("launch/local.sh", "-m t5x_like.train --cpu_devices=8 --gin_file="),
    ("launch/tpu_pod.sh", "gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --worker=all"),
    ("launch/slurm_gpu.sbatch", "srun --kill-on-bad-exit=1"),
])
def test_dry_run_prints_the_training_command_and_runs_nothing(script, expected):
    env = dict(os.environ, TPU_NAME="my-tpu", ZONE="us-central2-b", PYTHON="python3")
    extra = ["--cpu-devices=8"] if script.endswith("local.sh") else []
    out = subprocess.run(["bash", os.path.join(REPO, script), "--dry-run", *extra, *GIN], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert expected in out and "t5x_like.train" in out and "MODEL_DIR" in out
    assert out.count("\n") == 1


def test_gpu_smoke_run_file_computes_in_bf16_with_fused_attention():
    from t5x_like.cli import gin_loading
    config, mode, _ = gin_loading.train_config_from_args([
        "--gin_file=gin_configs/models/decoder_only/tiny.gin", "--gin_file=gin_configs/runs/gpu_smoke.gin",
        "--gin.MODEL_DIR=/tmp/gpu_smoke"])
    model_config = config.model.config
    assert mode == "train" and config.mixture_or_task_name == "synthetic" and config.train_steps > 0
    assert model_config.dtype == "bfloat16" and model_config.param_dtype == "float32"
    assert model_config.attention_kernel == "dot_product_attention"


def test_setup_installs_libtpu_for_tests_and_cuda_jax_when_asked():
    with open(os.path.join(REPO, "setup.py")) as f:
        setup = f.read()
    with open(os.path.join(REPO, "constraints.txt")) as f:
        constraints = f.read().splitlines()
    with open(os.path.join(REPO, "launch/setup.sh")) as f:
        script = f.read()
    assert '"jax[tpu]==0.10.2"]' in setup and any(line.startswith("libtpu==") for line in constraints)
    assert "T5X_LIKE_ACCELERATOR" in script and "EXTRAS=$EXTRAS,cuda" in script
