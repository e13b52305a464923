"""`t5x-like convert`: Hugging Face directory <-> t5x_like MODEL_DIR (see docs/interop.md).

    t5x-like convert --from-hf HF_DIR --to MODEL_DIR     # import (T5 1.0/1.1, mT5, GPT-2)
    t5x-like convert --from MODEL_DIR --to-hf HF_DIR     # export (config.json + model.safetensors)

Exit codes: 0 done, 1 the directory cannot be converted (one line says why), 2 bad flags.
"""
from __future__ import annotations

import argparse
import sys

from t5x_like.cli import gin_loading
from t5x_like.interop import convert
from t5x_like.interop.common import ConversionError


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
            config = convert.import_hf(args.from_hf, args.to)
            print(f"wrote {args.to}: {config.layout}, {config.num_encoder_layers}+{config.num_decoder_layers} "
                  f"layers, d_model {config.d_model}, vocab {config.vocab_size}")
        else:
            config = gin_loading.model_config_from_file(args.gin_file, []) if args.gin_file else None
            config = convert.export_hf(args.from_, args.to_hf, config)
            print(f"wrote {args.to_hf}: {convert.EXPORTERS[config.layout].ARCHITECTURE}")
    except (ConversionError, gin_loading.GinConfigError) as e:
        print(f"t5x-like convert: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
