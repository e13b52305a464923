"""Partitioning: the device mesh, the one logical-axis rules table, and shardings.

Owns: how logical axis names (what the model calls its array dimensions) map
to mesh axes ('data', 'fsdp', 'tensor'); building the mesh; turning a model's
logical partition specs into `NamedSharding`s; moving host-local batches onto
the global mesh; where the seeds of a stacked program go on a mesh
(`stacked_mesh`, `seed_groups`); `jax.distributed` start-up for multi-host runs.
Does not own: which logical names a parameter carries (the model decides) or
the step functions (trainer.py).

Changing the parallelism is a mesh-shape edit, not a code change: the rules
table below always names all three mesh axes, and an axis of size 1 shards
nothing. Examples (8 devices):

    MESH_SHAPE = (-1, 1, 1)   # pure data parallel: batch split 8 ways
    MESH_SHAPE = (1, -1, 1)   # FSDP: batch split 8 ways, params split over 'embed'
    MESH_SHAPE = (2, 1, 4)    # 2-way data x 4-way tensor (heads / mlp / vocab)

`-1` fills the remaining devices. A dimension that a mesh axis does not divide
is left unsharded along that axis (with a log line) rather than failing.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension is split over every axis that is not model-parallel.
BATCH_AXES = ("data", "fsdp")
# The mesh axis that carries the seed axis of a stacked program (training/stacked.py): split off
# the 'data' axis by `stacked_mesh`; no logical rule names it, so inside a seed nothing changes.
SEED_AXIS = "seeds"

# Logical axis name -> mesh axis (or tuple of axes, or None = replicated).
# Parameters: 'embed' carries FSDP; heads/mlp/vocab carry tensor parallelism.
# Activations: the batch is split over data+fsdp; heads/mlp/vocab over tensor.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # parameter axes
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    # Key/value projections' heads (num_kv_heads): tensor-parallel like the query heads; a
    # num_kv_heads that the tensor axis does not divide is replicated (_fit_spec).
    ("kv_heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("relpos_buckets", None),
    ("abspos", None),
    ("layers", None),
    # activation axes
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("batch", BATCH_AXES),
)

log = logging.getLogger(__name__)


def logical_axis_rules(overrides: Sequence[tuple[str, Any]] = ()) -> tuple[tuple[str, Any], ...]:
    """The rules table, with `overrides` (same format) replacing matching names."""
    table = dict(DEFAULT_RULES)
    for name, axes in overrides:
        table[name] = tuple(axes) if isinstance(axes, list) else axes
    return tuple(table.items())


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces a single -1 by whatever makes the product equal num_devices."""
    shape = list(mesh_shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh_shape {tuple(shape)} must have {len(MESH_AXES)} entries {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh_shape {tuple(shape)}: at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh_shape {tuple(shape)} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh_shape {tuple(shape)} needs {math.prod(shape)} devices, have {num_devices}")
    return tuple(shape)


def make_mesh(mesh_shape: Sequence[int] = (-1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all, all hosts).

    Devices are ordered process by process, so each host's devices hold a
    contiguous block of the batch (what `make_array_from_process_local_data`
    needs when each host feeds its own shard).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    devices.sort(key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices).reshape(shape), MESH_AXES)


def seed_groups(num_seeds: int, data_axis_size: int) -> int:
    """How many device groups the seeds of a stacked program are split over: gcd(seeds, data axis).

    The seed axis is a data-parallel-like axis: it takes that many of the 'data' axis' slices,
    each group holding num_seeds / groups seeds (each seed's batch split over the group's remaining
    data x fsdp devices, its parameters by the logical rules). 4 seeds on data=8: 4 groups of 2
    data slices; 4 seeds on data=2: 2 seeds per slice; 3 seeds on data=2: 1 (no split)."""
    return math.gcd(num_seeds, data_axis_size)


def stacked_mesh(mesh: Mesh, num_seeds: int) -> Mesh:
    """`mesh` with its 'data' axis split into (SEED_AXIS, 'data') of sizes (g, data / g),
    g = seed_groups: the same devices in the same order. A Trainer built on it is the lone
    run's (the rules never name SEED_AXIS, so its shardings are replicated over it); the
    stacked step puts the seed axis of every argument on SEED_AXIS (trainer.stacked_train_step)."""
    if mesh.axis_names != MESH_AXES:
        raise ValueError(f"stacked_mesh needs a {MESH_AXES} mesh, got {mesh.axis_names}")
    data, fsdp, tensor = mesh.devices.shape
    groups = seed_groups(num_seeds, data)
    return Mesh(mesh.devices.reshape(groups, data // groups, fsdp, tensor), (SEED_AXIS, *MESH_AXES))


def seed_stacked(sharding: NamedSharding) -> NamedSharding:
    """A lone array's sharding on a `stacked_mesh` -> the stacked array's: the leading seed axis on SEED_AXIS."""
    return NamedSharding(sharding.mesh, P(SEED_AXIS, *sharding.spec))


def _fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """Drops mesh axes that do not divide the dimension they would shard."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            fitted.append(None)
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        keep = []
        for name in names:
            size = mesh.shape[name]
            if dim % (size * math.prod(mesh.shape[k] for k in keep)) == 0:
                keep.append(name)
            elif size > 1:
                log.info("dimension %d not divisible by mesh axis %r (%d): left unsharded", dim, name, size)
        fitted.append(tuple(keep) if len(keep) > 1 else (keep[0] if keep else None))
    return P(*fitted)


def logical_to_shardings(abstract_tree: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings for a tree of boxed (nn.LogicallyPartitioned) abstract values.

    `abstract_tree` is what `jax.eval_shape(model.init, ...)` returns; unboxed
    leaves (no logical names) are replicated.
    """
    logical_specs = nn.get_partition_spec(abstract_tree)
    shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, rules)
    shapes = nn.unbox(abstract_tree)
    return jax.tree.map(
        lambda s, x: NamedSharding(mesh, _fit_spec(s.spec, x.shape, mesh)), shardings, shapes)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch dimension split over 'data' and 'fsdp'; the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def batch_shardings(batch: dict[str, Any], mesh: Mesh) -> dict[str, NamedSharding]:
    return {k: batch_sharding(mesh, np.ndim(v)) for k, v in batch.items()}


def local_batch_size(global_batch_size: int) -> int:
    """Rows of the global batch this process feeds."""
    if global_batch_size % jax.process_count():
        raise ValueError(f"batch size {global_batch_size} not divisible by "
                         f"{jax.process_count()} processes")
    return global_batch_size // jax.process_count()


def host_local_to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows into one global, batch-sharded jax.Array per feature."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in local_batch.items()}


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto: bool = False) -> bool:
    """Starts jax.distributed when asked to, from arguments or the environment.

    Arguments win over the environment variables JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID. `auto=True` lets JAX detect the
    cluster itself (TPU pods, SLURM). On CPU the gloo collectives are selected,
    which multi-process CPU runs need. Returns whether it initialized.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if not (auto or coordinator_address):
        return False
    if _platform_is_cpu():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if auto and not coordinator_address:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return True


def _platform_is_cpu() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
    return platforms.startswith("cpu") or not platforms and _no_accelerator_plugin()


def _no_accelerator_plugin() -> bool:
    # Must not touch jax.devices() before jax.distributed.initialize.
    import importlib.util
    return not any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "libtpu", "jax_rocm60_plugin"))
