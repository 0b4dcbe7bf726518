"""Regression checks: compare a candidate run with a baseline run, measurement by measurement.

Matching. A measurement is matched by device identity, variant and runtime configuration (runtime, threads,
XNNPACK, ONNX Runtime provider and optimisation level, requested affinity); its repeats are pooled. The variant is
the artifact manifest's ``spec`` (family, width, resolution, quant, format, weights; for a user's file, its name and
format), not the artifact key: the key hashes library versions and farmbench's build code, so a converter upgrade
would otherwise turn every measurement into "gone" + "new" exactly when a check matters most. A changed artifact
(other bytes) is compared and says so in its notes. When one configuration is left on each side of a (device,
variant) pair, they are paired anyway and refused with the configuration field named (e.g. threads 2 -> 1).

Refusals. Matched measurements whose *checked context* differs are refused, naming the field: the runtime actually
used, its version, the OS release, kernel or Android build fingerprint, threads and delegate as applied (what the
runtime reports, not what was asked), the CPU set the benchmark ran on, the phone tool binary; for energy also the
power source, for drift the evaluation set. A field unknown on either side is not checked.

Latency, runtimes with raw samples (the agent, onnxruntime_perf_test with its result file). All three needed:

1. Mann-Whitney U on the raw per-iteration samples of all repeats pooled: p < ``alpha`` (default 0.01).
2. The location moved enough: the median of the session medians changed by more than ``latency_threshold_pct``
   (default 5%) and more than ``latency_floor_us`` (default 10 µs).
3. The sessions show it: a one-sided Student t-test (pooled variance) on the log of each session's median, against
   the threshold rather than against zero -- "the change is larger than 5%" (or than the floor, whichever is
   larger), not merely "there is a change" -- gives p < ``alpha`` (``session_p_value``).

Why gate 3. Thousands of iterations of one session are not independent draws: a session (a fresh process) has its
own placement, memory layout and share of the background load, so gate 1 with many samples calls every
session-to-session wobble significant. On this project's shared 2-core VM the session medians of one run spread by
4-10% (once 40%) and back-to-back runs of the same sweep differed by up to 34%: gates 1 and 2 alone flagged 19-48%
of simulated A/A pairs with a 4-8% session spread. A plain t-test of the session medians against zero would still flag about
alpha of them (0.9% measured), i.e. with 30 measurements a night, a red night in four. Testing against the
threshold flags ~0 A/A pairs whatever the session noise, and keeps alpha as the rate of calling a change that is
in truth just at the threshold. The price is power with few sessions: with 3 repeats on a quiet machine (1%
session spread) a +8% change is caught about half the time and +15% always; 5 repeats catch +8% ~85% of the time.
This is pyperf's reason for spreading values over processes, made an explicit test. With one session on each side
gate 3 cannot be computed and is skipped; the result says so.

The floor is for tiny models: the agent's timer brackets a Python call into the runtime, whose binding overhead
(1-5 µs) moves with Python, numpy and runtime patch releases that are not all checked context, and cache/frequency
effects of a few µs do not shrink with the model; 10 µs is 10% of a 100 µs model, from 200 µs up the 5% governs.
The location is the median of session medians, not the pooled median or a Hodges-Lehmann shift of raw samples:
sessions weigh equally (a longer session does not dominate) and one odd session of three cannot move it.

Latency, aggregate-only runtimes (Android ``benchmark_model``; ``onnxruntime_perf_test`` without its result file):
each repeat gives one session value, its mean; Mann-Whitney U on those values (exact permutation distribution),
gates 2 and 3 on them. With 3 sessions against 3 the smallest possible p is 0.1, so nothing can reach alpha = 0.01:
such results are ``unchanged`` with a note saying how many repeats are needed (5 per side for 0.01).

Energy per inference: one value per session, tested like aggregate-only latency, with ``energy_threshold_pct``
(default 10%: fuel gauges and rails are noisier than timers) and ``energy_floor_mj`` (default 0.01 mJ, about one
current LSB of a phone fuel gauge over a 1 ms inference).

Drift: top-1 agreement with the fp32 twin on the evaluation set, deterministic for a given model and runtime, so no
test: a drop of more than ``drift_top1_points`` percentage points (default 1) is a regression, a rise an
improvement. On the built-in 64-image set one image is 1.6 points.

Verdicts: ``regression``, ``improvement``, ``unchanged``, ``refused`` (checked context differs: ``refused_field``),
``new`` (no baseline measurement; or the baseline failed), ``gone`` (no candidate measurement), ``failed`` (every
candidate session failed). A failure where the baseline ran is blocking, like a regression (a model that used to
run and now does not -- e.g. an op the runtime does not know -- is the worst regression), unless it is transient (a
device that could not be reached), which is a device failure (exit 1), not a finding. Failed in both runs is shown
and not blocking. Trust flags of either side (high_cv, throttled, charging...) travel with every result.

API: :func:`compare_runs` ``(store, baseline_run_id, candidate_run_id, thresholds) -> Comparison``, whose
``results`` are :class:`MetricResult` (key, metric, verdict, medians, change, p-values, refused field, flags);
:func:`resolve_baseline` / :func:`resolve_candidate` turn ``previous``, names and ``latest`` into runs. The pure
statistics (:func:`compare_latency_samples`, :func:`compare_session_values`, :func:`compare_top1`) take numbers.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from farmbench.errors import EXIT_FAILURE, EXIT_OK, EXIT_REGRESSION, UsageError
from farmbench.results.schema import ArtifactInfo, DeviceInfo, MeasurementRecord, RunInfo
from farmbench.results.significance import mann_whitney_u, student_t_two_sided_p
from farmbench.results.store import ResultStore
from farmbench.variants.spec import canonical_hash

REGRESSION = "regression"
IMPROVEMENT = "improvement"
UNCHANGED = "unchanged"
REFUSED = "refused"
NEW = "new"
GONE = "gone"
FAILED = "failed"
VERDICTS: tuple[str, ...] = (REGRESSION, IMPROVEMENT, UNCHANGED, REFUSED, NEW, GONE, FAILED)

LATENCY = "latency"
ENERGY = "energy"
DRIFT = "drift"
METRICS: tuple[str, ...] = (LATENCY, ENERGY, DRIFT)
# Units of baseline_median / candidate_median / change_abs per metric. Drift is top-1 agreement in percent, so its
# change_abs is in percentage points and it has no change_pct.
UNITS: dict[str, str] = {LATENCY: "us", ENERGY: "mJ", DRIFT: "%"}

# Runtime configuration that tells measurements apart (a sweep axis or setting); protocol fields (how long, how
# many runs) are not part of it: changing them is noted, not refused.
MATCH_CONFIG_FIELDS: tuple[str, ...] = ("threads", "xnnpack", "delegate", "ort_provider", "ort_opt_level", "affinity")
# Fields added to the configuration later: records written before them ran with this value.
_CONFIG_DEFAULTS: dict[str, str] = {"delegate": "cpu"}
PROTOCOL_FIELDS: tuple[str, ...] = ("warmup_runs", "warmup_min_s", "runs", "min_s", "max_s", "power_min_window_s")
# Flags that describe the data rather than doubt it; shown elsewhere (aggregate_only is the result's mode).
_QUIET_FLAGS = frozenset({"aggregate_only", "no_thermal_zones"})

BASELINE_PREVIOUS = "previous"
CANDIDATE_LATEST = "latest"
_RUN_ID = re.compile(r"^r\d{8}-\d{6}-[0-9a-f]{4}$")
_BASELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Thresholds:
    """When a change counts (see the module docstring). Percentages are of the baseline value; ``alpha`` is the
    significance level of every test. Set per sweep in its ``[check]`` table."""

    alpha: float = 0.01
    latency_threshold_pct: float = 5.0
    latency_floor_us: float = 10.0
    energy_threshold_pct: float = 10.0
    energy_floor_mj: float = 0.01
    drift_top1_points: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        for name in ("latency_threshold_pct", "latency_floor_us", "energy_threshold_pct", "energy_floor_mj",
                     "drift_top1_points"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value}")

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class MatchKey:
    """What a matched measurement is: device, variant and runtime configuration."""

    device_identity: str
    device: str
    variant_id: str
    variant: str
    runtime: str
    config: tuple[tuple[str, str], ...]

    @property
    def config_label(self) -> str:
        values = dict(self.config)
        parts = [self.runtime, f"t{values.get('threads', '?')}"]
        if values.get("xnnpack") == "off":
            parts.append("xnnpack off")
        if values.get("delegate") not in (None, "", "cpu"):
            parts.append(str(values["delegate"]))
        if self.runtime in ("onnxruntime", "onnxruntime_perf_test"):
            if values.get("ort_provider") not in (None, "", "CPUExecutionProvider"):
                parts.append(str(values["ort_provider"]))
            if values.get("ort_opt_level") not in (None, "", "all"):
                parts.append(f"opt {values['ort_opt_level']}")
        if values.get("affinity"):
            parts.append(f"cpus {values['affinity']}")
        return " ".join(parts)

    @property
    def label(self) -> str:
        return f"{self.device} / {self.variant} / {self.config_label}"

    def to_json(self) -> dict[str, Any]:
        return {"device_identity": self.device_identity, "device": self.device, "variant_id": self.variant_id,
                "variant": self.variant, "runtime": self.runtime, "config": dict(self.config),
                "label": self.label}


@dataclass(frozen=True)
class Change:
    """The statistics of one metric of one matched measurement (pure: computed from numbers only)."""

    verdict: str
    baseline_median: float
    candidate_median: float
    change_abs: float
    change_pct: float | None
    p_value: float | None = None
    session_p_value: float | None = None
    reason: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetricResult:
    """One metric of one matched measurement (or a measurement present on one side only).

    ``baseline_median``/``candidate_median``/``change_abs`` are in ``unit`` (latency µs: median of session
    medians, or of session means when ``aggregate_only``; energy mJ per inference: median of session values; drift:
    top-1 agreement in %). ``change_pct`` is relative to the baseline (None for drift). ``p_value`` is the
    Mann-Whitney U p; ``session_p_value`` the one-sided p that the sessions changed by more than the threshold
    (None with one session per side, and for drift).
    ``refused_field`` names the checked field that differs when ``verdict`` is ``refused``. ``blocking`` results
    fail the check (exit 3); ``transient`` marks a failure of the device rather than the model.
    """

    key: MatchKey
    metric: str
    verdict: str
    unit: str
    baseline_median: float | None = None
    candidate_median: float | None = None
    change_abs: float | None = None
    change_pct: float | None = None
    p_value: float | None = None
    session_p_value: float | None = None
    refused_field: str | None = None
    reason: str = ""
    notes: tuple[str, ...] = ()
    baseline_flags: tuple[str, ...] = ()
    candidate_flags: tuple[str, ...] = ()
    baseline_ids: tuple[int, ...] = ()
    candidate_ids: tuple[int, ...] = ()
    baseline_sessions: int = 0
    candidate_sessions: int = 0
    baseline_n: int = 0
    candidate_n: int = 0
    aggregate_only: bool = False
    blocking: bool = False
    transient: bool = False

    @property
    def flags(self) -> tuple[str, ...]:
        """Trust flags of either side, without repeats."""
        return tuple(dict.fromkeys([*self.baseline_flags, *self.candidate_flags]))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["key"] = self.key.to_json()
        for name in ("notes", "baseline_flags", "candidate_flags", "baseline_ids", "candidate_ids"):
            data[name] = list(data[name])
        return data


@dataclass(frozen=True)
class Comparison:
    """A candidate run against a baseline run: one :class:`MetricResult` per metric and matched measurement."""

    baseline_run_id: str
    candidate_run_id: str
    thresholds: Thresholds
    results: tuple[MetricResult, ...]
    baseline_ref: str = ""
    baseline_started_at: str = ""
    candidate_started_at: str = ""
    sweep_name: str = ""
    notes: tuple[str, ...] = ()

    def by_verdict(self, verdict: str) -> list[MetricResult]:
        return [r for r in self.results if r.verdict == verdict]

    @property
    def regressions(self) -> list[MetricResult]:
        return self.by_verdict(REGRESSION)

    @property
    def improvements(self) -> list[MetricResult]:
        return self.by_verdict(IMPROVEMENT)

    @property
    def blocking(self) -> list[MetricResult]:
        return [r for r in self.results if r.blocking]

    def counts(self) -> dict[str, int]:
        return {verdict: len(self.by_verdict(verdict)) for verdict in VERDICTS}

    def matches(self) -> list[tuple[MatchKey, list[MetricResult]]]:
        """Results grouped by matched measurement, in result order."""
        grouped: dict[MatchKey, list[MetricResult]] = {}
        for result in self.results:
            grouped.setdefault(result.key, []).append(result)
        return list(grouped.items())

    @property
    def exit_code(self) -> int:
        """3 when anything blocks (a regression, or a model that ran in the baseline and fails now); else 1 when a
        device could not be reached for a measurement the baseline has; else 0."""
        if self.blocking:
            return EXIT_REGRESSION
        if any(r.verdict == FAILED and r.transient and r.baseline_sessions for r in self.results):
            return EXIT_FAILURE
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline_run_id": self.baseline_run_id, "candidate_run_id": self.candidate_run_id,
            "baseline_ref": self.baseline_ref, "baseline_started_at": self.baseline_started_at,
            "candidate_started_at": self.candidate_started_at, "sweep_name": self.sweep_name,
            "thresholds": self.thresholds.to_json(), "counts": self.counts(), "exit_code": self.exit_code,
            "notes": list(self.notes), "results": [r.to_json() for r in self.results],
        }


# ---------------------------------------------------------------------------------------------------------------
# Statistics over plain numbers


def _fmt_p(p: float, name: str = "p") -> str:
    """``p=0.0031``, or ``p<1e-99`` for what a float shows as 0 or 1e-300."""
    return f"{name}<1e-99" if p < 1e-99 else f"{name}={p:.2g}"


def sessions_needed(alpha: float) -> int:
    """Sessions per side an exact rank test needs before p < alpha is possible at all."""
    n = 1
    while 2.0 / math.comb(2 * n, n) >= alpha:
        n += 1
    return n


def _relevance_p(base_values: np.ndarray, cand_values: np.ndarray, threshold_ratio: float) -> float | None:
    """One-sided p that the sessions moved by more than ``threshold_ratio`` (0.05 = 5%) in the direction observed:
    Student's two-sample t-test (pooled variance) on log session values, against the threshold instead of zero.
    None when there is no session-to-session spread to estimate (one session on each side) or a value is not
    positive. (A 20%-trimmed Yuen-Dixon form was tried: with 5-8 sessions it lost more power to the smaller df than
    it gained against a disturbed session.)"""
    nb, nc = base_values.size, cand_values.size
    df = nb + nc - 2
    if df < 1 or np.any(base_values <= 0) or np.any(cand_values <= 0):
        return None
    lb, lc = np.log(base_values), np.log(cand_values)
    squares = float(np.sum((lb - lb.mean()) ** 2) + np.sum((lc - lc.mean()) ** 2))
    difference = float(lc.mean() - lb.mean())
    # The threshold in log space for a slowdown (1 + t) and for a speed-up (1 - t): both mean "t of the baseline".
    margin = math.log1p(threshold_ratio) if difference >= 0 else \
        (-math.log1p(-threshold_ratio) if threshold_ratio < 1 else math.inf)
    excess = abs(difference) - margin
    standard_error = math.sqrt(squares / df * (1.0 / nb + 1.0 / nc))
    if standard_error == 0.0:
        return 0.0 if excess > 0 else 1.0
    tail = student_t_two_sided_p(excess / standard_error, df) / 2.0
    return tail if excess > 0 else 1.0 - tail


def _judge(baseline: float, candidate: float, p_value: float, relevance_p: float | None, *, alpha: float,
           threshold_pct: float, floor: float, unit: str) -> tuple[str, str]:
    """The verdict and its reason: the rank test significant, the sessions showing a change beyond the threshold
    (when there is more than one session), and the point estimate beyond the threshold and the floor."""
    delta = candidate - baseline
    pct = delta / baseline * 100.0 if baseline else math.inf
    size = f"{pct:+.1f}%, {delta:+.4g} {unit}"
    tests = _fmt_p(p_value) + ("" if relevance_p is None else f", {_fmt_p(relevance_p, 'session p')}")
    if p_value >= alpha:
        return UNCHANGED, f"not significant: {_fmt_p(p_value)} >= {alpha:g} ({size})"
    if abs(pct) <= threshold_pct:
        return UNCHANGED, f"{size}: within the {threshold_pct:g}% threshold ({tests})"
    if abs(delta) <= floor:
        return UNCHANGED, f"{size}: within the {floor:g} {unit} floor ({tests})"
    if relevance_p is not None and relevance_p >= alpha:
        return UNCHANGED, (f"{size}, but the sessions do not show a change beyond the threshold: session"
                           f" {_fmt_p(relevance_p, 'p')} >= {alpha:g} (session-to-session noise)")
    return (REGRESSION if delta > 0 else IMPROVEMENT), f"{size} ({tests})"


def _effective_ratio(baseline: float, threshold_pct: float, floor: float) -> float:
    """The relative change that must be exceeded: the threshold, or the floor when it is the larger of the two."""
    return max(threshold_pct / 100.0, floor / baseline if baseline > 0 else 0.0)


def compare_latency_samples(baseline_sessions_us: Sequence[Sequence[float]],
                            candidate_sessions_us: Sequence[Sequence[float]],
                            *, alpha: float = 0.01, threshold_pct: float = 5.0, floor_us: float = 10.0) -> Change:
    """Latency from raw samples, one sequence per session (repeat). Lower is better."""
    base = [np.asarray(s, dtype=np.float64) for s in baseline_sessions_us if len(s)]
    cand = [np.asarray(s, dtype=np.float64) for s in candidate_sessions_us if len(s)]
    if not base or not cand:
        raise ValueError("each side needs at least one session with samples")
    test = mann_whitney_u(np.concatenate(base), np.concatenate(cand))
    base_medians = np.array([np.median(s) for s in base])
    cand_medians = np.array([np.median(s) for s in cand])
    baseline, candidate = float(np.median(base_medians)), float(np.median(cand_medians))
    relevance = _relevance_p(base_medians, cand_medians, _effective_ratio(baseline, threshold_pct, floor_us))
    notes: tuple[str, ...] = ()
    if relevance is None:
        notes = (("one session on each side: session-to-session noise unknown, judged on samples alone;"
                 " use --repeats 3 or more"),)
    verdict, reason = _judge(baseline, candidate, test.p_value, relevance, alpha=alpha, threshold_pct=threshold_pct,
                             floor=floor_us, unit="us")
    return Change(verdict, baseline, candidate, candidate - baseline, _pct(baseline, candidate), test.p_value,
                  relevance, reason, notes)


def compare_session_values(baseline_values: Sequence[float], candidate_values: Sequence[float], *,
                           alpha: float = 0.01, threshold_pct: float = 5.0, floor: float = 10.0,
                           unit: str = "us") -> Change:
    """One value per session (aggregate-only latency means, energy per inference). Lower is better."""
    base = np.asarray(baseline_values, dtype=np.float64)
    cand = np.asarray(candidate_values, dtype=np.float64)
    if base.size == 0 or cand.size == 0:
        raise ValueError("each side needs at least one session value")
    test = mann_whitney_u(base, cand)
    baseline, candidate = float(np.median(base)), float(np.median(cand))
    relevance = _relevance_p(base, cand, _effective_ratio(baseline, threshold_pct, floor))
    notes: tuple[str, ...] = ()
    if test.min_p_value >= alpha:
        needed = sessions_needed(alpha)
        notes = ((f"underpowered: {base.size} vs {cand.size} sessions cannot give p < {alpha:g} with a rank test;"
                 f" it needs {needed} per side: --repeats {needed}"),)
    verdict, reason = _judge(baseline, candidate, test.p_value, relevance, alpha=alpha, threshold_pct=threshold_pct,
                             floor=floor, unit=unit)
    return Change(verdict, baseline, candidate, candidate - baseline, _pct(baseline, candidate), test.p_value,
                  relevance, reason, notes)


def compare_top1(baseline_agreement: float, candidate_agreement: float, *, points: float = 1.0) -> Change:
    """Top-1 agreement with the fp32 twin, as fractions (0..1). Higher is better; deterministic, no test."""
    baseline, candidate = baseline_agreement * 100.0, candidate_agreement * 100.0
    delta = candidate - baseline
    size = f"{delta:+.2f} points"
    if abs(delta) <= points:
        return Change(UNCHANGED, baseline, candidate, delta, None, reason=f"{size}: within {points:g} points")
    return Change(REGRESSION if delta < 0 else IMPROVEMENT, baseline, candidate, delta, None, reason=size)


def _pct(baseline: float, candidate: float) -> float | None:
    return (candidate - baseline) / baseline * 100.0 if baseline else None


# ---------------------------------------------------------------------------------------------------------------
# Matching records


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _delegate(record: MeasurementRecord) -> Any:
    context = record.context
    applied = context.get("applied")
    if isinstance(applied, dict):
        if applied.get("ort_providers") is not None:
            return ",".join(applied["ort_providers"])
        if applied.get("xnnpack") is not None or applied.get("op_resolver") is not None:
            return f"xnnpack={'on' if applied.get('xnnpack') else 'off'} resolver={applied.get('op_resolver')}"
    tool = context.get("benchmark_model")
    if isinstance(tool, dict):
        delegate = tool.get("delegate")
        return "none" if not delegate else str(delegate.get("name"))
    return None


def _threads(record: MeasurementRecord) -> Any:
    applied = record.context.get("applied")
    if isinstance(applied, dict) and applied.get("threads") is not None:
        return applied["threads"]
    tool = record.context.get("onnxruntime_perf_test")
    if isinstance(tool, dict) and tool.get("intra_op_threads") is not None:
        return tool["intra_op_threads"]
    return None


def checked_context(record: MeasurementRecord) -> dict[str, Any]:
    """The fields whose difference makes two measurements incomparable, in the order they are reported. A field
    that is None (not recorded by this runner or farmbench version) is not checked."""
    context = record.context
    affinity = context.get("affinity")
    return {
        "runtime": record.runtime,
        "runtime_version": record.runtime_version,
        "os": context.get("os"),
        "kernel": context.get("kernel"),
        "build_fingerprint": context.get("build_fingerprint"),
        "threads": _threads(record),
        "delegate": _delegate(record),
        "affinity": ",".join(map(str, affinity)) if isinstance(affinity, list) else affinity,
        "tool_binary_sha256": context.get("binary_sha256"),
    }


def _energy(record: MeasurementRecord) -> float | None:
    value = (record.power or {}).get("energy_per_inference_mj")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _top1(record: MeasurementRecord) -> float | None:
    value = (record.drift or {}).get("top1_agreement")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass
class _Side:
    """The records of one run for one match key: ok, failed and skipped sessions."""

    records: list[MeasurementRecord] = field(default_factory=list)

    @property
    def ok(self) -> list[MeasurementRecord]:
        return [r for r in self.records if r.status == "ok"]

    @property
    def failed(self) -> list[MeasurementRecord]:
        return [r for r in self.records if r.status == "failed"]

    @property
    def skipped(self) -> list[MeasurementRecord]:
        return [r for r in self.records if r.status == "skipped"]

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(r.id for r in self.records if r.id is not None)

    def flags(self) -> tuple[str, ...]:
        found = [flag for r in self.records if r.status == "ok" for flag in r.all_flags()]
        return tuple(f for f in dict.fromkeys(found) if f not in _QUIET_FLAGS)

    def values(self, name: str) -> set[str]:
        return {_text(checked_context(r)[name]) for r in self.ok if checked_context(r)[name] is not None}

    def has_none(self, name: str) -> bool:
        return any(checked_context(r)[name] is None for r in self.ok)


_GroupKey = tuple[str, str, str, tuple[tuple[str, str], ...]]  # device identity, variant id, runtime, config


def _variant(artifacts: Mapping[str, ArtifactInfo], key: str) -> tuple[str, str]:
    """(variant id, display name) of an artifact: its manifest spec, else the key itself."""
    info = artifacts.get(key)
    if info is None:
        return key, key
    spec = info.manifest.get("spec")
    return (canonical_hash(spec)[:16] if spec else key), info.name


def _config_key(record: MeasurementRecord) -> tuple[tuple[str, str], ...]:
    return tuple((name, _text(record.config.get(name, _CONFIG_DEFAULTS.get(name, "")))) for name in MATCH_CONFIG_FIELDS)


def _group(records: Iterable[MeasurementRecord], devices: Mapping[int, DeviceInfo],
           artifacts: Mapping[str, ArtifactInfo], identity_of_name: Mapping[str, str]
           ) -> tuple[dict[_GroupKey, _Side], dict[_GroupKey, MatchKey]]:
    sides: dict[_GroupKey, _Side] = defaultdict(_Side)
    keys: dict[_GroupKey, MatchKey] = {}
    for record in records:
        device = devices[record.device_id]
        identity = device.identity
        # A device that could not be reached is recorded under a placeholder identity; match it by name.
        if identity.startswith(f"{device.kind}:unreached:"):
            identity = identity_of_name.get(device.name, identity)
        variant_id, variant_name = _variant(artifacts, record.artifact_key)
        config = _config_key(record)
        group: _GroupKey = (identity, variant_id, record.runtime, config)
        sides[group].records.append(record)
        keys[group] = MatchKey(identity, device.name, variant_id, variant_name, record.runtime, config)
    return dict(sides), keys


def compare_records(baseline: Sequence[MeasurementRecord], candidate: Sequence[MeasurementRecord],
                    devices: Mapping[int, DeviceInfo], artifacts: Mapping[str, ArtifactInfo],
                    thresholds: Thresholds | None = None) -> list[MetricResult]:
    """Match the records of two runs and compare each match (see the module docstring). ``devices`` and
    ``artifacts`` are the store's, by id and key."""
    thresholds = thresholds or Thresholds()
    # A placeholder identity (device not reached) maps to the identity the other run saw under that device name.
    base_names = {devices[r.device_id].name: devices[r.device_id].identity for r in baseline
                  if ":unreached:" not in devices[r.device_id].identity}
    cand_names = {devices[r.device_id].name: devices[r.device_id].identity for r in candidate
                  if ":unreached:" not in devices[r.device_id].identity}
    base_sides, base_keys = _group(baseline, devices, artifacts, {**base_names, **cand_names})
    cand_sides, cand_keys = _group(candidate, devices, artifacts, {**cand_names, **base_names})

    pairs: list[tuple[MatchKey, _Side | None, _Side | None, str | None]] = []
    for group in sorted(set(base_sides) | set(cand_sides), key=str):
        if group in base_sides and group in cand_sides:
            pairs.append((cand_keys[group], base_sides[group], cand_sides[group], None))
    left_base = {g: s for g, s in base_sides.items() if g not in cand_sides}
    left_cand = {g: s for g, s in cand_sides.items() if g not in base_sides}
    # Pair what is left when a (device, variant) has exactly one configuration left on each side.
    by_base: dict[tuple[str, str], list[_GroupKey]] = defaultdict(list)
    by_cand: dict[tuple[str, str], list[_GroupKey]] = defaultdict(list)
    for g in left_base:
        by_base[g[:2]].append(g)
    for g in left_cand:
        by_cand[g[:2]].append(g)
    for device_variant in sorted(set(by_base) | set(by_cand), key=str):
        bs, cs = by_base.get(device_variant, []), by_cand.get(device_variant, [])
        if len(bs) == 1 and len(cs) == 1:
            pairs.append((cand_keys[cs[0]], left_base[bs[0]], left_cand[cs[0]], _config_difference(bs[0], cs[0])))
            continue
        pairs += [(base_keys[g], left_base[g], None, None) for g in bs]
        pairs += [(cand_keys[g], None, left_cand[g], None) for g in cs]

    results: list[MetricResult] = []
    for key, base_side, cand_side, config_difference in pairs:
        results += _compare_match(key, base_side, cand_side, config_difference, thresholds)
    order = {v: i for i, v in enumerate((REGRESSION, FAILED, IMPROVEMENT, REFUSED, NEW, GONE, UNCHANGED))}
    return sorted(results, key=lambda r: (r.key.device, r.key.variant, r.key.config_label,
                                          METRICS.index(r.metric), order[r.verdict]))


