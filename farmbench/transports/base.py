"""The Transport seam: run a command with a timeout, push, pull, close.

Implementations (local, ssh, later adb) only move bytes and processes. Everything built from those four
operations -- hashing a file on the device, the content-addressed upload cache, the remote cache directory --
lives here once, written against :meth:`Transport.run`, so every transport behaves the same way.

Commands are argv lists. They reach a shell only through :func:`farmbench.transports.quoting.join`.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from farmbench.errors import ArtifactCorruptedError, DiskFullError, Interrupted, TransferTimeoutError, TransportError

# After SIGTERM at the timeout, how long a command may take to exit before it gets SIGKILL (local and on boards).
KILL_AFTER_S = 2.0

# How much of stderr an error message quotes: enough for a traceback's last lines, not a whole log.
STDERR_TAIL_CHARS = 800

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

# Hashes the file in $1 with whatever the board has: coreutils/busybox sha256sum, then perl's shasum, then python3.
# Exit 3: no such file; exit 4: no tool. Only the first 64 characters of stdout are used. The tools read the file on
# stdin: given a name with a newline or backslash, coreutils escapes it and puts a "\" before the hash.
SHA256_SCRIPT = """\
[ -f "$1" ] || exit 3
if command -v sha256sum >/dev/null 2>&1; then exec sha256sum <"$1"; fi
if command -v shasum >/dev/null 2>&1; then exec shasum -a 256 <"$1"; fi
if command -v python3 >/dev/null 2>&1; then
  exec python3 -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1"
fi
exit 4
"""
_SHA256_NO_FILE_RC = 3
_SHA256_NO_TOOL_RC = 4

# How often a command or transfer in flight looks at the cancel flag (the delay between Ctrl-C and its kill).
CANCEL_POLL_S = 0.2

# Kills process $1 (or the one whose PID is in file $3) and all its descendants, children first so none is reparented
# to init before it is found, then its process group when it leads one -- but only if its command line still
# contains the nonce $2: the PID of a command lost with its connection may have been reused by an unrelated process
# since. Descendants are found through /proc/*/status with grep and tr (coreutils, busybox and toybox all have them;
# no pgrep needed). $3, when given, is removed too (the PID file on phones).
KILL_TREE_SCRIPT = """\
p=$1
if [ -z "$p" ] && [ -n "$3" ]; then p=$(cat "$3" 2>/dev/null); fi
[ -n "$3" ] && rm -f "$3"
case "$p" in ''|*[!0-9]*) exit 0;; esac
c=$(tr '\\000' ' ' < "/proc/$p/cmdline" 2>/dev/null)
case "$c" in *"$2"*) ;; *) exit 0;; esac
kill_tree() {
  for f in $(grep -l "^PPid:[[:space:]]*$1\\$" /proc/[0-9]*/status 2>/dev/null); do
    c=${f#/proc/}; kill_tree "${c%/status}"
  done
  kill -9 "$1" 2>/dev/null
}
kill_tree "$p"
kill -9 -- "-$p" 2>/dev/null
exit 0
"""

# `df -P -k DIR`: POSIX output, 1024-byte blocks; the 4th field of the last line is what is available.
_DF_ARGV = ("df", "-P", "-k")
_NO_SPACE_TEXT = ("no space left on device", "disk full", "enospc", "quota exceeded")


@dataclass(frozen=True)
class Orphan:
    """A command whose connection was lost while it ran: it may still be running on the device. ``pid`` is the shell
    farmbench started it under, ``nonce`` a string in that shell's command line (so a reused PID is never killed),
    ``pid_file`` a file on the device to remove with it (phones)."""

    pid: str
    nonce: str
    pid_file: str = ""


def tail(text: str, limit_chars: int = STDERR_TAIL_CHARS) -> str:
    """The end of ``text``, marked when cut, for error messages."""
    text = text.strip()
    if len(text) <= limit_chars:
        return text
    return "..." + text[-limit_chars:]


def partial_name(path: str) -> str:
    """A unique sibling name to write ``path`` under before renaming it into place, so a reader never sees half a
    file under the final name and two writers of the same file never share a temporary."""
    return f"{path}.part-{uuid.uuid4().hex[:12]}"


class Deadline:
    """A point in time that several steps share, so one ``timeout_s`` bounds a whole multi-step operation."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._end_s = time.monotonic() + timeout_s

    def remaining_s(self) -> float:
        return self._end_s - time.monotonic()

    def elapsed_s(self) -> float:
        return self.timeout_s - self.remaining_s()


@dataclass(frozen=True)
class Completed:
    """A command that ran to its end (whatever its exit code). ``command`` is the shell-quoted argv.

    ``rc`` follows the shell convention on every transport: 128+N when the command died of signal N, 127 when the
    program was not found, 126 when it could not be executed; -1 when the device reported no status at all.
    """

    command: str
    rc: int
    stdout: str
    stderr: str
    duration_s: float
    device: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self) -> Completed:
        """``self`` when the command succeeded; otherwise a TransportError naming device, command, rc and stderr."""
        if self.rc == 0:
            return self
        message = f"{self.device or 'device'}: `{self.command}` exited with status {self.rc}"
        err = tail(self.stderr)
        if err:
            message += f"; stderr:\n{err}"
        hint = None
        if self.rc in (126, 127):
            hint = "the program is missing or not executable on this device; install it or fix PATH"
        raise TransportError(message, hint=hint)


