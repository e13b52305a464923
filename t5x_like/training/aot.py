"""Ahead-of-time compilation for a TPU slice on any host: will this run fit, and how fast can it be?

Owns: the table of named TPU slices (`SLICES`: topology arguments, HBM per
chip, peak bf16 FLOP/s), building a slice's compile-only devices and the
run's mesh over them (`topology_devices`, `topology_mesh`), and
`compile_train_step`, which compiles the *real* train step (and eval step) of
the `Trainer` that `run.build_trainer` makes from a `TrainConfig` — same
mesh shape, logical-axis rules, remat/scan settings, batch, microbatches and
lengths — with `.lower(abstract args).compile()`, and returns a
`CompileReport` of per-chip memory and FLOPs. Does not own the step
(trainer.py), the mesh rules (partitioning.py) or any command line
(`t5x-like compile`, cli/compile.py).

How it works: `jax.experimental.topologies.get_topology_desc` (libtpu must be
installed; no TPU is needed, and `JAX_PLATFORMS=cpu` is fine) gives devices
that can be compiled for but not run on. XLA's TPU compiler then plans the
program's memory exactly as it would on the pod: `memory_analysis()` gives
per-chip argument, output, aliased (donated) and temporary bytes, and a
program that does not fit fails to compile with RESOURCE_EXHAUSTED, which
becomes `DoesNotFitError` (one line: needed vs available GiB per chip, and
the knobs to turn).

FLOPs: `xla_flops_per_chip` is XLA's cost analysis of the compiled program
(it includes rematerialized recomputation; a `lax.scan` body — scanned
layers, microbatches — is counted once, not once per iteration).
`model_flops_per_chip` is `model.sizing`'s training FLOPs of the global batch
divided by the chips: the MFU convention, and what the step-time estimates use.

Stacked seeds: `compile_train_step(..., stack_seeds=S)` compiles the step that
trains S seeds of the run as one program (training/stacked.py) instead: the
Trainer built on the seeds' mesh (`partitioning.stacked_mesh`: the seed axis
split over gcd(S, data) groups of the data axis), lowered with the stacked
state and batch (`Trainer.abstract_stacked_arguments`). The per-chip figures
are then the S seeds' together: do 4 seeds fit on this slice at once? A mesh
on which the seeds would not be stacked (stacked.seeds_on_mesh_problem) is a
ValueError naming why.

Attention kernels: while the train step is traced, `attention.recording_kernels` collects
the kernel each attention role (encoder self, decoder self, cross) runs, and any fallback
with its reason; the table prints one row per role, so a prefix-LM or a T5 bias that the
fused TPU kernels do not take shows up before the run does.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh

from t5x_like.model import attention, sizing
from t5x_like.training import partitioning, stacked
from t5x_like.training.run import TrainConfig, build_trainer

GiB = 2**30
ATTENTION_ROLES = ("encoder self", "decoder self", "cross")  # the compile table's order
# How a Pallas (Mosaic) kernel, e.g. splash attention, appears in compiled TPU HLO.
PALLAS_CUSTOM_CALL = 'custom_call_target="tpu_custom_call"'


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice: `get_topology_desc` arguments and the chip's HBM and peak bf16 FLOP/s."""
    name: str
    topology: str                          # e.g. "v5:4x4x4"
    chip_config: str                       # "megacore" (v4, v5p) or "default" (v5e, v6e)
    chips_per_host_bounds: tuple[int, int, int]
    wrap: tuple[bool, bool, bool]
    hbm_bytes: int                         # per chip
    peak_flops: float                      # per chip, bf16

    @property
    def num_chips(self) -> int:
        return math.prod(int(d) for d in self.topology.split(":")[1].split("x"))


# Per chip: HBM and bf16 peak of each generation (Cloud TPU documentation).
CHIPS: dict[str, tuple[str, int, float]] = {  # topology prefix -> (chip config, HBM bytes, peak FLOP/s)
    "v4": ("megacore", 32 * GiB, 275e12),
    "v5e": ("default", 16 * GiB, 197e12),
    "v5": ("megacore", 95 * GiB, 459e12),     # v5p
    "v6e": ("default", 32 * GiB, 918e12),
}