def _config_difference(base: _GroupKey, cand: _GroupKey) -> str:
    """``field: baseline X, candidate Y`` for each configuration field that differs between two groups."""
    parts = []
    if base[2] != cand[2]:
        parts.append(f"runtime: baseline {base[2]}, candidate {cand[2]}")
    for (name, b), (_, c) in zip(base[3], cand[3], strict=True):
        if b != c:
            parts.append(f"{name}: baseline {b or '(none)'}, candidate {c or '(none)'}")
    return "; ".join(parts)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0][:200] if (text or "").strip() else ""


def _compare_match(key: MatchKey, base: _Side | None, cand: _Side | None, config_difference: str | None,
                   thresholds: Thresholds) -> list[MetricResult]:
    common: dict[str, Any] = {
        "baseline_flags": base.flags() if base else (), "candidate_flags": cand.flags() if cand else (),
        "baseline_ids": base.ids if base else (), "candidate_ids": cand.ids if cand else (),
        "baseline_sessions": len(base.ok) if base else 0, "candidate_sessions": len(cand.ok) if cand else 0,
    }

    def one(verdict: str, reason: str, notes: Sequence[str] = (), **extra: Any) -> MetricResult:
        return MetricResult(key=key, metric=LATENCY, verdict=verdict, unit=UNITS[LATENCY], reason=reason,
                            notes=tuple(notes), **{**common, **extra})

    base_ok, cand_ok = (base.ok if base else []), (cand.ok if cand else [])
    base_failed, cand_failed = (base.failed if base else []), (cand.failed if cand else [])
    skip_reason = _first_line(cand.skipped[-1].error_message) if cand is not None and cand.skipped else ""
    if cand_failed and not cand_ok:
        error = cand_failed[-1]
        transient = all(r.transient for r in cand_failed)
        reason = f"{error.error_class}: {_first_line(error.error_message)}"
        if not base_ok:  # nothing to regress from
            return [one(FAILED, reason, ["also failed in the baseline" if base_failed else "no baseline measurement"],
                        transient=transient)]
        return [one(FAILED, reason, ["transient: the device could not be reached" if transient
                                     else "ran in the baseline"], blocking=not transient, transient=transient)]
    if not base_ok and not cand_ok:
        if base_failed:
            return [one(GONE, f"skipped in the candidate: {skip_reason}" if skip_reason else "not in the candidate run",
                        ["failed in the baseline"])]
        return []  # skipped, or skipped on one side and absent on the other: nothing was measured
    if not base_ok:
        return [one(NEW, "no baseline measurement", ["failed in the baseline"] if base_failed else [])]
    if not cand_ok:
        return [one(GONE, f"skipped in the candidate: {skip_reason}" if skip_reason else "not in the candidate run")]
    assert base is not None and cand is not None

    notes = _match_notes(base, cand)
    metrics = [LATENCY]
    if any(_energy(r) is not None for r in base_ok) and any(_energy(r) is not None for r in cand_ok):
        metrics.append(ENERGY)
    elif any(_energy(r) is not None for r in [*base_ok, *cand_ok]):
        notes.append("energy measured on one side only")
    if any(_top1(r) is not None for r in base_ok) and any(_top1(r) is not None for r in cand_ok):
        metrics.append(DRIFT)

    refusal = _refusal(base, cand, config_difference)
    results: list[MetricResult] = []
    for metric in metrics:
        metric_refusal = refusal or _metric_refusal(metric, base_ok, cand_ok)
        if metric_refusal is not None:
            refused_field, detail = metric_refusal
            results.append(MetricResult(key=key, metric=metric, verdict=REFUSED, unit=UNITS[metric],
                                        refused_field=refused_field, reason=f"{detail}: not compared",
                                        notes=tuple(notes), **common))
            continue
        results.append(_metric_result(key, metric, base_ok, cand_ok, thresholds, notes, common))
    return results


