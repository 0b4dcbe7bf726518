"""An Android phone over ADB (adb-shell 0.4.x, no adb server needed), behaving like the other transports.

Sharp edges of adb-shell 0.4.x handled here (see issue 4, "Transport (adb-shell 0.4.x)"):

* **TCP_NODELAY.** A command is a few small packets each way (OPEN, OKAY, WRTE, CLSE; adb-shell also wrote each
  header and payload with separate ``send()`` calls); with Nagle on, a small write behind an unacknowledged one
  waits for the peer's delayed ACK (~40 ms). The socket gets TCP_NODELAY right after it connects.
* **No exit codes.** adb-shell speaks shell protocol v1: one byte stream, **stderr merged into stdout**, no exit
  status. ``run()`` appends ``echo "__FB_RC_<nonce>=$?"`` and parses (and strips) it; :attr:`Completed.stderr` is
  always ``""`` on this transport.
* **Timeouts.** adb-shell's ``read_timeout_s`` is an *inactivity* timeout that also caps ``transport_timeout_s``;
  a benchmark silent for longer than it would fail. ``run()`` therefore raises both to the command's own
  ``timeout_s``; :attr:`AdbTarget.read_timeout_s` bounds protocol steps (open, transfers' chunks).
* **A timed-out command keeps running on the phone.** Each command runs under a ``sh`` that writes its PID to
  ``/data/local/tmp/farmbench/pids/<uuid>``; at the timeout a second shell kills that process, its process group
  and all its descendants, then :class:`CommandTimeoutError` is raised. :meth:`AdbTransport.cancel` (Ctrl-C) kills
  the command in flight the same way over a second connection, since the first is busy reading it; a command whose
  connection dropped becomes an :class:`~farmbench.transports.base.Orphan` the next connection kills (``reap``).
* **A dropped TCP connection looks like silence.** adb-shell reads ``b""`` at EOF until ``read_timeout_s`` passes
  (here: the command's whole timeout). :class:`_AdbIOManager01` raises ``ConnectionResetError`` at EOF instead.
* **One connection, several threads** times out inside adb-shell: every call holds this transport's lock.
* **Checksums.** adb-shell announces protocol version 0x01000000, so every packet carries the byte sum of its
  payload, and a device checks it (the ADB emulator sums in Python: that was most of a push's time).
  :class:`_AdbIOManager01` announces 0x01000001 as adb does; when the device answers 0x01000001 too, packets go out
  with ``data_check`` 0 and received sums are not checked, like adb. An older device still gets and sends sums.
* **push** is farmbench's own sync SEND (:class:`_SyncSendStream`), not adb-shell's. adb-shell packs DATA chunks of
  ``maxdata // 2`` bytes (at most 64 KiB) into WRTEs only while they stay below ``maxdata`` (3/4 full at 256 KiB,
  half full at 4 KiB), copies each byte three times on the way, and writes TCP packets with one ``send()`` on a
  non-blocking socket, dropping whatever a short write left over. Ours fills every WRTE to the device's ``maxdata``
  straight from the file (``readinto``), DATA chunks at most 64 KiB, one WRTE in flight as the protocol wants.
  Directories (broken in adb-shell) are refused. **stat** of a missing file returns zeros: use :meth:`exists`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import socket
import struct
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
from adb_shell import constants as adb_constants
from adb_shell import exceptions as adb_exceptions
from adb_shell.adb_device import AdbDevice, _AdbIOManager
from adb_shell.auth.keygen import keygen, write_public_keyfile
from adb_shell.auth.sign_pythonrsa import PythonRSASigner
from adb_shell.transport.tcp_transport import TcpTransport

from farmbench.errors import (
    AuthError,
    CommandTimeoutError,
    ConfigError,
    ConnectError,
    Interrupted,
    TransferTimeoutError,
    TransportError,
)
from farmbench.transports.base import KILL_TREE_SCRIPT, Completed, Deadline, Orphan, Transport, partial_name
from farmbench.transports.keyfiles import warn_if_loose
from farmbench.transports.quoting import join, quote

_log = logging.getLogger(__name__)


def _fast_checksum(data: bytes | bytearray | memoryview | str) -> int:
    """ADB's packet checksum (the sum of the payload's bytes, mod 2**32), summed by numpy.

    Still needed for CNXN/AUTH and for devices older than protocol 0x01000001. adb-shell sums with Python's
    ``sum()``: on a 20 MB push to such a device that loop was most of the time. Same value, about 100x faster."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return int(np.frombuffer(data, dtype=np.uint8).sum(dtype=np.uint64)) & 0xFFFFFFFF


