"""Power sources, the ``[power]`` device table, power over a timed window, trust flags and battery calibration.

A device file chooses one source in a ``[power]`` table (every key is in ``POWER_FIELDS``)::

    [power]
    source = "android-battery"     # android-battery | hwmon | rapl | command
    rate_hz = 10                   # sampler ticks per second on the device
    idle_s = 5                     # idle baseline sampled before each measurement
    calibration = "pixel7.power.toml"   # state file written by `farmbench calibrate-power`

How a measurement uses this module (the orchestrator wires it; nothing here talks to a device)::

    script = listing_script(config)                     # hwmon and rapl only: one sh command, run once per device
    plan = plan_power(config, listing_stdout)           # which files to sample, how to turn them into milliwatts
    spec = plan.sampler_spec(extra_channels)            # + thermal/cpufreq channels; see telemetry.sampler
    run = parse_sampler_output(stdout, spec, tag)       # after transport.run(wrap_with_sampler(...).argv)
    summary = summarize_power(plan, run, inferences)    # average power, energy per inference, idle, flags

Sources
-------
``android-battery``
    ``current_now`` and ``voltage_now`` under ``/sys/class/power_supply/<node>``. The kernel ABI says µA and µV,
    negative while discharging; vendors differ (Samsung S21/A52s and Huawei report mA, Mi A1 is positive while
    discharging), so ``current_unit``, ``voltage_unit`` and ``discharge_sign`` are configuration, inferred by
    :func:`calibrate_battery` (``farmbench calibrate-power``) and kept in the state file ``calibration`` points to.
    Power = V x I in the discharge direction. ``status`` and the ``online`` file of each of ``supplies`` are sampled
    too: a phone that is charging or on USB power is flagged ``charging`` (the battery current then does not measure
    what the SoC draws), which means phones measured for power want ADB over Wi-Fi, not USB.
``hwmon``
    INA219/INA226 (``ina2xx``) and INA3221 chips: ``inN_input`` bus mV, ``currN_input`` mA, ``powerN_input`` µW,
    labels from ``inN_label``/``currN_label``; also Jetson's older ``ina3221x`` IIO layout (``rail_name_N``,
    ``in_voltageN_input`` mV, ``in_currentN_input`` mA, ``in_powerN_input`` mW). Chips are chosen by their ``name``
    (``hwmon``, an fnmatch pattern), rails by label (``rails``). A rail's power is its power file when it has one,
    else V x I; rails are summed. ``preset = "jetson"``: the board's total input rail (VDD_IN, or POM_5V_IN on the
    Nano) when present, else the sum of all rails.
``rapl``
    ``/sys/class/powercap/intel-rapl:*/energy_uj`` counters of the zones whose ``name`` matches ``domains``
    (default ``package-*``: the packages, whose subzones are already inside them). Power is the counter difference
    over each tick's interval; a counter that went down wrapped at ``max_energy_range_uj`` (``rapl_wrapped``). Since
    Linux 5.10 ``energy_uj`` is readable by root only; :func:`plan_power` says so and what to do.
``command``
    A shell command run on the device once per tick: it prints watts (``command_output = "watts"``), milliwatts, or
    is Raspberry Pi 5's ``vcgencmd pmic_read_adc`` (``"vcgencmd-pmic"``: V x A summed over the rails that have both
    a ``_V`` and an ``_A`` line and match ``rails``; EXT5V has no current, and the PMIC rails do not include USB and
    5 V peripherals, so this is the board's SoC-side power, not what the wall supply delivers).

Window statistics (the integration rule)
----------------------------------------
A power series is a list of (t_s, power_mw). A reading holds from its timestamp until the next one (zero-order hold);
the first reading also holds before it and the last after it. Average power over [a, b] is the integral of that step
function over [a, b] divided by b - a; energy in the window is average power x (b - a) (mJ = mW x s); energy per
inference is MLPerf's average power x window / inferences; energy above idle per inference is (average power - idle
average power) x window / inferences, the idle average being the same integral over the idle baseline. For RAPL the
series is built from counter differences, one point per tick interval at the interval's start, so the same rule
integrates the counters exactly.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import math
import os
import posixpath
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farmbench.config import Field, KeyPath, TomlDocument, validate_table
from farmbench.errors import ConfigError, RunnerError
from farmbench.telemetry.sampler import Channel, SamplerRun, SamplerSpec, parse_file_listing, read_files_script

SOURCES = ("android-battery", "hwmon", "rapl", "command")
COMMAND_OUTPUTS = ("watts", "milliwatts", "vcgencmd-pmic")
PRESETS = ("jetson",)
JETSON_TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
CHARGING_STATUSES = ("Charging", "Full", "Not charging")
"""power_supply ``status`` values that mean a charger is connected ("Not charging": present but holding)."""

FLAG_CHARGING = "charging"
FLAG_FEW_SAMPLES = "few_power_samples"
FLAG_STATIC = "power_sensor_static"
FLAG_RAPL_WRAPPED = "rapl_wrapped"
FLAG_UNCALIBRATED = "power_uncalibrated"
FLAG_NO_POWER = "no_power_samples"

CALIBRATION_VERSION = 1

_COMMON_KEYS = ("source", "rate_hz", "idle_s", "min_window_s", "min_samples")
SOURCE_KEYS: dict[str, tuple[str, ...]] = {
    "android-battery": ("node", "current_file", "voltage_file", "current_unit", "voltage_unit", "discharge_sign",
                        "supplies", "calibration"),
    "hwmon": ("hwmon", "rails", "preset"),
    "rapl": ("domains",),
    "command": ("command", "command_output", "rails"),
}
"""Which keys each source reads, beyond the common ones; any other key set for a source is an error."""

POWER_FIELDS: tuple[Field, ...] = (
    Field("source", "str", required=True, choices=SOURCES,
          doc="android-battery (fuel gauge), hwmon (INA219/226/3221 rails), rapl (Intel/AMD energy counters), "
              "command (a command printing the power)"),
    Field("rate_hz", "float", default=10.0, min_exclusive=0, doc="sampler ticks per second on the device, <= 100"),
    Field("idle_s", "float", default=5.0, min_value=0, doc="idle baseline sampled before each measurement"),
    Field("min_window_s", "float", default=10.0, min_value=0,
          doc="timed runs last at least this long when power is measured (fuel gauges update about once a second)"),
    Field("min_samples", "int", default=10, min_value=1,
          doc="fewer power samples in the timed window flag the measurement few_power_samples"),
    # android-battery
    Field("node", "str", default="battery", doc="android-battery: the /sys/class/power_supply node of the fuel gauge"),
    Field("current_file", "str", default="current_now", doc="android-battery: current file in that node"),
    Field("voltage_file", "str", default="voltage_now", doc="android-battery: voltage file in that node"),
    Field("current_unit", "str", choices=("uA", "mA"),
          doc="android-battery: unit of the current file (default uA, the kernel's; calibrate-power infers it)"),
    Field("voltage_unit", "str", choices=("uV", "mV"), doc="android-battery: unit of the voltage file (default uV)"),
    Field("discharge_sign", "str", choices=("negative", "positive"),
          doc="android-battery: sign of the current while discharging (default negative, the kernel's)"),
    Field("supplies", "str_list", default=("usb", "ac", "wireless"),
          doc="android-battery: power_supply nodes whose `online` file says a charger or USB is connected"),
    Field("calibration", "path",
          doc="android-battery: state file written by `farmbench calibrate-power` (relative to the device file)"),
    # hwmon
    Field("hwmon", "str", default="ina*", doc="hwmon: chip name pattern (its `name` file: ina3221, ina226, ...)"),
    Field("rails", "str_list", default=(),
          doc="hwmon/command: rail labels to sum (fnmatch patterns, case-insensitive; default all)"),
    Field("preset", "str", choices=PRESETS, doc="hwmon: jetson = total rail VDD_IN if present, else the sum of rails"),
    # rapl
    Field("domains", "str_list", default=("package-*",),
          doc="rapl: powercap zone names to sum (fnmatch; package-*, psys, dram, core, uncore)"),
    # command
    Field("command", "str", doc="command: shell command run on the device once per sample, printing the power"),
    Field("command_output", "str", default="watts", choices=COMMAND_OUTPUTS,
          doc="command: what it prints: watts, milliwatts, or vcgencmd-pmic (Raspberry Pi 5 pmic_read_adc)"),
)

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.:+-]+")


class CalibrationError(RunnerError):
    """Calibration could not decide (charging, no significant difference, implausible magnitudes)."""


@dataclass(frozen=True)
class PowerConfig:
    """A validated ``[power]`` table. ``calibrated``: the battery's units and sign come from a calibration file or
    were written explicitly (current_unit and discharge_sign), not from the kernel's defaults."""

    source: str
    rate_hz: float = 10.0
    idle_s: float = 5.0
    min_window_s: float = 10.0
    min_samples: int = 10
    node: str = "battery"
    current_file: str = "current_now"
    voltage_file: str = "voltage_now"
    current_unit: str = "uA"
    voltage_unit: str = "uV"
    discharge_sign: str = "negative"
    supplies: tuple[str, ...] = ("usb", "ac", "wireless")
    calibration: str | None = None
    calibrated: bool = False
    hwmon: str = "ina*"
    rails: tuple[str, ...] = ()
    preset: str | None = None
    domains: tuple[str, ...] = ("package-*",)
    command: str | None = None
    command_output: str = "watts"


