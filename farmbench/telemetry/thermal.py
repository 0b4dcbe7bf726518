"""Thermal zones, the ``[thermal]`` device table, the cooldown gate and throttle detection.

A device file may tune the thermal side in a ``[thermal]`` table (every key is in ``THERMAL_FIELDS``; without the
table the defaults apply)::

    [thermal]
    zones = ["*cpu*", "soc*"]   # zone types to watch (fnmatch, case-insensitive)
    cooldown_c = 45             # the gate opens when every watched zone is at or below this ...
    cooldown_delta_c = 3        # ... or within this of its idle temperature, when the orchestrator knows it
    max_wait_s = 120            # give up waiting (the measurement is then flagged hot_before_run)
    poll_s = 2

Zones are read with one command, :func:`thermal_listing_script` (``type``, ``temp`` and every
``trip_point_N_{temp,type}`` of ``/sys/class/thermal/thermal_zone*``), parsed by :func:`parse_thermal_listing`.

Units: the kernel ABI gives millidegrees Celsius. Some vendor kernels give whole degrees (old Qualcomm
``tsens_tz_sensorN``) or tenths (some battery and PMIC zones), so :func:`temp_c_from_sysfs` decides by magnitude:
|v| >= 1000 is m°C; 200 <= |v| < 1000 is d°C (as m°C that would be 0.2-1 °C, as °C 200-999 °C: neither is a
running device); |v| < 200 is °C. A result outside -40..200 °C is a sensor that is off or broken (-273000,
0x7fffffff) and reads as None.

Cooldown gate: :func:`wait_for_cooldown` polls a reader the orchestrator builds on its transport
(:func:`make_zone_reader`) with an injectable clock and sleep, and returns how long it waited, the temperatures
before and after, and whether it timed out.

Throttling (:func:`assess_throttling`): a watched zone at or over a ``passive``, ``hot`` or ``critical`` trip point
(before, during -- from the sampler's zone channels -- or after the run); a ``scaling_max_freq`` lowered during the
run, or ``scaling_cur_freq`` samples of a busy policy below its maximum (:func:`frequency_throttling`); and on
Android 10+ ``dumpsys thermalservice`` reporting a status above ``max_thermal_status`` (:func:`parse_thermalservice`).
Any of them flags the measurement ``throttled``, with the reasons kept.
"""

from __future__ import annotations

import fnmatch
import math
import posixpath
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from farmbench.config import COMMAND_LINE, Field, KeyPath, TomlDocument, validate_table
from farmbench.telemetry.sampler import Channel, SamplerRun, parse_file_listing, read_files_script

THERMAL_ROOT = "/sys/class/thermal"
CPUFREQ_ROOT = "/sys/devices/system/cpu/cpufreq"
THERMALSERVICE_ARGV = ("dumpsys", "thermalservice")
"""Android 10+: the framework's thermal status and the thermal HAL's temperatures (parse_thermalservice)."""

THROTTLING_TRIP_TYPES = ("passive", "hot", "critical")
"""Trip types whose crossing means the kernel throttles (``active`` trips start fans)."""

FLAG_THROTTLED = "throttled"
FLAG_HOT_BEFORE_RUN = "hot_before_run"
FLAG_NO_ZONES = "no_thermal_zones"

DEFAULT_ZONES = ("*cpu*", "*soc*", "x86_pkg_temp", "big", "mid", "little")

THERMAL_FIELDS: tuple[Field, ...] = (
    Field("zones", "str_list", default=DEFAULT_ZONES,
          doc="thermal zone types to watch (fnmatch patterns, case-insensitive), e.g. cpu-thermal, x86_pkg_temp"),
    Field("cooldown_c", "float", default=45.0, doc="cooldown gate: wait until every watched zone is at or below this"),
    Field("cooldown_delta_c", "float", min_value=0,
          doc="cooldown gate: or until each zone is within this many °C of its idle temperature"),
    Field("max_wait_s", "float", default=120.0, min_value=0,
          doc="cooldown gate: stop waiting after this (the measurement is flagged hot_before_run)"),
    Field("poll_s", "float", default=2.0, min_exclusive=0, doc="cooldown gate: seconds between readings"),
    Field("max_thermal_status", "int", default=0, min_value=0,
          doc="Android: a thermal status above this flags the run throttled (0 NONE, 1 LIGHT, 2 MODERATE, ...)"),
    Field("freq_tolerance", "float", default=0.05, min_value=0,
          doc="a CPU frequency under (1 - this) x the maximum counts as below the maximum"),
    Field("throttle_fraction", "float", default=0.1, min_value=0,
          doc="a busy CPU policy below its maximum in more than this fraction of samples flags the run throttled"),
)


