"""Harness throughput: requests/s of multiple-choice loglikelihood requests, the t5x_like model
against lm-eval's own `hf` model, on the same imported GPT-2, side by side in one run.

    python benchmarks/harness.py [--out benchmarks/results/harness.json] [--questions 64] [--repeats 3]

The GPT-2 has random weights of a 20M-parameter shape (d_model 512, 6 layers, 8 heads,
d_ff 2048, 512 positions) and a byte-level BPE vocabulary written here whose merges make
each benchmark word one token, as GPT-2's vocabulary does for common words (so a
context is 60-240 tokens and an answer 1-3); `t5x-like convert` imports it. Each question
is a context of 60-240 words and 4 one-to-three-word choices (4 requests), drawn
from a fixed word list with a fixed seed. Both models score every request at batch
16; seconds = the median of `--repeats` timed passes after one warm-up pass (which
compiles ours). Scores must agree to 1e-3 (printed). Target (issue 25): ours >= 1.5x
the hf model's requests/s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ("the cat sat on a mat while dogs ran through green fields under grey skies and "
         "children sang old songs of kings queens ships storms rivers mountains").split()
BATCH = 16


def word_merges() -> list[str]:
    """BPE merges that make every word of WORDS (with and without its leading space) one token,
    as GPT-2's vocabulary does for common words: contexts and answers as long in tokens as real
    ones, not one token per character."""
    merges: list[str] = []
    for word in sorted(set(WORDS)):
        for spelled in ("Ġ" + word, word):
            for end in range(2, len(spelled) + 1):
                merge = f"{spelled[:end - 1]} {spelled[end - 1]}"
                if merge not in merges:
                    merges.append(merge)
    return merges


def write_gpt2(directory: str) -> None:
    import pathlib

    import torch
    import transformers

    from tests.interop.test_vocab import write_gpt2_tokenizer
    vocab_size = len(write_gpt2_tokenizer(pathlib.Path(directory), word_merges()))
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_embd=512, n_head=8, n_layer=6, n_inner=2048,
                                     n_positions=512, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(directory)


def requests(questions: int):
    from lm_eval.api.instance import Instance
    rng = np.random.default_rng(0)
    out = []
    for _ in range(questions):
        context = " ".join(rng.choice(WORDS, size=int(rng.integers(60, 241))))
        for _ in range(4):
            choice = " " + " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
            out.append(Instance("loglikelihood", {}, (context, choice), len(out)))
    return out


def timed(fn, repeats: int) -> tuple[list, float]:
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "harness.json"))
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    flags = p.parse_args(argv)
    import jax
    import torch
    from lm_eval.models.huggingface import HFLM

    from t5x_like.inference import harness
    from t5x_like.interop import convert
    work = tempfile.mkdtemp(prefix="harness_bench_")
    hf_dir, model_dir = os.path.join(work, "hf"), os.path.join(work, "model")
    os.makedirs(hf_dir)
    write_gpt2(hf_dir)
    convert.import_hf(hf_dir, model_dir)
    reqs = requests(flags.questions)
    theirs_lm = HFLM(pretrained=hf_dir, device="cpu", batch_size=BATCH)
    ours_lm = harness.HarnessLM.from_model_dir(model_dir, batch_size=BATCH)
    theirs, theirs_s = timed(lambda: theirs_lm.loglikelihood(reqs, disable_tqdm=True), flags.repeats)
    ours, ours_s = timed(lambda: ours_lm.loglikelihood(reqs, disable_tqdm=True), flags.repeats)
    difference = float(np.max(np.abs(np.asarray([s for s, _ in ours]) - np.asarray([s for s, _ in theirs]))))
    report = {
        "requests": len(reqs), "batch_size": BATCH,
        "t5x_like_requests_per_s": len(reqs) / ours_s, "hf_requests_per_s": len(reqs) / theirs_s,
        "ratio": theirs_s / ours_s, "max_abs_score_difference": difference,
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
                   f"torch threads {torch.get_num_threads()}, jax {jax.__version__}, torch {torch.__version__}",
    }
    print(f"{len(reqs)} multiple-choice requests at batch {BATCH}: t5x_like {report['t5x_like_requests_per_s']:.1f} "
          f"req/s, lm-eval hf {report['hf_requests_per_s']:.1f} req/s, ratio {report['ratio']:.2f}x "
          f"(scores agree to {difference:.1e})")
    os.makedirs(os.path.dirname(flags.out), exist_ok=True)
    with open(flags.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {flags.out}")
    return 0 if difference < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
