"""Attention-matrix analysis: rank, effective rank and entropy of every head.

Tests Su's low-rank argument on trained models: softmax(QKᵀ) with n ≫ d tends
to be low-rank when bidirectional, while a causal attention matrix is lower
triangular with a positive diagonal, hence always full rank.

For each layer and head, on each example's real (non-padding) positions:
  rank            for triangular masks (causal, forward, backward): the number
                  of non-zero diagonal entries, which is the exact rank of a
                  triangular matrix; otherwise numerical_rank
  numerical_rank  singular values above L·eps(float32) × the largest one (a
                  triangular matrix's smallest singular values shrink
                  exponentially with L, so this undercounts their rank)
  effective_rank  exp(entropy of σ / Σσ) (Roy & Vetterli 2007), a smooth rank
  row_entropy     mean entropy (nats) of the attention rows
Heads are grouped by the mask they run under: "causal", "prefix" (the
prefix×prefix block of a prefix-LM, which is bidirectional), "bidirectional",
"forward"/"backward" (Su's mixed heads). On data with inputs (a prefix-LM
task), decoders are analyzed on the input block only, so a decoder-only
model's causal heads and a prefix-LM's bidirectional heads are measured on the
same positions.
"""
from __future__ import annotations

import collections

import flax
import jax
import numpy as np

from t5x_like.model import model as model_lib
from t5x_like.model.transformer import Transformer

# numpy.linalg.matrix_rank's rule for float32 data: a singular value counts if it
# exceeds L · eps(float32) · σ_max, i.e. it is above the round-off of the
# weights themselves. Triangular matrices are ill-conditioned, so any larger
# tolerance would call some full-rank causal matrices rank-deficient.
RANK_TOLERANCE_PER_POSITION = float(np.finfo(np.float32).eps)


TRIANGULAR_KINDS = ("causal", "forward", "backward")


def head_statistics(matrix: np.ndarray, triangular: bool = False) -> dict[str, float]:
    """Statistics of one square attention matrix [L, L] (rows sum to 1)."""
    singular_values = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    top = singular_values[0] if singular_values.size else 0.0
    tolerance = RANK_TOLERANCE_PER_POSITION * matrix.shape[0] * top
    p = singular_values / max(singular_values.sum(), 1e-30)
    p = p[p > 0]
    rows = np.clip(matrix.astype(np.float64), 1e-30, 1.0)
    numerical_rank = int(np.sum(singular_values > tolerance))
    rank = int(np.count_nonzero(np.diag(matrix))) if triangular else numerical_rank
    return {
        "rank": rank,
        "relative_rank": rank / matrix.shape[0],
        "numerical_rank": numerical_rank,
        "effective_rank": float(np.exp(-np.sum(p * np.log(p)))),
        "relative_effective_rank": float(np.exp(-np.sum(p * np.log(p)))) / matrix.shape[0],
        "row_entropy": float(np.mean(-np.sum(matrix * np.log(rows), axis=-1))),
        "length": int(matrix.shape[0]),
    }


def attention_weights(model: model_lib.Model, params, batch: dict) -> dict[str, np.ndarray]:
    """{layer path: weights [B, H, Lq, Lk]} for every self-attention layer."""
    module = Transformer(model.config.replace(attention_kernel="einsum"))
    _, state = module.apply({"params": params}, **model.module_inputs(batch), mutable=["intermediates"])
    flat = flax.traverse_util.flatten_dict(jax.device_get(state["intermediates"]), sep="/")
    return {path.rsplit("/attention_weights", 1)[0]: np.asarray(value[0])
            for path, value in flat.items() if "self_attention" in path}


def _mask_kinds(config, layer_path: str, num_heads: int, layer_index: int) -> list[str]:
    if "decoder" in layer_path and config.layout != "encoder_decoder" or (
            "decoder" in layer_path and config.layout == "encoder_decoder"):
        return ["prefix" if config.layout == "prefix_lm" else "causal"] * num_heads
    if config.encoder_mask == "forward_backward_heads":
        forward = (num_heads + 1) // 2
        return ["forward"] * forward + ["backward"] * (num_heads - forward)
    if config.encoder_mask == "forward_backward_layers":
        return ["forward" if layer_index % 2 == 0 else "backward"] * num_heads
    return ["bidirectional"] * num_heads


def _region(batch: dict, example: int, kind: str, layer_path: str) -> np.ndarray:
    """Indices of the square block analyzed for one example."""
    if "encoder" in layer_path:
        return np.flatnonzero(batch["encoder_input_tokens"][example] != 0)
    valid = np.flatnonzero(batch["decoder_target_tokens"][example] != 0)
    if "decoder_causal_attention" in batch:
        # The input block: bidirectional in a prefix-LM, causal in a decoder-only
        # model, so the two layouts are compared on the same square of positions.
        prefix = np.flatnonzero(batch["decoder_causal_attention"][example])
        return np.intersect1d(prefix, valid)
    return valid


def analyze(model: model_lib.Model, params, batches) -> list[dict]:
    """One row per (layer, head, example) with the statistics of `head_statistics`."""
    rows = []
    for batch in batches:
        batch = {k: np.asarray(v) for k, v in batch.items()}
        for layer_index, (path, weights) in enumerate(sorted(attention_weights(model, params, batch).items())):
            kinds = _mask_kinds(model.config, path, weights.shape[1], int(path.rsplit("_", 1)[-1].split("/")[0])
                                if path.rsplit("_", 1)[-1].split("/")[0].isdigit() else layer_index)
            for example in range(weights.shape[0]):
                for head, kind in enumerate(kinds):
                    idx = _region(batch, example, kind, path)
                    if idx.size < 2:
                        continue
                    stats = head_statistics(weights[example, head][np.ix_(idx, idx)], kind in TRIANGULAR_KINDS)
                    rows.append({"layer": path, "head": head, "mask": kind, **stats})
    return rows


SUMMARY_KEYS = ("relative_rank", "numerical_rank", "effective_rank", "relative_effective_rank", "row_entropy",
                "length")


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean of each statistic per mask kind, with the 10th and 90th percentiles of the
    relative effective rank over heads × examples."""
    grouped = collections.defaultdict(list)
    for row in rows:
        grouped[row["mask"]].append(row)
    summary = {}
    for kind, group in sorted(grouped.items()):
        spread = np.percentile([r["relative_effective_rank"] for r in group], [10, 90])
        summary[kind] = ({key: float(np.mean([r[key] for r in group])) for key in SUMMARY_KEYS}
                         | {"relative_effective_rank_p10": float(spread[0]),
                            "relative_effective_rank_p90": float(spread[1]), "heads_x_examples": len(group)})
    return summary


def verdict(summary: dict) -> str:
    """A sentence comparing bidirectional-type heads with causal-type heads."""
    bidirectional = [summary[k]["relative_rank"] for k in ("bidirectional", "prefix") if k in summary]
    causal = [summary[k]["relative_rank"] for k in ("causal", "forward", "backward") if k in summary]
    if not bidirectional or not causal:
        kinds = ", ".join(sorted(summary)) or "none"
        return f"only one family of mask kinds present ({kinds}); no bidirectional-vs-causal comparison"
    b, c = float(np.mean(bidirectional)), float(np.mean(causal))
    relation = "lower" if b < c else "not lower"
    return (f"bidirectional heads have mean relative rank {b:.3f} vs {c:.3f} for causal heads: "
            f"bidirectional attention is {relation}-rank here")