@dataclass(frozen=True)
class ThermalConfig:
    zones: tuple[str, ...] = DEFAULT_ZONES
    cooldown_c: float = 45.0
    cooldown_delta_c: float | None = None
    max_wait_s: float = 120.0
    poll_s: float = 2.0
    max_thermal_status: int = 0
    freq_tolerance: float = 0.05
    throttle_fraction: float = 0.1


def load_thermal_table(doc: TomlDocument, key_path: KeyPath, table: object) -> ThermalConfig:
    """Validate the ``[thermal]`` table found at ``key_path`` in ``doc`` (errors name file, line and key)."""
    if not isinstance(table, dict):
        raise doc.error(f"expected a table, got {type(table).__name__}", key_path, hint="write it as a [thermal] table")
    values: dict[str, Any] = dict(validate_table(doc, key_path, table, THERMAL_FIELDS))
    if not values["zones"]:
        raise doc.error("is empty: no zone would be watched", (*key_path, "zones"), hint='e.g. zones = ["*cpu*"]')
    if values["freq_tolerance"] >= 1 or values["throttle_fraction"] >= 1:
        key = "freq_tolerance" if values["freq_tolerance"] >= 1 else "throttle_fraction"
        raise doc.error(f"must be < 1, got {values[key]}", (*key_path, key))
    return ThermalConfig(
        zones=tuple(values["zones"]), cooldown_c=values["cooldown_c"], cooldown_delta_c=values["cooldown_delta_c"],
        max_wait_s=values["max_wait_s"], poll_s=values["poll_s"], max_thermal_status=values["max_thermal_status"],
        freq_tolerance=values["freq_tolerance"], throttle_fraction=values["throttle_fraction"],
    )


def default_thermal_config() -> ThermalConfig:
    """The configuration of a device file without a ``[thermal]`` table."""
    return load_thermal_table(TomlDocument.from_string("", COMMAND_LINE), (), {})


# ---------------------------------------------------------------------------------------------------------------
# Zones


@dataclass(frozen=True)
class TripPoint:
    index: int
    type: str | None
    temp_c: float | None


@dataclass(frozen=True)
class Zone:
    """One thermal zone: ``zone`` is its directory name (thermal_zone3), ``path`` the directory."""

    zone: str
    type: str
    temp_c: float | None
    trips: tuple[TripPoint, ...] = ()
    path: str = ""

    @property
    def key(self) -> str:
        """How results name the zone: ``thermal_zone3:cpu-0-0-usr`` (types repeat on some devices)."""
        return f"{self.zone}:{self.type}"

    @property
    def number(self) -> int:
        match = re.search(r"(\d+)$", self.zone)
        return int(match.group(1)) if match else -1


def temp_c_from_sysfs(raw: str | None) -> float | None:
    """°C from a sysfs temperature (m°C, or d°C / °C on some vendor kernels; see the module doc). None when empty,
    not a number, or implausible."""
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    magnitude = abs(value)
    celsius = value / 1000.0 if magnitude >= 1000 else value / 10.0 if magnitude >= 200 else value
    return celsius if -40.0 <= celsius <= 200.0 else None


def thermal_listing_script(root: str = THERMAL_ROOT) -> str:
    """One sh command that prints every zone's type, temp and trip points (parse with parse_thermal_listing)."""
    root = root.rstrip("/")
    zone = f"{root}/thermal_zone*"
    return read_files_script([f"{zone}/type", f"{zone}/temp", f"{zone}/trip_point_*_temp",
                              f"{zone}/trip_point_*_type"])


