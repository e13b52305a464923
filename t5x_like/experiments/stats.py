"""Statistics for comparison reports: bootstrap confidence intervals and scaling fits.

Owns the numbers a report states about noise. Everything is seeded, so a
report regenerated from the same runs prints the same intervals.

Bootstrap design (`layout_mean_ci`, `paired_difference_ci`): per-example losses
form an array [seeds, examples] for each layout, on the *same* validation
examples for every layout. One bootstrap replicate resamples the seeds of
each layout (with replacement) and one shared set of example indices (with
replacement), so run-to-run variation and the choice of validation examples
both widen the interval, while the pairing of examples across layouts is kept.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"{self.estimate:.4f} [{self.low:.4f}, {self.high:.4f}]"


def _as_matrix(losses) -> np.ndarray:
    matrix = np.asarray(losses, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[None]
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"expected per-example losses shaped [seeds, examples], got {matrix.shape}")
    return matrix


def _replicate_means(matrix: np.ndarray, seed_draws: np.ndarray, example_draws: np.ndarray) -> np.ndarray:
    # [replicates, seeds, examples] gathered, then averaged.
    return matrix[seed_draws[:, :, None], example_draws[:, None, :]].mean(axis=(1, 2))


def layout_mean_ci(losses, num_replicates: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Mean loss of one layout with a bootstrap interval over seeds and examples."""
    matrix = _as_matrix(losses)
    rng = np.random.default_rng(seed)
    seeds, examples = matrix.shape
    means = _replicate_means(matrix, rng.integers(0, seeds, (num_replicates, seeds)),
                             rng.integers(0, examples, (num_replicates, examples)))
    tail = (1 - confidence) / 2 * 100
    return Interval(float(matrix.mean()), *map(float, np.percentile(means, [tail, 100 - tail])))


def paired_difference_ci(losses_a, losses_b, num_replicates: int = 2000, confidence: float = 0.95,
                         seed: int = 0) -> Interval:
    """mean(a) - mean(b) with an interval; examples are paired, seeds independent."""
    a, b = _as_matrix(losses_a), _as_matrix(losses_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"layouts were scored on different example counts: {a.shape[1]} vs {b.shape[1]}")
    rng = np.random.default_rng(seed)
    examples = rng.integers(0, a.shape[1], (num_replicates, a.shape[1]))
    diffs = (_replicate_means(a, rng.integers(0, a.shape[0], (num_replicates, a.shape[0])), examples)
             - _replicate_means(b, rng.integers(0, b.shape[0], (num_replicates, b.shape[0])), examples))
    tail = (1 - confidence) / 2 * 100
    return Interval(float(a.mean() - b.mean()), *map(float, np.percentile(diffs, [tail, 100 - tail])))


