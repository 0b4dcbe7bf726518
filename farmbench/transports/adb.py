"""An Android phone over ADB (adb-shell 0.4.x, no adb server needed), behaving like the other transports.

Sharp edges of adb-shell 0.4.x handled here (see issue 4, "Transport (adb-shell 0.4.x)"):

* **TCP_NODELAY.** adb-shell writes each packet's header and payload with separate ``send()`` calls; with Nagle on,
  every request waits for the delayed ACK (~40 ms). The socket gets TCP_NODELAY right after it connects.
* **No exit codes.** adb-shell speaks shell protocol v1: one byte stream, **stderr merged into stdout**, no exit
  status. ``run()`` appends ``echo "__FB_RC_<nonce>=$?"`` and parses (and strips) it; :attr:`Completed.stderr` is
  always ``""`` on this transport.
* **Timeouts.** adb-shell's ``read_timeout_s`` is an *inactivity* timeout that also caps ``transport_timeout_s``;
  a benchmark silent for longer than it would fail. ``run()`` therefore raises both to the command's own
  ``timeout_s``; :attr:`AdbTarget.read_timeout_s` bounds protocol steps (open, transfers' chunks).
* **A timed-out command keeps running on the phone.** Each command runs under a ``sh`` that writes its PID to
  ``/data/local/tmp/farmbench/pids/<uuid>``; at the timeout a second shell kills that process, its process group
  and all its descendants, then :class:`CommandTimeoutError` is raised.
* **One connection, several threads** times out inside adb-shell: every call holds this transport's lock.
* **push** of a directory is broken in adb-shell: refused. Its progress callback gets chunk sizes; ``push()`` sums
  them and reports ``(bytes_done, bytes_total)``. **stat** of a missing file returns zeros: use :meth:`exists`.
"""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from adb_shell import adb_message
from adb_shell import exceptions as adb_exceptions
from adb_shell.adb_device import AdbDevice
from adb_shell.auth.keygen import keygen, write_public_keyfile
from adb_shell.auth.sign_pythonrsa import PythonRSASigner
from adb_shell.transport.tcp_transport import TcpTransport

from farmbench.errors import (
    AuthError,
    CommandTimeoutError,
    ConfigError,
    ConnectError,
    TransferTimeoutError,
    TransportError,
)
from farmbench.transports.base import Completed, Deadline, Transport, partial_name
from farmbench.transports.quoting import join, quote

_log = logging.getLogger(__name__)