def parse_thermal_listing(text: str) -> list[Zone]:
    """Zones from the output of :func:`thermal_listing_script`, in zone number order."""
    directories: dict[str, dict[str, str | None]] = {}
    for path, listed in parse_file_listing(text).items():
        directories.setdefault(posixpath.dirname(path), {})[posixpath.basename(path)] = listed.value
    zones = []
    for directory, entries in directories.items():
        trips = []
        for name in entries:
            match = re.fullmatch(r"trip_point_(\d+)_temp", name)
            if match:
                index = int(match.group(1))
                trips.append(TripPoint(index, entries.get(f"trip_point_{index}_type"), temp_c_from_sysfs(entries[name])))
        zones.append(Zone(zone=posixpath.basename(directory), type=entries.get("type") or "",
                          temp_c=temp_c_from_sysfs(entries.get("temp")),
                          trips=tuple(sorted(trips, key=lambda trip: trip.index)), path=directory))
    return sorted(zones, key=lambda zone: (zone.number, zone.zone))


def select_zones(zones: Sequence[Zone], patterns: Sequence[str]) -> list[Zone]:
    """The zones whose type matches one of ``patterns`` (fnmatch, case-insensitive)."""
    return [zone for zone in zones
            if any(fnmatch.fnmatchcase(zone.type.lower(), pattern.lower()) for pattern in patterns)]


def zone_channels(zones: Sequence[Zone]) -> tuple[Channel, ...]:
    """Sampler channels for the zones' ``temp`` files (named ``thermal.<zone>``), to see temperatures during a run."""
    return tuple(Channel(f"thermal.{zone.zone}", f"{zone.path}/temp") for zone in zones if zone.path)


def make_zone_reader(run_shell: Callable[[str], str], root: str = THERMAL_ROOT) -> Callable[[], list[Zone]]:
    """A zone reader for :func:`wait_for_cooldown`: ``run_shell(script)`` runs sh text on the device and returns its
    stdout, e.g. ``lambda s: transport.run(["sh", "-c", s], timeout_s=10).check().stdout``."""
    script = thermal_listing_script(root)
    return lambda: parse_thermal_listing(run_shell(script))


# ---------------------------------------------------------------------------------------------------------------
# Cooldown gate


@dataclass(frozen=True)
class CooldownResult:
    """What the gate did: ``waited_s``, temperatures (°C by zone key) at the first reading (``before_c``) and at the
    last (``after_c``), ``timed_out`` when zones were still hot at ``max_wait_s`` (``hot`` names them)."""

    waited_s: float
    before_c: dict[str, float | None]
    after_c: dict[str, float | None]
    timed_out: bool
    polls: int
    hot: tuple[str, ...] = ()

    @property
    def flags(self) -> list[str]:
        if not self.before_c:
            return [FLAG_NO_ZONES]
        return [FLAG_HOT_BEFORE_RUN] if self.timed_out else []

    def to_dict(self) -> dict[str, Any]:
        return {"waited_s": self.waited_s, "before_c": self.before_c, "after_c": self.after_c,
                "timed_out": self.timed_out, "polls": self.polls, "hot": list(self.hot), "flags": self.flags}


def is_cool(zone: Zone, config: ThermalConfig, idle_temps_c: Mapping[str, float] | None = None) -> bool:
    """At or below ``cooldown_c``, or within ``cooldown_delta_c`` of the zone's idle temperature when both are
    known. A zone without a reading does not hold the gate."""
    if zone.temp_c is None or zone.temp_c <= config.cooldown_c:
        return True
    idle_c = (idle_temps_c or {}).get(zone.key)
    return config.cooldown_delta_c is not None and idle_c is not None and zone.temp_c <= idle_c + config.cooldown_delta_c