def _match_notes(base: _Side, cand: _Side) -> list[str]:
    notes: list[str] = []
    for side, name in ((base, "baseline"), (cand, "candidate")):
        if side.failed:
            notes.append(f"{len(side.failed)} of {len(side.records)} {name} sessions failed")
    base_sha = {r.artifact_sha256 for r in base.ok if r.artifact_sha256}
    cand_sha = {r.artifact_sha256 for r in cand.ok if r.artifact_sha256}
    if base_sha and cand_sha and base_sha != cand_sha:
        notes.append(f"artifact changed: sha256 {','.join(sorted(s[:12] for s in base_sha))} ->"
                     f" {','.join(sorted(s[:12] for s in cand_sha))}")
    for name in PROTOCOL_FIELDS:
        b = {_text(r.config.get(name)) for r in base.ok if r.config.get(name) is not None}
        c = {_text(r.config.get(name)) for r in cand.ok if r.config.get(name) is not None}
        if b and c and b != c:
            notes.append(f"protocol {name} changed: {','.join(sorted(b))} -> {','.join(sorted(c))}")
    return notes


def _refusal(base: _Side, cand: _Side, config_difference: str | None) -> tuple[str, str] | None:
    """(field, detail) of the first configuration or checked context field that differs, or None."""
    if config_difference:
        return config_difference.split(":", 1)[0], config_difference
    for name in checked_context(base.ok[0]):
        if base.has_none(name) or cand.has_none(name):
            continue
        b, c = base.values(name), cand.values(name)
        if b != c:
            return name, f"{name}: baseline {' | '.join(sorted(b))}, candidate {' | '.join(sorted(c))}"
    return None


