"""The ADB device emulator (tests/peers/adb_emulator.py) checked against real clients: Debian's ``adb`` (an
isolated adb server per test, with its own key and port) and the pure-Python adb-shell library."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_module
from tests.peers.adb_emulator import (
    A_AUTH,
    A_CLSE,
    A_CNXN,
    A_OKAY,
    A_OPEN,
    A_VERSION,
    A_WRTE,
    AUTH_TOKEN,
    HEADER,
    AdbEmulator,
    parse_adb_public_key,
    require_adb,
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class AdbClient:
    """Debian's adb with a private server (its own port, HOME and key), so nothing touches the user's adb."""

    binary: str
    env: dict[str, str]
    key: Path

    @property
    def public_key_line(self) -> str:
        return self.key.with_name("adbkey.pub").read_text().strip()

    def run(self, *args: str, serial: str | None = None, timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, *(["-s", serial] if serial else []), *args]
        proc = subprocess.run(argv, check=False, env=self.env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check:
            assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def state(self, serial: str) -> str | None:
        for line in self.run("devices").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == serial:
                return fields[1]
        return None

    def connect(self, emulator: AdbEmulator, expect: str = "device", timeout_s: float = 15) -> None:
        self.run("connect", emulator.serial, check=True)
        end = time.monotonic() + timeout_s
        state = None
        while time.monotonic() < end:
            state = self.state(emulator.serial)
            if state == expect:
                return
            time.sleep(0.1)
        pytest.fail(f"{emulator.serial} is {state!r}, expected {expect!r}; violations {emulator.violations}")


@pytest.fixture
def adb_client(tmp_path: Path) -> Iterator[AdbClient]:
    binary = require_adb()
    home = tmp_path / "adb-home"
    android = home / ".android"
    android.mkdir(parents=True)
    key = android / "adbkey"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADB_", "ANDROID_"))}
    env.update(HOME=str(home), ANDROID_USER_HOME=str(android), ANDROID_SDK_HOME=str(home),
               ANDROID_ADB_SERVER_PORT=str(_free_port()), ADB_VENDOR_KEYS=str(key))
    subprocess.run([binary, "keygen", str(key)], env=env, check=True, capture_output=True, timeout=30)
    client = AdbClient(binary, env, key)
    client.run("start-server", check=True)
    try:
        yield client
    finally:
        client.run("kill-server", timeout=15)


@pytest.fixture
def authorized(adb_client: AdbClient, adb_emulator: Callable[..., AdbEmulator]) -> Callable[..., AdbEmulator]:
    """An emulator that knows adb_client's key, already connected as ``device``."""

    def make(**options: object) -> AdbEmulator:
        emulator = adb_emulator(auth="accept", authorized_keys=[adb_client.public_key_line], **options)
        adb_client.connect(emulator)
        return emulator

    return make


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- Debian's adb client ----------------------------------------------------------------------------------------


def test_adb_shell_echo_exit_code_and_getprop(adb_client: AdbClient, authorized: Callable[..., AdbEmulator]) -> None:
    emulator = authorized()
    serial = emulator.serial
    assert adb_client.run("shell", "echo", "hi", serial=serial).stdout == "hi\n"
    assert adb_client.run("shell", "exit 3", serial=serial).returncode == 3
    assert adb_client.run("shell", "-x", "echo v1; exit 3", serial=serial).stdout == "v1\n"  # shell: (no v2)
    assert adb_client.run("exec-out", "echo exec", serial=serial).stdout == "exec\n"  # exec:
    proc = adb_client.run("shell", "echo out; echo err >&2; exit 0", serial=serial)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "out\n", "err\n")
    assert adb_client.run("shell", "getprop", "ro.product.model", serial=serial).stdout == "Farmbench Emulated Phone\n"
    listing = adb_client.run("shell", "getprop", serial=serial).stdout
    assert "[ro.product.device]: [emu]" in listing
    assert emulator.violations == []


