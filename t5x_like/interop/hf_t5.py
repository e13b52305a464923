"""Hugging Face `T5ForConditionalGeneration` <-> t5x_like encoder-decoder.

Covers T5 1.0 (ReLU MLP, tied and rescaled output projection) and T5 1.1 /
mT5 (gated-GELU, untied `lm_head`). One table (`parameter_table`) lists every
parameter once; import and export both read it.

Names and layouts, HF -> ours (H = num_heads, K = d_kv, D = d_model):

    shared.weight [V, D]                               token_embed/embedding [V, D]
    {stack}.block.{i}.layer.0.SelfAttention.q.weight   {stack}_layers_{i}/self_attention/query/kernel
        [H*K, D] (torch Linear: out, in)                   [D, H, K]   (transpose, split heads)
    ....SelfAttention.o.weight [D, H*K]                 .../self_attention/out/kernel [H, K, D]
    {stack}.block.0.layer.0.SelfAttention               {stack}_relpos_bias/rel_embedding [buckets, H]
        .relative_attention_bias.weight [buckets, H]       (HF keeps it in layer 0; ours is per stack)
    decoder.block.{i}.layer.1.EncDecAttention.*        decoder_layers_{i}/cross_attention/*
    ....DenseReluDense.wi | wi_0, wi_1 [F, D]           .../mlp/wi | wi_0, wi_1 /kernel [D, F]
    ....DenseReluDense.wo [D, F]                        .../mlp/wo/kernel [F, D]
    ....layer.N.layer_norm.weight [D]                   .../self_attention_norm | cross_attention_norm
                                                           | mlp_norm /scale
    {stack}.final_layer_norm.weight                    {stack}_norm/scale
    lm_head.weight [V, D] (untied only)                logits_dense/kernel [D, V]

Tying: HF transformers 5 always builds `lm_head` tied to `shared` and keeps
whether the decoder output is scaled by D**-0.5 in `scale_decoder_outputs`
(older configs: `tie_word_embeddings`, which meant both). A checkpoint whose
`lm_head.weight` differs from `shared.weight` is untied. So:

    tied,   scaled     -> tie_embeddings=True,  rescale_tied_logits=True   (T5 1.0)
    tied,   unscaled   -> tie_embeddings=True,  rescale_tied_logits=False
    untied, unscaled   -> tie_embeddings=False                             (T5 1.1)
    untied, scaled     -> tie_embeddings=False, D**-0.5 folded into logits_dense
"""
from __future__ import annotations

import numpy as np

from t5x_like.interop.common import (
    ACTIVATIONS_TO_HF,
    ConversionError,
    Entry,
    Params,
    TensorSource,
    activation_from_hf,
    config_field,
    params_from_table,
    tensors_from_table,
    unscan_params,
)
from t5x_like.model import config as config_lib
from t5x_like.model.config import TransformerConfig

MODEL_TYPES = ("t5", "mt5")
ARCHITECTURE = "T5ForConditionalGeneration"
# Tensors HF may store that carry nothing of their own.
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_UNUSED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


# --- config ----------------------------------------------------------------------
def scales_decoder_outputs(hf: dict) -> bool:
    """Whether T5 multiplies the decoder output by d_model**-0.5 before the logits."""
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def config_from_hf(hf: dict, untied_head: bool) -> TransformerConfig:
    """Our config from T5's config.json (`untied_head`: the weights have their own lm_head)."""
    num_layers = config_field(hf, "num_layers", int)
    ff = config_field(hf, "feed_forward_proj", str, "relu")
    parts = ff.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ConversionError(f"config.json: feed_forward_proj = {ff!r}: expected 'ACT' or 'gated-ACT'")
    # HF reads "gated-gelu" as the tanh approximation (gelu_new), for T5 1.1's sake.
    activation = activation_from_hf("gelu_new" if ff == "gated-gelu" else parts[-1], "feed_forward_proj")
    activations = (activation, "linear") if len(parts) == 2 else (activation,)
    scaled = scales_decoder_outputs(hf)
    return config_lib.t5_1_0(
        vocab_size=config_field(hf, "vocab_size", int),
        d_model=config_field(hf, "d_model", int),
        num_heads=config_field(hf, "num_heads", int),
        head_dim=config_field(hf, "d_kv", int),
        d_ff=config_field(hf, "d_ff", int),
        num_encoder_layers=num_layers,
        num_decoder_layers=config_field(hf, "num_decoder_layers", int, num_layers),
        relative_num_buckets=config_field(hf, "relative_attention_num_buckets", int, 32),
        relative_max_distance=config_field(hf, "relative_attention_max_distance", int, 128),
        norm_epsilon=config_field(hf, "layer_norm_epsilon", float, 1e-6),
        dropout_rate=config_field(hf, "dropout_rate", float, 0.1),
        mlp_activations=activations,
        tie_embeddings=not untied_head,
        rescale_tied_logits=scaled or untied_head,  # unused when untied; keep the T5 1.1 preset's value
    )


