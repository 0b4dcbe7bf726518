"""`farmbench devices`: health of every configured device, checked in parallel against real peers -- this machine,
Debian's sshd on loopback (tests/peers/sshd.py) and the ADB device emulator (tests/peers/adb_emulator.py).

Battery and thermal files are files these tests write under a device's ``sysfs_root``; a "running farmbench agent"
is a real process whose command line is ``python <work dir>/<hash>/agent.py ...``, which is what the agent runner
starts on a board."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from farmbench.devices.config import load_device_file
from farmbench.devices.health import check_device, check_devices
from farmbench.transports.adb import PID_DIR, AdbTarget, AdbTransport, load_or_create_key
from tests.conftest import cli_command, cli_env, describe
from tests.peers.adb_emulator import AdbEmulator
from tests.peers.sshd import SshdPeer, keygen, openssh_fingerprint

EmulatorFactory = Callable[..., AdbEmulator]


def devices_cli(*args: str | Path, device_dir: Path, timeout_s: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    """``farmbench devices ARGS`` as a real process over the device files in ``device_dir``, timed. No ssh-agent:
    the device files say which key to use."""
    env = cli_env(extra={"FARMBENCH_DEVICE_DIR": str(device_dir)})
    env.pop("SSH_AUTH_SOCK", None)
    started = time.monotonic()
    proc = subprocess.run(cli_command("devices", *args), env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    return proc, time.monotonic() - started


def by_name(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    try:
        return {entry["name"]: entry for entry in json.loads(proc.stdout)}
    except ValueError:
        raise AssertionError(f"no JSON on stdout\n{describe(proc)}") from None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fake_sysfs(root: Path, *, zones: dict[str, int], battery: dict[str, str] | None = None) -> Path:
    """Thermal zones (type -> m°C) and a battery supply under ``root``, laid out like /sys."""
    for number, (zone_type, millicelsius) in enumerate(zones.items()):
        zone = root / "class" / "thermal" / f"thermal_zone{number}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(zone_type + "\n")
        (zone / "temp").write_text(f"{millicelsius}\n")
    if battery is not None:
        supply = root / "class" / "power_supply" / "BAT0"
        supply.mkdir(parents=True)
        for name, value in battery.items():
            (supply / name).write_text(value + "\n")
    # A mains supply has no capacity and must not be taken for the battery.
    mains = root / "class" / "power_supply" / "AC"
    mains.mkdir(parents=True, exist_ok=True)
    (mains / "type").write_text("Mains\n")
    (mains / "online").write_text("1\n")
    return root


class FakeAgent:
    """A real process whose command line is what the agent runner starts: ``python <work>/<hash16>/agent.py bench``.
    It sleeps until stopped."""

    def __init__(self, work_dir: Path) -> None:
        agent = work_dir / uuid.uuid4().hex[:16] / "agent.py"
        agent.parent.mkdir(parents=True)
        agent.write_text("import time\ntime.sleep(120)\n")
        self.process = subprocess.Popen([sys.executable, str(agent), "bench", "--model", "m.tflite"])
        # The process exists at once; its command line is set by exec(), which has happened once /proc shows it.
        deadline = time.monotonic() + 10
        while str(agent) not in Path(f"/proc/{self.process.pid}/cmdline").read_bytes().decode(errors="replace"):
            assert time.monotonic() < deadline, "the fake agent did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def fake_agent() -> Iterator[Callable[[Path], FakeAgent]]:
    started: list[FakeAgent] = []

    def start(work_dir: Path) -> FakeAgent:
        agent = FakeAgent(work_dir)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


# --- this machine ----------------------------------------------------------------------------------------------


def local_file(directory: Path, name: str, sysfs: Path, work_dir: Path) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(f'kind = "local"\nname = "{name}"\nsysfs_root = "{sysfs}"\ncache_dir = "{work_dir}"\n')
    return path


def test_local_device_online_with_battery_and_hottest_zone(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path / "sys", zones={"acpitz": 38000, "x86_pkg_temp": 61500, "broken": -273000},
                       battery={"type": "Battery", "capacity": "64", "status": "Discharging"})
    devices = tmp_path / "device_configs"
    devices.mkdir()
    local_file(devices, "local", sysfs, tmp_path / "work")
    proc, _ = devices_cli("--json", device_dir=devices)
    assert proc.returncode == 0, describe(proc)
    (entry,) = json.loads(proc.stdout)
    assert entry["status"] == "online" and entry["address"] == "this machine"
    assert (entry["battery_percent"], entry["battery_status"]) == (64, "Discharging")
    assert (entry["max_temp_c"], entry["max_temp_zone"]) == (61.5, "x86_pkg_temp")

    table, _ = devices_cli(device_dir=devices)
    assert table.returncode == 0, describe(table)
    header, _rule, row = table.stdout.splitlines()[:3]
    assert header.split() == ["device", "kind", "address", "status", "battery", "hottest", "zone", "detail"]
    assert row.split()[:9] == ["local", "local", "this", "machine", "online", "64%", "discharging", "61.5", "C"]

    listing, _ = devices_cli("--no-check", device_dir=devices)  # the file-only listing, as before
    assert listing.returncode == 0 and "config" in listing.stdout.splitlines()[0], describe(listing)


def test_local_device_busy_while_a_farmbench_agent_runs_there(tmp_path: Path,
                                                             fake_agent: Callable[[Path], FakeAgent]) -> None:
    devices = tmp_path / "device_configs"
    devices.mkdir()
    work = tmp_path / "work dir; with $(spaces)"  # the work directory is matched literally
    local_file(devices, "local", fake_sysfs(tmp_path / "sys", zones={}), work)
    other = fake_agent(tmp_path / "another-work-dir")  # someone else's agent is not this device's business
    proc, _ = devices_cli("--json", device_dir=devices)
    assert proc.returncode == 0 and by_name(proc)["local"]["status"] == "online", describe(proc)

    agent = fake_agent(work)
    busy, _ = devices_cli(device_dir=devices)
    assert busy.returncode == 1, describe(busy)
    assert f"local: busy: a farmbench agent is running there (pid {agent.process.pid})" in busy.stdout, describe(busy)
    assert f"running: {agent.process.pid} {sys.executable} {work}/" in busy.stdout
    assert str(other.process.pid) not in busy.stdout

    agent.stop()
    after, _ = devices_cli("--json", device_dir=devices)
    assert after.returncode == 0 and by_name(after)["local"]["status"] == "online", describe(after)


# --- SSH boards --------------------------------------------------------------------------------------------------


def board_file(directory: Path, sshd: SshdPeer, name: str, *, known_hosts: Path, key_file: Path | None = None,
               port: int | None = None, sysfs: Path | None = None, work_dir: Path | None = None,
               connect_timeout_s: float = 3) -> Path:
    path = directory / f"{name}.toml"
    ssh_config = directory / "empty_ssh_config"
    ssh_config.touch()
    path.write_text(textwrap.dedent(f"""\
        kind = "ssh"
        host = "{sshd.host}"
        port = {port or sshd.port}
        user = "{sshd.user}"
        key_file = "{key_file or sshd.client_key}"
        known_hosts = "{known_hosts}"
        ssh_config = "{ssh_config}"
        connect_timeout_s = {connect_timeout_s}
        sysfs_root = "{sysfs or '/sys'}"
        cache_dir = "{work_dir or directory / f'work-{name}'}"
        """))
    return path


def test_ssh_boards_online_unauthorized_and_offline_in_one_parallel_check(sshd: SshdPeer, tmp_path: Path) -> None:
    devices = tmp_path / "device_configs"
    devices.mkdir()
    known = sshd.write_known_hosts(tmp_path / "known_hosts")
    changed = sshd.write_known_hosts(tmp_path / "known_hosts_changed", sshd.other_key_line)
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    stranger = tmp_path / "stranger_ed25519"
    keygen(stranger, "farmbench-test-not-authorized")
    closed_port = free_port()
    sysfs = fake_sysfs(tmp_path / "board-sys", zones={"cpu-thermal": 47250, "gpu-thermal": 45000})
    # This machine is checked too; its own work directory keeps other farmbench runs here out of the picture.
    local_file(devices, "local", fake_sysfs(tmp_path / "sys", zones={}), tmp_path / "local-work")
    board_file(devices, sshd, "board", known_hosts=known, sysfs=sysfs)
    board_file(devices, sshd, "wrong-key", known_hosts=known, key_file=stranger)
    board_file(devices, sshd, "new-host", known_hosts=empty)
    board_file(devices, sshd, "changed-host", known_hosts=changed)
    board_file(devices, sshd, "closed", known_hosts=known, port=closed_port)

    proc, seconds = devices_cli("--json", device_dir=devices)
    assert proc.returncode == 1, describe(proc)
    found = by_name(proc)
    assert {name: entry["status"] for name, entry in found.items()} == {
        "local": "online", "board": "online", "wrong-key": "unauthorized", "new-host": "unauthorized",
        "changed-host": "unauthorized", "closed": "offline"}
    assert found["board"]["address"] == f"{sshd.user}@127.0.0.1:{sshd.port}"
    assert (found["board"]["max_temp_c"], found["board"]["max_temp_zone"]) == (47.25, "cpu-thermal")
    assert found["board"]["battery_percent"] is None  # no battery: nothing made up

    assert found["wrong-key"]["reason"] == "SSH authentication failed"
    assert str(stranger) in found["wrong-key"]["message"] and "ssh-copy-id" in found["wrong-key"]["hint"]
    fingerprint = openssh_fingerprint(sshd.host_public_key)
    assert found["new-host"]["reason"] == "host key unknown (not in known_hosts)"
    assert fingerprint in found["new-host"]["message"] and "--accept-new-host-key" in found["new-host"]["hint"]
    assert found["changed-host"]["reason"] == "host key changed (differs from known_hosts)"
    assert "does NOT match" in found["changed-host"]["message"]
    assert fingerprint in found["changed-host"]["message"]
    assert openssh_fingerprint(sshd.directory / "other_host_ed25519.pub") in found["changed-host"]["message"]
    assert f"127.0.0.1:{closed_port}" in found["closed"]["message"] and found["closed"]["hint"]
    assert found["closed"]["elapsed_s"] < 3, "offline within its connect_timeout_s"
    assert empty.read_text() == "", "a health check records no host key without the opt-in"
    assert seconds < 30, seconds

    table, _ = devices_cli(device_dir=devices)
    assert table.returncode == 1, describe(table)
    assert "changed-host: unauthorized: host key for" in table.stdout, describe(table)
    assert "  hint: if the board was reinstalled" in table.stdout
    assert f"closed: offline: 127.0.0.1:{closed_port} refused the connection" in table.stdout


def test_ssh_board_busy_while_an_agent_runs_in_its_work_dir(sshd: SshdPeer, tmp_path: Path,
                                                            fake_agent: Callable[[Path], FakeAgent]) -> None:
    work = tmp_path / "board-work"
    device = load_device_file(board_file(tmp_path, sshd, "board", known_hosts=sshd.write_known_hosts(
        tmp_path / "known_hosts"), work_dir=work))
    assert check_device(device).status == "online"
    agent = fake_agent(work)
    health = check_device(device)
    assert health.status == "busy", health
    assert health.reason == f"a farmbench agent is running there (pid {agent.process.pid})"
    (line,) = health.busy_with
    assert line.startswith(f"{agent.process.pid} {sys.executable} {work}/") and "agent.py bench" in line


def test_overall_timeout_bounds_a_device_that_never_answers(sshd: SshdPeer, tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts TCP, never sends an SSH banner
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        known = sshd.write_known_hosts(tmp_path / "known_hosts")
        wedged = load_device_file(board_file(tmp_path, sshd, "wedged", known_hosts=known,
                                             port=silent.getsockname()[1], connect_timeout_s=20))
        board = load_device_file(board_file(tmp_path, sshd, "board", known_hosts=known))
        started = time.monotonic()
        wedged_health, board_health = check_devices([wedged, board], timeout_s=6)
        elapsed_s = time.monotonic() - started
    assert elapsed_s < 8, elapsed_s  # not the wedged board's 20 s
    assert board_health.status == "online", board_health
    assert (wedged_health.status, wedged_health.reason) == ("offline", "no answer within 6 s")


def test_a_device_file_that_cannot_work_is_an_error(tmp_path: Path, sshd: SshdPeer) -> None:
    device = load_device_file(board_file(tmp_path, sshd, "nokey", known_hosts=tmp_path / "known_hosts",
                                         key_file=tmp_path / "missing_key"))
    health = check_device(device)
    assert health.status == "error"
    assert "does not exist" in health.reason and str(tmp_path / "missing_key") in health.reason


# --- phones (ADB emulator) ---------------------------------------------------------------------------------------


@pytest.fixture
def adb_key(tmp_path: Path) -> Path:
    path = tmp_path / "android" / "adbkey"
    load_or_create_key(path)
    return path


def phone_file(directory: Path, name: str, port: int, key: Path, *, sysfs: Path | None = None) -> Path:
    path = directory / f"{name}.toml"
    lines = ['kind = "adb"', 'host = "127.0.0.1"', f"port = {port}", f'key_file = "{key}"', "connect_timeout_s = 3"]
    if sysfs is not None:
        lines.append(f'sysfs_root = "{sysfs}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def test_phones_online_with_battery_unauthorized_and_offline(adb_emulator: EmulatorFactory, adb_key: Path,
                                                             tmp_path: Path) -> None:
    devices = tmp_path / "device_configs"
    devices.mkdir()
    allowed = adb_emulator(auth="accept", authorized_keys=[Path(f"{adb_key}.pub")])
    refusing = adb_emulator(auth="never")  # never accepts a signature, never answers the public key
    closed_port = free_port()
    local_file(devices, "local", fake_sysfs(tmp_path / "sys", zones={}), tmp_path / "local-work")
    phone_file(devices, "phone", allowed.port, adb_key)
    phone_file(devices, "refusing", refusing.port, adb_key)
    phone_file(devices, "gone", closed_port, adb_key)
    proc, seconds = devices_cli("--json", device_dir=devices)
    assert proc.returncode == 1, describe(proc)
    found = by_name(proc)
    phone = found["phone"]
    assert phone["status"] == "online" and phone["address"] == f"127.0.0.1:{allowed.port}"
    # The emulator's sandbox: /sys/class/power_supply/battery (87 %, Discharging, 31.2 °C), cpu-thermal at 41 °C.
    assert (phone["battery_percent"], phone["battery_status"], phone["battery_temp_c"]) == (87, "Discharging", 31.2)
    assert (phone["max_temp_c"], phone["max_temp_zone"]) == (41.0, "cpu-thermal")
    refused = found["refusing"]
    assert (refused["status"], refused["reason"]) == ("unauthorized", "ADB key not accepted (allow it on the phone)")
    assert "Allow USB debugging?" in refused["hint"]
    assert found["local"]["status"] == "online"
    gone = found["gone"]
    assert gone["status"] == "offline" and f"127.0.0.1:{closed_port}" in gone["message"]
    assert "adb tcpip 5555" in gone["hint"] and gone["elapsed_s"] < 3
    assert refused["elapsed_s"] < 3 + 3, "the Allow prompt is waited for at most connect_timeout_s"
    # Each phone's connect_timeout_s is 3 s and they are checked at once: the refusing one costs ~3 s, not 3 x 3.
    assert seconds < 15, seconds


def test_phone_battery_changes_are_seen(adb_emulator: EmulatorFactory, adb_key: Path, tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept", authorized_keys=[Path(f"{adb_key}.pub")])
    device = load_device_file(phone_file(tmp_path, "phone", emulator.port, adb_key))
    battery = emulator.sandbox / "sys/class/power_supply/battery"
    (battery / "capacity").write_text("12\n")
    (battery / "status").write_text("Charging\n")
    (emulator.sandbox / "sys/class/thermal/thermal_zone0/temp").write_text("78500\n")
    health = check_device(device)
    assert (health.status, health.battery_percent, health.battery_status) == ("online", 12, "Charging")
    assert health.max_temp_c == 78.5


def test_phone_sysfs_root_is_respected(adb_emulator: EmulatorFactory, adb_key: Path, tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept", authorized_keys=[Path(f"{adb_key}.pub")])
    sysfs = fake_sysfs(tmp_path / "elsewhere", zones={"soc_therm": 55000},
                       battery={"type": "Battery", "capacity": "33", "status": "Not charging"})
    health = check_device(load_device_file(phone_file(tmp_path, "phone", emulator.port, adb_key, sysfs=sysfs)))
    assert (health.battery_percent, health.battery_status) == (33, "Not charging")
    assert (health.max_temp_zone, health.max_temp_c) == ("soc_therm", 55.0)


def test_phone_busy_while_another_farmbench_command_runs_on_it(adb_emulator: EmulatorFactory, adb_key: Path,
                                                              tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept", authorized_keys=[Path(f"{adb_key}.pub")])
    device = load_device_file(phone_file(tmp_path, "phone", emulator.port, adb_key))
    assert check_device(device).status == "online"
    pid_dir = emulator.device_path(PID_DIR)
    marker = f"farmbench-busy-{uuid.uuid4().hex[:8]}"
    with AdbTransport(AdbTarget(host="127.0.0.1", port=emulator.port, key_path=adb_key)) as other:
        # Another farmbench (its own connection) runs a long command on the phone.
        running = threading.Thread(target=other.run, args=(["sh", "-c", "sleep 6", marker],),
                                   kwargs={"timeout_s": 30})
        running.start()
        deadline = time.monotonic() + 10
        while not (pid_dir.is_dir() and any(pid_dir.iterdir())):
            assert time.monotonic() < deadline, "the other command did not register its PID"
            time.sleep(0.05)
        health = check_device(device)
        running.join()
    assert health.status == "busy", health
    assert health.reason.startswith("another farmbench command is running on the phone (pid ")
    (line,) = health.busy_with
    assert line.split(" ", 1)[1] == f"sh -c 'sleep 6' {marker}", line  # the command, without farmbench's wrapper
    assert check_device(device).status == "online"  # the PID file went with the command


# What `dumpsys battery` prints on Android 14 (a Pixel on USB), the fallback when power_supply is not readable.
DUMPSYS_BATTERY = """\
Current Battery Service state:
  AC powered: false
  USB powered: true
  Wireless powered: false
  Dock powered: false
  Max charging current: 500000
  Max charging voltage: 5000000
  Charge counter: 2905000
  status: 2
  health: 2
  present: true
  level: 73
  scale: 100
  voltage: 4187
  temperature: 285
  technology: Li-ion
