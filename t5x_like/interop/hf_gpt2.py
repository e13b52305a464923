"""Hugging Face `GPT2LMHeadModel` <-> t5x_like decoder-only, and a GPT-2 BPE vocabulary.

GPT-2 stores its projections as `Conv1D`, whose weight is [in, out] (the
transpose of torch `Linear`), and fuses q, k and v into one `c_attn`
[D, 3D]. Import splits `c_attn` into q/k/v; export concatenates them again.
One table (`parameter_table`) lists every parameter once.

    wte.weight [V, D]                     token_embed/embedding [V, D]
    wpe.weight [P, D]                     decoder_position_embed/embedding [P, D] (max_length = n_positions)
    h.{i}.ln_1.{weight,bias}              decoder_layers_{i}/self_attention_norm/{scale,bias}
    h.{i}.attn.c_attn.weight [D, 3D]      .../self_attention/{query,key,value}/kernel [D, H, K]
    h.{i}.attn.c_attn.bias [3D]           .../self_attention/{query,key,value}/bias [H, K]
    h.{i}.attn.c_proj.{weight,bias}       .../self_attention/out/{kernel [H, K, D], bias [D]}
    h.{i}.ln_2.{weight,bias}              decoder_layers_{i}/mlp_norm/{scale,bias}
    h.{i}.mlp.c_fc.{weight [D, F], bias}  .../mlp/wi/{kernel, bias}
    h.{i}.mlp.c_proj.{weight [F, D], bias} .../mlp/wo/{kernel, bias}
    ln_f.{weight,bias}                    decoder_norm/{scale,bias}
    lm_head.weight [V, D] (untied only)   logits_dense/kernel [D, V] (its bias: zeros)

Checkpoints saved by `GPT2LMHeadModel` prefix names with `transformer.`;
the original OpenAI ones do not; both are read.

Padding caveat: t5x_like treats id 0 as padding, and in GPT-2's BPE id 0 is
"!". Scoring and training through `Model` read padding off the
target ids, so text containing "!" would be masked there; calling the
module with an explicit `decoder_valid` (as the parity tests do) is exact.
"""
from __future__ import annotations

import os

import numpy as np

from t5x_like.interop.common import (
    ACTIVATIONS_TO_HF,
    ConversionError,
    Entry,
    Params,
    TensorSource,
    activation_from_hf,
    checked_tensor,
    config_field,
    params_from_table,
    tensors_from_table,
    unscan_params,
)
from t5x_like.model import config as config_lib
from t5x_like.model.config import TransformerConfig

MODEL_TYPES = ("gpt2",)
ARCHITECTURE = "GPT2LMHeadModel"
PREFIX = "transformer."
_QKV = ("q", "k", "v")


# --- config ---------------------------------------------------------------------
def config_from_hf(hf: dict, untied_head: bool) -> TransformerConfig:
    d_model = config_field(hf, "n_embd", int)
    num_heads = config_field(hf, "n_head", int)
    if d_model % num_heads:
        raise ConversionError(f"config.json: n_embd = {d_model} is not divisible by n_head = {num_heads}")
    for field in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if hf.get(field):
            raise ConversionError(f"config.json: {field} = true is not supported")
    return config_lib.gpt2(
        vocab_size=config_field(hf, "vocab_size", int),
        d_model=d_model,
        num_heads=num_heads,
        head_dim=d_model // num_heads,
        d_ff=config_field(hf, "n_inner", int, 4 * d_model),
        num_decoder_layers=config_field(hf, "n_layer", int),
        max_length=config_field(hf, "n_positions", int, 1024),
        norm_epsilon=config_field(hf, "layer_norm_epsilon", float, 1e-5),
        mlp_activations=(activation_from_hf(config_field(hf, "activation_function", str, "gelu_new"),
                                            "activation_function"),),
        scale_attention_by_head_dim=bool(config_field(hf, "scale_attn_weights", bool, True)),
        dropout_rate=config_field(hf, "resid_pdrop", float, 0.1),
        tie_embeddings=not untied_head,
    )


