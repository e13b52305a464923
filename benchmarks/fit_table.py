"""Which scale configs fit on which TPU slice: `t5x-like compile` for each model x slice.

    python benchmarks/fit_table.py [--models decoder_only/llama_1b,...] [--slices v4-32,v5e-64,v5p-128]
                                   [--cells MODEL@SLICE,...] [--keep]
                                   [--per_chip_batch 4] [--timeout_s 600] [--budget_s 3600]

Each cell runs `python -m t5x_like compile --topology=SLICE --gin_file=MODEL
--gin_file=gin_configs/runs/pretrain.gin` in its own process (full FSDP mesh
(1,-1,1), global batch = per_chip_batch x chips, inputs 512 + targets 512,
train step only) with --json, and the table is made from those reports:
benchmarks/results/fit_table.{md,json}. A cell that does not fit records the
one-line error; a cell past --timeout_s, or not started within --budget_s,
is recorded as not measured. No TPU is needed (libtpu compiles for the slice).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from grid import this_machine  # noqa: E402  (benchmarks/grid.py: stdlib only)
RESULTS = os.path.join(REPO, "benchmarks", "results")
MODELS = ("decoder_only/llama_1b", "encoder_decoder/large", "encoder_decoder/xl", "decoder_only/llama_8b",
          "encoder_decoder/xxl")
SLICES = ("v5p-128", "v5e-64", "v4-32")
CHIPS = {"v5p-128": 64, "v5e-64": 64, "v4-32": 16}
LENGTHS = "{'inputs': 512, 'targets': 512}"


def compile_cell(model: str, tpu_slice: str, per_chip_batch: int, timeout_s: int, mesh: str = "(1,-1,1)") -> dict:
    batch = per_chip_batch * CHIPS[tpu_slice]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        command = [sys.executable, "-m", "t5x_like", "compile", f"--topology={tpu_slice}",
                   f"--gin_file=gin_configs/models/{model}.gin", "--gin_file=gin_configs/runs/pretrain.gin",
                   f"--gin.MESH_SHAPE={mesh}", f"--gin.BATCH_SIZE={batch}",
                   f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--skip_eval", f"--json={out}"]
        env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # the command picks cpu itself
        row = {"model": model, "slice": tpu_slice, "batch_size": batch, "mesh_shape": mesh}
        started = time.perf_counter()
        try:
            result = subprocess.run(command, cwd=REPO, env={**env, "PYTHONPATH": REPO}, capture_output=True,
                                    text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {**row, "status": "not measured", "detail": f"compile ran past {timeout_s} s on this CPU"}
        row["wall_seconds"] = round(time.perf_counter() - started, 1)
        if result.returncode == 0:
            with open(out) as f:
                return {**row, "status": "fits", "report": json.load(f)}
        lines = [line for line in result.stderr.splitlines() if line.startswith("t5x-like compile:")]
        status = "does not fit" if result.returncode == 5 else f"error (exit {result.returncode})"
        return {**row, "status": status, "detail": lines[-1] if lines else result.stderr.strip()[-300:]}


def markdown(rows: list[dict], per_chip_batch: int) -> str:
    gib = lambda b: f"{b / 2**30:.1f}"  # noqa: E731
    lines = [f"Mesh (data, fsdp, tensor) = (1, -1, 1) (full FSDP) unless the row says; global batch = "
             f"{per_chip_batch} x chips; "
             "inputs 512 + targets 512 tokens; Adafactor; bf16 compute, scanned layers, full remat "
             "(the model files' defaults); train step. Memory in GiB per chip.", "",
             "| model | params | slice | mesh | global batch | fits | params | opt state | temporaries "
             "| total / HBM | step at 50% MFU | compile (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        r = row.get("report")
        if r:
            lines.append(f"| {row['model']} | {r['params'] / 1e9:.2f}B | {row['slice']} | {row['mesh_shape']} "
                         f"| {row['batch_size']} | yes "
                         f"| {gib(r['params_bytes'])} | {gib(r['opt_state_bytes'])} | {gib(r['temp_bytes'])} "
                         f"| {gib(r['total_bytes'])} / {gib(r['hbm_bytes'])} | {r['step_seconds_at_50_mfu']:.2f} s "
                         f"| {r['compile_seconds']:.0f} |")
        else:
            lines.append(f"| {row['model']} | | {row['slice']} | {row.get('mesh_shape', '')} | {row['batch_size']} "
                         f"| {row['status']} "
                         f"| | | | | | {row.get('detail', '')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--slices", default=",".join(SLICES))
    p.add_argument("--per_chip_batch", type=int, default=4)
    p.add_argument("--timeout_s", type=int, default=600)
    p.add_argument("--budget_s", type=int, default=3600, help="start no cell after this many seconds")
    p.add_argument("--cells", default="", help="MODEL@SLICE[@MESH];... in this order (instead of models x slices)")
    p.add_argument("--keep", action="store_true", help="keep the rows of cells already in the JSON (measured ones)")
    p.add_argument("--out", default=os.path.join(RESULTS, "fit_table"))
    args = p.parse_args()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    host = this_machine(REPO)
    separator = ";" if ";" in args.cells else ","  # a mesh such as (64,1,1) has commas: separate cells with ;
    cells = ([tuple(c.split("@")) for c in args.cells.split(separator)] if args.cells else
             [(m, s) for m in args.models.split(",") for s in args.slices.split(",")])
    rows, started = [], time.perf_counter()
    if args.keep and os.path.exists(args.out + ".json"):
        with open(args.out + ".json") as f:
            rows = [r for r in json.load(f)["rows"] if r["status"] != "not measured"]
        done = {(r["model"], r["slice"], r.get("mesh_shape", "(1,-1,1)")) for r in rows}
        cells = [c for c in cells if (*c[:2], c[2] if len(c) > 2 else "(1,-1,1)") not in done]
    for model, tpu_slice, *mesh in cells:
        if time.perf_counter() - started > args.budget_s:
            row = {"model": model, "slice": tpu_slice, "batch_size": args.per_chip_batch * CHIPS[tpu_slice],
                   "status": "not measured", "detail": f"past the table's {args.budget_s} s budget"}
        else:
            row = compile_cell(model, tpu_slice, args.per_chip_batch, args.timeout_s, *mesh)
        rows.append(row)
        print(f"{model} @ {tpu_slice}: {row['status']} {row.get('wall_seconds', '')}", flush=True)
        with open(args.out + ".json", "w") as f:
            json.dump({"per_chip_batch": args.per_chip_batch, "lengths": LENGTHS, "rows": rows, "host": host}, f,
                      indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(markdown(rows, args.per_chip_batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