"""


def test_phone_without_readable_power_supply_falls_back_to_dumpsys(adb_emulator: EmulatorFactory, adb_key: Path,
                                                                   tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept", authorized_keys=[Path(f"{adb_key}.pub")])
    for name in ("capacity", "status", "temp"):
        (emulator.sandbox / "sys/class/power_supply/battery" / name).unlink()
    dumpsys = emulator.sandbox / "system/bin/dumpsys"
    dumpsys.write_text(f'#!/bin/sh\n[ "$1" = battery ] || exit 1\ncat <<"END"\n{DUMPSYS_BATTERY}END\n')
    dumpsys.chmod(0o755)
    health = check_device(load_device_file(phone_file(tmp_path, "phone", emulator.port, adb_key)))
    assert (health.battery_percent, health.battery_status, health.battery_temp_c) == (73, "Charging", 28.5)


def test_a_port_that_answers_but_not_in_adb_is_offline_with_the_reason(adb_key: Path, tmp_path: Path) -> None:
    with socket.socket() as server:  # an HTTP server where the phone was expected
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        port = server.getsockname()[1]
        health = check_device(load_device_file(phone_file(tmp_path, "phone", port, adb_key)))
    assert health.status == "offline", health
    assert health.reason.startswith(f"127.0.0.1:{port} answered, but not in ADB"), health.reason
    assert "adb tcpip 5555" in health.hint