def config_to_hf(config: TransformerConfig, base: dict | None = None) -> dict:
    problems = []
    if config.layout != "decoder_only":
        problems.append(f"layout={config.layout!r} (GPT-2 is decoder_only)")
    for field, want in (("norm", "layer"), ("norm_position", "pre"), ("position", "learned"), ("use_bias", True)):
        if getattr(config, field) != want:
            problems.append(f"{field}={getattr(config, field)!r} (GPT-2 has {want!r})")
    if config.kv_heads != config.num_heads:
        problems.append(f"num_kv_heads={config.num_kv_heads} (GPT-2 has multi-head attention)")
    if config.num_heads * config.head_dim != config.d_model:
        problems.append(f"num_heads*head_dim = {config.num_heads * config.head_dim} != d_model = {config.d_model}")
    if config.is_gated or config.mlp_activations[0] not in ACTIVATIONS_TO_HF:
        problems.append(f"mlp_activations={config.mlp_activations} (GPT-2 has one of {sorted(ACTIVATIONS_TO_HF)})")
    if config.tie_embeddings and config.rescale_tied_logits:
        problems.append("rescale_tied_logits=True (GPT-2 does not scale its logits)")
    if problems:
        raise ConversionError("cannot export to Hugging Face GPT-2: " + "; ".join(problems))
    hf = {key: value for key, value in (base or {}).items()
          if key in ("bos_token_id", "eos_token_id", "pad_token_id", "task_specific_params")}
    hf.update(
        architectures=[ARCHITECTURE], model_type="gpt2", vocab_size=config.vocab_size,
        n_embd=config.d_model, n_head=config.num_heads, n_layer=config.num_decoder_layers,
        n_positions=config.max_length, n_inner=config.d_ff,
        activation_function=ACTIVATIONS_TO_HF[config.mlp_activations[0]],
        layer_norm_epsilon=config.norm_epsilon, scale_attn_weights=config.scale_attention_by_head_dim,
        resid_pdrop=config.dropout_rate, embd_pdrop=config.dropout_rate, attn_pdrop=config.dropout_rate,
        tie_word_embeddings=config.tie_embeddings,
    )
    # t5x_like's own vocabularies end sequences with id 1.
    hf.setdefault("bos_token_id", 1)
    hf.setdefault("eos_token_id", 1)
    return hf


# --- parameters -------------------------------------------------------------------------
def parameter_table(config: TransformerConfig) -> list[Entry]:
    """Every parameter (but an untied head's bias) and its HF tensor; q/k/v as split virtual tensors."""
    d, h, k, f, v = config.d_model, config.num_heads, config.head_dim, config.d_ff, config.vocab_size
    table = [Entry("token_embed/embedding", "wte.weight", (v, d), (v, d), because="vocab_size, n_embd"),
             Entry("decoder_position_embed/embedding", "wpe.weight", (config.max_length, d),
                   (config.max_length, d), because="n_positions, n_embd")]

    def norm(ours: str, hf: str) -> list[Entry]:
        return [Entry(f"{ours}/scale", f"{hf}.weight", (d,), (d,), because="n_embd"),
                Entry(f"{ours}/bias", f"{hf}.bias", (d,), (d,), because="n_embd")]

    for i in range(config.num_decoder_layers):
        ours, hf = f"decoder_layers_{i}", f"h.{i}"
        table += norm(f"{ours}/self_attention_norm", f"{hf}.ln_1")
        for name, part in zip(("query", "key", "value"), _QKV):
            table += [Entry(f"{ours}/self_attention/{name}/kernel", f"{hf}.attn.{part}.weight", (d, d), (d, h, k)),
                      Entry(f"{ours}/self_attention/{name}/bias", f"{hf}.attn.{part}.bias", (d,), (h, k))]
        table += [Entry(f"{ours}/self_attention/out/kernel", f"{hf}.attn.c_proj.weight", (d, d), (h, k, d),
                        because="n_embd"),
                  Entry(f"{ours}/self_attention/out/bias", f"{hf}.attn.c_proj.bias", (d,), (d,), because="n_embd")]
        table += norm(f"{ours}/mlp_norm", f"{hf}.ln_2")
        table += [Entry(f"{ours}/mlp/wi/kernel", f"{hf}.mlp.c_fc.weight", (d, f), (d, f), because="n_embd, n_inner"),
                  Entry(f"{ours}/mlp/wi/bias", f"{hf}.mlp.c_fc.bias", (f,), (f,), because="n_inner"),
                  Entry(f"{ours}/mlp/wo/kernel", f"{hf}.mlp.c_proj.weight", (f, d), (f, d), because="n_inner, n_embd"),
                  Entry(f"{ours}/mlp/wo/bias", f"{hf}.mlp.c_proj.bias", (d,), (d,), because="n_embd")]
    table += norm("decoder_norm", "ln_f")
    if not config.tie_embeddings:
        table.append(Entry("logits_dense/kernel", "lm_head.weight", (v, d), (d, v), True, "vocab_size, n_embd"))
    return table


def _strip_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k.removeprefix(PREFIX): val for k, val in tensors.items()}