DEFAULT_PORT = 5555
DEFAULT_KEY_PATH = Path("~/.android/adbkey")
REMOTE_ROOT = "/data/local/tmp/farmbench"
PID_DIR = f"{REMOTE_ROOT}/pids"
# How long the second shell that kills a timed-out command may take.
_KILL_TIMEOUT_S = 10.0

# Run by the phone's sh as `sh -c _PID_WRAPPER sh <pidfile> <join(argv)>`: record our PID, then let this shell
# parse and run the command line (so builtins and `exit N` behave as under ssh).
_PID_WRAPPER = 'echo $$ > "$1"; eval "$2"'


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
    """The signer for the ADB key at ``path`` (``path.pub`` beside it), created like adb does when missing.
    An existing key that other users can read is used, with a warning naming the chmod fix (once per file)."""
    path = path.expanduser()
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            keygen(str(path))
            os.chmod(path, 0o600)
            _log.warning("created ADB key %s; the phone will ask to allow it once", path)
        else:
            warn_if_loose(path, "ADB private key")
            if not Path(f"{path}.pub").exists():
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


# ADB protocol versions (AOSP adb.h). The version in use is the lower of the two announced in CNXN; from 0x01000001 on,
# a packet's data_check is 0 instead of the byte sum of its payload.
_A_VERSION_SKIP_CHECKSUM = 0x01000001
_PACKET_HEADER = struct.Struct("<6I")  # command, arg0, arg1, data_length, data_check, magic
_CNXN_WIRE = adb_constants.ID_TO_WIRE[adb_constants.CNXN]
# A payload up to this size goes out in one write with its header; larger ones are not copied to join them.
_JOIN_MAX_BYTES = 4096


class _AdbIOManager01(_AdbIOManager):  # type: ignore[misc]  # adb-shell is untyped
    """adb-shell's packet layer speaking ADB protocol version 0x01000001, as adb does, and writing packets whole.

    * CNXN announces 0x01000001. Once the device's CNXN announces it too, packets go out with data_check 0 and
      received sums are not checked (adb checks none). Before that (CNXN, AUTH), and with a device that answers
      0x01000000, sums are sent and nonzero received sums checked; 0 is accepted, because a device takes our version
      from our CNXN and may already send 0 in its AUTH and CNXN.
    * adb-shell's TCP ``bulk_write`` is one ``send()`` on a non-blocking socket and ignores a short write, so a large
      WRTE meeting a full socket buffer would lose its tail. Here the rest is written too.
    """

    def __init__(self, transport: Any) -> None:
        super().__init__(transport)
        self.skip_checksum = False

    def connect(self, banner: Any, rsa_keys: Any, auth_timeout_s: Any, auth_callback: Any, adb_info: Any) -> Any:
        self.skip_checksum = False
        return super().connect(banner, rsa_keys, auth_timeout_s, auth_callback, adb_info)

    def _send(self, msg: Any, adb_info: Any) -> None:
        data = msg.data
        arg0 = _A_VERSION_SKIP_CHECKSUM if msg.command == _CNXN_WIRE else msg.arg0
        check = 0 if self.skip_checksum else _fast_checksum(data)
        header = _PACKET_HEADER.pack(msg.command, arg0, msg.arg1, len(data), check, msg.magic)
        if len(data) <= _JOIN_MAX_BYTES:
            self._write_all(header + bytes(data), adb_info.transport_timeout_s)
        else:
            self._write_all(header, adb_info.transport_timeout_s)
            self._write_all(data, adb_info.transport_timeout_s)

    def _write_all(self, data: bytes | bytearray | memoryview, timeout_s: float | None) -> None:
        if not isinstance(self._transport, TcpTransport):
            self._transport.bulk_write(bytes(data), timeout_s)  # USB: one bulk transfer, as adb-shell writes it
            return
        view = memoryview(data)
        while view:
            try:
                view = view[self._transport.bulk_write(view, timeout_s):]
            except BlockingIOError:  # select() said writable, the buffer filled up again: wait once more
                continue

    def _read_bytes_from_device(self, length: int, adb_info: Any) -> bytes:
        """adb-shell's loop, except that EOF on TCP (select said readable, recv gave nothing) is a dropped
        connection, raised at once instead of being read again until ``read_timeout_s``."""
        start_s = time.monotonic()
        data = bytearray()
        while length > 0:
            chunk = self._transport.bulk_read(length, adb_info.transport_timeout_s)
            if not chunk and isinstance(self._transport, TcpTransport):
                raise ConnectionResetError(f"the device closed the connection after {len(data)} of"
                                           f" {len(data) + length} bytes")
            data += chunk
            length -= len(chunk)
            if length and time.monotonic() - start_s > adb_info.read_timeout_s:
                raise adb_exceptions.AdbTimeoutError(f"Timeout: read {len(data)} of {len(data) + length} bytes")
        return bytes(data)

    def _read_packet_from_device(self, adb_info: Any) -> tuple[bytes, int, int, bytes]:
        header = self._read_bytes_from_device(_PACKET_HEADER.size, adb_info)
        wire, arg0, arg1, length_bytes, check, _magic = _PACKET_HEADER.unpack(header)
        command = adb_constants.WIRE_TO_ID.get(wire)
        if command is None:
            raise adb_exceptions.InvalidCommandError(
                f"Unknown command: {wire:#010x} (arg0 = {arg0}, arg1 = {arg1}, msg = {header!r})")
        if command == adb_constants.CNXN:
            self.skip_checksum = arg0 >= _A_VERSION_SKIP_CHECKSUM
        data = bytes(self._read_bytes_from_device(length_bytes, adb_info)) if length_bytes else b""
        if check and not self.skip_checksum and _fast_checksum(data) != check:
            raise adb_exceptions.InvalidChecksumError(f"Received checksum {_fast_checksum(data)} != {check}")
        return command, arg0, arg1, data


