"""TransformerConfig: the one typed description of every model layout.

A config says which layout (decoder-only, prefix-LM, encoder-only,
encoder-decoder), how deep each stack is, and every architectural choice that
the comparison varies (masks, position encodings, MLP, norms, tying, dtypes).
The model (`transformer.py`, `model.py`), the sizing tool (`sizing.py`) and the gin files all
read this one dataclass; nothing else defines architecture.

Presets for the published architectures are the gin files under
`gin_configs/models/`; `t5_1_0`, `t5_1_1`, `gpt2` and `llama` below give the same
choices in Python for tests and the converter.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

Layout = Literal["decoder_only", "prefix_lm", "encoder_only", "encoder_decoder"]
# How a bidirectional stack's heads see the sequence; see masks.py.
EncoderMask = Literal["bidirectional", "forward_backward_heads", "forward_backward_layers"]
Position = Literal["learned", "sinusoidal", "relative", "rope", "alibi", "none"]
Activation = Literal["relu", "gelu", "gelu_tanh", "silu", "linear"]

LAYOUTS = ("decoder_only", "prefix_lm", "encoder_only", "encoder_decoder")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture of one model. Defaults: a tiny T5 1.1-style decoder-only model."""

    layout: Layout = "decoder_only"
    vocab_size: int = 384
    d_model: int = 64
    num_heads: int = 4
    # Key/value heads of every attention (self and cross, every layout): None = num_heads
    # (multi-head), 1 = multi-query, a divisor of num_heads = grouped-query (each key/value
    # head serves num_heads / num_kv_heads consecutive query heads). The decoding cache holds
    # only these heads.
    num_kv_heads: int | None = None
    head_dim: int = 16
    d_ff: int = 256
    # Depth per stack. Decoder-only, prefix-LM: num_decoder_layers only.
    # Encoder-only: num_encoder_layers only. Encoder-decoder: both.
    num_encoder_layers: int = 0
    num_decoder_layers: int = 2
    # Encoder-decoder only: the decoder reuses the encoder's self-attention and
    # MLP parameters layer by layer (T5 Table 2's "shared"); cross-attention
    # stays the decoder's own. Requires equal depths.
    share_encoder_decoder: bool = False
    # Masking of bidirectional stacks (the encoder, the encoder-only model).
    encoder_mask: EncoderMask = "bidirectional"

    # MLP: one activation = plain MLP; two = gated (first is the gate's, second
    # the linear branch's: ("gelu_tanh", "linear") is T5 1.1, ("silu", "linear") LLaMA).
    mlp_activations: tuple[str, ...] = ("gelu_tanh", "linear")
    norm: Literal["rms", "layer"] = "rms"
    norm_position: Literal["pre", "post"] = "pre"
    norm_epsilon: float = 1e-6
    use_bias: bool = False

    position: Position = "relative"
    max_length: int = 2048  # table size for learned absolute positions
    relative_num_buckets: int = 32
    relative_max_distance: int = 128
    rope_max_wavelength: float = 10_000.0
    # RoPE frequency scaling (positions.rope_inverse_frequencies): "none"; "linear" (every
    # frequency / rope_scaling_factor); "llama3" (LLaMA 3.1: long wavelengths / factor, short
    # ones kept, smooth between, by the low/high frequency factors and the original length).
    rope_scaling: Literal["none", "linear", "llama3"] = "none"
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_length: int = 8192
    # T5 scales q·k by nothing (folded into the init); GPT-2 by 1/sqrt(head_dim).
    scale_attention_by_head_dim: bool = False

    tie_embeddings: bool = True
    embedding_init_std: float = 1.0  # T5: 1.0; GPT-2: 0.02
    # T5 multiplies the decoder output by d_model**-0.5 before the tied
    # projection; GPT-2 does not.
    rescale_tied_logits: bool = True

    dropout_rate: float = 0.0
    dtype: str = "float32"        # compute dtype ("bfloat16" for mixed precision)
    param_dtype: str = "float32"  # parameters stay fp32 for the optimizer
    # Which kernel computes attention (model/attention.py's `attend` decides per call).
    # "einsum": explicit softmax(QKᵀ + bias), the only kernel with attention dropout
    # and the one that sows the weights. "dot_product_attention":
    # jax.nn.dot_product_attention with implementation=attention_implementation
    # (None, "xla" or "cudnn"); it has no attention dropout, so dropout_rate > 0 is
    # refused with it. "blockwise": model/attention.py's online-softmax kernel,
    # which skips the key blocks a mask hides (decoding steps, attention dropout
    # and lengths too short for blocks to pay run einsum:
    # attention.blockwise_pays); the default: faster than einsum in every
    # layout's train step on the CPU (docs/performance.md), and the same function
    # (tests/model/test_attention.py). "accelerated": the fused kernel of the
    # platform being compiled for (model/accelerator_attention.py): Pallas splash
    # or flash attention (with a bias) on TPU, cuDNN flash attention on GPU, for
    # every mask (prefix-LM and packing included) and bias; a call no kernel can
    # take (CPU, attention dropout, lengths off 128-wide TPU blocks, float32 on
    # GPU, ...) runs blockwise by blockwise's rules (so einsum for dropout) and
    # logs the reason once; decoding steps run einsum. One name, not one per
    # kernel, so the same gin file serves TPU, GPU and CPU runs.
    # attention_implementation="interpret" with "accelerated": the TPU kernels in
    # Pallas interpret mode on any platform (slow; for numerics tests on CPU).
    attention_kernel: Literal["einsum", "dot_product_attention", "blockwise", "accelerated"] = "blockwise"
    attention_implementation: str | None = None
    # Blockwise kernel: queries and keys per block (a block longer than the sequence shrinks to it).
    attention_block_q: int = 128
    attention_block_k: int = 128
    scan_layers: bool = False
    remat_policy: Literal["none", "full", "dots_saveable", "nothing_saveable"] = "none"

    def __post_init__(self):
        errors = list(self._errors())
        if errors:
            raise ValueError("invalid TransformerConfig: " + "; ".join(errors))

    def _errors(self):
        if self.layout not in LAYOUTS:
            yield f"layout={self.layout!r}, expected one of {LAYOUTS}"
        if self.layout in ("decoder_only", "prefix_lm") and (
                self.num_decoder_layers < 1 or self.num_encoder_layers):
            yield f"{self.layout} needs num_decoder_layers >= 1 and num_encoder_layers = 0"
        if self.layout == "encoder_only" and (self.num_encoder_layers < 1 or self.num_decoder_layers):
            yield "encoder_only needs num_encoder_layers >= 1 and num_decoder_layers = 0"
        if self.layout == "encoder_decoder" and min(self.num_encoder_layers, self.num_decoder_layers) < 1:
            yield "encoder_decoder needs num_encoder_layers >= 1 and num_decoder_layers >= 1"
        if self.share_encoder_decoder and (
                self.layout != "encoder_decoder" or self.num_encoder_layers != self.num_decoder_layers):
            yield "share_encoder_decoder needs layout='encoder_decoder' and equal stack depths"
        if self.num_kv_heads is not None and (self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads):
            yield (f"num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}: give a divisor "
                   "of num_heads (1 = multi-query, num_heads = multi-head) or None")
        if not 1 <= len(self.mlp_activations) <= 2:
            yield f"mlp_activations={self.mlp_activations}: give one (plain) or two (gated)"
        if self.position == "rope" and self.head_dim % 2:
            yield "rope needs an even head_dim"
        if self.rope_scaling not in ("none", "linear", "llama3"):
            yield f"rope_scaling={self.rope_scaling!r}, expected 'none', 'linear' or 'llama3'"
        if self.rope_scaling == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
            yield (f"rope_scaling='llama3' needs rope_high_freq_factor ({self.rope_high_freq_factor}) > "
                   f"rope_low_freq_factor ({self.rope_low_freq_factor})")
        if self.attention_kernel == "dot_product_attention" and self.dropout_rate > 0:
            yield (f"attention_kernel='dot_product_attention' has no attention dropout: dropout_rate="
                   f"{self.dropout_rate} would be silently ignored there; use attention_kernel='einsum' or "
                   "'blockwise' (which runs einsum when training with dropout), or dropout_rate=0")
        if self.attention_kernel == "accelerated" and self.attention_implementation not in (None, "interpret"):
            yield (f"attention_kernel='accelerated' takes attention_implementation None or 'interpret', "
                   f"got {self.attention_implementation!r}")
        if min(self.attention_block_q, self.attention_block_k) < 1:
            yield (f"attention_block_q={self.attention_block_q}, attention_block_k={self.attention_block_k}: "
                   "blocks need at least one position")
        if self.scan_layers and self.encoder_mask == "forward_backward_layers":
            yield "scan_layers does not support per-layer masks (forward_backward_layers)"

    # Derived facts every consumer needs; kept here so they are defined once.
    @property
    def has_encoder(self) -> bool:
        return self.layout in ("encoder_only", "encoder_decoder")

    @property
    def has_decoder(self) -> bool:
        return self.layout != "encoder_only"

    @property
    def kv_heads(self) -> int:
        """Key/value heads of each attention (num_kv_heads, or num_heads when None)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def is_gated(self) -> bool:
        return len(self.mlp_activations) == 2

    def replace(self, **changes) -> "TransformerConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field as JSON-ready values (tuples become lists); `from_dict` is the inverse."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, fields: dict) -> "TransformerConfig":
        """The config `to_dict` wrote. A field it lacks takes today's default (a file written
        before the field existed); a field this version does not know is a ValueError."""
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown TransformerConfig field(s) {', '.join(unknown)}: written by a newer "
                             "t5x_like? Update it, or remove the field(s)")
        return cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in fields.items()})


def t5_1_0(**overrides) -> TransformerConfig:
    """T5 1.0 choices: ReLU MLP, tied and rescaled embeddings, RMSNorm, relative bias."""
    base = dict(layout="encoder_decoder", mlp_activations=("relu",), tie_embeddings=True,
                rescale_tied_logits=True, norm="rms", position="relative", use_bias=False,
                scale_attention_by_head_dim=False, num_encoder_layers=2, num_decoder_layers=2)
    return TransformerConfig(**{**base, **overrides})


def t5_1_1(**overrides) -> TransformerConfig:
    """T5 1.1 choices: gated-GELU (tanh form) MLP, untied embeddings."""
    return t5_1_0(**{"mlp_activations": ("gelu_tanh", "linear"), "tie_embeddings": False, **overrides})


def gpt2(**overrides) -> TransformerConfig:
    """GPT-2 choices: learned positions, LayerNorm and biases, GELU (tanh), tied, scaled q·k."""
    base = dict(layout="decoder_only", mlp_activations=("gelu_tanh",), norm="layer",
                norm_epsilon=1e-5, use_bias=True, position="learned", max_length=1024,
                tie_embeddings=True, rescale_tied_logits=False, scale_attention_by_head_dim=True,
                embedding_init_std=0.02)
    return TransformerConfig(**{**base, **overrides})


def llama(**overrides) -> TransformerConfig:
    """LLaMA choices: SwiGLU MLP, RMSNorm (eps 1e-5) before each block, no biases, RoPE, scaled
    q·k, untied and unscaled output projection (a tied one for LLaMA 3.2 1B/3B)."""
    base = dict(layout="decoder_only", mlp_activations=("silu", "linear"), norm="rms", norm_epsilon=1e-5,
                use_bias=False, position="rope", tie_embeddings=False, rescale_tied_logits=False,
                scale_attention_by_head_dim=True, embedding_init_std=0.02)
    return TransformerConfig(**{**base, **overrides})
