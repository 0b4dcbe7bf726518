"""Telemetry around every measurement, on any transport: the cooldown gate and temperatures before and after, the
power sampler wrapped around the benchmark command, and the documents a record stores (``power``, ``power_samples``,
``thermal``) with their trust flags. Also the busy-loop run behind ``farmbench calibrate-power``.

The pure parts (sh scripts, parsers, statistics) live in :mod:`farmbench.telemetry`; this module is where they meet
a :class:`~farmbench.transports.base.Transport`. Per device, :meth:`DeviceTelemetry.prepare` runs once, before the
first measurement: one thermal zone listing (the idle temperatures), the power plan (hwmon and RAPL need a listing
of the device's files) and the cpufreq policies. Per measurement, the orchestrator calls
:meth:`DeviceTelemetry.before` (cooldown gate; ``dumpsys thermalservice`` on Android), runs the benchmark through
:func:`run_sampled` (wrapped in the sampler when power is measured), and hands the sampler run and the timed
window to :meth:`DeviceTelemetry.after`, whose :class:`TelemetryResult` goes into the record.

Cooldown gate: with a ``[thermal]`` table it waits as configured (``cooldown_c``, ``cooldown_delta_c`` against the
idle temperatures read at prepare, ``max_wait_s``) and flags ``hot_before_run`` when it gives up. Without one it
only observes (one reading, no waiting, no flag): the defaults (45 °C) fit phones and boards, not every desktop.

Timed window (what energy per inference divides): boards and this machine report it themselves -- the agent's
``timed_start_boottime_s``/``timed_end_boottime_s`` on CLOCK_BOOTTIME, the clock of the sampler's ``/proc/uptime``
stamps. ``benchmark_model`` and ``onnxruntime_perf_test`` print aggregates only, so on phones the window is an
approximation: the last ``count x mean latency`` seconds before the benchmark's end marker. It counts the tool's
exit after its timed loop as timed and leaves out its bookkeeping between runs (``window_source`` says which).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from farmbench.devices.config import DeviceConfig, default_calibration_path
from farmbench.errors import FarmbenchError, UsageError
from farmbench.results.schema import MeasurementRecord
from farmbench.telemetry.power import (
    CalibrationResult,
    PowerPlan,
    calibrate_from_run,
    listing_script,
    plan_power,
    power_series,
    summarize_power,
    write_calibration_state,
)
from farmbench.telemetry.sampler import (
    SampledCommand,
    SamplerRun,
    SamplerSpec,
    busy_loop_argv,
    parse_sampler_output,
    wrap_with_sampler,
)
from farmbench.telemetry.thermal import (
    FLAG_HOT_BEFORE_RUN,
    THERMALSERVICE_ARGV,
    CooldownResult,
    CpuPolicy,
    ThermalConfig,
    ThermalServiceStatus,
    Zone,
    assess_throttling,
    cpufreq_channels,
    cpufreq_listing_script,
    default_thermal_config,
    parse_cpufreq_listing,
    parse_thermal_listing,
    parse_thermalservice,
    select_zones,
    thermal_listing_script,
    wait_for_cooldown,
    zone_channels,
)
from farmbench.transports.base import Completed, Transport

READ_TIMEOUT_S = 30.0
"""One listing of zones, rails or policies."""
THERMALSERVICE_TIMEOUT_S = 15.0
SAMPLER_SLACK_S = 10.0
"""Added to a sampled benchmark's timeout on top of the idle baseline (the sampler's start and stop)."""

FLAG_POWER_FAILED = "power_failed"
"""Power was configured but could not be measured (no such rails, root-only counters, ...): ``power.error`` says
why; the latency is still measured."""
FLAG_THERMAL_FAILED = "thermal_failed"
"""Thermal zones could not be read: ``thermal.errors`` says why."""

WINDOW_AGENT = "agent timed phase (CLOCK_BOOTTIME)"
WINDOW_PROCESS = "benchmark process (start to end marker; the device reported no CLOCK_BOOTTIME window)"
WINDOW_APPROXIMATE = "approximate: the last count x mean latency before the benchmark's end marker"


@dataclass(frozen=True)
class ThermalBefore:
    """What :meth:`DeviceTelemetry.before` saw: the gate's result, the last zone listing (temperatures right before
    the run), ``dumpsys thermalservice`` (Android) and any reading that failed."""

    cooldown: CooldownResult | None
    zones: tuple[Zone, ...] = ()
    thermalservice: ThermalServiceStatus | None = None
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class TelemetryResult:
    """What one measurement stores beside its latency."""

    power: dict[str, Any] | None
    power_samples: list[tuple[float, float]] | None
    thermal: dict[str, Any] | None
    flags: tuple[str, ...] = ()

    def apply(self, record: MeasurementRecord) -> MeasurementRecord:
        flags = list(dict.fromkeys([*record.flags, *self.flags]))
        return replace(record, power=self.power, power_samples=self.power_samples, thermal=self.thermal,
                       flags=flags)


class DeviceTelemetry:
    """Power and thermal telemetry for one device, over its transport (see the module doc)."""

    def __init__(self, device: DeviceConfig, transport: Transport, *,
                 clock: Callable[[], float] | None = None, sleep: Callable[[float], None] | None = None) -> None:
        self.device = device
        self.transport = transport
        self.android = device.kind == "adb"
        self.gate_on = device.thermal is not None
        self.thermal_config: ThermalConfig = device.thermal or default_thermal_config()
        self.power_config = device.power
        self.sysfs_root = device.sysfs_root
        self.thermal_root = f"{self.sysfs_root.rstrip('/')}/class/thermal"
        self.cpufreq_root = f"{self.sysfs_root.rstrip('/')}/devices/system/cpu/cpufreq"
        self.plan: PowerPlan | None = None
        self.spec: SamplerSpec | None = None
        self.power_error: str | None = None
        self.policies: tuple[CpuPolicy, ...] = ()
        self.watched: tuple[Zone, ...] = ()
        self.idle_temps_c: dict[str, float] = {}
        self.notes: list[str] = []
        self._clock = clock
        self._sleep = sleep

    # -- per device ----------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Read the idle temperatures and, when power is configured, plan the sampling. Never raises for a device
        that lacks what the configuration names: the problem is kept and every record says it (power_failed)."""
        try:
            zones = self.read_zones()
            self.watched = tuple(select_zones(zones, self.thermal_config.zones))
            self.idle_temps_c = {zone.key: zone.temp_c for zone in self.watched if zone.temp_c is not None}
        except FarmbenchError as exc:
            self.notes.append(f"thermal zones unreadable at start: {exc.format()}")
        if self.power_config is None:
            return
        try:
            script = listing_script(self.power_config, root=self.sysfs_root)
            listing = self._shell(script) if script is not None else None
            self.plan = plan_power(self.power_config, listing, root=self.sysfs_root)
        except FarmbenchError as exc:
            self.power_error = exc.format()
            return
        try:
            self.policies = tuple(parse_cpufreq_listing(self._shell(cpufreq_listing_script(self.cpufreq_root))))
        except FarmbenchError as exc:
            self.notes.append(f"cpufreq policies unreadable: {exc.format()}")
        try:
            self.spec = self.plan.sampler_spec([*zone_channels(self.watched), *cpufreq_channels(self.policies)])
        except FarmbenchError as exc:
            self.plan, self.power_error = None, exc.format()

    @property
    def power_on(self) -> bool:
        """Whether measurements run under the sampler."""
        return self.plan is not None and self.spec is not None

    @property
    def min_window_s(self) -> float | None:
        """The shortest timed phase power measurements accept (None without power)."""
        return self.power_config.min_window_s if self.power_on and self.power_config is not None else None

    def describe(self) -> str:
        """One line for progress output: what is measured beside latency on this device."""
        zones = f"{len(self.watched)} thermal zone{'s' if len(self.watched) != 1 else ''}"
        thermal = f"{zones}, cooldown gate {'on' if self.gate_on else 'observing'}"
        if self.power_config is None:
            return f"{thermal}; no power source configured"
        if not self.power_on:
            return f"{thermal}; power unavailable: {(self.power_error or '').splitlines()[0]}"
        config = self.power_config
        return (f"{thermal}; power from {config.source} at {config.rate_hz:g} Hz, idle baseline {config.idle_s:g} s,"
                f" timed runs >= {config.min_window_s:g} s")

    def read_zones(self) -> list[Zone]:
        """Every thermal zone with its temperature and trip points (one command)."""
        return parse_thermal_listing(self._shell(thermal_listing_script(self.thermal_root)))

    # -- per measurement -----------------------------------------------------------------------------------------

    def before(self) -> ThermalBefore:
        """The cooldown gate (waiting only with a [thermal] table), then ``dumpsys thermalservice`` on Android."""
        errors: list[str] = []
        last: list[Zone] = []

        def reader() -> list[Zone]:
            zones = self.read_zones()
            last[:] = zones
            return zones

        config = self.thermal_config if self.gate_on else replace(self.thermal_config, max_wait_s=0.0)
        timing: dict[str, Any] = {}
        if self._clock is not None:
            timing["clock"] = self._clock
        if self._sleep is not None:
            timing["sleep"] = self._sleep
        cooldown: CooldownResult | None = None
        try:
            cooldown = wait_for_cooldown(reader, config, idle_temps_c=self.idle_temps_c, **timing)
        except FarmbenchError as exc:
            errors.append(f"cooldown gate: {exc.format()}")
        return ThermalBefore(cooldown, tuple(last), self._thermalservice(errors), tuple(errors))

    def wrap(self, argv: Sequence[str]) -> SampledCommand:
        """``argv`` wrapped in the sampler, with the idle baseline first (power must be on)."""
        if self.spec is None or self.power_config is None:
            raise UsageError(f"device {self.device.name}: power is not measured here")
        return wrap_with_sampler(self.spec, argv, idle_s=self.power_config.idle_s)

    def after(self, before: ThermalBefore, run: SamplerRun | None, *, window: tuple[float, float] | None,
              window_source: str, inferences: int | None) -> TelemetryResult:
        """Temperatures after the run, the throttling verdict and, with a sampler run, the power summary over
        ``window`` (device seconds on CLOCK_BOOTTIME) for ``inferences`` timed inferences."""
        errors = list(before.errors)
        zones_after: list[Zone] = []
        try:
            zones_after = self.read_zones()
        except FarmbenchError as exc:
            errors.append(f"zones after the run: {exc.format()}")
        service_after = self._thermalservice(errors)
        flags: list[str] = []
        assessment = assess_throttling(
            self.thermal_config, zones_before=before.zones, zones_after=zones_after, run=run,
            run_zones=self.watched, policies=self.policies, window=window,
            thermalservice=[s for s in (before.thermalservice, service_after) if s is not None])
        thermal = self._thermal_document(before, zones_after, service_after, assessment.reasons, errors)
        if self.gate_on and before.cooldown is not None and before.cooldown.timed_out:
            flags.append(FLAG_HOT_BEFORE_RUN)
        flags += assessment.flags
        if errors:
            flags.append(FLAG_THERMAL_FAILED)
        power, samples, power_flags = self._power(run, window, window_source, inferences)
        return TelemetryResult(power, samples, thermal, (*flags, *power_flags))

    # -- documents -----------------------------------------------------------------------------------------------

    def _power(self, run: SamplerRun | None, window: tuple[float, float] | None, window_source: str,
               inferences: int | None) -> tuple[dict[str, Any] | None, list[tuple[float, float]] | None, list[str]]:
        config = self.power_config
        if config is None:
            return None, None, []
        if self.plan is None:
            return {"source": config.source, "error": self.power_error}, None, [FLAG_POWER_FAILED]
        if run is None:
            return None, None, []
        series = power_series(self.plan, run)
        samples = list(zip(series.times_s, series.power_mw, strict=True))
        if not inferences or window is None:
            failed: dict[str, Any] = {"source": config.source, "sampler_warnings": list(run.warnings),
                                      "error": "no timed window: the measurement failed"}
            return failed, samples or None, []
        summary = summarize_power(self.plan, run, inferences, window)
        document = summary.to_dict()
        stats = summary.stats
        document.update({
            # The names ResultStore.frame() reads: average power and energy above idle per inference.
            "avg_power_mw": stats.average_power_mw if stats is not None else None,
            "energy_above_idle_mj": stats.energy_above_idle_per_inference_mj if stats is not None else None,
            "window_start_s": window[0], "window_end_s": window[1], "window_source": window_source,
            "process_window_s": list(run.window) if run.window is not None else None,
            "idle_window_s": list(run.idle_window) if run.idle_window is not None else None,
            "rate_hz": config.rate_hz, "sampler_period_s": run.period_s, "idle_s": config.idle_s,
            "min_window_s": config.min_window_s, "samples": len(samples), "sampler_warnings": list(run.warnings),
        })
        if config.source == "android-battery":
            document.update({"calibrated": config.calibrated, "calibration": config.calibration,
                             "current_unit": config.current_unit, "voltage_unit": config.voltage_unit,
                             "discharge_sign": config.discharge_sign})
        return document, samples or None, list(summary.flags)

    def _thermal_document(self, before: ThermalBefore, zones_after: Sequence[Zone],
                          service_after: ThermalServiceStatus | None, reasons: Sequence[str],
                          errors: Sequence[str]) -> dict[str, Any]:
        patterns = self.thermal_config.zones
        watched_before = select_zones(before.zones, patterns)
        watched_after = select_zones(zones_after, patterns)
        gate_start = before.cooldown.before_c if before.cooldown is not None else {}
        zones: dict[str, dict[str, Any]] = {}
        for zone in [*watched_before, *watched_after]:
            zones.setdefault(zone.key, {"type": zone.type, "gate_start_c": gate_start.get(zone.key),
                                        "before_c": None, "after_c": None})
        for zone in watched_before:
            zones[zone.key]["before_c"] = zone.temp_c
        for zone in watched_after:
            zones[zone.key]["after_c"] = zone.temp_c
        cooldown = before.cooldown
        config = self.thermal_config
        return {
            "gate": "on" if self.gate_on else "observe (no [thermal] table)",
            "max_temp_before_c": _max_temp(watched_before), "max_temp_after_c": _max_temp(watched_after),
            "zones": zones, "idle_c": dict(self.idle_temps_c),
            "waited_s": cooldown.waited_s if cooldown is not None else None,
            "timed_out": bool(cooldown.timed_out) if cooldown is not None and self.gate_on else False,
            "polls": cooldown.polls if cooldown is not None else 0,
            "hot": list(cooldown.hot) if cooldown is not None else [],
            "cooldown_c": config.cooldown_c, "cooldown_delta_c": config.cooldown_delta_c,
            "max_wait_s": config.max_wait_s if self.gate_on else 0.0, "zone_patterns": list(patterns),
            "throttled": bool(reasons), "throttle_reasons": list(reasons),
            "thermalservice_before": _service_json(before.thermalservice),
            "thermalservice_after": _service_json(service_after),
            "cpufreq_policies": [policy.name for policy in self.policies],
            "flags": cooldown.flags if cooldown is not None else [], "errors": list(errors), "notes": self.notes,
        }

    # -- device access -------------------------------------------------------------------------------------------

    def _shell(self, script: str) -> str:
        return self.transport.run(["sh", "-c", script], timeout_s=READ_TIMEOUT_S).check().stdout

    def _thermalservice(self, errors: list[str]) -> ThermalServiceStatus | None:
        """``dumpsys thermalservice`` on Android 10+; None elsewhere, or when the phone has no such service (the
        emulator, Android 9 and older): that is not an error."""
        if not self.android:
            return None
        try:
            completed = self.transport.run(list(THERMALSERVICE_ARGV), timeout_s=THERMALSERVICE_TIMEOUT_S)
        except FarmbenchError as exc:
            errors.append(f"dumpsys thermalservice: {exc.format()}")
            return None
        if completed.rc != 0:
            return None
        status = parse_thermalservice(completed.stdout)
        return status if status.status is not None or status.temperatures else None


