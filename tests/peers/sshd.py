"""A real OpenSSH sshd on loopback, standing in for an SSH board (registered from tests/conftest.py).

The server runs Debian's ``/usr/sbin/sshd`` in the foreground on a free unprivileged port of 127.0.0.1, with a
temporary ed25519 host key, a temporary client key in its authorized_keys, and no PAM or StrictModes so it works
from a temporary directory. It is started once per test session; each test gets its own known_hosts copy so host
key tests can change it freely.

``running_sshd`` does the same outside pytest (the benchmarks use it).

When sshd is missing the tests skip, except with CI=true, where a missing peer is a failure (.ci/setup installs
openssh-server and openssh-client).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farmbench.transports.ssh import SshTarget, SshTransport

SSHD = Path("/usr/sbin/sshd")  # sshd re-executes itself, so it must be started by absolute path
STARTUP_TIMEOUT_S = 10.0


def require_tool(path_or_name: str) -> str:
    """The tool's path; skip without it, or fail when CI=true (CI must exercise the real peer)."""
    found = shutil.which(path_or_name)
    if found is None:
        message = f"{path_or_name} is not installed (Debian: apt-get install openssh-server openssh-client)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true: a missing peer is a failure")
        pytest.skip(message)
    return found


def keygen(path: Path, comment: str) -> str:
    """A new passphrase-less ed25519 key at ``path``; returns the public line's "type base64" part."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    key_type, key_b64 = path.with_suffix(".pub").read_text().split()[:2]
    return f"{key_type} {key_b64}"


def openssh_knows(known_hosts: Path, name: str) -> bool:
    """Whether OpenSSH's own ssh-keygen finds ``name`` in ``known_hosts`` (hashed entries included)."""
    return subprocess.run(["ssh-keygen", "-F", name, "-f", str(known_hosts)], check=False,
                          capture_output=True).returncode == 0


def openssh_fingerprint(public_key: Path) -> str:
    """``SHA256:...`` as OpenSSH's own ssh-keygen prints it, to check farmbench's messages against."""
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key)],
                         check=True, capture_output=True, text=True).stdout
    return out.split()[1]


@dataclass(frozen=True)
class SshdPeer:
    host: str
    port: int
    user: str
    directory: Path
    client_key: Path
    host_key_line: str  # "ssh-ed25519 AAAA..." of the server
    host_public_key: Path
    other_key_line: str  # a different ed25519 key, for mismatch tests
    log: Path

    @property
    def known_hosts_name(self) -> str:
        return f"[{self.host}]:{self.port}"

    def write_known_hosts(self, path: Path, key_line: str | None = None) -> Path:
        path.write_text(f"{self.known_hosts_name} {key_line or self.host_key_line}\n")
        return path

    def target(self, known_hosts: Path, **overrides: Any) -> SshTarget:
        """A target for this server that ignores the user's ~/.ssh/config; ``known_hosts`` is used as given."""
        fields: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user,
                                  "key_file": self.client_key, "known_hosts": known_hosts, "ssh_config": None,
                                  "connect_timeout_s": 5.0}
        fields.update(overrides)
        return SshTarget(**fields)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_banner(process: subprocess.Popen[bytes], port: int) -> bool:
    """True once the port answers with an SSH banner; False if sshd exits or the time runs out."""
    end_s = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < end_s:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
                if conn.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def _config(directory: Path, port: int, user: str, extra: str = "") -> Path:
    path = directory / "sshd_config"
    path.write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {directory / 'host_ed25519'}
