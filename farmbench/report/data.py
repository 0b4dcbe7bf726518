"""What a report shows, as plain data: the selected runs, their measurements grouped into combinations, failures,
the per-device "which variant to ship" pick, pareto frontiers, speed-ups and trends. No HTML and no plotting here.

A *combination* is one (device, artifact, runtime configuration) in one run, over its repeats (sessions). How its
numbers are made from the stored records, stated once:

* p50/p90/p99: percentiles (numpy's linear method, as ``results.stats``) of the pooled raw samples of every session
  that measured ok. Aggregate-only runtimes (``benchmark_model``) store no samples: p50 is the median of the
  sessions' medians, and p90/p99 are unknown.
* 95% CI of the median: one session -- its bootstrap CI (``results.stats``); several sessions -- the envelope of
  their CIs (lowest low, highest high), which widens when sessions disagree; aggregate-only -- the range of the
  sessions' medians when there are two or more, else none. ``ci_kind`` says which.
* init: median over sessions; peak memory: the largest; power and energy per inference: median over the sessions
  that measured them; temperatures: the hottest before and after; drift: the session that measured it (the first
  repeat); flags: every flag any session carried, with how many sessions carried it.
* Distributions: at most ``max_points`` evenly spaced quantiles of the pooled samples (minimum and maximum kept),
  so the page stays small; aggregate-only combinations keep their printed summary (p5, median, p95, min, max).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from farmbench.errors import UsageError
from farmbench.report.options import DEFAULT_HISTORY, DEFAULT_MAX_POINTS, DEFAULT_MIN_TOP1_AGREEMENT
from farmbench.results.crossdrift import ExecutionDrift, compare_executions
from farmbench.results.schema import DeviceInfo, MeasurementRecord, RunInfo
from farmbench.results.scrub import scrub
from farmbench.results.store import ResultStore

# What each trust flag means, and which number it qualifies (shown next to that number, not only in a list).
# "latency" covers p50/p90/p99 and the CI; "energy" the power columns; "drift" top-1 agreement and KL.
FLAG_INFO: dict[str, tuple[str, str]] = {
    "high_cv": ("latency", "coefficient of variation over 10%: a noisy measurement"),
    "few_samples": ("latency", "fewer than 10 timed iterations"),
    "aggregate_only": ("latency", "the tool printed aggregates only: no raw samples, no p90/p99 and no bootstrap CI"),
    "stopped_by_max_s": ("latency", "timed runs hit max_s before the requested count"),
    "warmup_stopped_by_max_s": ("latency", "warm-up hit max_s"),
    "throttled": ("latency", "a thermal zone reached a trip point, or CPU frequencies were held down, during the run"),
    "hot_before_run": ("latency", "the cooldown gate gave up: the run started hot"),
    "xnnpack_partially_applied": ("latency", "XNNPACK delegated only part of the graph (the rest ran on "
                                             + "reference kernels)"),
    "tflite_runtime_int8_no_xnnpack": ("latency", "tflite-runtime ran int8 without XNNPACK here: slower than LiteRT"),
    "xnnpack_requested_but_unavailable": ("latency", "XNNPACK was asked for but not available"),
    "ort_provider_not_applied": ("latency", "the requested ONNX Runtime execution provider was not applied"),
    "threads_not_applied": ("latency", "the tool could not be given the thread count"),
    "no_raw_samples": ("latency", "the tool's result file held no per-run times"),
    "charging": ("energy", "the device was charging: battery power readings are meaningless"),
    "few_power_samples": ("energy", "few power samples in the timed window"),
    "power_sensor_static": ("energy", "the power sensor did not change during the run"),
    "rapl_wrapped": ("energy", "the RAPL energy counter wrapped during the run"),
    "power_uncalibrated": ("energy", "battery units and sign not calibrated (farmbench calibrate-power)"),
    "power_failed": ("energy", "the power source could not be read"),
    "no_power_samples": ("energy", "no power samples in the timed window"),
    "drift_failed": ("drift", "accuracy drift could not be measured"),
    "thermal_failed": ("latency", "thermal zones could not be read: throttling unknown"),
    "no_thermal_zones": ("latency", "no thermal zones to watch: throttling unknown"),
}
# Flags that describe the data rather than doubt it: shown in grey, and not counted as a trust problem.
INFO_FLAGS: frozenset[str] = frozenset({"aggregate_only"})
# Flags that make a latency untrustworthy enough to say "re-measure before deciding" beside a recommendation.
SERIOUS_FLAGS: frozenset[str] = frozenset({"throttled", "hot_before_run", "high_cv", "charging",
                                           "xnnpack_partially_applied", "few_samples"})


def flag_column(flag: str) -> str:
    """Which number a flag qualifies: latency, energy, drift, or other."""
    if flag in FLAG_INFO:
        return FLAG_INFO[flag][0]
    if flag.endswith(("_partially_applied", "_not_applied", "_unavailable")):
        return "latency"  # a delegate or provider only partly used: the latency is not the one asked for
    return "other"


def flag_help(flag: str) -> str:
    if flag in FLAG_INFO:
        return FLAG_INFO[flag][1]
    if flag.endswith("_partially_applied"):
        return "the delegate covered only part of the graph"
    if flag.endswith("_not_applied"):
        return "the delegate or provider was not applied"
    return "a trust flag set by the runner"


# -- selection -----------------------------------------------------------------------------------------------------


def select_runs(store: ResultStore, run_ids: Sequence[str] = (), *, anchor: str | None = None,
                history: int = DEFAULT_HISTORY) -> list[RunInfo]:
    """The runs a report covers, oldest first; the last one is the report's subject.

    ``run_ids`` given: exactly those. Otherwise ``anchor`` (default: the latest run) and up to ``history - 1``
    earlier runs of the same sweep (same ``sweep_sha256``), which feed the trends."""
    runs = store.runs()
    if not runs:
        raise UsageError(f"no runs in {store.path}", hint="run `farmbench run` first, or point --db at another file")
    if run_ids:
        wanted = list(dict.fromkeys(run_ids))
        for run_id in wanted:
            store.run(run_id)  # raises RunNotFoundError (exit 2) naming the id
        return [run for run in runs if run.id in wanted]
    if history < 1:
        raise UsageError(f"--history must be at least 1, got {history}")
    subject = runs[-1] if anchor is None else store.run(anchor)
    earlier = [run for run in runs if run.sweep_sha256 == subject.sweep_sha256 and run.id != subject.id
               and (run.started_at, run.id) < (subject.started_at, subject.id)]
    return [*earlier[-(history - 1):], subject] if history > 1 else [subject]


# -- combinations --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    """Latency distribution of a combination, small enough for the page (see the module docstring)."""

    kind: str  # "samples" | "aggregate" | "none"
    n: int  # timed iterations behind it (all sessions)
    quantiles_us: tuple[float, ...] = ()  # "samples": evenly spaced quantiles of the pooled samples, ascending
    summary_us: Mapping[str, float | None] = field(default_factory=dict)  # "aggregate": p5, p50, p95, min, max, mean


@dataclass(frozen=True)
class Combo:
    """One (device, artifact, runtime configuration) in one run, over its sessions. Latencies in µs."""

    run_id: str
    device: str  # display name, unique within the report
    device_identity: str
    artifact: str
    family: str | None
    width: float | None
    resolution: int | None
    quant: str | None
    format: str | None
    runtime: str
    runtime_version: str | None
    threads: int | None
    config_label: str  # "litert · 1 thread", "litert · 4 threads · XNNPACK off", ...
    config_key: str  # canonical JSON of the runtime configuration
    sessions_ok: int
    sessions_total: int
    p50_us: float | None
    p90_us: float | None
    p99_us: float | None
    ci_low_us: float | None
    ci_high_us: float | None
    ci_kind: str  # "bootstrap" | "envelope" | "session range" | "none"
    n_samples: int
    aggregate_only: bool
    init_ms: float | None
    peak_rss_mb: float | None
    avg_power_mw: float | None
    energy_per_inference_mj: float | None
    energy_above_idle_mj: float | None
    temp_before_c: float | None
    temp_after_c: float | None
    top1_agreement: float | None
    top5_overlap: float | None
    kl_mean: float | None
    top1_accuracy: float | None
    drift_reference: str | None
    drift_note: str | None  # why drift is missing, when it is
    flags: tuple[str, ...]
    flag_sessions: Mapping[str, int]
    errors: tuple[str, ...]  # messages of sessions that failed while others measured ok
    distribution: Distribution
    measurement_ids: tuple[int, ...]
    speedup_vs_fp32: float | None = None
    speedup_low: float | None = None
    speedup_high: float | None = None

    @property
    def ok(self) -> bool:
        return self.sessions_ok > 0 and self.p50_us is not None

    @property
    def label(self) -> str:
        """Artifact and runtime configuration: what a row or a trace is called."""
        return f"{self.artifact} · {self.config_label}"

    @property
    def base_key(self) -> tuple[Any, ...]:
        """Everything but the quantisation: a variant and its fp32 twin share it."""
        return (self.device_identity, self.family, self.width, self.resolution, self.format, self.config_key)

    @property
    def architecture(self) -> str:
        if self.family is None:
            return self.artifact
        return f"{self.family} α{_g(self.width)} {self.resolution}px"

    def flags_for(self, column: str) -> tuple[str, ...]:
        """Every flag qualifying ``column`` (latency, energy, drift, other), informational ones included."""
        return tuple(f for f in self.flags if flag_column(f) == column)

    def trust_flags(self, *columns: str) -> tuple[str, ...]:
        """The flags that cast doubt on the numbers of ``columns`` (informational flags left out)."""
        return tuple(f for f in self.flags if flag_column(f) in columns and f not in INFO_FLAGS)

    @property
    def serious_flags(self) -> tuple[str, ...]:
        return tuple(f for f in self.flags if f in SERIOUS_FLAGS)

    @property
    def drift_1m_top1(self) -> float | None:
        return None if self.top1_agreement is None else 1.0 - self.top1_agreement


@dataclass(frozen=True)
class Failure:
    """Failed or skipped records of one device sharing an error: grouped so an unreachable device is one line."""

    device: str
    status: str
    error_class: str
    message: str
    artifacts: tuple[str, ...]
    count: int
    transient: bool


@dataclass(frozen=True)
class DeviceView:
    name: str  # display name, unique within the report
    identity: str
    kind: str
    description: tuple[tuple[str, str], ...]  # (label, value) pairs from the probed context
    versions: tuple[tuple[str, str], ...]  # runtimes and converters seen in this run's measurements
    counts: Mapping[str, int]  # measurements by status in the subject run


@dataclass(frozen=True)
class Recommendation:
    device: str
    budget: float
    pick: Combo | None
    fastest: Combo | None  # the fastest measured, whatever its drift
    reason: str  # why the pick qualifies, or why there is none
    per_architecture: tuple[tuple[str, Combo | None, int], ...]  # (architecture, pick, candidates measured)


@dataclass(frozen=True)
class TrendPoint:
    run_id: str
    started_at: str
    p50_us: float | None
    ci_low_us: float | None
    ci_high_us: float | None
    measurement_ids: tuple[int, ...] = ()
    verdict: str | None = None  # latency verdict of the regression check against the previous selected run
    detail: str | None = None


@dataclass(frozen=True)
class Trend:
    device: str
    label: str
    points: tuple[TrendPoint, ...]


@dataclass(frozen=True)
class ReportData:
    runs: tuple[RunInfo, ...]  # oldest first; the last is the subject
    subject: RunInfo
    devices: tuple[DeviceView, ...]
    combos: tuple[Combo, ...]  # subject run, every combination with at least one ok session first
    failures: tuple[Failure, ...]
    counts: Mapping[str, int]  # subject run measurements by status
    artifacts: tuple[tuple[str, Mapping[str, Any]], ...]  # (name, spec) of the subject run's artifacts
    recommendations: tuple[Recommendation, ...]
    trends: tuple[Trend, ...]
    trend_marks: str  # how the trend points are judged ("compare" or a sentence saying they are not)
    min_top1_agreement: float
    max_points: int
    converter_versions: Mapping[str, str]
    counts_by_run: Mapping[str, Mapping[str, int]]
    records_by_run: Mapping[str, Sequence[MeasurementRecord]] = field(default_factory=dict)  # for the check
    # The subject run's outputs of one variant on each device/runtime/delegate against a reference execution.
    execution_drift: tuple[ExecutionDrift, ...] = ()

    def device_combos(self, device: str) -> list[Combo]:
        return [c for c in self.combos if c.device == device and c.ok]


def _g(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _num(value: Any) -> float | None:
    """A frame or document value as a float, None when missing or not finite."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def config_label(runtime: str, config: Mapping[str, Any], fmt: str | None) -> str:
    """The runtime configuration in a few words: what distinguishes two combinations of one artifact."""
    threads = config.get("threads")
    parts = [runtime]
    if threads is not None:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    if fmt == "tflite" and str(config.get("xnnpack", "on")).lower() in ("off", "false"):
        parts.append("XNNPACK off")
    if config.get("delegate") not in (None, "", "cpu"):
        parts.append(f"{str(config['delegate']).upper()} delegate")
    provider = config.get("ort_provider")
    if fmt == "onnx" and provider and provider != "CPUExecutionProvider":
        parts.append(str(provider).removesuffix("ExecutionProvider"))
    if config.get("affinity"):
        parts.append(f"CPUs {config['affinity']}")
    return " · ".join(parts)


