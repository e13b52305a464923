"""The device suite: train-step tokens/s and MFU per attention kernel, and decode tokens/s, on one accelerator.

    bash benchmarks/accelerator_suite.sh                  # one H100/H200 (or TPU chip): <= 8 min
    python benchmarks/accelerator_suite.py --smoke        # tiny models on this CPU: < 2 min
    python benchmarks/accelerator_suite.py --out=PATH --budget-s=400 --batch=8 --length=2048

Train steps (bf16 compute, f32 parameters, AdamW, scanned layers, synthetic
data), at --length positions per example:
  decoder_only     gin_configs/models/decoder_only/llama_1b.gin (LLaMA-style ~1.2B: RoPE,
                   RMSNorm, SwiGLU; grouped-query attention when TransformerConfig has
                   `num_kv_heads`, with the gin file's value), targets = length
  prefix_lm        gin_configs/models/prefix_lm/large.gin (T5 1.1 large shapes, relative
                   bias), inputs = targets = length / 2
  encoder_decoder  gin_configs/models/encoder_decoder/large.gin (T5 1.1 large, relative
                   bias), inputs = targets = length / 2
each with attention_kernel einsum, blockwise (blocks of --blocks) and accelerated (cuDNN on
GPU, Pallas on TPU; on the CPU it falls back, and the table says to what). Reported per
run: tokens/s (positions per second, all features), model FLOP/s
(sizing.train_flops_per_example) and MFU against the chip's bf16 peak (--peak-flops, else
the table PEAK_BF16_FLOPS by device kind; none for a CPU), and the kernel each attention
role ran (attention.recording_kernels). A run that runs out of memory is recorded as such
and the suite goes on; runs not started when --budget-s is spent are listed as skipped.

Decode (decoder_only, greedy, KV cache, --prompt then --new tokens, EOS off) at batch 1
and 64: tokens/s = batch x new / seconds (median of 2 timed runs after a compiling one),
with multi-head attention and, when TransformerConfig has `num_kv_heads`, grouped-query
attention (num_heads / 4 key/value heads).

Prints one table and writes JSON (--out, default benchmarks/results/accelerator_suite.json,
or ..._smoke.json with --smoke).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Dense bf16 peak FLOP/s per chip, by a substring of jax's device_kind (first match wins).
PEAK_BF16_FLOPS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
                   ("L4", 121e12), ("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
                   ("TPU v4", 275e12), ("TPU v6", 918e12))
FULL = {"models": {"decoder_only": "gin_configs/models/decoder_only/llama_1b.gin",
                   "prefix_lm": "gin_configs/models/prefix_lm/large.gin",
                   "encoder_decoder": "gin_configs/models/encoder_decoder/large.gin"},
        "length": 2048, "batch": 8, "blocks": 512, "steps": 3, "prompt": 128, "new": 128, "decode_batches": (1, 64),
        "overrides": {"scan_layers": True}}  # scanned layers: one layer to compile per stack
SMOKE = {"models": {layout: f"gin_configs/models/{layout}/tiny.gin"
                    for layout in ("decoder_only", "prefix_lm", "encoder_decoder")},
         "length": 128, "batch": 2, "blocks": 64, "steps": 1, "prompt": 16, "new": 8, "decode_batches": (1, 4),
         "overrides": {"scan_layers": False, "num_layers": 1}}  # one layer per stack: compiles fastest
KERNELS = ("einsum", "blockwise", "accelerated")


def has_num_kv_heads() -> bool:
    from t5x_like.model.config import TransformerConfig
    return "num_kv_heads" in {f.name for f in dataclasses.fields(TransformerConfig)}


def task_lengths(layout: str, length: int) -> dict[str, int]:
    return {"targets": length} if layout == "decoder_only" else {"inputs": length // 2, "targets": length // 2}


def peak_flops(override: float | None) -> float | None:
    import jax
    if override:
        return override
    kind = jax.devices()[0].device_kind
    return next((peak for name, peak in PEAK_BF16_FLOPS if name in kind), None)


def model_config(gin_file: str, settings: dict, **overrides):
    """The gin file's TransformerConfig in bf16 with the settings' overrides ("num_layers": every stack's depth)."""
    from t5x_like.cli import gin_loading
    config = gin_loading.model_config_from_file(gin_file, []).replace(dtype="bfloat16", **overrides)
    changes = dict(settings["overrides"])
    layers = changes.pop("num_layers", None)
    if layers:
        changes.update({f"num_{stack}_layers": layers for stack in ("encoder", "decoder")
                        if getattr(config, f"num_{stack}_layers")})
    return config.replace(**changes)


def is_out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def bench_train(layout: str, gin_file: str, kernel: str, settings: dict, peak: float | None) -> dict:
    """One layout x kernel: compile + first step, then `steps` timed steps (median)."""
    import jax

    from t5x_like.data.sources import DataRequest, synthetic_batches
    from t5x_like.model import attention, sizing
    from t5x_like.model import model as models
    from t5x_like.training import optimizers, partitioning
    from t5x_like.training.trainer import LossOptions, Trainer

    lengths = task_lengths(layout, settings["length"])
    config = model_config(gin_file, settings, attention_kernel=kernel, attention_block_q=settings["blocks"],
                          attention_block_k=settings["blocks"])
    model = models.Model(config)
    trainer = Trainer(model, optimizers.adamw(learning_rate=1e-4), partitioning.make_mesh((-1, 1, 1)),
                      partitioning.logical_axis_rules(), settings["batch"], lengths, loss=LossOptions(z_loss=0.0))
    state = trainer.init_state()
    batches = synthetic_batches(DataRequest("synthetic", lengths, "train", settings["batch"], False, 0, False), model)
    start = time.perf_counter()
    with attention.recording_kernels() as kernels:
        state, metrics = trainer.train_step(state, trainer.global_batch(next(batches)))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(settings["steps"]):
        batch = trainer.global_batch(next(batches))
        start = time.perf_counter()
        state, metrics = trainer.train_step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    flops = sizing.train_flops_per_example(config, lengths.get("inputs", 0), lengths["targets"]) * settings["batch"]
    return {"params": int(sum(x.size for x in jax.tree.leaves(state.params))), "task_feature_lengths": lengths,
            "batch_size": settings["batch"], "compile_and_first_step_s": round(compile_s, 2),
            "step_s_median": step_s, "tokens_per_sec": settings["batch"] * sum(lengths.values()) / step_s,
            "model_flops_per_sec": flops / step_s, "mfu": None if peak is None else flops / step_s / peak,
            "attention_kernels": {role: sorted(k) for role, k in kernels.items()},
            "loss": float(metrics["loss"])}


def bench_decode(gin_file: str, batch: int, settings: dict, **overrides) -> dict:
    import flax.linen as nn
    import jax
    import numpy as np

    from t5x_like.inference import decoding
    from t5x_like.model import model as models

    config = model_config(gin_file, settings, **overrides)
    model = models.Model(config)
    lengths = {"targets": settings["prompt"]}
    params = jax.jit(lambda r: nn.unbox(model.init(r, model.dummy_batch(1, lengths)))["params"])(jax.random.key(0))
    tokens = np.random.default_rng(0).integers(3, config.vocab_size, size=(batch, settings["prompt"])).astype(np.int32)
    tokens[:, 0] = 0
    prompts = models.Prompts(tokens, np.full(batch, settings["prompt"], np.int32))
    decode_config = decoding.DecodeConfig(max_new_tokens=settings["new"], eos_id=None)
    run = lambda: decoding.generate(model, params, prompts, decode_config).tokens.block_until_ready()
    start = time.perf_counter()
    run()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(2):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"batch": batch, "first_call_s": round(compile_s, 2), "seconds": seconds,
            "tokens_per_sec": batch * settings["new"] / seconds}


