"""Latency statistics: percentiles as numpy computes them, the bootstrap CI of the median, warnings."""

from __future__ import annotations

import numpy as np
import pytest

from farmbench.results import stats
from farmbench.results.stats import LatencyStats, bootstrap_median_ci, summarize, summarize_aggregates


def test_percentiles_follow_numpy_linear_type7() -> None:
    # 1..10: type 7 puts q at rank (n - 1) * q, so p50 = 5.5, p90 = 9.1, p99 = 9.91.
    result = summarize([float(v) for v in range(10, 0, -1)])
    assert result.p50_us == pytest.approx(5.5)
    assert result.p90_us == pytest.approx(9.1)
    assert result.p99_us == pytest.approx(9.91)
    assert result.p5_us == pytest.approx(1.45)
    assert result.p95_us == pytest.approx(9.55)

    rng = np.random.default_rng(7)
    samples = rng.lognormal(mean=7.0, sigma=0.3, size=501)
    result = summarize(samples.tolist())
    expected = np.percentile(samples, [5, 50, 90, 95, 99])  # numpy's default method
    got = [result.p5_us, result.p50_us, result.p90_us, result.p95_us, result.p99_us]
    assert got == pytest.approx(expected.tolist(), rel=0, abs=0)


def test_spread_uses_sample_std() -> None:
    samples = [100.0, 110.0, 90.0, 105.0, 95.0, 100.0, 102.0, 98.0, 101.0, 99.0]
    result = summarize(samples)
    assert result.n == 10
    assert result.mean_us == pytest.approx(np.mean(samples))
    assert result.std_us == pytest.approx(np.std(samples, ddof=1))
    assert result.cv == pytest.approx(np.std(samples, ddof=1) / np.mean(samples))
    assert (result.min_us, result.max_us) == (90.0, 110.0)
    assert result.warnings == ()


def test_ci_contains_true_median_and_narrows_with_more_samples() -> None:
    rng = np.random.default_rng(1)
    true_median_us = 1000.0
    big = rng.normal(true_median_us, 50.0, size=5000)
    small = big[:200]
    big_stats, small_stats = summarize(big.tolist()), summarize(small.tolist())
    assert big_stats.ci95_low_us is not None and big_stats.ci95_high_us is not None
    assert small_stats.ci95_low_us is not None and small_stats.ci95_high_us is not None
    assert big_stats.ci95_low_us < true_median_us < big_stats.ci95_high_us
    assert small_stats.ci95_low_us < true_median_us < small_stats.ci95_high_us
    assert big_stats.ci95_low_us <= big_stats.p50_us <= big_stats.ci95_high_us  # type: ignore[operator]
    big_width = big_stats.ci95_high_us - big_stats.ci95_low_us
    small_width = small_stats.ci95_high_us - small_stats.ci95_low_us
    assert big_width < small_width / 2  # the CI shrinks like 1/sqrt(n): sqrt(25) = 5 here


def test_ci_coverage_is_about_95_percent() -> None:
    # 200 independent samples of 101 from N(0, 1) shifted to 1000 us: the true median is 1000.
    rng = np.random.default_rng(3)
    hits = 0
    for trial in range(200):
        low, high = bootstrap_median_ci(rng.normal(1000.0, 30.0, size=101), seed=trial)
        hits += low <= 1000.0 <= high
    assert 0.88 <= hits / 200 <= 0.99


def test_deterministic_with_seed_and_independent_of_memory_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = np.random.default_rng(11).gamma(4.0, 250.0, size=333).tolist()
    first, again = summarize(samples, seed=5), summarize(samples, seed=5)
    assert first == again
    assert summarize(samples, seed=6).ci95_low_us != first.ci95_low_us
    # Resampling in smaller blocks draws the same stream, so the CI does not depend on the block size.
    monkeypatch.setattr(stats, "_BOOTSTRAP_BLOCK_VALUES", 333 * 7)
    assert summarize(samples, seed=5) == first


def test_high_cv_flag_uses_pyperfs_ten_percent() -> None:
    steady = [1000.0 + (i % 5) for i in range(50)]
    assert "high_cv" not in summarize(steady).warnings
    noisy = [1000.0, 1400.0] * 25  # std / mean ~ 0.168
    result = summarize(noisy)
    assert result.cv is not None and result.cv > 0.10
    assert result.warnings == ("high_cv",)


def test_few_samples_and_single_sample() -> None:
    assert summarize([10.0, 11.0, 12.0]).warnings == ("few_samples",)
    one = summarize([42.0])
    assert (one.n, one.std_us, one.cv, one.p50_us, one.ci95_low_us, one.ci95_high_us) == (1, None, None, 42.0, 42.0,
                                                                                           42.0)
    assert one.warnings == ("few_samples",)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, float("inf")], [[1.0, 2.0]]])
def test_bad_samples_are_refused(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        summarize(bad)


def test_aggregates_only() -> None:
    # What benchmark_model prints: count, mean, std, min, max and, on LiteRT builds, p5/median/p95.
    result = summarize_aggregates(count=50, mean_us=2000.0, std_us=300.0, min_us=1500.0, max_us=3200.0,
                                  p5_us=1600.0, median_us=1950.0, p95_us=2600.0)
    assert result.n == 50 and result.p50_us == 1950.0 and result.p5_us == 1600.0 and result.p95_us == 2600.0
    assert result.p90_us is None and result.p99_us is None
    assert result.ci95_low_us is None and result.ci95_high_us is None
    assert result.cv == pytest.approx(0.15)
    assert result.warnings == ("high_cv", "aggregate_only")

    bare = summarize_aggregates(count=5, mean_us=100.0, std_us=1.0, min_us=99.0, max_us=101.0)
    assert bare.p50_us is None
    assert bare.warnings == ("few_samples", "aggregate_only")
    with pytest.raises(ValueError):
        summarize_aggregates(count=0, mean_us=1.0, std_us=None, min_us=1.0, max_us=1.0)


def test_json_roundtrip_tolerates_unknown_and_missing_keys() -> None:
    result = summarize([float(v) for v in range(1, 40)])
    assert LatencyStats.from_json(result.to_json()) == result
    document = {**result.to_json(), "added_by_a_newer_farmbench": 1}
    del document["p95_us"]
    assert LatencyStats.from_json(document).p95_us is None