def _device_names(devices: Iterable[DeviceInfo]) -> dict[str, str]:
    """Identity -> display name. Names two devices share get the identity's tail to tell them apart; a device that
    could not be reached is recorded under a placeholder identity (``<kind>:unreached:<name>``) and keeps its name,
    so a board that was down in one run is the same board on the page."""
    devices = list(devices)
    seen = Counter(d.name for d in devices if ":unreached:" not in d.identity)
    return {d.identity: d.name if seen[d.name] <= 1 or ":unreached:" in d.identity
            else f"{d.name} ({d.identity[-12:]})" for d in devices}


def _frame_rows(store: ResultStore, run_ids: Sequence[str]) -> dict[int, dict[str, Any]]:
    frame = store.frame(list(run_ids))
    rows: dict[int, dict[str, Any]] = {}
    for row in frame.astype(object).where(frame.notna(), None).to_dict("records"):
        rows[int(row["measurement_id"])] = row
    return rows


def _latency_of(record: MeasurementRecord) -> dict[str, Any]:
    return record.latency.to_json() if record.latency else {}


def _combine(records: Sequence[MeasurementRecord], rows: Mapping[int, Mapping[str, Any]], device: str,
             identity: str, max_points: int) -> Combo:
    first = records[0]
    row = rows[int(first.id or 0)]
    ok = [r for r in records if r.status == "ok"]
    fmt = row.get("format")
    latencies = [_latency_of(r) for r in ok]
    pooled = [r.samples_us for r in ok if r.samples_us]
    aggregate_only = bool(ok) and not pooled
    p50 = p90 = p99 = ci_low = ci_high = None
    ci_kind = "none"
    n_samples = int(sum(int(lat.get("n") or 0) for lat in latencies))
    distribution = Distribution("none", n_samples)
    if pooled:
        samples = np.concatenate([np.asarray(s, dtype=np.float64) for s in pooled])
        # One call for the percentiles and the drawn quantiles: numpy partitions the samples once.
        grid = np.linspace(0.0, 1.0, max_points) if samples.size > max_points > 0 else np.empty(0)
        values = np.quantile(samples, np.concatenate(([0.5, 0.9, 0.99], grid)))
        p50, p90, p99 = (float(v) for v in values[:3])
        lows = [_num(lat.get("ci95_low_us")) for lat in latencies]
        highs = [_num(lat.get("ci95_high_us")) for lat in latencies]
        if all(v is not None for v in lows + highs) and lows:
            ci_low, ci_high = min(v for v in lows if v is not None), max(v for v in highs if v is not None)
            ci_kind = "bootstrap" if len(ok) == 1 else "envelope"
        quantiles = values[3:] if grid.size else (np.sort(samples) if max_points > 0 else grid)
        distribution = Distribution("samples", int(samples.size), tuple(float(v) for v in quantiles))
    elif ok:
        medians = [_num(lat.get("p50_us")) for lat in latencies]
        p50 = _median(medians)
        present = [m for m in medians if m is not None]
        if len(present) >= 2:
            ci_low, ci_high, ci_kind = min(present), max(present), "session range"
        summary = {
            "p5": _median(_num(lat.get("p5_us")) for lat in latencies),
            "p50": p50,
            "p95": _median(_num(lat.get("p95_us")) for lat in latencies),
            "min": min((v for v in (_num(lat.get("min_us")) for lat in latencies) if v is not None), default=None),
            "max": max((v for v in (_num(lat.get("max_us")) for lat in latencies) if v is not None), default=None),
            "mean": _median(_num(lat.get("mean_us")) for lat in latencies),
        }
        distribution = Distribution("aggregate", n_samples, (), summary)
    drift_record = next((r for r in ok if r.drift and "top1_agreement" in r.drift), None)
    drift_doc: Mapping[str, Any] = drift_record.drift if drift_record and drift_record.drift else {}
    drift_note = None
    if not drift_doc:
        notes = [r.drift for r in ok if r.drift]
        if notes:
            note = notes[0]
            drift_note = str(note.get("skipped") or note.get("error") or "not measured")
        else:
            drift_note = "not measured (run without --no-drift to measure it)"
    flag_sessions: Counter[str] = Counter()
    for record in ok:
        flag_sessions.update(set(record.all_flags()))
    powers = [r.power or {} for r in ok]
    temps_before = [_num((r.thermal or {}).get("max_temp_before_c")) for r in ok]
    temps_after = [_num((r.thermal or {}).get("max_temp_after_c")) for r in ok]
    return Combo(
        run_id=first.run_id, device=device, device_identity=identity, artifact=str(row.get("artifact")),
        family=row.get("family"), width=_num(row.get("width")),
        resolution=int(row["resolution"]) if row.get("resolution") is not None else None,
        quant=row.get("quant"), format=fmt, runtime=first.runtime,
        runtime_version=next((r.runtime_version for r in ok if r.runtime_version), first.runtime_version),
        threads=first.config.get("threads"), config_label=config_label(first.runtime, first.config, fmt),
        config_key=json.dumps(first.config, sort_keys=True, default=str),
        sessions_ok=len(ok), sessions_total=len(records),
        p50_us=p50, p90_us=p90, p99_us=p99, ci_low_us=ci_low, ci_high_us=ci_high, ci_kind=ci_kind,
        n_samples=n_samples, aggregate_only=aggregate_only,
        init_ms=_median(_num(r.init_ms) for r in ok),
        peak_rss_mb=max((v for v in (_num(r.peak_rss_mb) for r in ok) if v is not None), default=None),
        avg_power_mw=_median(_num(p.get("avg_power_mw")) for p in powers),
        energy_per_inference_mj=_median(_num(p.get("energy_per_inference_mj")) for p in powers),
        energy_above_idle_mj=_median(_num(p.get("energy_above_idle_mj")) for p in powers),
        temp_before_c=max((t for t in temps_before if t is not None), default=None),
        temp_after_c=max((t for t in temps_after if t is not None), default=None),
        top1_agreement=_num(drift_doc.get("top1_agreement")), top5_overlap=_num(drift_doc.get("top5_overlap")),
        kl_mean=_num(drift_doc.get("kl_mean")), top1_accuracy=_num(drift_doc.get("top1_accuracy")),
        drift_reference=drift_doc.get("reference"), drift_note=drift_note,
        flags=tuple(sorted(flag_sessions, key=lambda f: (flag_column(f), f))), flag_sessions=dict(flag_sessions),
        errors=tuple(dict.fromkeys(_message(r) for r in records if r.status != "ok")),
        distribution=distribution, measurement_ids=tuple(int(r.id or 0) for r in records),
    )