def test_adb_shell_sees_the_sandbox(adb_client: AdbClient, authorized: Callable[..., AdbEmulator]) -> None:
    emulator = authorized()
    (emulator.sandbox / "sys/class/power_supply/battery/capacity").write_text("42\n")
    out = adb_client.run("shell", "cat /sys/class/power_supply/battery/capacity; "
                         "cat /sys/devices/system/cpu/cpu3/cpufreq/scaling_governor; "
                         "echo x > /data/local/tmp/made; ls /data/local/tmp",
                         serial=emulator.serial, check=True).stdout
    assert out.split() == ["42", "schedutil", "made"]
    assert (emulator.sandbox / "data/local/tmp/made").read_text() == "x\n"


@pytest.mark.parametrize("maxdata", [256 * 1024, 4096])
def test_adb_push_pull_byte_identical(adb_client: AdbClient, authorized: Callable[..., AdbEmulator], tmp_path: Path,
                                      maxdata: int) -> None:
    emulator = authorized(maxdata=maxdata)
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024))
    adb_client.run("push", str(source), "/data/local/tmp/blob.bin", serial=emulator.serial, check=True)
    assert _sha256(emulator.sandbox / "data/local/tmp/blob.bin") == _sha256(source)
    back = tmp_path / "back.bin"
    adb_client.run("pull", "/data/local/tmp/blob.bin", str(back), serial=emulator.serial, check=True)
    assert _sha256(back) == _sha256(source)
    # a missing file is a clean failure, not a hang
    missing = adb_client.run("pull", "/data/local/tmp/nope", str(tmp_path / "nope"), serial=emulator.serial)
    assert missing.returncode != 0
    assert emulator.violations == []
    if maxdata == 4096:  # nothing the emulator sent was larger than the negotiated maxdata
        assert max(entry[4] for entry in emulator.log if entry[0] == "send") <= 4096


def test_adb_unauthorized_when_the_device_never_answers(adb_client: AdbClient,
                                                        adb_emulator: Callable[..., AdbEmulator]) -> None:
    emulator = adb_emulator(auth="never")
    adb_client.connect(emulator, expect="unauthorized")
    assert adb_client.run("shell", "echo", "hi", serial=emulator.serial).returncode != 0


def test_adb_unknown_key_with_accept_is_unauthorized(adb_client: AdbClient,
                                                     adb_emulator: Callable[..., AdbEmulator]) -> None:
    adb_emulator(auth="accept")  # a second emulator nobody connects to must not matter
    emulator = adb_emulator(auth="accept")
    adb_client.connect(emulator, expect="unauthorized")


def test_adb_accept_new_remembers_the_key(adb_client: AdbClient, adb_emulator: Callable[..., AdbEmulator]) -> None:
    emulator = adb_emulator(auth="accept-new")
    adb_client.connect(emulator)
    assert adb_client.public_key_line.split()[0] in [line.split()[0] for line in emulator.authorized_keys]


# --- adb-shell (pure Python) ------------------------------------------------------------------------------------


def _adb_shell_device(emulator: AdbEmulator, tmp_path: Path, *, authorize: bool = True):  # type: ignore[no-untyped-def]
    require_module("adb_shell")
    from adb_shell.adb_device import AdbDeviceTcp
    from adb_shell.auth.keygen import keygen
    from adb_shell.auth.sign_pythonrsa import PythonRSASigner

    key = tmp_path / "pykey"
    keygen(str(key))
    if authorize:
        emulator.authorize(key.with_name("pykey.pub").read_text().strip())
    device = AdbDeviceTcp("127.0.0.1", emulator.port, default_transport_timeout_s=5.0)
    device.connect(rsa_keys=[PythonRSASigner.FromRSAKeyPath(str(key))], auth_timeout_s=3.0)
    return device


# adb-shell leaves Nagle on, so with a small maxdata every WRTE it sends waits out the emulator's delayed ACK
# (~40-90 ms each on Linux loopback, as it would against a real adbd): the small-maxdata case moves less data.
@pytest.mark.parametrize(("maxdata", "size"), [(256 * 1024, 1024 * 1024 + 17), (4096, 48 * 1024 + 17)])
def test_adb_shell_library_shell_push_pull(adb_emulator: Callable[..., AdbEmulator], tmp_path: Path, maxdata: int,
                                           size: int) -> None:
    emulator = adb_emulator(auth="accept", maxdata=maxdata)
    device = _adb_shell_device(emulator, tmp_path)
    try:
        assert device.shell("echo hi; getprop ro.product.name") == "hi\nfarmbench_emu\n"
        source = tmp_path / "blob.bin"
        source.write_bytes(os.urandom(size))
        device.push(str(source), "/data/local/tmp/sub/blob.bin")
        back = tmp_path / "back.bin"
        device.pull("/data/local/tmp/sub/blob.bin", str(back))
        assert _sha256(back) == _sha256(source)
        _mode, size, _mtime = device.stat("/data/local/tmp/sub/blob.bin")
        assert size == source.stat().st_size
    finally:
        device.close()
    assert emulator.violations == []


