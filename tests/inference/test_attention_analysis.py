"""Attention statistics: causal matrices are full rank; bidirectional ones can be low rank."""
import numpy as np

from t5x_like.inference import attention_analysis
from tests.model_fixtures import init_params, random_tokens, tiny_config


def test_causal_attention_matrices_are_full_rank():
    # Scaled q·k keeps the softmax from underflowing to exact zeros on the
    # diagonal, which in float32 (not in exact arithmetic) could lose rank.
    config = tiny_config("decoder_only", scale_attention_by_head_dim=True)
    model, params = init_params(config, 2, 0, 12)
    tokens = random_tokens(np.random.default_rng(0), (2, 12))
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens, "decoder_loss_weights": np.ones_like(tokens)}
    rows = attention_analysis.analyze(model, params, [batch])
    assert len(rows) == 2 * config.num_heads * config.num_decoder_layers
    assert all(r["mask"] == "causal" and r["rank"] == 12 for r in rows)


def test_rank_statistics_on_known_matrices():
    uniform = np.full((8, 8), 1 / 8)  # every row the same: rank 1
    stats = attention_analysis.head_statistics(uniform)
    assert stats["numerical_rank"] == stats["rank"] == 1
    zero_diagonal = np.tril(np.ones((4, 4)), -1) + np.diag([1.0, 0.0, 1.0, 1.0])
    assert attention_analysis.head_statistics(zero_diagonal, triangular=True)["rank"] == 3
    assert stats["effective_rank"] == np.float64(1.0) or abs(stats["effective_rank"] - 1.0) < 1e-6
    assert abs(stats["row_entropy"] - np.log(8)) < 1e-9
    identity = attention_analysis.head_statistics(np.eye(8))
    assert identity["numerical_rank"] == 8 and abs(identity["effective_rank"] - 8) < 1e-6
    assert identity["row_entropy"] < 1e-6


def test_prefix_and_mixed_heads_are_labelled_by_mask():
    config = tiny_config("prefix_lm")
    model, params = init_params(config, 2, 6, 6)
    tokens = random_tokens(np.random.default_rng(1), (2, 12))
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens, "decoder_loss_weights": np.ones_like(tokens),
             "decoder_causal_attention": (np.arange(12) < 6)[None].repeat(2, 0).astype(np.int32)}
    summary = attention_analysis.summarize(attention_analysis.analyze(model, params, [batch]))
    assert set(summary) == {"prefix"} and summary["prefix"]["length"] == 6
    config = tiny_config("encoder_only", encoder_mask="forward_backward_heads", scale_attention_by_head_dim=True)
    model, params = init_params(config, 2, 8, 8)
    enc = random_tokens(np.random.default_rng(2), (2, 8))
    rows = attention_analysis.analyze(model, params, [{"encoder_input_tokens": enc, "encoder_target_tokens": enc}])
    assert {r["mask"] for r in rows} == {"forward", "backward"}
    assert all(r["rank"] == 8 for r in rows)  # triangular with positive diagonal
