"""AdbTransport (adb-shell over loopback TCP) against the ADB device emulator (tests/peers/adb_emulator.py)."""

from __future__ import annotations

import hashlib
import os
import random
import socket
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