def _power_source(record: MeasurementRecord) -> Any:
    return (record.power or {}).get("source")


def _evalset_digest(record: MeasurementRecord) -> Any:
    return ((record.drift or {}).get("evalset") or {}).get("digest")


def _metric_refusal(metric: str, base: Sequence[MeasurementRecord],
                    cand: Sequence[MeasurementRecord]) -> tuple[str, str] | None:
    """Checked context of one metric only: the power source for energy, the evaluation set for drift."""
    checks = {ENERGY: ("power.source", _power_source), DRIFT: ("drift.evalset", _evalset_digest)}
    if metric not in checks:
        return None
    name, get = checks[metric]
    b = {str(get(r)) for r in base if get(r) is not None}
    c = {str(get(r)) for r in cand if get(r) is not None}
    if b and c and b != c:
        return name, f"{name}: baseline {' | '.join(sorted(b))[:40]}, candidate {' | '.join(sorted(c))[:40]}"
    return None


def _metric_result(key: MatchKey, metric: str, base: Sequence[MeasurementRecord], cand: Sequence[MeasurementRecord],
                   thresholds: Thresholds, notes: Sequence[str], common: Mapping[str, Any]) -> MetricResult:
    aggregate_only = False
    if metric == LATENCY:
        if all(r.samples_us for r in [*base, *cand]):
            change = compare_latency_samples([r.samples_us or [] for r in base], [r.samples_us or [] for r in cand],
                                             alpha=thresholds.alpha, threshold_pct=thresholds.latency_threshold_pct,
                                             floor_us=thresholds.latency_floor_us)
            n_base, n_cand = sum(len(r.samples_us or []) for r in base), sum(len(r.samples_us or []) for r in cand)
        else:
            aggregate_only = True
            base_values, cand_values = _session_means(base), _session_means(cand)
            change = compare_session_values(base_values, cand_values, alpha=thresholds.alpha,
                                            threshold_pct=thresholds.latency_threshold_pct,
                                            floor=thresholds.latency_floor_us, unit="us")
            n_base, n_cand = len(base_values), len(cand_values)
    elif metric == ENERGY:
        base_values = [v for v in map(_energy, base) if v is not None]
        cand_values = [v for v in map(_energy, cand) if v is not None]
        change = compare_session_values(base_values, cand_values, alpha=thresholds.alpha,
                                        threshold_pct=thresholds.energy_threshold_pct,
                                        floor=thresholds.energy_floor_mj, unit="mJ")
        n_base, n_cand = len(base_values), len(cand_values)
    else:
        base_top1 = [v for v in map(_top1, base) if v is not None]
        cand_top1 = [v for v in map(_top1, cand) if v is not None]
        change = compare_top1(float(np.median(base_top1)), float(np.median(cand_top1)),
                              points=thresholds.drift_top1_points)
        n_base, n_cand = len(base_top1), len(cand_top1)
    return MetricResult(
        key=key, metric=metric, verdict=change.verdict, unit=UNITS[metric], baseline_median=change.baseline_median,
        candidate_median=change.candidate_median, change_abs=change.change_abs, change_pct=change.change_pct,
        p_value=change.p_value, session_p_value=change.session_p_value, reason=change.reason,
        notes=(*change.notes, *notes), baseline_n=n_base, candidate_n=n_cand, aggregate_only=aggregate_only,
        blocking=change.verdict == REGRESSION, **common)