def config_to_hf(config: TransformerConfig, base: dict | None = None) -> dict:
    """T5's config.json for `config`; `base` (the imported original) supplies token ids etc."""
    problems = []
    if config.layout != "encoder_decoder":
        problems.append(f"layout={config.layout!r} (T5 is encoder_decoder)")
    for field, want in (("norm", "rms"), ("norm_position", "pre"), ("position", "relative"), ("use_bias", False),
                        ("scale_attention_by_head_dim", False), ("encoder_mask", "bidirectional"),
                        ("share_encoder_decoder", False)):
        if getattr(config, field) != want:
            problems.append(f"{field}={getattr(config, field)!r} (T5 has {want!r})")
    activations = config.mlp_activations
    if any(a not in ACTIVATIONS_TO_HF for a in activations) or (config.is_gated and activations[1] != "linear"):
        problems.append(f"mlp_activations={activations} (T5 has ('ACT',) or ('ACT', 'linear'))")
    if config.kv_heads != config.num_heads:
        problems.append(f"num_kv_heads={config.num_kv_heads} (T5 has multi-head attention)")
    if problems:
        raise ConversionError("cannot export to Hugging Face T5: " + "; ".join(problems))
    if config.is_gated:
        # "gated-gelu" means the tanh form in HF; the exact GELU is "gelu_python".
        name = {"gelu_tanh": "gelu", "gelu": "gelu_python"}.get(activations[0], ACTIVATIONS_TO_HF[activations[0]])
        feed_forward_proj = f"gated-{name}"
    else:
        feed_forward_proj = ACTIVATIONS_TO_HF[activations[0]]
    hf = {key: value for key, value in (base or {}).items()
          if key in ("pad_token_id", "eos_token_id", "decoder_start_token_id", "task_specific_params")}
    hf.update(
        architectures=[ARCHITECTURE], model_type="t5", is_encoder_decoder=True,
        vocab_size=config.vocab_size, d_model=config.d_model, num_heads=config.num_heads, d_kv=config.head_dim,
        d_ff=config.d_ff, num_layers=config.num_encoder_layers, num_decoder_layers=config.num_decoder_layers,
        relative_attention_num_buckets=config.relative_num_buckets,
        relative_attention_max_distance=config.relative_max_distance,
        layer_norm_epsilon=config.norm_epsilon, dropout_rate=config.dropout_rate,
        feed_forward_proj=feed_forward_proj,
        tie_word_embeddings=config.tie_embeddings,
        scale_decoder_outputs=config.tie_embeddings and config.rescale_tied_logits,
    )
    hf.setdefault("pad_token_id", 0)
    hf.setdefault("eos_token_id", 1)
    hf.setdefault("decoder_start_token_id", 0)
    return hf