def wait_for_cooldown(read_zones: Callable[[], Sequence[Zone]], config: ThermalConfig, *,
                      idle_temps_c: Mapping[str, float] | None = None,
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> CooldownResult:
    """Poll ``read_zones`` every ``poll_s`` until every watched zone is cool (:func:`is_cool`) or ``max_wait_s``
    passed. Errors of the reader (a transport failure) propagate."""
    started = clock()
    before: dict[str, float | None] = {}
    polls = 0
    while True:
        zones = select_zones(read_zones(), config.zones)
        polls += 1
        temps = {zone.key: zone.temp_c for zone in zones}
        if polls == 1:
            before = temps
        hot = tuple(zone.key for zone in zones if not is_cool(zone, config, idle_temps_c))
        waited_s = clock() - started
        if not hot:
            return CooldownResult(waited_s, before, temps, False, polls)
        if waited_s >= config.max_wait_s:
            return CooldownResult(waited_s, before, temps, True, polls, hot)
        sleep(min(config.poll_s, config.max_wait_s - waited_s))


# ---------------------------------------------------------------------------------------------------------------
# Throttling: trip points


def trip_violations(zones: Sequence[Zone], when: str = "") -> list[str]:
    """Reasons, one per zone at or over a passive/hot/critical trip point."""
    reasons = []
    for zone in zones:
        if zone.temp_c is None:
            continue
        crossed = [trip for trip in zone.trips if trip.type in THROTTLING_TRIP_TYPES and trip.temp_c is not None
                   and zone.temp_c >= trip.temp_c]
        if crossed:
            trip = max(crossed, key=lambda t: t.temp_c or 0.0)
            reasons.append(f"{zone.key} at {zone.temp_c:g} °C{' ' + when if when else ''}, over its {trip.type} trip "
                           f"point {trip.temp_c:g} °C")
    return reasons


def run_trip_violations(run: SamplerRun, zones: Sequence[Zone], window: tuple[float, float] | None = None) -> list[str]:
    """Trip points crossed by the temperatures the sampler read (``zone_channels``) during ``window``."""
    start_s, end_s = window or run.window or (-math.inf, math.inf)
    reasons = []
    for zone in zones:
        name = f"thermal.{zone.zone}"
        if name not in run.channels:
            continue
        temps = [temp for t_s, raw in run.column(name) if start_s <= t_s <= end_s
                 if (temp := temp_c_from_sysfs(raw)) is not None]
        if temps:
            peak = Zone(zone.zone, zone.type, max(temps), zone.trips, zone.path)
            reasons += trip_violations([peak], "during the run (peak)")
    return reasons


# ---------------------------------------------------------------------------------------------------------------
# Throttling: CPU frequencies


@dataclass(frozen=True)
class CpuPolicy:
    """A cpufreq policy as read before the run (frequencies in kHz, as sysfs gives them)."""

    name: str
    path: str
    cpus: tuple[int, ...] = ()
    cpuinfo_max_khz: int | None = None
    scaling_max_khz: int | None = None

    @property
    def max_khz(self) -> int | None:
        """The ceiling the run should reach: scaling_max_freq (a user's cap counts), else cpuinfo_max_freq."""
        return self.scaling_max_khz or self.cpuinfo_max_khz


def cpufreq_listing_script(root: str = CPUFREQ_ROOT) -> str:
    root = root.rstrip("/")
    return read_files_script([f"{root}/policy*/related_cpus", f"{root}/policy*/cpuinfo_max_freq",
                              f"{root}/policy*/scaling_max_freq"])


def parse_cpufreq_listing(text: str) -> list[CpuPolicy]:
    directories: dict[str, dict[str, str | None]] = {}
    for path, listed in parse_file_listing(text).items():
        directories.setdefault(posixpath.dirname(path), {})[posixpath.basename(path)] = listed.value
    policies = []
    for directory, entries in directories.items():
        policies.append(CpuPolicy(
            name=posixpath.basename(directory), path=directory, cpus=_cpu_list(entries.get("related_cpus")),
            cpuinfo_max_khz=_int_or_none(entries.get("cpuinfo_max_freq")),
            scaling_max_khz=_int_or_none(entries.get("scaling_max_freq"))))
    return sorted(policies, key=lambda p: (int(re.sub(r"\D", "", p.name) or -1), p.name))


def cpufreq_channels(policies: Sequence[CpuPolicy]) -> tuple[Channel, ...]:
    """Sampler channels for each policy's scaling_cur_freq (``cpufreq.<policy>.cur``) and scaling_max_freq
    (``cpufreq.<policy>.max``)."""
    channels: list[Channel] = []
    for policy in policies:
        channels += [Channel(f"cpufreq.{policy.name}.cur", f"{policy.path}/scaling_cur_freq"),
                     Channel(f"cpufreq.{policy.name}.max", f"{policy.path}/scaling_max_freq")]
    return tuple(channels)


def frequency_throttling(run: SamplerRun, policies: Sequence[CpuPolicy], window: tuple[float, float] | None = None,
                         *, tolerance: float = 0.05, min_fraction: float = 0.1,
                         busy_policies: Sequence[str] | None = None) -> list[str]:
    """Reasons to call the run throttled from its cpufreq samples (see :func:`cpufreq_channels`):

    * a policy's scaling_max_freq went below its value before the run (thermal frameworks cap it there);
    * a busy policy's scaling_cur_freq was under (1 - ``tolerance``) x its maximum in more than ``min_fraction``
      of the window's samples. Busy policies are ``busy_policies`` (the ones the benchmark is pinned to) or, when
      not given, those at their maximum in at least half of the samples: an idle cluster runs low by design, and
      a cluster throttled for the whole run is only caught by the cap or the trip points then.
    """
    start_s, end_s = window or run.window or (-math.inf, math.inf)
    reasons = []
    for policy in policies:
        cur = _khz_samples(run, f"cpufreq.{policy.name}.cur", start_s, end_s)
        caps = _khz_samples(run, f"cpufreq.{policy.name}.max", start_s, end_s)
        if caps and policy.scaling_max_khz and min(caps) < policy.scaling_max_khz * (1 - tolerance):
            reasons.append(f"{policy.name}: scaling_max_freq lowered to {min(caps)} kHz during the run "
                           f"(was {policy.scaling_max_khz} kHz)")
            continue
        ceiling = policy.max_khz
        if not cur or ceiling is None:
            continue
        threshold = ceiling * (1 - tolerance)
        below = [khz for khz in cur if khz < threshold]
        busy = policy.name in busy_policies if busy_policies is not None else (len(cur) - len(below)) * 2 >= len(cur)
        if busy and len(below) > min_fraction * len(cur):
            reasons.append(f"{policy.name}: scaling_cur_freq under {ceiling} kHz in {len(below)} of {len(cur)} "
                           f"samples (lowest {min(below)} kHz)")
    return reasons


def _khz_samples(run: SamplerRun, channel: str, start_s: float, end_s: float) -> list[int]:
    if channel not in run.channels:
        return []
    return [value for t_s, raw in run.column(channel) if start_s <= t_s <= end_s
            if (value := _int_or_none(raw)) is not None]


# ---------------------------------------------------------------------------------------------------------------
# Android: dumpsys thermalservice

THERMAL_STATUS_NAMES = ("NONE", "LIGHT", "MODERATE", "SEVERE", "CRITICAL", "EMERGENCY", "SHUTDOWN")
"""android.os.PowerManager THERMAL_STATUS_* (and the HAL's ThrottlingSeverity), by value."""

TEMPERATURE_TYPES = {-1: "UNKNOWN", 0: "CPU", 1: "GPU", 2: "BATTERY", 3: "SKIN", 4: "USB_PORT", 5: "POWER_AMPLIFIER",
                     6: "BCL_VOLTAGE", 7: "BCL_CURRENT", 8: "BCL_PERCENTAGE", 9: "NPU", 10: "TPU", 11: "DISPLAY",
                     12: "MODEM", 13: "SOC"}
"""android.os.Temperature TYPE_* by value. BCL types are battery current/voltage limits, not temperatures."""


@dataclass(frozen=True)
class HalTemperature:
    name: str
    type: int
    value: float
    status: int

    @property
    def type_name(self) -> str:
        return TEMPERATURE_TYPES.get(self.type, f"TYPE_{self.type}")

    @property
    def is_temperature(self) -> bool:
        return self.type_name not in ("BCL_VOLTAGE", "BCL_CURRENT", "BCL_PERCENTAGE")


@dataclass(frozen=True)
class ThermalServiceStatus:
    """``status``: the framework's thermal status (None when the dump has none); ``temperatures``: the HAL's
    current temperatures (the cached ones when the dump has no current section: ``source`` says which)."""

    status: int | None
    hal_ready: bool | None
    temperatures: tuple[HalTemperature, ...]
    source: str

    @property
    def status_name(self) -> str | None:
        if self.status is None:
            return None
        return THERMAL_STATUS_NAMES[self.status] if 0 <= self.status < len(THERMAL_STATUS_NAMES) else str(self.status)

    @property
    def max_sensor_status(self) -> int:
        return max((t.status for t in self.temperatures), default=0)

    def throttling(self, max_status: int = 0) -> list[str]:
        """Reasons when the framework status or a sensor's severity is above ``max_status``."""
        reasons = []
        if self.status is not None and self.status > max_status:
            reasons.append(f"Android thermal status {self.status} ({self.status_name})")
        for temperature in self.temperatures:
            if temperature.status > max_status:
                reasons.append(f"thermal HAL sensor {temperature.name} ({temperature.type_name}) at "
                               f"{temperature.value:g} has severity {temperature.status}")
        return reasons


_STATUS_LINE = re.compile(r"^\s*(?:current\s+)?thermal\s+status:\s*(-?\d+)\s*$", re.IGNORECASE | re.MULTILINE)
_HAL_READY = re.compile(r"^\s*HAL Ready:\s*(true|false)\s*$", re.MULTILINE)
_TEMPERATURE = re.compile(r"Temperature\{([^}]*)\}")
_FIELD = re.compile(r"(\w+)=([^,}]*)")


def parse_thermalservice(text: str) -> ThermalServiceStatus:
    """Parse ``dumpsys thermalservice`` (Android 10+): the ``Thermal Status: N`` line and the
    ``Temperature{mValue=..., mType=..., mName=..., mStatus=...}`` lines of ``Current temperatures from HAL:``."""
    text = text.replace("\r\n", "\n")
    status_match = _STATUS_LINE.search(text)
    ready_match = _HAL_READY.search(text)
    current = _section(text, "Current temperatures from HAL:")
    cached = _section(text, "Cached temperatures:")
    source, lines = ("hal", current) if current else ("cached", cached) if cached else ("none", [])
    temperatures = []
    for line in lines:
        match = _TEMPERATURE.search(line)
        if not match:
            continue
        fields = {key: value.strip() for key, value in _FIELD.findall(match.group(1))}
        try:
            temperatures.append(HalTemperature(name=fields.get("mName", ""), type=int(fields.get("mType", "-1")),
                                               value=float(fields["mValue"]), status=int(fields.get("mStatus", "0"))))
        except (KeyError, ValueError):
            continue
    return ThermalServiceStatus(
        status=int(status_match.group(1)) if status_match else None,
        hal_ready=ready_match.group(1) == "true" if ready_match else None,
        temperatures=tuple(temperatures), source=source)


def _section(text: str, header: str) -> list[str]:
    """The indented ``Temperature{...}`` lines right after ``header``."""
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if line.strip() == header:
            body = []
            for following in lines[number + 1:]:
                if not following.strip().startswith("Temperature{"):
                    break
                body.append(following)
            return body
    return []


# ---------------------------------------------------------------------------------------------------------------
# One verdict


@dataclass(frozen=True)
class ThrottleAssessment:
    reasons: tuple[str, ...]

    @property
    def throttled(self) -> bool:
        return bool(self.reasons)

    @property
    def flags(self) -> list[str]:
        return [FLAG_THROTTLED] if self.reasons else []


def assess_throttling(config: ThermalConfig, *, zones_before: Sequence[Zone] = (), zones_after: Sequence[Zone] = (),
                      run: SamplerRun | None = None, run_zones: Sequence[Zone] = (),
                      policies: Sequence[CpuPolicy] = (), busy_policies: Sequence[str] | None = None,
                      window: tuple[float, float] | None = None,
                      thermalservice: Sequence[ThermalServiceStatus] = ()) -> ThrottleAssessment:
    """Combine every source of evidence the orchestrator has into one verdict: watched zones over a throttling
    trip point before or after the run (``zones_*``: full listings; the config's patterns select), during the run
    (``run_zones``: zones sampled through ``zone_channels``), cpufreq samples, and ``dumpsys thermalservice``
    readings (before/after on Android)."""
    reasons = trip_violations(select_zones(zones_before, config.zones), "before the run")
    if run is not None:
        reasons += run_trip_violations(run, select_zones(run_zones, config.zones), window)
        reasons += frequency_throttling(run, policies, window, tolerance=config.freq_tolerance,
                                        min_fraction=config.throttle_fraction, busy_policies=busy_policies)
    reasons += trip_violations(select_zones(zones_after, config.zones), "after the run")
    for reading in thermalservice:
        reasons += reading.throttling(config.max_thermal_status)
    return ThrottleAssessment(tuple(dict.fromkeys(reasons)))


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _cpu_list(text: str | None) -> tuple[int, ...]:
    """``0-3 6`` or ``0,1`` -> (0, 1, 2, 3, 6)."""
    cpus: list[int] = []
    for part in (text or "").replace(",", " ").split():
        low, _, high = part.partition("-")
        try:
            cpus += range(int(low), int(high or low) + 1)
        except ValueError:
            continue
    return tuple(cpus)
