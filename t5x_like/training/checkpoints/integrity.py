"""Checkpoint integrity: a checksum of every array's bytes, and shape checks against a model.

Owns: `checksums` (computed where the arrays live, recorded in a step's meta
at save time), `verify` (a restored tree against those records: a single
changed bit is caught), `check_matches` (a saved tree's shapes against the
model's, naming what differs) and the flat {"a/b/c": leaf} naming both use.
Does not own: reading or writing checkpoints (manager.py, reading.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message says what was expected and found."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint of another model (shapes) or optimizer: not damage, never moved aside."""


# Word dtypes the checksum reads arrays as, by item size (8-byte items become two words).
_WORD_DTYPES = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def checksums(tree: Any) -> list[int | None]:
    """A 64-bit checksum of the bytes of every array leaf, computed where the arrays live.

    Each array is read as unsigned words w_i (i its flat position); the two
    32-bit halves are Σ w_i·a_i and Σ w_i·b_i (mod 2**32) with odd weights a_i =
    2i + 1 and b_i = an odd hash of i, so a changed word changes both sums and two
    changed words cancel in both only by chance. Sharded arrays are summed by XLA
    in place, without gathering them. None for a leaf of a dtype it cannot read
    (sub-byte, complex, keys)."""
    leaves = _array_leaves(tree)
    readable = [_readable(x) for x in leaves]
    sums = iter(jax.device_get([_one_collective_at_a_time(x, _word_sums(x))
                                for x, ok in zip(leaves, readable) if ok]))
    return [_join_halves(*next(sums)) if ok else None for ok in readable]


def _join_halves(low: Any, high: Any) -> int:
    return int(low) | (int(high) << 32)


def dtypes(tree: Any) -> list[str]:
    """The dtype name of every array leaf (stored beside the checksums: a restore that casts
    a leaf to another dtype cannot verify its bytes)."""
    return [str(x.dtype) for x in _array_leaves(tree)]


def _array_leaves(tree: Any) -> list[Any]:
    return [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]


def _readable(x: Any) -> bool:
    """Whether `_as_words` can read the leaf's bytes (whole bytes per element, no keys)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return False
    dtype = np.dtype(x.dtype)
    if dtype == np.bool_:
        return True
    if dtype.itemsize not in _WORD_DTYPES:
        return False
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.iinfo(dtype).bits == 8 * dtype.itemsize  # not int4 / uint4
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.finfo(dtype).bits == 8 * dtype.itemsize  # not float4
    return False


def _one_collective_at_a_time(x: jax.Array, result: Any) -> Any:
    """Waits for the sum of an array that spans several devices before the next is dispatched.

    Such a sum is a collective program. Two in flight at once can deadlock: across processes
    they may run in different orders (seen with gloo on CPU: a 2-process run hung at its first
    checkpoint); in one process, XLA:CPU runs each device's part on a shared thread pool, and
    with fewer threads than devices the parts of several programs can interleave so that no
    program's participants all arrive (seen: an 8-device FSDP save on a 2-core host aborted in
    the collective rendezvous). Arrays on one device need no wait."""
    sharding = getattr(x, "sharding", None)
    spans_devices = sharding is not None and len(sharding.device_set) > 1
    return jax.block_until_ready(result) if spans_devices or jax.process_count() > 1 else result


@jax.jit
def _word_sums(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two weighted word sums of one array. One small program per shape, dtype and sharding
    (not one per tree): trees of other models and the optimizer state reuse them, and each
    compiles in a fraction of the time a whole tree's program takes. Integer sums mod 2**32
    do not depend on how they are grouped, so the value is the same either way."""
    words = _as_words(x)
    position = _flat_positions(words.shape)
    odd_a = position * jnp.uint32(2) + jnp.uint32(1)
    mixed = (position ^ (position >> 16)) * jnp.uint32(0x45D9F3B)
    odd_b = (mixed ^ (mixed >> 16)) | jnp.uint32(1)
    return jnp.sum(words * odd_a, dtype=jnp.uint32), jnp.sum(words * odd_b, dtype=jnp.uint32)


def _flat_positions(shape: tuple[int, ...]) -> jax.Array:
    """Row-major flat index of every element, built from broadcast iotas (no reshape of sharded data)."""
    position = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        position = position + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return position


def _as_words(x: jax.Array) -> jax.Array:
    """The array's bytes as uint32 words: one per element of up to 4 bytes, two (a trailing
    axis) per 8-byte element."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, _WORD_DTYPES[x.dtype.itemsize]).astype(jnp.uint32)


def verify(tree: Any, meta: Mapping[str, Any], name: str, step: int) -> None:
    """Raises ValueError if `tree` does not have the checksums `meta` recorded for item `name`.

    Leaves restored into another dtype than they were saved in (a cast) are not checked."""
    expected = meta.get(f"{name}_checksums")
    if expected is None:  # written before checksums existed: nothing to compare
        return
    found = checksums(tree)
    if len(found) != len(expected):
        raise ValueError(f"{name} of step {step} has {len(found)} arrays, the checksums list {len(expected)}")
    saved_dtypes = meta.get(f"{name}_dtypes") or [None] * len(found)
    now_dtypes = dtypes(tree)
    bad = [i for i, (a, b) in enumerate(zip(found, expected))
           if a is not None and b is not None and a != b and saved_dtypes[i] in (None, now_dtypes[i])]
    if bad:
        paths = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
                 if hasattr(leaf, "dtype")]
        raise ValueError(f"checksum mismatch in {name} of step {step}: {len(bad)} array(s) changed on disk "
                         f"since they were saved, e.g. {paths[bad[0]]}")


def check_matches(expected: Any, found: Any, where: str) -> None:
    """Raises CheckpointMismatchError naming missing, unexpected and differently shaped arrays
    of a checkpoint item (`found`: its orbax metadata) against the model's (`expected`)."""
    want, have = flat_shapes(expected), flat_shapes(found)
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    reshaped = [f"{k}: model {want[k]} vs checkpoint {have[k]}" for k in sorted(set(want) & set(have))
                if want[k] != have[k]]
    if not (missing or unexpected or reshaped):
        return
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint ({len(missing)}): {', '.join(missing[:5])}")
    if unexpected:
        parts.append(f"not in the model ({len(unexpected)}): {', '.join(unexpected[:5])}")
    if reshaped:
        parts.append(f"different shapes ({len(reshaped)}): {'; '.join(reshaped[:5])}")
    raise CheckpointMismatchError(
        f"the checkpoint at {where} does not match the model config (another layout or size?): "
        + " | ".join(parts))


def flat_shapes(tree) -> dict[str, tuple]:
    return {path: tuple(leaf.shape) for path, leaf in flat_leaves(tree).items()}


def flat_leaves(tree) -> dict[str, Any]:
    """{"a/b/c": leaf} for every array-like leaf; the same names for a model's abstract tree
    and for orbax's metadata tree of the saved one."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path): leaf
            for path, leaf in flat if hasattr(leaf, "shape")}


