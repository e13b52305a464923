"""`t5x-like analyze-attention`: several checkpoints pooled on the same input block."""
import json

import pytest

from t5x_like.cli import analyze_attention
from tests.checkpoint_fixtures import tiny, write_run


@pytest.mark.slow  # two checkpoints written and analysed end to end; the library is tested in the fast loop
def test_cli_pools_a_causal_and_a_prefix_checkpoint_on_the_same_block(tmp_path, capsys):
    for layout in ("decoder_only", "prefix_lm"):
        write_run(str(tmp_path / layout), tiny(layout))
    out = tmp_path / "analysis"
    assert analyze_attention.main([f"--checkpoint={tmp_path / 'decoder_only'}", f"--checkpoint={tmp_path / 'prefix_lm'}",
                                   "--task=probe_copy", "--examples=4", f"--out={out}"]) == 0
    result = json.loads((out / "attention_analysis.json").read_text())
    assert set(result["summary"]) == {"causal", "prefix"}
    assert result["summary"]["causal"]["length"] == result["summary"]["prefix"]["length"]  # same input block
    assert result["summary"]["causal"]["relative_rank"] == 1.0
    assert "bidirectional heads have mean relative rank" in capsys.readouterr().out
    assert (out / "attention_analysis.png").stat().st_size > 0


@pytest.mark.slow
def test_cli_measures_each_input_length_on_each_checkpoints_own_task(tmp_path, capsys):
    write_run(str(tmp_path / "causal"), tiny("decoder_only"))
    out = tmp_path / "analysis"
    assert analyze_attention.main([f"--checkpoint={tmp_path / 'causal'}", "--task=probe_copy", "--examples=2",
                                   "--input_lengths=4,8", f"--out={out}"]) == 0
    result = json.loads((out / "attention_analysis.json").read_text())
    assert set(result["by_input_length"]) == {"4", "8"}
    assert {row["input_length"] for row in result["rows"]} == {4, 8}
    # seqio's prefix block is the inputs plus one position (the one that predicts the first target)
    assert all(row["length"] <= row["input_length"] + 1 for row in result["rows"])
    assert max(row["length"] for row in result["rows"] if row["input_length"] == 8) > 4
    assert analyze_attention.main([f"--checkpoint={tmp_path / 'causal'}", "--task=a", "--task=b"]) == 2
    assert "2 --task flags for 1 checkpoints" in capsys.readouterr().err