PidFile {directory / 'sshd.pid'}
AuthorizedKeysFile {directory / 'authorized_keys'}
AllowUsers {user}
# The key files live in a pytest temporary directory whose modes sshd's StrictModes would reject.
StrictModes no
UsePAM no
# The CI container runs as root; keys only, as on a sensibly configured board.
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# ProxyJump tests hop through this same server.
AllowTcpForwarding yes
Subsystem sftp internal-sftp
PrintMotd no
MaxStartups 100
MaxSessions 30
LogLevel VERBOSE
{extra}""")
    return path


# bash sources ~/.bashrc for every command sshd runs (Debian builds it so) when it is the first shell level. A session
# environment that says it is not (SHLVL=1: bash makes it 2) skips that, as a board without a heavy rc file would:
# on a machine whose ~/.bashrc runs `pyenv init`, that is ~0.2 s saved on every command. For benchmarks that measure
# farmbench rather than this machine's login shell.
LEAN_SHELL_CONFIG = "SetEnv SHLVL=1\n"


class SshdStartError(RuntimeError):
    """sshd rejected the configuration or did not start; the message holds its output."""


@contextlib.contextmanager
def running_sshd(directory: Path, *, extra_config: str = "") -> Iterator[SshdPeer]:
    """Start sshd with fresh keys in ``directory`` (which must exist) and stop it on exit. Used by the ``sshd``
    fixture and by the benchmarks under benchmarks/ (outside pytest). ``extra_config``: more sshd_config lines."""
    user = getpass.getuser()
    host_key_line = keygen(directory / "host_ed25519", "farmbench-test-host")
    other_key_line = keygen(directory / "other_host_ed25519", "farmbench-test-other-host")
    keygen(directory / "client_ed25519", "farmbench-test-client")
    (directory / "authorized_keys").write_text((directory / "client_ed25519.pub").read_text())
    if os.geteuid() == 0:
        # As root sshd insists on its privilege separation directory, which the package creates only when the
        # service starts (never, in a container).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = directory / "sshd.log"
    for _attempt in range(5):  # the free port can be taken between probing it and sshd binding it
        port = _free_port()
        config = _config(directory, port, user, extra_config)
        checked = subprocess.run([str(SSHD), "-t", "-f", str(config)], check=False, capture_output=True, text=True)
        if checked.returncode != 0:
            raise SshdStartError(f"sshd rejected the test configuration:\n{checked.stderr}")
        with log.open("ab") as log_handle:
            process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)],
                                       stdin=subprocess.DEVNULL, stdout=log_handle, stderr=log_handle)
        if _wait_for_banner(process, port):
            break
        process.kill()
        process.wait()
    else:
        raise SshdStartError(f"sshd did not start; its log:\n{log.read_text()}")
    try:
        yield SshdPeer(host="127.0.0.1", port=port, user=user, directory=directory,
                       client_key=directory / "client_ed25519", host_key_line=host_key_line,
                       host_public_key=directory / "host_ed25519.pub", other_key_line=other_key_line, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid`` (from /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(next(line for line in status.read_text().splitlines() if line.startswith("PPid:")).split()[1])
            children.setdefault(ppid, []).append(int(status.parent.name))
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class RestartableSshd:
    """An sshd of its own on a fixed port, which a test can crash and start again (the fault tests).

    :meth:`crash` SIGKILLs the listener and every sshd session process under it, as when a board's sshd dies or the
    link drops for good: clients see their connections reset, and the commands those sessions started keep running,
    orphaned (that is what farmbench must clean up after reconnecting). :meth:`start` starts it again on the same
    port with the same host key."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        user = getpass.getuser()
        host_key_line = keygen(directory / "host_ed25519", "farmbench-test-host")
        other_key_line = keygen(directory / "other_host_ed25519", "farmbench-test-other-host")
        keygen(directory / "client_ed25519", "farmbench-test-client")
        (directory / "authorized_keys").write_text((directory / "client_ed25519.pub").read_text())
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log = directory / "sshd.log"
        self.port = _free_port()
        self.config = _config(directory, self.port, user)
        checked = subprocess.run([str(SSHD), "-t", "-f", str(self.config)], check=False, capture_output=True,
                                 text=True)
        if checked.returncode != 0:
            raise SshdStartError(f"sshd rejected the test configuration:\n{checked.stderr}")
        self.process: subprocess.Popen[bytes] | None = None
        self.peer = SshdPeer(host="127.0.0.1", port=self.port, user=user, directory=directory,
                             client_key=directory / "client_ed25519", host_key_line=host_key_line,
                             host_public_key=directory / "host_ed25519.pub", other_key_line=other_key_line,
                             log=self.log)

    def start(self) -> None:
        end_s = time.monotonic() + STARTUP_TIMEOUT_S
        while True:  # the port can linger for a moment after a crash
            with self.log.open("ab") as log_handle:
                self.process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)],
                                                stdin=subprocess.DEVNULL, stdout=log_handle, stderr=log_handle)
            if _wait_for_banner(self.process, self.port):
                return
            self.process.kill()
            self.process.wait()
            if time.monotonic() > end_s:
                raise SshdStartError(f"sshd did not start again on port {self.port}; its log:\n"
                                     f"{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def crash(self) -> list[int]:
        """SIGKILL the listener and its sshd session processes; returns the PIDs killed."""
        if self.process is None or self.process.poll() is not None:
            return []
        sessions = [pid for pid in _descendants(self.process.pid) if _comm(pid).startswith("sshd")]
        for pid in [self.process.pid, *sessions]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        self.process.wait()
        return [self.process.pid, *sessions]

    def stop(self) -> None:
        self.crash()


@pytest.fixture
def restartable_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableSshd]:
    """A running sshd of the test's own (see :class:`RestartableSshd`), stopped at teardown."""
    require_tool(str(SSHD))
    require_tool("ssh-keygen")
    try:
        server = RestartableSshd(tmp_path_factory.mktemp("own-sshd"))
        server.start()
    except SshdStartError as err:
        pytest.fail(str(err))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdPeer]:
    """The running sshd, for the whole session."""
    require_tool(str(SSHD))
    require_tool("ssh-keygen")
    with contextlib.ExitStack() as stack:
        try:
            peer = stack.enter_context(running_sshd(tmp_path_factory.mktemp("sshd")))
        except SshdStartError as err:
            pytest.fail(str(err))
        yield peer


@pytest.fixture
def known_hosts(sshd: SshdPeer, tmp_path: Path) -> Path:
    """A known_hosts that holds the server's real key."""
    return sshd.write_known_hosts(tmp_path / "known_hosts")


@pytest.fixture
def ssh_target(sshd: SshdPeer, known_hosts: Path) -> SshTarget:
    return sshd.target(known_hosts)


@pytest.fixture
def ssh_board(ssh_target: SshTarget) -> Iterator[SshTransport]:
    """A connected transport to the loopback "board"."""
    with SshTransport(ssh_target, device="loopback-board") as board:
        yield board
