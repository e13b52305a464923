"""What a run or a benchmark ran on: one description, recorded beside the figures it produced.

Owns `this_machine()`: the CPU model and the vector extensions XLA:CPU can use
(/proc/cpuinfo flags: avx2, avx512f, ...), the accelerator if JAX's backend is
not the CPU, the cores this process may use, the jax/jaxlib/flax/optax/torch
versions (torch's from its package metadata: it is not imported), XLA_FLAGS and
the thread settings in the environment. Reports (experiments/report.py) print
it and store it in results.json; benchmarks store it in their JSON. Two figures
are comparable digit for digit only when their descriptions agree: XLA:CPU picks
other kernels for other vector widths, so a report's numbers move across CPU
types while staying bitwise reproducible on one machine.

`machine_line(description)` is the one-line form a report prints.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from typing import Any

import jax

# Vector extensions that change which XLA:CPU kernels run (widest first in `machine_line`).
VECTOR_FLAGS = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "avx2", "fma", "avx", "sse4_2", "neon", "asimd")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTEROP_THREADS",
                    "TF_NUM_INTRAOP_THREADS")
PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch")


def this_machine() -> dict[str, Any]:
    """This process's machine and software, as JSON values."""
    cpu = _cpu()
    devices = jax.devices()
    accelerator = None
    if devices[0].platform != "cpu":
        accelerator = {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices)}
    return {
        "cpu_model": cpu["model"],
        "vector_extensions": cpu["vector_extensions"],
        "machine": platform.machine(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cores_total": os.cpu_count(),
        "accelerator": accelerator,
        "jax_backend": devices[0].platform,
        "versions": {name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "thread_settings": {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
    }


def machine_line(description: dict[str, Any]) -> str:
    """One line: 'AMD EPYC 7B13 (avx2, fma), 2 of 2 cores, CPU backend; jax 0.10.2 ...'."""
    vectors = ", ".join(description.get("vector_extensions") or []) or "no vector flags read"
    device = (f"{description['accelerator']['count']} x {description['accelerator']['kind']}"
              if description.get("accelerator") else f"{description.get('jax_backend', 'cpu')} backend")
    versions = ", ".join(f"{name} {version}" for name, version in (description.get("versions") or {}).items()
                         if version)
    flags = description.get("xla_flags") or "none"
    threads = ", ".join(f"{k}={v}" for k, v in (description.get("thread_settings") or {}).items()) or "defaults"
    return (f"{description.get('cpu_model')} ({vectors}), {description.get('cores_usable')} of "
            f"{description.get('cores_total')} cores, {device}; {versions}; XLA_FLAGS: {flags}; threads: {threads}")


@functools.cache
def _cpu() -> dict[str, Any]:
    """The first processor's model name and flags in /proc/cpuinfo (x86 'model name'/'flags', ARM
    'Model'/'Features'); off Linux, platform's name and no flags."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or fields.get("Model") or platform.processor() or platform.machine()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {"model": model, "vector_extensions": [flag for flag in VECTOR_FLAGS if flag in flags]}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