def load_power_table(doc: TomlDocument, key_path: KeyPath, table: object) -> PowerConfig:
    """Validate the ``[power]`` table found at ``key_path`` in ``doc``; errors name file, line and key (exit 2).

    When ``calibration`` names a state file that exists, its units and sign are used; a key set both there and in
    the table with a different value is an error. A missing state file is not an error (not calibrated yet)."""
    if not isinstance(table, dict):
        raise doc.error(f"expected a table, got {type(table).__name__}", key_path, hint="write it as a [power] table")
    values: dict[str, Any] = dict(validate_table(doc, key_path, table, POWER_FIELDS))
    source = str(values["source"])
    allowed = set(_COMMON_KEYS) | set(SOURCE_KEYS[source])
    for key in table:
        if key not in allowed:
            users = [name for name, keys in SOURCE_KEYS.items() if key in keys]
            raise doc.error(f"is not used by source {source!r}", (*key_path, key),
                            hint=f"{key} belongs to source {' / '.join(users)}; remove it or change source")
    if values["rate_hz"] > 100:
        raise doc.error(f"must be <= 100 (the device clock has 10 ms resolution), got {values['rate_hz']}",
                        (*key_path, "rate_hz"))
    for key in ("node", "current_file", "voltage_file"):
        if not _PLAIN_NAME.fullmatch(str(values[key])):
            raise doc.error(f"{values[key]!r} must be a plain file name (letters, digits, _.:+-)", (*key_path, key))
    for number, supply in enumerate(values["supplies"]):
        if not _PLAIN_NAME.fullmatch(supply):
            raise doc.error(f"{supply!r} must be a plain power_supply node name", (*key_path, "supplies", number))
    if source == "command" and not values["command"]:
        raise doc.error("source command needs a command", (*key_path, "source"),
                        hint='add command = "vcgencmd pmic_read_adc" (with command_output = "vcgencmd-pmic") or your '
                             "meter's command printing watts")
    explicit = {key: values[key] for key in ("current_unit", "voltage_unit", "discharge_sign") if key in table}
    calibrated = "current_unit" in explicit and "discharge_sign" in explicit
    merged = dict(explicit)
    calibration = values["calibration"]
    if calibration is not None and Path(str(calibration)).is_file():
        state = load_calibration_state(calibration)
        for key in ("current_unit", "voltage_unit", "discharge_sign"):
            if key in explicit and explicit[key] != state[key]:
                raise doc.error(f"is {explicit[key]!r} here but {state[key]!r} in the calibration file {calibration}",
                                (*key_path, key),
                                hint=f"remove {key} from [power] to use the calibration, or re-run calibrate-power")
            merged[key] = state[key]
        calibrated = True
    return PowerConfig(
        source=source, rate_hz=float(values["rate_hz"]), idle_s=float(values["idle_s"]),
        min_window_s=float(values["min_window_s"]), min_samples=int(values["min_samples"]),
        node=str(values["node"]), current_file=str(values["current_file"]), voltage_file=str(values["voltage_file"]),
        current_unit=str(merged.get("current_unit", "uA")), voltage_unit=str(merged.get("voltage_unit", "uV")),
        discharge_sign=str(merged.get("discharge_sign", "negative")), supplies=tuple(values["supplies"]),
        calibration=str(calibration) if calibration is not None else None, calibrated=calibrated,
        hwmon=str(values["hwmon"]), rails=tuple(values["rails"]), preset=values["preset"],
        domains=tuple(values["domains"]), command=values["command"], command_output=str(values["command_output"]),
    )