def _session_means(records: Sequence[MeasurementRecord]) -> list[float]:
    """One value per session: the runtime's mean (aggregate-only) or the mean of the raw samples."""
    values = []
    for record in records:
        if record.latency is not None:
            values.append(float(record.latency.mean_us))
        elif record.samples_us:
            values.append(float(np.mean(record.samples_us)))
    return values


# ---------------------------------------------------------------------------------------------------------------
# Runs, baselines and the store


def check_baseline_name(name: str) -> None:
    """Baseline names: letters, digits, ``.``, ``_``, ``-``; not a keyword of ``--baseline``/``--candidate`` and
    not shaped like a run id, so a reference is never ambiguous."""
    if name in (BASELINE_PREVIOUS, CANDIDATE_LATEST) or _RUN_ID.match(name) or not _BASELINE_NAME.match(name):
        raise UsageError(f"{name!r} cannot be a baseline name",
                         hint="use letters, digits, '.', '_' and '-' (up to 64), not 'previous', 'latest' or a run id,"
                              " e.g. nightly or release-1.2")


def resolve_candidate(store: ResultStore, ref: str) -> RunInfo:
    """``latest`` (the run that started last) or a run id."""
    if ref == CANDIDATE_LATEST:
        runs = store.runs()
        if not runs:
            raise UsageError(f"no runs in {store.path}", hint="run `farmbench run` first")
        return runs[-1]
    return store.run(ref)


