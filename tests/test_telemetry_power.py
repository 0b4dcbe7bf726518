"""Power sources, window statistics, trust flags and calibration: exact integrals on synthetic series, vendor units
and signs, RAPL wrap-around, hwmon and RAPL layouts built as real files and listed by the real shell script, the
vcgencmd parser on a real Pi 5 capture, and one end-to-end run where a thread writes a known power pattern into a
fake fuel gauge while the sampler runs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from farmbench.config import TomlDocument
from farmbench.errors import ConfigError, RunnerError
from farmbench.telemetry.power import (
    FLAG_CHARGING,
    FLAG_FEW_SAMPLES,
    FLAG_RAPL_WRAPPED,
    FLAG_STATIC,
    FLAG_UNCALIBRATED,
    BatteryReading,
    CalibrationError,
    PowerConfig,
    PowerPlan,
    PowerSeries,
    average_power_mw,
    calibrate_battery,
    calibrate_from_run,
    charging_state,
    command_power_mw,
    integrate_held,
    listing_script,
    load_calibration_state,
    load_power_table,
    parse_pmic_adc,
    plan_power,
    pmic_rail_power_mw,
    power_config_from_toml,
    power_series,
    summarize_power,
    window_stats,
    write_calibration_state,
)
from farmbench.telemetry.sampler import SamplerRun, SamplerSpec, parse_sampler_output, wrap_with_sampler
from farmbench.transports.local import LocalTransport

DATA = Path(__file__).parent / "data" / "telemetry"
TAG = "fbs00000000"


def captured(name: str) -> str:
    """A golden file without its `# source:` header."""
    return "".join(line for line in (DATA / name).read_text().splitlines(keepends=True) if not line.startswith("# "))


def sampler_text(spec: SamplerSpec, rows: Sequence[tuple[float, Sequence[str]]], *, idle: float | None = None,
                 start: float | None = None, end: float | None = None, commands: Sequence[str] = ()) -> str:
    """What the device-side sampler prints for these rows (format version 1)."""
    lines = [f"{TAG}\tH\t1\t{len(spec.channels)}\t{int(spec.command is not None)}\t{spec.period_cs}\t1"]
    for name, t in (("idle", idle), ("start", start)):
        if t is not None:
            lines.append(f"{TAG}\tM\t{name}\t{t:.2f}")
    for number, (t_s, values) in enumerate(rows):
        fields = [f"{t_s:.2f}", *values, *([commands[number]] if commands else [])]
        lines.append("\t".join([TAG, "S", *fields]))
    if end is not None:
        lines.append(f"{TAG}\tM\tend\t{end:.2f}\t0")
    return "\n".join(lines) + "\n"


def battery_run(config: PowerConfig, rows: Sequence[tuple[float, str, str, str]], *, online: str = "0",
                idle: float | None = None, start: float | None = None, end: float | None = None
                ) -> tuple[SamplerRun, PowerPlan]:
    plan = plan_power(config)
    spec = plan.sampler_spec()
    text = sampler_text(spec, [(t, (current, voltage, status, *([online] * len(config.supplies))))
                               for t, current, voltage, status in rows], idle=idle, start=start, end=end)
    return parse_sampler_output(text, spec, TAG), plan


# ---------------------------------------------------------------------------------------------------------------
# Integration


def test_held_integration_of_a_square_wave_is_exact() -> None:
    # 1000 mW and 3000 mW alternating every 0.5 s, sampled exactly at the transitions.
    times = [0.5 * k for k in range(9)]
    power = [1000.0 if k % 2 == 0 else 3000.0 for k in range(9)]
    # Over [0.25, 3.75]: 0.25 s of 1000 mW, then six whole half-periods (3 x 3000 + 3 x 1000) x 0.5 s, then
    # 0.25 s of 3000 mW (the sample at 3.5 s holds): 250 + 6000 + 750 = 7000 mJ in 3.5 s.
    assert integrate_held(times, power, 0.25, 3.75) == pytest.approx(7000.0, abs=1e-9)
    stats = window_stats(PowerSeries(tuple(times), tuple(power)), (0.25, 3.75), inferences=700)
    assert stats.average_power_mw == pytest.approx(2000.0, abs=1e-9)
    assert stats.energy_mj == pytest.approx(7000.0, abs=1e-9)
    assert stats.energy_per_inference_mj == pytest.approx(10.0, abs=1e-9)
    assert stats.samples_in_window == 7
    # Before the first sample the first value holds, after the last the last one.
    assert integrate_held(times, power, -1.0, 0.5) == pytest.approx(1500.0, abs=1e-9)
    assert integrate_held(times, power, 4.0, 6.0) == pytest.approx(2000.0, abs=1e-9)
    assert average_power_mw(PowerSeries((), ()), 0, 1) is None
    with pytest.raises(ValueError):
        integrate_held(times, power, 2.0, 1.0)


def test_battery_square_wave_through_the_parser_gives_exact_energy_per_inference_and_above_idle() -> None:
    config = PowerConfig(source="android-battery", calibrated=True, min_samples=5)
    # Kernel units: µA negative while discharging, µV. At 4.000000 V, 250 mA is 1000 mW and 750 mA is 3000 mW.
    rows = [(0.0, "-125000", "4000000", "Discharging")]  # idle: 500 mW until the run starts at 1.0 s
    rows += [(1.0 + 0.5 * k, "-250000" if k % 2 == 0 else "-750000", "4000000", "Discharging") for k in range(9)]
    run, plan = battery_run(config, rows, idle=0.0, start=1.25, end=4.75)
    summary = summarize_power(plan, run, inferences=700)
    assert summary.stats is not None
    assert summary.stats.window_s == pytest.approx(3.5)
    assert summary.stats.energy_per_inference_mj == pytest.approx(10.0, abs=1e-9)
    # Idle [0, 1.25]: 500 mW for 1 s, then 1000 mW for 0.25 s -> 600 mW.
    assert summary.stats.idle_power_mw == pytest.approx(600.0, abs=1e-9)
    assert summary.stats.energy_above_idle_per_inference_mj == pytest.approx((2000.0 - 600.0) * 3.5 / 700, abs=1e-9)
    assert summary.stats.samples_in_window == 7
    assert summary.flags == ()
    assert summary.to_dict()["energy_per_inference_mj"] == pytest.approx(10.0)


@pytest.mark.parametrize("vendor, current_unit, discharge_sign, current_raw, voltage_unit, voltage_raw", [
    ("kernel ABI (Pixel)", "uA", "negative", "-500000", "uV", "3800000"),
    ("Samsung S21/A52s", "mA", "negative", "-500", "uV", "3800000"),
    ("Xiaomi Mi A1", "uA", "positive", "500000", "uV", "3800000"),
    ("Huawei", "mA", "negative", "-500", "mV", "3800"),
])
def test_vendor_units_and_signs_all_give_the_same_power(vendor: str, current_unit: str, discharge_sign: str,
                                                        current_raw: str, voltage_unit: str, voltage_raw: str) -> None:
    config = PowerConfig(source="android-battery", current_unit=current_unit, voltage_unit=voltage_unit,
                         discharge_sign=discharge_sign, calibrated=True)
    run, plan = battery_run(config, [(t / 10, current_raw, voltage_raw, "Discharging") for t in range(5)])
    series = power_series(plan, run)
    assert series.power_mw == pytest.approx((1900.0,) * 5), vendor


def test_charging_status_or_usb_power_flags_the_measurement() -> None:
    config = PowerConfig(source="android-battery", calibrated=True, min_samples=3)
    rows = [(t / 10, str(-500000 - 1000 * (t % 4)), "3800000", "Discharging") for t in range(20)]
    run, plan = battery_run(config, rows, idle=0.0, start=0.5, end=1.5)
    assert summarize_power(plan, run, 10).flags == ()

    charging = [(t, current, voltage, "Charging" if 0.8 <= t <= 1.0 else status) for t, current, voltage, status in rows]
    run, plan = battery_run(config, charging, idle=0.0, start=0.5, end=1.5)
    assert summarize_power(plan, run, 10).flags == (FLAG_CHARGING,)
    assert charging_state(plan, run) == ["status Charging"]

    run, plan = battery_run(config, rows, online="1", idle=0.0, start=0.5, end=1.5)
    assert FLAG_CHARGING in summarize_power(plan, run, 10).flags
    assert "usb online" in charging_state(plan, run)


def test_few_samples_static_sensor_and_uncalibrated_battery_are_flagged() -> None:
    config = PowerConfig(source="android-battery", min_samples=10)
    rows = [(t / 10, "-500000", "3800000", "Discharging") for t in range(8)]
    run, plan = battery_run(config, rows, idle=0.0, start=0.1, end=0.7)
    flags = summarize_power(plan, run, 10).flags
    assert set(flags) == {FLAG_FEW_SAMPLES, FLAG_STATIC, FLAG_UNCALIBRATED}
    varying = [(t, str(-500000 - 1000 * n), v, s) for n, (t, _, v, s) in enumerate(rows)]
    run, plan = battery_run(config, varying, idle=0.0, start=0.1, end=0.7)
    assert FLAG_STATIC not in summarize_power(plan, run, 10).flags


# ---------------------------------------------------------------------------------------------------------------
# RAPL


def _rapl_tree(root: Path, *, energy_mode: int = 0o444) -> None:
    zones = {"intel-rapl:0": ("package-0", "262143328850"), "intel-rapl:0:0": ("core", "262143328850"),
             "intel-rapl:1": ("psys", "262143328850")}
    for zone, (name, max_range) in zones.items():
        directory = root / "class" / "powercap" / zone
        directory.mkdir(parents=True)
        (directory / "name").write_text(name + "\n")
        (directory / "max_energy_range_uj").write_text(max_range + "\n")
        (directory / "energy_uj").write_text("123456\n")
        (directory / "energy_uj").chmod(energy_mode)


def _list(script: str | None) -> str:
    assert script is not None
    return LocalTransport().run(["sh", "-c", script], timeout_s=30).check().stdout


def test_rapl_counters_become_power_across_a_wrap(tmp_path: Path) -> None:
    _rapl_tree(tmp_path)
    config = PowerConfig(source="rapl")
    plan = plan_power(config, _list(listing_script(config, str(tmp_path))), str(tmp_path))
    assert [(d.zone, d.name, d.max_energy_range_uj) for d in plan.domains] == [
        ("intel-rapl:0", "package-0", 262143328850)]
    max_range = 262143328850
    # 20 W = 2,000,000 µJ per 0.1 s tick, starting 3 J below the wrap point.
    counters = [(max_range - 3_000_000 + 2_000_000 * k) % max_range for k in range(11)]
    assert counters[2] < counters[1]  # it wraps between the 2nd and 3rd tick
    spec = plan.sampler_spec()
    text = sampler_text(spec, [(10.0 + k / 10, (str(c),)) for k, c in enumerate(counters)],
                        idle=10.0, start=10.2, end=10.9)
    run = parse_sampler_output(text, spec, TAG)
    series = power_series(plan, run)
    assert series.rapl_wrapped
    assert series.power_mw == pytest.approx((20000.0,) * 10, rel=1e-9)
    summary = summarize_power(plan, run, inferences=70)
    assert summary.stats is not None
    assert summary.stats.average_power_mw == pytest.approx(20000.0, rel=1e-9)
    assert summary.stats.energy_per_inference_mj == pytest.approx(20000.0 * 0.7 / 70, rel=1e-9)
    assert FLAG_RAPL_WRAPPED in summary.flags

    two = PowerConfig(source="rapl", domains=("package-*", "psys"))
    assert [d.name for d in plan_power(two, _list(listing_script(two, str(tmp_path))), str(tmp_path)).domains] == [
        "package-0", "psys"]


def test_rapl_says_when_energy_uj_is_root_only(tmp_path: Path) -> None:
    _rapl_tree(tmp_path)
    config = PowerConfig(source="rapl")
    listing = _list(listing_script(config, str(tmp_path)))
    # As root every file is readable; rewrite the listing as an unprivileged user's shell reports it (r=0, no value).
    zone = f"{tmp_path}/class/powercap/intel-rapl:0/energy_uj"
    listing = listing.replace(f"F\t{zone}\t1\t123456", f"F\t{zone}\t0\t")
    with pytest.raises(RunnerError, match="root only") as err:
        plan_power(config, listing, str(tmp_path))
    assert err.value.hint is not None and "chmod a+r" in err.value.hint
    with pytest.raises(RunnerError, match="no powercap zone named"):
        plan_power(PowerConfig(source="rapl", domains=("dram",)), _list(listing_script(config, str(tmp_path))),
                   str(tmp_path))


def test_rapl_unknown_range_refuses_to_guess_a_wrap() -> None:
    from farmbench.telemetry.power import RaplDomain
    from farmbench.telemetry.sampler import Channel
    plan = PowerPlan(PowerConfig(source="rapl"), (Channel("power.rapl0.uj", "/x/energy_uj"),),
                     domains=(RaplDomain("intel-rapl:0", "package-0", "/x/energy_uj", None),))
    spec = plan.sampler_spec()
    run = parse_sampler_output(sampler_text(spec, [(1.0, ("500",)), (1.1, ("100",))]), spec, TAG)
    with pytest.raises(RunnerError, match="went down"):
        power_series(plan, run)


# ---------------------------------------------------------------------------------------------------------------
# hwmon


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _hwmon_tree(root: Path) -> None:
    ina3221 = root / "class" / "hwmon" / "hwmon1"
    _write(ina3221 / "name", "ina3221")
    for index, (label, mv, ma) in enumerate([("VDD_IN", 5000, 1400), ("VDD_CPU_GPU_CV", 5000, 500),
                                             ("VDD_SOC", 5000, 300)], start=1):
        _write(ina3221 / f"in{index}_label", label)
        _write(ina3221 / f"in{index}_input", str(mv))
        _write(ina3221 / f"curr{index}_input", str(ma))
    _write(ina3221 / "in4_input", "2000")  # shunt voltage (µV) of channel 1, not a rail
    _write(ina3221 / "curr4_input", "2200")  # sum of currents, not a rail
    _write(ina3221 / "in7_label", "sum of shunt voltages")
    _write(root / "class" / "hwmon" / "hwmon0" / "name", "coretemp")
    _write(root / "class" / "hwmon" / "hwmon0" / "temp1_input", "45000")
    ina226 = root / "class" / "hwmon" / "hwmon2"
    _write(ina226 / "name", "ina226")
    _write(ina226 / "in0_input", "2")  # shunt mV
    _write(ina226 / "in1_input", "12000")
    _write(ina226 / "curr1_input", "250")
    _write(ina226 / "power1_input", "3000000")  # µW


def _hwmon_power(config: PowerConfig, root: Path) -> tuple[list[str], float]:
    plan = plan_power(config, _list(listing_script(config, str(root))), str(root))
    spec = plan.sampler_spec(())
    # Let the real sampler read the files once.
    command = wrap_with_sampler(spec, ["true"], idle_s=0)
    run = parse_sampler_output(LocalTransport().run(command.argv, timeout_s=30).stdout, spec, command.tag)
    series = power_series(plan, run)
    assert len(set(series.power_mw)) == 1
    return [rail.label for rail in plan.rails], series.power_mw[0]


def test_hwmon_rails_by_label_and_the_jetson_preset(tmp_path: Path) -> None:
    _hwmon_tree(tmp_path)
    labels, power_mw = _hwmon_power(PowerConfig(source="hwmon", preset="jetson"), tmp_path)
    assert labels == ["VDD_IN"] and power_mw == pytest.approx(7000.0)
    labels, power_mw = _hwmon_power(PowerConfig(source="hwmon", hwmon="ina3221", rails=("vdd_cpu*", "VDD_SOC")),
                                    tmp_path)
    assert labels == ["VDD_CPU_GPU_CV", "VDD_SOC"] and power_mw == pytest.approx(2500.0 + 1500.0)
    # ina226 has no labels, and its power file (µW) wins over bus voltage x current (12 V x 250 mA = 3000 mW).
    (tmp_path / "class" / "hwmon" / "hwmon2" / "power1_input").write_text("2900000\n")
    labels, power_mw = _hwmon_power(PowerConfig(source="hwmon", hwmon="ina226"), tmp_path)
    assert labels == ["ina226:hwmon2:1"] and power_mw == pytest.approx(2900.0)
    # Without a total rail the jetson preset sums what there is.
    (tmp_path / "class" / "hwmon" / "hwmon1" / "in1_label").write_text("VDD_GPU\n")
    labels, power_mw = _hwmon_power(PowerConfig(source="hwmon", hwmon="ina3221", preset="jetson"), tmp_path)
    assert labels == ["VDD_GPU", "VDD_CPU_GPU_CV", "VDD_SOC"] and power_mw == pytest.approx(7000 + 2500 + 1500)
    # A disabled channel reads nothing (the driver fails the read): it is left out, not allowed to void the sum.
    (tmp_path / "class" / "hwmon" / "hwmon1" / "curr3_input").write_text("")
    labels, power_mw = _hwmon_power(PowerConfig(source="hwmon", hwmon="ina3221"), tmp_path)
    assert labels == ["VDD_GPU", "VDD_CPU_GPU_CV"] and power_mw == pytest.approx(7000 + 2500)
    with pytest.raises(RunnerError, match="no rail matches") as err:
        plan_power(PowerConfig(source="hwmon", rails=("VDD_DDR",)),
                   _list(listing_script(PowerConfig(source="hwmon"), str(tmp_path))), str(tmp_path))
    assert "VDD_SOC" in str(err.value) and "coretemp" in str(err.value)


def test_jetson_legacy_ina3221x_iio_layout(tmp_path: Path) -> None:
    device = tmp_path / "bus" / "i2c" / "drivers" / "ina3221x" / "6-0040" / "iio:device0"
    for index, (label, mw) in enumerate([("POM_5V_IN", 4200), ("POM_5V_GPU", 400), ("POM_5V_CPU", 900)]):
        _write(device / f"rail_name_{index}", label)
        _write(device / f"in_power{index}_input", str(mw))
        _write(device / f"in_current{index}_input", str(mw // 5))
        _write(device / f"in_voltage{index}_input", "5000")
    labels, power_mw = _hwmon_power(PowerConfig(source="hwmon", preset="jetson"), tmp_path)
    assert labels == ["POM_5V_IN"] and power_mw == pytest.approx(4200.0)


# ---------------------------------------------------------------------------------------------------------------
# command and vcgencmd


def test_vcgencmd_pmic_read_adc_on_a_real_pi5_capture() -> None:
    text = captured("vcgencmd_pmic_read_adc_pi5_load.txt")
    rails = parse_pmic_adc(text)
    assert rails["VDD_CORE"] == (0.861733, 6.22421)
    assert rails["EXT5V"] == (5.09066, None) and rails["BATT"] == (0.0, None)
    power = pmic_rail_power_mw(text)
    assert len(power) == 12 and "EXT5V" not in power
    assert power["VDD_CORE"] == pytest.approx(6.22421 * 0.861733 * 1000)
    # The total, summed here by hand from the capture's 12 (volt, current) pairs.
    pairs = [(3.699776, 0.09368929), (3.310033, 0.0878337), (1.805126, 0.1805471), (1.104761, 0.2254398),
             (0.6014646, 0.0666672), (1.110255, 0.1756674), (0.8014644, 0.376709), (0.861733, 6.22421),
             (3.313183, 0.00006105), (3.306773, 0.0003663), (0.8002922, 0.0030525), (5.08664, 0.0241758)]
    expected_mw = sum(v * a for v, a in pairs) * 1000
    assert command_power_mw(text, "vcgencmd-pmic") == pytest.approx(expected_mw, rel=1e-12)
    # As the sampler records it: newlines replaced by ';'.
    assert command_power_mw(text.strip().replace("\n", ";"), "vcgencmd-pmic") == pytest.approx(expected_mw)
    assert command_power_mw(text, "vcgencmd-pmic", rails=("vdd_core",)) == pytest.approx(6.22421 * 861.733)
    assert command_power_mw("BATT_V volt(25)=nanV", "vcgencmd-pmic") is None
    assert command_power_mw("3.25 W\n", "watts") == pytest.approx(3250.0)
    assert command_power_mw("power_mw=1234.5", "milliwatts") == pytest.approx(1234.5)
    assert command_power_mw("meter not connected", "watts") is None


def test_command_source_through_the_real_sampler(tmp_path: Path) -> None:
    fake = tmp_path / "vcgencmd"
    fake.write_text("#!/bin/sh\ncat " + str(DATA / "vcgencmd_pmic_read_adc_pi5_load.txt") + " | grep -v '^#'\n")
    fake.chmod(0o755)
    config = power_config_from_toml(f'[power]\nsource = "command"\ncommand = "{fake} pmic_read_adc"\n'
                                    'command_output = "vcgencmd-pmic"\nrate_hz = 20\nmin_samples = 3\n')
    plan = plan_power(config)
    command = wrap_with_sampler(plan.sampler_spec(), ["sleep", "0.3"], idle_s=0.1)
    run = parse_sampler_output(LocalTransport().run(command.argv, timeout_s=30).stdout, plan.sampler_spec(),
                               command.tag)
    summary = summarize_power(plan, run, inferences=3)
    assert summary.stats is not None
    assert summary.stats.average_power_mw == pytest.approx(command_power_mw(captured(
        "vcgencmd_pmic_read_adc_pi5_load.txt"), "vcgencmd-pmic"))
    assert FLAG_STATIC in summary.flags  # the same capture every tick


# ---------------------------------------------------------------------------------------------------------------
# Calibration


def _readings(values: Sequence[float], voltage: float = 3_850_000, status: str = "Discharging",
              online: bool = False) -> list[BatteryReading]:
    return [BatteryReading(v, voltage, status, online) for v in values]


def test_calibration_detects_a_milliamp_device() -> None:
    # Samsung S21 style: mA, negative while discharging; a noisy fuel gauge.
    rest = _readings([-402, -398, -415, -390, -405, -410, -399])
    busy = _readings([-1480, -1530, -1495, -1510, -1470, -1520, -1500])
    result = calibrate_battery(rest, busy)
    assert (result.current_unit, result.discharge_sign, result.voltage_unit) == ("mA", "negative", "uV")
    assert result.rest_draw_ma == pytest.approx(402.0) and result.busy_draw_ma == pytest.approx(1500.0)
    assert "mA" in result.describe()


def test_calibration_detects_an_inverted_sign() -> None:
    # Mi A1 style: µA but positive while discharging; voltage in mV (Huawei-style) for good measure.
    rest = _readings([350_000, 352_000, 348_000, 351_000], voltage=3850)
    busy = _readings([1_400_000, 1_390_000, 1_410_000, 1_405_000], voltage=3800)
    result = calibrate_battery(rest, busy)
    assert (result.current_unit, result.discharge_sign, result.voltage_unit) == ("uA", "positive", "mV")
    assert result.busy_draw_ma == pytest.approx(1402.5)
    # The kernel convention comes out as such.
    kernel = calibrate_battery(_readings([-350_000, -352_000, -349_000]), _readings([-1_400_000, -1_390_000,
                                                                                     -1_420_000]))
    assert (kernel.current_unit, kernel.discharge_sign) == ("uA", "negative")


def test_calibration_refuses_when_charging_or_not_significant() -> None:
    with pytest.raises(CalibrationError, match="charging") as err:
        calibrate_battery(_readings([-400] * 5), _readings([-1500] * 4 + [-1400], status="Charging"))
    assert err.value.hint is not None and "adb tcpip" in err.value.hint
    with pytest.raises(CalibrationError, match="USB power"):
        calibrate_battery(_readings([-400] * 5, online=True), _readings([-1500] * 5))
    with pytest.raises(CalibrationError, match="did not change the current significantly"):
        calibrate_battery(_readings([-400, -420, -380, -410, -390]), _readings([-405, -395, -415, -385, -400]))
    with pytest.raises(CalibrationError, match="too few"):
        calibrate_battery(_readings([-400]), _readings([-1500] * 5))
    with pytest.raises(CalibrationError, match="implausibly small"):
        calibrate_battery(_readings([0, 1, 0]), _readings([3, 4, 3]))


def test_calibration_from_a_sampler_run_and_its_state_file(tmp_path: Path) -> None:
    config = PowerConfig(source="android-battery")
    rest = [(t / 10, str(-400 - (t % 3)), "3850000", "Discharging") for t in range(40)]
    busy = [(4.0 + t / 10, str(-1500 - (t % 5)), "3800000", "Discharging") for t in range(40)]
    run, plan = battery_run(config, rest + busy, idle=0.0, start=4.0, end=8.0)
    result = calibrate_from_run(plan, run)
    assert (result.current_unit, result.discharge_sign) == ("mA", "negative")
    assert result.rest_samples == 30 and result.busy_samples == 30  # the first second of each phase is skipped

    state = write_calibration_state(tmp_path / "pixel.power.toml", result, device="pixel")
    loaded = load_calibration_state(state)
    assert (loaded["current_unit"], loaded["discharge_sign"], loaded["device"]) == ("mA", "negative", "pixel")
    assert loaded["evidence"]["busy_draw_ma"] == pytest.approx(1502.0)

    device_file = tmp_path / "pixel.toml"
    device_file.write_text('kind = "adb"\n[power]\nsource = "android-battery"\ncalibration = "pixel.power.toml"\n')
    doc = TomlDocument.load(device_file)
    calibrated = load_power_table(doc, ("power",), doc.data["power"])
    assert calibrated.calibrated and calibrated.current_unit == "mA" and calibrated.voltage_unit == "uV"

    # The lines to paste into [power] are valid TOML there and mean the same.
    pasted = power_config_from_toml('[power]\nsource = "android-battery"\n' + "\n".join(result.to_toml_lines()))
    assert pasted.calibrated and (pasted.current_unit, pasted.discharge_sign) == ("mA", "negative")


# ---------------------------------------------------------------------------------------------------------------
# The [power] table


def test_power_table_errors_name_file_line_and_key(tmp_path: Path) -> None:
    def error(text: str) -> ConfigError:
        with pytest.raises(ConfigError) as err:
            power_config_from_toml(text, str(tmp_path / "dev.toml"))
        return err.value

    err = error('[power]\nsource = "android-battery"\nnode = "battery"\ndomains = ["package-*"]\n')
    assert err.line == 4 and err.key == "power.domains" and "not used by source 'android-battery'" in str(err)
    assert err.hint is not None and "rapl" in err.hint
    err = error('[power]\nsource = "android-batery"\n')
    assert err.line == 2 and err.hint == "did you mean 'android-battery'?"
    err = error('[power]\nsource = "command"\n')
    assert err.key == "power.source" and "needs a command" in str(err)
    err = error('[power]\nsource = "rapl"\nrate_hz = 500\n')
    assert err.line == 3 and "<= 100" in str(err)
    err = error('[power]\nsource = "android-battery"\nnode = "../battery"\n')
    assert err.key == "power.node"
    err = error('[power]\nsource = "android-battery"\ncurrent_unit = "nA"\n')
    assert err.key == "power.current_unit"

    (tmp_path / "cal.toml").write_text('version = 1\ncurrent_unit = "mA"\nvoltage_unit = "uV"\n'
                                       'discharge_sign = "positive"\n')
    err = error('[power]\nsource = "android-battery"\ncalibration = "cal.toml"\ndischarge_sign = "negative"\n')
    assert err.line == 4 and "calibration file" in str(err)
    (tmp_path / "newer.toml").write_text('version = 9\ncurrent_unit = "mA"\nvoltage_unit = "uV"\n'
                                         'discharge_sign = "positive"\n')
    err = error('[power]\nsource = "android-battery"\ncalibration = "newer.toml"\n')
    assert "newer" in str(err) and err.path is not None and err.path.endswith("newer.toml")

    missing = power_config_from_toml('[power]\nsource = "android-battery"\ncalibration = "later.toml"\n',
                                     str(tmp_path / "dev.toml"))
    assert not missing.calibrated and missing.calibration == str(tmp_path / "later.toml")
    explicit = power_config_from_toml('[power]\nsource = "android-battery"\ncurrent_unit = "mA"\n'
                                      'discharge_sign = "positive"\n')
    assert explicit.calibrated and explicit.voltage_unit == "uV"


# ---------------------------------------------------------------------------------------------------------------
# End to end: a fake fuel gauge written with a known power pattern while the real sampler runs


def _boottime_s() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class FuelGauge(threading.Thread):
    """Writes current_now (µA, negative) at 4.000 V: 500 mW idle, then 1000 mW, then 3000 mW; logs each change in
    CLOCK_BOOTTIME seconds, the clock /proc/uptime shows."""

    PATTERN = ((0.0, 500.0), (0.6, 1000.0), (2.6, 3000.0))

    def __init__(self, node: Path) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.changes: list[tuple[float, float]] = []
        self._set(self.PATTERN[0][1])

    def _set(self, power_mw: float) -> None:
        temporary = self.node / "current_now.tmp"
        temporary.write_text(f"{-round(power_mw / 4.0 * 1000)}\n")  # mW / 4 V = mA; in µA, negative
        os.replace(temporary, self.node / "current_now")
        self.changes.append((_boottime_s(), power_mw))

    def run(self) -> None:
        started = time.monotonic()
        for at_s, power_mw in self.PATTERN[1:]:
            time.sleep(max(0.0, started + at_s - time.monotonic()))
            self._set(power_mw)

    def energy_mj(self, start_s: float, end_s: float) -> float:
        times = [t for t, _ in self.changes]
        return integrate_held(times, [p for _, p in self.changes], start_s, end_s)


def test_energy_per_inference_on_a_rewritten_fuel_gauge_is_within_two_percent(tmp_path: Path) -> None:
    node = tmp_path / "class" / "power_supply" / "battery"
    node.mkdir(parents=True)
    (node / "voltage_now").write_text("4000000\n")
    (node / "status").write_text("Discharging\n")
    config = power_config_from_toml('[power]\nsource = "android-battery"\nrate_hz = 50\nidle_s = 0.5\n'
                                    'current_unit = "uA"\ndischarge_sign = "negative"\n')
    plan = plan_power(config, root=str(tmp_path))
    spec = plan.sampler_spec()
    gauge = FuelGauge(node)
    command = wrap_with_sampler(spec, ["sleep", "3.5"], idle_s=config.idle_s)
    gauge.start()
    done = LocalTransport().run(command.argv, timeout_s=60)
    gauge.join()
    run = parse_sampler_output(done.stdout, spec, command.tag)
    assert done.rc == 0 and run.window is not None and run.idle_window is not None
    inferences = 350
    summary = summarize_power(plan, run, inferences)
    assert summary.stats is not None and summary.flags == ()
    start_s, end_s = run.window
    expected_per_inference = gauge.energy_mj(start_s, end_s) / inferences
    assert summary.stats.energy_per_inference_mj == pytest.approx(expected_per_inference, rel=0.02)
    # The pattern really changed inside the window: not a constant the test could pass by accident.
    assert 1000.0 < summary.stats.average_power_mw < 3000.0  # type: ignore[operator]
    assert summary.stats.idle_power_mw == pytest.approx(gauge.energy_mj(*run.idle_window)
                                                        / (run.idle_window[1] - run.idle_window[0]), rel=0.05)