def run_sampled(transport: Transport, argv: Sequence[str], telemetry: DeviceTelemetry | None, *,
                timeout_s: float) -> tuple[Completed, SamplerRun | None]:
    """Run ``argv``; when ``telemetry`` measures power, inside the sampler. The returned Completed's stdout is the
    benchmark's own output (sampler lines spliced out), so the runners' parsers see what they always saw."""
    if telemetry is None or not telemetry.power_on:
        return transport.run(argv, timeout_s=timeout_s), None
    sampled = telemetry.wrap(argv)
    completed = transport.run(sampled.argv, timeout_s=timeout_s + sampled.idle_s + SAMPLER_SLACK_S)
    run = parse_sampler_output(completed.stdout, sampled.spec, sampled.tag)
    return replace(completed, stdout=run.output), run


def agent_window(document: dict[str, Any], run: SamplerRun | None) -> tuple[tuple[float, float] | None, str]:
    """The agent's timed window on CLOCK_BOOTTIME, else the benchmark process's markers (and which it is)."""
    start, end = document.get("timed_start_boottime_s"), document.get("timed_end_boottime_s")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)) and end >= start:
        return (float(start), float(end)), WINDOW_AGENT
    return (run.window if run is not None else None), WINDOW_PROCESS


def approximate_window(run: SamplerRun | None, count: int | None,
                       mean_us: float | None) -> tuple[float, float] | None:
    """Phones: the last ``count x mean_us`` before the end marker, within the process's window (see the module
    doc)."""
    if run is None or run.window is None or not count or mean_us is None or not math.isfinite(mean_us):
        return None
    start_s, end_s = run.window
    return max(start_s, end_s - count * mean_us / 1e6), end_s


