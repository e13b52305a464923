"""Confidence intervals and scaling fits on cases with known answers."""
import numpy as np
import pytest

from t5x_like.experiments import stats


def test_identical_runs_give_an_interval_around_zero():
    rng = np.random.default_rng(0)
    losses = rng.normal(3.0, 0.5, size=(2, 400))
    interval = stats.paired_difference_ci(losses, losses.copy())
    assert interval.contains(0.0)
    assert "within noise" in stats.describe_difference("a", "b", interval)


def test_planted_difference_is_detected():
    rng = np.random.default_rng(1)
    base = rng.normal(3.0, 0.5, size=(2, 400))
    worse = base + 0.2 + rng.normal(0, 0.05, size=base.shape)
    interval = stats.paired_difference_ci(base, worse)
    assert interval.high < 0
    assert interval.estimate == pytest.approx(-0.2, abs=0.02)
    assert stats.describe_difference("a", "b", interval).startswith("a has lower loss than b")


def test_seed_noise_widens_the_interval():
    rng = np.random.default_rng(2)
    examples = rng.normal(3.0, 0.5, size=400)
    quiet = np.stack([examples, examples + 0.001])
    noisy = np.stack([examples, examples + 0.5])
    width = lambda x: stats.layout_mean_ci(x).high - stats.layout_mean_ci(x).low
    assert width(noisy) > 2 * width(quiet)


def test_interval_covers_the_true_mean_most_of_the_time():
    rng = np.random.default_rng(3)
    covered = sum(stats.layout_mean_ci(rng.normal(1.0, 1.0, size=(3, 200)), num_replicates=300, seed=i).contains(1.0)
                  for i in range(60))
    assert covered >= 50  # nominal 95%: 57 of 60 expected


def test_scaling_fit_recovers_planted_exponent():
    n = np.repeat([1e5, 3e5, 1e6, 3e6, 1e7], 2)
    rng = np.random.default_rng(4)
    loss = 1.7 + 400.0 * n ** -0.35 + rng.normal(0, 0.002, size=n.shape)
    fit = stats.fit_scaling_law(n, loss, num_replicates=200)
    assert fit.alpha == pytest.approx(0.35, abs=0.03)
    assert fit.alpha_interval.contains(0.35)


def test_kaplan_form_recovers_a_planted_pure_power_law_and_has_no_irreducible_loss():
    n = np.repeat([1e5, 3e5, 1e6, 3e6, 1e7], 4)
    rng = np.random.default_rng(5)
    loss = 20.0 * n ** -0.076 * np.exp(rng.normal(0, 0.01, size=n.shape))
    fit = stats.fit_scaling_law(n, loss, num_replicates=200, irreducible_loss=False)
    assert fit.E == 0.0
    assert fit.alpha == pytest.approx(0.076, abs=0.003)
    interval = fit.alpha_interval
    assert interval.low < fit.alpha < interval.high and interval.high - interval.low < 0.01
    assert fit.alpha == pytest.approx(-np.polyfit(np.log(n), np.log(loss), 1)[0], rel=1e-9)  # the log-log slope
    assert fit.predict(1e6) == pytest.approx(20.0 * 1e6 ** -0.076, rel=0.01)
    with pytest.raises(ValueError, match="positive, finite"):
        stats.fit_scaling_law(n, np.where(n == 1e5, np.nan, loss), irreducible_loss=False)


def test_the_two_forms_differ_when_the_loss_has_a_floor():
    n = np.repeat([1e5, 3e5, 1e6, 3e6, 1e7], 2)
    loss = 1.7 + 400.0 * n ** -0.35
    with_floor = stats.fit_scaling_law(n, loss, num_replicates=50)
    kaplan = stats.fit_scaling_law(n, loss, num_replicates=50, irreducible_loss=False)
    assert with_floor.alpha == pytest.approx(0.35, abs=0.01)
    assert kaplan.alpha < 0.3  # a floor flattens the log-log line: Kaplan's form reads a smaller exponent


