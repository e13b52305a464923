"""What a report or a benchmark ran on: training/machine.py reads it from this host."""
import json
import os

import jax

from t5x_like.training import machine


def _cpuinfo_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return set(value.split())
    return set()


def test_the_description_is_json_and_names_this_hosts_vector_extensions_and_versions():
    description = machine.this_machine()
    assert json.loads(json.dumps(description)) == description
    flags = _cpuinfo_flags() if os.path.exists("/proc/cpuinfo") else set()
    assert description["vector_extensions"] == [f for f in machine.VECTOR_FLAGS if f in flags]
    assert description["versions"]["jax"] == jax.__version__
    assert description["cores_usable"] <= description["cores_total"]
    line = machine.machine_line(description)
    assert description["cpu_model"] in line and f"jax {jax.__version__}" in line
    assert all(flag in line for flag in description["vector_extensions"])