def median_accuracy_ci(correct, num_replicates: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """The median over prompt templates of the accuracy, with a bootstrap interval over seeds and
    examples. correct: [seeds, templates, examples] of 0/1 (every template scored on the same
    examples); a replicate resamples the seeds and one set of example indices, shared by the
    templates, and takes the median of the templates' accuracies."""
    cube = np.asarray(correct, dtype=np.float64)
    if cube.ndim == 2:
        cube = cube[None]
    if cube.ndim != 3 or cube.size == 0:
        raise ValueError(f"expected correctness shaped [seeds, templates, examples], got {cube.shape}")
    rng = np.random.default_rng(seed)
    seeds, _, examples = cube.shape
    seed_draws = rng.integers(0, seeds, (num_replicates, seeds))
    example_draws = rng.integers(0, examples, (num_replicates, examples))
    # [replicates, seeds, templates, examples] -> accuracy per template -> median over templates
    per_template = cube[seed_draws[:, :, None, None], np.arange(cube.shape[1])[None, None, :, None],
                        example_draws[:, None, None, :]].mean(axis=(1, 3))
    medians = np.median(per_template, axis=1)
    tail = (1 - confidence) / 2 * 100
    return Interval(float(np.median(cube.mean(axis=(0, 2)))), *map(float, np.percentile(medians, [tail, 100 - tail])))


def mean_median_accuracy_ci(cubes, num_replicates: int = 2000, confidence: float = 0.95,
                            seed: int = 0) -> Interval:
    """The mean over families of each family's median-over-templates accuracy, with a bootstrap
    interval. cubes: one [seeds, templates, examples] of 0/1 per family, the same seeds (runs) in
    each; a replicate resamples the seeds once for every family (a run is scored on all of
    them) and each family's examples on their own, as `median_accuracy_ci` does for one."""
    cubes = _checked_cubes(cubes)
    seed_draws, example_draws = _cube_draws(cubes, num_replicates, seed)
    means = _mean_medians(cubes, seed_draws, example_draws)
    return _percentile_interval(_mean_median(cubes), means, confidence)


def mean_median_difference_ci(cubes_a, cubes_b, num_replicates: int = 2000, confidence: float = 0.95,
                              seed: int = 0) -> Interval:
    """Arm a's `mean_median_accuracy_ci` estimate minus arm b's, with a paired bootstrap interval:
    both arms were scored on the same examples of the same families, with their seeds paired by
    position, so a replicate draws one set of seeds and examples and applies it to both."""
    cubes_a, cubes_b = _checked_cubes(cubes_a), _checked_cubes(cubes_b)
    if [c.shape for c in cubes_a] != [c.shape for c in cubes_b]:
        raise ValueError(f"paired arms need cubes of the same shapes, got {[c.shape for c in cubes_a]} and "
                         f"{[c.shape for c in cubes_b]}")
    seed_draws, example_draws = _cube_draws(cubes_a, num_replicates, seed)
    differences = (_mean_medians(cubes_a, seed_draws, example_draws)
                   - _mean_medians(cubes_b, seed_draws, example_draws))
    return _percentile_interval(_mean_median(cubes_a) - _mean_median(cubes_b), differences, confidence)


def _checked_cubes(cubes) -> list[np.ndarray]:
    cubes = [np.asarray(c, dtype=np.float64) for c in cubes]
    if not cubes or any(c.ndim != 3 or c.size == 0 for c in cubes) or len({c.shape[0] for c in cubes}) != 1:
        raise ValueError(f"expected [seeds, templates, examples] cubes with the same seeds, got "
                         f"{[c.shape for c in cubes]}")
    return cubes


def _cube_draws(cubes: list[np.ndarray], num_replicates: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(seed draws shared by every family, each family's example draws)."""
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, cubes[0].shape[0], (num_replicates, cubes[0].shape[0]))
    return seed_draws, [rng.integers(0, c.shape[2], (num_replicates, c.shape[2])) for c in cubes]


def _mean_medians(cubes: list[np.ndarray], seed_draws: np.ndarray, example_draws: list[np.ndarray]) -> np.ndarray:
    """Per replicate: the mean over families of the median over templates of the resampled accuracy."""
    medians = []
    for cube, draws in zip(cubes, example_draws):
        per_template = cube[seed_draws[:, :, None, None], np.arange(cube.shape[1])[None, None, :, None],
                            draws[:, None, None, :]].mean(axis=(1, 3))
        medians.append(np.median(per_template, axis=1))
    return np.mean(medians, axis=0)


def _mean_median(cubes: list[np.ndarray]) -> float:
    return float(np.mean([np.median(c.mean(axis=(0, 2))) for c in cubes]))


def _percentile_interval(estimate: float, replicates: np.ndarray, confidence: float) -> Interval:
    tail = (1 - confidence) / 2 * 100
    return Interval(estimate, *map(float, np.percentile(replicates, [tail, 100 - tail])))


def describe_difference(name_a: str, name_b: str, interval: Interval) -> str:
    """One sentence for a report: who is lower, by how much, or that it is noise."""
    if interval.contains(0.0):
        return (f"{name_a} vs {name_b}: difference {interval.estimate:+.4f} nats/token, 95% CI "
                f"[{interval.low:+.4f}, {interval.high:+.4f}] includes 0 — within noise.")
    better, worse = (name_a, name_b) if interval.estimate < 0 else (name_b, name_a)
    return (f"{better} has lower loss than {worse} by {abs(interval.estimate):.4f} nats/token "
            f"(95% CI of {name_a} − {name_b}: [{interval.low:+.4f}, {interval.high:+.4f}]).")


# --- scaling law -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ScalingFit:
    """L(N) = E + A · N^(−alpha), with a bootstrap interval on alpha (E = 0 in Kaplan's form)."""

    E: float
    A: float
    alpha: float
    alpha_interval: Interval

    def predict(self, n):
        return self.E + self.A * np.power(np.asarray(n, np.float64), -self.alpha)


def _fit_power_law(n: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    from scipy.optimize import curve_fit

    scale = n.min()
    model = lambda x, E, A, alpha: E + A * np.power(x / scale, -alpha)
    p0 = (max(loss.min() - 0.1, 0.0), max(loss.max() - loss.min(), 1e-3), 0.3)
    (E, A_scaled, alpha), _ = curve_fit(model, n, loss, p0=p0, maxfev=20_000,
                                        bounds=([0.0, 0.0, 0.0], [np.inf, np.inf, 5.0]))
    return float(E), float(A_scaled * scale ** alpha), float(alpha)


def _fit_pure_power_law(n: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """Kaplan's L = A · N^(−alpha): a straight line in log-log."""
    if not (np.all(np.isfinite(loss)) and np.all(loss > 0) and np.all(n > 0)):
        raise ValueError("a pure power-law fit needs positive, finite sizes and losses")
    slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
    return 0.0, float(np.exp(intercept)), float(-slope)


def fit_scaling_law(num_params, losses, num_replicates: int = 500, seed: int = 0,
                    irreducible_loss: bool = True) -> ScalingFit:
    """Least-squares fit over (N, loss) points, several seeds per N allowed.

    With `irreducible_loss` (Hoffmann et al.'s form) E is fitted; without it E = 0 and the
    fit is Kaplan et al.'s pure power law, whose alpha is the log-log slope. The interval on
    alpha resamples points within each size (keeping every size present), so it reflects
    seed noise, not the choice of sizes.
    """
    fit = _fit_power_law if irreducible_loss else _fit_pure_power_law
    n = np.asarray(num_params, np.float64)
    loss = np.asarray(losses, np.float64)
    sizes = np.unique(n)
    if len(sizes) < 3:
        raise ValueError(f"a scaling fit needs at least 3 model sizes, got {len(sizes)}")
    E, A, alpha = fit(n, loss)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(n == size) for size in sizes]
    alphas = []
    for _ in range(num_replicates):
        idx = np.concatenate([rng.choice(g, size=len(g)) for g in groups])
        try:
            alphas.append(fit(n[idx], loss[idx])[2])
        except RuntimeError:  # a degenerate resample that does not converge
            continue
    low, high = np.percentile(alphas, [2.5, 97.5]) if alphas else (np.nan, np.nan)
    return ScalingFit(E, A, alpha, Interval(alpha, float(low), float(high)))


def steps_to_reach(steps, curve, target: float) -> float:
    """The first step at which a loss curve reaches `target` (linear between evaluations);
    inf if it never does, steps[0] if it starts there."""
    steps, curve = np.asarray(steps, dtype=np.float64), np.asarray(curve, dtype=np.float64)
    below = np.nonzero(curve <= target)[0]
    if below.size == 0:
        return float("inf")
    i = int(below[0])
    if i == 0:
        return float(steps[0])
    fraction = (curve[i - 1] - target) / (curve[i - 1] - curve[i])
    return float(steps[i - 1] + fraction * (steps[i] - steps[i - 1]))


def equivalent_steps_ci(steps, baseline_curves, finals, num_replicates: int = 2000, confidence: float = 0.95,
                        seed: int = 0) -> Interval:
    """How many steps of a baseline (eval-loss curves [seeds, evaluations] at `steps`) reach the
    mean final loss of other runs (`finals`, one per seed): the crossing of the baseline's mean
    curve, with a bootstrap interval resampling the seeds of both. inf: never within the curve."""
    curves = _as_matrix(baseline_curves)
    finals = np.asarray(finals, dtype=np.float64)
    rng = np.random.default_rng(seed)
    estimate = steps_to_reach(steps, curves.mean(0), float(finals.mean()))
    draws = [steps_to_reach(steps, curves[rng.integers(0, len(curves), len(curves))].mean(0),
                            float(finals[rng.integers(0, len(finals), len(finals))].mean()))
             for _ in range(num_replicates)]
    tail = (1 - confidence) / 2 * 100
    # inf draws sort last; no interpolation between order statistics (inf - inf is undefined)
    low, high = np.percentile(draws, tail, method="lower"), np.percentile(draws, 100 - tail, method="higher")
    return Interval(estimate, float(low), float(high))


# --- when a ranking settles ---------------------------------------------------------
def settling_step(steps, ranking_at_step: list[tuple]) -> int | None:
    """The first step from which the ranking equals the final one at every later evaluation."""
    if not ranking_at_step:
        return None
    final, settled = ranking_at_step[-1], steps[-1]
    for step, ranking in zip(reversed(steps), reversed(ranking_at_step)):
        if ranking != final:
            break
        settled = step
    return int(settled)


def curve_difference(steps, curves_a, curves_b, num_replicates: int = 2000, seed: int = 0) -> dict:
    """mean(a) − mean(b) at every evaluation (curves [seeds, evaluations]), each with a bootstrap
    interval over the seeds of both; the evaluations where its sign flipped (a crossing); and
    `resolved_from`: the first step from which every interval excludes 0 on the final side."""
    a, b = _as_matrix(curves_a), _as_matrix(curves_b)
    intervals = [paired_difference_ci(a[:, [i]], b[:, [i]], num_replicates, seed=seed) for i in range(len(steps))]
    signs = [np.sign(iv.estimate) for iv in intervals]
    crossings = [int(steps[i]) for i in range(1, len(steps)) if signs[i] != signs[i - 1] and signs[i] != 0]
    final_sign = signs[-1]
    excludes_zero_on_final_side = [not iv.contains(0.0) and np.sign(iv.estimate) == final_sign for iv in intervals]
    resolved_from = None
    for i in range(len(steps) - 1, -1, -1):
        if not excludes_zero_on_final_side[i]:
            break
        resolved_from = int(steps[i])
    return {"steps": [int(s) for s in steps], "differences": [iv.as_dict() for iv in intervals],
            "crossings": crossings, "resolved_from": resolved_from}