def _message(record: MeasurementRecord) -> str:
    """An error message fit to show: scrubbed again (messages are free text, not a scrubbed ``*_json`` column)."""
    text = f"{record.error_class or record.status}: {record.error_message or 'no message'}"
    return str(scrub(text))


def combinations(records: Sequence[MeasurementRecord], rows: Mapping[int, Mapping[str, Any]],
                 names: Mapping[int, tuple[str, str]], max_points: int) -> list[Combo]:
    """Records grouped into combinations, in a stable reading order (device, artifact, configuration)."""
    groups: dict[tuple[Any, ...], list[MeasurementRecord]] = defaultdict(list)
    for record in records:
        key = (record.run_id, record.device_id, record.artifact_key, record.runtime,
               json.dumps(record.config, sort_keys=True, default=str))
        groups[key].append(record)
    combos = [_combine(group, rows, *names[group[0].device_id], max_points) for group in groups.values()]
    combos = _with_speedups(combos)
    return sorted(combos, key=lambda c: (c.device, c.family or "", c.width or 0, c.resolution or 0,
                                         _QUANT_ORDER.get(c.quant or "", 9), c.format or "", c.config_label,
                                         c.artifact))


_QUANT_ORDER = {"fp32": 0, "fp16": 1, "dynamic-int8": 2, "int8": 3, "int8-io": 4}


