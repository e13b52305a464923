"""Hugging Face directory <-> t5x_like MODEL_DIR (the library behind `t5x-like convert`).

    import_hf(HF_DIR, MODEL_DIR)     # import (T5 1.0/1.1, mT5, GPT-2, LLaMA)
    export_hf(MODEL_DIR, HF_DIR)     # export (config.json + model.safetensors)

Import writes MODEL_DIR/model_config.json and model.gin (the architecture), a checkpoint
MODEL_DIR/checkpoints/0 (params; read it with `training.checkpoints.load_params`)
and MODEL_DIR/hf/ (the original config.json and tokenizer files, which
export copies back and `load_vocabulary` reads). Which converter handles a
directory is decided by config.json's `model_type` (import) or the config
(export, `exporter_for`: encoder_decoder -> T5; decoder_only -> LLaMA with
RoPE, GPT-2 otherwise).
"""
from __future__ import annotations

import json
import os
from types import ModuleType

from t5x_like.interop import common, hf_gpt2, hf_llama, hf_t5
from t5x_like.interop.common import ConversionError, Params
from t5x_like.model.config import TransformerConfig

CONVERTERS: dict[str, ModuleType] = {"t5": hf_t5, "mt5": hf_t5, "gpt2": hf_gpt2, "llama": hf_llama}
EXPORT_LAYOUTS = ("encoder_decoder", "decoder_only")


def converter_for(hf_config: dict) -> ModuleType:
    model_type = hf_config.get("model_type")
    if model_type not in CONVERTERS:
        raise ConversionError(
            f"config.json: model_type = {model_type!r} (architectures {hf_config.get('architectures')}) is "
            f"not supported; supported: t5, mt5 ({hf_t5.ARCHITECTURE}), gpt2 ({hf_gpt2.ARCHITECTURE}) and "
            f"llama ({hf_llama.ARCHITECTURE})")
    return CONVERTERS[model_type]


def exporter_for(config: TransformerConfig) -> ModuleType:
    """The HF architecture a config exports to: T5 for encoder-decoder; for decoder-only, LLaMA
    when it rotates positions (RoPE), GPT-2 otherwise (each refuses what it cannot hold)."""
    if config.layout not in EXPORT_LAYOUTS:
        raise ConversionError(f"cannot export layout={config.layout!r}: Hugging Face export covers "
                              f"{sorted(EXPORT_LAYOUTS)} (T5; GPT-2 or LLaMA)")
    if config.layout == "encoder_decoder":
        return hf_t5
    return hf_llama if config.position == "rope" else hf_gpt2


def from_hf_dir(hf_dir: str) -> tuple[TransformerConfig, Params, list[str]]:
    """(config, params, notes) of a local HF directory; params is a plain dict of float32 arrays."""
    hf_config = common.read_hf_config(hf_dir)
    converter = converter_for(hf_config)
    converter.config_from_hf(hf_config, False)  # fail on config.json before reading any weights
    config, params, notes = converter.from_hf(hf_config, common.read_hf_tensors(hf_dir))
    common.check_params(params, config)
    return config, params, notes


def to_hf_dir(config: TransformerConfig, params: Params, hf_dir: str, base: dict | None = None) -> None:
    """Writes config.json + model.safetensors; `base` is an original HF config to keep token ids from."""
    hf_config, tensors = exporter_for(config).to_hf(config, params, base)
    common.write_hf_dir(hf_dir, hf_config, tensors)


def import_hf(hf_dir: str, model_dir: str) -> TransformerConfig:
    """HF directory -> MODEL_DIR (model_config.json, model.gin, checkpoints/0, hf/)."""
    config, params, notes = from_hf_dir(hf_dir)
    header = "\n".join([f"Converted by `t5x-like convert --from-hf {os.path.abspath(hf_dir)}`.", *notes])
    common.save_model_dir(model_dir, config, params, header)
    hf_copy = os.path.join(model_dir, common.HF_SUBDIR)
    os.makedirs(hf_copy, exist_ok=True)
    with open(os.path.join(hf_copy, common.CONFIG_FILE), "w") as f:
        json.dump(common.read_hf_config(hf_dir), f, indent=2, sort_keys=True)
    common.copy_tokenizer_files(hf_dir, hf_copy)
    return config


def export_hf(model_dir: str, hf_dir: str, config: TransformerConfig | None = None) -> TransformerConfig:
    """MODEL_DIR (its model_config.json unless `config` is given, newest good checkpoint) -> HF directory."""
    config, params = common.load_model_dir(model_dir, config)
    hf_copy = os.path.join(model_dir, common.HF_SUBDIR)
    base = None
    if os.path.exists(os.path.join(hf_copy, common.CONFIG_FILE)):
        base = common.read_hf_config(hf_copy)
    to_hf_dir(config, params, hf_dir, base)
    common.copy_tokenizer_files(hf_copy, hf_dir)
    return config


def load_vocabulary(model_dir: str):
    """The seqio vocabulary of an imported model: SentencePiece (T5) or GPT-2 BPE (needs transformers)."""
    import seqio
    hf_copy = os.path.join(model_dir, common.HF_SUBDIR)
    spiece = os.path.join(hf_copy, "spiece.model")
    if os.path.exists(spiece):
        extra_ids = 100  # HF's T5 tokenizer default, numbered from the top like seqio's
        tokenizer_config = os.path.join(hf_copy, "tokenizer_config.json")
        if os.path.exists(tokenizer_config):
            with open(tokenizer_config) as f:
                extra_ids = int(json.load(f).get("extra_ids", extra_ids))
        return seqio.SentencePieceVocabulary(spiece, extra_ids=extra_ids)
    return hf_gpt2.bpe_vocabulary(hf_copy)
