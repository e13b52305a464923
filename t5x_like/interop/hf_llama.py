"""Hugging Face `LlamaForCausalLM` <-> t5x_like decoder-only (LLaMA 1-3 shapes).

RMSNorm before each block, SwiGLU MLP (`act(gate) * up`, ours `wi_0` (the
activation's branch) and `wi_1` (linear)), RoPE in the rotate-half form with
the default, 'linear' or 'llama3' frequency scaling (positions.py), grouped-query
attention (`num_key_value_heads` -> `num_kv_heads`), tied or untied embeddings.
One table (`parameter_table`) lists every parameter once; import and export
both read it. H = num_attention_heads, G = num_key_value_heads, K = head_dim:

    model.embed_tokens.weight [V, D]                    token_embed/embedding [V, D]
    model.layers.{i}.input_layernorm.weight [D]         decoder_layers_{i}/self_attention_norm/scale
    ....self_attn.q_proj.weight [H*K, D]                .../self_attention/query/kernel [D, H, K]
    ....self_attn.{k,v}_proj.weight [G*K, D]            .../self_attention/{key,value}/kernel [D, G, K]
    ....self_attn.o_proj.weight [D, H*K]                .../self_attention/out/kernel [H, K, D]
    model.layers.{i}.post_attention_layernorm.weight    decoder_layers_{i}/mlp_norm/scale
    ....mlp.gate_proj.weight, up_proj.weight [F, D]     .../mlp/wi_0/kernel, wi_1/kernel [D, F]
    ....mlp.down_proj.weight [D, F]                     .../mlp/wo/kernel [F, D]
    model.norm.weight [D]                               decoder_norm/scale
    lm_head.weight [V, D] (untied only)                 logits_dense/kernel [D, V]

config.json: the rope settings are read from `rope_parameters` (transformers 5)
or `rope_theta` + `rope_scaling` (earlier files); export writes the earlier form,
which both read. `max_position_embeddings` is kept as `max_length` (RoPE has no
table; it only makes the round trip exact). Fields that change the function and
t5x_like does not have (attention or MLP biases, other rope types, partial
rotary embeddings) are refused in one line, as is a `num_key_value_heads` that
does not divide `num_attention_heads`.

Padding: as for GPT-2, t5x_like reads id 0 as padding where `Model` infers it
from the ids; the parity tests pass `decoder_valid` explicitly.
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

MODEL_TYPES = ("llama",)
ARCHITECTURE = "LlamaForCausalLM"
# HF rope_type -> our rope_scaling
ROPE_TYPES = {"default": "none", "linear": "linear", "llama3": "llama3"}


# --- config ---------------------------------------------------------------------
def _rope_settings(hf: dict) -> dict:
    """Our rope_* fields from config.json's rope_parameters (or rope_theta + rope_scaling)."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ConversionError(f"config.json: rope_parameters = {rope!r} should be an object")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ConversionError(f"config.json: rope_type = {rope_type!r} is not supported; supported: "
                              f"{sorted(ROPE_TYPES)}")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConversionError(f"config.json: partial_rotary_factor = {rope['partial_rotary_factor']} is not "
                              "supported (t5x_like rotates the whole head)")
    settings = {"rope_max_wavelength": float(rope.get("rope_theta", config_field(hf, "rope_theta", float, 10_000.0))),
                "rope_scaling": ROPE_TYPES[rope_type]}
    if rope_type in ("linear", "llama3"):
        settings["rope_scaling_factor"] = config_field(rope, "factor", float)
    if rope_type == "llama3":
        settings.update(rope_low_freq_factor=config_field(rope, "low_freq_factor", float),
                        rope_high_freq_factor=config_field(rope, "high_freq_factor", float),
                        rope_original_max_length=config_field(rope, "original_max_position_embeddings", int))
    return settings