# --- parameters -----------------------------------------------------------------------
def parameter_table(config: TransformerConfig) -> list[Entry]:
    """Every parameter of a (non-scanned) T5-layout config and its HF tensor."""
    d, h, k, f, v = config.d_model, config.num_heads, config.head_dim, config.d_ff, config.vocab_size
    table = [Entry("token_embed/embedding", "shared.weight", (v, d), (v, d), because="vocab_size, d_model")]

    def attention(ours: str, hf: str) -> list[Entry]:
        heads = "num_heads*d_kv, d_model"
        return [Entry(f"{ours}/{o}/kernel", f"{hf}.{n}.weight", (h * k, d), (d, h, k), True, heads)
                for o, n in (("query", "q"), ("key", "k"), ("value", "v"))] + [
                Entry(f"{ours}/out/kernel", f"{hf}.o.weight", (d, h * k), (h, k, d), True, heads)]

    def mlp(ours: str, hf: str) -> list[Entry]:
        names = ("wi_0", "wi_1") if config.is_gated else ("wi",)
        return [Entry(f"{ours}/{n}/kernel", f"{hf}.{n}.weight", (f, d), (d, f), True, "d_ff, d_model")
                for n in names] + [Entry(f"{ours}/wo/kernel", f"{hf}.wo.weight", (d, f), (f, d), True, "d_model, d_ff")]

    def norm(ours: str, hf: str) -> Entry:
        return Entry(f"{ours}/scale", f"{hf}.weight", (d,), (d,), because="d_model")

    for stack, depth in (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers)):
        for i in range(depth):
            ours, hf = f"{stack}_layers_{i}", f"{stack}.block.{i}.layer"
            table += attention(f"{ours}/self_attention", f"{hf}.0.SelfAttention")
            table.append(norm(f"{ours}/self_attention_norm", f"{hf}.0.layer_norm"))
            mlp_index = 1
            if stack == "decoder":
                table += attention(f"{ours}/cross_attention", f"{hf}.1.EncDecAttention")
                table.append(norm(f"{ours}/cross_attention_norm", f"{hf}.1.layer_norm"))
                mlp_index = 2
            table += mlp(f"{ours}/mlp", f"{hf}.{mlp_index}.DenseReluDense")
            table.append(norm(f"{ours}/mlp_norm", f"{hf}.{mlp_index}.layer_norm"))
        table.append(Entry(f"{stack}_relpos_bias/rel_embedding",
                           f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                           (config.relative_num_buckets, h), (config.relative_num_buckets, h),
                           because="relative_attention_num_buckets, num_heads"))
        table.append(norm(f"{stack}_norm", f"{stack}.final_layer_norm"))
    if not config.tie_embeddings:
        table.append(Entry("logits_dense/kernel", "lm_head.weight", (v, d), (d, v), True, "vocab_size, d_model"))
    return table


def has_untied_head(tensors: dict[str, np.ndarray]) -> bool:
    head, shared = tensors.get("lm_head.weight"), tensors.get("shared.weight")
    return head is not None and not (shared is not None and head.shape == shared.shape
                                     and np.array_equal(head, shared))


def from_hf(hf: dict, tensors: dict[str, np.ndarray]) -> tuple[TransformerConfig, Params, list[str]]:
    """(config, params, notes) from T5's config.json and its tensors."""
    untied_head = has_untied_head(tensors)
    config = config_from_hf(hf, untied_head)
    fold_scale = untied_head and scales_decoder_outputs(hf)  # D**-0.5 folded into the untied head
    source = TensorSource(tensors)
    params = params_from_table(parameter_table(config), source)
    for name in _TIED_COPIES:
        if name in source:
            copy = source.take(name, (config.vocab_size, config.d_model), "vocab_size, d_model")
            if not np.array_equal(copy, params["token_embed"]["embedding"]):
                raise ConversionError(f"weights: {name} differs from shared.weight; t5x_like shares one "
                                      "token embedding between encoder and decoder")
    if config.tie_embeddings and "lm_head.weight" in source:
        source.ignore("lm_head.weight")  # equal to shared.weight (has_untied_head said so)
    for name in _UNUSED:
        source.ignore(name)
    source.check_all_used()
    notes = []
    if fold_scale:
        params["logits_dense"]["kernel"] = params["logits_dense"]["kernel"] * config.d_model ** -0.5
        notes.append("untied lm_head with scale_decoder_outputs: d_model**-0.5 folded into logits_dense/kernel "
                     "(exporting back gives the folded head with scale_decoder_outputs=false)")
    return config, params, notes


def to_hf(config: TransformerConfig, params: Params, base: dict | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json dict, HF tensors) for our params."""
    hf = config_to_hf(config, base)
    # Tied: no lm_head.weight, as HF itself saves it.
    return hf, tensors_from_table(parameter_table(config), unscan_params(params, config))