# name -> (topology, wrap); the argument sets of MaxText's accelerator_to_spec_map.py.
_NAMED: dict[str, tuple[str, tuple[bool, bool, bool]]] = {
    "v4-8": ("v4:2x2x1", (False, False, False)),
    "v4-16": ("v4:2x2x2", (False, False, False)),
    "v4-32": ("v4:2x2x4", (False, False, False)),
    "v4-64": ("v4:2x4x4", (False, False, False)),
    "v4-128": ("v4:4x4x4", (True, True, True)),
    "v5e-1": ("v5e:1x1", (False, False, False)),
    "v5e-4": ("v5e:2x2", (False, False, False)),
    "v5e-8": ("v5e:2x4", (False, False, False)),
    "v5e-16": ("v5e:4x4", (False, False, False)),
    "v5e-32": ("v5e:4x8", (False, False, False)),
    "v5e-64": ("v5e:8x8", (False, False, False)),
    "v5e-128": ("v5e:8x16", (False, True, False)),
    "v5e-256": ("v5e:16x16", (True, True, False)),
    "v5p-8": ("v5:2x2x1", (False, False, False)),
    "v5p-16": ("v5:2x2x2", (False, False, False)),
    "v5p-32": ("v5:2x2x4", (False, False, False)),
    "v5p-64": ("v5:2x4x4", (False, False, False)),
    "v5p-128": ("v5:4x4x4", (True, True, True)),
    "v5p-256": ("v5:4x4x8", (True, True, True)),
    "v6e-4": ("v6e:2x2", (False, False, False)),
    "v6e-8": ("v6e:2x4", (False, False, False)),
    "v6e-16": ("v6e:4x4", (False, False, False)),
    "v6e-64": ("v6e:8x8", (False, False, False)),
    "v6e-256": ("v6e:16x16", (True, True, False)),
}


class UnknownSliceError(ValueError):
    """A slice name that is neither in SLICES nor a raw topology such as v5e:2x2."""


class DoesNotFitError(RuntimeError):
    """The step needs more HBM per chip than the chip has; the message is one line."""

    def __init__(self, message: str, needed_bytes: float | None = None, available_bytes: float | None = None):
        super().__init__(message)
        self.needed_bytes, self.available_bytes = needed_bytes, available_bytes


def _slice_from_topology(name: str, topology: str, wrap: tuple[bool, bool, bool] | None = None) -> Slice:
    prefix, _, dims = topology.partition(":")
    if prefix not in CHIPS or not re.fullmatch(r"\d+(x\d+){1,2}", dims):
        raise UnknownSliceError(
            f"unknown TPU slice {name!r}: use a name ({', '.join(_NAMED)}) or a topology "
            f"<{'|'.join(CHIPS)}>:AxB[xC] such as v5e:2x2 or v5:4x4x4")
    chip_config, hbm, peak = CHIPS[prefix]
    shape = [int(d) for d in dims.split("x")]
    chips_per_host = (1, 1, 1) if math.prod(shape) == 1 else (2, 2, 1)
    return Slice(name, topology, chip_config, chips_per_host, wrap or (False, False, False), hbm, peak)


SLICES: dict[str, Slice] = {name: _slice_from_topology(name, topo, wrap) for name, (topo, wrap) in _NAMED.items()}


def resolve_slice(name: str) -> Slice:
    """A named slice (v5p-128) or a raw topology (v5e:2x2, v5:4x4x4; no wrap-around links)."""
    if name in SLICES:
        return SLICES[name]
    for known in SLICES.values():
        if known.topology == name:
            return dataclasses.replace(known, name=name)
    return _slice_from_topology(name, name)


