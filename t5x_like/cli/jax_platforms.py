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

import glob
import importlib.util
import os
import sys

# PCI ids of TPU chips (Google's vendor id; device ids as jax._src.hardware_utils lists them),
# used only when that private module cannot be imported.
_GOOGLE_PCI_VENDOR_ID = "0x1ae0"
_TPU_PCI_DEVICE_IDS = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")
_NVIDIA_DEVICES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")
_CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")


def tpu_chips_attached() -> bool:
    try:
        from jax._src import hardware_utils  # private, but it knows every TPU generation's PCI id
        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except (ImportError, AttributeError):
        pass
    for vendor_path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor_path) as f:
                if f.read().strip() != _GOOGLE_PCI_VENDOR_ID:
                    continue
            with open(os.path.join(os.path.dirname(vendor_path), "device")) as f:
                if f.read().strip() in _TPU_PCI_DEVICE_IDS:
                    return True
        except OSError:
            continue
    return False


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
