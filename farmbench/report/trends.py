"""Regression marks on the trend lines, from the regression check (:mod:`farmbench.results.compare`, the statistics
behind ``farmbench check``).

Each selected run is compared with the selected run before it (records already loaded, matched by device, variant
and runtime configuration as the check matches them). A trend point gets the latency verdict of its measurements
(found by measurement id), so a mark means exactly what ``farmbench check --baseline PREV --candidate RUN`` would
say. The table below the trends lists the newest run's findings against the run before it, every metric (latency,
energy, drift) and failures that block. Thresholds are the check's defaults: the stored sweep does not keep its
``[check]`` table, and ``farmbench check --sweep FILE`` is where a sweep's own thresholds apply.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from farmbench.report.data import ReportData, Trend, TrendPoint
from farmbench.results.compare import (
    DRIFT,
    ENERGY,
    FAILED,
    IMPROVEMENT,
    LATENCY,
    REFUSED,
    REGRESSION,
    MetricResult,
    Thresholds,
    compare_records,
)
from farmbench.results.store import ResultStore

MARKED_VERDICTS = (REGRESSION, IMPROVEMENT)


@dataclass(frozen=True)
class RegressionRow:
    """One finding of the newest run against the run before it, ready to show."""

    device: str
    label: str
    metric: str
    verdict: str
    baseline: str
    candidate: str
    change: str
    change_sort: float | None
    detail: str
    flags: tuple[str, ...]


def _value(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    if metric == LATENCY:
        return f"{value / 1000.0:.3f} ms" if value < 10_000 else f"{value / 1000.0:.1f} ms"
    if metric == ENERGY:
        return f"{value:.3f} mJ"
    return f"{value:.1f}%"  # drift: top-1 agreement in percent


def _change(result: MetricResult) -> tuple[str, float | None]:
    if result.metric == DRIFT and result.change_abs is not None:
        return f"{result.change_abs:+.1f} points", result.change_abs
    if result.change_pct is not None:
        return f"{result.change_pct:+.1f}%", result.change_pct
    return "—", None


def _row(result: MetricResult) -> RegressionRow:
    change, change_sort = _change(result)
    return RegressionRow(
        device=result.key.device, label=f"{result.key.variant} · {result.key.config_label}", metric=result.metric,
        verdict=result.verdict + (" (blocking)" if result.blocking and result.verdict == FAILED else ""),
        baseline=_value(result.metric, result.baseline_median),
        candidate=_value(result.metric, result.candidate_median), change=change, change_sort=change_sort,
        detail="; ".join([result.reason, *result.notes]).strip("; "), flags=result.flags)


def mark_trends(store: ResultStore, data: ReportData,
                thresholds: Thresholds | None = None) -> tuple[ReportData, str, list[RegressionRow]]:
    """``data`` with a verdict on every trend point after the first, the note shown above the trends, and the
    rows of the newest run's regression table."""
    if len(data.runs) < 2:
        return data, "Trends compare the selected runs; this report has one.", []
    thresholds = thresholds or Thresholds()
    devices = {d.id: d for d in store.devices()}
    artifacts = store.artifacts()
    by_measurement: dict[int, MetricResult] = {}
    last: list[MetricResult] = []
    for baseline, candidate in zip(data.runs, data.runs[1:], strict=False):
        results = compare_records(data.records_by_run.get(baseline.id, ()), data.records_by_run.get(candidate.id, ()),
                                  devices, artifacts, thresholds)
        for result in results:
            if result.metric == LATENCY:
                for measurement_id in result.candidate_ids:
                    by_measurement[measurement_id] = result
        if candidate.id == data.subject.id:
            last = results
    trends = tuple(_marked(trend, by_measurement) for trend in data.trends)
    counts = Counter(r.verdict for r in last)
    refused = Counter(r.refused_field for r in last if r.verdict == REFUSED)
    previous = data.runs[-2]
    note = (f"Marks come from the regression check (as `farmbench check`): each run against the selected run before "
            f"it; ✕ a latency regression, ▼ an improvement (Mann-Whitney U on the raw samples, a session test against "
            f"the threshold, and a change over {thresholds.latency_threshold_pct:g}% and "
            f"{thresholds.latency_floor_us:g} µs; p < {thresholds.alpha:g}; the check's default thresholds). "
            f"Run {data.subject.id} against {previous.id}: {counts.get(REGRESSION, 0)} regressions, "
            f"{counts.get(IMPROVEMENT, 0)} improvements, {counts.get('unchanged', 0)} unchanged")
    if refused:
        note += ", " + ", ".join(f"{n} refused ({field or 'context'} differs)" for field, n in refused.most_common())
    note += "."
    rows = [_row(r) for r in last if r.verdict in MARKED_VERDICTS or (r.verdict == FAILED and r.blocking)]
    return replace(data, trends=trends, trend_marks="compare"), note, regressions_first(rows)


def _marked(trend: Trend, by_measurement: dict[int, MetricResult]) -> Trend:
    points: list[TrendPoint] = []
    for point in trend.points:
        result = next((by_measurement[i] for i in point.measurement_ids if i in by_measurement), None)
        if result is None:
            points.append(point)
            continue
        points.append(replace(point, verdict=result.verdict, detail="; ".join([result.reason, *result.notes])))
    return replace(trend, points=tuple(points))


def regressions_first(rows: Sequence[RegressionRow]) -> list[RegressionRow]:
    order = {REGRESSION: 0, f"{FAILED} (blocking)": 1, IMPROVEMENT: 2}
    return sorted(rows, key=lambda r: (order.get(r.verdict, 3), r.device, r.label, r.metric))
