"""Latency statistics computed on the host from what a device measured.

Protocol, stated once so every number in a report means the same thing:

* Input: per-iteration latencies in microseconds, in the order they were measured (warm-up already excluded).
* Percentiles (p5, p50, p90, p95, p99): ``numpy.percentile`` with its default ``method="linear"``, i.e. Hyndman &
  Fan type 7 (the same as R's default and Excel's PERCENTILE.INC): linear interpolation between the two closest
  order statistics at rank ``(n - 1) * q``.
* Spread: mean, sample standard deviation (``ddof=1``), coefficient of variation ``cv = std / mean`` (a ratio, not
  a percentage), min, max.
* Confidence interval of the median: percentile bootstrap, 2000 resamples with replacement, seeded (``seed``), the
  2.5th and 97.5th percentiles of the resampled medians. Same seed, same samples -> same interval.
* Warnings: ``high_cv`` when cv > 10% (pyperf's rule for an unstable benchmark), ``few_samples`` when n < 10, and
  ``aggregate_only`` when the runtime gave only aggregates (benchmark_model) so no percentile beyond what it
  printed and no CI can be computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

import numpy as np
import numpy.typing as npt

PERCENTILE_METHOD: Final = "linear"  # numpy's default, Hyndman & Fan type 7
BOOTSTRAP_RESAMPLES = 2000
CI_LEVEL = 0.95
HIGH_CV = 0.10
FEW_SAMPLES = 10

WARN_HIGH_CV = "high_cv"
WARN_FEW_SAMPLES = "few_samples"
WARN_AGGREGATE_ONLY = "aggregate_only"

# Resampled medians are computed in blocks of at most this many float64 values (32 MB), so a run with 100k
# iterations does not need 2000 x 100k x 8 bytes at once.
_BOOTSTRAP_BLOCK_VALUES = 4_000_000


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one measurement's latencies. Fields a runtime did not give (aggregate-only) are None."""

    n: int
    mean_us: float
    std_us: float | None
    cv: float | None
    min_us: float
    max_us: float
    p50_us: float | None
    p90_us: float | None = None
    p99_us: float | None = None
    p5_us: float | None = None
    p95_us: float | None = None
    ci95_low_us: float | None = None
    ci95_high_us: float | None = None
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["warnings"] = list(self.warnings)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyStats:
        # Unknown keys are ignored and missing optional ones default, so documents written by an older or newer
        # farmbench with a field more or less still load.
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["warnings"] = tuple(values.get("warnings") or ())
        return cls(**values)


def summarize(samples_us: Sequence[float], *, seed: int = 0) -> LatencyStats:
    """Statistics of raw per-iteration latencies (µs). See the module docstring for the exact protocol."""
    values = np.asarray(samples_us, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("summarize needs a non-empty flat sequence of latencies")
    if not np.all(np.isfinite(values)):
        raise ValueError("latency samples must be finite numbers")
    n = int(values.size)
    p5, p50, p90, p95, p99 = (float(v) for v in np.percentile(values, [5, 50, 90, 95, 99], method=PERCENTILE_METHOD))
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if n > 1 else None
    cv = _cv(mean, std)
    low, high = bootstrap_median_ci(values, seed=seed)
    return LatencyStats(
        n=n, mean_us=mean, std_us=std, cv=cv, min_us=float(values.min()), max_us=float(values.max()),
        p50_us=p50, p90_us=p90, p99_us=p99, p5_us=p5, p95_us=p95, ci95_low_us=low, ci95_high_us=high,
        warnings=_warnings(n, cv, aggregate_only=False),
    )


def summarize_aggregates(
    *,
    count: int,
    mean_us: float,
    std_us: float | None,
    min_us: float,
    max_us: float,
    p5_us: float | None = None,
    median_us: float | None = None,
    p95_us: float | None = None,
) -> LatencyStats:
    """Statistics for a runtime that prints only aggregates (benchmark_model). ``std_us`` is taken as the runtime
    reports it; p90/p99 and the CI stay None, and the warnings include ``aggregate_only``."""
    if count <= 0:
        raise ValueError(f"aggregate count must be positive, got {count}")
    cv = _cv(mean_us, std_us)
    return LatencyStats(
        n=int(count), mean_us=float(mean_us), std_us=_opt_float(std_us), cv=cv, min_us=float(min_us),
        max_us=float(max_us), p50_us=_opt_float(median_us), p5_us=_opt_float(p5_us), p95_us=_opt_float(p95_us),
        warnings=_warnings(int(count), cv, aggregate_only=True),
    )


def bootstrap_median_ci(
    samples_us: npt.ArrayLike, *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES, level: float = CI_LEVEL
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median, vectorised over resamples."""
    values = np.asarray(samples_us, dtype=np.float64)
    n = int(values.size)
    if n == 1:
        only = float(values[0])
        return only, only
    rng = np.random.default_rng(seed)
    block = max(1, _BOOTSTRAP_BLOCK_VALUES // n)
    medians = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        picks = rng.integers(0, n, size=(stop - start, n))
        medians[start:stop] = np.median(values[picks], axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(medians, [tail, 100.0 - tail], method=PERCENTILE_METHOD)
    return float(low), float(high)


def _cv(mean_us: float, std_us: float | None) -> float | None:
    if std_us is None or mean_us <= 0 or not math.isfinite(std_us):
        return None
    return float(std_us / mean_us)


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _warnings(n: int, cv: float | None, *, aggregate_only: bool) -> tuple[str, ...]:
    found: list[str] = []
    if cv is not None and cv > HIGH_CV:
        found.append(WARN_HIGH_CV)
    if n < FEW_SAMPLES:
        found.append(WARN_FEW_SAMPLES)
    if aggregate_only:
        found.append(WARN_AGGREGATE_ONLY)
    return tuple(found)