def topology_devices(tpu_slice: Slice) -> list[jax.Device]:
    """The slice's compile-only devices (one per chip; megacore chips count once)."""
    from jax.experimental import topologies  # deferred: loads libtpu's topology support
    try:
        with _quiet_libtpu():
            topology = topologies.get_topology_desc(
            platform="tpu", topology_name=tpu_slice.topology, chip_config_name=tpu_slice.chip_config,
            chips_per_host_bounds=tpu_slice.chips_per_host_bounds, num_slices=1, wrap=tpu_slice.wrap)
    except Exception as e:  # libtpu missing, or a topology it rejects
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnknownSliceError(f"cannot describe TPU topology {tpu_slice.topology!r} "
                                f"(is libtpu installed? `pip install jax[tpu]`): {first}") from e
    return list(topology.devices)


# Without the first two, libtpu asks the (absent) TPU metadata server and prints warnings and an
# INVALID_ARGUMENT trace; their values do not change the topology it describes. The third lets
# several processes describe topologies at once: libtpu otherwise takes /tmp/libtpu_lockfile,
# which guards real chips, and a second compiling process (another test run) fails with ABORTED.
_LIBTPU_HOST_VARIABLES = {"TPU_ACCELERATOR_TYPE": "v5p-8", "TPU_WORKER_HOSTNAMES": "localhost",
                          "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


@contextlib.contextmanager
def _quiet_libtpu():
    """On a host without TPU chips, sets libtpu's host variables (where unset) while the
    topology is described; on a TPU host it changes nothing."""
    missing = [k for k in _LIBTPU_HOST_VARIABLES if k not in os.environ]
    if not missing or host_has_tpu():  # on a TPU host the lockfile protects the chips: keep it
        yield
        return
    os.environ.update({k: _LIBTPU_HOST_VARIABLES[k] for k in missing})
    try:
        yield
    finally:
        for k in missing:
            os.environ.pop(k, None)


def host_has_tpu() -> bool:
    """Whether TPU chips are attached to this host (PCI), as jax's own start-up checks."""
    try:
        from jax._src import hardware_utils  # private: the table of TPU PCI ids jax keeps current
    except ImportError:
        return True  # cannot tell: leave the environment alone
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0


def topology_mesh(tpu_slice: Slice, mesh_shape: Sequence[int]) -> Mesh:
    """The run's ('data', 'fsdp', 'tensor') mesh over the slice's compile-only devices,
    built as a run on the slice builds it (partitioning.make_mesh)."""
    return partitioning.make_mesh(mesh_shape, topology_devices(tpu_slice))


# -- the report --------------------------------------------------------------------
@dataclasses.dataclass
class CompileReport:
    """Per chip, for one train step of the run on the slice (bytes, FLOPs, seconds)."""
    slice: str
    topology: str
    num_chips: int
    mesh_shape: tuple[int, ...]            # resolved
    batch_size: int                        # global
    num_microbatches: int
    task_feature_lengths: dict[str, int]
    params: int                            # parameter count (whole model)
    params_bytes: int                      # per chip, after sharding
    opt_state_bytes: int
    argument_bytes: int                    # state + batch, as XLA plans them
    output_bytes: int
    alias_bytes: int                       # outputs written into donated arguments
    temp_bytes: int                        # activations, gradients, scratch
    code_bytes: int
    hbm_bytes: int                         # the chip's
    xla_flops_per_chip: float
    model_flops_per_chip: float
    peak_flops: float
    compile_seconds: float
    eval_total_bytes: int | None = None
    eval_temp_bytes: int | None = None
    pallas_kernel_calls: int = 0           # Mosaic custom calls in the train step (splash / flash attention)
    # role ("encoder self", "decoder self", "cross") -> the kernels its calls ran in the train step,
    # with any fallback's reason (attention.describe_choice)
    attention_kernels: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    stack_seeds: int = 1                   # seeds trained as one program (the figures are theirs together)

    @property
    def total_bytes(self) -> int:
        """Peak HBM per chip as XLA planned it: arguments + outputs - aliased + temporaries."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes

    def step_seconds(self, mfu: float) -> float:
        """The step time at this model-FLOPs utilization (1.0 = the chip's bf16 peak)."""
        return self.model_flops_per_chip / (self.peak_flops * mfu)

    def mfu(self, step_seconds: float) -> float:
        """The MFU that a measured step time means."""
        return self.model_flops_per_chip / (self.peak_flops * step_seconds)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes, "fits": self.fits,
                "step_seconds_at_100_mfu": self.step_seconds(1.0), "step_seconds_at_50_mfu": self.step_seconds(0.5)}

    def table(self, measured_step_seconds: float | None = None) -> str:
        """The per-chip table `t5x-like compile` prints."""
        gib = _human_bytes
        rows = [
            ("parameters", gib(self.params_bytes)),
            ("optimizer state", gib(self.opt_state_bytes)),
            ("arguments (state + batch)", gib(self.argument_bytes)),
            ("outputs not aliased", gib(self.output_bytes - self.alias_bytes)),
            ("temporaries", gib(self.temp_bytes)),
            ("total", f"{gib(self.total_bytes)}  of {self.hbm_bytes / GiB:.2f} GiB HBM "
                      f"({100 * self.total_bytes / self.hbm_bytes:.0f}%)"),
        ]
        if self.eval_total_bytes is not None:
            rows.append(("eval step total", gib(self.eval_total_bytes)))
        rows += [
            ("FLOPs per step (model)", f"{self.model_flops_per_chip:.3e}"),
            ("FLOPs per step (XLA)", f"{self.xla_flops_per_chip:.3e}"),
            ("step time at 100% MFU", _human_seconds(self.step_seconds(1.0))),
            ("step time at 50% MFU", _human_seconds(self.step_seconds(0.5))),
        ]
        if self.pallas_kernel_calls:
            rows.append(("Pallas kernel calls", f"{self.pallas_kernel_calls} (tpu_custom_call in the train step)"))
        rows += [(f"attention, {role}", "; ".join(kernels)) for role, kernels in self.attention_kernels.items()]
        if measured_step_seconds:
            rows.append((f"MFU at a measured {measured_step_seconds:g} s",
                         f"{100 * self.mfu(measured_step_seconds):.1f}%"))
        lengths = ", ".join(f"{k}={v}" for k, v in self.task_feature_lengths.items())
        head = (f"{self.slice} ({self.topology}, {self.num_chips} chips, {self.peak_flops / 1e12:.0f} TFLOP/s bf16 "
                f"each): mesh (data, fsdp, tensor) = {self.mesh_shape}, global batch {self.batch_size} "
                f"x {self.num_microbatches} microbatch(es), {lengths}; {self.params / 1e6:,.1f}M params; "
                f"{self._seeds_words()}compiled in {self.compile_seconds:.1f} s")
        width = max(len(k) for k, _ in rows)
        return "\n".join([head, "per chip:"] + [f"  {k.ljust(width)}  {v}" for k, v in rows])


    def _seeds_words(self) -> str:
        if self.stack_seeds == 1:
            return ""
        return f"{stacked.placement(self.stack_seeds, self.mesh_shape)} (memory and FLOPs are theirs together); "


def _human_bytes(b: float) -> str:
    return f"{b / GiB:8.2f} GiB" if abs(b) >= GiB / 10 else f"{b / 2**20:8.2f} MiB"


def _human_seconds(s: float) -> str:
    return f"{s:.3f} s" if s >= 0.1 else f"{s * 1e3:.3f} ms"


def _per_chip_bytes(abstract_tree: Any) -> int:
    """Bytes one chip holds of a tree of ShapeDtypeStructs with shardings."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(abstract_tree))


# XLA's wordings: "the total memory required for HLO temporaries (27.53G) exceeds available HBM (15.75G)";
# "Used 30.50G of 15.75G hbm. Exceeded hbm capacity by 14.75G."
_EXCEEDS = re.compile(r"required for ([\w ]+?) \(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)", re.I)
_USED = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm", re.I)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_hbm_shortfall(message: str) -> tuple[float | None, float | None, str]:
    """(needed bytes, available bytes, what XLA counted) per chip from a RESOURCE_EXHAUSTED
    message; (None, None, "") when it states no amounts."""
    match = _EXCEEDS.search(message)
    if match:
        what, n, nu, a, au = match.groups()
        return float(n) * _UNITS[nu.upper()], float(a) * _UNITS[au.upper()], what.replace("the total memory", "")
    match = _USED.search(message)
    if match:
        n, nu, a, au = match.groups()
        return float(n) * _UNITS[nu.upper()], float(a) * _UNITS[au.upper()], ""
    return None, None, ""


@dataclasses.dataclass(frozen=True)
class Knob:
    """One change that lowers per-chip memory: what it is, as words and as the gin binding to pass."""

    words: str
    binding: str  # e.g. "BATCH_SIZE=16", passed as --gin.BATCH_SIZE=16


def memory_knobs(config: TrainConfig, mesh_shape: Sequence[int], num_chips: int, num_processes: int = 1) -> list[Knob]:
    """The changes that lower per-chip memory which this slice accepts: each is checked with
    `TrainConfig.validate_step` (a mesh or batch the slice cannot divide is never suggested)."""
    def accepted(**changes) -> bool:
        try:
            dataclasses.replace(config, **changes).validate_step(num_chips, num_processes)
        except ValueError:
            return False
        return True

    knobs = []
    shape = tuple(mesh_shape)
    if num_chips > 1 and shape != (1, num_chips, 1) and accepted(mesh_shape=(1, -1, 1)):
        knobs.append(Knob(f"all chips on the fsdp axis (now {shape})", "MESH_SHAPE=(1,-1,1)"))
    elif num_chips > 1:
        tensor = next((t for t in (4, 2) if num_chips % t == 0 and config.model.config.kv_heads % t == 0
                       and accepted(mesh_shape=(1, -1, t))), None)
        if tensor:
            knobs.append(Knob(f"a tensor axis of {tensor} (now {shape})", f"MESH_SHAPE=(1,-1,{tensor})"))
    remat = config.model.config.remat_policy
    if remat != "full":
        knobs.append(Knob(f"full rematerialization (now {remat!r})", "TransformerConfig.remat_policy='full'"))
    if config.batch_size % 2 == 0 and accepted(batch_size=config.batch_size // 2):
        knobs.append(Knob(f"a smaller batch (now {config.batch_size})", f"BATCH_SIZE={config.batch_size // 2}"))
    if accepted(num_microbatches=2 * config.num_microbatches):
        knobs.append(Knob(f"more microbatches (now {config.num_microbatches})",
                          f"NUM_MICROBATCHES={2 * config.num_microbatches}"))
    return knobs


def knobs_hint(knobs: list[Knob]) -> str:
    """The knobs as one sentence, each with the flag that turns it."""
    if not knobs:
        return "a slice with more chips (nothing on this one lowers the memory further)"
    return "; ".join(f"{knob.words}: --gin.{knob.binding}" for knob in knobs)


def _does_not_fit(error: Exception, config: TrainConfig, tpu_slice: Slice, what: str,
                  mesh_shape: Sequence[int], num_processes: int, stack_seeds: int = 1) -> DoesNotFitError:
    needed, available, counted = parse_hbm_shortfall(str(error))
    available = available or tpu_slice.hbm_bytes
    alone = f" for {counted} alone" if counted and counted != "all" else ""
    amount = (f"needs {needed / GiB:.2f} GiB per chip{alone}, {available / GiB:.2f} GiB available "
              f"(short by at least {(needed - available) / GiB:.2f} GiB)" if needed else
              f"needs more than the {available / GiB:.2f} GiB of HBM per chip")
    knobs = knobs_hint(memory_knobs(config, mesh_shape, math.prod(mesh_shape), num_processes))
    if stack_seeds > 1:
        knobs = f"fewer seeds stacked (now {stack_seeds}: --stack_seeds); {knobs}"
    return DoesNotFitError(f"the {what} does not fit on {tpu_slice.name}: it {amount}. Try {knobs}", needed, available)


def _is_out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def _xla_flops(compiled: Any) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def compile_train_step(config: TrainConfig, tpu_slice: Slice | str, *, eval_step: bool = True,
                       stack_seeds: int = 1) -> CompileReport:
    """Compiles the run's train step (and eval step) for `tpu_slice`; per-chip memory and FLOPs.
    `stack_seeds=S` > 1: the step of S seeds stacked in one program (module docstring); the eval
    step stays the lone one (each seed evaluates on its own).

    Raises ValueError for a config that cannot run on the slice at all (mesh or batch do not
    divide, seeds that would not be stacked on this mesh), UnknownSliceError for a slice libtpu
    cannot describe, and DoesNotFitError when XLA runs out of HBM.
    """
    tpu_slice = resolve_slice(tpu_slice) if isinstance(tpu_slice, str) else tpu_slice
    devices = topology_devices(tpu_slice)
    num_processes = len({d.process_index for d in devices})
    config.validate_step(len(devices), num_processes)
    mesh = partitioning.make_mesh(config.mesh_shape, devices)
    trainer = build_trainer(config, mesh)
    step, arguments = _step_to_compile(config, trainer, stack_seeds)
    started = time.perf_counter()
    try:
        with attention.recording_kernels() as kernels:
            lowered = step.lower(*arguments)
        compiled = lowered.compile()
    except Exception as e:
        if _is_out_of_memory(e):
            raise _does_not_fit(e, config, tpu_slice, "train step", mesh.devices.shape, num_processes,
                                stack_seeds) from None
        raise
    seconds = time.perf_counter() - started
    memory = compiled.memory_analysis()
    eval_total = eval_temp = None
    if eval_step:
        try:
            compiled_eval = trainer.eval_step.lower(trainer.abstract_params, trainer.abstract_batch()).compile()
        except Exception as e:
            if _is_out_of_memory(e):
                raise _does_not_fit(e, config, tpu_slice, "eval step", mesh.devices.shape, num_processes) from None
            raise
        m = compiled_eval.memory_analysis()
        eval_temp = int(m.temp_size_in_bytes)
        eval_total = int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + eval_temp)
    lengths = dict(config.task_feature_lengths)
    model_config = config.model.config
    model_flops = config.batch_size * sizing.train_flops_for_task(model_config, lengths)
    num_chips = len(devices)
    return CompileReport(
        slice=tpu_slice.name, topology=tpu_slice.topology, num_chips=num_chips,
        mesh_shape=tuple(int(s) for s in mesh.devices.shape), batch_size=config.batch_size,
        num_microbatches=config.num_microbatches, task_feature_lengths=lengths,
        params=sizing.count_params(model_config).total,
        params_bytes=_per_chip_bytes(arguments[0].params),
        opt_state_bytes=_per_chip_bytes(arguments[0].opt_state),
        argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
        code_bytes=int(memory.generated_code_size_in_bytes), hbm_bytes=tpu_slice.hbm_bytes,
        xla_flops_per_chip=_xla_flops(compiled), model_flops_per_chip=stack_seeds * model_flops / num_chips,
        peak_flops=tpu_slice.peak_flops, compile_seconds=seconds,
        eval_total_bytes=eval_total, eval_temp_bytes=eval_temp,
        pallas_kernel_calls=compiled.as_text().count(PALLAS_CUSTOM_CALL),
        attention_kernels={role: sorted(kernels[role]) for role in ATTENTION_ROLES if role in kernels},
        stack_seeds=stack_seeds)


def _step_to_compile(config: TrainConfig, trainer: Any, stack_seeds: int) -> tuple[Any, tuple]:
    """(the jitted train step, its abstract arguments): the lone run's, or for
    stack_seeds > 1 the stacked step as training/stacked.py runs it on this mesh."""
    if stack_seeds == 1:
        return trainer.train_step, (trainer.abstract_state(), trainer.abstract_batch())
    if stack_seeds < 1:
        raise ValueError(f"stack_seeds={stack_seeds}: give a number of seeds >= 1")
    mesh = trainer.mesh
    problem = stacked.seeds_on_mesh_problem(stack_seeds, mesh.devices.shape, mesh.size)
    if problem:
        raise ValueError(f"{stack_seeds} stacked seeds would train one after another on this slice: {problem}")
    if mesh.size > 1:
        trainer = build_trainer(config, partitioning.stacked_mesh(mesh, stack_seeds))
    return trainer.stacked_train_step(), trainer.abstract_stacked_arguments(stack_seeds)
