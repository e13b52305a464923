"""`t5x-like compile`: will this run fit on the pod? Compile its train step for a TPU slice, here.

    t5x-like compile --topology=v5p-128 \\
      --gin_file=gin_configs/models/encoder_decoder/xl.gin \\
      --gin_file=gin_configs/runs/pretrain.gin \\
      --gin.MESH_SHAPE='(1,-1,1)' --gin.BATCH_SIZE=256 \\
      [--gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 114}"] [--step_time=1.9] [--stack_seeds=4]

The run's real train step (and eval step) — the Trainer a `t5x-like train`
with the same flags would build: mesh, logical-axis rules, remat and scan
settings, batch, microbatches, lengths — is compiled by XLA's TPU compiler for
the slice's compile-only devices (libtpu, no TPU needed; see
training/aot.py), and the per-chip memory and FLOPs are printed. Nothing is
written (unless --json=PATH asks for the report as JSON) and no MODEL_DIR is
needed. --topology takes a slice name (v4-8, v4-32, v5e-4 ... v5e-64, v5p-8,
v5p-128, v6e-8, ...) or a raw topology (v5e:2x2, v5:4x4x4). TASK_FEATURE_LENGTHS defaults to inputs=512,
targets=512 when no file binds it. --step_time=T prints the MFU that a
measured step time of T seconds means. --stack_seeds=S compiles the step that
trains S seeds of the run as one program (a grid's `stack_seeds`,
training/stacked.py) instead: the figures are the S seeds' together, the seed
axis split over gcd(S, data axis) groups of the mesh's data axis (S seeds on a
data axis of S chips: one seed per chip group). Do 4 seeds fit on this slice at once?

Exit codes (each failure is one line on stderr):
  0    it compiles: it fits in HBM (the table says by how much)
  2    bad configuration or arguments (gin, unknown slice, a mesh or batch that does not divide,
       a --stack_seeds the mesh would not stack)
  5    it does not fit: XLA ran out of HBM; the line says by how much and which knobs to turn
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from t5x_like.cli import gin_loading, jax_platforms
from t5x_like.training import aot

EXIT_BAD_CONFIG, EXIT_DOES_NOT_FIT = 2, 5
# Macros a compile does not use, bound to placeholders when no file or flag binds them.
DEFAULT_MACROS = {"MODEL_DIR": "'/nonexistent/t5x-like-compile'", "MIXTURE_OR_TASK_NAME": "'compile_only'",
                  "TRAIN_STEPS": "0", "TASK_FEATURE_LENGTHS": "{'inputs': 512, 'targets': 512}"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t5x-like compile", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=__doc__.split("\n\n", 1)[0] + "\n\n" + __doc__.split("\n\n", 2)[2],
                                epilog="gin: --gin_file=PATH (repeatable; a model file and a run file such as "
                                       "gin_configs/runs/pretrain.gin), --gin.NAME=VALUE (repeatable). "
                                       "See docs/scale.md.")
    p.add_argument("--topology", default=None, help="TPU slice: v5p-128, v5e-64, v4-32, ... or v5e:2x2")
    p.add_argument("--skip_eval", action="store_true", help="compile only the train step")
    p.add_argument("--step_time", type=float, default=None, help="a measured step time (s): print its MFU")
    p.add_argument("--stack_seeds", type=int, default=1,
                   help="compile the step of this many seeds trained as one program (their memory together)")
    p.add_argument("--json", default=None, help="also write the report as JSON to this path (else nothing is written)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _parser().parse_args(["--help"])  # prints usage and exits
    jax_platforms.choose_jax_platforms()  # `python -m t5x_like.cli.compile` skips cli/main
    try:
        config, _, rest = gin_loading.train_config_from_args(argv, defaults=DEFAULT_MACROS)
    except gin_loading.GinConfigError as e:
        print(f"t5x-like compile: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    flags, unknown = _parser().parse_known_args(rest)
    if unknown or not flags.topology:
        problem = f"unknown arguments {unknown}" if unknown else "--topology is required (e.g. --topology=v5p-128)"
        print(f"t5x-like compile: {problem}; see t5x-like compile --help", file=sys.stderr)
        return EXIT_BAD_CONFIG
    logging.basicConfig(level=logging.INFO if flags.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = aot.compile_train_step(config, flags.topology, eval_step=not flags.skip_eval,
                                        stack_seeds=flags.stack_seeds)
    except aot.DoesNotFitError as e:
        print(f"t5x-like compile: {e}", file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    except (ValueError, TypeError) as e:  # unknown slice, mesh or batch that does not divide
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"t5x-like compile: {message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(report.table(flags.step_time))
    if flags.json:
        with open(flags.json, "w") as f:
            json.dump(report.as_dict(), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