def previous_run(store: ResultStore, candidate: RunInfo) -> RunInfo:
    """The last finished run of the candidate's sweep (same ``sweep_sha256``) that started before it and measured
    every device the candidate measured (by identity)."""
    wanted = {i for i in store.run_device_identities(candidate.id) if ":unreached:" not in i}
    for run in store.earlier_runs_of_sweep(candidate.sweep_sha256, candidate.started_at):
        if wanted <= store.run_device_identities(run.id):
            return run
    raise UsageError(f"no previous finished run of sweep {candidate.sweep_name!r} on the same devices before"
                     f" run {candidate.id}",
                     hint="run the sweep once more to have one, or name a baseline: `farmbench baseline set NAME RUN`"
                          " and --baseline NAME, or --baseline RUN_ID (`farmbench results --format json` lists runs)")


def resolve_baseline(store: ResultStore, ref: str, candidate: RunInfo) -> tuple[RunInfo, str]:
    """``previous``, a run id, or a baseline name -> (run, how it was chosen)."""
    if ref == BASELINE_PREVIOUS:
        run = previous_run(store, candidate)
        return run, f"previous run of sweep {candidate.sweep_name!r}"
    if _RUN_ID.match(ref):
        return store.run(ref), f"run {ref}"
    named = store.baseline(ref)
    if named is None:
        known = ", ".join(b.name for b in store.baselines()) or "none yet"
        raise UsageError(f"no baseline or run named {ref!r} in {store.path} (baselines: {known})",
                         hint="use --baseline previous, a run id (`farmbench results --format json` lists them), or"
                              " set one: `farmbench baseline set NAME RUN`")
    return store.run(named.run_id), f"baseline {ref!r}"


