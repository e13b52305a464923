"""The train and eval steps, their shardings, and the training loop.

Owns: TrainState; the jitted, sharded, buffer-donating train and eval steps
(gradient accumulation, loss normalization, dropout RNG), and the train step
over seeds stacked on a leading axis (`stacked_train_step`: on one CPU device the
lone step once per seed in one program, else a vmap of it, with the seed axis on
the mesh's SEED_AXIS when it has one); the
loop that runs steps, and each run's bookkeeping after a step (`LoopLane`:
logs, evaluates, checkpoints, stops on SIGTERM or when a divergence guard
fires: NaN, collapse, guards.py owns the rules), with its phases named for a
profiler trace (profiling.py). Does not own:
the model's loss (model.Model.loss_sums), the optimizer recipes
(optimizers.py), the mesh and rules (partitioning.py), checkpoint files
(checkpoints/), or configuration (run.py builds the Trainer from a TrainConfig).

Loss normalization. The model returns *sums* over target tokens:
objective_sum = Σ weight·(xent + z_loss·logZ²) and weight_sum = Σ weight. The
train step sums objective gradients over all microbatches of the GLOBAL
batch and divides once by the global weight_sum:

    grad = Σ_k ∇ objective_sum_k / Σ_k weight_sum_k

so k microbatches give the same update as one batch of k times the size (up
to float rounding), and every target token counts equally however the batch
is padded or packed. `loss_normalizing_factor=C` divides by the constant C
instead (T5X's option; T5 used C = batch_size x target_length).

Microbatch i holds rows i, i+k, i+2k, ... of the global batch, so each
device's rows split evenly across microbatches with no data movement.

Dropout RNG: for step s and microbatch i the model gets
fold_in(fold_in(key(seed), s), i); with jax's partitionable threefry the
random bits do not depend on the mesh, so 1 device and 8 devices drop the
same units, and a resumed run drops the same units as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from t5x_like.training import partitioning, profiling
from t5x_like.training.guards import NonFiniteLossError  # noqa: F401  (re-exported: its old home)
from t5x_like.training.guards import DivergenceGuard
from t5x_like.training.optimizers import Optimizer

log = logging.getLogger(__name__)

Batch = dict[str, Any]
# Metric sums the model returns; the eval step returns them unnormalized.
SUM_KEYS = ("loss_sum", "z_loss_sum", "weight_sum", "correct_sum")


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # int32 scalar: updates applied so far
    params: Any
    opt_state: Any
    rng: jax.Array         # uint32 key data of the run's base key


@dataclasses.dataclass(frozen=True)
class LossOptions:
    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    loss_normalizing_factor: float | None = None  # None: the global weight_sum


class Trainer:
    """A model + optimizer placed on a mesh: abstract state, shardings, jitted steps.

    Build it once; `train_step(state, batch) -> (state, metrics)` (donates
    `state`), `eval_step(params, batch) -> metric sums` and `param_norm(params)` (one
    program, replicated scalar) compile on first call.
    """

    def __init__(self, model: Any, optimizer: Optimizer, mesh: Mesh, rules,
                 batch_size: int, task_feature_lengths: dict[str, int],
                 num_microbatches: int = 1, loss: LossOptions = LossOptions(), seed: int = 0):
        if batch_size % num_microbatches:
            raise ValueError(f"batch size {batch_size} not divisible by {num_microbatches} microbatches")
        self.model, self.optimizer, self.mesh, self.rules = model, optimizer, mesh, tuple(rules)
        self.batch_size, self.num_microbatches, self.loss, self.seed = (
            batch_size, num_microbatches, loss, seed)
        self.task_feature_lengths = dict(task_feature_lengths)
        self.dummy_batch = model.dummy_batch(batch_size, self.task_feature_lengths)
        self.batch_shardings = partitioning.batch_shardings(self.dummy_batch, mesh)
        self._abstract_boxed = self._eval_shape(
            lambda: model.init(jax.random.key(0), self._traced_batch()))["params"]
        self.params_shardings = partitioning.logical_to_shardings(self._abstract_boxed, mesh, self.rules)
        abstract_params = nn.unbox(self._abstract_boxed)
        self.abstract_params = _with_shardings(abstract_params, self.params_shardings)
        abstract_opt = jax.eval_shape(optimizer.tx.init, abstract_params)
        self.opt_state_shardings = _opt_state_shardings(abstract_opt, abstract_params,
                                                        self.params_shardings, mesh)
        self.abstract_opt_state = _with_shardings(abstract_opt, self.opt_state_shardings)
        rep = partitioning.replicated(mesh)
        self.state_shardings = TrainState(step=rep, params=self.params_shardings,
                                          opt_state=self.opt_state_shardings, rng=rep)
        self.train_step = jax.jit(self._train_step, in_shardings=(self.state_shardings, self.batch_shardings),
                                  out_shardings=(self.state_shardings, rep), donate_argnums=(0,))
        self.eval_step = jax.jit(self._eval_step, in_shardings=(self.params_shardings, self.batch_shardings),
                                 out_shardings=rep)
        self.param_norm = jax.jit(optax.global_norm, in_shardings=(self.params_shardings,), out_shardings=rep)
        self._init_params = jax.jit(self._init_params_fn, out_shardings=self.params_shardings)
        self._init_opt_state = jax.jit(optimizer.tx.init, in_shardings=(self.params_shardings,),
                                       out_shardings=self.opt_state_shardings)
        self._stacked: dict[str, Callable] = {}  # stacked_train_step, built on first use (shared by copies)

    # -- abstract arguments of the steps (shapes + shardings; for .lower(), no devices touched) --
    def abstract_state(self) -> TrainState:
        """The train step's state argument as ShapeDtypeStructs carrying their shardings."""
        rep = partitioning.replicated(self.mesh)
        rng = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
        return TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), params=self.abstract_params,
                          opt_state=self.abstract_opt_state,
                          rng=jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=rep))

    def abstract_batch(self) -> Batch:
        """A global batch as ShapeDtypeStructs carrying the batch shardings."""
        return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_shardings[k])
                for k, v in self.dummy_batch.items()}

    # -- tracing context ------------------------------------------------------
    def _eval_shape(self, fn: Callable[[], Any]) -> Any:
        with self._context():
            return jax.eval_shape(fn)

    def _context(self) -> contextlib.ExitStack:
        """Mesh + logical rules, needed while tracing model code (with_logical_constraint)."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    # -- state ----------------------------------------------------------------
    def _traced_batch(self) -> Batch:
        """The steps' batch as ones built inside the trace that calls it (init reads only shapes):
        the numpy dummy batch there would have the model build its batch x L x L masks in host
        memory before anything is traced (32 GiB at 2048 x 4096)."""
        return {k: jnp.ones(v.shape, v.dtype) for k, v in self.dummy_batch.items()}

    def _init_params_fn(self, rng: jax.Array) -> Any:
        with self._context():
            return nn.unbox(self.model.init(rng, self._traced_batch())["params"])

    def init_params(self, seed: int | None = None) -> Any:
        """Fresh parameters, placed in their shardings.

        Models under SMALL_MODEL_BYTES are initialized on one local device and
        then distributed: one compiled init serves every mesh (threefry-heavy
        init programs are slow to compile on CPU). Larger models are
        initialized sharded, never materialized whole. Both give the same
        values (partitionable threefry).
        """
        key = jax.random.key(self.seed if seed is None else seed)
        if _nbytes(self.abstract_params) >= SMALL_MODEL_BYTES:
            return self._init_params(key)
        with jax.default_device(jax.local_devices()[0]):
            local = jax.device_get(_init_unsharded(self.model, self.rules, self.dummy_batch, key))
        return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]),
                            local, self.params_shardings)

    def init_state(self, params: Any | None = None) -> TrainState:
        """Fresh state: params from `params` (finetuning) or the model's init; new optimizer."""
        params = self.init_params() if params is None else jax.device_put(params, self.params_shardings)
        opt_state = self._init_opt_state(params)
        return self.make_state(0, params, opt_state)

    def make_state(self, step: int, params: Any, opt_state: Any, rng_data: Any = None) -> TrainState:
        rep = partitioning.replicated(self.mesh)
        if rng_data is None:
            rng_data = jax.random.key_data(jax.random.key(self.seed))
        return TrainState(step=jax.device_put(jnp.asarray(step, jnp.int32), rep), params=params,
                          opt_state=opt_state,
                          rng=jax.device_put(jnp.asarray(np.asarray(rng_data, np.uint32)), rep))

    # -- steps ----------------------------------------------------------------
    def _dropout_rng(self, state: TrainState, microbatch: jax.Array | int) -> jax.Array | None:
        if not getattr(self.model.config, "dropout_rate", 0.0):
            return None
        key = jax.random.wrap_key_data(state.rng)
        return jax.random.fold_in(jax.random.fold_in(key, state.step), microbatch)

    def _grad_and_sums(self, params, batch, dropout_rng):
        def objective(p):
            return self.model.loss_sums(p, batch, dropout_rng, z_loss=self.loss.z_loss,
                                        label_smoothing=self.loss.label_smoothing)
        (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return grads, {k: sums[k].astype(jnp.float32) for k in SUM_KEYS}

    def _train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        with self._context():
            k = self.num_microbatches
            if k == 1:
                grads, sums = self._grad_and_sums(state.params, batch, self._dropout_rng(state, 0))
            else:
                micro = jax.tree.map(lambda x: self._split_microbatches(x, k), batch)

                def accumulate(carry, xs):
                    i, mb = xs
                    g, s = self._grad_and_sums(state.params, mb, self._dropout_rng(state, i))
                    return jax.tree.map(jnp.add, carry, (g, s)), None

                zeros = jax.tree.map(jnp.zeros_like, (state.params, {k_: jnp.zeros((), jnp.float32)
                                                                     for k_ in SUM_KEYS}))
                (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(k), micro))
            normalizer = (jnp.asarray(self.loss.loss_normalizing_factor, jnp.float32)
                          if self.loss.loss_normalizing_factor else jnp.maximum(sums["weight_sum"], 1.0))
            grads = jax.tree.map(lambda g: g / normalizer, grads)
            updates, opt_state = self.optimizer.tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            metrics = _normalized(sums)
            metrics["grad_norm"] = optax.global_norm(grads)
            metrics["param_norm"] = optax.global_norm(params)
            metrics["learning_rate"] = jnp.asarray(self.optimizer.learning_rate(state.step), jnp.float32)
            new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
            return new_state, metrics

    def _split_microbatches(self, x: jax.Array, k: int) -> jax.Array:
        """[B, ...] -> [k, B/k, ...] with microbatch i = rows i, i+k, ... (no data movement)."""
        b = x.shape[0]
        x = x.reshape(b // k, k, *x.shape[1:]).swapaxes(0, 1)
        spec = P(None, partitioning.BATCH_AXES, *([None] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    def _eval_step(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
        with self._context():
            _, sums = self.model.loss_sums(params, batch, None, z_loss=self.loss.z_loss,
                                           label_smoothing=0.0)
            return {k: sums[k].astype(jnp.float32) for k in SUM_KEYS}

    def global_batch(self, local_batch: Batch) -> Batch:
        """This process's rows -> global arrays on the mesh (keys as the model expects)."""
        return partitioning.host_local_to_global(self.host_batch(local_batch), self.mesh)

    def host_batch(self, local_batch: Batch) -> dict[str, np.ndarray]:
        """A batch's features as numpy arrays of the model's dtypes (KeyError naming missing ones)."""
        missing = set(self.dummy_batch) - set(local_batch)
        if missing:
            raise KeyError(f"batch lacks features {sorted(missing)}; has {sorted(local_batch)}")
        return {k: np.asarray(local_batch[k]).astype(self.dummy_batch[k].dtype) for k in self.dummy_batch}

    def stacked_train_step(self) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
        """The train step over states and batches stacked on a leading seed axis (donates the state).
        Compiled once per Trainer and the copies sharing its programs, in the `stacked_form`:
        - 'unrolled' (one CPU device): the lone step once per seed, side by side in one program.
          Each seed's numbers are its lone run's, bitwise; XLA:CPU runs the seeds' independent
          ops on its threads at once.
        - 'vmap' (an accelerator, or a mesh): `jax.vmap` of the lone step, one batched program
          whatever the number of seeds; seed s's row is its own run's step up to float rounding
          (a batched matmul adds in another order). On a mesh with a SEED_AXIS
          (partitioning.stacked_mesh) every argument's seed axis is split over it and the rest
          sharded as the lone step's (the `stacked_shardings`); the model's own sharding
          constraints get the seed axis too (`spmd_axis_name`)."""
        if "step" not in self._stacked:
            if partitioning.SEED_AXIS in self.mesh.axis_names:
                state_shardings, batch_shardings = self.stacked_shardings()
                self._stacked["step"] = jax.jit(
                    jax.vmap(self._train_step, spmd_axis_name=partitioning.SEED_AXIS),
                    in_shardings=(state_shardings, batch_shardings),
                    out_shardings=(state_shardings, partitioning.replicated(self.mesh)), donate_argnums=(0,))
            elif self.stacked_form() == "unrolled":
                self._stacked["step"] = jax.jit(self._unrolled_train_step, donate_argnums=(0,))
            else:
                self._stacked["step"] = jax.jit(jax.vmap(self._train_step), donate_argnums=(0,))
        return self._stacked["step"]

    def stacked_form(self) -> str:
        """How `stacked_train_step` stacks seeds on this mesh: 'unrolled' on one CPU device, where a
        batched program is no faster than the lone steps (docs/performance.md, issue 29) and
        unrolling keeps every seed's numbers bitwise; 'vmap' elsewhere, where one batched program
        fills a device that a small model leaves idle."""
        device = self.mesh.devices.flat[0]
        return "unrolled" if self.mesh.size == 1 and device.platform == "cpu" else "vmap"

    def _unrolled_train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        seeds = jax.tree.leaves(batch)[0].shape[0]
        return stack([self._train_step(*seed_slice((state, batch), s)) for s in range(seeds)])

    def stacked_shardings(self) -> tuple[TrainState, dict[str, NamedSharding]]:
        """The stacked step's state and batch shardings on a `partitioning.stacked_mesh`."""
        stack = partitioning.seed_stacked
        return jax.tree.map(stack, self.state_shardings), jax.tree.map(stack, self.batch_shardings)

    def abstract_stacked_arguments(self, num_seeds: int) -> tuple[TrainState, Batch]:
        """The stacked step's (state, batch) for `num_seeds` seeds as ShapeDtypeStructs (for .lower()):
        each lone argument with a leading seed axis, in the `stacked_shardings` on a mesh with a
        SEED_AXIS, else in the lone argument's sharding."""
        lone = (self.abstract_state(), self.abstract_batch())
        if partitioning.SEED_AXIS in self.mesh.axis_names:
            shardings = self.stacked_shardings()
        else:
            shardings = jax.tree.map(lambda x: x.sharding, lone)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct((num_seeds, *x.shape), x.dtype, sharding=s),
                            lone, shardings)



def stack(trees: Sequence) -> Any:
    """Trees of equal structure -> one tree whose leaves carry a leading seed axis (values exact):
    the layout of `Trainer.stacked_train_step`'s arguments and results."""
    return jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(leaf) for leaf in leaves]), *trees)