def power_config_from_toml(text: str, path: str = "<string>") -> PowerConfig:
    """A PowerConfig from the text of a device file's ``[power]`` table (``[power]`` header included)."""
    doc = TomlDocument.from_string(text, path)
    return load_power_table(doc, ("power",), doc.data.get("power", {}))


# ---------------------------------------------------------------------------------------------------------------
# Plans: what to sample for a source, and how to turn samples into milliwatts


@dataclass(frozen=True)
class Rail:
    """One hwmon rail: files for bus voltage (mV), current (mA) and power (``power_to_mw`` x its value = mW)."""

    label: str
    voltage_path: str | None = None
    current_path: str | None = None
    power_path: str | None = None
    power_to_mw: float = 0.001


@dataclass(frozen=True)
class RaplDomain:
    zone: str
    name: str
    energy_path: str
    max_energy_range_uj: int | None


@dataclass(frozen=True)
class PowerPlan:
    """What the sampler reads for one device's power source (``channels``, ``command``) and what they mean."""

    config: PowerConfig
    channels: tuple[Channel, ...] = ()
    command: str | None = None
    rails: tuple[Rail, ...] = ()
    domains: tuple[RaplDomain, ...] = ()
    notes: tuple[str, ...] = ()

    def sampler_spec(self, extra_channels: Sequence[Channel] = ()) -> SamplerSpec:
        """The sampler spec for this plan plus ``extra_channels`` (thermal zones, cpufreq)."""
        return SamplerSpec(channels=(*self.channels, *extra_channels), rate_hz=self.config.rate_hz,
                           command=self.command)


def listing_script(config: PowerConfig, root: str = "/sys") -> str | None:
    """The sh command whose output :func:`plan_power` needs (hwmon and rapl), or None (battery and command need no
    listing). ``root`` replaces ``/sys`` in tests."""
    root = root.rstrip("/")
    if config.source == "hwmon":
        hwmon = f"{root}/class/hwmon/hwmon*"
        legacy = f"{root}/bus/i2c/drivers/ina3221x/*/iio:device*"
        return read_files_script([
            f"{hwmon}/name", f"{hwmon}/in*_input", f"{hwmon}/in*_label", f"{hwmon}/curr*_input",
            f"{hwmon}/curr*_label", f"{hwmon}/power*_input",
            f"{legacy}/rail_name_*", f"{legacy}/in_power*_input", f"{legacy}/in_current*_input",
            f"{legacy}/in_voltage*_input",
        ])
    if config.source == "rapl":
        zones = f"{root}/class/powercap/intel-rapl:*"
        return read_files_script([f"{zones}/name", f"{zones}/energy_uj", f"{zones}/max_energy_range_uj"])
    return None


def plan_power(config: PowerConfig, listing: str | None = None, root: str = "/sys") -> PowerPlan:
    """The sampling plan for ``config``; ``listing`` is the stdout of :func:`listing_script` (hwmon, rapl).
    Raises RunnerError when the device has nothing matching the configuration, naming what it has."""
    root = root.rstrip("/")
    if config.source == "android-battery":
        node = f"{root}/class/power_supply/{config.node}"
        channels = [Channel("power.current", f"{node}/{config.current_file}"),
                    Channel("power.voltage", f"{node}/{config.voltage_file}"),
                    Channel("power.status", f"{node}/status")]
        channels += [Channel(f"power.online.{supply}", f"{root}/class/power_supply/{supply}/online")
                     for supply in config.supplies]
        return PowerPlan(config, tuple(channels))
    if config.source == "command":
        return PowerPlan(config, (), command=config.command)
    if listing is None:
        raise ValueError(f"source {config.source} needs the output of listing_script()")
    files = parse_file_listing(listing)
    if config.source == "hwmon":
        return _plan_hwmon(config, files)
    return _plan_rapl(config, files)


def _plan_hwmon(config: PowerConfig, files: Mapping[str, Any]) -> PowerPlan:
    chips: dict[str, dict[str, str | None]] = {}
    for path, listed in files.items():
        chips.setdefault(posixpath.dirname(path), {})[posixpath.basename(path)] = listed.value
    found: list[str] = []
    rails: list[Rail] = []
    for directory in sorted(chips):
        entries = chips[directory]
        legacy = any(name.startswith("rail_name_") for name in entries)
        name = entries.get("name") or ("ina3221x" if legacy else "") or ""
        found.append(f"{directory} ({name or 'no name'})")
        if not fnmatch.fnmatchcase(name.lower(), config.hwmon.lower()):
            continue
        rails += _legacy_rails(directory, entries) if legacy else _hwmon_rails(directory, name, entries)
    labels = [rail.label for rail in rails]
    if config.rails:
        rails = [rail for rail in rails if _matches(rail.label, config.rails)]
    notes: list[str] = []
    # A disabled INA3221 channel (inN_enable = 0) fails every read; summed in, it would void every tick.
    dead = [rail for rail in rails if not _rail_has_reading(rail, files)]
    if dead:
        notes.append("skipped rails without a reading: " + ", ".join(rail.label for rail in dead))
        rails = [rail for rail in rails if rail not in dead]
    if config.preset == "jetson":
        totals = [rail for rail in rails if rail.label.upper() in JETSON_TOTAL_RAILS]
        if totals:
            rails = totals[:1]
            notes.append(f"jetson preset: total rail {totals[0].label}")
        else:
            notes.append("jetson preset: no VDD_IN/POM_5V_IN rail, summing " + ", ".join(r.label for r in rails))
    if not rails:
        raise RunnerError(
            f"hwmon: no rail matches chip {config.hwmon!r} and rails {list(config.rails) or 'all'}; "
            f"chips: {', '.join(found) or 'none'}; rails: {', '.join(labels) or 'none'}",
            hint="set hwmon (chip name pattern) and rails (labels) in [power] to ones listed here")
    channels: list[Channel] = []
    for index, rail in enumerate(rails):
        for suffix, rail_file in (("mv", rail.voltage_path), ("ma", rail.current_path), ("pw", rail.power_path)):
            if rail_file is not None:
                channels.append(Channel(f"power.rail{index}.{suffix}", rail_file))
    return PowerPlan(config, tuple(channels), rails=tuple(rails), notes=tuple(notes))