def _with_speedups(combos: Sequence[Combo]) -> list[Combo]:
    """Each combination's speed-up over its fp32 twin (same device, architecture, format and configuration):
    fp32 p50 / this p50, with a conservative interval from the two CIs (fp32 low / this high .. fp32 high / this
    low)."""
    fp32 = {c.base_key: c for c in combos if c.quant == "fp32" and c.ok}
    result = []
    for combo in combos:
        twin = fp32.get(combo.base_key)
        if twin is None or not combo.ok or twin.p50_us is None or combo.p50_us is None or combo.p50_us <= 0:
            result.append(combo)
            continue
        low = high = None
        if None not in (twin.ci_low_us, twin.ci_high_us, combo.ci_low_us, combo.ci_high_us) \
                and combo.ci_low_us and combo.ci_high_us:
            low = (twin.ci_low_us or 0) / combo.ci_high_us
            high = (twin.ci_high_us or 0) / combo.ci_low_us
        result.append(replace(combo, speedup_vs_fp32=twin.p50_us / combo.p50_us, speedup_low=low, speedup_high=high))
    return result


# -- recommendations and frontiers -----------------------------------------------------------------------------------


def within_budget(combo: Combo, min_top1: float) -> bool:
    """Inside the drift budget: top-1 agreement with the fp32 twin at least ``min_top1``; an fp32 variant without a
    drift measurement qualifies too (it is its own reference)."""
    if combo.top1_agreement is not None:
        return combo.top1_agreement >= min_top1
    return combo.quant == "fp32"


