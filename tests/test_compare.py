"""The statistics behind `farmbench check`: Mann-Whitney U and Student's t against published values, the verdict
gates on synthetic latencies, and the no-crying-wolf property on A/A pairs (same distribution sampled twice)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from farmbench.results.compare import (
    IMPROVEMENT,
    REGRESSION,
    UNCHANGED,
    Thresholds,
    compare_latency_samples,
    compare_session_values,
    compare_top1,
    sessions_needed,
)
from farmbench.results.significance import (
    _exact_u_counts,
    mann_whitney_u,
    regularized_incomplete_beta,
    student_t_two_sided_p,
)

# Mann & Whitney's worked example as used in SciPy's mannwhitneyu documentation: U = 17, exact two-sided
# p = 14/126 (7 of the C(9, 4) = 126 orderings have U <= 3), asymptotic p = 0.11134688653314041.
MALES = [19, 22, 16, 29, 24]
FEMALES = [20, 11, 17, 12]


def test_mann_whitney_exact_matches_the_textbook_example() -> None:
    result = mann_whitney_u(MALES, FEMALES)
    assert result.method == "exact" and result.u == 17
    assert result.p_value == pytest.approx(14 / 126, abs=1e-15)
    # The statistic is of the first sample: swapping sides gives m*n - U and the same two-sided p.
    swapped = mann_whitney_u(FEMALES, MALES)
    assert swapped.u == 3 and swapped.p_value == pytest.approx(result.p_value, abs=1e-15)


def test_mann_whitney_normal_approximation_matches_published_and_scipy_values() -> None:
    # The same example through the normal approximation, continuity-corrected (the formula the code uses when
    # samples are large or tied), reproduces SciPy's published asymptotic value.
    m, n, u = 5, 4, 17
    z = (abs(u - m * n / 2) - 0.5) / math.sqrt(m * n * (m + n + 1) / 12)
    assert math.erfc(z / math.sqrt(2)) == pytest.approx(0.11134688653314041, abs=1e-15)
    # Small samples with ties are exact too (the permutation distribution of the rank sum with mid-ranks):
    # SciPy 1.17.1 permutation_test(..., n_resamples=inf) of the U statistic gives 0.10023310023310024 (its
    # mannwhitneyu(method="asymptotic") 0.0783 is the normal approximation, anti-conservative here).
    tied = mann_whitney_u([1, 2, 2, 3, 3, 3, 4], [2, 3, 4, 4, 5, 5])
    assert tied.method == "exact" and tied.u == 8.5
    assert tied.p_value == pytest.approx(0.10023310023310024, rel=1e-12)
    # Latency-like samples with outliers and ties, 22 vs 24 (normal path, tie-corrected): SciPy 1.17.1
    # mannwhitneyu(method="asymptotic") gives U = 69.5, p = 1.937388149897142e-05.
    x = [812.0, 845.5, 790.25, 845.5, 1020.0, 799.0, 805.5, 830.0, 845.5, 2400.0, 801.0, 815.0, 822.5, 809.0,
         799.0, 818.0, 811.0, 840.0, 826.0, 805.0, 799.0, 813.0]
    y = [840.0, 851.0, 845.5, 860.0, 829.0, 845.5, 902.0, 866.0, 839.0, 870.5, 855.0, 848.0, 3100.0, 861.0,
         845.5, 852.0, 849.0, 858.0, 842.0, 863.0, 840.0, 857.0, 851.0, 866.0]
    big = mann_whitney_u(x, y)
    assert big.method == "normal" and big.u == 69.5 and big.p_value == pytest.approx(1.937388149897142e-05, rel=1e-12)


@pytest.mark.parametrize(("m", "n"), [(1, 1), (2, 3), (3, 3), (4, 6), (5, 5)])
def test_exact_distribution_matches_brute_force_enumeration(m: int, n: int) -> None:
    counts = [0] * (m * n + 1)
    for x_positions in itertools.combinations(range(m + n), m):
        # U = pairs (x, y) with x ranked above y = sum over x of the y's below it.
        u = sum(position - index for index, position in enumerate(x_positions))
        counts[u] += 1
    assert _exact_u_counts(m, n) == counts


def test_mann_whitney_edge_cases() -> None:
    assert mann_whitney_u([5.0, 5.0], [5.0, 5.0, 5.0]).p_value == 1.0
    separated = mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert separated.p_value == pytest.approx(0.1) and separated.min_p_value == pytest.approx(0.1)
    five = mann_whitney_u([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert five.p_value == pytest.approx(2 / 252) and five.p_value < 0.01
    with pytest.raises(ValueError, match="at least one value"):
        mann_whitney_u([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        mann_whitney_u([float("nan")], [1.0])
    assert sessions_needed(0.01) == 5 and sessions_needed(0.05) == 4 and sessions_needed(0.2) == 3


def test_student_t_against_closed_forms_and_tables() -> None:
    for t in (0.3, 1.0, 4.0):
        assert student_t_two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, abs=1e-13)  # Cauchy
        assert student_t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-13)
    # Critical values from any t table: t(0.995, 4) = 4.604, t(0.975, 10) = 2.228.
    assert student_t_two_sided_p(4.604, 4) == pytest.approx(0.01, abs=2e-5)
    assert student_t_two_sided_p(-2.228, 10) == pytest.approx(0.05, abs=2e-5)
    assert student_t_two_sided_p(3.0, 7) == pytest.approx(0.019942126131992536, rel=1e-10)  # SciPy 1.17.1
    assert student_t_two_sided_p(0.0, 5) == 1.0 and student_t_two_sided_p(math.inf, 3) == 0.0
    assert regularized_incomplete_beta(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-12)  # 1-(1-x)^3(1+3x)


def _sessions(rng: np.random.Generator, sessions: int, n: int, median_us: float, *, shift: float = 1.0,
              session_sigma: float = 0.03, sigma: float = 0.06) -> list[np.ndarray]:
    """Realistic latency sessions: each session has its own level (placement, background load; lognormal,
    session_sigma), iterations are lognormal around it, and 2% are scheduler outliers at 1.5-4x."""
    out = []
    for _ in range(sessions):
        level = median_us * shift * math.exp(rng.normal(0.0, session_sigma))
        samples = level * np.exp(rng.normal(0.0, sigma, n))
        outliers = rng.random(n) < 0.02
        samples[outliers] *= rng.uniform(1.5, 4.0, int(outliers.sum()))
        out.append(samples)
    return out


def test_raw_latency_regression_improvement_and_unchanged() -> None:
    rng = np.random.default_rng(11)
    base = _sessions(rng, 3, 800, 1500.0)
    slower = compare_latency_samples(base, _sessions(rng, 3, 800, 1500.0, shift=1.3))
    assert slower.verdict == REGRESSION and slower.p_value is not None and slower.p_value < 1e-10
    assert slower.session_p_value is not None and slower.session_p_value < 0.01
    assert 20 < (slower.change_pct or 0) < 40 and slower.candidate_median > slower.baseline_median
    faster = compare_latency_samples(base, _sessions(rng, 3, 800, 1500.0, shift=0.7))
    assert faster.verdict == IMPROVEMENT and (faster.change_pct or 0) < -20
    # A 2% shift with consistent sessions: the test says it is real, the 5% threshold says it does not matter.
    small = compare_latency_samples(_sessions(rng, 3, 3000, 1500.0, session_sigma=0.002),
                                    _sessions(rng, 3, 3000, 1500.0, shift=1.02, session_sigma=0.002))
    assert small.verdict == UNCHANGED and small.p_value is not None and small.p_value < 0.01
    assert "threshold" in small.reason


def test_the_floor_protects_tiny_models() -> None:
    rng = np.random.default_rng(12)
    base = _sessions(rng, 3, 3000, 100.0, session_sigma=0.002, sigma=0.02)
    cand = _sessions(rng, 3, 3000, 100.0, shift=1.08, session_sigma=0.002, sigma=0.02)
    assert compare_latency_samples(base, cand, floor_us=10.0).verdict == UNCHANGED  # +8 us < 10 us
    assert compare_latency_samples(base, cand, floor_us=5.0).verdict == REGRESSION


def test_a_shift_within_session_to_session_noise_is_not_called() -> None:
    # Sessions of one run disagree by ~14% (a busy machine): a 10% move of the median is not distinguishable.
    base = [np.full(500, v) * np.exp(np.linspace(-0.01, 0.01, 500)) for v in (1400.0, 1520.0, 1610.0)]
    cand = [np.full(500, v) * np.exp(np.linspace(-0.01, 0.01, 500)) for v in (1560.0, 1690.0, 1750.0)]
    change = compare_latency_samples(base, cand)
    assert change.p_value is not None and change.p_value < 1e-10  # the raw-sample test alone would call it
    assert change.session_p_value is not None and change.session_p_value > 0.01
    assert change.verdict == UNCHANGED and "sessions do not show" in change.reason
    # The same medians with sessions that agree (1% spread) are a regression.
    tight = [np.full(500, v) * np.exp(np.linspace(-0.01, 0.01, 500)) for v in (1500.0, 1515.0, 1490.0)]
    moved = [np.full(500, v) * np.exp(np.linspace(-0.01, 0.01, 500)) for v in (1690.0, 1700.0, 1680.0)]
    assert compare_latency_samples(tight, moved).verdict == REGRESSION
    single = compare_latency_samples(base[:1], cand[:1])
    assert single.session_p_value is None and any("one session" in note for note in single.notes)


def test_aa_pairs_with_raw_samples_do_not_cry_wolf() -> None:
    """100 A/A pairs: same distribution (session levels, lognormal noise, outliers) sampled twice -> <= 1 flagged;
    the same setup with a real +15% shift is caught, so the test can fail."""
    rng = np.random.default_rng(2026)
    thresholds = Thresholds()
    flagged = caught = 0
    for _ in range(100):
        median_us = float(rng.uniform(200.0, 20000.0))
        base = _sessions(rng, 3, int(rng.integers(100, 1500)), median_us, session_sigma=0.04)
        same = _sessions(rng, 3, int(rng.integers(100, 1500)), median_us, session_sigma=0.04)
        slower = _sessions(rng, 3, int(rng.integers(100, 1500)), median_us, shift=1.15, session_sigma=0.01)
        kwargs = {"alpha": thresholds.alpha, "threshold_pct": thresholds.latency_threshold_pct,
                  "floor_us": thresholds.latency_floor_us}
        flagged += compare_latency_samples(base, same, **kwargs).verdict != UNCHANGED
        caught += compare_latency_samples(_sessions(rng, 3, 500, median_us, session_sigma=0.01), slower,
                                          **kwargs).verdict == REGRESSION
    assert flagged <= 1
    assert caught >= 95


@pytest.mark.parametrize("sessions", [3, 5, 8])
def test_aa_pairs_of_session_values_do_not_cry_wolf(sessions: int) -> None:
    """Aggregate-only runtimes give one mean per session: 100 A/A pairs of few values, 4% session noise and now and
    then a session disturbed by background work (x1.5) -> <= 1 flagged. With 3 per side nothing can reach alpha and
    the result says so; with 5 and 8 a real +30% shift is caught (clean sessions: >= 95 of 100; with disturbed
    sessions the t-test on sessions loses power, ~75 measured)."""
    rng = np.random.default_rng(sessions)
    flagged = caught = caught_disturbed = underpowered = 0
    for _ in range(100):
        mean_us = float(rng.uniform(300.0, 30000.0))

        def values(shift: float = 1.0, disturbed: float = 0.05, mean: float = mean_us) -> np.ndarray:
            noisy = mean * shift * np.exp(rng.normal(0.0, 0.04, sessions))
            noisy[rng.random(sessions) < disturbed] *= 1.5
            return noisy

        same = compare_session_values(values(), values())
        flagged += same.verdict != UNCHANGED
        underpowered += any("underpowered" in note for note in same.notes)
        caught += compare_session_values(values(disturbed=0), values(1.3, disturbed=0)).verdict == REGRESSION
        caught_disturbed += compare_session_values(values(), values(1.3)).verdict == REGRESSION
    assert flagged <= 1
    if sessions == 3:
        assert underpowered == 100 and caught == 0
    else:
        assert underpowered == 0 and caught >= 95 and caught_disturbed >= 60


def test_energy_uses_its_own_threshold_and_floor() -> None:
    base = [1.00, 1.02, 0.99, 1.01, 1.005]
    assert compare_session_values(base, [1.08, 1.09, 1.07, 1.10, 1.08], threshold_pct=10.0, floor=0.01,
                                  unit="mJ").verdict == UNCHANGED  # +8% < 10%
    assert compare_session_values(base, [1.20, 1.22, 1.19, 1.21, 1.23], threshold_pct=10.0, floor=0.01,
                                  unit="mJ").verdict == REGRESSION
    tiny = compare_session_values([0.010, 0.011, 0.010, 0.010, 0.011], [0.015] * 5, threshold_pct=10.0, floor=0.01,
                                  unit="mJ")
    assert tiny.verdict == UNCHANGED and "floor" in tiny.reason


def test_drift_top1_points() -> None:
    assert compare_top1(0.95, 0.9375).verdict == REGRESSION  # -1.25 points (one image of 80)
    assert compare_top1(0.95, 0.945).verdict == UNCHANGED
    better = compare_top1(0.90, 0.95)
    assert better.verdict == IMPROVEMENT and better.change_abs == pytest.approx(5.0) and better.change_pct is None
    assert compare_top1(0.95, 0.9375, points=2.0).verdict == UNCHANGED


def test_thresholds_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="alpha"):
        Thresholds(alpha=1.0)
    with pytest.raises(ValueError, match="latency_floor_us"):
        Thresholds(latency_floor_us=-1.0)
