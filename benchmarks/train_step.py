"""Train-step throughput: decoder-only, prefix-LM and encoder-decoder at ~20M params.

    python benchmarks/train_step.py --out=/tmp/bench.json
    python benchmarks/train_step.py --hf-python=/work/venv-hf/bin/python   # + HF GPT-2 side by side
    python benchmarks/train_step.py --attention-kernels=einsum,blockwise --block-sizes=64,128,256

Each layout uses its gin_configs/models/<layout>/small.gin (d_model 512, 6
layers per stack), batch 8, AdamW, fp32, 512 positions per example:
decoder-only targets 512; prefix-LM inputs 256 + targets 256 (one stack over
512); encoder-decoder inputs 256 / targets 256 (two stacks, 256 each).
Reported: tokens/s (positions processed per second, all features), model
FLOP/s (sizing.train_flops_per_example: 3 x forward, attention included),
the f32 matmul FLOP/s ceiling of the machine, and MFU against it.

--attention-kernels times several attention kernels per layout (the blockwise one
at each --block-sizes), their steps interleaved in one process, and reports each
one's tok/s over the first's.

Hugging Face GPT-2 (PyTorch, AdamW, same width/depth/length/batch) runs when
torch and transformers import here, or in the interpreter given by
--hf-python (a separate venv; they are not dependencies of t5x_like).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = {
    "decoder_only": {"targets": 512},
    "prefix_lm": {"inputs": 256, "targets": 256},
    "encoder_decoder": {"inputs": 256, "targets": 256},
}


def kernel_variants(kernels: str, block_sizes: str) -> dict[str, dict]:
    """'einsum,blockwise' x '64,128' -> {'einsum': {...}, 'blockwise_64': {...}, ...}: config overrides."""
    variants = {}
    for kernel in kernels.split(","):
        if kernel != "blockwise":
            variants[kernel] = {"attention_kernel": kernel}
            continue
        for block in map(int, block_sizes.split(",")):
            variants[f"blockwise_{block}"] = {"attention_kernel": "blockwise", "attention_block_q": block,
                                              "attention_block_k": block}
    return variants


def bench_layout(layout: str, lengths: dict[str, int], batch_size: int, steps: int,
                 variants: dict[str, dict]) -> list[dict]:
    """One result per kernel variant; their timed steps alternate, so load swings hit all alike."""
    import jax

    from t5x_like.cli import gin_loading
    from t5x_like.data.sources import DataRequest, synthetic_batches
    from t5x_like.model import model as models
    from t5x_like.model import sizing
    from t5x_like.training import optimizers, partitioning
    from t5x_like.training.trainer import LossOptions, Trainer

    base_config = gin_loading.model_config_from_file(f"gin_configs/models/{layout}/small.gin", [])
    mesh = partitioning.make_mesh((-1, 1, 1))
    runs = {}
    for name, overrides in variants.items():
        model_config = base_config.replace(**overrides)
        model = models.Model(model_config)
        trainer = Trainer(model, optimizers.adamw(learning_rate=1e-4), mesh, partitioning.logical_axis_rules(),
                          batch_size, lengths, loss=LossOptions(z_loss=0.0))
        state = trainer.init_state()
        request = DataRequest("synthetic", lengths, "train", batch_size, False, 0, False)
        batches = synthetic_batches(request, model)
        batch = trainer.global_batch(next(batches))
        start = time.perf_counter()
        state, metrics = trainer.train_step(state, batch)
        jax.block_until_ready(metrics)
        runs[name] = {"trainer": trainer, "state": state, "batches": batches, "config": model_config,
                      "compile_s": time.perf_counter() - start, "times": []}
    for _ in range(steps):
        for run in runs.values():
            batch = run["trainer"].global_batch(next(run["batches"]))
            start = time.perf_counter()
            run["state"], run["metrics"] = run["trainer"].train_step(run["state"], batch)
            jax.block_until_ready(run["metrics"])
            run["times"].append(time.perf_counter() - start)
    results = []
    positions = batch_size * sum(lengths.values())
    for name, run in runs.items():
        step_s = sorted(run["times"])[len(run["times"]) // 2]
        params = sum(x.size for x in jax.tree.leaves(run["state"].params))
        flops = sizing.train_flops_per_example(run["config"], lengths.get("inputs", 0), lengths["targets"])
        results.append({"layout": layout, "attention": name, "params": int(params), "task_feature_lengths": lengths,
                        "batch_size": batch_size, "compile_and_first_step_s": run["compile_s"],
                        "step_s_median": step_s, "tokens_per_sec": positions / step_s,
                        "model_flops_per_sec": flops * batch_size / step_s, "loss": float(run["metrics"]["loss"])})
    return results


def bench_hf_gpt2(batch_size: int, length: int, steps: int) -> dict:
    """GPT-2 of the same shape in PyTorch (AdamW, fp32)."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=384, n_positions=length, n_embd=512, n_layer=6, n_head=8,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=1, eos_token_id=1)
    model = transformers.GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 384, (batch_size, length))

    def step():
        loss = model(tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]
    params = sum(p.numel() for p in model.parameters())
    n = 2048
    a = torch.ones(n, n)
    a @ a
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    torch_matmul = 5 * 2 * n ** 3 / (time.perf_counter() - start)
    return {"layout": "hf_gpt2_pytorch", "params": int(params), "batch_size": batch_size,
            "length": length, "step_s_median": step_s, "tokens_per_sec": batch_size * length / step_s,
            "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "torch_f32_matmul_flops_per_sec": torch_matmul}


def speedups(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per layout: every variant's tok/s over the first variant's (measured interleaved)."""
    ratios = {}
    for row in rows:
        reference = next(r for r in rows if r["layout"] == row["layout"])
        if row is not reference:
            ratios.setdefault(row["layout"], {})[row["attention"]] = row["tokens_per_sec"] / reference["tokens_per_sec"]
    return ratios


def hf_result(args) -> dict | None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        return bench_hf_gpt2(args.batch_size, 512, args.steps)
    except ImportError:
        pass
    if args.hf_python:
        out = subprocess.run([args.hf_python, __file__, "--only-hf", f"--steps={args.steps}",
                              f"--batch-size={args.batch_size}"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            return json.loads(out.stdout.strip().splitlines()[-1])
        print(f"HF benchmark failed: {out.stderr[-2000:]}", file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps per layout (median reported)")
    p.add_argument("--attention-kernels", default="einsum,blockwise",
                   help="comma-separated TransformerConfig.attention_kernel values, timed side by side "
                        "(the first is the ratios' reference), e.g. einsum,blockwise")
    p.add_argument("--block-sizes", default="128", help="blockwise kernel: query = key block sizes to try")
    p.add_argument("--out", default=None, help="JSON file (default: stdout only)")
    p.add_argument("--hf-python", default=None, help="interpreter with torch + transformers")
    p.add_argument("--only-hf", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.only_hf:
        print(json.dumps(bench_hf_gpt2(args.batch_size, 512, args.steps)))
        return 0
    os.chdir(REPO)
    sys.path.insert(0, REPO)
    import jax

    from t5x_like.training import machine
    from t5x_like.training.metrics_log import measure_matmul_flops
    ceiling = measure_matmul_flops(2048)
    variants = kernel_variants(args.attention_kernels, args.block_sizes)
    results = {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
               "load_average_before": os.getloadavg(), "jax_f32_matmul_flops_per_sec": ceiling, "layouts": []}
    for layout in args.layouts.split(","):
        for r in bench_layout(layout, LAYOUTS[layout], args.batch_size, args.steps, variants):
            r["mfu_vs_matmul"] = r["model_flops_per_sec"] / (ceiling * jax.device_count())
            results["layouts"].append(r)
            print(f"{layout:16s} {r['attention']:14s} {r['params'] / 1e6:6.1f}M params  "
                  f"{r['tokens_per_sec']:8,.0f} tok/s  {r['model_flops_per_sec'] / 1e9:6.1f} GFLOP/s  "
                  f"MFU {100 * r['mfu_vs_matmul']:.0f}%", flush=True)
    results["speedup_over_first_kernel"] = speedups(results["layouts"])
    for layout, ratios in results["speedup_over_first_kernel"].items():
        print(f"{layout:16s} tok/s ratio to {next(iter(variants))}: "
              + "  ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios.items()))
    hf = hf_result(args)
    if hf:
        results["hf_gpt2"] = hf
        print(f"{'hf gpt2 (torch)':16s} {hf['params'] / 1e6:6.1f}M params  {hf['tokens_per_sec']:8,.0f} tok/s")
        best = max((r for r in results["layouts"] if r["layout"] == "decoder_only"),
                   key=lambda r: r["tokens_per_sec"], default=None)
        if best:
            machine_ceiling = max(ceiling, hf["torch_f32_matmul_flops_per_sec"])
            results["decoder_only_best_vs_hf"] = {
                "attention": best["attention"], "tokens_per_sec_ratio": best["tokens_per_sec"] / hf["tokens_per_sec"],
                "mfu_vs_machine_ceiling": best["model_flops_per_sec"] / machine_ceiling}
            print(f"decoder-only {best['attention']}: {best['tokens_per_sec'] / hf['tokens_per_sec']:.2f}x HF GPT-2, "
                  f"MFU {100 * best['model_flops_per_sec'] / machine_ceiling:.0f}% of the machine's f32 matmul "
                  f"ceiling ({machine_ceiling / 1e9:.0f} GFLOP/s, the higher of jax and torch)")
    print(f"f32 matmul ceiling: {ceiling / 1e9:.0f} GFLOP/s (jax)")
    results["load_average_after"] = os.getloadavg()
    print(f"load average before {results['load_average_before']}, after {results['load_average_after']}")
    results["machine"] = machine.this_machine()
    text = json.dumps(results, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