# The largest sync DATA chunk a device accepts (SYNC_DATA_MAX in AOSP's file_sync_protocol.h).
SYNC_DATA_MAX_BYTES = 64 * 1024
_SYNC_HEADER = struct.Struct("<4sI")  # id, then a length (DONE: the mtime)
# What adb-shell's push sent as the file mode: a regular file, rwx for user and group (benchmark_model must run).
_PUSH_MODE = adb_constants.DEFAULT_PUSH_MODE


class _SyncSendStream:
    """The device-bound half of one ``sync:`` SEND, the way adb sends it: the sync byte stream (SEND, DATA..., DONE)
    cut into WRTE packets of up to the device's ``maxdata``, each filled straight from the file (``readinto``, no
    intermediate copies), one WRTE in flight: the next goes once the device OKAYed the last. DATA chunks are at most
    :data:`SYNC_DATA_MAX_BYTES` and never straddle two WRTEs (a device must accept that, but need not be tested on it).

    ``acked(file_bytes)`` is called after each OKAY with the file bytes that WRTE carried. Once the deadline passed,
    the next WRTE raises :class:`_DeadlinePassed` instead of going out.
    """

    def __init__(self, adb: AdbDevice, stream_info: Any, payload_max_bytes: int, deadline: Deadline,
                 acked: Callable[[int], None], stop: Callable[[], None] = lambda: None) -> None:
        self._adb = adb
        self._info = stream_info
        self._buffer = bytearray(payload_max_bytes)
        self._view = memoryview(self._buffer)
        self._used_bytes = 0
        self._file_bytes = 0  # file bytes in the buffer, not yet acknowledged
        self._deadline = deadline
        self._acked = acked
        self._stop = stop  # raises to abandon the transfer (farmbench is stopping)
        self._reply = bytearray()  # what the device sent back on the sync stream (OKAY or FAIL at the end)

    def put(self, data: bytes) -> None:
        """Append a small piece (a request header, the path); it may straddle two WRTEs."""
        while data:
            take_bytes = min(len(data), len(self._buffer) - self._used_bytes)
            self._buffer[self._used_bytes:self._used_bytes + take_bytes] = data[:take_bytes]
            self._used_bytes += take_bytes
            data = data[take_bytes:]
            if self._used_bytes == len(self._buffer):
                self.flush()

    def put_file(self, handle: io.FileIO) -> None:
        """Append ``handle``'s bytes up to its end as DATA chunks."""
        header_bytes = _SYNC_HEADER.size
        while True:
            room_bytes = len(self._buffer) - self._used_bytes - header_bytes
            if room_bytes <= 0:
                self.flush()
                continue
            start = self._used_bytes + header_bytes
            read_bytes = handle.readinto(self._view[start:start + min(room_bytes, SYNC_DATA_MAX_BYTES)])
            if not read_bytes:
                return
            _SYNC_HEADER.pack_into(self._buffer, self._used_bytes, b"DATA", read_bytes)
            self._used_bytes = start + read_bytes
            self._file_bytes += read_bytes

    def finish(self, mtime_s: int) -> None:
        """Send DONE and wait for the device's verdict: raises PushFailedError with the device's message on FAIL."""
        self.put(_SYNC_HEADER.pack(b"DONE", mtime_s))
        self.flush()
        self._read_reply(_SYNC_HEADER.size)
        reply_id, length_bytes = _SYNC_HEADER.unpack_from(self._reply)
        if reply_id == b"OKAY":
            return
        if reply_id == b"FAIL":
            self._read_reply(_SYNC_HEADER.size + length_bytes)
            self._raise_if_failed()
        raise adb_exceptions.InvalidResponseError(f"unexpected sync reply {bytes(self._reply[:8])!r} to DONE")

    def flush(self) -> None:
        """Send what the buffer holds as one WRTE and wait for the device's OKAY."""
        if not self._used_bytes:
            return
        self._stop()
        if self._deadline.remaining_s() <= 0:
            raise _DeadlinePassed()
        info = self._info
        message = adb_message.AdbMessage(adb_constants.WRTE, info.local_id, info.remote_id,
                                         self._view[:self._used_bytes])
        self._adb._io_manager.send(message, info)
        while True:
            command, data = self._adb._read_until([adb_constants.OKAY, adb_constants.WRTE, adb_constants.CLSE], info)
            if command == adb_constants.OKAY:
                break
            self._take(command, data)  # the device answered before the end: a FAIL, then it closes
        self._used_bytes = 0
        file_bytes, self._file_bytes = self._file_bytes, 0
        self._acked(file_bytes)

    def _read_reply(self, size_bytes: int) -> None:
        while len(self._reply) < size_bytes:
            command, data = self._adb._read_until([adb_constants.WRTE, adb_constants.CLSE], self._info)
            self._take(command, data)

    def _take(self, command: bytes, data: bytes) -> None:
        """A WRTE (already OKAYed by adb-shell) or CLSE that arrived on the sync stream."""
        if command == adb_constants.WRTE:
            self._reply += data
            self._raise_if_failed()
            return
        self._raise_if_failed()
        raise adb_exceptions.PushFailedError("the device closed the sync stream before confirming the file")

    def _raise_if_failed(self) -> None:
        if len(self._reply) < _SYNC_HEADER.size:
            return
        reply_id, length_bytes = _SYNC_HEADER.unpack_from(self._reply)
        if reply_id == b"FAIL" and len(self._reply) >= _SYNC_HEADER.size + length_bytes:
            reason = bytes(self._reply[_SYNC_HEADER.size:_SYNC_HEADER.size + length_bytes])
            raise adb_exceptions.PushFailedError(f"the device refused the file: {reason.decode('utf-8', 'replace')}")