def _fastest(combos: Iterable[Combo]) -> Combo | None:
    ranked = sorted((c for c in combos if c.ok), key=lambda c: (c.p50_us or math.inf, c.label))
    return ranked[0] if ranked else None


def recommend(device: str, combos: Sequence[Combo], min_top1: float) -> Recommendation:
    """The fastest combination within the drift budget on one device, the fastest overall, and the same pick for
    each architecture (family, width, resolution) -- the choice a user makes on accuracy grounds first."""
    measured = [c for c in combos if c.ok]
    fastest = _fastest(measured)
    candidates = [c for c in measured if within_budget(c, min_top1)]
    pick = _fastest(candidates)
    if not measured:
        reason = "nothing was measured on this device"
    elif pick is None:
        reason = (f"no variant measured here kept top-1 agreement ≥ {min_top1:.0%} with its fp32 twin"
                  " (or no drift was measured)")
    elif pick.top1_agreement is None:
        reason = "fp32, its own reference (no drift measured for the quantised variants)"
    else:
        reason = f"top-1 agreement {pick.top1_agreement:.1%} ≥ {min_top1:.0%}"
    architectures: dict[str, list[Combo]] = defaultdict(list)
    for combo in measured:
        architectures[combo.architecture].append(combo)
    rows = [(name, _fastest(c for c in group if within_budget(c, min_top1)), len(group))
            for name, group in architectures.items()]
    # Fastest pick first; architectures with nothing inside the budget last.
    rows.sort(key=lambda row: (row[1] is None, row[1].p50_us if row[1] and row[1].p50_us else 0.0, row[0]))
    per_architecture = tuple(rows)
    return Recommendation(device, min_top1, pick, fastest, reason, per_architecture)


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both minimised), by ascending x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    frontier: list[int] = []
    best_y = math.inf
    for index in order:
        if points[index][1] < best_y:
            frontier.append(index)
            best_y = points[index][1]
    return frontier


