"""A Linux board over SSH (paramiko), behaving like OpenSSH where users will compare the two.

* Targets come from ``ssh://[user@]host[:port]`` or a device file, and go through the user's ``~/.ssh/config``
  (Host aliases, HostName, User, Port, IdentityFile, ProxyJump, HashKnownHosts).
* Host keys are checked against known_hosts with paramiko's RejectPolicy, always. A host seen for the first time
  is refused unless the caller opted in (``accept_new_host_key``), in which case its key is appended to
  known_hosts and the connection is made again under the same policy. A changed key is refused even then.
* ProxyJump is not acted on by paramiko, so each hop is connected here and the next one rides a ``direct-tcpip``
  channel through it, with the same host-key rules at every hop.
* A command that times out is killed on the board by the board's own ``timeout`` tool: closing the channel
  does not stop a process over there, and exec_command's timeout only bounds each read.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import math
import os
import select
import socket
import threading
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import paramiko

from farmbench.errors import (
    AuthError,
    CommandTimeoutError,
    ConfigError,
    ConnectError,
    HostKeyError,
    Interrupted,
    TransferTimeoutError,
    TransportError,
)
from farmbench.transports.base import (
    CANCEL_POLL_S,
    KILL_AFTER_S,
    KILL_TREE_SCRIPT,
    Completed,
    Deadline,
    Orphan,
    Transport,
    partial_name,
    tail,
)
from farmbench.transports.keyfiles import warn_if_loose
from farmbench.transports.quoting import join

_log = logging.getLogger(__name__)

DEFAULT_PORT = 22
# Deeper than any real bastion chain; reaching it means the ProxyJump settings loop (a host jumping via itself).
MAX_JUMP_HOPS = 8
_READ_CHUNK_BYTES = 64 * 1024
# While stdin is still being sent and the send window is full nothing signals us when it reopens, so poll.
_STDIN_POLL_S = 0.02
# Exit codes of coreutils/busybox `timeout` when it had to stop the command: 124 after SIGTERM, 128+9 after SIGKILL.
_TIMEOUT_EXIT_CODES = (124, 128 + 9)
# Runs `timeout "$@"` under a shell that stays its parent (`; exit $?` keeps the shell from exec'ing it). GNU
# timeout delivers SIGKILL to its whole process group, itself included; without a parent to turn that into exit
# status 137, sshd would report an exit-signal, which paramiko does not decode. The same goes for a command that
# crashes: the shell reports 128+N, as LocalTransport does.
# The shell first prints "<marker>=<its PID>" on stderr ($1 is the marker, also in its command line): with it a
# cancelled command, or one whose connection was lost, can be killed on the board (KILL_TREE_SCRIPT), and a reused
# PID is never mistaken for it. run() strips that line from stderr.
_BOARD_WRAPPER = 'printf "%s=%s\\n" "$1" "$$" >&2; shift; timeout "$@"; exit $?'
_PLAIN_WRAPPER = 'printf "%s=%s\\n" "$1" "$$" >&2; shift; "$@"; exit $?'
_PID_MARKER_PREFIX = "__FB_PID_"
# The board's `timeout` should end a command first; the local deadline is a backstop for a wedged board or link.
_LOCAL_BACKSTOP_S = KILL_AFTER_S + 3.0
# Keys paramiko's look_for_keys tries in ~/.ssh, for messages and the permission check.
_DEFAULT_KEY_NAMES = ("id_rsa", "id_ecdsa", "id_ed25519")


@dataclass(frozen=True)
class SshTarget:
    """Where and how to connect. ``None`` fields come from ssh_config, then OpenSSH's defaults."""

    host: str
    port: int | None = None
    user: str | None = None
    key_file: Path | None = None
    # Held in memory for the connection only: never logged, printed (repr=False) or written anywhere.
    password: str | None = field(default=None, repr=False, compare=False)
    # Decrypts an encrypted key_file (paramiko tries ``password`` when this is not set). Same rules as password.
    passphrase: str | None = field(default=None, repr=False, compare=False)
    known_hosts: Path = Path("~/.ssh/known_hosts")
    accept_new_host_key: bool = False
    ssh_config: Path | None = Path("~/.ssh/config")
    connect_timeout_s: float = 10.0
    keepalive_s: float = 15.0
    # Overrides ssh_config's ProxyJump: "[user@]host[:port]" hops separated by commas, or "none".
    proxy_jump: str | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SshTarget:
        """``ssh://[user@]host[:port]`` (what ``--device`` accepts); ``options`` sets the other fields."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "ssh":
            raise ConfigError(f"not an ssh:// URL: {url!r}", hint="write ssh://[user@]host[:port]")
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
            raise ConfigError(f"unexpected path or query in {url!r}", hint="write ssh://[user@]host[:port]")
        user, host, port = _split_destination(parsed.netloc, url)
        return cls(host=host, port=port, user=user, **options)


def _split_destination(netloc: str, original: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (IPv6 in brackets) as (user, host, port)."""
    parsed = urllib.parse.urlsplit("ssh://" + netloc)
    if parsed.password is not None:
        raise ConfigError(f"a password in {original!r} would end up in shell history and logs",
                          hint="use a key (ssh-copy-id) or the password field of the device file")
    try:
        port = parsed.port
    except ValueError:
        raise ConfigError(f"bad port in {original!r}", hint="the port is a number from 1 to 65535") from None
    if not parsed.hostname:
        raise ConfigError(f"no host in {original!r}", hint="write [user@]host[:port]")
    return parsed.username or None, parsed.hostname, port


