"""The `t5x-like` console command: a thin dispatcher to one module per subcommand.

Each subcommand is a module of this package that exposes `main(argv) -> int`,
so `t5x-like size ...` and `python -m t5x_like.cli.size ...` are the same
program. Modules are imported lazily: `t5x-like --help` does not import
TensorFlow. cli/ is the only place argv is parsed, and nothing imports it.
"""
from __future__ import annotations

import importlib
import os
import sys

from t5x_like.cli import jax_platforms

# subcommand -> (module, one-line description)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "size": ("t5x_like.cli.size", "parameter counts and FLOPs of gin model configs"),
    "vocab": ("t5x_like.cli.vocab", "train a SentencePiece vocabulary on a task"),
    "train": ("t5x_like.cli.train", "train a model from gin files"),
    "compare": ("t5x_like.cli.compare", "run an architecture-comparison grid and write its report"),
    "eval": ("t5x_like.cli.eval", "evaluate a checkpoint on a task (metrics table + JSON)"),
    "convert": ("t5x_like.cli.convert", "import/export Hugging Face T5 and GPT-2 checkpoints"),
    "analyze-attention": ("t5x_like.cli.analyze_attention", "rank and entropy of every attention head"),
    "compile": ("t5x_like.cli.compile", "compile the train step for a TPU slice here: memory and FLOPs per chip"),
    "harness": ("t5x_like.cli.harness", "lm-evaluation-harness tasks on a checkpoint of any layout"),
}


def usage() -> str:
    lines = ["usage: t5x-like <command> [flags]", "", "commands:"]
    width = max(len(name) for name in SUBCOMMANDS)
    for name, (_, help_text) in sorted(SUBCOMMANDS.items()):
        lines.append(f"  {name.ljust(width)}  {help_text}")
    lines.append("")
    lines.append("`t5x-like <command> --help` describes a command's flags.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"t5x-like: unknown command {name!r}.\n\n{usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter hides our one-line errors
    jax_platforms.choose_jax_platforms()  # before any backend starts: no libtpu noise on CPU/GPU hosts
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