def _rail_has_reading(rail: Rail, files: Mapping[str, Any]) -> bool:
    def readable(path: str | None) -> bool:
        return path is not None and path in files and _float_or_none(files[path].value) is not None
    return readable(rail.power_path) or (readable(rail.voltage_path) and readable(rail.current_path))


def _hwmon_rails(directory: str, name: str, entries: Mapping[str, str | None]) -> list[Rail]:
    indices = sorted({int(m.group(2)) for key in entries
                      if (m := re.fullmatch(r"(curr|power)(\d+)_input", key))})
    rails = []
    for index in indices:
        # INA3221's curr4 is the sum of the three channels and in4..in6 are shunt voltages: not rails.
        if name.startswith("ina3221") and index > 3:
            continue
        label = entries.get(f"curr{index}_label") or entries.get(f"in{index}_label") \
            or f"{name or 'hwmon'}:{posixpath.basename(directory)}:{index}"
        if label.upper() == "NC":  # device trees label unconnected channels NC
            continue
        rails.append(Rail(
            label=label,
            voltage_path=_present(directory, f"in{index}_input", entries),
            current_path=_present(directory, f"curr{index}_input", entries),
            power_path=_present(directory, f"power{index}_input", entries),
            power_to_mw=0.001,
        ))
    return rails


def _legacy_rails(directory: str, entries: Mapping[str, str | None]) -> list[Rail]:
    rails = []
    for key in sorted(entries):
        match = re.fullmatch(r"rail_name_(\d+)", key)
        if not match:
            continue
        index = match.group(1)
        label = entries[key] or f"ina3221x:{index}"
        if label.upper() == "NC":
            continue
        rails.append(Rail(
            label=label,
            voltage_path=_present(directory, f"in_voltage{index}_input", entries),
            current_path=_present(directory, f"in_current{index}_input", entries),
            power_path=_present(directory, f"in_power{index}_input", entries),
            power_to_mw=1.0,
        ))
    return rails


def _present(directory: str, name: str, entries: Mapping[str, object]) -> str | None:
    return f"{directory}/{name}" if name in entries else None


def _plan_rapl(config: PowerConfig, files: Mapping[str, Any]) -> PowerPlan:
    zones: dict[str, dict[str, Any]] = {}
    for path, listed in files.items():
        zones.setdefault(posixpath.dirname(path), {})[posixpath.basename(path)] = listed
    found = []
    domains = []
    for directory in sorted(zones):
        entries = zones[directory]
        name_entry = entries.get("name")
        name = name_entry.value if name_entry is not None and name_entry.value else posixpath.basename(directory)
        found.append(f"{posixpath.basename(directory)} ({name})")
        if not _matches(name, config.domains, case_sensitive=True):
            continue
        energy = entries.get("energy_uj")
        if energy is None:
            continue
        if not energy.readable or energy.value is None:
            raise RunnerError(
                f"rapl: {energy.path} is readable by root only (Linux 5.10 and later make energy_uj mode 0400 "
                "since the PLATYPUS power side channel, CVE-2020-8694)",
                hint="on the device run `sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj` (lasts until "
                     "reboot; a udev rule or systemd-tmpfiles line makes it stick), or connect as root")
        max_entry = entries.get("max_energy_range_uj")
        max_range = _int_or_none(max_entry.value) if max_entry is not None else None
        domains.append(RaplDomain(posixpath.basename(directory), name, energy.path, max_range))
    if not domains:
        raise RunnerError(f"rapl: no powercap zone named {list(config.domains)}; zones: {', '.join(found) or 'none'}",
                          hint="set domains in [power] to zone names listed here (e.g. package-0, psys)"
                          if found else "this kernel exposes no intel-rapl powercap zones (modprobe intel_rapl_msr)")
    channels = tuple(Channel(f"power.rapl{index}.uj", domain.energy_path) for index, domain in enumerate(domains))
    return PowerPlan(config, channels, domains=tuple(domains))


def _matches(name: str, patterns: Iterable[str], *, case_sensitive: bool = False) -> bool:
    if case_sensitive:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    return any(fnmatch.fnmatchcase(name.lower(), pattern.lower()) for pattern in patterns)


# ---------------------------------------------------------------------------------------------------------------
# Samples -> power series


@dataclass(frozen=True)
class PowerSeries:
    """Power readings in mW at device times in s; each holds until the next (see the module doc)."""

    times_s: tuple[float, ...]
    power_mw: tuple[float, ...]
    rapl_wrapped: bool = False


def power_series(plan: PowerPlan, run: SamplerRun) -> PowerSeries:
    """The run's samples as power in mW, per the plan's source. Samples missing a value are skipped."""
    source = plan.config.source
    if source == "android-battery":
        return _battery_series(plan.config, run)
    if source == "hwmon":
        return _hwmon_series(plan, run)
    if source == "rapl":
        return _rapl_series(plan, run)
    return _command_series(plan.config, run)


