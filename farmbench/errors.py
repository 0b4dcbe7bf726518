"""One exception root for farmbench, and the exit-code policy.

Every error farmbench raises on purpose derives from :class:`FarmbenchError`. The CLI catches it once
(in ``cli.main``), prints ``str(err)`` and its ``hint``, and exits with ``err.exit_code``:

* 0 -- success
* 1 -- a device or tool failure (``FarmbenchError`` default)
* 2 -- a usage or configuration error (:class:`UsageError` and subclasses)
* 3 -- a regression found by a check (not an exception; returned by the check command)
* 130 -- the run was stopped by SIGINT or SIGTERM (:class:`Interrupted`)

Messages name the file, field, device or command involved, and the hint says what to do next.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REGRESSION = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


class FarmbenchError(Exception):
    """Root of every error farmbench raises on purpose. Exit code 1 unless a subclass says otherwise."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def format(self) -> str:
        """The message and, on a second line, what to do next."""
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(FarmbenchError):
    """The user asked for something farmbench cannot do as asked (exit 2)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A sweep or device file is wrong. Names the file, line and key."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.key = key
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
            where += ": "
        if key:
            where += f"{key}: "
        super().__init__(where + message, hint=hint)


class BuildError(FarmbenchError):
    """Building, converting or verifying a model artifact failed (exit 1)."""


class WeightsUnavailableError(BuildError):
    """Requested weights cannot be had here (e.g. ImageNet weights while offline)."""


class ArtifactVerificationError(BuildError):
    """A freshly built artifact failed to load, run, or match its reference. It is never kept."""


class CacheError(FarmbenchError):
    """The artifact cache is unreadable or inconsistent."""


class ArtifactCorruptedError(CacheError):
    """An artifact file in the cache no longer has the sha256 its manifest records. Never retried: the bytes that
    would be measured are not the ones that were built and verified."""

    transient = False


class Interrupted(FarmbenchError):
    """farmbench is stopping (SIGINT or SIGTERM): an operation on a device was cut short (its processes killed there)
    or not started. Never recorded as a measurement: a resume runs that item again. Exit 130."""

    exit_code = EXIT_INTERRUPTED
    transient = False


class TransportError(FarmbenchError):
    """Talking to a device failed: connection, authentication, a command that timed out, a transfer (exit 1).
    ``transient`` says whether retrying (after reconnecting) may help."""

    transient: bool = True


class HostKeyError(TransportError):
    """An SSH host key is unknown or does not match known_hosts, or known_hosts cannot be read. Never retried.
    ``problem`` says which: ``unknown``, ``changed`` or ``unreadable`` (an attribute, not subclasses: records store
    the class name as ``error_class``, and that stays ``HostKeyError``)."""

    transient = False

    def __init__(self, message: str, *, problem: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problem = problem


class AuthError(TransportError):
    """The device refused our credentials (SSH key, ADB key not accepted). Never retried."""

    transient = False


class ConnectError(TransportError):
    """The device could not be reached: refused, no route, unknown name, no answer, or not speaking SSH.
    ``busy``: it is there but held by another program (a USB phone claimed by a running adb server)."""

    def __init__(self, message: str, *, hint: str | None = None, busy: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.busy = busy


class CommandTimeoutError(TransportError):
    """A command on a device ran past its timeout; it has been killed there."""


class TransferTimeoutError(TransportError):
    """A push or pull ran past its timeout; the partial file was removed (best effort)."""


class DiskFullError(TransportError):
    """A push failed because the device's filesystem has no room for the file. Not transient: retrying at once will
    not make room (the message says how much is needed and free)."""

    transient = False


class RunnerError(FarmbenchError):
    """Running a model on a device failed in a way the runtime explained (unsupported op, bad model)."""

    transient = False


class StoreError(FarmbenchError):
    """The results database cannot be opened, is too new for this farmbench, or is inconsistent (exit 1)."""


class DatabaseNotFoundError(StoreError):
    """The user pointed a reading command at a results database that does not exist (exit 2)."""

    exit_code = EXIT_USAGE


class RunNotFoundError(StoreError):
    """A run id the user named is not in the results database (exit 2: a usage error)."""

    exit_code = EXIT_USAGE


class ReportError(FarmbenchError):
    """An HTML report could not be written (exit 1)."""