def _fast_checksum(data: bytes | bytearray | str) -> int:
    """ADB's packet checksum (the sum of the payload's bytes, mod 2**32), summed by numpy.

    adb-shell sums with Python's ``sum()`` over every byte it sends: on a 20 MB push that loop was most of the
    time (45 MB/s against 324 MB/s for Debian's adb to the same device). Same value, about 100x faster."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return int(np.frombuffer(data, dtype=np.uint8).sum(dtype=np.uint64)) & 0xFFFFFFFF


# adb-shell looks the function up in its module at call time, so this replaces it for every AdbMessage.
adb_message.checksum = _fast_checksum

DEFAULT_PORT = 5555
DEFAULT_KEY_PATH = Path("~/.android/adbkey")
REMOTE_ROOT = "/data/local/tmp/farmbench"
PID_DIR = f"{REMOTE_ROOT}/pids"
# How long the second shell that kills a timed-out command may take.
_KILL_TIMEOUT_S = 10.0

# Run by the phone's sh as `sh -c _PID_WRAPPER sh <pidfile> <join(argv)>`: record our PID, then let this shell
# parse and run the command line (so builtins and `exit N` behave as under ssh).
_PID_WRAPPER = 'echo $$ > "$1"; eval "$2"'

# Kills the process whose PID is in file $1: its process group (when it leads one) and its descendants, children
# first so none is reparented to init before it is found. Descendants are found through /proc/*/status (toybox
# and busybox both have grep); no pgrep needed.
_KILL_SCRIPT = """\
p=$(cat "$1" 2>/dev/null)
rm -f "$1"
case "$p" in ''|*[!0-9]*) exit 0;; esac
kill_tree() {
  for f in $(grep -l "^PPid:[[:space:]]*$1\\$" /proc/[0-9]*/status 2>/dev/null); do
    c=${f#/proc/}; kill_tree "${c%/status}"
  done
  kill -9 "$1" 2>/dev/null
}
kill -9 -- "-$p" 2>/dev/null
kill_tree "$p"
exit 0
"""

_CONNECT_HINT = ("check that the phone is on the same network and that ADB over TCP is on: connect it by USB and "
                 "run `adb tcpip 5555` (or enable Wireless debugging), then use its Wi-Fi address")


@dataclass(frozen=True)
class AdbTarget:
    """Where and how to connect: ``host``/``port`` over TCP, or ``serial`` over USB (needs ``adb-shell[usb]``)."""

    host: str | None = None
    port: int = DEFAULT_PORT
    serial: str | None = None
    key_path: Path = DEFAULT_KEY_PATH
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    # How long the user has to tap "Allow" on "Allow USB debugging?" for a key the phone has not seen.
    auth_timeout_s: float = 30.0
    # Only benchmarks turn this off (to measure what it saves).
    tcp_nodelay: bool = True

    def __post_init__(self) -> None:
        if (self.host is None) == (self.serial is None):
            raise ConfigError("an ADB target needs either a host (TCP) or a serial (USB), not both or neither",
                              hint="write adb://HOST[:PORT] or adb-usb://SERIAL")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AdbTarget:
        """``adb://host[:port]`` (TCP, port 5555 by default) or ``adb-usb://SERIAL``."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
            raise ConfigError(f"unexpected path or query in {url!r}",
                              hint="write adb://HOST[:PORT] or adb-usb://SERIAL")
        if parsed.scheme == "adb":
            try:
                port = parsed.port
            except ValueError:
                raise ConfigError(f"bad port in {url!r}", hint="the port is a number from 1 to 65535") from None
            if not parsed.hostname:
                raise ConfigError(f"no host in {url!r}", hint="write adb://HOST[:PORT]")
            return cls(host=parsed.hostname, port=port or DEFAULT_PORT, **options)
        if parsed.scheme == "adb-usb":
            if not parsed.netloc:
                raise ConfigError(f"no serial in {url!r}", hint="write adb-usb://SERIAL (see `adb devices`)")
            return cls(serial=parsed.netloc, **options)
        raise ConfigError(f"not an adb:// or adb-usb:// URL: {url!r}",
                          hint="write adb://HOST[:PORT] or adb-usb://SERIAL")

    @property
    def address(self) -> str:
        if self.serial is not None:
            return f"adb-usb://{self.serial}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"adb://{host}:{self.port}"


def load_or_create_key(path: Path) -> PythonRSASigner:
    """The signer for the ADB key at ``path`` (``path.pub`` beside it), created like adb does when missing."""
    path = path.expanduser()
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            keygen(str(path))
            os.chmod(path, 0o600)
            _log.warning("created ADB key %s; the phone will ask to allow it once", path)
        elif not Path(f"{path}.pub").exists():
            write_public_keyfile(str(path), f"{path}.pub")
        return PythonRSASigner.FromRSAKeyPath(str(path))
    except Exception as err:  # OSError, or the rsa/cryptography parsers' own errors for a bad file
        raise AuthError(f"cannot read or create the ADB key {path}: {err}",
                        hint="fix the key_path, or move the broken file away so a new key is generated") from err


class AdbUnauthorizedError(AuthError):
    """The phone never accepted our ADB key (nobody tapped "Allow" in time, or the key was refused)."""


class _NoDelayTcpTransport(TcpTransport):  # type: ignore[misc]  # adb-shell is untyped
    """adb-shell's TCP transport with TCP_NODELAY set on every (re)connect."""

    def __init__(self, host: str, port: int, *, nodelay: bool) -> None:
        super().__init__(host, port)
        self._nodelay = nodelay

    def connect(self, transport_timeout_s: float | None) -> None:
        super().connect(transport_timeout_s)
        if self._nodelay:
            self._connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _DeadlineReader(io.BytesIO):
    """A local file as adb-shell's push wants a stream (BytesIO: adb-shell then does not reopen it), reading it
    chunk by chunk and failing once the deadline passed. adb-shell swallows exceptions from progress callbacks
    but not from read(), so this is how a push is stopped at its timeout."""

    def __init__(self, handle: io.BufferedReader, deadline: Deadline, progress: Callable[[int], None]) -> None:
        super().__init__()
        self._handle = handle
        self._deadline = deadline
        self._progress = progress

    def read(self, size: int | None = -1) -> bytes:
        if self._deadline.remaining_s() <= 0:
            raise _DeadlinePassed()
        data = self._handle.read(size)
        self._progress(len(data))
        return data


class _DeadlineWriter(io.BytesIO):
    """The pull side of :class:`_DeadlineReader`."""

    def __init__(self, handle: io.BufferedWriter, deadline: Deadline) -> None:
        super().__init__()
        self._handle = handle
        self._deadline = deadline

    def write(self, data: Any) -> int:
        if self._deadline.remaining_s() <= 0:
            raise _DeadlinePassed()
        return self._handle.write(data)


class _DeadlinePassed(Exception):
    pass


_ADB_TIMEOUTS = (adb_exceptions.AdbTimeoutError, adb_exceptions.TcpTimeoutException, socket.timeout)


class AdbTransport(Transport):
    """A connected ADB session to one phone. Connects in the constructor; raises ConnectError or AuthError
    (:class:`AdbUnauthorizedError` when the key is not accepted) with what to do next."""

    def __init__(self, target: AdbTarget, *, device: str | None = None) -> None:
        self.target = target
        self.device = device or target.address
        self._lock = threading.Lock()
        self._closed = False
        self._signer = load_or_create_key(target.key_path)
        self._adb = self._make_device()
        self._connect()

    # Connecting

    def _make_device(self) -> AdbDevice:
        if self.target.serial is None:
            assert self.target.host is not None
            return AdbDevice(_NoDelayTcpTransport(self.target.host, self.target.port, nodelay=self.target.tcp_nodelay))
        try:
            from adb_shell.adb_device import AdbDeviceUsb
            from adb_shell.transport.usb_transport import UsbTransport  # noqa: F401  (present only with [usb])
        except ImportError:
            raise ConnectError(f"{self.device}: USB support is not installed",
                               hint="pip install 'farmbench[usb]' (adb-shell[usb]), or connect over TCP: "
                                    "`adb tcpip 5555` then adb://PHONE_IP:5555") from None
        try:
            return AdbDeviceUsb(serial=self.target.serial)
        except Exception as err:
            raise self._usb_failure(err) from err

    def _usb_failure(self, err: Exception) -> TransportError:
        text = f"{type(err).__name__}: {err}"
        if any(word in text.upper() for word in ("BUSY", "ACCESS", "CLAIM")):
            return ConnectError(f"{self.device}: the USB device is busy ({text}); a running adb server usually "
                                "holds it", hint="run `adb kill-server` and try again, or use ADB over TCP "
                                                 "(`adb tcpip 5555`, then adb://PHONE_IP:5555)")
        return ConnectError(f"{self.device}: cannot open the USB device ({text})",
                            hint="check the cable, that USB debugging is on, and udev permissions "
                                 "(`adb devices` lists it)")

    def _connect(self) -> None:
        target = self.target
        asked_for_approval = threading.Event()
        try:
            self._adb.connect(rsa_keys=[self._signer], transport_timeout_s=target.connect_timeout_s,
                              read_timeout_s=target.connect_timeout_s, auth_timeout_s=target.auth_timeout_s,
                              auth_callback=lambda _device: asked_for_approval.set())
        except Exception as err:
            self._adb.close()
            raise self._connect_failure(err, asked_for_approval.is_set()) from err

    def _connect_failure(self, err: Exception, asked_for_approval: bool) -> TransportError:
        target = self.target
        key = target.key_path.expanduser()
        where = f"{target.host}:{target.port}" if target.serial is None else f"USB device {target.serial}"
        detail = str(err) or type(err).__name__
        if asked_for_approval:
            return AdbUnauthorizedError(
                f"{where} did not accept ADB key {key} within {target.auth_timeout_s:g} s ({detail})",
                hint="unlock the phone and accept \"Allow USB debugging?\" (tick \"Always allow\"), then retry; "
                     f"check that key_path points at the key you allowed before ({key}, {key}.pub)")
        if isinstance(err, adb_exceptions.DeviceAuthError):
            return AuthError(f"{where} requires authentication: {detail}",
                             hint=f"check the ADB key {key}")
        if isinstance(err, ConnectionRefusedError):
            return ConnectError(f"{where} refused the connection (nothing listens for ADB there)", hint=_CONNECT_HINT)
        if isinstance(err, socket.gaierror):
            return ConnectError(f"cannot resolve {target.host}: {detail}", hint="check the phone's address")
        if isinstance(err, (*_ADB_TIMEOUTS, TimeoutError)):
            return ConnectError(f"{where} did not complete an ADB handshake within {target.connect_timeout_s:g} s "
                                f"({detail}); the phone is offline or not reachable", hint=_CONNECT_HINT)
        if target.serial is not None:
            return self._usb_failure(err)
        return ConnectError(f"cannot connect to {where} over ADB: {type(err).__name__}: {detail}",
                            hint=_CONNECT_HINT)

    def _reconnect_quietly(self) -> None:
        """After a transfer stopped halfway, the connection holds a half-done sync stream: start afresh."""
        try:
            self._adb.close()
            self._connect()
        except Exception:  # noqa: BLE001  the next call reports the connection problem itself
            _log.warning("%s: reconnecting after a failed transfer failed", self.device, exc_info=True)

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"{self.device}: the ADB connection is closed", hint="open a new transport")

    # Commands

    def _shell(self, command: str, timeout_s: float) -> bytes:
        # read_timeout_s is an inactivity limit and caps transport_timeout_s: both go up to the command's timeout,
        # or a benchmark that prints nothing for read_timeout_s would fail.
        return bytes(self._adb.shell(command, transport_timeout_s=timeout_s, read_timeout_s=timeout_s,
                                     timeout_s=timeout_s, decode=False))

    def run(self, argv: Sequence[str], *, timeout_s: float, stdin: bytes | None = None) -> Completed:
        """Run ``argv`` on the phone. ``stderr`` is merged into ``stdout`` (ADB shell protocol v1)."""
        command = join(argv)
        if stdin is not None:
            raise TransportError(f"{self.device}: stdin is not supported over ADB shell v1 (`{command}`)",
                                 hint="push the input to a file and pass its path instead")
        nonce = uuid.uuid4().hex[:12]
        marker = f"__FB_RC_{nonce}="
        pid_file = f"{PID_DIR}/{nonce}"
        line = (f"[ -d {PID_DIR} ] || mkdir -p {PID_DIR} 2>/dev/null; "
                f"{join(['sh', '-c', _PID_WRAPPER, 'sh', pid_file, command])}; "
                f'rc=$?; rm -f {quote(pid_file)}; echo "{marker}$rc"')
        started = time.monotonic()
        with self._lock:
            self._check_open()
            try:
                raw = self._shell(line, timeout_s)
            except _ADB_TIMEOUTS:
                self._kill(pid_file)
                raise CommandTimeoutError(
                    f"{self.device}: `{command}` did not finish within {timeout_s:g} s; killed on the device",
                    hint="raise the timeout for this step (read_timeout_s follows it)") from None
            except Exception as err:
                raise TransportError(f"{self.device}: running `{command}` failed: {type(err).__name__}: {err}",
                                     hint="check that the phone is still connected (`adb devices`)") from err
        duration_s = time.monotonic() - started
        text = raw.decode("utf-8", "backslashreplace").replace("\r\n", "\n")
        at = text.rfind(marker)
        match = re.match(r"(\d+)\n?$", text[at + len(marker):]) if at >= 0 else None
        if match is None:
            # The shell died before the marker (killed, or the device closed the stream): no status to report.
            return Completed(command, -1, text, "", duration_s, self.device)
        return Completed(command, int(match.group(1)), text[:at], "", duration_s, self.device)

    def _kill(self, pid_file: str) -> None:
        """Kill the timed-out command on the phone through a second shell (caller holds the lock)."""
        try:
            self._adb.shell(join(["sh", "-c", _KILL_SCRIPT, "sh", pid_file]), transport_timeout_s=_KILL_TIMEOUT_S,
                            read_timeout_s=_KILL_TIMEOUT_S, timeout_s=_KILL_TIMEOUT_S, decode=False)
        except Exception:  # noqa: BLE001  the timeout is the error to report; this one is logged
            _log.warning("%s: could not kill a timed-out command (pid file %s)", self.device, pid_file,
                         exc_info=True)

    def exists(self, path: str, *, timeout_s: float = 10.0) -> bool:
        """Whether ``path`` exists on the phone (adb-shell's stat() returns zeros for a missing file)."""
        return self.run(["test", "-e", path], timeout_s=timeout_s).rc == 0

    # Transfers

    def push(self, local: Path, remote: str, *, timeout_s: float,
             progress: Callable[[int, int], None] | None = None) -> None:
        """Copy one file (not a directory: adb-shell's directory push is broken) to ``remote`` via a temporary
        name. ``progress(bytes_done, bytes_total)`` is called after each chunk."""
        local = Path(local)
        if local.is_dir():
            raise TransportError(f"{self.device}: cannot push directory {local}: only single files are supported "
                                 "over ADB", hint="push the files one by one (or an archive and unpack it)")
        if not local.is_file():
            raise TransportError(f"cannot push {local}: no such file")
        total = local.stat().st_size
        done = 0

        def count(chunk: int) -> None:
            nonlocal done
            done += chunk
            if progress is not None and chunk:
                progress(done, total)

        deadline = Deadline(timeout_s)
        temporary = partial_name(remote)
        with self._lock:
            self._check_open()
            try:
                with local.open("rb") as handle:
                    self._adb.push(_DeadlineReader(handle, deadline, count), temporary,
                                   transport_timeout_s=self._io_timeout_s(deadline),
                                   read_timeout_s=self._io_timeout_s(deadline))
            except Exception as err:  # noqa: BLE001  (re-raised by _transfer_failed)
                self._transfer_failed(err, f"pushing {local} to {remote}", deadline, temporary)
        left_s = deadline.remaining_s()
        if left_s <= 0:
            self._discard(temporary)
            raise TransferTimeoutError(f"{self.device}: pushing {local} to {remote} took longer than {timeout_s:g} s")
        self.run(["mv", "-f", "--", temporary, remote], timeout_s=max(left_s, 5.0)).check()

    def pull(self, remote: str, local: Path, *, timeout_s: float) -> None:
        local = Path(local)
        deadline = Deadline(timeout_s)
        if not self.exists(remote, timeout_s=self._io_timeout_s(deadline)):
            raise TransportError(f"{self.device}: cannot pull {remote}: no such file on the device")
        temporary = Path(partial_name(str(local)))
        with self._lock:
            self._check_open()
            try:
                with temporary.open("wb") as handle:
                    self._adb.pull(remote, _DeadlineWriter(handle, deadline),
                                   transport_timeout_s=self._io_timeout_s(deadline),
                                   read_timeout_s=self._io_timeout_s(deadline))
            except Exception as err:  # noqa: BLE001  (re-raised by _transfer_failed)
                temporary.unlink(missing_ok=True)
                self._transfer_failed(err, f"pulling {remote} to {local}", deadline, None)
        os.replace(temporary, local)

    def _io_timeout_s(self, deadline: Deadline) -> float:
        return max(0.5, min(self.target.read_timeout_s, deadline.remaining_s()))

    def _transfer_failed(self, err: Exception, what: str, deadline: Deadline, remote_temporary: str | None) -> None:
        """Raise the farmbench error for a failed push or pull (caller holds the lock)."""
        self._reconnect_quietly()
        if remote_temporary is not None:
            try:
                self._adb.shell(join(["rm", "-f", "--", remote_temporary]), transport_timeout_s=10.0,
                                read_timeout_s=10.0, timeout_s=10.0)
            except Exception:  # noqa: BLE001  best effort: the transfer failure is the one to report
                _log.debug("%s: could not remove %s", self.device, remote_temporary, exc_info=True)
        if isinstance(err, _DeadlinePassed) or (isinstance(err, _ADB_TIMEOUTS) and deadline.remaining_s() <= 0):
            raise TransferTimeoutError(f"{self.device}: {what} took longer than {deadline.timeout_s:g} s",
                                       hint="raise the transfer timeout for this device") from None
        if isinstance(err, _ADB_TIMEOUTS):
            # adb-shell also ends up here when the connection dropped: it reads b"" until read_timeout_s passes.
            raise TransportError(f"{self.device}: {what} stalled: nothing arrived for {self.target.read_timeout_s:g} s "
                                 "(connection dropped or device unresponsive)",
                                 hint="check the phone's connection; raise read_timeout_s for a slow link") from None
        if isinstance(err, OSError):
            raise TransportError(f"{self.device}: {what} failed: the connection dropped ({type(err).__name__}: {err})",
                                 hint="check the phone's connection and retry") from err
        raise TransportError(f"{self.device}: {what} failed: {type(err).__name__}: {err}",
                             hint="check free space on the device and that the directory exists") from err

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._adb.close()
            except Exception:  # noqa: BLE001  closing a dead socket is not worth an error
                _log.debug("%s: close failed", self.device, exc_info=True)