def _battery_series(config: PowerConfig, run: SamplerRun) -> PowerSeries:
    current_scale = 1.0 if config.current_unit == "mA" else 0.001  # -> mA
    voltage_scale = 1.0 if config.voltage_unit == "mV" else 0.001  # -> mV
    sign = -1.0 if config.discharge_sign == "negative" else 1.0
    times, power = [], []
    for (t_s, current), (_, voltage) in zip(run.column("power.current"), run.column("power.voltage")):
        current_raw, voltage_raw = _float_or_none(current), _float_or_none(voltage)
        if current_raw is None or voltage_raw is None:
            continue
        times.append(t_s)
        power.append(sign * current_raw * current_scale * voltage_raw * voltage_scale / 1000.0)
    return PowerSeries(tuple(times), tuple(power))


def _hwmon_series(plan: PowerPlan, run: SamplerRun) -> PowerSeries:
    index = {name: i for i, name in enumerate(run.channels)}
    times, power = [], []
    for sample in run.samples:
        rail_power = [_rail_power_mw(rail, number, sample.values, index) for number, rail in enumerate(plan.rails)]
        # A tick where one rail has no reading would make a sum of fewer rails: skip it rather than under-count.
        if all(value is not None for value in rail_power):
            times.append(sample.t_s)
            power.append(sum(value for value in rail_power if value is not None))
    return PowerSeries(tuple(times), tuple(power))


def _rail_power_mw(rail: Rail, number: int, values: Sequence[str | None], index: Mapping[str, int]) -> float | None:
    """One rail's power in one tick: its power file when readable, else bus voltage x current."""
    def reading(suffix: str) -> float | None:
        position = index.get(f"power.rail{number}.{suffix}")
        return None if position is None else _float_or_none(values[position])

    power = reading("pw")
    if power is not None:
        return power * rail.power_to_mw
    voltage_mv, current_ma = reading("mv"), reading("ma")
    if voltage_mv is None or current_ma is None:
        return None
    return voltage_mv * current_ma / 1000.0


def _rapl_series(plan: PowerPlan, run: SamplerRun) -> PowerSeries:
    index = [run.channels.index(f"power.rapl{i}.uj") for i in range(len(plan.domains))]
    ticks: list[tuple[float, list[int]]] = []
    for sample in run.samples:
        counters = [_int_or_none(sample.values[i]) for i in index]
        if all(counter is not None for counter in counters):
            ticks.append((sample.t_s, [c for c in counters if c is not None]))
    times, power = [], []
    wrapped = False
    base = 0
    for later in range(1, len(ticks)):
        t0, e0 = ticks[base]
        t1, e1 = ticks[later]
        if t1 <= t0:  # same 10 ms timestamp: measure from the earlier tick to a later one
            continue
        energy_uj = 0.0
        for domain, before, after in zip(plan.domains, e0, e1):
            delta = after - before
            if delta < 0:
                wrapped = True
                if domain.max_energy_range_uj is None:
                    raise RunnerError(f"rapl: {domain.energy_path} went down and max_energy_range_uj is unknown",
                                      hint="check that max_energy_range_uj is readable next to energy_uj")
                delta += domain.max_energy_range_uj
            energy_uj += delta
        times.append(t0)
        power.append(energy_uj / (t1 - t0) / 1000.0)  # µJ/s = µW -> mW
        base = later
    return PowerSeries(tuple(times), tuple(power), rapl_wrapped=wrapped)


def _command_series(config: PowerConfig, run: SamplerRun) -> PowerSeries:
    times, power = [], []
    for sample in run.samples:
        value = command_power_mw(sample.command_output or "", config.command_output, config.rails)
        if value is not None:
            times.append(sample.t_s)
            power.append(value)
    return PowerSeries(tuple(times), tuple(power))


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def command_power_mw(output: str, kind: str, rails: Sequence[str] = ()) -> float | None:
    """Power in mW from one output of the ``command`` source: the first number in it (``watts``/``milliwatts``), or
    the sum over the rails of ``vcgencmd pmic_read_adc``. None when the output has no reading."""
    if kind == "vcgencmd-pmic":
        rail_power = pmic_rail_power_mw(output)
        chosen = [mw for rail, mw in rail_power.items() if not rails or _matches(rail, rails)]
        return sum(chosen) if chosen else None
    match = _NUMBER.search(output)
    if not match:
        return None
    value = float(match.group())
    return value * 1000.0 if kind == "watts" else value


# "  VDD_CORE_A current(7)=2.12456000A" and "  VDD_CORE_V volt(15)=0.86000000V"; the sampler turns newlines into ';'.
_PMIC_LINE = re.compile(r"([A-Za-z0-9_]+)_([AV])\s+(?:current|volt)\(\d+\)=([-+0-9.eE]+|nan)[AV]?")


def parse_pmic_adc(text: str) -> dict[str, tuple[float | None, float | None]]:
    """``vcgencmd pmic_read_adc`` output -> rail name -> (volts, amps); a side is None when the rail lacks that line
    or prints ``nan``."""
    rails: dict[str, list[float | None]] = {}
    for name, kind, value in _PMIC_LINE.findall(text):
        number = float(value)
        slot = rails.setdefault(name, [None, None])
        slot[0 if kind == "V" else 1] = None if math.isnan(number) else number
    return {name: (volts, amps) for name, (volts, amps) in rails.items()}


def pmic_rail_power_mw(text: str) -> dict[str, float]:
    """Rail -> V x A in mW, for the rails that have both a voltage and a current line."""
    return {name: volts * amps * 1000.0 for name, (volts, amps) in parse_pmic_adc(text).items()
            if volts is not None and amps is not None}


# ---------------------------------------------------------------------------------------------------------------
# Window statistics


def integrate_held(times_s: Sequence[float], values: Sequence[float], start_s: float, end_s: float) -> float:
    """The integral over [start_s, end_s] of the zero-order-hold step function through (times_s, values): value i
    holds on [t_i, t_i+1), the first value also before t_0, the last after t_n-1. mW x s = mJ."""
    if len(times_s) != len(values):
        raise ValueError("times and values differ in length")
    if not times_s:
        raise ValueError("no samples to integrate")
    if end_s < start_s:
        raise ValueError(f"window ends ({end_s}) before it starts ({start_s})")
    total = 0.0
    count = len(times_s)
    for i in range(count):
        segment_start = -math.inf if i == 0 else times_s[i]
        segment_end = math.inf if i == count - 1 else times_s[i + 1]
        overlap = min(segment_end, end_s) - max(segment_start, start_s)
        if overlap > 0:
            total += values[i] * overlap
    return total


