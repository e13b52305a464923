"""`t5x-like compare` (cli/compare.py): one grid per OUTPUT_DIR, refused in one line."""
from __future__ import annotations

import os

from t5x_like.cli import compare as compare_cli
from t5x_like.training import run_dir


def test_a_second_compare_on_an_output_dir_a_running_grid_holds_is_one_line_exit_4(tmp_path, capsys):
    output_dir = str(tmp_path / "out")
    with run_dir.exclusive(output_dir, name="OUTPUT_DIR"):  # the grid already running there
        rc = compare_cli.main(["--gin_file=gin_configs/experiments/quick.gin", f"--gin.OUTPUT_DIR='{output_dir}'"])
    err = capsys.readouterr().err
    assert rc == compare_cli.EXIT_OUTPUT_DIR_UNUSABLE == 4
    assert err.count("\n") == 1 and f"OUTPUT_DIR {output_dir} is in use by another run" in err, err
    assert not os.path.exists(os.path.join(output_dir, "runs"))  # nothing trained
