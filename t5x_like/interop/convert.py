"""`t5x-like convert`: Hugging Face directory <-> t5x_like MODEL_DIR.

    t5x-like convert --from-hf HF_DIR --to MODEL_DIR     # import (T5 1.0/1.1, mT5, GPT-2)
    t5x-like convert --from MODEL_DIR --to-hf HF_DIR     # export (config.json + model.safetensors)

Import writes MODEL_DIR/model.gin (the architecture), an orbax checkpoint
MODEL_DIR/checkpoints/0 (params; read it with `checkpoints.restore_params`)
and MODEL_DIR/hf/ (the original config.json and tokenizer files, which
export copies back and `load_vocabulary` reads). Which converter handles a
directory is decided by config.json's `model_type` (import) or the config's
layout (export: encoder_decoder -> T5, decoder_only -> GPT-2).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from types import ModuleType

from t5x_like.config import TransformerConfig
from t5x_like.interop import common, hf_gpt2, hf_t5
from t5x_like.interop.common import ConversionError, Params

CONVERTERS: dict[str, ModuleType] = {"t5": hf_t5, "mt5": hf_t5, "gpt2": hf_gpt2}
EXPORTERS: dict[str, ModuleType] = {"encoder_decoder": hf_t5, "decoder_only": hf_gpt2}


def converter_for(hf_config: dict) -> ModuleType:
    model_type = hf_config.get("model_type")
    if model_type not in CONVERTERS:
        raise ConversionError(
            f"config.json: model_type = {model_type!r} (architectures {hf_config.get('architectures')}) is "
            f"not supported; supported: t5, mt5 ({hf_t5.ARCHITECTURE}) and gpt2 ({hf_gpt2.ARCHITECTURE})")
    return CONVERTERS[model_type]


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
    if config.layout not in EXPORTERS:
        raise ConversionError(f"cannot export layout={config.layout!r}: Hugging Face export covers "
                              f"{sorted(EXPORTERS)} (T5, GPT-2)")
    hf_config, tensors = EXPORTERS[config.layout].to_hf(config, params, base)
    common.write_hf_dir(hf_dir, hf_config, tensors)


def import_hf(hf_dir: str, model_dir: str) -> TransformerConfig:
    """HF directory -> MODEL_DIR (model.gin, checkpoints/0, hf/)."""
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
    """MODEL_DIR (model.gin unless `config` is given, newest checkpoint) -> HF directory."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="t5x-like convert",
        description="Convert between a local Hugging Face directory and a t5x_like MODEL_DIR.")
    parser.add_argument("--from-hf", dest="from_hf", metavar="HF_DIR", help="import this HF directory")
    parser.add_argument("--to", dest="to", metavar="MODEL_DIR", help="MODEL_DIR to write (with --from-hf)")
    parser.add_argument("--from", dest="from_", metavar="MODEL_DIR", help="export this MODEL_DIR")
    parser.add_argument("--to-hf", dest="to_hf", metavar="HF_DIR", help="HF directory to write (with --from)")
    parser.add_argument("--gin_file", default=None,
                        help="with --from: the model gin file (default MODEL_DIR/model.gin)")
    args = parser.parse_args(argv)
    importing = bool(args.from_hf or args.to)
    exporting = bool(args.from_ or args.to_hf)
    if importing == exporting or (importing and not (args.from_hf and args.to)) or (
            exporting and not (args.from_ and args.to_hf)):
        parser.print_usage(sys.stderr)
        print("t5x-like convert: give either --from-hf HF_DIR --to MODEL_DIR or --from MODEL_DIR --to-hf HF_DIR",
              file=sys.stderr)
        return 2
    try:
        if importing:
            config = import_hf(args.from_hf, args.to)
            print(f"wrote {args.to}: {config.layout}, {config.num_encoder_layers}+{config.num_decoder_layers} "
                  f"layers, d_model {config.d_model}, vocab {config.vocab_size}")
        else:
            config = common.config_from_gin(args.gin_file) if args.gin_file else None
            config = export_hf(args.from_, args.to_hf, config)
            print(f"wrote {args.to_hf}: {EXPORTERS[config.layout].ARCHITECTURE}")
    except ConversionError as e:
        print(f"t5x-like convert: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