def average_power_mw(series: PowerSeries, start_s: float, end_s: float) -> float | None:
    """Time-weighted average power over [start_s, end_s] (None without samples or for an empty window)."""
    if not series.times_s or end_s <= start_s:
        return None
    return integrate_held(series.times_s, series.power_mw, start_s, end_s) / (end_s - start_s)


def energy_per_inference_mj(average_power_mw: float, window_s: float, inferences: int) -> float:
    """MLPerf's energy per inference: average power x window / inferences (mW x s = mJ)."""
    if inferences <= 0:
        raise ValueError(f"inferences must be > 0, got {inferences}")
    return average_power_mw * window_s / inferences


@dataclass(frozen=True)
class PowerStats:
    """Power over one timed window. Fields are None when they cannot be computed (no samples, no idle baseline)."""

    window_s: float
    inferences: int
    average_power_mw: float | None
    energy_mj: float | None
    energy_per_inference_mj: float | None
    idle_power_mw: float | None
    energy_above_idle_per_inference_mj: float | None
    samples_in_window: int
    idle_samples: int

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def window_stats(series: PowerSeries, window: tuple[float, float], inferences: int,
                 idle_window: tuple[float, float] | None = None) -> PowerStats:
    """Average power, energy and energy per inference over ``window``; idle average over ``idle_window``."""
    start_s, end_s = window
    window_s = end_s - start_s
    average = average_power_mw(series, start_s, end_s)
    idle = average_power_mw(series, *idle_window) if idle_window is not None else None
    per_inference = energy_per_inference_mj(average, window_s, inferences) if average is not None else None
    above = energy_per_inference_mj(average - idle, window_s, inferences) \
        if average is not None and idle is not None else None
    return PowerStats(
        window_s=window_s, inferences=inferences, average_power_mw=average,
        energy_mj=average * window_s if average is not None else None, energy_per_inference_mj=per_inference,
        idle_power_mw=idle, energy_above_idle_per_inference_mj=above,
        samples_in_window=_count_in(series.times_s, start_s, end_s),
        idle_samples=_count_in(series.times_s, *idle_window) if idle_window is not None else 0,
    )


def _count_in(times_s: Sequence[float], start_s: float, end_s: float) -> int:
    return sum(1 for t in times_s if start_s <= t <= end_s)


# ---------------------------------------------------------------------------------------------------------------
# Trust flags and the one-call summary


def charging_state(plan: PowerPlan, run: SamplerRun, window: tuple[float, float] | None = None) -> list[str]:
    """Why the battery current cannot be trusted in ``window`` (default: the whole run): each charging status and
    each online supply seen, e.g. ``["status Charging", "usb online"]``; empty when on battery (or not a battery)."""
    if plan.config.source != "android-battery":
        return []
    start_s, end_s = window if window is not None else (-math.inf, math.inf)
    reasons: list[str] = []
    for t_s, status in run.column("power.status"):
        if start_s <= t_s <= end_s and status in CHARGING_STATUSES and f"status {status}" not in reasons:
            reasons.append(f"status {status}")
    for supply in plan.config.supplies:
        for t_s, online in run.column(f"power.online.{supply}"):
            if start_s <= t_s <= end_s and online == "1":
                reasons.append(f"{supply} online")
                break
    return reasons


def power_flags(plan: PowerPlan, run: SamplerRun, series: PowerSeries, window: tuple[float, float]) -> list[str]:
    """Trust flags for the power numbers of one window (strings, see the FLAG_* constants)."""
    flags: list[str] = []
    start_s, end_s = window
    if charging_state(plan, run, (run.markers.get("idle", start_s), end_s)):
        flags.append(FLAG_CHARGING)
    in_window = _count_in(series.times_s, start_s, end_s)
    if not series.times_s:
        flags.append(FLAG_NO_POWER)
    if in_window < plan.config.min_samples:
        flags.append(FLAG_FEW_SAMPLES)
    if _sensor_static(plan, run, start_s, end_s):
        flags.append(FLAG_STATIC)
    if series.rapl_wrapped:
        flags.append(FLAG_RAPL_WRAPPED)
    if plan.config.source == "android-battery" and not plan.config.calibrated:
        flags.append(FLAG_UNCALIBRATED)
    return flags


def _sensor_static(plan: PowerPlan, run: SamplerRun, start_s: float, end_s: float) -> bool:
    """True when every primary reading (battery current, rail power/current, RAPL counter, command output) stays
    the same over the window's samples (at least two of them)."""
    source = plan.config.source
    if source == "command":
        columns = [[(s.t_s, s.command_output) for s in run.samples]]
    elif source == "android-battery":
        columns = [run.column("power.current")]
    elif source == "rapl":
        columns = [run.column(f"power.rapl{i}.uj") for i in range(len(plan.domains))]
    else:
        columns = []
        for number, rail in enumerate(plan.rails):
            suffix = "pw" if rail.power_path is not None else "ma"
            columns.append(run.column(f"power.rail{number}.{suffix}"))
    static = True
    for column in columns:
        seen = [value for t_s, value in column if start_s <= t_s <= end_s and value is not None]
        if len(seen) < 2:
            return False
        static = static and len(set(seen)) == 1
    return static


@dataclass(frozen=True)
class PowerSummary:
    """What a measurement stores about power: the window statistics and the trust flags."""

    stats: PowerStats | None
    flags: tuple[str, ...]
    source: str
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "flags": list(self.flags), "notes": list(self.notes),
                **(self.stats.to_dict() if self.stats is not None else {})}


