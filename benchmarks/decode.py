"""Decoding throughput: tokens/s of cached greedy generation, and Hugging Face's if available.

    python benchmarks/decode.py [--out benchmarks/results/decode.json] [--repeats 3]
    python benchmarks/decode.py --models decoder_only,decoder_only_gqa --batches 16 --skip_hf \
        --out benchmarks/results/decode_gqa.json     # multi-head vs grouped-query attention

Models of about 20M parameters (d_model 512, d_ff 2048, 8 heads of 64, byte
vocabulary 384): decoder-only and prefix-LM with 6 layers (GPT-2 choices),
encoder-decoder with 3 + 3 layers (T5 1.0 choices); decoder_only_gqa is the
decoder-only model with grouped-query attention (num_kv_heads=2: 4 query heads
per key/value head, so a quarter of the cache). Each generates 128 new
tokens after a 128-token prompt (EOS disabled, so every row runs to the end),
at batch 1 and 16. tokens/s = batch * 128 / seconds, seconds = the median of
`--repeats` timed runs after one compiling run, prefill included. When torch
and transformers import, GPT-2 and T5 of the same shapes run `generate`
(greedy, KV cache, random weights) on the same inputs for comparison.
cache_bytes: the KV cache (keys and values of every layer, prompt + new
slots) that prefill allocates for the batch, from its abstract shapes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import flax.linen as nn
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from t5x_like.inference import decoding
from t5x_like.model import config as config_lib
from t5x_like.model import model as models
from t5x_like.training import machine

PROMPT, NEW, VOCAB = 128, 128, 384
SHAPES = dict(vocab_size=VOCAB, d_model=512, num_heads=8, head_dim=64, d_ff=2048, max_length=512)


def configs() -> dict[str, config_lib.TransformerConfig]:
    return {
        "decoder_only": config_lib.gpt2(**SHAPES, num_decoder_layers=6),
        "decoder_only_gqa": config_lib.gpt2(**SHAPES, num_decoder_layers=6, num_kv_heads=2),
        "prefix_lm": config_lib.gpt2(**SHAPES, layout="prefix_lm", num_decoder_layers=6),
        "encoder_decoder": config_lib.t5_1_0(**SHAPES, num_encoder_layers=3, num_decoder_layers=3),
    }


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first-call seconds including compilation, median of the next `repeats`)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def ours(name: str, cfg, batch: int, repeats: int) -> dict:
    model = models.Model(cfg)
    lengths = {"inputs": PROMPT, "targets": NEW} if cfg.layout != "decoder_only" else {"targets": PROMPT}
    params = jax.jit(lambda r: nn.unbox(model.init(r, model.dummy_batch(1, lengths)))["params"])(jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, VOCAB, size=(batch, PROMPT)).astype(np.int32)
    if cfg.layout == "encoder_decoder":
        prompts = models.Prompts(np.zeros((batch, 1), np.int32), np.ones(batch, np.int32), tokens)
    else:
        tokens[:, 0] = 0
        prompts = models.Prompts(tokens, np.full(batch, PROMPT, np.int32))
    config = decoding.DecodeConfig(max_new_tokens=NEW, eos_id=None)
    compile_s, seconds = timed(
        lambda: decoding.generate(model, params, prompts, config).tokens.block_until_ready(), repeats)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    _, state = jax.eval_shape(lambda p, x: model.prefill(p, x, PROMPT + NEW), params, prompts)
    cache_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.cache))
    return {"impl": "t5x_like", "model": name, "batch": batch, "params": int(n_params),
            "num_kv_heads": cfg.kv_heads, "cache_bytes": int(cache_bytes),
            "seconds": round(seconds, 3), "first_call_seconds": round(compile_s, 2),
            "tokens_per_second": round(batch * NEW / seconds, 1)}


def hugging_face(name: str, batch: int, repeats: int) -> dict | None:
    try:
        import torch
        import transformers
    except ImportError:
        return None
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    if name == "decoder_only":
        hf_cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=512, n_embd=512, n_layer=6, n_head=8,
                                         bos_token_id=0, eos_token_id=1, pad_token_id=0)
        model = transformers.GPT2LMHeadModel(hf_cfg)
    elif name == "encoder_decoder":
        hf_cfg = transformers.T5Config(vocab_size=VOCAB, d_model=512, d_kv=64, d_ff=2048, num_layers=3,
                                       num_decoder_layers=3, num_heads=8, feed_forward_proj="relu",
                                       decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
        model = transformers.T5ForConditionalGeneration(hf_cfg)
    else:
        return None
    model.eval()
    tokens = torch.from_numpy(np.random.default_rng(0).integers(3, VOCAB, size=(batch, PROMPT)))
    attention = torch.ones_like(tokens)

    def run():
        with torch.inference_mode():
            model.generate(input_ids=tokens, attention_mask=attention, max_new_tokens=NEW,
                           min_new_tokens=NEW, do_sample=False, num_beams=1, use_cache=True)
    first, seconds = timed(run, repeats)
    return {"impl": f"huggingface {transformers.__version__} (torch {torch.__version__})", "model": name,
            "batch": batch, "params": int(sum(p.numel() for p in model.parameters())),
            "seconds": round(seconds, 3), "first_call_seconds": round(first, 2),
            "tokens_per_second": round(batch * NEW / seconds, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "decode.json"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--skip_hf", action="store_true")
    p.add_argument("--models", default=",".join(configs()), help="comma-separated subset of " + ", ".join(configs()))
    args = p.parse_args(argv)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for name, cfg in ((n, configs()[n]) for n in args.models.split(",")):
            rows.append(ours(name, cfg, batch, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
            hf = None if args.skip_hf else hugging_face(name, batch, args.repeats)
            if hf:
                rows.append(hf)
                print(json.dumps(hf), flush=True)
    report = {"prompt_tokens": PROMPT, "new_tokens": NEW, "decoding": "greedy, KV cache, EOS disabled",
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
                         f"({jax.default_backend()})", "host": machine.this_machine(), "results": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
