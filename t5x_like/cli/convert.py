"""`t5x-like convert`: Hugging Face directory <-> t5x_like MODEL_DIR (see docs/interop.md).

    t5x-like convert --from-hf HF_DIR --to MODEL_DIR     # import (T5 1.0/1.1, mT5, GPT-2, LLaMA)
    t5x-like convert --from MODEL_DIR --to-hf HF_DIR     # export (config.json + model.safetensors)

Exit codes: 0 done, 2 bad input: bad flags, or a directory that cannot be converted (an
unsupported config field, a mismatched tensor; one line says why).
"""
from __future__ import annotations

import argparse
import os
import sys

from t5x_like.cli import gin_loading
from t5x_like.interop import convert
from t5x_like.interop.common import ConversionError
from t5x_like.training import checkpoints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="t5x-like convert",
        description="Convert between a local Hugging Face directory and a t5x_like MODEL_DIR.")
    parser.add_argument("--from-hf", dest="from_hf", metavar="HF_DIR", help="import this HF directory")
    parser.add_argument("--to", dest="to", metavar="MODEL_DIR", help="MODEL_DIR to write (with --from-hf)")
    parser.add_argument("--from", dest="from_", metavar="MODEL_DIR", help="export this MODEL_DIR")
    parser.add_argument("--to-hf", dest="to_hf", metavar="HF_DIR", help="HF directory to write (with --from)")
    parser.add_argument("--gin_file", default=None,
                        help="with --from: a model gin file overriding the model saved in MODEL_DIR "
                             "(its model_config.json, written by train and convert)")
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
            config = convert.import_hf(args.from_hf, args.to)
            print(f"wrote {args.to}: {config.layout}, {config.num_encoder_layers}+{config.num_decoder_layers} "
                  f"layers, d_model {config.d_model}, vocab {config.vocab_size}")
        else:
            gin_file = args.gin_file or _model_gin_of_an_older_conversion(args.from_)
            config = gin_loading.model_config_from_file(gin_file, []) if gin_file else None
            config = convert.export_hf(args.from_, args.to_hf, config)
            print(f"wrote {args.to_hf}: {convert.exporter_for(config).ARCHITECTURE}")
    except (ConversionError, gin_loading.GinConfigError, checkpoints.CheckpointError) as e:
        print(f"t5x-like convert: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _model_gin_of_an_older_conversion(model_dir: str) -> str | None:
    """MODEL_DIR/model.gin of a directory converted before model_config.json was written, else None."""
    path = os.path.join(model_dir, gin_loading.CONVERTED_MODEL_GIN)
    if os.path.exists(os.path.join(model_dir, checkpoints.MODEL_CONFIG_FILE)) or not os.path.exists(path):
        return None
    return path
