"""Thermal zones, the cooldown gate (with a fake clock, and for real with a thread cooling a zone file read by the real
listing script), throttle detection from trip points, cpufreq samples and real `dumpsys thermalservice` captures."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from farmbench.config import TomlDocument
from farmbench.errors import ConfigError
from farmbench.telemetry.sampler import Channel, SamplerRun, SamplerSpec, parse_sampler_output, wrap_with_sampler
from farmbench.telemetry.thermal import (
    FLAG_HOT_BEFORE_RUN,
    FLAG_NO_ZONES,
    FLAG_THROTTLED,
    CpuPolicy,
    ThermalConfig,
    Zone,
    assess_throttling,
    cpufreq_channels,
    cpufreq_listing_script,
    default_thermal_config,
    frequency_throttling,
    load_thermal_table,
    make_zone_reader,
    parse_cpufreq_listing,
    parse_thermal_listing,
    parse_thermalservice,
    run_trip_violations,
    select_zones,
    temp_c_from_sysfs,
    thermal_listing_script,
    trip_violations,
    wait_for_cooldown,
    zone_channels,
)
from farmbench.transports.local import LocalTransport

DATA = Path(__file__).parent / "data" / "telemetry"


def captured(name: str) -> str:
    return "".join(line for line in (DATA / name).read_text().splitlines(keepends=True) if not line.startswith("# "))


def local_shell(script: str) -> str:
    return LocalTransport().run(["sh", "-c", script], timeout_s=30).check().stdout


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text + "\n")
    os.replace(temporary, path)


def make_zones(root: Path, zones: Sequence[tuple[str, str, Sequence[tuple[str, str]]]]) -> None:
    """thermal_zoneN directories with type, temp and (type, temp) trip points."""
    for number, (kind, temp, trips) in enumerate(zones):
        directory = root / f"thermal_zone{number}"
        directory.mkdir(parents=True)
        (directory / "type").write_text(kind + "\n")
        (directory / "temp").write_text(temp + "\n")
        for index, (trip_type, trip_temp) in enumerate(trips):
            (directory / f"trip_point_{index}_type").write_text(trip_type + "\n")
            (directory / f"trip_point_{index}_temp").write_text(trip_temp + "\n")


@pytest.mark.parametrize("raw, expected", [
    ("45000", 45.0), ("45123", 45.123), ("-5000", -5.0),  # millidegrees: the kernel ABI
    ("45", 45.0), ("0", 0.0),  # whole degrees: old vendor kernels
    ("452", 45.2),  # tenths: some battery/PMIC zones
    ("-273000", None), ("2147483647", None), ("", None), ("N/A", None), (None, None), ("nan", None),
])
def test_sysfs_temperatures_in_celsius(raw: str | None, expected: float | None) -> None:
    assert temp_c_from_sysfs(raw) == (pytest.approx(expected) if expected is not None else None)


def test_zone_listing_with_trip_points_from_real_files(tmp_path: Path) -> None:
    make_zones(tmp_path, [("cpu-thermal", "52000", [("passive", "80000"), ("critical", "95000")]),
                          ("battery", "31000", []), ("x86_pkg_temp", "48", [("hot", "100")]),
                          ("gpu-thermal", "", [])] + [(f"tsens_tz_sensor{i}", "40000", []) for i in range(8)])
    zones = parse_thermal_listing(local_shell(thermal_listing_script(str(tmp_path))))
    assert [zone.zone for zone in zones] == [f"thermal_zone{i}" for i in range(12)]  # numeric order, not 0,1,10,11,2
    cpu = zones[0]
    assert (cpu.key, cpu.temp_c) == ("thermal_zone0:cpu-thermal", 52.0)
    assert [(t.index, t.type, t.temp_c) for t in cpu.trips] == [(0, "passive", 80.0), (1, "critical", 95.0)]
    assert zones[2].temp_c == 48.0 and zones[2].trips[0].temp_c == 100.0
    assert zones[3].temp_c is None
    assert [z.type for z in select_zones(zones, ["*CPU*", "x86_pkg_temp"])] == ["cpu-thermal", "x86_pkg_temp"]
    assert [z.type for z in select_zones(zones, default_thermal_config().zones)] == ["cpu-thermal", "x86_pkg_temp"]
    assert zone_channels(zones[:1]) == (Channel("thermal.thermal_zone0", f"{tmp_path}/thermal_zone0/temp"),)


# ---------------------------------------------------------------------------------------------------------------
# Cooldown gate


class FakeTime:
    def __init__(self) -> None:
        self.now_s = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds


def scripted_reader(fake: FakeTime, temps: Sequence[tuple[float, float]]) -> Callable[[], list[Zone]]:
    """Zones whose cpu temperature follows ``temps`` (from time offset, °C); a battery zone is always 35 °C."""
    def read() -> list[Zone]:
        elapsed = fake.now_s - 1000.0
        cpu_c = [c for at, c in temps if at <= elapsed][-1]
        return [Zone("thermal_zone0", "cpu-thermal", cpu_c), Zone("thermal_zone1", "battery", 35.0)]
    return read


def test_cooldown_gate_waits_while_hot_and_opens_when_cool() -> None:
    fake = FakeTime()
    config = ThermalConfig(cooldown_c=45.0, poll_s=2.0, max_wait_s=60.0)
    reader = scripted_reader(fake, [(0, 70.0), (3, 55.0), (7, 44.5)])
    result = wait_for_cooldown(reader, config, clock=fake.clock, sleep=fake.sleep)
    assert not result.timed_out and result.flags == []
    assert fake.sleeps == [2.0, 2.0, 2.0, 2.0]  # hot at 0, 2, 4 (55), 6 (55), cool at 8
    assert result.waited_s == 8.0 and result.polls == 5
    assert result.before_c == {"thermal_zone0:cpu-thermal": 70.0}  # only watched zones
    assert result.after_c == {"thermal_zone0:cpu-thermal": 44.5}

    fake = FakeTime()
    already = wait_for_cooldown(scripted_reader(fake, [(0, 40.0)]), config,
                                clock=fake.clock, sleep=fake.sleep)
    assert fake.sleeps == [] and already.waited_s == 0.0 and already.polls == 1


def test_cooldown_gate_gives_up_at_max_wait_and_flags_the_measurement() -> None:
    fake = FakeTime()
    config = ThermalConfig(cooldown_c=45.0, poll_s=3.0, max_wait_s=10.0)
    result = wait_for_cooldown(scripted_reader(fake, [(0, 80.0)]), config,
                               clock=fake.clock, sleep=fake.sleep)
    assert result.timed_out and result.hot == ("thermal_zone0:cpu-thermal",)
    assert fake.sleeps == [3.0, 3.0, 3.0, 1.0] and result.waited_s == 10.0
    assert result.flags == [FLAG_HOT_BEFORE_RUN]
    assert result.to_dict()["flags"] == [FLAG_HOT_BEFORE_RUN]


def test_cooldown_within_a_delta_of_the_idle_temperature() -> None:
    fake = FakeTime()
    config = ThermalConfig(cooldown_c=45.0, cooldown_delta_c=3.0, poll_s=1.0, max_wait_s=30.0)
    reader = scripted_reader(fake, [(0, 56.0), (2, 50.5)])
    # This phone idles at 48 °C: 50.5 is within 3 °C of that, though over 45.
    result = wait_for_cooldown(reader, config, idle_temps_c={"thermal_zone0:cpu-thermal": 48.0},
                               clock=fake.clock, sleep=fake.sleep)
    assert not result.timed_out and result.waited_s == 2.0
    fake = FakeTime()
    no_idle = wait_for_cooldown(scripted_reader(fake, [(0, 56.0), (2, 50.5)]), config,
                                clock=fake.clock, sleep=fake.sleep)
    assert no_idle.timed_out


def test_cooldown_without_watched_zones_says_so() -> None:
    result = wait_for_cooldown(lambda: [Zone("thermal_zone0", "battery", 90.0)], ThermalConfig(),
                               clock=lambda: 0.0, sleep=lambda s: None)
    assert not result.timed_out and result.flags == [FLAG_NO_ZONES]


def test_cooldown_gate_for_real_while_a_thread_cools_the_zone(tmp_path: Path) -> None:
    make_zones(tmp_path, [("cpu-thermal", "71000", [("passive", "85000")]), ("battery", "30000", [])])
    temp = tmp_path / "thermal_zone0" / "temp"

    def cool_down() -> None:
        for millidegrees in (65000, 55000, 47000, 44000):
            time.sleep(0.3)
            write_atomically(temp, str(millidegrees))

    reader = make_zone_reader(local_shell, str(tmp_path))
    cooler = threading.Thread(target=cool_down, daemon=True)
    started = time.monotonic()
    cooler.start()
    result = wait_for_cooldown(reader, ThermalConfig(cooldown_c=45.0, poll_s=0.1, max_wait_s=20.0))
    cooler.join()
    assert not result.timed_out
    assert result.before_c == {"thermal_zone0:cpu-thermal": 71.0}
    assert result.after_c == {"thermal_zone0:cpu-thermal": 44.0}
    assert 1.1 <= result.waited_s <= 10.0 and result.polls >= 5
    assert time.monotonic() - started >= 1.1


# ---------------------------------------------------------------------------------------------------------------
# Throttling


def test_trip_points_flag_throttling_before_during_and_after(tmp_path: Path) -> None:
    make_zones(tmp_path, [("cpu-thermal", "86000", [("active", "50000"), ("passive", "85000")]),
                          ("gpu-thermal", "60000", [("passive", "85000")])])
    zones = parse_thermal_listing(local_shell(thermal_listing_script(str(tmp_path))))
    assert trip_violations(zones) == ["thermal_zone0:cpu-thermal at 86 °C, over its passive trip point 85 °C"]
    # An active trip (a fan) is not throttling.
    make_zones(tmp_path / "fan", [("cpu-thermal", "60000", [("active", "50000"), ("passive", "85000")])])
    fan = parse_thermal_listing(local_shell(thermal_listing_script(str(tmp_path / "fan"))))
    assert trip_violations(fan) == []

    # During the run: the sampler reads the zone's temp; one sample over the trip is enough.
    spec = SamplerSpec(channels=zone_channels(fan), rate_hz=10)
    tag = "fbs11111111"
    text = (f"{tag}\tM\tstart\t10.00\n" + "".join(f"{tag}\tS\t{10 + k / 10:.2f}\t{t}\n"
                                                  for k, t in enumerate([60000, 79000, 86500, 70000]))
            + f"{tag}\tM\tend\t10.40\t0\n")
    run = parse_sampler_output(text, spec, tag)
    assert run_trip_violations(run, fan) == [
        "thermal_zone0:cpu-thermal at 86.5 °C during the run (peak), over its passive trip point 85 °C"]
    verdict = assess_throttling(ThermalConfig(), run=run, run_zones=fan, zones_before=fan, zones_after=fan)
    assert verdict.throttled and verdict.flags == [FLAG_THROTTLED] and len(verdict.reasons) == 1


def _freq_run(policies: Sequence[CpuPolicy], rows: Sequence[Sequence[int]]) -> SamplerRun:
    spec = SamplerSpec(channels=cpufreq_channels(policies), rate_hz=10)
    tag = "fbs22222222"
    lines = [f"{tag}\tM\tstart\t0.00"]
    lines += ["\t".join([tag, "S", f"{k / 10:.2f}", *map(str, row)]) for k, row in enumerate(rows)]
    lines.append(f"{tag}\tM\tend\t{(len(rows) - 1) / 10:.2f}\t0")
    return parse_sampler_output("\n".join(lines) + "\n", spec, tag)


def test_cpufreq_samples_below_the_maximum_flag_a_busy_policy_only(tmp_path: Path) -> None:
    for name, cpus, max_khz in (("policy0", "0-3", 1800000), ("policy4", "4 5 6 7", 2841600)):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "related_cpus").write_text(cpus + "\n")
        (directory / "cpuinfo_max_freq").write_text(f"{max_khz}\n")
        (directory / "scaling_max_freq").write_text(f"{max_khz}\n")
    policies = parse_cpufreq_listing(local_shell(cpufreq_listing_script(str(tmp_path))))
    assert [(p.name, p.cpus, p.max_khz) for p in policies] == [("policy0", (0, 1, 2, 3), 1800000),
                                                               ("policy4", (4, 5, 6, 7), 2841600)]
    little, big = 300000, 2841600
    # The big cluster runs the benchmark at its maximum, then drops to 1.9 GHz for the last 30% of the run;
    # the little cluster idles low throughout, which is not throttling.
    rows = [[little, 1800000, big if k < 14 else 1900800, 2841600] for k in range(20)]
    run = _freq_run(policies, rows)
    reasons = frequency_throttling(run, policies)
    assert reasons == ["policy4: scaling_cur_freq under 2841600 kHz in 6 of 20 samples (lowest 1900800 kHz)"]
    steady = _freq_run(policies, [[little, 1800000, big, 2841600] for _ in range(20)])
    assert frequency_throttling(steady, policies) == []
    # When the benchmark is pinned to the little cluster, its low frequency is throttling.
    assert frequency_throttling(steady, policies, busy_policies=["policy0"])[0].startswith(
        "policy0: scaling_cur_freq under 1800000 kHz in 20 of 20")
    # A thermal framework lowering scaling_max_freq mid-run.
    capped = _freq_run(policies, [[little, 1800000, big if k < 10 else 2000000, 2841600 if k < 10 else 2000000]
                                  for k in range(20)])
    assert frequency_throttling(capped, policies) == [
        "policy4: scaling_max_freq lowered to 2000000 kHz during the run (was 2841600 kHz)"]


def test_dumpsys_thermalservice_on_real_captures() -> None:
    qualcomm = parse_thermalservice(captured("dumpsys_thermalservice_pixel_qualcomm.txt"))
    assert qualcomm.status == 0 and qualcomm.status_name == "NONE" and qualcomm.hal_ready is True
    assert qualcomm.source == "hal" and len(qualcomm.temperatures) == 13
    by_name = {t.name: t for t in qualcomm.temperatures}
    assert by_name["cpu1-silver-usr"].value == 44.1 and by_name["cpu1-silver-usr"].type_name == "CPU"
    assert by_name["battery"].value == pytest.approx(28.000002)  # the HAL's current value, not the cached 30.0
    assert qualcomm.throttling() == []

    tensor = parse_thermalservice(captured("dumpsys_thermalservice_pixel_tensor.txt"))
    assert tensor.status == 0 and len(tensor.temperatures) == 42
    tensor_by_name = {t.name: t for t in tensor.temperatures}
    assert tensor_by_name["BIG"].value == pytest.approx(26.000002) and tensor_by_name["TPU"].type_name == "NPU"  # Tensor reports its TPU as an NPU
    assert tensor_by_name["ocp_cpu2"].value == 11900.0 and not tensor_by_name["ocp_cpu2"].is_temperature
    assert tensor_by_name["neutral_therm"].type_name == "UNKNOWN" and tensor_by_name["neutral_therm"].is_temperature

    # The same dump from a phone under load: status SEVERE, one sensor at MODERATE.
    hot_text = (captured("dumpsys_thermalservice_pixel_qualcomm.txt").replace("Thermal Status: 0", "Thermal Status: 3")
                .replace("mValue=44.1, mType=0, mName=cpu1-silver-usr, mStatus=0",
                         "mValue=91.3, mType=0, mName=cpu1-silver-usr, mStatus=2"))
    hot = parse_thermalservice(hot_text.replace("\n", "\r\n"))
    assert hot.status == 3 and hot.status_name == "SEVERE" and hot.max_sensor_status == 2
    assert hot.throttling() == ["Android thermal status 3 (SEVERE)",
                                "thermal HAL sensor cpu1-silver-usr (CPU) at 91.3 has severity 2"]
    assert hot.throttling(max_status=2) == ["Android thermal status 3 (SEVERE)"]
    verdict = assess_throttling(ThermalConfig(), thermalservice=[qualcomm, hot])
    assert verdict.throttled and len(verdict.reasons) == 2


def test_dumpsys_thermalservice_variants() -> None:
    cached_only = parse_thermalservice("IsStatusOverride: false\nCurrent thermal status: 2\nCached temperatures:\n"
                                       "\tTemperature{mValue=41.5, mType=3, mName=skin, mStatus=1}\nHAL Ready: false\n")
    assert cached_only.status == 2 and cached_only.hal_ready is False and cached_only.source == "cached"
    assert [(t.name, t.type_name, t.value, t.status) for t in cached_only.temperatures] == [("skin", "SKIN", 41.5, 1)]
    empty = parse_thermalservice("Can't find service: thermalservice\n")
    assert empty.status is None and empty.temperatures == () and empty.throttling() == []


def test_thermal_table_validation(tmp_path: Path) -> None:
    def load(text: str) -> ThermalConfig:
        doc = TomlDocument.from_string(text, tmp_path / "dev.toml")
        return load_thermal_table(doc, ("thermal",), doc.data["thermal"])

    config = load('[thermal]\nzones = "cpu*,soc*"\ncooldown_c = 40\ncooldown_delta_c = 2.5\n')
    assert config.zones == ("cpu*", "soc*") and config.cooldown_c == 40.0 and config.cooldown_delta_c == 2.5
    assert config.max_wait_s == 120.0
    for text, line, key, message in [
        ('[thermal]\ncooldown_c = 40\nmax_wiat_s = 3\n', 3, "thermal.max_wiat_s", "unknown key"),
        ('[thermal]\nzones = []\n', 2, "thermal.zones", "is empty"),
        ('[thermal]\nfreq_tolerance = 1.5\n', 2, "thermal.freq_tolerance", "must be < 1"),
        ('[thermal]\npoll_s = 0\n', 2, "thermal.poll_s", "must be > 0"),
    ]:
        with pytest.raises(ConfigError) as err:
            load(text)
        assert (err.value.line, err.value.key) == (line, key) and message in str(err.value)
        assert err.value.path == str(tmp_path / "dev.toml")
    with pytest.raises(ConfigError) as err:
        load('[thermal]\nmax_wiat_s = 3\n')
    assert err.value.hint == "did you mean 'max_wait_s'?"


def test_sampled_zone_temperatures_come_from_the_real_sampler(tmp_path: Path) -> None:
    make_zones(tmp_path, [("cpu-thermal", "50000", [("passive", "60000")])])
    zones = parse_thermal_listing(local_shell(thermal_listing_script(str(tmp_path))))
    spec = SamplerSpec(channels=zone_channels(zones), rate_hz=20)
    temp = tmp_path / "thermal_zone0" / "temp"
    heater = threading.Timer(0.4, lambda: write_atomically(temp, "63000"))
    command = wrap_with_sampler(spec, ["sleep", "0.8"], idle_s=0.1)
    heater.start()
    run = parse_sampler_output(LocalTransport().run(command.argv, timeout_s=30).stdout, spec, command.tag)
    heater.join()
    assert run_trip_violations(run, zones) == [
        "thermal_zone0:cpu-thermal at 63 °C during the run (peak), over its passive trip point 60 °C"]