def summarize_power(plan: PowerPlan, run: SamplerRun, inferences: int,
                    window: tuple[float, float] | None = None) -> PowerSummary:
    """Power statistics and flags of a sampled measurement. ``window`` defaults to the benchmark process's start and
    end markers; pass the timed window instead when the runner reports it in device time (CLOCK_BOOTTIME)."""
    window = window or run.window
    if window is None:
        return PowerSummary(None, (FLAG_NO_POWER,), plan.config.source, ("the run ended before its end marker",))
    series = power_series(plan, run)
    flags = power_flags(plan, run, series, window)
    stats = window_stats(series, window, inferences, run.idle_window) if series.times_s else None
    return PowerSummary(stats, tuple(flags), plan.config.source, plan.notes)


# ---------------------------------------------------------------------------------------------------------------
# Calibration of android-battery units and sign


@dataclass(frozen=True)
class BatteryReading:
    current_raw: float | None
    voltage_raw: float | None
    status: str | None = None
    online: bool = False


@dataclass(frozen=True)
class CalibrationResult:
    """The decision (units and discharge sign) and its evidence: medians of the raw readings at rest and busy."""

    current_unit: str
    voltage_unit: str
    discharge_sign: str
    rest_current_median_raw: float
    busy_current_median_raw: float
    voltage_median_raw: float
    rest_samples: int
    busy_samples: int
    noise_raw: float

    @property
    def _current_to_ma(self) -> float:
        return 1.0 if self.current_unit == "mA" else 0.001

    @property
    def rest_draw_ma(self) -> float:
        """Current drawn at rest, in mA, positive while discharging."""
        sign = -1.0 if self.discharge_sign == "negative" else 1.0
        return sign * self.rest_current_median_raw * self._current_to_ma

    @property
    def busy_draw_ma(self) -> float:
        sign = -1.0 if self.discharge_sign == "negative" else 1.0
        return sign * self.busy_current_median_raw * self._current_to_ma

    def describe(self) -> str:
        """What was decided and why, for the command to print."""
        return (f"current_now is in {self.current_unit}, voltage_now in {self.voltage_unit}, and the current is "
                f"{self.discharge_sign} while discharging: at rest the median reading was "
                f"{self.rest_current_median_raw:g} ({self.rest_draw_ma:.0f} mA drawn, {self.rest_samples} samples), "
                f"under load {self.busy_current_median_raw:g} ({self.busy_draw_ma:.0f} mA, {self.busy_samples} "
                f"samples); voltage median {self.voltage_median_raw:g}")

    def to_toml_lines(self) -> list[str]:
        """Lines for a ``[power]`` table (or the state file): the three keys, with the evidence as comments."""
        return [
            f"# calibrated: rest median {self.rest_current_median_raw:g}, busy median "
            + f"{self.busy_current_median_raw:g} (noise {self.noise_raw:g}), voltage median {self.voltage_median_raw:g}",
            f"# = {self.rest_draw_ma:.0f} mA at rest, {self.busy_draw_ma:.0f} mA busy",
            f'current_unit = "{self.current_unit}"',
            f'voltage_unit = "{self.voltage_unit}"',
            f'discharge_sign = "{self.discharge_sign}"',
        ]


# A busy phone draws 100 mA to 5 A. Read as µA that is 1e5..5e6; read as mA, 100..5000. A raw magnitude of 20000
# would be 20 A in mA (no phone) or 20 mA in µA (no busy phone either), so it separates the two.
_UA_THRESHOLD_RAW = 20_000.0


def calibrate_battery(rest: Sequence[BatteryReading], busy: Sequence[BatteryReading], *,
                      min_delta_ma: float = 20.0, min_samples: int = 3) -> CalibrationResult:
    """Infer current unit, voltage unit and discharge sign from readings at rest and under a busy loop.

    The busy loop draws more, in the discharge direction: the sign of (busy median - rest median) is the sign of
    discharge. The unit follows from the magnitude of the busy reading (see ``_UA_THRESHOLD_RAW``). Refuses
    (CalibrationError) when the phone is charging or on USB power, when there are too few readings, when the
    difference is within 3x the noise (scaled MAD) or under ``min_delta_ma``, or when magnitudes are implausible."""
    readings = [*rest, *busy]
    plugged = sorted({f"status {r.status}" for r in readings if r.status in CHARGING_STATUSES}
                     | ({"a supply online"} if any(r.online for r in readings) else set()))
    if plugged:
        raise CalibrationError(f"cannot calibrate while the phone is charging or on USB power ({', '.join(plugged)})",
                               hint="unplug the phone and connect over Wi-Fi (`adb tcpip 5555`, then the phone's "
                                    "address in the device file), then calibrate again")
    rest_current = [r.current_raw for r in rest if r.current_raw is not None]
    busy_current = [r.current_raw for r in busy if r.current_raw is not None]
    voltages = [r.voltage_raw for r in readings if r.voltage_raw is not None]
    if len(rest_current) < min_samples or len(busy_current) < min_samples:
        raise CalibrationError(f"too few current readings to calibrate ({len(rest_current)} at rest, "
                               f"{len(busy_current)} busy; need {min_samples} each)",
                               hint="check current_file and node in [power], or sample for longer")
    if not voltages:
        raise CalibrationError("no voltage readings", hint="check voltage_file and node in [power]")
    rest_median = statistics.median(rest_current)
    busy_median = statistics.median(busy_current)
    delta = busy_median - rest_median
    noise = 1.4826 * max(_mad(rest_current), _mad(busy_current))
    magnitude = max(abs(busy_median), abs(rest_median))
    if magnitude >= _UA_THRESHOLD_RAW:
        current_unit, to_ma = "uA", 0.001
    elif magnitude >= 10:
        current_unit, to_ma = "mA", 1.0
    else:
        raise CalibrationError(f"current readings are implausibly small (busy median {busy_median:g}): neither mA "
                               "nor µA fits a phone under load",
                               hint="check that current_file is the fuel gauge's current (current_now or current_avg)")
    if abs(delta) <= 3 * noise or abs(delta) * to_ma < min_delta_ma:
        raise CalibrationError(
            f"the busy loop did not change the current significantly: rest median {rest_median:g}, busy median "
            f"{busy_median:g} (difference {abs(delta) * to_ma:.1f} mA, noise {noise * to_ma:.1f} mA, need "
            f"> 3x noise and >= {min_delta_ma:g} mA)",
            hint="this node may not update (try another power_supply node, e.g. the fuel gauge's), or sample longer")
    discharge_sign = "negative" if delta < 0 else "positive"
    rest_draw_ma = (-rest_median if delta < 0 else rest_median) * to_ma
    if rest_draw_ma < -min_delta_ma:
        raise CalibrationError(f"inconsistent readings: at rest the current points the charging way "
                               f"({rest_median:g}) though no charger is connected",
                               hint="wait for the phone to settle and calibrate again")
    voltage_median = statistics.median(voltages)
    if voltage_median >= 100_000:
        voltage_unit = "uV"
    elif voltage_median >= 1_000:
        voltage_unit = "mV"
    else:
        raise CalibrationError(f"voltage readings are implausible ({voltage_median:g}): neither µV nor mV",
                               hint="check voltage_file in [power]")
    return CalibrationResult(current_unit, voltage_unit, discharge_sign, rest_median, busy_median, voltage_median,
                             len(rest_current), len(busy_current), noise)