def config_from_hf(hf: dict, untied_head: bool) -> TransformerConfig:
    """The config of LLaMA's config.json (tying is its tie_word_embeddings; `untied_head` is unused)."""
    del untied_head
    d_model = config_field(hf, "hidden_size", int)
    num_heads = config_field(hf, "num_attention_heads", int)
    num_kv_heads = config_field(hf, "num_key_value_heads", int, num_heads)
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ConversionError(f"config.json: num_key_value_heads = {num_kv_heads} does not divide "
                              f"num_attention_heads = {num_heads}")
    if "head_dim" not in hf and d_model % num_heads:
        raise ConversionError(f"config.json: hidden_size = {d_model} is not divisible by num_attention_heads = "
                              f"{num_heads} and there is no head_dim")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field):
            raise ConversionError(f"config.json: {field} = true is not supported (t5x_like's LLaMA has no biases)")
    try:
        return config_lib.llama(
            vocab_size=config_field(hf, "vocab_size", int),
            d_model=d_model,
            num_heads=num_heads,
            num_kv_heads=None if num_kv_heads == num_heads else num_kv_heads,
            head_dim=config_field(hf, "head_dim", int, d_model // num_heads),
            d_ff=config_field(hf, "intermediate_size", int),
            num_decoder_layers=config_field(hf, "num_hidden_layers", int),
            max_length=config_field(hf, "max_position_embeddings", int, 2048),
            norm_epsilon=config_field(hf, "rms_norm_eps", float, 1e-6),
            mlp_activations=(activation_from_hf(config_field(hf, "hidden_act", str, "silu"), "hidden_act"), "linear"),
            tie_embeddings=bool(config_field(hf, "tie_word_embeddings", bool, False)),
            dropout_rate=config_field(hf, "attention_dropout", float, 0.0),
            **_rope_settings(hf),
        )
    except ConversionError:
        raise
    except ValueError as e:  # TransformerConfig's own checks (an odd head_dim under RoPE, ...)
        raise ConversionError(f"config.json: {e}") from None


def config_to_hf(config: TransformerConfig, base: dict | None = None) -> dict:
    problems = []
    if config.layout != "decoder_only":
        problems.append(f"layout={config.layout!r} (LLaMA is decoder_only)")
    for field, want in (("norm", "rms"), ("norm_position", "pre"), ("position", "rope"), ("use_bias", False),
                        ("scale_attention_by_head_dim", True), ("rescale_tied_logits", False)):
        if getattr(config, field) != want and not (field == "rescale_tied_logits" and not config.tie_embeddings):
            problems.append(f"{field}={getattr(config, field)!r} (LLaMA has {want!r})")
    activations = config.mlp_activations
    if not config.is_gated or activations[1] != "linear" or activations[0] not in ACTIVATIONS_TO_HF:
        problems.append(f"mlp_activations={activations} (LLaMA has ('ACT', 'linear'), e.g. ('silu', 'linear'))")
    if problems:
        raise ConversionError("cannot export to Hugging Face LLaMA: " + "; ".join(problems))
    hf = {key: value for key, value in (base or {}).items() if key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    hf.update(
        architectures=[ARCHITECTURE], model_type="llama", vocab_size=config.vocab_size,
        hidden_size=config.d_model, intermediate_size=config.d_ff, num_hidden_layers=config.num_decoder_layers,
        num_attention_heads=config.num_heads, num_key_value_heads=config.kv_heads, head_dim=config.head_dim,
        hidden_act=ACTIVATIONS_TO_HF[activations[0]], max_position_embeddings=config.max_length,
        rms_norm_eps=config.norm_epsilon, tie_word_embeddings=config.tie_embeddings,
        attention_bias=False, mlp_bias=False, attention_dropout=config.dropout_rate,
        rope_theta=config.rope_max_wavelength, rope_scaling=_rope_scaling_to_hf(config),
    )
    hf.setdefault("bos_token_id", 1)  # t5x_like's own vocabularies end sequences with id 1
    hf.setdefault("eos_token_id", 1)
    return hf


def _rope_scaling_to_hf(config: TransformerConfig) -> dict | None:
    if config.rope_scaling == "none":
        return None
    scaling = {"rope_type": config.rope_scaling, "factor": config.rope_scaling_factor}
    if config.rope_scaling == "llama3":
        scaling.update(low_freq_factor=config.rope_low_freq_factor, high_freq_factor=config.rope_high_freq_factor,
                       original_max_position_embeddings=config.rope_original_max_length)
    return scaling


# --- parameters -------------------------------------------------------------------------
def parameter_table(config: TransformerConfig) -> list[Entry]:
    d, h, g, k = config.d_model, config.num_heads, config.kv_heads, config.head_dim
    f, v = config.d_ff, config.vocab_size
    table = [Entry("token_embed/embedding", "model.embed_tokens.weight", (v, d), (v, d),
                   because="vocab_size, hidden_size")]
    for i in range(config.num_decoder_layers):
        ours, hf = f"decoder_layers_{i}", f"model.layers.{i}"
        attention, mlp = f"{ours}/self_attention", f"{ours}/mlp"
        table += [
            Entry(f"{ours}/self_attention_norm/scale", f"{hf}.input_layernorm.weight", (d,), (d,), because="hidden_size"),
            Entry(f"{attention}/query/kernel", f"{hf}.self_attn.q_proj.weight", (h * k, d), (d, h, k), True,
                  "num_attention_heads, head_dim, hidden_size"),
            Entry(f"{attention}/key/kernel", f"{hf}.self_attn.k_proj.weight", (g * k, d), (d, g, k), True,
                  "num_key_value_heads, head_dim, hidden_size"),
            Entry(f"{attention}/value/kernel", f"{hf}.self_attn.v_proj.weight", (g * k, d), (d, g, k), True,
                  "num_key_value_heads, head_dim, hidden_size"),
            Entry(f"{attention}/out/kernel", f"{hf}.self_attn.o_proj.weight", (d, h * k), (h, k, d), True,
                  "hidden_size, num_attention_heads, head_dim"),
            Entry(f"{ours}/mlp_norm/scale", f"{hf}.post_attention_layernorm.weight", (d,), (d,), because="hidden_size"),
            Entry(f"{mlp}/wi_0/kernel", f"{hf}.mlp.gate_proj.weight", (f, d), (d, f), True, "intermediate_size"),
            Entry(f"{mlp}/wi_1/kernel", f"{hf}.mlp.up_proj.weight", (f, d), (d, f), True, "intermediate_size"),
            Entry(f"{mlp}/wo/kernel", f"{hf}.mlp.down_proj.weight", (d, f), (f, d), True, "intermediate_size"),
        ]
    table.append(Entry("decoder_norm/scale", "model.norm.weight", (d,), (d,), because="hidden_size"))
    if not config.tie_embeddings:
        table.append(Entry("logits_dense/kernel", "lm_head.weight", (v, d), (d, v), True, "vocab_size, hidden_size"))
    return table


def from_hf(hf: dict, tensors: dict[str, np.ndarray]) -> tuple[TransformerConfig, Params, list[str]]:
    """(config, params, notes) from LLaMA's config.json and its tensors."""
    config = config_from_hf(hf, untied_head=False)
    source = TensorSource(tensors)
    params = params_from_table(parameter_table(config), source)
    if config.tie_embeddings and "lm_head.weight" in source:
        head = source.take("lm_head.weight", (config.vocab_size, config.d_model), "vocab_size, hidden_size")
        if not np.array_equal(head, params["token_embed"]["embedding"]):
            raise ConversionError("weights: lm_head.weight differs from model.embed_tokens.weight although "
                                  "config.json says tie_word_embeddings = true")
    for name in list(tensors):
        if name.endswith(".rotary_emb.inv_freq"):  # older checkpoints store RoPE's frequencies
            source.ignore(name)
    source.check_all_used()
    return config, params, []


def to_hf(config: TransformerConfig, params: Params, base: dict | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json dict, HF tensors) for our params; tied: no lm_head.weight, as HF saves it."""
    return config_to_hf(config, base), tensors_from_table(parameter_table(config), unscan_params(params, config))
