"""The Transport seam: run a command with a timeout, push, pull, close.

Implementations (local, ssh, later adb) only move bytes and processes. Everything built from those four
operations -- hashing a file on the device, the content-addressed upload cache, the remote cache directory --
lives here once, written against :meth:`Transport.run`, so every transport behaves the same way.

Commands are argv lists. They reach a shell only through :func:`farmbench.transports.quoting.join`.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from farmbench.errors import TransferTimeoutError, TransportError

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
        """Delete files (and directory trees when ``recursive``) on the device; missing ones are not an error."""
        if isinstance(paths, str):
            raise TypeError("remove() takes a list of paths")
        if not paths:
            return
        self.run(["rm", "-rf" if recursive else "-f", "--", *paths], timeout_s=timeout_s).check()

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
            self.push(local, temporary, timeout_s=remaining_s())
            uploaded = self.remote_sha256(temporary, remaining_s())
            if uploaded != sha256:
                local_sha256 = _file_sha256(local)
                if local_sha256 != sha256:
                    raise TransportError(
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


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
