"""An ADB device emulator: a test peer speaking the real ADB wire protocol over TCP on loopback (registered from
tests/conftest.py).

Written from AOSP's protocol descriptions (packages/modules/adb: protocol.txt, SYNC.TXT, shell protocol), not from
its code. What it speaks:

* messages: a 24-byte little-endian header (command, arg0, arg1, data length, data checksum = sum of the payload's
  bytes, magic = command ^ 0xffffffff) and a payload. The emulator always sends real checksums; it accepts 0 (what
  clients of protocol version 0x01000001 send) or the right sum.
* CNXN with version 0x01000001, ``maxdata`` (256 KiB by default) and a ``device::`` banner with product props and
  features (shell_v2, cmd, stat_v2, ls_v2, fixed_push_mkdir).
* AUTH: TOKEN (20 random bytes); SIGNATURE checked against the authorized keys (ADB's public key format: base64 of
  the 524-byte android RSAPublicKey struct + " user@host"; PKCS#1 v1.5 over the token taken as a SHA-1 digest); a
  bad signature gets a new TOKEN; RSAPUBLICKEY is accepted and remembered with ``auth="accept-new"``, accepted with
  ``auth="accept"`` only if already authorized, and never answered otherwise (the client shows "unauthorized");
  ``auth="never"`` rejects every signature (a new TOKEN) and never answers the public key, like a phone whose
  user never taps "Allow" (the client shows "unauthorized"); ``auth="none"`` sends CNXN at once.
* streams: OPEN -> OKAY(local, remote) before any data; one WRTE in flight per stream in each direction (the
  emulator waits for the client's OKAY before its next WRTE, and OKAYs a client WRTE only once it has consumed
  it; a client WRTE sent before that OKAY is recorded in ``violations``); CLSE answered with CLSE.
* services: ``shell:CMD`` (v1: stdout+stderr merged, no exit code), ``shell,v2[,raw]:CMD`` (shell protocol packets:
  1-byte id + 4-byte length; ids 0 stdin, 1 stdout, 2 stderr, 3 exit, 4 close stdin, 5 window size), ``exec:CMD``
  and ``sync:`` (STAT, STA2, LST2, LIST, LIS2, SEND, RECV, QUIT) parsed as a byte stream, so a request or a DATA
  chunk may straddle WRTE packets.

The sandbox. The emulator cannot chroot, so device paths are mapped onto ``sandbox_dir``:

* sync requests: every absolute device path ``/X`` becomes ``<sandbox>/X`` (paths escaping the sandbox fail).
* shell/exec commands: the literal prefixes in ``REWRITTEN_PREFIXES`` (``/data/``, ``/sdcard``, ``/sys/class/``,
  ``/sys/devices/system/cpu/``, ``/system/``) are rewritten to ``<sandbox>/...`` in the command string wherever
  they start a word, then the command runs with ``/bin/sh -c`` in cwd ``<sandbox>`` with
  ``PATH=<sandbox>/system/bin:/usr/bin:/bin`` and ``FARMBENCH_EMU_ROOT=<sandbox>``. Everything else (``/proc``,
  ``/bin/...``, ``/tmp``) is the host's own. Output is not rewritten back: a command that prints its own path
  (``pwd``, ``readlink -f``) shows the host path.

``populate_sandbox`` lays out a phone: data/local/tmp, props.txt + a ``getprop`` script, battery, thermal zone and
four CPUs' cpufreq files (plain files that tests can rewrite while a run is going).

Faults: ``fault="drop-mid-transfer"`` closes the connection once ``fault_bytes`` of SEND data arrived on it;
``"drop-mid-shell"`` closes the connection ``fault_delay_s`` after a shell command containing ``fault_match`` started
(the command's processes are killed with the connection, as below); ``"disk-full"`` gives the files under the
sandbox's ``/data`` ``fault_bytes`` of room in all (a SEND that would exceed it fails with ENOSPC, answered like adbd:
FAIL "write failed: No space left on device", the partial file removed; deleting files makes room again); ``"never-auth"`` sends the first TOKEN and then never answers
any AUTH (the client stays "authorizing"); ``"slow"`` sleeps ``slow_ms`` before every packet the emulator sends.
``fault_times`` limits how often a drop fires (None: every time). A small ``maxdata`` (e.g. 4096) is just the
constructor argument. A real write error on the host (a full filesystem under the sandbox) gets the same FAIL.

When a connection ends, the emulator kills the processes of its shell streams (``/bin/sh`` in a session of its own,
killed as a process group). :meth:`AdbEmulator.leftover_processes` lists processes still running whose command
line names the sandbox (what a test checks after a run); :meth:`AdbEmulator.stop` makes the device disappear (the
port then refuses connections).
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import re
import shutil
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import pytest

A_SYNC, A_CNXN, A_OPEN, A_OKAY = 0x434E5953, 0x4E584E43, 0x4E45504F, 0x59414B4F
A_CLSE, A_WRTE, A_AUTH = 0x45534C43, 0x45545257, 0x48545541
A_VERSION = 0x01000001
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
TOKEN_SIZE = 20
DEFAULT_MAXDATA = 256 * 1024
MAX_PAYLOAD_ACCEPTED = 1024 * 1024
SYNC_DATA_MAX = 64 * 1024
HEADER = struct.Struct("<6I")
ANDROID_PUBKEY_MODULUS_SIZE = 256
ANDROID_PUBKEY_STRUCT = 4 + 4 + ANDROID_PUBKEY_MODULUS_SIZE * 2 + 4  # 524 bytes

SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN, SHELL_WINDOW = 0, 1, 2, 3, 4, 5
FEATURES = ("shell_v2", "cmd", "stat_v2", "ls_v2", "fixed_push_mkdir")
REWRITTEN_PREFIXES = ("/data/", "/sdcard", "/sys/class/", "/sys/devices/system/cpu/", "/system/")
AUTH_MODES = ("accept", "accept-new", "never", "none")
FAULTS = (None, "drop-mid-transfer", "drop-mid-shell", "disk-full", "never-auth", "slow")

DEFAULT_PROPS = {
    "ro.product.name": "farmbench_emu",
    "ro.product.model": "Farmbench Emulated Phone",
    "ro.product.device": "emu",
    "ro.product.manufacturer": "farmbench",
    "ro.build.version.sdk": "34",
    "ro.build.version.release": "14",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.serialno": "FARMBENCHEMU0001",
    "ro.soc.manufacturer": "Farmbench",
    "ro.soc.model": "FB-EMU-1",
    "ro.board.platform": "emu",
    "ro.hardware": "emu",
    "ro.build.fingerprint": "farmbench/farmbench_emu/emu:14/FBEMU.261121/1:userdebug/test-keys",
}

GETPROP = """#!/bin/sh
# getprop for the farmbench ADB emulator: answers from $FARMBENCH_EMU_ROOT/props.txt (key=value lines).
props="${FARMBENCH_EMU_ROOT:-$(dirname "$0")/../..}/props.txt"
if [ $# -eq 0 ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in ''|'#'*) continue;; esac
    printf '[%s]: [%s]\\n' "${line%%=*}" "${line#*=}"
  done < "$props"
  exit 0
fi
while IFS= read -r line || [ -n "$line" ]; do
  if [ "${line%%=*}" = "$1" ]; then printf '%s\\n' "${line#*=}"; exit 0; fi
done < "$props"
printf '%s\\n' "$2"
"""


def _checksum(data: bytes) -> int:
    return sum(data) & 0xFFFFFFFF


def _cmd_name(command: int) -> str:
    return struct.pack("<I", command).decode("latin-1")


# ---------------------------------------------------------------------------------------------------------------
# Keys


def parse_adb_public_key(line: str | bytes) -> Any:
    """The ``cryptography`` RSA public key in an ADB public key line ("BASE64 [user@host]")."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

    if isinstance(line, bytes):
        line = line.rstrip(b"\0").decode("ascii", "replace")
    blob = base64.b64decode(line.strip().split()[0])
    if len(blob) < ANDROID_PUBKEY_STRUCT:
        raise ValueError(f"ADB public key is {len(blob)} bytes, expected {ANDROID_PUBKEY_STRUCT}")
    words, _n0inv = struct.unpack_from("<II", blob, 0)
    if words * 4 != ANDROID_PUBKEY_MODULUS_SIZE:
        raise ValueError(f"ADB public key has a {words * 32}-bit modulus, expected 2048")
    modulus = int.from_bytes(blob[8:8 + ANDROID_PUBKEY_MODULUS_SIZE], "little")
    (exponent,) = struct.unpack_from("<I", blob, 8 + 2 * ANDROID_PUBKEY_MODULUS_SIZE)
    return RSAPublicNumbers(exponent, modulus).public_key()


def _key_line(key: str | os.PathLike[str]) -> str:
    if isinstance(key, os.PathLike) or (isinstance(key, str) and os.path.isfile(key)):
        return Path(key).read_text().strip()
    return str(key).strip()


def _verify(public_key: Any, token: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    try:
        public_key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
        return True
    except (InvalidSignature, ValueError):
        return False


# ---------------------------------------------------------------------------------------------------------------
# Sandbox


def populate_sandbox(root: Path, props: Mapping[str, str] | None = None) -> Path:
    """Lay out a phone under ``root`` (existing files are kept, so tests can pre-seed values)."""
    root = Path(root)
    (root / "data/local/tmp").mkdir(parents=True, exist_ok=True)
    (root / "sdcard").mkdir(parents=True, exist_ok=True)
    bin_dir = root / "system/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    getprop = bin_dir / "getprop"
    getprop.write_text(GETPROP)
    getprop.chmod(0o755)
    sh = bin_dir / "sh"
    if not sh.exists() and not sh.is_symlink():
        sh.symlink_to("/bin/sh")
    all_props = dict(DEFAULT_PROPS)
    all_props.update(props or {})
    props_file = root / "props.txt"
    if not props_file.exists() or props:
        props_file.write_text("".join(f"{k}={v}\n" for k, v in all_props.items()))

    def put(rel: str, value: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(value + "\n")

    battery = "sys/class/power_supply/battery/"
    for name, value in {"capacity": "87", "status": "Discharging", "temp": "312", "current_now": "-350000",
                        "voltage_now": "3950000"}.items():
        put(battery + name, value)
    put("sys/class/thermal/thermal_zone0/type", "cpu-thermal")
    put("sys/class/thermal/thermal_zone0/temp", "41000")
    for cpu in range(4):
        base = f"sys/devices/system/cpu/cpu{cpu}/cpufreq/"
        put(base + "scaling_governor", "schedutil")
        put(base + "cpuinfo_max_freq", "2016000" if cpu < 2 else "2803200")
        put(base + "scaling_cur_freq", "1804800")
        put(base + "related_cpus", "0 1" if cpu < 2 else "2 3")
    put("sys/devices/system/cpu/online", "0-3")
    return root


def install_benchmark_model(root: Path, device_path: str = "/system/bin/benchmark_model") -> Path:
    """Install the benchmark_model stand-in (tests/peers/benchmark_model_standin.py, which runs models with the
    host's ai_edge_litert) at ``device_path`` in the sandbox ``root``, as an executable sh wrapper; returns the
    host path of the wrapper (a file tests can also push elsewhere, like a user-provided binary)."""
    from tests.peers.benchmark_model_standin import install

    return install(Path(root) / device_path.lstrip("/"))


def install_ort_perf_test(root: Path, device_path: str = "/system/bin/onnxruntime_perf_test") -> Path:
    """Install the onnxruntime_perf_test stand-in (tests/peers/ort_perf_test_standin.py, which runs models with the
    host's onnxruntime) at ``device_path`` in the sandbox ``root``, as an executable sh wrapper; returns the host
    path of the wrapper (a file tests can also push elsewhere, like a user-provided binary)."""
    from tests.peers.ort_perf_test_standin import install

    return install(Path(root) / device_path.lstrip("/"))


# ---------------------------------------------------------------------------------------------------------------
# Connection and streams


class _Closed(Exception):
    pass


class _Stream:
    """One ADB stream: ``local_id`` is ours, ``remote_id`` the client's."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int):
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.incoming: queue.Queue[bytes | None] = queue.Queue()
        self.unacked_in = False  # a client WRTE we have not OKAYed yet
        self.okay = threading.Event()
        self.closed = threading.Event()
        self._buffer = b""
        self._eof = False
        self.lock = threading.Lock()

    # client -> device
    def receive(self, data: bytes) -> None:
        with self.lock:
            if self.unacked_in:
                self.conn.emulator.violations.append(
                    f"stream {self.local_id}: WRTE before the previous one was acknowledged")
            self.unacked_in = True
        self.incoming.put(data)

    def _next_chunk(self, timeout: float | None = None) -> bytes | None:
        chunk = self.incoming.get(timeout=timeout)
        if chunk is None:
            self._eof = True
            return None
        with self.lock:
            self.unacked_in = False
        if not self.closed.is_set():
            self.conn.send(A_OKAY, self.local_id, self.remote_id)
        return chunk

    def read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if self._eof:
                raise _Closed()
            chunk = self._next_chunk()
            if chunk is None:
                raise _Closed()
            self._buffer += chunk
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def read_some(self) -> bytes | None:
        if self._buffer:
            out, self._buffer = self._buffer, b""
            return out
        if self._eof:
            return None
        return self._next_chunk()

    # device -> client
    def write(self, data: bytes) -> None:
        limit = self.conn.max_payload
        for start in range(0, len(data), limit):
            if self.closed.is_set():
                raise _Closed()
            self.okay.clear()
            self.conn.send(A_WRTE, self.local_id, self.remote_id, data[start:start + limit])
            while not self.okay.wait(0.2):
                if self.closed.is_set() or self.conn.dead.is_set():
                    raise _Closed()

    def close(self) -> None:
        """Close from our side (the client answers with CLSE)."""
        if not self.closed.is_set():
            self.closed.set()
            self.conn.send(A_CLSE, self.local_id, self.remote_id)
        self.incoming.put(None)


class _Connection:
    def __init__(self, emulator: AdbEmulator, sock: socket.socket):
        self.emulator = emulator
        self.sock = sock
        self.send_lock = threading.Lock()
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.online = False
        self.max_payload = emulator.maxdata
        self.token = b""
        self.dead = threading.Event()
        self.send_bytes_received = 0

    # wire
    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise _Closed()
            data += chunk
        return data

    def send(self, command: int, arg0: int, arg1: int, payload: bytes = b"") -> None:
        if self.emulator.fault == "slow":
            time.sleep(self.emulator.slow_ms / 1000.0)
        header = HEADER.pack(command, arg0, arg1, len(payload), _checksum(payload), command ^ 0xFFFFFFFF)
        with self.send_lock:
            try:
                self.sock.sendall(header + payload)
            except OSError:
                self.dead.set()
        self.emulator.log.append(("send", _cmd_name(command), arg0, arg1, len(payload)))

    def kill(self) -> None:
        self.dead.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    def run(self) -> None:
        try:
            while not self.dead.is_set():
                command, arg0, arg1, length, check, magic = HEADER.unpack(self._recv_exact(HEADER.size))
                if magic != command ^ 0xFFFFFFFF or length > MAX_PAYLOAD_ACCEPTED:
                    self.emulator.violations.append(f"bad header {command:#x} magic {magic:#x} length {length}")
                    break
                payload = self._recv_exact(length) if length else b""
                if check and check != _checksum(payload):
                    self.emulator.violations.append(f"bad checksum on {_cmd_name(command)}")
                    break
                self.emulator.log.append(("recv", _cmd_name(command), arg0, arg1, length))
                self.handle(command, arg0, arg1, payload)
        except (_Closed, OSError, struct.error):
            pass
        finally:
            self.kill()
            for stream in list(self.streams.values()):
                stream.closed.set()
                stream.incoming.put(None)

    # protocol
    def _send_cnxn(self) -> None:
        self.online = True
        self.send(A_CNXN, A_VERSION, self.emulator.maxdata, self.emulator.banner())

    def _send_token(self) -> None:
        self.token = os.urandom(TOKEN_SIZE)
        self.send(A_AUTH, AUTH_TOKEN, 0, self.token)

    def handle(self, command: int, arg0: int, arg1: int, payload: bytes) -> None:
        emu = self.emulator
        if command == A_CNXN:
            self.max_payload = max(256, min(arg1 or emu.maxdata, emu.maxdata))
            if emu.auth == "none" and emu.fault != "never-auth":
                self._send_cnxn()
            else:
                self._send_token()
            return
        if command == A_AUTH:
            if emu.fault == "never-auth":
                return
            if arg0 == AUTH_SIGNATURE:
                if emu.auth != "never" and self.token and any(_verify(key, self.token, payload)
                                                              for key in emu.public_keys()):
                    self._send_cnxn()
                else:
                    self._send_token()
            elif arg0 == AUTH_RSAPUBLICKEY:
                line = payload.rstrip(b"\0").decode("ascii", "replace").strip()
                try:
                    key = parse_adb_public_key(line)
                except ValueError:
                    return
                if emu.auth == "accept-new":
                    emu.authorize(line)
                    self._send_cnxn()
                elif emu.auth == "accept" and any(key.public_numbers() == k.public_numbers()
                                                  for k in emu.public_keys()):
                    self._send_cnxn()
                # otherwise: never answer, the client shows the device as unauthorized
            return
        if not self.online:
            return
        if command == A_OPEN:
            destination = payload.rstrip(b"\0").decode("utf-8", "replace")
            local_id = self.next_id
            self.next_id += 1
            stream = _Stream(self, local_id, arg0)
            service = emu.service_for(destination)
            if service is None:
                self.send(A_CLSE, 0, arg0)
                return
            self.streams[local_id] = stream
            self.send(A_OKAY, local_id, arg0)
            threading.Thread(target=self._run_service, args=(service, stream, destination), daemon=True,
                             name=f"adb-emu-{destination[:20]}").start()
        elif command == A_OKAY:
            okayed = self.streams.get(arg1)
            if okayed is not None:
                okayed.remote_id = arg0
                okayed.okay.set()
        elif command == A_WRTE:
            target = self.streams.get(arg1)
            if target is None or target.closed.is_set():
                self.send(A_CLSE, 0, arg0)
                return
            target.receive(payload)
        elif command == A_CLSE:
            closing = self.streams.pop(arg1, None)
            if closing is not None:
                if not closing.closed.is_set():
                    closing.closed.set()
                    self.send(A_CLSE, closing.local_id, closing.remote_id)
                closing.incoming.put(None)

    def _run_service(self, service: Callable[[_Stream, str], None], stream: _Stream, destination: str) -> None:
        try:
            service(stream, destination)
        except _Closed:
            pass
        except Exception as err:  # noqa: BLE001 - a test peer reports, it does not crash
            emu = self.emulator
            emu.violations.append(f"service {destination!r} failed: {err!r}")
        finally:
            stream.close()


# ---------------------------------------------------------------------------------------------------------------
# The emulator


class AdbEmulator:
    """A threaded ADB device on 127.0.0.1. ``with AdbEmulator(sandbox) as emu: ... emu.port``."""

    def __init__(self, sandbox_dir: Path | str, *, port: int = 0, auth: str = "accept",
                 authorized_keys: Sequence[str | os.PathLike[str]] = (), props: Mapping[str, str] | None = None,
                 maxdata: int = DEFAULT_MAXDATA, fault: str | None = None, fault_bytes: int = 64 * 1024,
                 slow_ms: float = 100.0, features: Sequence[str] = FEATURES, fault_times: int | None = None,
                 fault_match: str = "benchmark_model", fault_delay_s: float = 1.0):
        if auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {AUTH_MODES}, not {auth!r}")
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, not {fault!r}")
        self.sandbox = populate_sandbox(Path(sandbox_dir).resolve(), props)
        self.requested_port = port
        self.auth = auth
        self.maxdata = maxdata
        self.fault = fault
        self.fault_bytes = fault_bytes
        self.fault_times = fault_times
        self.fault_match = fault_match
        self.fault_delay_s = fault_delay_s
        self.faults_fired = 0
        self._fault_lock = threading.Lock()
        self.slow_ms = slow_ms
        self.features = tuple(features)
        self.authorized_keys: list[str] = [_key_line(k) for k in authorized_keys]
        self.violations: list[str] = []
        self.log: list[tuple[Any, ...]] = []
        self._keys_lock = threading.Lock()
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._connections: list[_Connection] = []
        self._stopping = threading.Event()
        self.port = 0
        self.benchmark_model_path: Path | None = None  # set by install_benchmark_model via the fixture

    def _fire(self) -> bool:
        """Whether a drop fault fires now (at most ``fault_times`` times)."""
        with self._fault_lock:
            if self.fault_times is not None and self.faults_fired >= self.fault_times:
                return False
            self.faults_fired += 1
            return True

    def leftover_processes(self) -> list[str]:
        """Command lines of running processes that mention the sandbox (commands the emulator ran)."""
        found = []
        marker = str(self.sandbox).encode()
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                data = cmdline.read_bytes()
                if marker in data and int(cmdline.parent.name) != os.getpid():
                    found.append(data.replace(b"\0", b" ").decode(errors="replace").strip())
        return found

    # keys
    def authorize(self, key_line: str) -> None:
        with self._keys_lock:
            if key_line not in self.authorized_keys:
                self.authorized_keys.append(key_line)

    def public_keys(self) -> list[Any]:
        with self._keys_lock:
            lines = list(self.authorized_keys)
        keys = []
        for line in lines:
            with contextlib.suppress(ValueError):
                keys.append(parse_adb_public_key(line))
        return keys

    # banner and props
    def props(self) -> dict[str, str]:
        out = {}
        for line in (self.sandbox / "props.txt").read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                out[key] = value
        return out

    def banner(self) -> bytes:
        props = self.props()
        parts = [f"{k}={props.get(k, '')}" for k in ("ro.product.name", "ro.product.model", "ro.product.device")]
        parts.append("features=" + ",".join(self.features))
        return ("device::" + ";".join(parts) + ";").encode()

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    # paths
    def device_path(self, path: str) -> Path:
        """The sandbox file for an absolute device path; ValueError if it leaves the sandbox."""
        if not path.startswith("/"):
            path = "/data/local/tmp/" + path
        candidate = Path(os.path.normpath(str(self.sandbox) + "/" + path.lstrip("/")))
        if candidate != self.sandbox and self.sandbox not in candidate.parents:
            raise ValueError(f"{path} is outside the device")
        return candidate

    def rewrite_command(self, command: str) -> str:
        root = str(self.sandbox)
        pattern = "|".join(re.escape(p) for p in REWRITTEN_PREFIXES)
        return re.sub(rf"(?<![\w./-])(?:{pattern})", lambda m: root + m.group(0), command)

    def command_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADB_")}
        env["PATH"] = f"{self.sandbox / 'system/bin'}:/usr/bin:/bin"
        env["FARMBENCH_EMU_ROOT"] = str(self.sandbox)
        env["ANDROID_DATA"] = str(self.sandbox / "data")
        env["EXTERNAL_STORAGE"] = str(self.sandbox / "sdcard")
        return env

    # lifecycle
    def start(self) -> AdbEmulator:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.requested_port))
        server.listen(16)
        server.settimeout(0.2)
        self._server = server
        self.port = int(server.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"adb-emu-{self.port}")
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                sock, _addr = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            self._connections.append(conn)
            threading.Thread(target=conn.run, daemon=True, name="adb-emu-conn").start()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.close()
        for conn in self._connections:
            conn.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def drop_connections(self) -> None:
        """Close every client connection now (the device 'goes offline'); the server keeps listening."""
        for conn in self._connections:
            conn.kill()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # services
    def service_for(self, destination: str) -> Callable[[_Stream, str], None] | None:
        if destination.startswith(("shell,", "shell:")):
            options, _, command = destination.partition(":")
            flags = options.split(",")[1:]
            if "v2" in flags:
                return lambda s, _d: self._shell_v2(s, command)
            return lambda s, _d: self._shell_v1(s, command)
        if destination.startswith("exec:"):
            return lambda s, d: self._shell_v1(s, d[len("exec:"):])
        if destination.startswith("sync:"):
            return lambda s, _d: self._sync(s)
        return None

    def _spawn(self, command: str, merge_stderr: bool) -> subprocess.Popen[bytes]:
        argv = ["/bin/sh", "-c", self.rewrite_command(command)] if command.strip() else ["/bin/sh"]
        return subprocess.Popen(argv, cwd=self.sandbox, env=self.command_env(), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                                start_new_session=True)

    @staticmethod
    def _kill(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, 9)
        process.wait()

    def _pump_stdin(self, stream: _Stream, process: subprocess.Popen[bytes], v2: bool) -> None:
        """Client data -> the process's stdin (v2: shell packets). Ends when the client closes stdin or the
        stream."""
        assert process.stdin is not None
        buffer = b""
        try:
            while True:
                chunk = stream.read_some()
                if chunk is None:
                    break
                if not v2:
                    with contextlib.suppress(OSError):
                        process.stdin.write(chunk)
                        process.stdin.flush()
                    continue
                buffer += chunk
                while len(buffer) >= 5:
                    packet_id, length = struct.unpack_from("<BI", buffer, 0)
                    if len(buffer) < 5 + length:
                        break
                    data, buffer = buffer[5:5 + length], buffer[5 + length:]
                    if packet_id == SHELL_STDIN:
                        with contextlib.suppress(OSError):
                            process.stdin.write(data)
                            process.stdin.flush()
                    elif packet_id == SHELL_CLOSE_STDIN:
                        with contextlib.suppress(OSError):
                            process.stdin.close()
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()
            if stream.closed.is_set():
                self._kill(process)

    def _drop_later(self, stream: _Stream, command: str) -> None:
        """The drop-mid-shell fault: close the connection a while after a matching command started."""
        if self.fault == "drop-mid-shell" and self.fault_match in command and self._fire():
            timer = threading.Timer(self.fault_delay_s, stream.conn.kill)
            timer.daemon = True
            timer.start()

    def _shell_v1(self, stream: _Stream, command: str) -> None:
        process = self._spawn(command, merge_stderr=True)
        self._drop_later(stream, command)
        threading.Thread(target=self._pump_stdin, args=(stream, process, False), daemon=True).start()
        assert process.stdout is not None
        try:
            while True:
                data = os.read(process.stdout.fileno(), stream.conn.max_payload)
                if not data:
                    break
                stream.write(data)
            process.wait()
        finally:
            self._kill(process)

    def _shell_v2(self, stream: _Stream, command: str) -> None:
        process = self._spawn(command, merge_stderr=False)
        self._drop_later(stream, command)
        threading.Thread(target=self._pump_stdin, args=(stream, process, True), daemon=True).start()
        write_lock = threading.Lock()
        chunk = max(1, stream.conn.max_payload - 5)

        def pump(pipe: Any, packet_id: int) -> None:
            while True:
                data = os.read(pipe.fileno(), chunk)
                if not data:
                    return
                with write_lock:
                    stream.write(struct.pack("<BI", packet_id, len(data)) + data)

        readers = [threading.Thread(target=pump, args=(process.stderr, SHELL_STDERR), daemon=True)]
        readers[0].start()
        try:
            pump(process.stdout, SHELL_STDOUT)
            readers[0].join()
            code = process.wait()
            if code < 0:
                code = 128 - code
            with write_lock:
                stream.write(struct.pack("<BI", SHELL_EXIT, 1) + bytes([code & 0xFF]))
        finally:
            self._kill(process)

    # sync
    def _sync(self, stream: _Stream) -> None:
        while True:
            try:
                request, length = struct.unpack("<4sI", stream.read_exact(8))
            except _Closed:
                return
            if request == b"QUIT":
                return
            if request in (b"SEND", b"RECV", b"STAT", b"STA2", b"LST2", b"LIST", b"LIS2"):
                if length > 4096:
                    self._sync_fail(stream, f"path too long ({length})")
                    return
                path = stream.read_exact(length).decode("utf-8", "surrogateescape")
            else:
                self._sync_fail(stream, f"unknown sync request {request!r}")
                return
            if request == b"SEND":
                if not self._sync_send(stream, path):
                    return
            elif request == b"RECV":
                self._sync_recv(stream, path)
            elif request == b"STAT":
                self._sync_stat_v1(stream, path)
            elif request in (b"STA2", b"LST2"):
                self._sync_stat_v2(stream, path, follow=request == b"STA2")
            else:
                self._sync_list(stream, path, v2=request == b"LIS2")

    @staticmethod
    def _sync_fail(stream: _Stream, message: str) -> None:
        data = message.encode()
        stream.write(b"FAIL" + struct.pack("<I", len(data)) + data)

    def _sync_stat_v1(self, stream: _Stream, path: str) -> None:
        try:
            st = os.stat(self.device_path(path))
            reply = struct.pack("<4sIII", b"STAT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime))
        except (OSError, ValueError):
            reply = struct.pack("<4sIII", b"STAT", 0, 0, 0)
        stream.write(reply)

    @staticmethod
    def _stat_v2_fields(st: os.stat_result) -> tuple[int, ...]:
        return (st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                int(st.st_atime), int(st.st_mtime), int(st.st_ctime))

    def _sync_stat_v2(self, stream: _Stream, path: str, follow: bool) -> None:
        fmt = "<4sIQQIIIIQqqq"
        try:
            target = self.device_path(path)
            st = os.stat(target) if follow else os.lstat(target)
            reply = struct.pack(fmt, b"STA2" if follow else b"LST2", 0, *self._stat_v2_fields(st))
        except OSError as err:
            reply = struct.pack(fmt, b"STA2" if follow else b"LST2", err.errno or 2, *([0] * 10))
        except ValueError:
            reply = struct.pack(fmt, b"STA2" if follow else b"LST2", 13, *([0] * 10))  # EACCES
        stream.write(reply)

    def _sync_list(self, stream: _Stream, path: str, v2: bool) -> None:
        out = bytearray()
        try:
            directory = self.device_path(path)
            names = [".", ".."] + sorted(os.listdir(directory))
        except (OSError, ValueError):
            names, directory = [], None
        for name in names:
            assert directory is not None
            with contextlib.suppress(OSError):
                st = os.lstat(directory / name)
                encoded = name.encode("utf-8", "surrogateescape")
                if v2:
                    out += struct.pack("<4sIQQIIIIQqqqI", b"DNT2", 0, *self._stat_v2_fields(st), len(encoded))
                else:
                    out += struct.pack("<4sIIII", b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF,
                                       int(st.st_mtime), len(encoded))
                out += encoded
        if v2:
            out += struct.pack("<4sIQQIIIIQqqqI", b"DONE", 0, *([0] * 10), 0)
        else:
            out += struct.pack("<4sIIII", b"DONE", 0, 0, 0, 0)
        stream.write(bytes(out))

    def _sync_send(self, stream: _Stream, spec: str) -> bool:
        """Receive one file; False if the connection was dropped (the fault) or the stream ended."""
        path, _, mode_text = spec.rpartition(",")
        if not path:
            path, mode_text = spec, "33188"
        try:
            mode = int(mode_text)
        except ValueError:
            mode = 0o100644
        error: str | None = None
        target: Path | None = None
        handle = None
        try:
            target = self.device_path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISLNK(mode):
                handle = None
            else:
                handle = open(target, "wb")  # noqa: SIM115 - closed below
        except (OSError, ValueError) as err:
            error = f"couldn't create file: {err}"
        link_target = b""
        conn = stream.conn
        try:
            while True:
                request, length = struct.unpack("<4sI", stream.read_exact(8))
                if request == b"DATA":
                    if length > SYNC_DATA_MAX:
                        self._sync_fail(stream, f"data chunk too large ({length})")
                        return False
                    remaining = length
                    while remaining:
                        part = stream.read_exact(min(remaining, 64 * 1024))
                        remaining -= len(part)
                        conn.send_bytes_received += len(part)
                        if (self.fault == "drop-mid-transfer" and conn.send_bytes_received >= self.fault_bytes
                                and self._fire()):
                            conn.kill()
                            return False
                        if handle is not None and error is None:
                            try:
                                self._write(handle, part)
                            except OSError as err:
                                # adbd: SendSyncFailErrno(s, "write failed"), the partial file removed, the
                                # sync service ends.
                                handle.close()
                                with contextlib.suppress(OSError):
                                    os.unlink(target)  # type: ignore[arg-type]
                                self._sync_fail(stream, f"write failed: {err.strerror or err}")
                                return False
                        elif stat.S_ISLNK(mode):
                            link_target += part
                elif request == b"DONE":
                    mtime = length
                    break
                else:
                    self._sync_fail(stream, f"invalid data message {request!r}")
                    return False
        except _Closed:
            return False
        finally:
            if handle is not None:
                handle.close()
        if error is None and target is not None:
            try:
                if stat.S_ISLNK(mode):
                    if target.is_symlink() or target.exists():
                        target.unlink()
                    os.symlink(link_target.decode("utf-8", "surrogateescape"), target)
                else:
                    os.chmod(target, stat.S_IMODE(mode) or 0o644)
                    if mtime:
                        os.utime(target, (mtime, mtime))
            except OSError as err:
                error = f"couldn't finish {path}: {err}"
        if error is not None:
            self._sync_fail(stream, error)
        else:
            stream.write(b"OKAY" + struct.pack("<I", 0))
        return True

    def _write(self, handle: Any, data: bytes) -> None:
        """Write SEND data, as the device's storage allows: with the disk-full fault, the files under the sandbox's
        /data may hold ``fault_bytes`` in all (deleting files makes room again, as on a real filesystem)."""
        if self.fault == "disk-full":
            with self._fault_lock:
                handle.flush()
                if self._data_bytes() + len(data) > self.fault_bytes:
                    raise OSError(28, os.strerror(28))  # ENOSPC
        handle.write(data)

    def _data_bytes(self) -> int:
        total = 0
        for path in (self.sandbox / "data").rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink():
                    total += path.stat().st_size
        return total

    def _sync_recv(self, stream: _Stream, path: str) -> None:
        try:
            source = open(self.device_path(path), "rb")  # noqa: SIM115
        except (OSError, ValueError) as err:
            self._sync_fail(stream, f"open failed: {getattr(err, 'strerror', None) or err}")
            return
        with source:
            while True:
                data = source.read(SYNC_DATA_MAX)
                if not data:
                    break
                stream.write(b"DATA" + struct.pack("<I", len(data)) + data)
        stream.write(b"DONE" + struct.pack("<I", 0))


# ---------------------------------------------------------------------------------------------------------------
# pytest


def require_adb() -> str:
    """Debian's adb client; skip without it, or fail when CI=true (.ci/setup installs it)."""
    found = shutil.which("adb")
    if found is None:
        message = "adb is not installed (Debian: apt-get install adb)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true: a missing peer is a failure")
        pytest.skip(message)
    return found


@contextlib.contextmanager
def running_adb_emulator(sandbox_dir: Path, **options: Any) -> Iterator[AdbEmulator]:
    emulator = AdbEmulator(sandbox_dir, **options)
    with emulator:
        yield emulator


@pytest.fixture
def adb_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., AdbEmulator]]:
    """A factory: ``adb_emulator(auth="none", maxdata=4096, ...)`` starts an emulator on a fresh sandbox
    (``sandbox_dir=`` to choose one) and returns it; every one started is stopped at teardown.
    ``benchmark_model=True`` also installs the benchmark_model stand-in (see :func:`install_benchmark_model`)."""
    started: list[AdbEmulator] = []

    def make(sandbox_dir: Path | None = None, *, benchmark_model: bool = False, **options: Any) -> AdbEmulator:
        sandbox = Path(sandbox_dir) if sandbox_dir is not None else tmp_path_factory.mktemp("adb-sandbox")
        emulator = AdbEmulator(sandbox, **options)
        if benchmark_model:
            emulator.benchmark_model_path = install_benchmark_model(emulator.sandbox)
        emulator.start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