@dataclass(frozen=True)
class _Endpoint:
    """One SSH hop after ssh_config: what to connect to and with which identity."""

    alias: str
    hostname: str
    port: int
    user: str
    key_files: tuple[Path, ...]
    jumps: tuple[str, ...]
    hash_known_hosts: bool

    @property
    def address(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def host_port(self) -> str:
        return f"[{self.hostname}]:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        # How OpenSSH and paramiko name a host in known_hosts: bare on port 22, "[host]:port" otherwise.
        return self.hostname if self.port == DEFAULT_PORT else self.host_port


def _ssh_config_options(path: Path | None, host: str) -> dict[str, Any]:
    if path is None:
        return {}
    path = path.expanduser()
    if not path.is_file():
        return {}
    try:
        return dict(paramiko.SSHConfig.from_path(str(path)).lookup(host))
    except Exception as err:  # paramiko raises several unrelated types for a bad file
        raise ConfigError(f"cannot read SSH config for host {host!r}: {err}", path=str(path)) from err


def _resolve(target: SshTarget) -> _Endpoint:
    """Apply ssh_config to ``target``: explicit fields win, then the config, then OpenSSH's defaults."""
    options = _ssh_config_options(target.ssh_config, target.host)
    port: int = DEFAULT_PORT
    if target.port is not None:
        port = target.port
    elif "port" in options:
        try:
            port = int(options["port"])
        except ValueError:
            raise ConfigError(f"Port {options['port']!r} for host {target.host!r} is not a number",
                              path=str(target.ssh_config)) from None
    if target.key_file is not None:
        key_file = target.key_file.expanduser()
        if not key_file.is_file():
            raise ConfigError(f"SSH key file {key_file} does not exist", key="key_file",
                              hint="fix the path, or leave key_file out to use ssh-agent and ~/.ssh keys")
        key_files: tuple[Path, ...] = (key_file,)
    else:
        # OpenSSH silently skips IdentityFile entries that do not exist (the defaults in many configs).
        key_files = tuple(p for p in (Path(f).expanduser() for f in options.get("identityfile", [])) if p.is_file())
    jump_setting = target.proxy_jump if target.proxy_jump is not None else options.get("proxyjump", "none")
    jumps = () if jump_setting.strip().lower() == "none" else tuple(
        hop.strip() for hop in jump_setting.split(",") if hop.strip())
    return _Endpoint(
        alias=target.host,
        hostname=str(options.get("hostname", target.host)),
        port=port,
        user=target.user or options.get("user") or getpass.getuser(),
        key_files=key_files,
        jumps=jumps,
        hash_known_hosts=str(options.get("hashknownhosts", "no")).lower() == "yes",
    )


def _jump_target(hop: str, earlier_hops: Sequence[str], target: SshTarget) -> SshTarget:
    """The target for one ProxyJump hop: its own user/host/port (and ssh_config entry), the original's policies.
    Hops before it in the list become its own ProxyJump, as with ``ssh -J a,b``."""
    user, host, port = _split_destination(hop.removeprefix("ssh://"), hop)
    return SshTarget(
        host=host, port=port, user=user,
        known_hosts=target.known_hosts, accept_new_host_key=target.accept_new_host_key,
        ssh_config=target.ssh_config, connect_timeout_s=target.connect_timeout_s, keepalive_s=target.keepalive_s,
        proxy_jump=",".join(earlier_hops) if earlier_hops else None,
    )


class _UnknownHostKey(paramiko.SSHException):  # type: ignore[misc]  # paramiko is untyped
    def __init__(self, name: str, key: paramiko.PKey) -> None:
        super().__init__(f"host {name} not found in known_hosts")
        self.key = key


class _RejectRememberingKey(paramiko.RejectPolicy):  # type: ignore[misc]
    """RejectPolicy that keeps the rejected key, so the refusal can show its fingerprint (or record it on opt-in)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname, key)


def _describe_key(key: paramiko.PKey) -> str:
    # paramiko's fingerprint is OpenSSH's: "SHA256:" + unpadded base64, so users can compare with `ssh-keygen -l`.
    return f"{key.get_name()} {key.fingerprint}"


def _record_host_key(path: Path, name: str, key: paramiko.PKey, *, hashed: bool) -> None:
    """Append one known_hosts line. Appending (not HostKeys.save) keeps the user's comments and any entries paramiko
    cannot parse, and one O_APPEND write keeps lines whole when several devices connect at once."""
    host_field = paramiko.HostKeys.hash_host(name) if hashed else name
    line = f"{host_field} {key.get_name()} {key.get_base64()}\n"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as existing:
            existing.seek(-1, os.SEEK_END)
            if existing.read(1) != b"\n":
                line = "\n" + line
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)
    _log.warning("recorded new host key for %s (%s) in %s", name, _describe_key(key), path)


def _locked_key_files(endpoint: _Endpoint, target: SshTarget) -> list[tuple[Path, str]]:
    """The configured key files that are encrypted and that the given passphrase (or password, which paramiko also
    tries) does not open, with why: after a refusal, these explain it better than "authentication failed"."""
    secret = target.passphrase if target.passphrase is not None else target.password
    locked = []
    for path in endpoint.key_files:
        try:
            paramiko.PKey.from_path(path)
            continue  # not encrypted
        except Exception as err:  # noqa: BLE001 - paramiko and cryptography raise TypeError, ValueError, SSHException
            if "password" not in str(err).lower():
                continue  # unreadable or an unknown type: the refusal itself is the better report
        if secret is None:
            locked.append((path, "no key_passphrase is set"))
            continue
        try:
            paramiko.PKey.from_path(path, secret.encode())
        except Exception:  # noqa: BLE001 - any failure to decrypt with this secret
            locked.append((path, "key_passphrase does not decrypt it"))
    return locked


def _default_key_files() -> list[Path]:
    ssh_dir = Path("~/.ssh").expanduser()
    return [ssh_dir / name for name in _DEFAULT_KEY_NAMES if (ssh_dir / name).is_file()]


def _auth_attempts(endpoint: _Endpoint, *, password: bool) -> str:
    """What authentication used, for the error message (mirrors paramiko's order)."""
    tried = []
    if endpoint.key_files:
        tried.append("key file " + ", ".join(str(p) for p in endpoint.key_files))
    agent_socket = os.environ.get("SSH_AUTH_SOCK")
    tried.append(f"ssh-agent at {agent_socket}" if agent_socket else "no ssh-agent (SSH_AUTH_SOCK is not set)")
    defaults = _default_key_files()
    tried.append("default keys " + ", ".join(str(p) for p in defaults) if defaults else "no default keys in ~/.ssh")
    if password:
        tried.append("a password")
    return "; ".join(tried)


@dataclass(frozen=True)
class _ChannelResult:
    rc: int | None  # None: the local deadline passed before the command ended
    stdout: bytes
    stderr: bytes


class SshTransport(Transport):
    """A connected SSH session to one board. Connects in the constructor; raises ConnectError, HostKeyError or
    AuthError (all TransportError) with what to do next."""

    def __init__(self, target: SshTarget, *, device: str | None = None) -> None:
        super().__init__()
        self.target = target
        self.device = device or target.host
        self._clients: list[paramiko.SSHClient] = []  # jump hosts first, the board last
        self._route: list[str] = []
        self._sftp: paramiko.SFTPClient | None = None
        # SFTPClient is not safe for concurrent transfers; commands (separate channels) need no lock.
        self._sftp_lock = threading.Lock()
        self._board_timeout_works: bool | None = None
        self._closed = False
        try:
            self._endpoint = self._connect(target, hops_left=MAX_JUMP_HOPS)
        except BaseException:
            self.close()
            raise

    @property
    def route(self) -> tuple[str, ...]:
        """``user@host:port`` of each hop, jump hosts first and the board last."""
        return tuple(self._route)

    # Connecting

    def _connect(self, target: SshTarget, *, hops_left: int) -> _Endpoint:
        endpoint = _resolve(target)
        via: paramiko.SSHClient | None = None
        if endpoint.jumps:
            if hops_left == 0:
                raise ConnectError(f"ProxyJump for {target.host!r} goes through more than {MAX_JUMP_HOPS} hosts",
                                   hint="check ssh_config for a host whose ProxyJump leads back to itself")
            *earlier, nearest = endpoint.jumps
            self._connect(_jump_target(nearest, earlier, target), hops_left=hops_left - 1)
            via = self._clients[-1]
        for key_file in (*endpoint.key_files, *_default_key_files()):
            # OpenSSH refuses private keys other users can read; paramiko uses them silently.
            warn_if_loose(key_file, "SSH private key")
        client = self._handshake(target, endpoint, via)
        if client is None:  # first contact, opted in: the key is now in known_hosts; verify it like any other
            client = self._handshake(target, endpoint, via, recorded_just_now=True)
            assert client is not None
        if target.keepalive_s > 0:
            # Boards behind NAT or Wi-Fi power saving drop idle connections during long cool-downs.
            client.get_transport().set_keepalive(target.keepalive_s)
        self._clients.append(client)
        self._route.append(endpoint.address)
        return endpoint

    def _handshake(self, target: SshTarget, endpoint: _Endpoint, via: paramiko.SSHClient | None, *,
                   recorded_just_now: bool = False) -> paramiko.SSHClient | None:
        """Connect and authenticate under RejectPolicy. Returns None after recording a first-contact key."""
        known_hosts = target.known_hosts.expanduser()
        timeout_s = target.connect_timeout_s
        client = paramiko.SSHClient()
        try:
            if known_hosts.is_file():
                client.load_host_keys(str(known_hosts))
        except (OSError, paramiko.SSHException, ValueError) as err:
            raise HostKeyError(f"cannot read known_hosts {known_hosts}: {err}", problem="unreadable",
                               hint="fix or remove the broken line it names") from err
        client.set_missing_host_key_policy(_RejectRememberingKey())
        sock = self._open_socket(endpoint, via, timeout_s)
        try:
            client.connect(
                endpoint.hostname, port=endpoint.port, username=endpoint.user,
                password=target.password, passphrase=target.passphrase,
                key_filename=[str(p) for p in endpoint.key_files] or None,
                allow_agent=True, look_for_keys=True,
                sock=sock, timeout=timeout_s, banner_timeout=timeout_s, auth_timeout=timeout_s,
                channel_timeout=timeout_s,
            )
            return client
        except BaseException as err:
            client.close()
            sock.close()  # client.close() misses it when the failure came before paramiko's Transport existed
            if isinstance(err, _UnknownHostKey) and target.accept_new_host_key and not recorded_just_now:
                _record_host_key(known_hosts, endpoint.known_hosts_name, err.key, hashed=endpoint.hash_known_hosts)
                return None
            if not isinstance(err, Exception):
                raise  # KeyboardInterrupt and friends pass through untouched
            raise self._connect_failure(target, endpoint, known_hosts, err) from None

    def _connect_failure(self, target: SshTarget, endpoint: _Endpoint, known_hosts: Path,
                         err: Exception) -> TransportError:
        """The farmbench error (with what to do next) for an exception from paramiko's connect()."""
        if isinstance(err, _UnknownHostKey):
            return HostKeyError(
                f"host key for {endpoint.host_port} is not known (fingerprint {_describe_key(err.key)}); "
                f"not in {known_hosts}",
                problem="unknown",
                hint="if this is your board (compare with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` run on "
                     "it), opt in once: `accept_new_host_key = true` in the device file or `--accept-new-host-key`; "
                     f"or add it yourself: ssh-keyscan -p {endpoint.port} {endpoint.hostname} >> {known_hosts}",
            )
        if isinstance(err, paramiko.BadHostKeyException):
            return HostKeyError(
                f"host key for {endpoint.host_port} does NOT match {known_hosts}: the host presented "
                f"{_describe_key(err.key)}, known_hosts has {_describe_key(err.expected_key)}. "
                "Refused (also with accept_new_host_key).",
                problem="changed",
                hint="if the board was reinstalled, remove the old key with "
                     f"`ssh-keygen -R '{endpoint.known_hosts_name}' -f {known_hosts}` and connect again; "
                     "otherwise something may be intercepting the connection",
            )
        if isinstance(err, paramiko.AuthenticationException) and (locked := _locked_key_files(endpoint, target)):
            path, why = locked[0]
            return AuthError(
                f"{endpoint.address}: cannot use key file {path}: it is encrypted and {why}",
                hint="set key_passphrase in the device file to the key's passphrase, or load the key into ssh-agent "
                     f"(ssh-add {path}) and leave key_passphrase out")
        if isinstance(err, paramiko.AuthenticationException):
            return AuthError(
                f"{endpoint.address} refused authentication ({err}); tried: "
                f"{_auth_attempts(endpoint, password=target.password is not None)}",
                hint=f"install your public key on the board (ssh-copy-id -p {endpoint.port} "
                     f"{endpoint.user}@{endpoint.hostname}), check the user and key_file path, and that the key is "
                     "readable only by you (chmod 600)",
            )
        if isinstance(err, paramiko.SSHException) and "No authentication methods available" in str(err):
            return AuthError(f"{endpoint.address}: no key, agent or password to authenticate with",
                             hint="set key_file, start ssh-agent (ssh-add), or create ~/.ssh/id_ed25519")
        return ConnectError(
            f"{endpoint.hostname}:{endpoint.port} did not complete an SSH handshake within "
            f"{target.connect_timeout_s:g} s ({str(err) or type(err).__name__})",
            hint="check that this port is the board's sshd (not another service) and that the board is not "
                 "overloaded")

    def _open_socket(self, endpoint: _Endpoint, via: paramiko.SSHClient | None, timeout_s: float) -> Any:
        """A TCP connection to the board, or a direct-tcpip channel to it through the previous hop."""
        if via is not None:
            try:
                return via.get_transport().open_channel(
                    "direct-tcpip", (endpoint.hostname, endpoint.port), ("127.0.0.1", 0), timeout=timeout_s)
            except (paramiko.ChannelException, paramiko.SSHException, OSError, EOFError) as err:
                reason = getattr(err, "text", None) or str(err) or type(err).__name__
                raise ConnectError(
                    f"jump host {self._route[-1]} could not connect to {endpoint.hostname}:{endpoint.port} ({reason})",
                    hint="check HostName/Port as seen from the jump host, and that the jump host allows TCP "
                         "forwarding (AllowTcpForwarding)") from None
        try:
            return socket.create_connection((endpoint.hostname, endpoint.port), timeout=timeout_s)
        except socket.gaierror as err:
            raise ConnectError(f"cannot resolve host name {endpoint.hostname!r} ({err.strerror})",
                               hint="check the host name (or HostName in ssh_config) and DNS") from None
        except TimeoutError:
            raise ConnectError(f"no answer from {endpoint.hostname}:{endpoint.port} within {timeout_s:g} s",
                               hint="check that the board is powered and on the network, the address, and any "
                                    "firewall; raise connect_timeout_s for slow links") from None
        except ConnectionRefusedError:
            raise ConnectError(f"{endpoint.hostname}:{endpoint.port} refused the connection",
                               hint="is sshd running on the board, and is this its port?") from None
        except OSError as err:
            raise ConnectError(f"cannot reach {endpoint.hostname}:{endpoint.port}: {err.strerror or err}",
                               hint="check the network route to the board (cable, Wi-Fi, VPN)") from None

    # Commands

    def _live_transport(self) -> paramiko.Transport:
        if self._closed:
            raise TransportError(f"{self.device}: the SSH connection was closed", hint="open a new SshTransport")
        transport = self._clients[-1].get_transport()
        if transport is None or not transport.is_active():
            raise TransportError(f"{self.device}: the SSH connection to {self._endpoint.address} was lost",
                                 hint="reconnect; check the board's network and that it did not reboot")
        return transport

    def run(self, argv: Sequence[str], *, timeout_s: float, stdin: bytes | None = None) -> Completed:
        command = join(argv)
        self.check_cancelled(f"`{command}`")
        deadline = Deadline(timeout_s)
        marker = f"{_PID_MARKER_PREFIX}{uuid.uuid4().hex[:16]}"
        if self._board_can_time_out():
            # `timeout` counts whole seconds portably (busybox may lack fractions): round the budget up.
            board_limit_s = max(1, math.ceil(timeout_s))
            wire = join(["sh", "-c", _BOARD_WRAPPER, "sh", marker, "-s", "TERM", "-k", f"{KILL_AFTER_S:g}",
                         str(board_limit_s), *argv])
            result = self._exec(wire, timeout_s=board_limit_s + _LOCAL_BACKSTOP_S, stdin=stdin, marker=marker,
                                command=command)
        else:
            board_limit_s = None
            result = self._exec(join(["sh", "-c", _PLAIN_WRAPPER, "sh", marker, *argv]), timeout_s=timeout_s,
                                stdin=stdin, marker=marker, command=command)
        duration_s = deadline.elapsed_s()
        where = f"{self.device} ({self._endpoint.address})"
        if result.rc is None:
            fate = ("the board's `timeout` did not end it either, so it may still be running there"
                    if board_limit_s is not None else
                    "this board has no usable `timeout` command, so it may still be running there")
            raise CommandTimeoutError(f"{where}: `{command}` did not finish within {timeout_s:g} s; {fate}"
                                      + _stderr_note(result.stderr),
                                      hint="check the board is responsive; install coreutils for `timeout`")
        if board_limit_s is not None and result.rc in _TIMEOUT_EXIT_CODES and duration_s >= board_limit_s:
            raise CommandTimeoutError(f"{where}: `{command}` did not finish within {timeout_s:g} s and was killed on "
                                      f"the board after {duration_s:.1f} s" + _stderr_note(result.stderr),
                                      hint="raise the timeout, or find out why the command hangs on the board")
        return Completed(command, result.rc, result.stdout.decode(errors="replace"),
                         result.stderr.decode(errors="replace"), duration_s, self.device)

    def _board_can_time_out(self) -> bool:
        """Whether the board's `timeout` takes the options run() uses (coreutils, or busybox 1.30+). Probed once."""
        if self._board_timeout_works is None:
            probe = self._exec(join(["timeout", "-s", "TERM", "-k", "1", "10", "true"]),
                               timeout_s=self.target.connect_timeout_s + 10.0, stdin=None, marker=None,
                               command="timeout -s TERM -k 1 10 true")
            if probe.rc is None:
                raise CommandTimeoutError(f"{self.device} ({self._endpoint.address}) did not run `true` within "
                                          f"{self.target.connect_timeout_s + 10.0:g} s",
                                          hint="the board or its network is overloaded or wedged")
            self._board_timeout_works = probe.rc == 0
            if not self._board_timeout_works:
                _log.warning("%s: no usable `timeout` command on the board (%s); commands that time out cannot be "
                             "killed there. Install coreutils.", self.device,
                             tail(probe.stderr.decode(errors="replace"), 200) or f"exit {probe.rc}")
        return self._board_timeout_works

    def _exec(self, wire: str, *, timeout_s: float, stdin: bytes | None, marker: str | None,
              command: str) -> _ChannelResult:
        """Run one command line on a new channel, reading stdout and stderr as they come (a command blocked on a
        full stderr pipe while we wait on stdout would deadlock), until both end or ``timeout_s`` passes.

        With a ``marker`` (the wrappers of run()), the shell's PID is read from stderr as soon as it arrives and the
        marker line is removed. A cancel (another thread) kills the command's process tree on the board and raises
        Interrupted; a connection lost while the command runs leaves an :class:`Orphan` for the next connection to
        kill, and raises a (transient) TransportError."""
        deadline = Deadline(timeout_s)
        transport = self._live_transport()
        pid: str | None = None
        try:
            channel = transport.open_session(timeout=min(timeout_s, self.target.connect_timeout_s))
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise TransportError(f"{self.device}: cannot open a session on {self._endpoint.address} ({err})",
                                 hint="reconnect; the board may have hit MaxSessions or dropped the link") from None
        stdout, stderr = bytearray(), bytearray()
        try:
            channel.exec_command(wire)
            # Non-blocking: recv raises socket.timeout when nothing is buffered, send when the window is full.
            channel.settimeout(0.0)
            pending = bytes(stdin or b"")
            if not pending:
                channel.shutdown_write()  # a command reading stdin sees EOF rather than waiting forever
            stdout_open = stderr_open = True
            wakeup = channel.fileno()  # readable whenever stdout or stderr has data, or at EOF
            while stdout_open or stderr_open:
                progressed = False
                if stdout_open:
                    chunk = _recv(channel.recv)
                    if chunk is not None:
                        progressed = True
                        stdout += chunk
                        stdout_open = bool(chunk)
                if stderr_open:
                    chunk = _recv(channel.recv_stderr)
                    if chunk is not None:
                        progressed = True
                        stderr += chunk
                        stderr_open = bool(chunk)
                        if marker is not None and pid is None:
                            pid = _take_pid(stderr, marker)
                if pending:
                    sent = _send(channel, pending)
                    if sent < 0:  # the command stopped reading; the rest of stdin has nowhere to go
                        progressed, pending = True, b""
                    elif sent > 0:
                        progressed, pending = True, pending[sent:]
                        if not pending:
                            channel.shutdown_write()
                if progressed:
                    continue
                self._stop_if_cancelled(command, pid, marker)
                left_s = deadline.remaining_s()
                if left_s <= 0:
                    return _ChannelResult(None, bytes(stdout), _without_marker(stderr, marker))
                select.select([wakeup], [], [], min(left_s, _STDIN_POLL_S if pending else CANCEL_POLL_S))
            # Both streams ended; the exit status follows, later if the command closed its output early.
            while not channel.status_event.wait(max(min(deadline.remaining_s(), CANCEL_POLL_S), 0.0)):
                self._stop_if_cancelled(command, pid, marker)
                if deadline.remaining_s() <= 0:
                    return _ChannelResult(None, bytes(stdout), _without_marker(stderr, marker))
            # -1 when the board sent no exit status (e.g. exit-signal, which paramiko does not decode), and when the
            # connection died under the command: paramiko then closes the channel without a status.
            rc = channel.recv_exit_status()
            if rc == -1 and not transport.is_active():
                raise EOFError("the connection closed before the command's exit status arrived")
            self._stop_if_cancelled(command, pid, marker)
            return _ChannelResult(rc, bytes(stdout), _without_marker(stderr, marker))
        except (paramiko.SSHException, OSError, EOFError) as err:
            if pid is not None and marker is not None:
                self.orphans.append(Orphan(pid, marker))
            raise TransportError(f"{self.device}: the SSH connection to {self._endpoint.address} failed while "
                                 f"running `{command}` ({err or type(err).__name__})",
                                 hint="farmbench reconnects and retries; check the board's network and power"
                                 ) from None
        finally:
            channel.close()

    def _stop_if_cancelled(self, command: str, pid: str | None, marker: str | None) -> None:
        """After cancel(): kill the command's process tree on the board (when its PID is known) and raise."""
        if not self.interrupt_pending():
            return
        killed = ""
        if pid is not None and marker is not None:
            with self.cleanup(), contextlib.suppress(TransportError):
                self._exec(join(["sh", "-c", KILL_TREE_SCRIPT, "sh", pid, marker]), timeout_s=30.0, stdin=None,
                           marker=None, command="kill")
                killed = f"; its processes (shell PID {pid}) were killed on the board"
        raise Interrupted(f"{self.device}: `{command}` was stopped (farmbench is stopping){killed}")

    # Files

    def push(self, local: Path, remote: str, *, timeout_s: float) -> None:
        self._transfer("push", local, remote, timeout_s)

    def pull(self, remote: str, local: Path, *, timeout_s: float) -> None:
        self._transfer("pull", local, remote, timeout_s)

    def _open_sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self._clients[-1].open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as err:
                raise TransportError(f"{self.device}: cannot start SFTP on {self._endpoint.address} ({err})",
                                     hint="install the board's SFTP server (Debian: openssh-sftp-server; Dropbear "
                                          "boards need it too)") from None
        return self._sftp

    def _drop_sftp(self) -> None:
        """Forget an SFTP session whose state is unknown (requests still in flight after an abort)."""
        sftp, self._sftp = self._sftp, None
        if sftp is not None:
            with contextlib.suppress(Exception):  # it is being thrown away
                sftp.close()

    def _transfer(self, direction: Literal["push", "pull"], local: Path, remote: str, timeout_s: float) -> None:
        """SFTP put to a temporary name then posix_rename, or get with prefetch into a temporary local file then
        rename; either way the destination never holds a partial file, and ``timeout_s`` bounds the whole copy."""
        self.check_cancelled(f"{direction} of {local if direction == 'push' else remote}")
        self._live_transport()
        deadline = Deadline(timeout_s)
        source, destination = (str(local), remote) if direction == "push" else (remote, str(local))
        temporary = partial_name(destination)
        with self._sftp_lock:
            sftp = self._open_sftp()
            channel = sftp.get_channel()

            def progress(_done_bytes: int, _total_bytes: int) -> None:
                self.check_cancelled(f"{direction} of {source}")
                left_s = deadline.remaining_s()
                if left_s <= 0:
                    raise TimeoutError()
                # A read that blocks next may wait only for what is left of the budget.
                channel.settimeout(left_s)

            channel.settimeout(timeout_s)
            try:
                if direction == "push":
                    sftp.put(source, temporary, callback=progress, confirm=True)
                    sftp.posix_rename(temporary, destination)
                else:
                    # prefetch keeps many read requests in flight: without it a pull runs at one chunk per round trip.
                    sftp.get(source, temporary, callback=progress, prefetch=True)
                    os.replace(temporary, destination)
            except Interrupted:
                self._drop_sftp()
                with self.cleanup():
                    self._discard_partial(direction, temporary)
                raise
            except TimeoutError:
                self._drop_sftp()
                self._discard_partial(direction, temporary)
                raise TransferTimeoutError(f"{self.device}: {direction} of {source} to {destination} took longer than "
                                           f"{timeout_s:g} s", hint="raise the transfer timeout, or check the link "
                                           "speed to the board") from None
            except (OSError, paramiko.SSHException, EOFError) as err:
                self._discard_partial(direction, temporary)
                reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
                raise TransportError(f"{self.device}: {direction} of {source} to {destination} failed: {reason}",
                                     hint="check that the file exists and that its directory exists and is "
                                          "writable") from None

    def _discard_partial(self, direction: str, temporary: str) -> None:
        if direction == "pull":
            Path(temporary).unlink(missing_ok=True)
        elif self._sftp is not None:
            with contextlib.suppress(Exception):  # most often it was never created
                self._sftp.remove(temporary)
        else:
            self._discard(temporary)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._drop_sftp()
        # The board's connection rides the jump hosts' channels: close it before them.
        for client in reversed(self._clients):
            client.close()
        self._clients.clear()


def _recv(read: Any) -> bytes | None:
    """One non-blocking read: bytes, b"" at end of stream, None when nothing is buffered yet."""
    try:
        chunk: bytes = read(_READ_CHUNK_BYTES)
    except TimeoutError:
        return None
    return chunk


def _send(channel: paramiko.Channel, data: bytes) -> int:
    """One non-blocking write of stdin: bytes sent, 0 when the window is full, -1 when the command stopped
    reading (channel closed or EOF sent), in which case the rest is dropped."""
    try:
        sent: int = channel.send(data[:_READ_CHUNK_BYTES])
    except TimeoutError:  # paramiko's socket.timeout: window full
        return 0
    except OSError:
        return -1
    return sent if sent > 0 else -1


def _take_pid(stderr: bytearray, marker: str) -> str | None:
    """The PID on the wrapper's first stderr line ``<marker>=<pid>``, once that line is complete."""
    head = bytes(stderr[:len(marker) + 24])
    prefix = marker.encode() + b"="
    if not head.startswith(prefix) or b"\n" not in head:
        return None
    value = head[len(prefix):head.index(b"\n")].decode("ascii", "replace")
    return value if value.isdigit() else None


def _without_marker(stderr: bytearray, marker: str | None) -> bytes:
    """stderr without the wrapper's PID line."""
    data = bytes(stderr)
    if marker is not None and data.startswith(marker.encode() + b"="):
        end = data.find(b"\n")
        return data[end + 1:] if end >= 0 else b""
    return data


def _stderr_note(stderr: bytes) -> str:
    text = tail(stderr.decode(errors="replace"))
    return f"; stderr so far:\n{text}" if text else ""
