"""Attention alone, forward + backward: blockwise vs einsum kernel, side by side in one process.

    python benchmarks/attention_kernel.py --out=benchmarks/results/attention_kernel.json

Shapes of the train-step benchmark's small models (batch 8, 8 heads of 64): the
decoder-only causal mask over 512, the prefix-LM mask over 512 (prefix 256), the
encoder's bidirectional mask over 256 and the causal mask over 256 with a relative-position
bias (the encoder-decoder's decoder; its gradient is computed too). Each case times
jit(grad) of sum(attention · a fixed cotangent) w.r.t. query, key, value (and bias),
interleaving the kernels; reported: median ms per kernel and einsum_ms / blockwise_ms
(> 1: blockwise faster). Timings swing with the machine's load; the ratio is what counts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def cases(batch: int, heads: int):
    import jax.numpy as jnp

    from t5x_like.model import masks

    def prefix(length, prefix_length):
        return masks.prefix_lm_mask(jnp.broadcast_to(jnp.arange(length) < prefix_length, (batch, length)))

    return {
        "causal_512": (512, masks.causal_mask(512), False),
        "prefix_lm_512": (512, prefix(512, 256), False),
        "bidirectional_256": (256, masks.bidirectional_mask(256), False),
        "causal_256_relbias": (256, masks.causal_mask(256), True),
        # Lengths just past a block: padded to the next multiple of it.
        "prefix_lm_134": (134, prefix(134, 128), False),
        "causal_200": (200, masks.causal_mask(200), False),
        "causal_320": (320, masks.causal_mask(320), False),
        "prefix_lm_400": (400, prefix(400, 200), False),
        "causal_256": (256, masks.causal_mask(256), False),
        "causal_384": (384, masks.causal_mask(384), False),
        "causal_1000": (1000, masks.causal_mask(1000), False),
    }


def time_kernels(fns: dict, args, repeats: int) -> dict[str, float]:
    import jax
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--block-sizes", default="64,128,256")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from t5x_like.model import attention

    batch, heads, dim = args.batch_size, 8, 64
    rng = np.random.default_rng(0)
    results = {"load_average": os.getloadavg(), "batch": batch, "heads": heads, "head_dim": dim, "cases": []}
    chosen = args.cases.split(",") if args.cases else None
    for name, (length, mask, with_bias) in cases(batch, heads).items():
        if chosen and name not in chosen:
            continue
        q, k, v, cotangent = (jnp.asarray(rng.normal(size=(batch, length, heads, dim)), jnp.float32) for _ in range(4))
        bias = jnp.asarray(rng.normal(size=(1, heads, length, length)), jnp.float32) if with_bias else None
        argnums = (0, 1, 2, 3) if with_bias else (0, 1, 2)

        def grad_fn(kernel):
            # The mask is an argument, as in the model (where padding makes it data), not a constant to fold.
            loss = lambda q, k, v, b, m: jnp.sum(kernel(q, k, v, m, b, dim ** -0.5) * cotangent)
            return jax.jit(jax.grad(loss, argnums=argnums))

        fns = {"einsum": grad_fn(attention.einsum_attention)}
        for block in map(int, args.block_sizes.split(",")):
            fns[f"blockwise_{block}"] = grad_fn(functools.partial(attention.blockwise_attention, block_q=block,
                                                                  block_k=block))
        ms = time_kernels(fns, (q, k, v, bias, mask), args.repeats)
        row = {"case": name, "length": length, "ms": ms,
               "einsum_over_blockwise": {n: ms["einsum"] / t for n, t in ms.items() if n != "einsum"}}
        results["cases"].append(row)
        print(f"{name:20s} " + "  ".join(f"{n} {t:7.1f} ms" for n, t in ms.items()) + "   ratio "
              + " ".join(f"{r:.2f}" for r in row["einsum_over_blockwise"].values()), flush=True)
    print(f"load average {results['load_average']}")
    if args.out:
        from t5x_like.training import machine
        with open(args.out, "w") as f:
            f.write(json.dumps({**results, "machine": machine.this_machine()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