def compare_runs(store: ResultStore, baseline_run_id: str, candidate_run_id: str,
                 thresholds: Thresholds | None = None, *, baseline_ref: str = "") -> Comparison:
    """Compare two stored runs (see the module docstring). Unknown run ids raise RunNotFoundError (exit 2)."""
    thresholds = thresholds or Thresholds()
    baseline_run, candidate_run = store.run(baseline_run_id), store.run(candidate_run_id)
    devices = {d.id: d for d in store.devices()}
    results = compare_records(store.measurements([baseline_run_id]), store.measurements([candidate_run_id]),
                              devices, store.artifacts(), thresholds)
    notes = []
    if baseline_run.sweep_sha256 != candidate_run.sweep_sha256:
        notes.append(f"different sweeps: baseline {baseline_run.sweep_name!r}, candidate {candidate_run.sweep_name!r}")
    for run, name in ((baseline_run, "baseline"), (candidate_run, "candidate")):
        if run.status != "finished":
            notes.append(f"the {name} run is {run.status}")
    return Comparison(baseline_run_id=baseline_run_id, candidate_run_id=candidate_run_id, thresholds=thresholds,
                      results=tuple(results), baseline_ref=baseline_ref or f"run {baseline_run_id}",
                      baseline_started_at=baseline_run.started_at, candidate_started_at=candidate_run.started_at,
                      sweep_name=candidate_run.sweep_name, notes=tuple(notes))


__all__ = [
    "DRIFT", "ENERGY", "FAILED", "GONE", "IMPROVEMENT", "LATENCY", "METRICS", "NEW", "REFUSED", "REGRESSION",
    "UNCHANGED", "VERDICTS", "Change", "Comparison", "MatchKey", "MetricResult", "Thresholds",
    "check_baseline_name", "checked_context", "compare_latency_samples", "compare_records", "compare_runs",
    "compare_session_values", "compare_top1", "previous_run", "resolve_baseline", "resolve_candidate",
    "sessions_needed",
]