def has_untied_head(tensors: dict[str, np.ndarray]) -> bool:
    tensors = _strip_prefix(tensors)
    head, wte = tensors.get("lm_head.weight"), tensors.get("wte.weight")
    return head is not None and not (wte is not None and head.shape == wte.shape and np.array_equal(head, wte))


def from_hf(hf: dict, tensors: dict[str, np.ndarray]) -> tuple[TransformerConfig, Params, list[str]]:
    """(config, params, notes) from GPT-2's config.json and its tensors."""
    config = config_from_hf(hf, has_untied_head(tensors))
    tensors = _strip_prefix(tensors)
    d = config.d_model
    for i in range(config.num_decoder_layers):  # split the fused q/k/v into the table's virtual tensors
        for suffix, shape in (("weight", (d, 3 * d)), ("bias", (3 * d,))):
            name = f"h.{i}.attn.c_attn.{suffix}"
            fused = checked_tensor(tensors, name, shape, "n_embd (q, k, v fused)")
            for part, piece in zip(_QKV, np.split(fused, 3, axis=-1)):
                tensors[f"h.{i}.attn.{part}.{suffix}"] = piece
            del tensors[name]
    source = TensorSource(tensors)
    params = params_from_table(parameter_table(config), source)
    if not config.tie_embeddings:
        params["logits_dense"]["bias"] = np.zeros((config.vocab_size,), np.float32)
    elif "lm_head.weight" in source:
        source.ignore("lm_head.weight")  # equal to wte.weight
    for name in list(tensors):
        # Old checkpoints store the causal-mask buffers.
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            source.ignore(name)
    source.check_all_used()
    return config, params, []


def to_hf(config: TransformerConfig, params: Params, base: dict | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    hf = config_to_hf(config, base)
    params = unscan_params(params, config)
    if not config.tie_embeddings and np.any(np.asarray(params["logits_dense"]["bias"])):
        raise ConversionError("cannot export to Hugging Face GPT-2: logits_dense/bias is nonzero "
                              "(GPT-2's lm_head has no bias)")
    tensors = tensors_from_table(parameter_table(config), params)
    for i in range(config.num_decoder_layers):
        for suffix in ("weight", "bias"):
            parts = [tensors.pop(f"h.{i}.attn.{part}.{suffix}") for part in _QKV]
            tensors[f"h.{i}.attn.c_attn.{suffix}"] = np.concatenate(parts, axis=-1)
    return hf, {PREFIX + name if not name.startswith("lm_head") else name: x for name, x in tensors.items()}


# --- vocabulary -------------------------------------------------------------------------
def bpe_vocabulary(tokenizer_dir: str):
    """A seqio.Vocabulary over the GPT-2 BPE files in `tokenizer_dir` (needs transformers)."""
    import seqio
    import tensorflow as tf

    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConversionError("the GPT-2 BPE vocabulary needs transformers (pip install t5x_like[hf])") from None
    if not any(os.path.exists(os.path.join(tokenizer_dir, n)) for n in ("tokenizer.json", "vocab.json")):
        raise ConversionError(f"{tokenizer_dir!r} has no GPT-2 tokenizer files (tokenizer.json or vocab.json)")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)

    class GPT2BPEVocabulary(seqio.Vocabulary):
        """GPT-2's byte-level BPE; eos = `<|endoftext|>`; no extra ids."""

        def __init__(self):
            super().__init__(extra_ids=0)
            self.tokenizer = tokenizer

        @property
        def eos_id(self) -> int | None:
            return tokenizer.eos_token_id

        @property
        def unk_id(self) -> int | None:
            return tokenizer.unk_token_id

        @property
        def _base_vocab_size(self) -> int:
            return len(tokenizer)

        def _encode(self, s: str) -> list[int]:
            return tokenizer.encode(s, add_special_tokens=False)

        def _decode(self, ids) -> str:
            return tokenizer.decode([int(i) for i in ids])

        def _encode_tf(self, s):
            def encode(text):
                return np.asarray(self._encode(text.item().decode("utf-8")), np.int32)
            ids = tf.numpy_function(encode, [s], tf.int32)
            ids.set_shape([None])
            return ids

        def _decode_tf(self, ids):
            def decode(array):
                return np.asarray(self._decode(array.tolist()).encode("utf-8"), dtype=object)  # scalar bytes
            text = tf.numpy_function(decode, [ids], tf.string)
            text.set_shape([])
            return text

        def __eq__(self, other) -> bool:
            return isinstance(other, GPT2BPEVocabulary) and other.tokenizer.name_or_path == tokenizer.name_or_path

    return GPT2BPEVocabulary()