def side_by_side(combos: Sequence[Combo]) -> tuple[list[str], list[tuple[str, dict[str, Combo]]]]:
    """Variants measured on more than one device: (devices, [(variant label, {device: combo})]). Runtimes differ
    between devices (LiteRT on a board, benchmark_model on a phone), so a variant is matched by artifact, threads and
    the rest of its configuration, and each device contributes its fastest runtime for it."""
    cells: dict[str, dict[str, Combo]] = defaultdict(dict)
    for combo in combos:
        if not combo.ok:
            continue
        rest = combo.config_label.split(" · ", 1)[1] if " · " in combo.config_label else ""
        variant = f"{combo.artifact} · {rest}" if rest else combo.artifact
        current = cells[variant].get(combo.device)
        if current is None or (combo.p50_us or math.inf) < (current.p50_us or math.inf):
            cells[variant][combo.device] = combo
    devices = sorted({c.device for c in combos if c.ok})
    rows = [(variant, by_device) for variant, by_device in sorted(cells.items()) if len(by_device) >= 2]
    return devices, rows


# -- devices and context -------------------------------------------------------------------------------------------


_CONTEXT_FIELDS: tuple[tuple[str, str], ...] = (
    ("manufacturer", "manufacturer"), ("model", "model"), ("soc", "SoC"), ("release", "Android"), ("sdk", "SDK"),
    ("build_fingerprint", "build"), ("abi", "ABI"), ("os", "OS"), ("kernel", "kernel"), ("cpu", "CPU"),
    ("arch", "arch"), ("logical_cores", "cores"), ("python", "Python"), ("hostname", "host"),
)