def test_adb_shell_library_rejected_without_key(adb_emulator: Callable[..., AdbEmulator], tmp_path: Path) -> None:
    require_module("adb_shell")
    emulator = adb_emulator(auth="accept")
    with pytest.raises(Exception):  # noqa: B017 - adb-shell raises its own timeout/auth errors
        _adb_shell_device(emulator, tmp_path, authorize=False)


# --- the wire, by hand ------------------------------------------------------------------------------------------


def _packet(command: int, arg0: int, arg1: int, payload: bytes = b"", checksum: bool = True) -> bytes:
    return HEADER.pack(command, arg0, arg1, len(payload), sum(payload) if checksum else 0,
                       command ^ 0xFFFFFFFF) + payload


def _read_packet(sock: socket.socket) -> tuple[int, int, int, bytes]:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    command, arg0, arg1, length, check, magic = HEADER.unpack(exact(HEADER.size))
    payload = exact(length)
    assert magic == command ^ 0xFFFFFFFF
    assert check == sum(payload) & 0xFFFFFFFF, "the emulator sends real checksums"
    return command, arg0, arg1, payload


def test_wire_banner_token_and_sync_straddling_packets(adb_emulator: Callable[..., AdbEmulator]) -> None:
    emulator = adb_emulator(auth="accept")
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as sock:
        sock.sendall(_packet(A_CNXN, A_VERSION, 4096, b"host::\0", checksum=False))
        command, kind, _, token = _read_packet(sock)
        assert (command, kind, len(token)) == (A_AUTH, AUTH_TOKEN, 20)
    emulator = adb_emulator(auth="none", maxdata=4096)
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as sock:
        sock.sendall(_packet(A_CNXN, A_VERSION, 4096, b"host::\0"))
        command, version, maxdata, banner = _read_packet(sock)
        assert (command, version, maxdata) == (A_CNXN, A_VERSION, 4096)
        assert banner.startswith(b"device::ro.product.name=farmbench_emu;") and b"shell_v2" in banner
        sock.sendall(_packet(A_OPEN, 7, 0, b"sync:\0"))
        command, remote, local, _ = _read_packet(sock)
        assert (command, local) == (A_OKAY, 7)
        content = b"hello sync"
        request = (b"SEND" + struct.pack("<I", len("/data/local/tmp/s.txt,33188")) + b"/data/local/tmp/s.txt,33188"
                   + b"DATA" + struct.pack("<I", len(content)) + content + b"DONE" + struct.pack("<I", 0))
        for start in range(0, len(request), 5):  # every 5 bytes its own WRTE: requests straddle packets
            sock.sendall(_packet(A_WRTE, 7, remote, request[start:start + 5]))
            assert _read_packet(sock)[:3] == (A_OKAY, remote, 7)
        command, _, _, reply = _read_packet(sock)
        assert (command, reply) == (A_WRTE, b"OKAY\0\0\0\0")
    assert (emulator.sandbox / "data/local/tmp/s.txt").read_bytes() == content