def test_scaling_fit_needs_three_sizes():
    with pytest.raises(ValueError, match="at least 3"):
        stats.fit_scaling_law([1e5, 1e5, 1e6], [3.0, 3.1, 2.5])


def test_steps_to_reach_interpolates_between_evaluations_and_is_inf_beyond_the_curve():
    steps, curve = [100, 200, 300], [3.0, 2.0, 1.5]
    assert stats.steps_to_reach(steps, curve, 2.5) == 150.0
    assert stats.steps_to_reach(steps, curve, 3.5) == 100.0
    assert stats.steps_to_reach(steps, curve, 1.0) == float("inf")


def test_equivalent_steps_interval_covers_the_planted_crossing_and_widens_with_seed_noise():
    steps = np.arange(50, 650, 50)
    rng = np.random.default_rng(0)
    curve = 4.0 - 2.0 * np.log(steps / 50) / np.log(12)  # reaches 3.0 between steps 150 and 200
    quiet = stats.equivalent_steps_ci(steps, [curve, curve, curve], [3.0, 3.0, 3.0])
    noisy = stats.equivalent_steps_ci(steps, curve + rng.normal(0, 0.2, (3, 1)), 3.0 + rng.normal(0, 0.2, 3))
    assert 150 < quiet.estimate < 200 and quiet.low == quiet.estimate == quiet.high
    assert noisy.high - noisy.low > 10 * (quiet.high - quiet.low)


def test_settling_step_is_where_the_final_ranking_starts_to_hold():
    steps = [100, 200, 300, 400]
    rankings = [("a", "b"), ("b", "a"), ("a", "b"), ("a", "b")]
    assert stats.settling_step(steps, rankings) == 300
    assert stats.settling_step(steps, [("a", "b")] * 4) == 100
    assert stats.settling_step([], []) is None


def test_curve_difference_finds_the_crossing_and_when_the_lead_is_resolved():
    rng = np.random.default_rng(0)
    steps = [100, 200, 300, 400, 500]
    # a starts ahead (lower loss), b overtakes at 300 and leads clearly from 400 on
    gap = np.array([-0.2, -0.05, 0.05, 0.3, 0.4])
    b = 3.0 - 0.1 * np.arange(5) + rng.normal(0, 0.01, (3, 5))
    a = b.mean(0) + gap + rng.normal(0, 0.01, (3, 5))
    a[:, 2] = b[:, 2].mean() + np.array([-0.05, 0.05, 0.15])  # ahead on average at 300, but not surely
    result = stats.curve_difference(steps, a, b)
    assert result["crossings"] == [300]
    assert result["resolved_from"] == 400
    assert result["differences"][0]["high"] < 0 < result["differences"][-1]["low"]
    # seeds that disagree at the end leave the final lead unresolved
    noisy = a.copy()
    noisy[0, -1] -= 1.0
    assert stats.curve_difference(steps, noisy, b)["resolved_from"] is None


def test_median_over_templates_is_robust_to_one_broken_template_and_its_interval_excludes_chance():
    rng = np.random.default_rng(0)
    good = rng.random((2, 2, 200)) < 0.8                     # two templates near 80%
    broken = np.zeros((2, 1, 200), bool)                     # one template always wrong
    interval = stats.median_accuracy_ci(np.concatenate([good, broken], axis=1))
    assert interval.estimate == pytest.approx(min(good.mean(axis=(0, 2))))
    assert not interval.contains(0.5) and interval.low < interval.estimate < interval.high


def test_median_accuracy_with_one_template_is_the_mean_accuracy_interval():
    correct = np.random.default_rng(1).random((3, 1, 100)) < 0.5
    median = stats.median_accuracy_ci(correct)
    mean = stats.layout_mean_ci(correct[:, 0, :].astype(float))
    assert median.estimate == pytest.approx(mean.estimate)
    assert median.contains(0.5) and median.high - median.low == pytest.approx(mean.high - mean.low, rel=0.2)
