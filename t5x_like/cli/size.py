"""`t5x-like size`: parameter counts and FLOPs of model gin files, side by side.

    t5x-like size --gin_file=gin_configs/models/decoder_only/tiny.gin \
                  --gin_file=gin_configs/models/encoder_decoder/tiny.gin \
                  [--inputs_length=256 --targets_length=256] [--json=sizes.json]

Each --gin_file is one model (parsed alone, with any --gin.X=V bindings
applied to every file); nothing is initialized: see model/sizing.py.
"""
from __future__ import annotations

import argparse
import json
import sys

from t5x_like.cli import gin_loading
from t5x_like.model import sizing

COLUMNS = (("gin file", "file"), ("layout", "layout"), ("layers", "layers"), ("params", "params"),
           ("non-emb params", "non_embedding_params"), ("train FLOPs/example", "train_flops_per_example"),
           ("decode FLOPs/token", "decode_flops_per_token"))


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3e}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def sizes_table(rows: list[dict]) -> str:
    cells = [[title for title, _ in COLUMNS]] + [[_format(row[key]) for _, key in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    files, bindings, rest = gin_loading.split_gin_args(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="t5x-like size", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs_length", type=int, default=256)
    parser.add_argument("--targets_length", type=int, default=256)
    parser.add_argument("--json", help="also write the table as JSON to this path")
    args = parser.parse_args(rest)
    if not files:
        parser.error("give at least one --gin_file=gin_configs/models/<layout>/<size>.gin")
    rows = []
    for gin_file in files:
        try:
            config = gin_loading.model_config_from_file(gin_file, bindings)
        except ValueError as e:
            print(f"t5x-like size: {gin_file}: {e}", file=sys.stderr)
            return 2
        rows.append({"file": gin_file, **sizing.summary(config, args.inputs_length, args.targets_length)})
    print(f"inputs_length={args.inputs_length} targets_length={args.targets_length}")
    print(sizes_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"inputs_length": args.inputs_length, "targets_length": args.targets_length,
                       "models": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
