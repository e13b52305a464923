"""Exact parameter counts and FLOPs from a config alone, and a matching solver.

Owns: `count_params` (equal, element for element, to the initialized
parameter tree of `model.Model`; the tests hold it to that), FLOPs per
example for training and per generated token for decoding, and `match`, which
adjusts one dimension of a config until its parameters or FLOPs equal a
target within a tolerance.

FLOPs conventions (stated once here, used everywhere):
- A matmul of [m, k] by [k, n] costs 2·m·k·n. Norms, softmax, activations and
  position encodings are not counted (they are O(d) per token, not O(d²)).
- Attention is counted as executed: every query scores every key of its
  sequence (QKᵀ and AV: 2·2·L_q·L_k·heads·head_dim per layer), whether or not
  the mask hides a key, because that is what the dense kernels compute.
- Training = 3 × forward (the backward pass costs about twice the forward).
- Layout token flow: decoder-only and prefix-LM run one stack over
  inputs+targets; an encoder-decoder runs the encoder over the inputs and the
  decoder (with cross-attention) over the targets; encoder-only (MLM) over
  inputs+targets, the whole text, as `features.matched_feature_lengths` feeds it.
  This is why a 12+12 encoder-decoder and a 12-layer decoder-only model cost
  about the same (T5 Table 2's M) while the former has twice the parameters.
- Decoding, per generated token with a KV cache: the decoder's per-token
  matmuls, the logits, and attention over the average context seen while
  generating the targets (inputs + targets/2 for a decoder; targets/2 for
  self-attention plus the inputs for cross-attention in an encoder-decoder).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from t5x_like.model import features
from t5x_like.model.config import TransformerConfig


# --- parameter counts --------------------------------------------------------
def _dense(config: TransformerConfig, fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + (fan_out if config.use_bias else 0)


def _norm(config: TransformerConfig) -> int:
    return config.d_model * (2 if config.norm == "layer" else 1)


def attention_params(config: TransformerConfig) -> int:
    """Query and output projections over num_heads, key and value over num_kv_heads (config.kv_heads)."""
    inner, kv_inner = config.num_heads * config.head_dim, config.kv_heads * config.head_dim
    return (_dense(config, config.d_model, inner) + 2 * _dense(config, config.d_model, kv_inner)
            + _dense(config, inner, config.d_model))


def mlp_params(config: TransformerConfig) -> int:
    branches = len(config.mlp_activations)
    return branches * _dense(config, config.d_model, config.d_ff) + _dense(config, config.d_ff, config.d_model)


def block_params(config: TransformerConfig, cross_attention: bool) -> int:
    params = attention_params(config) + mlp_params(config) + 2 * _norm(config)
    if cross_attention:
        params += attention_params(config) + _norm(config)
    return params


def _stack_position_params(config: TransformerConfig, mode: str) -> int:
    if config.position == "learned":
        return config.max_length * config.d_model
    if config.position == "relative":
        return config.relative_num_buckets * config.num_heads * (2 if mode == "prefix" else 1)
    return 0


@dataclasses.dataclass(frozen=True)
class ParamCount:
    total: int
    embedding: int  # token embedding, untied output projection, learned position tables

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def count_params(config: TransformerConfig) -> ParamCount:
    """Exact parameter count of `model.Model(config)`."""
    token = config.vocab_size * config.d_model
    output = 0 if config.tie_embeddings else _dense(config, config.d_model, config.vocab_size)
    embedding = token + output
    total = embedding
    if config.has_encoder:
        total += config.num_encoder_layers * block_params(config, cross_attention=False) + _norm(config)
        total += _stack_position_params(config, "bidirectional")
    if config.has_decoder:
        cross = config.layout == "encoder_decoder"
        if config.share_encoder_decoder:  # only cross-attention is the decoder's own
            total += config.num_decoder_layers * (attention_params(config) + _norm(config))
        else:
            total += config.num_decoder_layers * block_params(config, cross_attention=cross)
        total += _norm(config) + _stack_position_params(config, "prefix" if config.layout == "prefix_lm" else "causal")
    if config.position == "learned":
        embedding += config.max_length * config.d_model * (int(config.has_encoder) + int(config.has_decoder))
    return ParamCount(total=total, embedding=embedding)


# --- FLOPs ---------------------------------------------------------------------
def _layer_matmul_flops_per_token(config: TransformerConfig) -> int:
    """Self-attention projections + MLP, per token, forward."""
    return 2 * (attention_params_matmul(config) + mlp_matmul(config))


def attention_params_matmul(config: TransformerConfig) -> int:
    return 2 * config.d_model * (config.num_heads + config.kv_heads) * config.head_dim


def mlp_matmul(config: TransformerConfig) -> int:
    return (len(config.mlp_activations) + 1) * config.d_model * config.d_ff


def _attention_scores_flops(config: TransformerConfig, query_length: int, key_length: float) -> float:
    return 4 * query_length * key_length * config.num_heads * config.head_dim


def _logits_flops(config: TransformerConfig, length: int) -> int:
    return 2 * length * config.d_model * config.vocab_size


def text_stack_lengths(config: TransformerConfig, inputs_length: int, targets_length: int) -> dict[str, int]:
    """How many positions each stack runs over for a text of inputs + targets tokens, fed to the
    layout as `features.matched_feature_lengths` feeds it."""
    if config.layout in ("prefix_lm", "encoder_decoder") and not inputs_length:
        task = {"inputs": 0, "targets": targets_length}  # no matched form: the decoder over the targets alone
    else:
        task = features.matched_feature_lengths(config.layout, inputs_length, targets_length,
                                                task_has_inputs=bool(inputs_length))
    return features.stack_lengths(config.layout, task)


def forward_flops_per_example(config: TransformerConfig, inputs_length: int, targets_length: int) -> float:
    return forward_flops(config, text_stack_lengths(config, inputs_length, targets_length))


def train_flops_for_task(config: TransformerConfig, task_feature_lengths: dict[str, int]) -> float:
    """Training FLOPs per example of a run with these task feature lengths (what a run logs MFU with)."""
    return 3 * forward_flops(config, features.stack_lengths(config.layout, task_feature_lengths))


def forward_flops(config: TransformerConfig, lengths: dict[str, int]) -> float:
    """Forward FLOPs per example of a model whose stacks run over `lengths` ({stack: positions})."""
    flops = 0.0
    inner = config.num_heads * config.head_dim
    if "encoder" in lengths:
        n = lengths["encoder"]
        flops += config.num_encoder_layers * (n * _layer_matmul_flops_per_token(config)
                                              + _attention_scores_flops(config, n, n))
    if "decoder" in lengths:
        n = lengths["decoder"]
        per_layer = n * _layer_matmul_flops_per_token(config) + _attention_scores_flops(config, n, n)
        if config.layout == "encoder_decoder":
            m = lengths["encoder"]
            per_layer += (2 * n * 2 * config.d_model * inner      # query and output projections
                          + 2 * m * 2 * config.d_model * config.kv_heads * config.head_dim  # encoder keys, values
                          + _attention_scores_flops(config, n, m))
        flops += config.num_decoder_layers * per_layer
    output_length = lengths.get("decoder", lengths.get("encoder"))
    return flops + _logits_flops(config, output_length)


def train_flops_per_example(config: TransformerConfig, inputs_length: int, targets_length: int) -> float:
    return 3 * forward_flops_per_example(config, inputs_length, targets_length)


def decode_flops_per_token(config: TransformerConfig, inputs_length: int, targets_length: int) -> float:
    """Forward FLOPs to generate one target token with a KV cache (see module docstring)."""
    if not config.has_decoder:
        return 0.0
    inner = config.num_heads * config.head_dim
    per_layer = _layer_matmul_flops_per_token(config)
    if config.layout == "encoder_decoder":
        context = targets_length / 2
        per_layer += 2 * 2 * config.d_model * inner + _attention_scores_flops(config, 1, inputs_length)
    else:
        context = inputs_length + targets_length / 2
    per_layer += _attention_scores_flops(config, 1, context)
    return config.num_decoder_layers * per_layer + _logits_flops(config, 1)


# --- matching -------------------------------------------------------------------
KNOBS = ("depth", "d_ff", "d_model")


def _with_knob(config: TransformerConfig, knob: str, value: int) -> TransformerConfig:
    if knob == "d_ff":
        return config.replace(d_ff=value)
    if knob == "d_model":
        return config.replace(d_model=value)
    if knob == "depth":
        if config.layout == "encoder_decoder":
            return config.replace(num_encoder_layers=value, num_decoder_layers=value)
        if config.layout == "encoder_only":
            return config.replace(num_encoder_layers=value)
        return config.replace(num_decoder_layers=value)
    raise ValueError(f"unknown knob {knob!r}; choose one of {KNOBS}")


@dataclasses.dataclass(frozen=True)
class MatchResult:
    config: TransformerConfig
    knob: str
    value: int
    achieved: float
    target: float

    @property
    def relative_residual(self) -> float:
        return (self.achieved - self.target) / self.target


def match(config: TransformerConfig, target: float, metric: Callable[[TransformerConfig], float],
          knob: str = "d_ff", multiple_of: int = 1, max_value: int = 1 << 16) -> MatchResult:
    """The value of `knob` (a multiple of `multiple_of`) whose metric is closest to `target`.

    metric must grow with the knob (params and FLOPs do, for every knob here).
    Bisection over the knob, then the better of the two neighbours.
    """
    low, high = 1, max_value // multiple_of
    measure = lambda steps: metric(_with_knob(config, knob, steps * multiple_of))
    if measure(high) < target:
        raise ValueError(f"target {target:.4g} is out of reach: {knob}={high * multiple_of} gives "
                         f"{measure(high):.4g}; raise max_value or use another knob")
    while high - low > 1:
        mid = (low + high) // 2
        if measure(mid) < target:
            low = mid
        else:
            high = mid
    best = min((low, high), key=lambda steps: abs(measure(steps) - target))
    value = best * multiple_of
    matched = _with_knob(config, knob, value)
    return MatchResult(config=matched, knob=knob, value=value, achieved=metric(matched), target=target)


def params_metric(config: TransformerConfig) -> float:
    return count_params(config).total


def train_flops_metric(inputs_length: int, targets_length: int) -> Callable[[TransformerConfig], float]:
    return lambda config: train_flops_per_example(config, inputs_length, targets_length)


def summary(config: TransformerConfig, inputs_length: int, targets_length: int) -> dict:
    """The row `t5x-like size` prints for one config."""
    params = count_params(config)
    return {
        "layout": config.layout + (" (shared)" if config.share_encoder_decoder else ""),
        "layers": f"{config.num_encoder_layers}+{config.num_decoder_layers}",
        "params": params.total,
        "non_embedding_params": params.non_embedding,
        "train_flops_per_example": train_flops_per_example(config, inputs_length, targets_length),
        "decode_flops_per_token": decode_flops_per_token(config, inputs_length, targets_length),
    }
