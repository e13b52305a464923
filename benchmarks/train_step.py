"""Train-step throughput: decoder-only, prefix-LM and encoder-decoder at ~20M params.

    python benchmarks/train_step.py --out=/tmp/bench.json
    python benchmarks/train_step.py --hf-python=/work/venv-hf/bin/python   # + HF GPT-2 side by side

Each layout uses its gin_configs/models/<layout>/small.gin (d_model 512, 6
layers per stack), batch 8, AdamW, fp32, 512 positions per example:
decoder-only targets 512; prefix-LM inputs 256 + targets 256 (one stack over
512); encoder-decoder inputs 256 / targets 256 (two stacks, 256 each).
Reported: tokens/s (positions processed per second, all features), model
FLOP/s (sizing.train_flops_per_example: 3 x forward, attention included),
the f32 matmul FLOP/s ceiling of the machine, and MFU against it.

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


def bench_layout(layout: str, lengths: dict[str, int], batch_size: int, steps: int) -> dict:
    import jax

    from t5x_like.cli import gin_loading
    from t5x_like.data.sources import DataRequest, synthetic_batches
    from t5x_like.model import model as models
    from t5x_like.model import sizing
    from t5x_like.training import optimizers, partitioning
    from t5x_like.training.trainer import LossOptions, Trainer

    model_config = gin_loading.model_config_from_file(f"gin_configs/models/{layout}/small.gin", [])
    model = models.Model(model_config)
    mesh = partitioning.make_mesh((-1, 1, 1))
    trainer = Trainer(model, optimizers.adamw(learning_rate=1e-4), mesh, partitioning.logical_axis_rules(),
                      batch_size, lengths, loss=LossOptions(z_loss=0.0))
    state = trainer.init_state()
    request = DataRequest("synthetic", lengths, "train", batch_size, False, 0, False)
    batches = synthetic_batches(request, model)
    batch = trainer.global_batch(next(batches))
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        batch = trainer.global_batch(next(batches))
        start = time.perf_counter()
        state, metrics = trainer.train_step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]
    params = sum(x.size for x in jax.tree.leaves(state.params))
    flops = sizing.train_flops_per_example(model_config, lengths.get("inputs", 0), lengths["targets"])
    positions = batch_size * sum(lengths.values())
    return {"layout": layout, "params": int(params), "task_feature_lengths": lengths,
            "batch_size": batch_size, "compile_and_first_step_s": compile_s, "step_s_median": step_s,
            "tokens_per_sec": positions / step_s, "model_flops_per_sec": flops * batch_size / step_s,
            "loss": float(metrics["loss"])}


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

    from t5x_like.training.metrics_log import measure_matmul_flops
    ceiling = measure_matmul_flops(2048)
    results = {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
               "jax_f32_matmul_flops_per_sec": ceiling, "layouts": []}
    for layout in args.layouts.split(","):
        r = bench_layout(layout, LAYOUTS[layout], args.batch_size, args.steps)
        r["mfu_vs_matmul"] = r["model_flops_per_sec"] / (ceiling * jax.device_count())
        results["layouts"].append(r)
        print(f"{layout:16s} {r['params'] / 1e6:6.1f}M params  {r['tokens_per_sec']:8,.0f} tok/s  "
              f"{r['model_flops_per_sec'] / 1e9:6.1f} GFLOP/s  MFU {100 * r['mfu_vs_matmul']:.0f}%",
              flush=True)
    hf = hf_result(args)
    if hf:
        results["hf_gpt2"] = hf
        print(f"{'hf gpt2 (torch)':16s} {hf['params'] / 1e6:6.1f}M params  {hf['tokens_per_sec']:8,.0f} tok/s")
    print(f"f32 matmul ceiling: {ceiling / 1e9:.0f} GFLOP/s (jax)")
    text = json.dumps(results, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
