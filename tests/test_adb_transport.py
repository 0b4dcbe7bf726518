"""AdbTransport (adb-shell over loopback TCP) against the ADB device emulator (tests/peers/adb_emulator.py)."""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farmbench.errors import (
    AuthError,
    CommandTimeoutError,
    ConfigError,
    ConnectError,
    TransferTimeoutError,
    TransportError,
)
from farmbench.transports.adb import AdbTarget, AdbTransport, AdbUnauthorizedError, load_or_create_key
from tests.peers.adb_emulator import AdbEmulator

EmulatorFactory = Callable[..., AdbEmulator]


@pytest.fixture(scope="session")
def adb_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ADB key for the session, created the way AdbTransport creates a missing ~/.android/adbkey."""
    path = tmp_path_factory.mktemp("android") / "adbkey"
    load_or_create_key(path)
    return path


@pytest.fixture
def emulator(adb_emulator: EmulatorFactory, adb_key: Path) -> AdbEmulator:
    return adb_emulator(auth="accept", authorized_keys=[Path(f"{adb_key}.pub")])


def _target(emulator: AdbEmulator, key: Path, **options: object) -> AdbTarget:
    return AdbTarget(host="127.0.0.1", port=emulator.port, key_path=key, **options)  # type: ignore[arg-type]


@pytest.fixture
def phone(emulator: AdbEmulator, adb_key: Path) -> Iterator[AdbTransport]:
    with AdbTransport(_target(emulator, adb_key)) as transport:
        yield transport


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Targets


def test_from_url_tcp_usb_and_errors() -> None:
    assert AdbTarget.from_url("adb://10.0.0.7").port == 5555
    target = AdbTarget.from_url("adb://phone.lan:5037", read_timeout_s=60.0)
    assert (target.host, target.port, target.read_timeout_s) == ("phone.lan", 5037, 60.0)
    assert target.address == "adb://phone.lan:5037"
    usb = AdbTarget.from_url("adb-usb://R58M123ABC")
    assert (usb.serial, usb.host) == ("R58M123ABC", None)
    for bad in ("ssh://pi@host", "adb://", "adb://host:99999", "adb://host/path", "adb-usb://"):
        with pytest.raises(ConfigError):
            AdbTarget.from_url(bad)


def test_missing_key_is_generated_like_adb(tmp_path: Path) -> None:
    key = tmp_path / "nested" / ".android" / "adbkey"
    load_or_create_key(key)
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert Path(f"{key}.pub").read_text().strip()
    assert key.stat().st_mode & 0o077 == 0


# Commands


def test_run_echo_exit_codes_and_merged_stderr(phone: AdbTransport) -> None:
    done = phone.run(["echo", "hello phone"], timeout_s=10)
    assert (done.rc, done.stdout, done.stderr) == (0, "hello phone\n", "")
    assert "__FB_RC" not in done.stdout
    assert phone.run(["sh", "-c", "exit 7"], timeout_s=10).rc == 7
    assert phone.run(["false"], timeout_s=10).rc == 1
    assert phone.run(["no-such-program-xyz"], timeout_s=10).rc == 127
    # Shell protocol v1: stderr arrives merged into stdout.
    both = phone.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout_s=10)
    assert both.rc == 3 and "out" in both.stdout and "err" in both.stdout and both.stderr == ""
    # Output without a trailing newline keeps the marker off it.
    assert phone.run(["printf", "no newline"], timeout_s=10).stdout == "no newline"


def test_argv_with_shell_metacharacters_stays_literal(phone: AdbTransport, emulator: AdbEmulator) -> None:
    # Relative paths: the emulator rewrites /data/... in command lines to its sandbox (its cwd).
    canary = emulator.sandbox / "pwned"
    nasty = ["; touch pwned", "$(touch pwned)", "`id`", "it's \"quoted\"",
             "a\nb", "*", "$HOME", "&& exit 9 |", ""]
    done = phone.run(["printf", "%s|", *nasty], timeout_s=10).check()
    assert done.stdout == "".join(f"{arg}|" for arg in nasty)
    assert not canary.exists()


def test_exists_instead_of_zero_stat(phone: AdbTransport) -> None:
    assert phone.exists("/data/local/tmp")
    assert not phone.exists("/data/local/tmp/no-such-file")


def test_hanging_command_is_killed_on_the_phone(phone: AdbTransport) -> None:
    # A unique duration marks our sleep among the host's processes (the emulator runs commands on the host).
    duration = f"300.{random.randrange(10**8, 10**9)}"
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError) as caught:
        phone.run(["sleep", duration], timeout_s=2)
    elapsed_s = time.monotonic() - started
    assert 1.9 <= elapsed_s < 8, elapsed_s
    assert f"sleep {duration}" in str(caught.value) and "2 s" in str(caught.value)
    left = ""
    for _ in range(30):
        left = subprocess.run(["pgrep", "-f", f"sleep {duration}"], capture_output=True, text=True,
                              check=False).stdout
        if not left.strip():
            break
        time.sleep(0.1)
    assert not left.strip(), f"sleep still running: {left}"
    # The connection is still usable afterwards.
    assert phone.run(["echo", "still here"], timeout_s=10).stdout == "still here\n"


def test_silent_command_longer_than_read_timeout_works(emulator: AdbEmulator, adb_key: Path) -> None:
    # read_timeout_s is an inactivity timeout in adb-shell; run() raises it to the command's timeout.
    with AdbTransport(_target(emulator, adb_key, read_timeout_s=0.5)) as phone:
        assert phone.run(["sh", "-c", "sleep 1.5; echo done"], timeout_s=10).stdout == "done\n"


def test_concurrent_runs_from_four_threads(phone: AdbTransport) -> None:
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                results[n * 10 + i] = phone.run(["echo", f"t{n}-{i}"], timeout_s=10).check().stdout
        except BaseException as err:  # noqa: BLE001  (reported by the assertion below)
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert results == {n * 10 + i: f"t{n}-{i}\n" for n in range(4) for i in range(5)}


def test_stdin_is_refused_clearly(phone: AdbTransport) -> None:
    with pytest.raises(TransportError, match="stdin"):
        phone.run(["cat"], timeout_s=5, stdin=b"x")


# Transfers


def test_push_pull_round_trip_of_3_mb(phone: AdbTransport, tmp_path: Path, emulator: AdbEmulator) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    local = tmp_path / "model.bin"
    local.write_bytes(data)
    seen: list[tuple[int, int]] = []
    phone.push(local, "/data/local/tmp/model.bin", timeout_s=60, progress=lambda done, total: seen.append((done, total)))
    assert (emulator.sandbox / "data/local/tmp/model.bin").read_bytes() == data
    assert seen[-1] == (len(data), len(data))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    # No temporary left beside the file.
    assert [p.name for p in (emulator.sandbox / "data/local/tmp").glob("model.bin*")] == ["model.bin"]
    back = tmp_path / "back.bin"
    phone.pull("/data/local/tmp/model.bin", back, timeout_s=60)
    assert back.read_bytes() == data
    assert phone.remote_sha256("/data/local/tmp/model.bin", 10) == hashlib.sha256(data).hexdigest()


def _client_wrte_sizes(emulator: AdbEmulator) -> list[int]:
    return [entry[4] for entry in emulator.log if entry[:2] == ("recv", "WRTE")]


def test_push_larger_than_one_packet_keeps_to_maxdata_and_one_wrte_in_flight(
        phone: AdbTransport, tmp_path: Path, emulator: AdbEmulator) -> None:
    # Not a multiple of 64 KiB (the largest sync DATA chunk) nor of maxdata (256 KiB): the last chunk is partial.
    data = os.urandom(5 * 256 * 1024 + 12_345)
    local = tmp_path / "model.bin"
    local.write_bytes(data)
    seen: list[tuple[int, int]] = []
    phone.push(local, "/data/local/tmp/model.bin", timeout_s=60, progress=lambda done, total: seen.append((done, total)))
    sizes = _client_wrte_sizes(emulator)
    back = tmp_path / "back.bin"
    phone.pull("/data/local/tmp/model.bin", back, timeout_s=60)
    assert back.read_bytes() == data
    # WRTEs filled up to the device's maxdata, never past it; the emulator records a WRTE sent before the OKAY of
    # the previous one, and FAILs a DATA chunk over 64 KiB (the push would have failed).
    assert max(sizes) == emulator.maxdata and len(sizes) == len(data) // emulator.maxdata + 1
    assert emulator.violations == []
    assert len(seen) == len(sizes) and seen[-1] == (len(data), len(data))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_push_under_small_maxdata(adb_emulator: EmulatorFactory, adb_key: Path, tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept", authorized_keys=[Path(f"{adb_key}.pub")], maxdata=4096)
    data = os.urandom(300 * 1024 + 7)
    local = tmp_path / "model.bin"
    local.write_bytes(data)
    with AdbTransport(_target(emulator, adb_key)) as phone:
        phone.push(local, "/data/local/tmp/model.bin", timeout_s=60)
        sizes = _client_wrte_sizes(emulator)
        back = tmp_path / "back.bin"
        phone.pull("/data/local/tmp/model.bin", back, timeout_s=60)
    assert back.read_bytes() == data
    assert max(sizes) == 4096 and sizes.count(4096) == len(sizes) - 1
    assert emulator.violations == []


def test_push_empty_file(phone: AdbTransport, tmp_path: Path, emulator: AdbEmulator) -> None:
    local = tmp_path / "empty.bin"
    local.write_bytes(b"")
    (emulator.sandbox / "data/local/tmp/empty.bin").write_bytes(b"old contents")
    phone.push(local, "/data/local/tmp/empty.bin", timeout_s=10)
    assert (emulator.sandbox / "data/local/tmp/empty.bin").read_bytes() == b""


def test_push_refused_by_the_device_reports_its_reason(phone: AdbTransport, tmp_path: Path,
                                                        emulator: AdbEmulator) -> None:
    (emulator.sandbox / "data/local/tmp/plainfile").write_bytes(b"not a directory")
    local = tmp_path / "m.bin"
    local.write_bytes(os.urandom(100_000))
    started = time.monotonic()
    with pytest.raises(TransportError) as caught:
        phone.push(local, "/data/local/tmp/plainfile/m.bin", timeout_s=30)
    assert time.monotonic() - started < 5
    assert "couldn't create file" in str(caught.value) and "pushing" in str(caught.value)
    assert "free space" in (caught.value.hint or "")
    assert phone.run(["echo", "still here"], timeout_s=10).stdout == "still here\n"


def test_push_dropped_mid_transfer_fails_cleanly_and_reconnects(adb_emulator: EmulatorFactory, adb_key: Path,
                                                                tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept", authorized_keys=[Path(f"{adb_key}.pub")], fault="drop-mid-transfer",
                            fault_bytes=200_000)
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(1024 * 1024))
    with AdbTransport(_target(emulator, adb_key, read_timeout_s=3)) as phone:
        started = time.monotonic()
        with pytest.raises(TransportError) as caught:
            phone.push(local, "/data/local/tmp/big.bin", timeout_s=30)
        assert time.monotonic() - started < 10
        assert "pushing" in str(caught.value) and not isinstance(caught.value, TransferTimeoutError)
        assert not list((emulator.sandbox / "data/local/tmp").glob("big.bin*"))
        assert phone.run(["echo", "reconnected"], timeout_s=10).stdout == "reconnected\n"


def test_push_past_its_timeout_is_a_transfer_timeout(phone: AdbTransport, tmp_path: Path) -> None:
    local = tmp_path / "f.bin"
    local.write_bytes(os.urandom(512 * 1024))
    with pytest.raises(TransferTimeoutError):
        phone.push(local, "/data/local/tmp/f.bin", timeout_s=0.0001)
    assert not phone.exists("/data/local/tmp/f.bin")


def test_push_directory_and_pull_missing_are_refused(phone: AdbTransport, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(TransportError, match="directory"):
        phone.push(tmp_path / "dir", "/data/local/tmp/dir", timeout_s=10)
    with pytest.raises(TransportError, match="no such file"):
        phone.pull("/data/local/tmp/missing", tmp_path / "x", timeout_s=10)
    assert not (tmp_path / "x").exists()


def test_push_cached_skips_the_second_upload(phone: AdbTransport, tmp_path: Path) -> None:
    data = os.urandom(256 * 1024)
    local = tmp_path / "m.tflite"
    local.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    cache = "/data/local/tmp/farmbench/cache"
    path, uploaded = phone.push_cached(local, digest, cache, "m.tflite", timeout_s=60)
    assert uploaded and path == f"{cache}/{digest[:16]}/m.tflite"
    again, uploaded_again = phone.push_cached(local, digest, cache, "m.tflite", timeout_s=60)
    assert (again, uploaded_again) == (path, False)


# Checksums: ADB protocol 0x01000001 (Android 9 on) sends data_check 0; 0x01000000 devices sum payloads.

_HEADER = struct.Struct("<6I")
_CNXN, _OPEN, _OKAY, _CLSE, _WRTE = 0x4E584E43, 0x4E45504F, 0x59414B4F, 0x45534C43, 0x45545257


class _MinimalDevice:
    """Just enough of an ADB device on loopback (no auth) to answer one shell command, announcing ``version`` in
    its CNXN and summing its payloads only below 0x01000001 (``corrupt``: a wrong sum). It records what the client
    sent: its CNXN version and the data_check of every packet with a payload."""

    def __init__(self, version: int, *, corrupt: bool = False) -> None:
        self.version = version
        self.corrupt = corrupt
        self.client_version: int | None = None
        self.client_checks: list[tuple[int, int]] = []  # (data_check sent, byte sum of the payload)
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(10)
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _read(self, conn: socket.socket) -> tuple[int, int, int, bytes]:
        def exact(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = conn.recv(n - len(data))
                if not chunk:
                    raise ConnectionError("client closed")
                data += chunk
            return data

        command, arg0, arg1, length, check, _magic = _HEADER.unpack(exact(_HEADER.size))
        payload = exact(length) if length else b""
        if payload:
            self.client_checks.append((check, sum(payload) & 0xFFFFFFFF))
        return command, arg0, arg1, payload

    def _send(self, conn: socket.socket, command: int, arg0: int, arg1: int, payload: bytes = b"") -> None:
        check = 0 if self.version >= 0x01000001 else (sum(payload) + self.corrupt) & 0xFFFFFFFF
        conn.sendall(_HEADER.pack(command, arg0, arg1, len(payload), check, command ^ 0xFFFFFFFF) + payload)

    def _serve(self) -> None:
        try:
            conn, _ = self._server.accept()
            with conn:
                conn.settimeout(10)
                command, self.client_version, _, _ = self._read(conn)
                self._send(conn, _CNXN, self.version, 4096, b"device::ro.product.name=minimal;\0")
                command, client_id, _, destination = self._read(conn)
                assert command == _OPEN
                self._send(conn, _OKAY, 7, client_id)
                marker = re.search(rb"__FB_RC_[0-9a-f]+=", destination)
                assert marker is not None
                self._send(conn, _WRTE, 7, client_id, b"hi\n" + marker.group(0) + b"0\n")
                while self._read(conn)[0] != _OKAY:
                    pass
                self._send(conn, _CLSE, 7, client_id)
                while self._read(conn)[0] != _CLSE:
                    pass
        except (OSError, ConnectionError):
            pass
        finally:
            self._server.close()


@pytest.mark.parametrize("device_version", [0x01000000, 0x01000001])
def test_checksums_follow_the_negotiated_protocol_version(device_version: int, adb_key: Path) -> None:
    device = _MinimalDevice(device_version)
    with AdbTransport(AdbTarget(host="127.0.0.1", port=device.port, key_path=adb_key, connect_timeout_s=5,
                                read_timeout_s=5)) as phone:
        assert phone.run(["echo", "hi"], timeout_s=5).stdout == "hi\n"
    assert device.client_version == 0x01000001  # what adb announces
    cnxn_check, *after_cnxn = device.client_checks
    assert cnxn_check[0] == cnxn_check[1]  # before the version is agreed, CNXN carries its sum
    assert after_cnxn, "the OPEN went out with a payload"
    if device_version >= 0x01000001:
        assert all(sent == 0 for sent, _ in after_cnxn)
    else:
        assert all(sent == expected != 0 for sent, expected in after_cnxn)


def test_wrong_checksum_from_an_old_device_is_an_error(adb_key: Path) -> None:
    device = _MinimalDevice(0x01000000, corrupt=True)
    with pytest.raises(ConnectError):
        AdbTransport(AdbTarget(host="127.0.0.1", port=device.port, key_path=adb_key, connect_timeout_s=5))


# Connecting


def test_unauthorized_key_errors_within_auth_timeout(adb_emulator: EmulatorFactory, adb_key: Path) -> None:
    emulator = adb_emulator(auth="accept")  # our key is not authorized: RSAPUBLICKEY is never answered
    started = time.monotonic()
    with pytest.raises(AdbUnauthorizedError) as caught:
        AdbTransport(_target(emulator, adb_key, auth_timeout_s=1.5))
    assert time.monotonic() - started < 6
    assert isinstance(caught.value, AuthError) and not caught.value.transient
    assert "Allow USB debugging?" in (caught.value.hint or "")
    assert str(adb_key) in (caught.value.hint or "")


def test_accept_new_key_connects(adb_emulator: EmulatorFactory, tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept-new")
    key = tmp_path / ".android" / "adbkey"  # missing: generated on first use
    with AdbTransport(_target(emulator, key)) as phone:
        assert phone.run(["echo", "ok"], timeout_s=10).stdout == "ok\n"
    assert key.exists()


def test_closed_port_errors_within_connect_timeout(adb_key: Path) -> None:
    port = _free_port()
    started = time.monotonic()
    with pytest.raises(ConnectError) as caught:
        AdbTransport(AdbTarget(host="127.0.0.1", port=port, key_path=adb_key, connect_timeout_s=2))
    assert time.monotonic() - started < 3
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "adb tcpip 5555" in (caught.value.hint or "")


def test_silent_device_errors_within_connect_timeout(adb_key: Path) -> None:
    with socket.socket() as server:  # accepts TCP but never speaks ADB, like a wedged phone
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        started = time.monotonic()
        with pytest.raises(ConnectError, match="within 1 s"):
            AdbTransport(AdbTarget(host="127.0.0.1", port=server.getsockname()[1], key_path=adb_key,
                                   connect_timeout_s=1))
        assert time.monotonic() - started < 4


def test_close_is_idempotent_and_final(emulator: AdbEmulator, adb_key: Path) -> None:
    phone = AdbTransport(_target(emulator, adb_key))
    phone.close()
    phone.close()
    with pytest.raises(TransportError, match="closed"):
        phone.run(["true"], timeout_s=5)


# Measurement (printed, not asserted): what TCP_NODELAY saves per command.


def test_per_command_latency_with_and_without_tcp_nodelay(emulator: AdbEmulator, adb_key: Path) -> None:
    figures = {}
    for nodelay in (True, False):
        with AdbTransport(_target(emulator, adb_key, tcp_nodelay=nodelay)) as phone:
            phone.run(["true"], timeout_s=10)
            count = 20
            started = time.perf_counter()
            for _ in range(count):
                phone.run(["true"], timeout_s=10)
            figures[nodelay] = (time.perf_counter() - started) / count * 1000
    print(f"\nper-command latency over loopback: TCP_NODELAY on {figures[True]:.1f} ms, "
          f"off {figures[False]:.1f} ms")


def test_usb_without_the_usb_extra_says_how_to_get_it(adb_key: Path) -> None:
    try:
        import usb1  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("adb-shell[usb] is installed here; this checks the message without it")
    with pytest.raises(ConnectError, match="USB support is not installed") as caught:
        AdbTransport(AdbTarget.from_url("adb-usb://R58M123ABC", key_path=adb_key))
    assert "adb tcpip 5555" in (caught.value.hint or "")
