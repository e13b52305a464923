"""Comparison-grid wall time: quick.gin with the code of another revision and with this checkout, back to back.

    python benchmarks/grid.py [--before 54fd3ef] [--train_steps 300] [--after_first] [--one_cell_at_a_time]
                              [--stacked] [--out benchmarks/results/grid.json]

Each side is one fresh `t5x-like compare --gin_file=gin_configs/experiments/quick.gin`
process on a new OUTPUT_DIR (its compilation cache starts empty, as in a first
run), timed from process start to exit. "before" runs the files of the given
revision (`git archive`, into a temporary directory); "after" runs this
checkout (`--after_first`: in the other order, to see load drift). Both use this
interpreter. `--one_cell_at_a_time` adds a third side, this checkout with
`--cells_at_once=1`, whose report's tables (every line of report.md that starts with '|'
or '-') must equal "after"'s: the benchmark fails otherwise. Against "before" the tables
are compared line by line and the lines that differ are listed (changes in float rounding
show there). `--stacked` adds a side, this checkout with each arm's seeds stacked in one
program (`compare.Experiment.stack_seeds=True`), compared with "after" (the sequential seeds)
by verdicts: the difference sentences with their numbers taken out must be equal, and every
arm's shared metric must lie in the other side's 95% interval (with the accelerators' vmapped
form the digits may differ by rounding; `stacked_report_identical` records whether they did
not, as on one CPU device). The machine's load average is recorded before and after each side: on a
shared machine only the ratio of one invocation means much.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def report_tables(output_dir: str) -> list[str]:
    with open(os.path.join(output_dir, "report.md")) as f:
        return [line.rstrip("\n") for line in f if line.startswith(("|", "-"))]


def shared_nll(output_dir: str) -> dict:
    """{arm: its shared-metric interval} from results.json."""
    with open(os.path.join(output_dir, "results.json")) as f:
        return {arm["arm"]: arm.get("shared_nll") for arm in json.load(f)["arms"]}


def verdicts(tables: list[str]) -> list[str]:
    """The difference sentences with their numbers taken out: which differences are noise, their signs."""
    return [re.sub(r"[-+−]?\d[\d.,]*", "#", line) for line in tables if line.startswith("- ")]


def same_verdicts(one: dict, other: dict) -> dict:
    """Whether two sides' reports agree in their verdicts, and every arm's shared metric lies in
    the other side's 95% interval."""
    within = all(a is not None and b is not None and b["low"] <= a["estimate"] <= b["high"]
                 and a["low"] <= b["estimate"] <= a["high"]
                 for a, b in ((one["shared_nll"][arm], other["shared_nll"].get(arm)) for arm in one["shared_nll"]))
    return {"verdicts": verdicts(one["report_tables"]) == verdicts(other["report_tables"]),
            "shared_metric_within_each_others_interval": within}