def test_wire_one_wrte_in_flight_and_clse_answered(adb_emulator: Callable[..., AdbEmulator]) -> None:
    emulator = adb_emulator(auth="none")
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as sock:
        sock.sendall(_packet(A_CNXN, A_VERSION, 4096, b"host::\0"))
        assert _read_packet(sock)[0] == A_CNXN
        sock.sendall(_packet(A_OPEN, 3, 0, b"shell:cat\0"))
        command, remote, local, _ = _read_packet(sock)
        assert (command, local) == (A_OKAY, 3)
        sock.sendall(_packet(A_WRTE, 3, remote, b"ping\n"))
        seen = set()
        while seen != {A_OKAY, A_WRTE}:  # our WRTE is OKAYed; cat's echo comes as a WRTE
            command, arg0, arg1, payload = _read_packet(sock)
            seen.add(command)
            if command == A_WRTE:
                assert (arg0, arg1, payload) == (remote, 3, b"ping\n")
        # not OKAYing the emulator's WRTE: it must not send another one on this stream
        sock.sendall(_packet(A_WRTE, 3, remote, b"again\n"))
        assert _read_packet(sock)[0] == A_OKAY
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            _read_packet(sock)
        sock.settimeout(5)
        sock.sendall(_packet(A_OKAY, 3, remote))
        assert _read_packet(sock)[:4] == (A_WRTE, remote, 3, b"again\n")
        sock.sendall(_packet(A_CLSE, 3, remote))
        assert _read_packet(sock)[:3] == (A_CLSE, remote, 3)
    assert emulator.violations == []


def test_require_adb_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_adb()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_adb()


# --- faults -----------------------------------------------------------------------------------------------------


def test_fault_drop_mid_transfer(adb_client: AdbClient, authorized: Callable[..., AdbEmulator],
                                 tmp_path: Path) -> None:
    emulator = authorized(fault="drop-mid-transfer", fault_bytes=256 * 1024)
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(2 * 1024 * 1024))
    proc = adb_client.run("push", str(source), "/data/local/tmp/blob.bin", serial=emulator.serial, timeout=60)
    assert proc.returncode != 0


def test_fault_slow_and_never_auth(adb_emulator: Callable[..., AdbEmulator]) -> None:
    slow = adb_emulator(auth="none", fault="slow", slow_ms=300)
    with socket.create_connection(("127.0.0.1", slow.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(_packet(A_CNXN, A_VERSION, 4096, b"host::\0"))
        assert _read_packet(sock)[0] == A_CNXN
        assert time.monotonic() - started >= 0.29
    never = adb_emulator(auth="accept-new", fault="never-auth")
    with socket.create_connection(("127.0.0.1", never.port), timeout=5) as sock:
        sock.sendall(_packet(A_CNXN, A_VERSION, 4096, b"host::\0"))
        assert _read_packet(sock)[0] == A_AUTH  # the token still comes; nothing after the public key does
        sock.sendall(_packet(A_AUTH, 3, 0, b"AAAA x@y\0"))
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(1)


def test_parse_adb_public_key(adb_client: AdbClient) -> None:
    key = parse_adb_public_key(adb_client.public_key_line)
    assert key.key_size == 2048 and key.public_numbers().e == 65537


def test_path_mapping(adb_emulator: Callable[..., AdbEmulator]) -> None:
    emulator = adb_emulator(auth="none")
    root = str(emulator.sandbox)
    assert emulator.rewrite_command("cd /data/local/tmp && ./bm --graph=/data/local/tmp/m.tflite") == (
        f"cd {root}/data/local/tmp && ./bm --graph={root}/data/local/tmp/m.tflite")
    assert emulator.rewrite_command("cat '/sys/class/thermal/thermal_zone0/temp' /proc/loadavg") == (
        f"cat '{root}/sys/class/thermal/thermal_zone0/temp' /proc/loadavg")
    assert emulator.rewrite_command(f"ls {root}/data/x") == f"ls {root}/data/x"  # already mapped: untouched
    assert emulator.device_path("/data/local/tmp/a") == emulator.sandbox / "data/local/tmp/a"
    with pytest.raises(ValueError):
        emulator.device_path("/data/../../etc/passwd")


def test_drop_connections_goes_offline_then_reconnects(adb_emulator: Callable[..., AdbEmulator],
                                                       tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept")
    device = _adb_shell_device(emulator, tmp_path)
    assert device.shell("echo up") == "up\n"
    emulator.drop_connections()
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - adb-shell's own connection errors
        device.shell("echo gone", transport_timeout_s=2.0, read_timeout_s=2.0)
    assert time.monotonic() - started < 5
    device.close()
    (tmp_path / "again").mkdir()
    again = _adb_shell_device(emulator, tmp_path / "again")
    try:
        assert again.shell("echo back") == "back\n"
    finally:
        again.close()
