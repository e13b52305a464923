"""Which jax backends a `t5x-like` command starts, when the user has not said (JAX_PLATFORMS).

Owns `choose_jax_platforms`, which cli/main.py calls before any command
touches a device. libtpu is a test dependency (`t5x-like compile` needs it),
so it is installed on CPU and GPU hosts too, where jax would try the TPU
backend first and libtpu would print screens of warnings (TPU_ACCELERATOR_TYPE,
TPU_WORKER_HOSTNAMES) before falling back. With JAX_PLATFORMS unset:

  TPU chips on this host (PCI)                     -> leave it unset (jax picks the TPU)
  else a jax CUDA plugin and an NVIDIA device      -> "cuda,cpu"
  else                                             -> "cpu"

A JAX_PLATFORMS the user set is never changed. `jax.devices()` returns what it
returned before on each kind of host; only the noise is gone.
"""
from __future__ import annotations

import importlib.util
import os
import sys

_NVIDIA_DEVICES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")
_CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")


def tpu_chips_attached() -> bool:
    """What jax's own Cloud TPU start-up checks (PCI ids of every TPU generation; jax is pinned)."""
    from jax._src import hardware_utils  # private, but the one place that knows the TPU PCI ids
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0


def cuda_usable() -> bool:
    return (any(importlib.util.find_spec(name) for name in _CUDA_PLUGINS)
            and any(os.path.exists(path) for path in _NVIDIA_DEVICES))


def choose_jax_platforms() -> str | None:
    """Sets JAX_PLATFORMS (and jax's config, if jax is loaded) when unset; returns what it set."""
    if os.environ.get("JAX_PLATFORMS"):
        return None
    if tpu_chips_attached():
        return None
    platforms = "cuda,cpu" if cuda_usable() else "cpu"
    os.environ["JAX_PLATFORMS"] = platforms
    if "jax" in sys.modules:  # jax reads the variable at import: tell its config too (before any backend starts)
        sys.modules["jax"].config.update("jax_platforms", platforms)
    return platforms