def guarded(fn, *args, **kwargs) -> dict:
    """fn's result, or {"error": ...} for a run that runs out of memory (the suite goes on)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - an XLA OOM has no narrower type
        if not is_out_of_memory(e):
            raise
        return {"error": "out of memory: " + str(e).strip().splitlines()[0][:200]}


def run_suite(settings: dict, budget_s: float, peak_override: float | None, out: str) -> dict:
    """Every run in turn; the JSON at `out` is rewritten after each, so a suite cut short keeps what it measured."""
    import jax

    started = time.perf_counter()
    over_budget = lambda: time.perf_counter() - started > budget_s
    peak = peak_override or peak_flops(None)
    gqa = has_num_kv_heads()
    result = {"device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
              "device_count": jax.device_count(), "host": platform.node(), "jax": jax.__version__,
              "peak_bf16_flops": peak, "settings": {k: v for k, v in settings.items() if k != "models"},
              "models": settings["models"], "gqa_available": gqa, "train": [], "decode": [], "skipped": []}
    for layout, gin_file in settings["models"].items():
        for kernel in KERNELS:
            if over_budget():
                result["skipped"].append(f"train {layout} {kernel}")
                continue
            row = {"layout": layout, "attention_kernel": kernel}
            row.update(guarded(bench_train, layout, gin_file, kernel, settings, peak))
            result["train"].append(row)
            print(train_line(row), flush=True)
            write_json(result, out)
    heads = {"mha": {}}
    if gqa:
        num_heads = model_config(settings["models"]["decoder_only"], settings).num_heads
        heads = {"mha": {"num_kv_heads": num_heads}, "gqa": {"num_kv_heads": max(1, num_heads // 4)}}
    for attention_heads, overrides in heads.items():
        for batch in settings["decode_batches"]:
            if over_budget():
                result["skipped"].append(f"decode {attention_heads} batch {batch}")
                continue
            row = {"layout": "decoder_only", "attention_heads": attention_heads, **overrides}
            row.update(guarded(bench_decode, settings["models"]["decoder_only"], batch, settings, **overrides))
            result["decode"].append(row)
            print(decode_line(row), flush=True)
            write_json(result, out)
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json(result, out)
    return result


def write_json(result: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def train_line(row: dict) -> str:
    head = f"train  {row['layout']:<16} {row['attention_kernel']:<12}"
    if "error" in row:
        return f"{head} {row['error']}"
    mfu = "   n/a" if row["mfu"] is None else f"{100 * row['mfu']:5.1f}%"
    kernels = "; ".join(f"{role}: {', '.join(k)}" for role, k in row["attention_kernels"].items())
    return (f"{head} {row['tokens_per_sec']:>10,.0f} tok/s  MFU {mfu}  step {row['step_s_median'] * 1e3:8.1f} ms"
            f"  [{kernels}]")


def decode_line(row: dict) -> str:
    head = f"decode {row['layout']:<16} {row['attention_heads']:<4} batch {row['batch']:<3}"
    return f"{head} {row['error']}" if "error" in row else f"{head} {row['tokens_per_sec']:>10,.1f} tok/s"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--smoke" in argv:  # tiny programs: compiling is the time, so compile less
        os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
        # on the CPU the three kernels run one program (accelerated and blockwise fall back to einsum
        # there): a fresh persistent cache compiles it once
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="accelerator_suite_"))
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny models and lengths: checks the suite runs (CPU)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/accelerator_suite[_smoke].json)")
    p.add_argument("--budget-s", type=float, default=400.0, help="start no run after this many seconds")
    p.add_argument("--peak-flops", type=float, default=None, help="the chip's bf16 peak FLOP/s (else by device kind)")
    for name in ("length", "batch", "blocks", "steps"):
        p.add_argument(f"--{name}", type=int, default=None, help=f"override the {name} setting")
    args = p.parse_args(argv)
    settings = dict(SMOKE if args.smoke else FULL)
    settings.update({k: getattr(args, k) for k in ("length", "batch", "blocks", "steps") if getattr(args, k)})
    out = args.out or f"benchmarks/results/accelerator_suite{'_smoke' if args.smoke else ''}.json"
    result = run_suite(settings, args.budget_s, args.peak_flops, out)
    print(f"{result['device']} ({result['platform']}), {result['seconds']} s; skipped: {result['skipped'] or 'none'}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
