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