class _DeadlineWriter(io.BytesIO):
    """A local file as adb-shell's pull wants a stream (BytesIO: adb-shell then does not reopen it), failing once the
    deadline passed (adb-shell swallows exceptions from progress callbacks, not from write())."""

    def __init__(self, handle: io.BufferedWriter, deadline: Deadline, stop: Callable[[], None]) -> None:
        super().__init__()
        self._handle = handle
        self._deadline = deadline
        self._stop = stop

    def write(self, data: Any) -> int:
        self._stop()
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
        super().__init__()
        self.target = target
        self.device = device or target.address
        self._lock = threading.Lock()
        self._closed = False
        self._inflight_pid_file: str | None = None  # the command run() is waiting for
        self._signer = load_or_create_key(target.key_path)
        self._adb = self._make_device()
        self._connect()

    # Connecting

    def _make_device(self) -> AdbDevice:
        device = self._make_adb_shell_device()
        device._io_manager = _AdbIOManager01(device._io_manager._transport)
        return device

    def _make_adb_shell_device(self) -> AdbDevice:
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
        # libusb says BUSY when another process (usually an adb server) claimed the interface, ACCESS when this
        # user may not open the device node at all (udev rules).
        if any(word in text.upper() for word in ("BUSY", "CLAIM")):
            return ConnectError(f"{self.device}: the USB device is busy ({text}); a running adb server usually "
                                "holds it", busy=True, hint="run `adb kill-server` and try again, or use ADB over "
                                                            "TCP (`adb tcpip 5555`, then adb://PHONE_IP:5555)")
        if "ACCESS" in text.upper():
            return ConnectError(f"{self.device}: no permission to open the USB device ({text})",
                                hint="add a udev rule for the phone (Debian: apt-get install android-sdk-platform-tools"
                                     "-common) and replug it, or use ADB over TCP")
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
        if isinstance(err, (adb_exceptions.InvalidCommandError, adb_exceptions.InvalidResponseError)) \
                and target.serial is None:
            return ConnectError(f"{where} answered, but not in ADB ({detail[:120]})",
                                hint="check the port: ADB over TCP is 5555 after `adb tcpip 5555`; Wireless debugging "
                                     "uses the port the phone shows (pair it with `adb pair` first)")
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

    def cancel(self) -> None:
        """Transport.cancel, and the command in flight is killed now, over a second connection: the first is busy
        reading that command's output (adb-shell cannot do two things at once on one connection). The command then
        ends, run() returns to its caller's thread and raises Interrupted there. Blocks for at most about
        connect_timeout_s + 10 s (call it from a thread of its own when that matters)."""
        super().cancel()
        pid_file = self._inflight_pid_file
        if pid_file is None or self._closed:
            return
        side: AdbDevice | None = None
        try:
            side = self._make_device()
            side.connect(rsa_keys=[self._signer], transport_timeout_s=self.target.connect_timeout_s,
                         read_timeout_s=self.target.connect_timeout_s, auth_timeout_s=self.target.connect_timeout_s)
            side.shell(join(["sh", "-c", KILL_TREE_SCRIPT, "sh", "", _nonce_of(pid_file), pid_file]),
                       transport_timeout_s=_KILL_TIMEOUT_S, read_timeout_s=_KILL_TIMEOUT_S, timeout_s=_KILL_TIMEOUT_S)
        except Exception:  # noqa: BLE001  stopping goes on; the command's own timeout still bounds it
            _log.warning("%s: could not kill the command in flight over a second connection", self.device,
                         exc_info=True)
        finally:
            if side is not None:
                with contextlib.suppress(Exception):
                    side.close()

    def _stop_transfer(self) -> None:
        if self.interrupt_pending():
            raise Interrupted(f"{self.device}: transfer stopped (farmbench is stopping)")

    # Commands

    def _shell(self, command: str, timeout_s: float) -> bytes:
        # read_timeout_s is an inactivity limit and caps transport_timeout_s: both go up to the command's timeout,
        # or a benchmark that prints nothing for read_timeout_s would fail.
        return bytes(self._adb.shell(command, transport_timeout_s=timeout_s, read_timeout_s=timeout_s,
                                     timeout_s=timeout_s, decode=False))

    def run(self, argv: Sequence[str], *, timeout_s: float, stdin: bytes | None = None) -> Completed:
        """Run ``argv`` on the phone. ``stderr`` is merged into ``stdout`` (ADB shell protocol v1)."""
        command = join(argv)
        self.check_cancelled(f"`{command}`")
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
            self._inflight_pid_file = None if self._cleaning_up() else pid_file
            try:
                raw = self._shell(line, timeout_s)
            except _ADB_TIMEOUTS:
                self._kill(pid_file)
                raise CommandTimeoutError(
                    f"{self.device}: `{command}` did not finish within {timeout_s:g} s; killed on the device",
                    hint="raise the timeout for this step (read_timeout_s follows it)") from None
            except Exception as err:
                # The connection dropped under the command: it may still run on the phone. The next connection
                # kills it (the orchestrator reaps orphans after reconnecting).
                self.orphans.append(Orphan("", nonce, pid_file))
                raise TransportError(f"{self.device}: running `{command}` failed: {type(err).__name__}: {err}",
                                     hint="farmbench reconnects and retries; check that the phone is still connected"
                                          " (`adb devices`) and its Wi-Fi or cable") from err
            finally:
                self._inflight_pid_file = None
        if self.interrupt_pending():
            raise Interrupted(f"{self.device}: `{command}` was stopped (farmbench is stopping); killed on the device")
        duration_s = time.monotonic() - started
        text = raw.decode("utf-8", "backslashreplace").replace("\r\n", "\n")
        at = text.rfind(marker)
        match = re.match(r"(\d+)\n?$", text[at + len(marker):]) if at >= 0 else None
        if match is None:
            # The shell died before the marker (killed, or the device closed the stream): no status to report.
            return Completed(command, -1, text, "", duration_s, self.device)
        return Completed(command, int(match.group(1)), text[:at], "", duration_s, self.device)

    def _cleaning_up(self) -> bool:
        return self.cancelled and not self.interrupt_pending()

    def _kill(self, pid_file: str) -> None:
        """Kill the timed-out command on the phone through a second shell (caller holds the lock)."""
        try:
            self._adb.shell(join(["sh", "-c", KILL_TREE_SCRIPT, "sh", "", _nonce_of(pid_file), pid_file]),
                            transport_timeout_s=_KILL_TIMEOUT_S,
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
        """Copy one file (not a directory) to ``remote`` via a temporary name, renamed into place once the device
        confirmed the whole file. ``progress(bytes_done, bytes_total)`` is called each time the device acknowledged
        a packet (up to its ``maxdata``: 4 KiB on old phones, 256 KiB or 1 MiB on recent ones)."""
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
            self.check_cancelled(f"push of {local}")
            try:
                with local.open("rb", buffering=0) as handle:
                    self._send_file(handle, temporary, deadline, count)
            except Exception as err:  # noqa: BLE001  (re-raised by _transfer_failed)
                self._transfer_failed(err, f"pushing {local} to {remote}", deadline, temporary)
        left_s = deadline.remaining_s()
        if left_s <= 0:
            self._discard(temporary)
            raise TransferTimeoutError(f"{self.device}: pushing {local} to {remote} took longer than {timeout_s:g} s")
        self.run(["mv", "-f", "--", temporary, remote], timeout_s=max(left_s, 5.0)).check()

    def _send_file(self, handle: io.FileIO, remote: str, deadline: Deadline, acked: Callable[[int], None]) -> None:
        """One sync SEND of ``handle`` to ``remote`` on a new sync stream (caller holds the lock)."""
        adb = self._adb
        io_timeout_s = self._io_timeout_s(deadline)
        stream_info = adb._open(b"sync:", io_timeout_s, io_timeout_s, None)
        # The device's CNXN maxdata bounds every WRTE we send; ours (1 MiB, adb-shell's CNXN) bounds it too.
        payload_max_bytes = min(int(adb._maxdata or adb_constants.MAX_LEGACY_ADB_DATA), adb_constants.MAX_ADB_DATA)
        stream = _SyncSendStream(adb, stream_info, payload_max_bytes, deadline, acked, self._stop_transfer)
        spec = f"{remote},{_PUSH_MODE}".encode()
        stream.put(_SYNC_HEADER.pack(b"SEND", len(spec)) + spec)
        stream.put_file(handle)
        stream.finish(mtime_s=int(time.time()))
        adb._clse(stream_info)

    def pull(self, remote: str, local: Path, *, timeout_s: float) -> None:
        local = Path(local)
        deadline = Deadline(timeout_s)
        if not self.exists(remote, timeout_s=self._io_timeout_s(deadline)):
            raise TransportError(f"{self.device}: cannot pull {remote}: no such file on the device")
        temporary = Path(partial_name(str(local)))
        with self._lock:
            self._check_open()
            self.check_cancelled(f"pull of {remote}")
            try:
                with temporary.open("wb") as handle:
                    self._adb.pull(remote, _DeadlineWriter(handle, deadline, self._stop_transfer),
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
        if isinstance(err, Interrupted):
            raise err
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
                                 hint="farmbench reconnects and retries; check the phone's connection") from err
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


def _nonce_of(pid_file: str) -> str:
    """The nonce in a PID file's name (it is also in the command line of the shell that wrote it)."""
    return pid_file.rsplit("/", 1)[-1]