def timed_compare(code_dir: str, output_dir: str, train_steps: int, log_path: str, extra: tuple = ()) -> dict:
    """Runs quick.gin with the package found in `code_dir`; its wall seconds and load averages."""
    command = [sys.executable, "-m", "t5x_like", "compare", "--gin_file=gin_configs/experiments/quick.gin",
               f"--gin.OUTPUT_DIR={output_dir}", f"--gin.TRAIN_STEPS={train_steps}", *extra]
    env = dict(os.environ, PYTHONPATH=code_dir)
    load_before = load_average()
    cpu_before = _children_cpu_seconds()
    start = time.perf_counter()
    with open(log_path, "w") as log:
        subprocess.run(command, cwd=code_dir, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "cpu_seconds": round(_children_cpu_seconds() - cpu_before, 1),
            "load_before": load_before, "load_after": load_average(), "log": log_path}


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of the finished child processes: the work done, which a loaded
    machine stretches far less than the wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def this_machine(repo: str = REPO) -> dict:
    """training.machine.this_machine() of this host, from `repo`'s package, in a child on the CPU
    backend unless JAX_PLATFORMS says otherwise (the benchmark's own process never loads jax)."""
    code = "import json; from t5x_like.training import machine; print(json.dumps(machine.this_machine()))"
    env = {**os.environ, "PYTHONPATH": repo, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS") or "cpu"}
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else {"error": result.stderr.strip()[-300:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="54fd3ef", help="revision whose code is 'before'")
    parser.add_argument("--train_steps", type=int, default=300)
    parser.add_argument("--after_first", action="store_true", help="time 'after' first")
    parser.add_argument("--one_cell_at_a_time", action="store_true",
                        help="also time this checkout with --cells_at_once=1 (its report must equal 'after')")
    parser.add_argument("--stacked", action="store_true",
                        help="also time this checkout with each arm's seeds stacked (same verdicts as 'after')")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "grid.json"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="grid_bench_")
    before_code = os.path.join(work, "before_code")
    os.makedirs(before_code)
    archive = subprocess.run(["git", "-C", REPO, "archive", args.before], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", before_code], input=archive, check=True)
    sides = {}
    order = [("before", before_code, ()), ("after", REPO, ())]
    if args.after_first:
        order.reverse()
    if args.one_cell_at_a_time:
        order.append(("after_one_cell_at_a_time", REPO, ("--cells_at_once=1",)))
    if args.stacked:
        order.append(("after_stacked", REPO, ("--gin.compare.Experiment.stack_seeds=True",)))
    for name, code, extra in order:
        output_dir = os.path.join(work, f"out_{name}")
        sides[name] = timed_compare(code, output_dir, args.train_steps, os.path.join(work, f"{name}.log"), extra)
        sides[name]["report_tables"] = report_tables(output_dir)
        sides[name]["shared_nll"] = shared_nll(output_dir)
        print(f"{name}: {sides[name]['seconds']} s, {sides[name]['cpu_seconds']} CPU s (load {sides[name]['load_before']} -> "
              f"{sides[name]['load_after']})", flush=True)
    before, after = sides["before"]["report_tables"], sides["after"]["report_tables"]
    changed = [{"before": b, "after": a} for b, a in zip(before, after) if a != b]
    result = {"benchmark": "quick.gin wall time, fresh OUTPUT_DIR each side, back to back",
              "order": ", ".join(name for name, _, _ in order),
              "before_revision": args.before, "train_steps": args.train_steps, "host": platform.node(),
              "cpus": os.cpu_count(), "speedup": round(sides["before"]["seconds"] / sides["after"]["seconds"], 2),
              "cpu_ratio": round(sides["before"]["cpu_seconds"] / sides["after"]["cpu_seconds"], 2),
              "report_lines_changed_since_before": changed, "machine": this_machine(), **sides}
    if args.one_cell_at_a_time:
        sequential = sides["after_one_cell_at_a_time"]
        result["threads_speedup"] = round(sequential["seconds"] / sides["after"]["seconds"], 2)
        result["threads_report_identical"] = sequential["report_tables"] == after
    if args.stacked:
        agree = same_verdicts(sides["after"], sides["after_stacked"])
        result["stacked_speedup_over_sequential_seeds"] = round(sides["after"]["seconds"] /
                                                                sides["after_stacked"]["seconds"], 2)
        result["stacked_speedup_over_before"] = round(sides["before"]["seconds"] / sides["after_stacked"]["seconds"], 2)
        result["stacked_same_verdicts"] = agree
        # on one CPU device the stacked step is each seed's lone step (trainer.stacked_form): same digits
        result["stacked_report_identical"] = sides["after_stacked"]["report_tables"] == after
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"speedup {result['speedup']}x (CPU seconds {result['cpu_ratio']}x); "
          f"{len(changed)} of {len(after)} report table lines differ from before; wrote {args.out}")
    for line in changed:
        print(f"  before: {line['before']}\n  after:  {line['after']}")
    if args.one_cell_at_a_time:
        print(f"cells at once vs one at a time: {result['threads_speedup']}x, "
              f"report identical: {result['threads_report_identical']}")
        if not result["threads_report_identical"]:
            sys.exit("the report with cells at once differs from one cell at a time")
    if args.stacked:
        print(f"seeds stacked: {result['stacked_speedup_over_sequential_seeds']}x over sequential seeds, "
              f"{result['stacked_speedup_over_before']}x over {args.before}; same verdicts: "
              f"{result['stacked_same_verdicts']}; report identical: {result['stacked_report_identical']}")
        if not all(result["stacked_same_verdicts"].values()):
            sys.exit("seeds stacked and seeds one after another do not give the same verdicts")


if __name__ == "__main__":
    main()
