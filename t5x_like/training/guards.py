"""Divergence guards: the rules that stop a run whose training has gone wrong (exit 3).

Owns: `TrainingDivergedError` and its two kinds, `NonFiniteLossError` and
`CollapsedRunError`, and `DivergenceGuard`, which the loop (trainer.train_loop)
feeds every step's loss, gradient norm and parameter norm before anything is
saved. Does not own the metrics (the train step computes them) or what the
command line does with the error (cli/train.py: one line on stderr, exit 3).

Rules, checked on every step (not only the logged ones):

  non-finite  the loss or the parameter norm is NaN or inf.
  collapsed   for COLLAPSE_WINDOW consecutive steps, either
                * the loss sits at the uniform-prediction value ln(vocab_size)
                  (within UNIFORM_LOSS_TOLERANCE) with a gradient norm under
                  ZERO_GRAD_NORM: the model gives the same flat distribution
                  whatever the input, and no gradient can move it again (what a
                  huge learning rate does to Adafactor: loss = ln(vocab), gradient
                  norm 0.0, parameter norm 1e9); or
                * the parameter norm is over EXPLOSION_FACTOR times the norm the
                  run (or the resumed run) started from.

A step that shows a sign of collapse is never saved: at a checkpoint step the
sign stops the run at once, even before the window is full, so the last
checkpoint is always the last good state and rerunning with a lower learning
rate resumes from it. No healthy run trips these: a gradient that is exactly
zero at the uniform loss means the network no longer depends on its
parameters, and training multiplies a parameter norm by a few at most, not a
thousand.
"""
from __future__ import annotations

import dataclasses
import math

COLLAPSE_WINDOW = 3            # consecutive steps showing a sign before the run is stopped
UNIFORM_LOSS_TOLERANCE = 1e-3  # |loss - ln(vocab_size)|, nats
ZERO_GRAD_NORM = 1e-6          # a gradient norm this small is no gradient at all
EXPLOSION_FACTOR = 1000.0      # parameter norm over the starting norm


class TrainingDivergedError(RuntimeError):
    """Training went wrong (NaN/inf, collapse); nothing was saved after it (exit 3)."""


class NonFiniteLossError(TrainingDivergedError):
    """The loss or the parameters became NaN/inf."""


class CollapsedRunError(TrainingDivergedError):
    """The loss sits at the uniform prediction with no gradient, or the parameter norm exploded."""


@dataclasses.dataclass
class _Sign:
    first_step: int
    what: str  # what was seen, for the message


class DivergenceGuard:
    """Checks every step's metrics; raises TrainingDivergedError (see the module docstring).

    `start_param_norm`: the norm of the parameters the loop starts from (None: no explosion rule)."""

    def __init__(self, vocab_size: int, start_param_norm: float | None = None):
        self.uniform_loss = math.log(vocab_size)
        self.vocab_size = vocab_size
        self.start_param_norm = start_param_norm
        self._sign: _Sign | None = None
        self._streak = 0

    def check(self, step: int, metrics: dict[str, float]) -> None:
        """`metrics` of step `step`: loss (before its update), grad_norm, param_norm (after it)."""
        loss, norm = metrics["loss"], metrics["param_norm"]
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss}) or parameters (norm {norm}) at step {step}; "
                "stopping. The last checkpoint (if any) is untouched; lower the learning rate or "
                "enable grad clipping and resume.")
        what = self._sign_of_collapse(metrics)
        if what is None:
            self._sign, self._streak = None, 0
            return
        if self._sign is None:
            self._sign = _Sign(step, what)
        self._streak += 1
        self._sign.what = what
        if self._streak >= COLLAPSE_WINDOW:
            raise self._error(step, metrics)

    def check_savable(self, step: int, metrics: dict[str, float]) -> None:
        """Before saving step `step`: CollapsedRunError if it shows a sign of collapse."""
        if self._sign is not None:
            raise self._error(step, metrics)

    def _sign_of_collapse(self, metrics: dict[str, float]) -> str | None:
        loss, grad_norm, norm = metrics["loss"], metrics.get("grad_norm", math.nan), metrics["param_norm"]
        if abs(loss - self.uniform_loss) <= UNIFORM_LOSS_TOLERANCE and grad_norm < ZERO_GRAD_NORM:
            return (f"the loss sat at ln(vocab_size {self.vocab_size}) = {self.uniform_loss:.4f} (a uniform "
                    f"prediction) with gradient norm {grad_norm:.1g}")
        if self.start_param_norm and norm > EXPLOSION_FACTOR * self.start_param_norm:
            return (f"the parameter norm exploded from {self.start_param_norm:.4g} to {norm:.4g} "
                    f"(over {EXPLOSION_FACTOR:g}x)")
        return None

    def _error(self, step: int, metrics: dict[str, float]) -> CollapsedRunError:
        assert self._sign is not None
        since = (f", with a sign of collapse at every step since step {self._sign.first_step}"
                 if step > self._sign.first_step else "")
        rate = metrics.get("learning_rate")
        at_rate = f" (it was {rate:.3g})" if rate is not None and math.isfinite(rate) else ""
        return CollapsedRunError(
            f"training collapsed at step {step}: {self._sign.what}{since}; stopping before saving. The last "
            f"checkpoint (if any) is untouched; lower the learning rate{at_rate} and rerun to resume from it.")