def describe_device(context: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Selected fields of a device's probed context (never the whole document: it is not ours to dump)."""
    pairs = [(label, str(context[key])) for key, label in _CONTEXT_FIELDS
             if context.get(key) not in (None, "", [], {})]
    clusters = context.get("cpu_clusters")
    if isinstance(clusters, list) and clusters:
        text = ", ".join(f"CPUs {c.get('cpus')} @ {(_num(c.get('max_freq_khz')) or 0) / 1000:.0f} MHz"
                         for c in clusters if isinstance(c, Mapping))
        pairs.append(("CPU clusters", text))
    if context.get("source") and not pairs:
        pairs.append(("config", str(context["source"])))
    return tuple((label, str(scrub(value))) for label, value in pairs)


def _versions(records: Sequence[MeasurementRecord]) -> tuple[tuple[str, str], ...]:
    found: dict[str, str] = {}
    for record in records:
        if record.status != "ok":
            continue
        if record.runtime_version:
            found.setdefault(record.runtime, str(record.runtime_version))
        for name, version in (record.context.get("runtimes") or {}).items():
            if isinstance(version, str):
                found.setdefault(str(name), version)
    return tuple(sorted(found.items()))


def _converters(records: Sequence[MeasurementRecord]) -> dict[str, str]:
    found: dict[str, str] = {}
    for record in records:
        for name, version in (record.context.get("converter_versions") or {}).items():
            if version is not None:
                found.setdefault(str(name), str(version))
    return dict(sorted(found.items()))


def _failures(records: Sequence[MeasurementRecord], rows: Mapping[int, Mapping[str, Any]],
              names: Mapping[int, tuple[str, str]]) -> list[Failure]:
    groups: dict[tuple[str, str, str, str], list[MeasurementRecord]] = defaultdict(list)
    for record in records:
        if record.status != "ok":
            key = (names[record.device_id][0], record.status, record.error_class or "",
                   str(scrub(record.error_message or "no message")))
            groups[key].append(record)
    failures = []
    for (device, status, error_class, message), group in groups.items():
        artifacts = tuple(dict.fromkeys(str(rows[int(r.id or 0)].get("artifact")) for r in group))
        failures.append(Failure(device, status, error_class or status, message, artifacts, len(group),
                                any(r.transient for r in group)))
    return sorted(failures, key=lambda f: (f.device, f.status != "failed", f.error_class, f.message))


# -- trends --------------------------------------------------------------------------------------------------------


def trends(runs: Sequence[RunInfo], combos_by_run: Mapping[str, Sequence[Combo]]) -> list[Trend]:
    """Each (device, artifact, configuration) across the selected runs, matched by device identity, artifact name
    (a rebuild of the same variant is the same line), runtime and configuration label."""
    lines: dict[tuple[str, str, str], dict[str, Combo]] = defaultdict(dict)
    labels: dict[tuple[str, str, str], tuple[str, str]] = {}
    for run in runs:
        for combo in combos_by_run.get(run.id, ()):
            if combo.ok:
                key = (combo.device_identity, combo.artifact, f"{combo.runtime}|{combo.config_label}")
                lines[key][run.id] = combo
                labels[key] = (combo.device, combo.label)
    result = []
    for key, by_run in lines.items():
        device, label = labels[key]
        points = tuple(TrendPoint(run.id, run.started_at, by_run[run.id].p50_us, by_run[run.id].ci_low_us,
                                  by_run[run.id].ci_high_us, by_run[run.id].measurement_ids)
                       for run in runs if run.id in by_run)
        result.append(Trend(device, label, points))
    return sorted(result, key=lambda t: (t.device, t.label))


# -- assembly ------------------------------------------------------------------------------------------------------


def load_report_data(store: ResultStore, runs: Sequence[RunInfo], *,
                     min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT,
                     max_points: int = DEFAULT_MAX_POINTS) -> ReportData:
    """Everything the page shows for ``runs`` (oldest first; the last is the subject)."""
    if not runs:
        raise UsageError("no runs selected for the report")
    if not 0.0 <= min_top1_agreement <= 1.0:
        raise UsageError(f"the top-1 agreement budget must be between 0 and 1, got {min_top1_agreement}")
    run_ids = [run.id for run in runs]
    subject = runs[-1]
    records = store.measurements(run_ids)
    rows = _frame_rows(store, run_ids)
    device_infos = {d.id: d for d in store.devices()}
    used = {r.device_id for r in records}
    display = _device_names(device_infos[i] for i in sorted(used))
    names = {i: (display[device_infos[i].identity], device_infos[i].identity) for i in used}
    by_run: dict[str, list[MeasurementRecord]] = defaultdict(list)
    for record in records:
        by_run[record.run_id].append(record)
    # Earlier runs only feed the trends: no distributions to draw for them.
    combos_by_run = {run_id: combinations(group, rows, names, max_points if run_id == subject.id else 0)
                     for run_id, group in by_run.items()}
    subject_records = by_run.get(subject.id, [])
    subject_combos = combos_by_run.get(subject.id, [])
    devices = []
    for device_id in sorted({r.device_id for r in subject_records}, key=lambda i: names[i][0]):
        info = device_infos[device_id]
        mine = [r for r in subject_records if r.device_id == device_id]
        devices.append(DeviceView(names[device_id][0], info.identity, info.kind, describe_device(info.context),
                                  _versions(mine), dict(Counter(r.status for r in mine))))
    artifacts: dict[str, Mapping[str, Any]] = {}
    for record in subject_records:
        row = rows[int(record.id or 0)]
        artifacts.setdefault(str(row.get("artifact")), {k: row.get(k) for k in
                                                        ("family", "width", "resolution", "quant", "format")})
    recommendations = tuple(recommend(d.name, [c for c in subject_combos if c.device == d.name], min_top1_agreement)
                            for d in devices)
    counts_by_run = {run.id: dict(Counter(r.status for r in by_run.get(run.id, []))) for run in runs}
    return ReportData(
        runs=tuple(runs), subject=subject, devices=tuple(devices),
        combos=tuple(sorted(subject_combos, key=lambda c: not c.ok)),
        failures=tuple(_failures(subject_records, rows, names)),
        counts=dict(Counter(r.status for r in subject_records)),
        artifacts=tuple(sorted(artifacts.items())), recommendations=recommendations,
        trends=tuple(trends(runs, combos_by_run)),
        trend_marks="none", min_top1_agreement=min_top1_agreement, max_points=max_points,
        converter_versions=_converters(subject_records), counts_by_run=counts_by_run,
        records_by_run={run_id: tuple(group) for run_id, group in by_run.items()},
        execution_drift=tuple(compare_executions(store, [subject.id])),
    )