def _mad(values: Sequence[float]) -> float:
    median = statistics.median(values)
    return statistics.median(abs(v - median) for v in values)


def battery_readings(plan: PowerPlan, run: SamplerRun, window: tuple[float, float],
                     settle_s: float = 0.0) -> list[BatteryReading]:
    """The battery readings of ``run`` in [start + settle_s, end) of ``window`` (the fuel gauge lags behind a change
    of load, and a sample at the boundary belongs to the next phase)."""
    start_s, end_s = window[0] + settle_s, window[1]
    online = {t_s for supply in plan.config.supplies for t_s, v in run.column(f"power.online.{supply}") if v == "1"}
    rows = zip(run.column("power.current"), run.column("power.voltage"), run.column("power.status"))
    return [BatteryReading(_float_or_none(current), _float_or_none(voltage), status, t_s in online)
            for (t_s, current), (_, voltage), (_, status) in rows if start_s <= t_s < end_s]


def calibrate_from_run(plan: PowerPlan, run: SamplerRun, settle_s: float = 1.0) -> CalibrationResult:
    """Calibrate from a sampler run whose idle baseline was the rest phase and whose benchmark was
    :func:`~farmbench.telemetry.sampler.busy_loop_argv`."""
    if plan.config.source != "android-battery":
        raise CalibrationError(f"calibration is for android-battery sources, not {plan.config.source}")
    if run.idle_window is None or run.window is None:
        raise CalibrationError("the calibration run has no rest phase or did not finish",
                               hint="run it with idle_s > 0 and let the busy loop end")
    return calibrate_battery(battery_readings(plan, run, run.idle_window, settle_s),
                             battery_readings(plan, run, run.window, settle_s))


CALIBRATION_FIELDS: tuple[Field, ...] = (
    Field("version", "int", required=True, min_value=1, doc="format version of this state file"),
    Field("device", "str", default="", doc="the device it was measured on"),
    Field("calibrated_at", "str", default="", doc="when (UTC, ISO 8601)"),
    Field("current_unit", "str", required=True, choices=("uA", "mA")),
    Field("voltage_unit", "str", required=True, choices=("uV", "mV")),
    Field("discharge_sign", "str", required=True, choices=("negative", "positive")),
)


def calibration_state_text(result: CalibrationResult, *, device: str, when: _dt.datetime | None = None) -> str:
    """The TOML text of a calibration state file."""
    when = when or _dt.datetime.now(_dt.UTC)
    evidence = {
        "rest_current_median_raw": result.rest_current_median_raw,
        "busy_current_median_raw": result.busy_current_median_raw,
        "voltage_median_raw": result.voltage_median_raw,
        "noise_raw": result.noise_raw,
        "rest_samples": result.rest_samples,
        "busy_samples": result.busy_samples,
        "rest_draw_ma": round(result.rest_draw_ma, 3),
        "busy_draw_ma": round(result.busy_draw_ma, 3),
    }
    lines = [
        "# Power calibration written by `farmbench calibrate-power`; re-run that command rather than editing this.",
        "# The device file's [power] table uses it through: calibration = \"<this file>\"",
        f"version = {CALIBRATION_VERSION}",
        f"device = {json.dumps(device)}",
        f"calibrated_at = {json.dumps(when.isoformat(timespec='seconds'))}",
        f'current_unit = "{result.current_unit}"',
        f'voltage_unit = "{result.voltage_unit}"',
        f'discharge_sign = "{result.discharge_sign}"',
        "",
        "[evidence]",
        *(f"{key} = {float(value)!r}" if isinstance(value, float) else f"{key} = {value}"
          for key, value in evidence.items()),
    ]
    return "\n".join(lines) + "\n"


def write_calibration_state(path: str | Path, result: CalibrationResult, *, device: str,
                            when: _dt.datetime | None = None) -> Path:
    """Write the state file atomically (a reader never sees half of it) and return its path."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(calibration_state_text(result, device=device, when=when), encoding="utf-8")
    os.replace(temporary, path)
    return path


def load_calibration_state(path: str | Path) -> dict[str, Any]:
    """The validated keys of a calibration state file (ConfigError naming file, line and key when it is wrong)."""
    doc = TomlDocument.load(path)
    data = {key: value for key, value in doc.data.items() if key != "evidence"}
    values: dict[str, Any] = dict(validate_table(doc, (), data, CALIBRATION_FIELDS))
    if values["version"] > CALIBRATION_VERSION:
        raise ConfigError(f"calibration file format {values['version']} is newer than this farmbench understands "
                          f"({CALIBRATION_VERSION})", path=str(doc.path), line=doc.line_of(("version",)),
                          key="version", hint="upgrade farmbench, or re-run calibrate-power with this version")
    evidence = doc.data.get("evidence", {})
    values["evidence"] = dict(evidence) if isinstance(evidence, dict) else {}
    return values


# ---------------------------------------------------------------------------------------------------------------


def _float_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None