def _max_temp(zones: Sequence[Zone]) -> float | None:
    temps = [zone.temp_c for zone in zones if zone.temp_c is not None]
    return max(temps) if temps else None


def _service_json(status: ThermalServiceStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {"status": status.status, "status_name": status.status_name, "hal_ready": status.hal_ready,
            "source": status.source,
            "temperatures": [{"name": t.name, "type": t.type_name, "value": t.value, "status": t.status}
                             for t in status.temperatures]}


# ---------------------------------------------------------------------------------------------------------------
# calibrate-power


@dataclass(frozen=True)
class PowerCalibration:
    """What ``farmbench calibrate-power`` decided and where it wrote it. ``pointed_to``: the device file's [power]
    table reads that state file (explicitly through ``calibration``, or as the default next to the file)."""

    device: str
    result: CalibrationResult
    path: Path
    workers: int
    rest_s: float
    busy_s: float
    pointed_to: bool


def calibration_path(device: DeviceConfig) -> tuple[Path, bool]:
    """Where the state file goes: ``[power] calibration`` (the loader fills in the default next to the device
    file), else next to the device file; and whether the device configuration reads it from there."""
    config = device.power
    if config is not None and config.calibration:
        return Path(config.calibration), True
    if device.source.endswith(".toml"):
        return default_calibration_path(device.source), False
    raise UsageError(f"device {device.name} has no device file to keep a calibration beside",
                     hint="write a device file with a [power] table (see device_configs/pixel8-tcp.toml)")


def calibrate_power(device: DeviceConfig, *, rest_s: float = 10.0, busy_s: float = 10.0, workers: int | None = None,
                    accept_new_host_key: bool = False) -> PowerCalibration:
    """Sample the battery at rest (the sampler's idle baseline) and under a busy loop on ``workers`` CPUs (default:
    every online CPU), infer the current and voltage units and the discharge sign, and write the state file.
    UsageError (exit 2) when the device has no android-battery [power] table; a device failure or readings that do
    not decide (charging, no difference) exit 1."""
    config = device.power
    if config is None:
        raise UsageError(f"device {device.name} has no [power] table to calibrate",
                         hint=f'add [power] with source = "android-battery" to {device.source}')
    if config.source != "android-battery":
        raise UsageError(f"device {device.name}: calibrate-power infers battery units and sign; source "
                         f"{config.source!r} has fixed units", hint="only android-battery sources need calibrating")
    if not (rest_s > 0 and busy_s > 0):
        raise UsageError(f"rest and busy phases must be > 0 s, got {rest_s:g} and {busy_s:g}")
    path, pointed_to = calibration_path(device)
    from farmbench.runners.board import open_transport  # board imports this module

    with open_transport(device, accept_new_host_key=accept_new_host_key) as transport:
        plan = plan_power(config, root=device.sysfs_root)
        count = workers or online_cpus(transport, device.sysfs_root)
        sampled = wrap_with_sampler(plan.sampler_spec(), busy_loop_argv(busy_s, count), idle_s=rest_s)
        completed = transport.run(sampled.argv, timeout_s=rest_s + busy_s + SAMPLER_SLACK_S + 30.0)
        run = parse_sampler_output(completed.stdout, sampled.spec, sampled.tag)
    result = calibrate_from_run(plan, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_calibration_state(path, result, device=device.name)
    return PowerCalibration(device.name, result, path, count, rest_s, busy_s, pointed_to)


def online_cpus(transport: Transport, sysfs_root: str = "/sys") -> int:
    """How many CPUs are online (``devices/system/cpu/online``, else ``nproc``; 1 when neither answers)."""
    completed = transport.run(["cat", f"{sysfs_root.rstrip('/')}/devices/system/cpu/online"], timeout_s=READ_TIMEOUT_S)
    count = 0
    if completed.rc == 0:
        for part in completed.stdout.strip().split(","):
            low, _, high = part.strip().partition("-")
            if low.isdigit() and (not high or high.isdigit()):
                count += int(high or low) - int(low) + 1
    if count:
        return count
    completed = transport.run(["nproc"], timeout_s=READ_TIMEOUT_S)
    text = completed.stdout.strip()
    return int(text) if completed.rc == 0 and text.isdigit() and int(text) > 0 else 1


__all__ = ["DeviceTelemetry", "PowerCalibration", "TelemetryResult", "ThermalBefore", "agent_window",
           "approximate_window", "calibrate_power", "calibration_path", "online_cpus", "run_sampled"]