def seed_slice(tree: Any, index: int) -> Any:
    """Seed `index`'s row of a `stack`ed tree (its own arrays: a stacked state may be donated)."""
    return jax.tree.map(lambda x: x[index], tree)

SMALL_MODEL_BYTES = 256 * 2**20


def _nbytes(tree: Any) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _init_unsharded(model: Any, rules, dummy_batch: Batch, key: jax.Array) -> Any:
    """Parameters on the default device, traced without a mesh (no sharding constraints)."""
    layout = tuple((k, v.shape, str(v.dtype)) for k, v in sorted(dummy_batch.items()))
    return _init_unsharded_jit(model, tuple(rules), layout, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_unsharded_jit(model: Any, rules, batch_layout, key: jax.Array) -> Any:
    batch = {k: jnp.ones(shape, dtype) for k, shape, dtype in batch_layout}
    with nn.logical_axis_rules(rules):
        return nn.unbox(model.init(key, batch)["params"])


def _normalized(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    w = jnp.maximum(sums["weight_sum"], 1.0)
    return {"loss": sums["loss_sum"] / w, "z_loss": sums["z_loss_sum"] / w,
            "accuracy": sums["correct_sum"] / w, "weight_sum": sums["weight_sum"]}


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def _key_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _opt_state_shardings(abstract_opt: Any, abstract_params: Any, params_shardings: Any, mesh: Mesh) -> Any:
    """An optimizer-state leaf shaped like the parameter whose path it ends with
    gets that parameter's sharding; everything else (counts, Adafactor's
    factored row/column statistics) is small and replicated."""
    by_path = {}
    for (path, x), s in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                            jax.tree.leaves(params_shardings)):
        by_path[_key_names(path)] = (x.shape, s)
    rep = partitioning.replicated(mesh)

    def pick(path, leaf):
        names = _key_names(path)
        for n in range(len(names)):
            match = by_path.get(names[n:])
            if match is not None:
                return match[1] if match[0] == leaf.shape else rep
        return rep
    return jax.tree_util.tree_map_with_path(pick, abstract_opt)


# -- the loop ------------------------------------------------------------------
class StopRequested:
    """Set by SIGTERM (and SIGINT if asked); the loop saves and returns."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.requested = False
        self.signal_number: int | None = None
        self._previous = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers
                pass

    def _handle(self, signum, frame):
        log.warning("signal %d received: saving a checkpoint and stopping", signum)
        self.requested = True
        self.signal_number = signum

    def agreed(self) -> bool:
        """True on every process once any process was asked to stop."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.array(self.requested, np.int32))
        return bool(np.any(flags))

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass
class LoopOptions:
    total_steps: int
    log_period: int = 10
    checkpoint_period: int = 1000
    eval_period: int = 0       # 0: evaluate only at the end (if an eval source exists)
    eval_steps: int = 10       # batches per evaluation


@dataclasses.dataclass
class LoopResult:
    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    stopped_by_signal: bool = False


def evaluate_loss(trainer: Trainer, params: Any, batches: Iterator[Batch], num_batches: int) -> dict[str, float]:
    """Validation loss, perplexity and accuracy over `num_batches` batches (token-weighted)."""
    totals = {k: 0.0 for k in SUM_KEYS}
    for i, local in enumerate(batches):
        if i >= num_batches:
            break
        sums = jax.device_get(trainer.eval_step(params, trainer.global_batch(local)))
        for k in SUM_KEYS:
            totals[k] += float(sums[k])
    w = max(totals["weight_sum"], 1.0)
    loss = totals["loss_sum"] / w
    return {"loss": loss, "perplexity": math.exp(min(loss, 100.0)), "accuracy": totals["correct_sum"] / w,
            "weight_sum": totals["weight_sum"]}


class LoopLane:
    """One run's side of the loop, after each step: its metrics checked by a DivergenceGuard,
    logged, evaluated and saved on the run's periods. `train_loop` drives one lane with one
    state; training/stacked.py drives one lane per seed of a stacked state (`pick` takes the
    seed's row of the fetched metrics, `state_of` its slice of the state)."""

    def __init__(self, trainer: Trainer, params: Any, options: LoopOptions, *,
                 save: Callable[[TrainState, dict | None], None],
                 eval_batches: Callable[[], Iterator[Batch]] | None, logger: Any,
                 pick: Callable[[dict], dict] = lambda metrics: metrics):
        self.trainer, self.options, self.save, self.eval_batches, self.logger, self.pick = (
            trainer, options, save, eval_batches, logger, pick)
        self.pending: list[tuple[int, dict]] = []  # device metrics not yet checked on host
        self.last_train: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.guard = DivergenceGuard(trainer.model.config.vocab_size, float(trainer.param_norm(params)))

    def check_pending(self, step: int, saving: bool = False) -> None:
        for s, m in self.pending:
            # loss: before update s; param_norm: after it (what a save would write)
            self.last_train = {k: float(v) for k, v in self.pick(jax.device_get(m)).items()}
            self.guard.check(s, self.last_train)
        self.pending.clear()
        if saving:
            self.guard.check_savable(step, self.last_train)

    def after_step(self, step: int, metrics: dict, state_of: Callable[[], TrainState], stopping: bool) -> None:
        """Step `step` ran (its metrics still on the device): log, evaluate, save when due."""
        options = self.options
        self.pending.append((step, metrics))
        is_last = step == options.total_steps
        if step % options.log_period == 0 or is_last:
            self.check_pending(step)
            self.logger.write("train", step, {**self.last_train, **self.logger.throughput(step)})
        eval_now = self.eval_batches is not None and (
            is_last or (options.eval_period and step % options.eval_period == 0))
        if eval_now or step % options.checkpoint_period == 0 or is_last or stopping:
            state = state_of()
        if eval_now:
            assert self.eval_batches is not None
            with profiling.phase("evaluate"):
                self.last_eval = evaluate_loss(self.trainer, state.params, self.eval_batches(), options.eval_steps)
            self.logger.write("eval", step, self.last_eval)
        if step % options.checkpoint_period == 0 or is_last or stopping:
            self.check_pending(step, saving=True)
            with profiling.phase("checkpoint"):
                self.save(state, {"eval_loss": self.last_eval["loss"]} if eval_now else None)

    def result(self, step: int, stopped_by_signal: bool = False) -> LoopResult:
        if stopped_by_signal:
            self.logger.message(f"stopped by signal at step {step}; checkpoint saved")
        else:
            self.check_pending(step)
        return LoopResult(step, self.last_train, self.last_eval, stopped_by_signal=stopped_by_signal)


def train_loop(trainer: Trainer, state: TrainState, batches: Iterator[Batch], options: LoopOptions,
               *, save: Callable[[TrainState, dict | None], None],
               eval_batches: Callable[[], Iterator[Batch]] | None, logger: Any,
               stop: StopRequested | None = None,
               check_storage: Callable[[], None] | None = None,
               profiler: profiling.StepProfiler | None = None) -> tuple[TrainState, LoopResult]:
    """Runs steps from state.step to options.total_steps.

    `save(state, metrics)` is called every checkpoint_period steps, at the
    end, and when a stop is requested (SIGTERM); metrics carry eval_loss when
    an evaluation ran at that step (for keep-best, make checkpoint_period a
    multiple of eval_period). Every step's metrics go through a DivergenceGuard
    (guards.py) before every save and at every log step: NaN/inf, or a collapse
    (uniform loss with no gradient, an exploded parameter norm), raises a
    TrainingDivergedError without saving, so the last checkpoint stays good.
    `check_storage()` runs after every step: it raises as soon as a background
    save has failed (a full disk), instead of training on without checkpoints.
    The bookkeeping after each step is the run's `LoopLane`. Data loading, the train step,
    evaluation and saving are named spans in a jax.profiler trace (profiling.py); `profiler`
    starts and stops one around its window of steps (the caller closes it).
    """
    step = int(jax.device_get(state.step))
    lane = LoopLane(trainer, state.params, options, save=save, eval_batches=eval_batches, logger=logger)
    timing_started = False
    while step < options.total_steps:
        if profiler is not None:
            profiler.before_step(step + 1)
        with profiling.phase("data"):
            batch = trainer.global_batch(next(batches))
        with profiling.train_step_annotation(step + 1):
            state, metrics = trainer.train_step(state, batch)
        step += 1
        if check_storage is not None:
            check_storage()
        if not timing_started:  # exclude compilation (first step) from tokens/s
            jax.block_until_ready(metrics)
            logger.start(step)
            timing_started = True
        stopping = stop is not None and stop.agreed()
        lane.after_step(step, metrics, lambda: state, stopping)
        if profiler is not None:
            profiler.after_step(step, metrics)
        if stopping and step < options.total_steps:
            return state, lane.result(step, stopped_by_signal=True)
    return state, lane.result(step)