# ---------------------------------------------------------------------------------------------------------------
# Standalone: try farmbench's Android path without a phone


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.peers.adb_emulator --port 5555 --sandbox DIR``: serve an emulated phone until Ctrl-C.

    Prints the port and the host paths of the benchmark_model and onnxruntime_perf_test stand-ins to put in a device
    file (they run models with this Python's ai_edge_litert and onnxruntime)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--sandbox", type=Path, required=True, help="directory laid out like the phone's filesystem")
    parser.add_argument("--auth", choices=AUTH_MODES, default="accept-new",
                        help="accept-new: accept any key and remember it (like tapping Allow)")
    ns = parser.parse_args(argv)
    emulator = AdbEmulator(ns.sandbox, port=ns.port, auth=ns.auth)
    tools = Path(ns.sandbox).resolve().parent / (Path(ns.sandbox).name + "-tools")
    standin = install_benchmark_model(tools, "benchmark_model")
    ort_standin = install_ort_perf_test(tools, "onnxruntime_perf_test")
    with emulator:
        print(f"emulated phone on 127.0.0.1:{emulator.port} (sandbox {emulator.sandbox})", flush=True)
        print(f"benchmark_model stand-in for the device file: {standin}", flush=True)
        print(f"onnxruntime_perf_test stand-in for the device file: {ort_standin}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
