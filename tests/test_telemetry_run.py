"""Power and thermal telemetry in real runs, on every transport: this machine (``kind = "local"``), an SSH board (the
loopback sshd) and an Android phone (the ADB emulator, whose benchmark_model stand-in runs LiteRT for real).

Rails and zones are files: ``sysfs_root`` points local and SSH devices at a directory the test owns; the emulator
maps the phone's ``/sys/class`` onto its sandbox. While `farmbench run` goes, threads here rewrite them:

* a fuel gauge (``current_now`` at a fixed ``voltage_now``) alternates between two power levels; the energy per
  inference farmbench stores must be within 2% of the integral of what the thread wrote over the record's own
  timed window, divided by its inference count;
* a thermal zone starts hot and is cooled once the device is ready: the cooldown gate must wait for it;
* a ``status`` file saying Charging flags the record ``charging``; a zone over its passive trip point flags it
  ``throttled``.

And ``farmbench calibrate-power`` on the emulator, whose battery a thread drives from the real busy loop's processes,
detects a phone reporting mA with the current positive while discharging.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farmbench.results.store import ResultStore
from farmbench.runners.telemetry import WINDOW_AGENT, WINDOW_APPROXIMATE
from farmbench.telemetry.power import integrate_held, load_calibration_state
from tests.conftest import GRID_FLAGS, BuiltGrid, cli_command, cli_env, describe, require_module
from tests.peers.benchmark_model_standin import install as install_benchmark_model
from tests.peers.ort_perf_test_standin import install as install_ort_perf_test
from tests.test_run import (
    Board,
    board,  # noqa: F401  (the module-scoped fixture, reused)
)

ONE_ITEM = (*GRID_FLAGS, "--quant", "fp32", "--format", "tflite", "--repeats", "1", "--no-drift",
            "--runs", "20", "--min-s", "0", "--max-s", "30", "--warmup-runs", "1", "--warmup-min-s", "0")
MIN_WINDOW_S = 3.0
VOLTS = 4.0
LEVELS_MW = (1500.0, 2500.0)
LEVEL_PERIOD_S = 0.8

POWER_TABLE = textwrap.dedent(f"""\
    [power]
    source = "android-battery"
    rate_hz = 50
    idle_s = 0.5
    min_window_s = {MIN_WINDOW_S}
    current_unit = "uA"
    voltage_unit = "uV"
    discharge_sign = "negative"
    """)
GATE_TABLE = textwrap.dedent("""\
    [thermal]
    zones = ["cpu*"]
    cooldown_c = 45
    poll_s = 0.2
    max_wait_s = 60
    """)


def boottime_s() -> float:
    """CLOCK_BOOTTIME: what /proc/uptime (the sampler's stamps) and the agent's timed window use."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def write_atomically(path: Path, text: str) -> None:
    """Replace a file's content in one step, as a sysfs attribute changes: a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text + "\n")
    os.replace(temporary, path)


@dataclass(frozen=True)
class Sysfs:
    """The files of a device's sysfs that telemetry reads, under ``root`` (``<root>/class/...``)."""

    root: Path

    @property
    def battery(self) -> Path:
        return self.root / "class" / "power_supply" / "battery"

    @property
    def zone(self) -> Path:
        return self.root / "class" / "thermal" / "thermal_zone0"

    def lay_out(self, *, status: str = "Discharging", temp_mc: int = 40000,
                passive_trip_mc: int | None = None) -> Sysfs:
        write_atomically(self.battery / "voltage_now", str(round(VOLTS * 1e6)))
        write_atomically(self.battery / "current_now", str(-round(LEVELS_MW[0] / VOLTS * 1000)))
        write_atomically(self.battery / "status", status)
        write_atomically(self.zone / "type", "cpu-thermal")
        write_atomically(self.zone / "temp", str(temp_mc))
        if passive_trip_mc is not None:
            write_atomically(self.zone / "trip_point_0_type", "passive")
            write_atomically(self.zone / "trip_point_0_temp", str(passive_trip_mc))
        return self


class FuelGauge(threading.Thread):
    """Alternates the battery's power between LEVELS_MW every LEVEL_PERIOD_S (current in µA, negative while
    discharging, at VOLTS) and logs each change on CLOCK_BOOTTIME, until stopped."""

    def __init__(self, sysfs: Sysfs) -> None:
        super().__init__(daemon=True)
        self.sysfs = sysfs
        self.changes: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self._set(LEVELS_MW[0])

    def _set(self, power_mw: float) -> None:
        write_atomically(self.sysfs.battery / "current_now", str(-round(power_mw / VOLTS * 1000)))
        self.changes.append((boottime_s(), power_mw))

    def run(self) -> None:
        level = 0
        next_s = time.monotonic() + LEVEL_PERIOD_S
        while not self.stop.wait(max(0.0, next_s - time.monotonic())):
            level = 1 - level
            self._set(LEVELS_MW[level])
            next_s += LEVEL_PERIOD_S

    def energy_mj(self, start_s: float, end_s: float) -> float:
        return integrate_held([t for t, _ in self.changes], [p for _, p in self.changes], start_s, end_s)


@dataclass
class LiveRun:
    """`farmbench run` as a real process whose progress lines are read as they come, so a test can act when the
    device is ready (the cooldown gate starts right after)."""

    proc: subprocess.Popen[str]
    ready: threading.Event
    lines: list[str]

    @classmethod
    def start(cls, args: Sequence[str | Path], cache: Path) -> LiveRun:
        env = cli_env(cache, None)
        env.pop("SSH_AUTH_SOCK", None)  # the device files say which key to use
        proc = subprocess.Popen(cli_command(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=Path(__file__).resolve().parents[1])
        live = cls(proc, threading.Event(), [])
        threading.Thread(target=live._pump, daemon=True).start()
        return live

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if ": ready (" in line:
                self.ready.set()
        self.ready.set()  # the process ended: nobody waits forever

    def finish(self, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        assert self.proc.stdout is not None
        stdout = self.proc.stdout.read()
        rc = self.proc.wait(timeout=timeout_s)
        time.sleep(0.1)  # the pump's last lines
        return subprocess.CompletedProcess(self.proc.args, rc, stdout, "".join(self.lines))


def cool_when_ready(live: LiveRun, sysfs: Sysfs, after_s: float = 2.0) -> threading.Thread:
    """Cool the hot zone to 40 °C ``after_s`` seconds after the device is ready."""
    def cool() -> None:
        live.ready.wait(timeout=600)
        time.sleep(after_s)
        write_atomically(sysfs.zone / "temp", "40000")

    thread = threading.Thread(target=cool, daemon=True)
    thread.start()
    return thread


def only_record(db: Path) -> Any:
    with ResultStore(db, create=False) as store:
        (record,) = store.measurements()
        frame = store.frame()
    assert len(frame) == 1
    return record, frame.iloc[0]


@pytest.fixture(scope="module")
def cache(built_grid: BuiltGrid, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_grid.copy(tmp_path_factory.mktemp("telemetry-cache") / "cache")


# --- device files, one kind of transport each --------------------------------------------------------------------


class Devices:
    """Device files for the three transports, each with its sysfs (``sysfs_root`` or the emulator's sandbox)."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.request = request
        self.tmp = tmp_path_factory

    def make(self, transport: str, tables: str, *, onnx: bool = False) -> tuple[Path, Sysfs]:
        directory = self.tmp.mktemp(f"{transport}-device")
        if transport == "adb":
            emulator = self.request.getfixturevalue("adb_emulator")(auth="accept-new")
            binary = install_benchmark_model(directory / "tools" / "benchmark_model")
            ort = (f'onnxruntime_perf_test = "{install_ort_perf_test(directory / "tools" / "ort_perf_test")}"\n'
                   if onnx else "")
            path = directory / "phone.toml"
            path.write_text(f'kind = "adb"\nhost = "127.0.0.1"\nport = {emulator.port}\n'
                            f'key_file = "{directory / "keys" / "adbkey"}"\nbenchmark_model = "{binary}"\n'
                            f"{ort}connect_timeout_s = 5\n\n{tables}")
            return path, Sysfs(emulator.sandbox / "sys")
        sysfs = Sysfs(directory / "sys")
        if transport == "local":
            path = directory / "tele-local.toml"
            path.write_text(f'kind = "local"\ncache_dir = "{directory / "device-cache"}"\n'
                            f'sysfs_root = "{sysfs.root}"\n\n{tables}')
        else:
            board: Board = self.request.getfixturevalue("board")  # the sshd only for the SSH cases
            path = board.device_file(f"tele-board-{directory.name}")
            path.write_text(path.read_text() + f'sysfs_root = "{sysfs.root}"\n\n{tables}')
        return path, sysfs


@pytest.fixture
def devices(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Devices:
    return Devices(request, tmp_path_factory)


TRANSPORTS = ("local", "ssh", "adb")


# --- the tests ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_energy_per_inference_and_the_cooldown_gate(transport: str, devices: Devices, cache: Path,
                                                    tmp_path: Path) -> None:
    device, sysfs = devices.make(transport, POWER_TABLE + "\n" + GATE_TABLE)
    sysfs.lay_out(temp_mc=70000)
    gauge = FuelGauge(sysfs)
    gauge.start()
    db = tmp_path / "results.db"
    try:
        live = LiveRun.start(("run", *ONE_ITEM, "--device", device, "--db", db), cache)
        cooler = cool_when_ready(live, sysfs)
        proc = live.finish()
        cooler.join(timeout=10)
    finally:
        gauge.stop.set()
        gauge.join(timeout=10)
    assert proc.returncode == 0, describe(proc)
    record, row = only_record(db)
    assert record.status == "ok", record.error_message

    # Power over the record's own timed window, against what the gauge wrote there.
    power = record.power
    assert power is not None and "error" not in power, power
    start_s, end_s = power["window_start_s"], power["window_end_s"]
    inferences = power["inferences"]
    expected_mj = gauge.energy_mj(start_s, end_s) / inferences
    assert power["energy_per_inference_mj"] == pytest.approx(expected_mj, rel=0.02), (power, gauge.changes)
    assert row["energy_per_inference_mj"] == pytest.approx(power["energy_per_inference_mj"])
    assert LEVELS_MW[0] < row["avg_power_mw"] < LEVELS_MW[1]  # both levels inside the window: not a constant
    assert power["idle_power_mw"] is not None and pd_number(row["energy_above_idle_mj"])
    in_window = [mw for t_s, mw in record.power_samples if start_s <= t_s <= end_s]
    assert min(in_window) == pytest.approx(LEVELS_MW[0]) and max(in_window) == pytest.approx(LEVELS_MW[1])
    assert power["flags"] == [] and not {"charging", "few_power_samples", "power_uncalibrated"} & set(record.flags)
    assert end_s - start_s >= MIN_WINDOW_S * 0.99  # the timed phase was stretched to the power window
    assert record.config["min_s"] == MIN_WINDOW_S and record.config["power_min_window_s"] == MIN_WINDOW_S
    assert record.config["requested_min_s"] == 0.0
    process_start, process_end = power["process_window_s"]
    assert process_start - 0.011 <= start_s < end_s <= process_end + 0.011
    if transport == "adb":
        assert power["window_source"] == WINDOW_APPROXIMATE and inferences == record.latency.n
    else:
        assert power["window_source"] == WINDOW_AGENT and inferences == record.context["timed_runs"]

    # The cooldown gate waited for the zone the test cooled, and the temperatures around the run were kept.
    thermal = record.thermal
    assert thermal is not None and thermal["gate"] == "on" and not thermal["errors"], thermal
    (zone,) = thermal["zones"].values()
    assert zone["gate_start_c"] == 70.0 and zone["before_c"] == 40.0 and zone["after_c"] == 40.0, thermal
    # At least one hot reading and the cool one; how many polls fit in the wait depends on the machine's load.
    assert thermal["waited_s"] >= 0.5 and not thermal["timed_out"] and thermal["polls"] >= 2
    assert row["max_temp_before_c"] == 40.0 and row["max_temp_after_c"] == 40.0
    assert not thermal["throttled"] and "hot_before_run" not in record.flags and "throttled" not in record.flags
    assert thermal["thermalservice_before"] is None  # the emulator has no dumpsys: not an error
    assert "cooldown gate on" in proc.stderr and "power from android-battery" in proc.stderr
    # `farmbench results` shows them: average power, energy per inference, temperatures before > after.
    shown = subprocess.run(cli_command("results", "--db", db), env=cli_env(cache, None), capture_output=True,
                           text=True, timeout=120, check=False)
    assert shown.returncode == 0, describe(shown)
    assert f"{row['avg_power_mw']:.0f}" in shown.stdout and f"{row['energy_per_inference_mj']:.3f}" in shown.stdout
    assert "40>40" in shown.stdout, shown.stdout


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_charging_and_a_zone_over_its_trip_point_are_flagged(transport: str, devices: Devices, cache: Path,
                                                             tmp_path: Path) -> None:
    # No [thermal] table: the gate only observes (nothing waits), temperatures and throttling are still recorded.
    device, sysfs = devices.make(transport, POWER_TABLE.replace(f"min_window_s = {MIN_WINDOW_S}", "min_window_s = 1"))
    sysfs.lay_out(status="Charging", temp_mc=50000, passive_trip_mc=45000)
    db = tmp_path / "results.db"
    started = time.monotonic()
    proc = subprocess.run(cli_command("run", *ONE_ITEM, "--device", device, "--db", db), env=cli_env(cache, None),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, describe(proc)
    record, _ = only_record(db)
    assert record.status == "ok", record.error_message
    assert "charging" in record.flags and "charging" in record.power["flags"]
    assert "throttled" in record.flags and "hot_before_run" not in record.flags
    thermal = record.thermal
    assert thermal["gate"].startswith("observe") and thermal["waited_s"] < 1.0 and not thermal["timed_out"]
    assert any("passive trip point 45" in reason for reason in thermal["throttle_reasons"]), thermal
    assert thermal["max_temp_before_c"] == 50.0
    assert time.monotonic() - started < 300


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_probe_shows_the_thermal_zones_and_the_power_source(transport: str, devices: Devices,
                                                            tmp_path: Path) -> None:
    device, sysfs = devices.make(transport, POWER_TABLE + GATE_TABLE)
    sysfs.lay_out(temp_mc=41500)
    proc = subprocess.run(cli_command("devices", "--probe", "-d", device), env=cli_env(tmp_path / "cache", None),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, describe(proc)
    lines = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert lines["thermal"] == "cpu-thermal 41.5 C; cooldown gate on", proc.stdout
    assert lines["power"].startswith("android-battery (") and "at 50 Hz; timed runs >= 3 s" in lines["power"]
    # A power source the device does not have: the probe says why, and still succeeds.
    (sysfs.battery / "current_now").unlink()
    (sysfs.battery / "voltage_now").unlink()
    as_json = subprocess.run(cli_command("devices", "--probe", "--json", "-d", device),
                             env=cli_env(tmp_path / "cache", None), capture_output=True, text=True, timeout=120,
                             check=False)
    assert as_json.returncode == 0, describe(as_json)
    report = json.loads(as_json.stdout)[0]
    assert report["telemetry"]["thermal_zones"] == [{"zone": "thermal_zone0", "type": "cpu-thermal", "temp_c": 41.5}]
    assert report["summary"]["power"].startswith("android-battery: unavailable"), report["summary"]


@pytest.mark.slow
def test_onnx_under_the_sampler_and_a_cooldown_gate_that_gives_up(devices: Devices, cache: Path,
                                                                  tmp_path: Path) -> None:
    # ONNX files on the phone (onnxruntime_perf_test, which cannot be given a minimum duration) and on this machine
    # (the agent with ONNX Runtime), in one run, the devices in parallel. This machine's zone stays hot past the
    # gate's max_wait_s: the measurement goes ahead, flagged.
    require_module("onnxruntime")
    phone, phone_sysfs = devices.make("adb", POWER_TABLE, onnx=True)
    local, local_sysfs = devices.make("local", POWER_TABLE + "\n" + GATE_TABLE.replace("max_wait_s = 60",
                                                                                      "max_wait_s = 0.5"))
    phone_sysfs.lay_out()
    local_sysfs.lay_out(temp_mc=70000)
    db = tmp_path / "results.db"
    args = [*GRID_FLAGS, "--quant", "fp32", "--format", "onnx", "--repeats", "1", "--no-drift", "--runs", "200",
            "--min-s", "0", "--max-s", "30", "--warmup-runs", "1", "--warmup-min-s", "0"]
    proc = subprocess.run(cli_command("run", *args, "--device", phone, "--device", local, "--db", db),
                          env=cli_env(cache, None), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, describe(proc)
    with ResultStore(db, create=False) as store:
        by_runtime = {record.runtime: record for record in store.measurements()}
    on_phone, here = by_runtime["onnxruntime_perf_test"], by_runtime["onnxruntime"]
    assert on_phone.status == "ok" and here.status == "ok", (on_phone.error_message, here.error_message)

    power = on_phone.power
    assert power is not None and power["window_source"] == WINDOW_APPROXIMATE and power["inferences"] == 200
    assert on_phone.samples_us is not None and len(on_phone.samples_us) == 200
    assert power["window_end_s"] - power["window_start_s"] == pytest.approx(sum(on_phone.samples_us) / 1e6)
    assert power["average_power_mw"] == pytest.approx(LEVELS_MW[0])  # the gauge holds its first level here
    assert "power_min_window_s" not in on_phone.config and on_phone.config["min_s"] == 0.0

    assert here.power is not None and here.power["window_source"] == WINDOW_AGENT
    assert here.power["window_end_s"] - here.power["window_start_s"] >= MIN_WINDOW_S * 0.99
    thermal = here.thermal
    assert thermal["timed_out"] and thermal["hot"] == ["thermal_zone0:cpu-thermal"] and thermal["waited_s"] >= 0.5
    assert "hot_before_run" in here.flags and thermal["max_temp_before_c"] == 70.0


@pytest.mark.slow
def test_calibrate_power_detects_milliamps_and_an_inverted_sign_on_the_emulated_phone(
        adb_emulator: Any, cache: Path, tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept-new")
    battery = emulator.sandbox / "sys" / "class" / "power_supply" / "battery"
    # This phone reports mA and mV, and its current is positive while discharging (like a Mi A1 in mA).
    write_atomically(battery / "voltage_now", "3950")
    write_atomically(battery / "current_now", "400")
    stop = threading.Event()

    def busy_loop_running() -> bool:
        # The busy loop's shell has farmbench-busy as its $0, a whole argument; the shells around it (the sampler,
        # ADB's wrapper) only carry that text inside their scripts.
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if b"farmbench-busy" in (entry / "cmdline").read_bytes().split(b"\0"):
                        return True
                except OSError:
                    continue
        return False

    def drive_battery() -> None:
        tick = 0
        while not stop.wait(0.02):
            tick += 1
            draw_ma = (1500 if busy_loop_running() else 400) + tick % 7
            write_atomically(battery / "current_now", str(draw_ma))

    device = tmp_path / "mi-phone.toml"
    device.write_text(f'kind = "adb"\nhost = "127.0.0.1"\nport = {emulator.port}\n'
                      f'key_file = "{tmp_path / "keys" / "adbkey"}"\n'
                      f'benchmark_model = "{install_benchmark_model(tmp_path / "tools" / "benchmark_model")}"\n\n'
                      '[power]\nsource = "android-battery"\nrate_hz = 20\nidle_s = 0.5\nmin_window_s = 2\n')
    driver = threading.Thread(target=drive_battery, daemon=True)
    driver.start()
    try:
        # On a charger the battery current does not measure the phone: calibration refuses (a device failure).
        write_atomically(battery / "status", "Charging")
        refused = subprocess.run(cli_command("calibrate-power", device, "--rest-s", "1.5", "--busy-s", "1.5",
                                             "--workers", "1"),
                                 env=cli_env(None, None), capture_output=True, text=True, timeout=120, check=False)
        assert refused.returncode == 1 and "charging" in refused.stderr, describe(refused)
        assert not (tmp_path / "mi-phone.power.toml").exists()
        write_atomically(battery / "status", "Discharging")
        command = cli_command("calibrate-power", device, "--rest-s", "3", "--busy-s", "3", "--workers", "2")
        calibrated = subprocess.run(command, env=cli_env(None, None), capture_output=True, text=True, timeout=120,
                                    check=False)
        assert calibrated.returncode == 0, describe(calibrated)
        state_file = tmp_path / "mi-phone.power.toml"
        state = load_calibration_state(state_file)
        assert (state["current_unit"], state["voltage_unit"], state["discharge_sign"]) == ("mA", "mV", "positive")
        assert "current_unit = mA" in calibrated.stdout and "discharge_sign = positive" in calibrated.stdout
        assert str(state_file) in calibrated.stdout
        assert state["evidence"]["busy_draw_ma"] == pytest.approx(1503, abs=10)

        # The next run reads the state file from beside the device file: calibrated, positive power.
        db = tmp_path / "results.db"
        proc = subprocess.run(cli_command("run", *ONE_ITEM, "--device", device, "--db", db),
                              env=cli_env(cache, None), capture_output=True, text=True, timeout=600, check=False)
    finally:
        stop.set()
        driver.join(timeout=5)
    assert proc.returncode == 0, describe(proc)
    record, row = only_record(db)
    assert record.power["calibrated"] and "power_uncalibrated" not in record.flags
    assert row["avg_power_mw"] == pytest.approx(403 * 3.95, rel=0.02)


def test_calibrate_power_refuses_what_it_cannot_calibrate(tmp_path: Path) -> None:
    no_power = tmp_path / "plain.toml"
    no_power.write_text('kind = "adb"\nhost = "127.0.0.1"\n')
    proc = subprocess.run(cli_command("calibrate-power", no_power), env=cli_env(None, None), capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "no [power] table" in proc.stderr, describe(proc)
    rapl = tmp_path / "rapl.toml"
    rapl.write_text('kind = "local"\n[power]\nsource = "rapl"\n')
    proc = subprocess.run(cli_command("calibrate-power", rapl), env=cli_env(None, None), capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "android-battery" in proc.stderr, describe(proc)
    with socket.socket() as probe:  # a port nothing listens on: the phone is unreachable, exit 1
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    offline = tmp_path / "offline.toml"
    offline.write_text(f'kind = "adb"\nhost = "127.0.0.1"\nport = {port}\nconnect_timeout_s = 2\n'
                       f'key_file = "{tmp_path / "adbkey"}"\n\n[power]\nsource = "android-battery"\n')
    proc = subprocess.run(cli_command("calibrate-power", offline), env=cli_env(None, None), capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 1 and f"127.0.0.1:{port}" in proc.stderr, describe(proc)
    broken = tmp_path / "broken.toml"
    broken.write_text('kind = "adb"\nhost = "127.0.0.1"\n\n[power]\nsource = "android-batery"\n')
    proc = subprocess.run(cli_command("calibrate-power", broken), env=cli_env(None, None), capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2 and f"{broken}:5: power.source" in proc.stderr, describe(proc)
    assert "did you mean 'android-battery'" in proc.stderr


def test_device_file_telemetry_tables_and_sysfs_root(tmp_path: Path) -> None:
    from farmbench.devices.config import load_device_file
    from farmbench.errors import ConfigError

    device = tmp_path / "pi.toml"
    device.write_text('kind = "ssh"\nhost = "pi"\nsysfs_root = "/sys"\n\n[power]\nsource = "command"\n'
                      'command = "vcgencmd pmic_read_adc"\ncommand_output = "vcgencmd-pmic"\n\n'
                      '[thermal]\nzones = ["cpu-thermal"]\ncooldown_c = 50\n')
    loaded = load_device_file(device)
    assert loaded.power is not None and loaded.power.command_output == "vcgencmd-pmic"
    assert loaded.thermal is not None and loaded.thermal.zones == ("cpu-thermal",) and loaded.sysfs_root == "/sys"
    phone = tmp_path / "phone.toml"
    phone.write_text('kind = "adb"\nhost = "p"\n[power]\nsource = "android-battery"\n')
    assert load_device_file(phone).power.calibration == str(tmp_path / "phone.power.toml")  # type: ignore[union-attr]
    for text, line, key in (('kind = "local"\n[thermal]\ncooldown_c = "hot"\n', 3, "thermal.cooldown_c"),
                            ('kind = "local"\n[power]\nsource = "rapl"\nnode = "battery"\n', 4, "power.node"),
                            ('kind = "local"\nsysfs_root = "sys; rm -rf /"\n', 2, "sysfs_root"),
                            ('kind = "local"\n[powr]\nsource = "rapl"\n', 2, "powr")):
        device.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_device_file(device)
        assert (err.value.path, err.value.line, err.value.key) == (str(device), line, key), str(err.value)


def pd_number(value: Any) -> bool:
    import pandas as pd

    return value is not None and not pd.isna(value)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
