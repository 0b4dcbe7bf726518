"""The host itself as a device ("local"): commands are subprocesses, push and pull are file copies."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from farmbench.errors import CommandTimeoutError, Interrupted, TransferTimeoutError, TransportError
from farmbench.transports.base import (
    CANCEL_POLL_S,
    KILL_AFTER_S,
    Completed,
    Deadline,
    Transport,
    partial_name,
    tail,
)
from farmbench.transports.quoting import join

_COPY_CHUNK_BYTES = 1 << 20


class LocalTransport(Transport):
    """Runs argv directly (no shell), each command in a new session so a timeout can kill everything it started."""

    def __init__(self, *, device: str = "local", env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.device = device
        self._env = dict(env) if env is not None else None

    def run(self, argv: Sequence[str], *, timeout_s: float, stdin: bytes | None = None) -> Completed:
        # join() validates argv and gives the same command text a remote transport would send, for messages.
        command = join(argv)
        self.check_cancelled(f"`{command}`")
        start_s = time.monotonic()
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                # Its own session (and so process group, with the child's pid as id): at a timeout we signal the
                # group, which reaches grandchildren the command started, not just the direct child.
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as err:
            # A shell on a remote device reports these as exit 127 / 126; do the same so callers need not know
            # which transport they hold.
            rc = 127 if isinstance(err, FileNotFoundError) else 126
            return Completed(command, rc, "", f"{argv[0]}: {err.strerror}\n", time.monotonic() - start_s,
                             self.device)
        deadline = Deadline(timeout_s)
        try:
            while True:
                # In slices, so a cancel (Ctrl-C in another thread) is noticed; communicate() may be called again
                # after TimeoutExpired without losing output. stdin goes in with the first call only.
                try:
                    stdout_b, stderr_b = process.communicate(
                        stdin, timeout=max(0.0, min(deadline.remaining_s(), CANCEL_POLL_S)))
                    break
                except subprocess.TimeoutExpired:
                    stdin = None
                    if deadline.remaining_s() <= 0:
                        raise
                    if self.interrupt_pending():
                        _terminate_group(process)
                        raise Interrupted(f"{self.device}: `{command}` was stopped (farmbench is stopping); its "
                                          "process group was killed") from None
        except subprocess.TimeoutExpired:
            _, stderr_b = _terminate_group(process)
            message = f"{self.device}: `{command}` did not finish within {timeout_s:g} s; its process group was killed"
            if stderr_b:
                message += f"; stderr so far:\n{tail(stderr_b.decode(errors='replace'))}"
            raise CommandTimeoutError(message, hint="raise the timeout, or find out why the command hangs") from None
        except BaseException:
            # Interrupted (Ctrl-C): do not leave the command running behind us.
            _terminate_group(process)
            raise
        # Popen reports death by signal N as -N; a shell (and so every remote transport) reports 128+N.
        rc = 128 - process.returncode if process.returncode < 0 else process.returncode
        return Completed(command, rc, stdout_b.decode(errors="replace"),
                         stderr_b.decode(errors="replace"), time.monotonic() - start_s, self.device)

    def push(self, local: Path, remote: str, *, timeout_s: float) -> None:
        self.check_cancelled(f"push of {local}")
        self._copy(local, Path(remote), timeout_s, "push")

    def pull(self, remote: str, local: Path, *, timeout_s: float) -> None:
        self.check_cancelled(f"pull of {remote}")
        self._copy(Path(remote), local, timeout_s, "pull")

    def close(self) -> None:
        """Nothing to release."""

    def _copy(self, source: Path, destination: Path, timeout_s: float, what: str) -> None:
        """Copy in chunks so the timeout can be honoured, into a temporary name renamed into place at the end."""
        deadline = Deadline(timeout_s)
        temporary = Path(partial_name(str(destination)))
        try:
            with source.open("rb") as reader, temporary.open("wb") as writer:
                while chunk := reader.read(_COPY_CHUNK_BYTES):
                    writer.write(chunk)
                    self.check_cancelled(f"{what} of {source}")
                    if deadline.remaining_s() <= 0:
                        raise TransferTimeoutError(
                            f"{self.device}: {what} of {source} to {destination} took longer than {timeout_s:g} s")
            os.replace(temporary, destination)
        except OSError as err:
            temporary.unlink(missing_ok=True)
            raise TransportError(f"{self.device}: {what} of {source} to {destination} failed: "
                                 f"{err.strerror or err} ({err.filename})") from err
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def _terminate_group(process: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """SIGTERM the process group, SIGKILL it after KILL_AFTER_S, and return what the command wrote."""
    group_id = process.pid  # start_new_session made the child a group leader
    _signal_group(group_id, signal.SIGTERM)
    try:
        stdout_b, stderr_b = process.communicate(timeout=KILL_AFTER_S)
    except subprocess.TimeoutExpired:
        _signal_group(group_id, signal.SIGKILL)
        try:
            stdout_b, stderr_b = process.communicate(timeout=KILL_AFTER_S)
        except subprocess.TimeoutExpired as still_open:
            # A descendant that left the group (setsid) still holds our pipes; stop waiting for it.
            process.kill()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
            process.wait()
            return bytes(still_open.stdout or b""), bytes(still_open.stderr or b"")
    # The leader exiting does not mean the group is empty: a member that ignores SIGTERM and does not hold our
    # pipes would survive. SIGKILL whatever is left (usually nothing, which is fine).
    _signal_group(group_id, signal.SIGKILL)
    return stdout_b, stderr_b


def _signal_group(group_id: int, signum: signal.Signals) -> None:
    try:
        os.killpg(group_id, signum)
    except ProcessLookupError:
        pass  # already gone