class Transport(abc.ABC):
    """How farmbench talks to one device. Implementations: local, ssh (and adb).

    Every operation takes a timeout in seconds and raises :class:`~farmbench.errors.TransportError` (or a subclass)
    when it fails; a command that merely exits non-zero is a :class:`Completed` with that ``rc``.
    """

    device: str
    """Name used in messages ("local", "pi5", "ssh://pi@10.0.0.5")."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._cleanup_local = threading.local()
        # Commands lost with their connection; a new transport to the same device kills them (see reap()).
        self.orphans: list[Orphan] = []

    # Cancellation: a run that is stopping (Ctrl-C) cancels each device's transport from another thread.

    def cancel(self) -> None:
        """Stop: the operation in flight ends soon (within CANCEL_POLL_S; its processes killed on the device) and
        every later one raises :class:`~farmbench.errors.Interrupted` at once, except cleanup (:meth:`remove`,
        :meth:`cleanup`). Safe to call from any thread, more than once."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @contextlib.contextmanager
    def cleanup(self) -> Iterator[None]:
        """Operations in this block (in this thread) run even after :meth:`cancel`: removing temporary files and
        killing what a cancelled command left behind must still happen while farmbench stops."""
        depth = getattr(self._cleanup_local, "depth", 0)
        self._cleanup_local.depth = depth + 1
        try:
            yield
        finally:
            self._cleanup_local.depth = depth

    def interrupt_pending(self) -> bool:
        """Whether the operation in this thread should stop now: cancelled, and not cleanup."""
        return self._cancelled.is_set() and not getattr(self._cleanup_local, "depth", 0)

    def check_cancelled(self, what: str) -> None:
        """Raise Interrupted when :meth:`interrupt_pending`; ``what`` names the operation for the message."""
        if self.interrupt_pending():
            raise Interrupted(f"{self.device}: {what} stopped: farmbench is stopping (interrupted)")

    def reap(self, orphans: Sequence[Orphan], *, timeout_s: float = 30.0) -> int:
        """Kill commands an earlier connection to this device lost while they ran (and remove their PID files).
        Best effort; returns how many were looked at."""
        with self.cleanup():
            for orphan in orphans:
                with contextlib.suppress(TransportError):
                    self.run(["sh", "-c", KILL_TREE_SCRIPT, "sh", orphan.pid, orphan.nonce, orphan.pid_file],
                             timeout_s=timeout_s)
        return len(orphans)

    @abc.abstractmethod
    def run(self, argv: Sequence[str], *, timeout_s: float, stdin: bytes | None = None) -> Completed:
        """Run ``argv`` (no shell in between on the host; one POSIX shell parsing ``quoting.join(argv)`` on a
        remote device) and wait for it. At ``timeout_s`` the command and its process group are killed on the
        device and :class:`~farmbench.errors.CommandTimeoutError` is raised."""

    @abc.abstractmethod
    def push(self, local: Path, remote: str, *, timeout_s: float) -> None:
        """Copy a host file to ``remote`` (whose directory must exist). The file appears under its final name
        only once complete."""

    @abc.abstractmethod
    def pull(self, remote: str, local: Path, *, timeout_s: float) -> None:
        """Copy a device file to ``local`` (whose directory must exist), appearing only once complete."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection. Safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def run_shell(self, script: str, *, timeout_s: float) -> Completed:
        """Run ``script`` with ``sh -c``: the exception to the argv rule, for the rare pipeline or redirection.
        Anything interpolated into ``script`` must have gone through :func:`~farmbench.transports.quoting.quote`;
        better, pass values as positional parameters: ``run(["sh", "-c", 'wc -c < "$1"', "sh", path])``."""
        return self.run(["sh", "-c", script], timeout_s=timeout_s)

    # Helpers built on run() and push(), the same on every transport.

    def remote_sha256(self, path: str, timeout_s: float) -> str | None:
        """The sha256 (lowercase hex) of a file on the device, or None when there is no such file."""
        done = self.run(["sh", "-c", SHA256_SCRIPT, "sh", path], timeout_s=timeout_s)
        if done.rc == _SHA256_NO_FILE_RC:
            return None
        if done.rc == _SHA256_NO_TOOL_RC:
            raise TransportError(f"{self.device}: cannot hash {path}: no sha256sum, shasum or python3 on the device",
                                 hint="install coreutils (or busybox with sha256sum) on the device")
        done.check()
        digest = done.stdout[:64].lower()
        if not _SHA256_HEX.fullmatch(digest):
            raise TransportError(f"{self.device}: unexpected output hashing {path}: {done.stdout[:200]!r}")
        return digest

    def default_cache_dir(self, timeout_s: float) -> str:
        """The device's farmbench cache directory: ``${XDG_CACHE_HOME:-$HOME/.cache}/farmbench``, as the device's
        own shell expands it for the user we log in as."""
        done = self.run(["sh", "-c", 'printf "%s\\n" "${XDG_CACHE_HOME:-$HOME/.cache}/farmbench"'],
                        timeout_s=timeout_s).check()
        path = done.stdout.strip()
        if not path.startswith("/"):
            raise TransportError(f"{self.device}: cannot work out the cache directory (got {path!r})",
                                 hint="set HOME for the login user on the device, or configure the cache dir")
        return path

    def mkdir_p(self, path: str, *, timeout_s: float) -> None:
        self.run(["mkdir", "-p", "--", path], timeout_s=timeout_s).check()

    def remove(self, paths: Sequence[str], *, timeout_s: float, recursive: bool = False) -> None:
        """Delete files (and directory trees when ``recursive``) on the device; missing ones are not an error.
        Cleanup: runs even after :meth:`cancel`."""
        if isinstance(paths, str):
            raise TypeError("remove() takes a list of paths")
        if not paths:
            return
        with self.cleanup():
            self.run(["rm", "-rf" if recursive else "-f", "--", *paths], timeout_s=timeout_s).check()

    def free_bytes(self, path: str, *, timeout_s: float) -> int | None:
        """Bytes available to us on the filesystem holding ``path`` (``df -P -k``), or None when df cannot tell."""
        with self.cleanup():
            done = self.run([*_DF_ARGV, path], timeout_s=timeout_s)
        lines = [line.split() for line in done.stdout.strip().splitlines()]
        if done.rc != 0 or len(lines) < 2:
            return None
        fields = lines[-1]
        # A long device name wraps onto its own line in some df builds: the numbers then start the last line.
        numbers = [field for field in fields if field.isdigit()]
        return int(numbers[2]) * 1024 if len(numbers) >= 3 else None

    def push_cached(self, local: Path, sha256: str, cache_dir: str, name: str, *,
                    timeout_s: float) -> tuple[str, bool]:
        """Make ``<cache_dir>/<sha256[:16]>/<name>`` on the device hold ``local`` (whose hash is ``sha256``).

        Returns the remote path and whether it was uploaded (False: the device already had those bytes).
        An upload goes to a temporary name, is hashed on the device, and only then renamed into place, so the
        final name never holds a partial or corrupted file.
        """
        if not _SHA256_HEX.fullmatch(sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"name must be a plain file name, got {name!r}")
        deadline = Deadline(timeout_s)
        directory = f"{cache_dir.rstrip('/')}/{sha256[:16]}"
        final = f"{directory}/{name}"

        def remaining_s() -> float:
            left_s = deadline.remaining_s()
            if left_s <= 0:
                raise TransferTimeoutError(f"{self.device}: uploading {local.name} to {final} took longer than "
                                          f"{timeout_s:g} s", hint="raise the transfer timeout for this device")
            return left_s

        if self.remote_sha256(final, remaining_s()) == sha256:
            return final, False
        self.mkdir_p(directory, timeout_s=remaining_s())
        # push() is atomic by itself; this second temporary name exists so the hash is checked before the
        # file takes its final name.
        temporary = partial_name(final)
        try:
            try:
                self.push(local, temporary, timeout_s=remaining_s())
            except TransportError as err:
                self._discard(temporary)
                raise self._disk_full(err, local, directory) or err
            uploaded = self.remote_sha256(temporary, remaining_s())
            if uploaded != sha256:
                local_sha256 = _file_sha256(local)
                if local_sha256 != sha256:
                    raise ArtifactCorruptedError(
                        f"{local} changed: its sha256 is {local_sha256}, not the expected {sha256}",
                        hint="rebuild the artifact (its manifest no longer matches the file)")
                raise TransportError(f"{self.device}: upload of {local.name} to {final} is corrupted: sha256 on the "
                                     f"device is {uploaded}, expected {sha256}",
                                     hint="retry; if it persists, check free space and storage on the device")
            self.run(["mv", "-f", "--", temporary, final], timeout_s=remaining_s()).check()
        except Exception:
            self._discard(temporary)
            raise
        return final, True

    def _discard(self, path: str) -> None:
        """Best-effort removal of a leftover temporary file after a failure that is already being reported."""
        # The original failure is the one worth reporting, not a failure to tidy up after it.
        with contextlib.suppress(Exception):
            self.remove([path], timeout_s=10.0)

    def _disk_full(self, err: TransportError, local: Path, directory: str) -> DiskFullError | None:
        """A DiskFullError for a failed upload when the device ran out of room: the error says so (ENOSPC), or the
        filesystem has less free space than the file needs. SFTP servers report ENOSPC as a bare "Failure", so the
        free space is asked for after the (partial) file was removed. None: some other failure."""
        if isinstance(err, (DiskFullError, TransferTimeoutError)):
            return None
        size_bytes = local.stat().st_size
        text = f"{err} {err.__cause__ or ''}".lower()
        said_so = any(marker in text for marker in _NO_SPACE_TEXT) or (
            isinstance(err.__cause__, OSError) and err.__cause__.errno in (errno.ENOSPC, errno.EDQUOT))
        free: int | None = None
        with contextlib.suppress(Exception):
            free = self.free_bytes(directory, timeout_s=10.0)
        if not said_so and (free is None or free >= size_bytes):
            return None
        if free is None:
            room = "free space unknown"
        elif free < size_bytes:
            room = f"{free / 2**20:.1f} MiB free"
        else:  # the device said so, though df sees room there (a quota, or another filesystem under the path)
            room = "the device reports no space left"
        return DiskFullError(
            f"{self.device}: no room for {local.name} ({size_bytes / 2**20:.1f} MiB) in {directory}: {room}",
            hint="free space on the device (old models under its farmbench cache directory can go), or point "
                 "cache_dir (boards) / device_dir (phones) in the device file at a larger filesystem")


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
