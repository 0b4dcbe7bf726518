"""Transports against real peers: the host itself, and Debian's OpenSSH sshd on loopback (tests/peers/sshd.py)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from farmbench.errors import (
    ArtifactCorruptedError,
    AuthError,
    CommandTimeoutError,
    ConfigError,
    ConnectError,
    HostKeyError,
    TransferTimeoutError,
    TransportError,
)
from farmbench.transports import LocalTransport, join, quote
from farmbench.transports.base import Transport
from farmbench.transports.ssh import SshTarget, SshTransport
from tests.peers.sshd import SshdPeer, keygen, openssh_fingerprint, openssh_knows


def injection_args(tmp_path: Path) -> list[str]:
    """Arguments a careless quoter would let a shell act on. Each must arrive as literal text."""
    victim = tmp_path / "victim"
    pwned = tmp_path / "pwned"
    return [
        f"; rm -rf {victim}",
        f"$(touch {pwned})",
        f"`touch {pwned}`",
        f"&& touch {pwned}",
        f"| touch {pwned}",
        f"> {pwned}",
        "it's",
        '"double" and \'single\'',
        "new\nline",
        "tab\there",
        "",
        "  spaced  ",
        "*",
        "~",
        "$HOME ${HOME}",
        "back\\slash",
        "--not-an-option",
        "ünïcödé",
    ]


def printf_nul(args: list[str]) -> list[str]:
    return ["printf", "%s\\0", *args]


def split_nul(output: str) -> list[str]:
    assert output.endswith("\0")
    return output[:-1].split("\0")


def unique_sleep() -> str:
    """A sleep duration no other process on this machine uses, so `pgrep -f "sleep <it>"` finds only ours."""
    return f"3{uuid.uuid4().int % 10**6:06d}.5"


def sleeping(duration: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", f"sleep {duration}"], check=False, capture_output=True,
                          text=True).stdout.split()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Quoting


def test_quote_and_join_basics() -> None:
    assert quote("") == "''"
    assert quote("plain-word_1.0/x") == "plain-word_1.0/x"
    assert join(["echo", "a b"]) == "echo 'a b'"
    with pytest.raises(TypeError, match="single string"):
        join("ls -l")
    with pytest.raises(ValueError, match="NUL"):
        join(["echo", "a\0b"])
    with pytest.raises(ValueError, match="empty"):
        join([])


def test_injection_strings_round_trip_through_a_real_shell(tmp_path: Path) -> None:
    (tmp_path / "victim").mkdir()
    args = injection_args(tmp_path)
    done = subprocess.run(["sh", "-c", join(printf_nul(args))], capture_output=True, text=True, check=True)
    assert split_nul(done.stdout) == args
    assert (tmp_path / "victim").is_dir()
    assert not (tmp_path / "pwned").exists()


def test_injection_strings_round_trip_through_sshd(ssh_board: SshTransport, tmp_path: Path) -> None:
    (tmp_path / "victim").mkdir()
    args = injection_args(tmp_path)
    done = ssh_board.run(printf_nul(args), timeout_s=10).check()
    assert split_nul(done.stdout) == args
    assert (tmp_path / "victim").is_dir()
    assert not (tmp_path / "pwned").exists()


# Local transport


def test_local_run_reports_rc_stdout_stderr_and_stdin() -> None:
    local = LocalTransport()
    done = local.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout_s=10)
    assert (done.rc, done.stdout, done.stderr) == (3, "out\n", "err\n")
    assert done.command == "sh -c 'echo out; echo err >&2; exit 3'"
    with pytest.raises(TransportError, match=r"local: .*exited with status 3; stderr:\nerr"):
        done.check()
    assert local.run(["cat"], timeout_s=10, stdin=b"from stdin").stdout == "from stdin"


def test_local_missing_program_is_exit_127_like_a_shell() -> None:
    done = LocalTransport().run(["farmbench-no-such-program"], timeout_s=10)
    assert done.rc == 127
    with pytest.raises(TransportError) as caught:
        done.check()
    assert "missing" in (caught.value.hint or "")


def test_local_timeout_kills_the_whole_process_group() -> None:
    duration = unique_sleep()
    start_s = time.monotonic()
    with pytest.raises(CommandTimeoutError) as caught:
        LocalTransport().run(["sh", "-c", f"sleep {duration} & sleep {duration}; wait"], timeout_s=1)
    assert time.monotonic() - start_s < 4
    assert f"sleep {duration}" in str(caught.value) and "1 s" in str(caught.value)
    assert sleeping(duration) == []


def test_local_push_pull_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3_000_000))
    local = LocalTransport()
    local.push(source, str(tmp_path / "pushed.bin"), timeout_s=10)
    local.pull(str(tmp_path / "pushed.bin"), tmp_path / "pulled.bin", timeout_s=10)
    assert (tmp_path / "pulled.bin").read_bytes() == source.read_bytes()
    assert not list(tmp_path.glob("*.part-*"))
    with pytest.raises(TransportError, match="No such file"):
        local.pull(str(tmp_path / "missing"), tmp_path / "never.bin", timeout_s=10)
    assert not list(tmp_path.glob("never.bin*"))


@pytest.mark.parametrize("tools", [["sha256sum"], ["shasum"], ["python3"], []])
def test_remote_sha256_falls_back_across_tools(tools: list[str], tmp_path: Path) -> None:
    """Boards differ (coreutils, busybox, perl only, python only); the hash must come out the same, or say why."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ["sh", *tools]:
        # python3 on PATH may be a wrapper script (pyenv shim) that needs more than this PATH; use the real binary.
        found = os.path.realpath(sys.executable) if tool == "python3" else shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed here")
        (bin_dir / tool).symlink_to(found)
    target = tmp_path / "file.bin"
    target.write_bytes(os.urandom(100_000))
    board = LocalTransport(env={"PATH": str(bin_dir)})
    if tools:
        assert board.remote_sha256(str(target), 10) == sha256_of(target)
        assert board.remote_sha256(str(tmp_path / "missing"), 10) is None
    else:
        with pytest.raises(TransportError, match="no sha256sum, shasum or python3"):
            board.remote_sha256(str(target), 10)


def test_push_cached_on_the_host(tmp_path: Path) -> None:
    artifact = tmp_path / "model.tflite"
    artifact.write_bytes(os.urandom(50_000))
    local = LocalTransport()
    first = local.push_cached(artifact, sha256_of(artifact), str(tmp_path / "cache"), "model.tflite", timeout_s=10)
    again = local.push_cached(artifact, sha256_of(artifact), str(tmp_path / "cache"), "model.tflite", timeout_s=10)
    assert first[1] is True and again == (first[0], False)


# SSH: commands


def test_ssh_run_rc_stdout_stderr_stdin(ssh_board: SshTransport) -> None:
    done = ssh_board.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout_s=10)
    assert (done.rc, done.stdout, done.stderr) == (3, "out\n", "err\n")
    assert done.device == "loopback-board"
    assert ssh_board.run(["echo", "hello", "world"], timeout_s=10).check().stdout == "hello world\n"
    assert ssh_board.run(["cat"], timeout_s=10, stdin=b"via stdin").stdout == "via stdin"
    assert ssh_board.run(["farmbench-no-such-program"], timeout_s=10).rc == 127
    assert ssh_board.run_shell("echo a | tr a b", timeout_s=10).stdout == "b\n"


def test_ssh_large_output_on_both_streams_does_not_deadlock(ssh_board: SshTransport) -> None:
    size = 5_000_000
    script = f"head -c {size} /dev/zero | tr '\\0' o & head -c {size} /dev/zero | tr '\\0' e >&2; wait"
    start_s = time.monotonic()
    done = ssh_board.run(["sh", "-c", script], timeout_s=30).check()
    assert len(done.stdout) == size and set(done.stdout) == {"o"}
    assert len(done.stderr) == size and set(done.stderr) == {"e"}
    assert time.monotonic() - start_s < 15


def test_ssh_large_stdin_read_or_ignored(ssh_board: SshTransport) -> None:
    data = os.urandom(3_000_000)
    assert ssh_board.run(["wc", "-c"], timeout_s=30, stdin=data).stdout.strip() == str(len(data))
    # A command that never reads stdin must not make run() wait for the window to drain.
    assert ssh_board.run(["true"], timeout_s=10, stdin=data).rc == 0


def test_ssh_hanging_command_is_killed_on_the_board(ssh_board: SshTransport, sshd: SshdPeer) -> None:
    duration = unique_sleep()
    start_s = time.monotonic()
    with pytest.raises(CommandTimeoutError) as caught:
        ssh_board.run(["sh", "-c", f"sleep {duration} & sleep {duration}; wait"], timeout_s=2)
    elapsed_s = time.monotonic() - start_s
    assert elapsed_s < 5
    message = str(caught.value)
    assert f"sleep {duration}" in message and "2 s" in message
    assert "loopback-board" in message and f"127.0.0.1:{sshd.port}" in message
    assert sleeping(duration) == []
    assert ssh_board.run(["true"], timeout_s=10).rc == 0  # the connection is still usable


def test_ssh_command_ignoring_sigterm_is_killed_after_grace(ssh_board: SshTransport) -> None:
    duration = unique_sleep()
    start_s = time.monotonic()
    with pytest.raises(CommandTimeoutError):
        # An ignored signal stays ignored across exec, so sleep ignores SIGTERM too.
        ssh_board.run(["sh", "-c", f"trap '' TERM; sleep {duration}"], timeout_s=1)
    assert time.monotonic() - start_s < 7
    assert sleeping(duration) == []


def test_ssh_close_is_idempotent_and_final(ssh_target: SshTarget) -> None:
    board = SshTransport(ssh_target)
    board.close()
    board.close()
    with pytest.raises(TransportError, match="closed"):
        board.run(["true"], timeout_s=5)


# SSH: host keys


def test_unknown_host_key_is_refused_and_nothing_is_recorded(sshd: SshdPeer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("# my hosts\n")
    with pytest.raises(HostKeyError) as caught:
        SshTransport(sshd.target(known_hosts))
    assert f"host key for [127.0.0.1]:{sshd.port} is not known" in str(caught.value)
    assert openssh_fingerprint(sshd.host_public_key) in str(caught.value)
    assert "--accept-new-host-key" in (caught.value.hint or "")
    assert caught.value.transient is False
    assert known_hosts.read_text() == "# my hosts\n"


def test_opt_in_records_the_key_and_later_connections_need_no_opt_in(sshd: SshdPeer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "fresh" / ".ssh" / "known_hosts"  # directories created as needed
    with SshTransport(sshd.target(known_hosts, accept_new_host_key=True)) as board:
        assert board.run(["true"], timeout_s=10).rc == 0
    assert known_hosts.read_text() == f"[127.0.0.1]:{sshd.port} {sshd.host_key_line}\n"
    assert openssh_knows(known_hosts, sshd.known_hosts_name)  # OpenSSH reads the line we wrote
    with SshTransport(sshd.target(known_hosts)) as board:
        assert board.run(["true"], timeout_s=10).rc == 0
    assert len(known_hosts.read_text().splitlines()) == 1


def test_opt_in_honours_hash_known_hosts(sshd: SshdPeer, tmp_path: Path) -> None:
    ssh_config = tmp_path / "config"
    ssh_config.write_text("Host *\n  HashKnownHosts yes\n")
    known_hosts = tmp_path / "known_hosts"
    with SshTransport(sshd.target(known_hosts, accept_new_host_key=True, ssh_config=ssh_config)):
        pass
    assert known_hosts.read_text().startswith("|1|")
    assert openssh_knows(known_hosts, sshd.known_hosts_name)
    with SshTransport(sshd.target(known_hosts, ssh_config=ssh_config)):
        pass


def test_changed_host_key_is_refused_even_with_opt_in(sshd: SshdPeer, tmp_path: Path) -> None:
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts", sshd.other_key_line)
    before = known_hosts.read_text()
    with pytest.raises(HostKeyError) as caught:
        SshTransport(sshd.target(known_hosts, accept_new_host_key=True))
    message = str(caught.value)
    assert "does NOT match" in message and f"[127.0.0.1]:{sshd.port}" in message
    assert openssh_fingerprint(sshd.host_public_key) in message
    assert openssh_fingerprint(sshd.directory / "other_host_ed25519.pub") in message
    assert "ssh-keygen -R" in (caught.value.hint or "")
    assert known_hosts.read_text() == before


# SSH: authentication and connection failures


def test_wrong_client_key_is_a_clear_auth_error(sshd: SshdPeer, known_hosts: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    keygen(tmp_path / "stranger", "not-authorized")
    start_s = time.monotonic()
    with pytest.raises(AuthError) as caught:
        SshTransport(sshd.target(known_hosts, key_file=tmp_path / "stranger"))
    assert time.monotonic() - start_s < 5
    assert f"{sshd.user}@127.0.0.1:{sshd.port}" in str(caught.value)
    assert str(tmp_path / "stranger") in str(caught.value)
    assert "ssh-copy-id" in (caught.value.hint or "")


def test_missing_key_file_is_a_config_error(sshd: SshdPeer, known_hosts: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        SshTransport(sshd.target(known_hosts, key_file=tmp_path / "nope"))


def test_readable_private_key_is_warned_about(sshd: SshdPeer, known_hosts: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    key = tmp_path / "loose_key"
    shutil.copyfile(sshd.client_key, key)
    key.chmod(0o644)
    with caplog.at_level(logging.WARNING), SshTransport(sshd.target(known_hosts, key_file=key)):
        pass
    assert any(str(key) in record.getMessage() and "chmod 600" in record.getMessage() for record in caplog.records)


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_closed_port_fails_within_the_connect_timeout(sshd: SshdPeer, known_hosts: Path) -> None:
    port = _unused_port()
    start_s = time.monotonic()
    with pytest.raises(ConnectError) as caught:
        SshTransport(sshd.target(known_hosts, port=port, connect_timeout_s=2.0))
    assert time.monotonic() - start_s < 2.0
    assert f"127.0.0.1:{port}" in str(caught.value) and "refused" in str(caught.value)
    assert caught.value.hint


def test_silent_peer_fails_within_the_connect_timeout(sshd: SshdPeer, known_hosts: Path) -> None:
    with socket.socket() as silent:  # accepts TCP (backlog) but never says anything
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        start_s = time.monotonic()
        with pytest.raises(ConnectError) as caught:
            SshTransport(sshd.target(known_hosts, port=port, connect_timeout_s=1.5))
        assert time.monotonic() - start_s < 3.0
    assert f"127.0.0.1:{port}" in str(caught.value)


# SSH: files


def test_push_cached_uploads_once_verifies_and_pulls_back(ssh_board: SshTransport, tmp_path: Path) -> None:
    artifact = tmp_path / "model.tflite"
    artifact.write_bytes(os.urandom(700_000))
    digest = sha256_of(artifact)
    cache_dir = str(tmp_path / "board-cache")
    remote, uploaded = ssh_board.push_cached(artifact, digest, cache_dir, "model.tflite", timeout_s=20)
    assert uploaded is True
    assert remote == f"{cache_dir}/{digest[:16]}/model.tflite"
    assert Path(remote).read_bytes() == artifact.read_bytes()
    assert ssh_board.remote_sha256(remote, 10) == digest
    assert ssh_board.push_cached(artifact, digest, cache_dir, "model.tflite", timeout_s=20) == (remote, False)
    assert not list(Path(remote).parent.glob("*.part-*"))
    ssh_board.pull(remote, tmp_path / "back.tflite", timeout_s=20)
    assert (tmp_path / "back.tflite").read_bytes() == artifact.read_bytes()


def test_push_cached_refuses_a_hash_that_does_not_match(ssh_board: SshTransport, tmp_path: Path) -> None:
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(os.urandom(10_000))
    wrong = "0" * 64
    cache_dir = tmp_path / "board-cache"
    # The local file is not what its manifest says: a corrupt artifact (never retried), not a transport failure.
    with pytest.raises(ArtifactCorruptedError, match="sha256") as caught:
        ssh_board.push_cached(artifact, wrong, str(cache_dir), "model.onnx", timeout_s=20)
    assert caught.value.transient is False
    entry = cache_dir / wrong[:16]
    assert not (entry / "model.onnx").exists()
    assert not list(entry.glob("*"))


def test_default_cache_dir_is_under_the_remote_users_home(ssh_board: SshTransport) -> None:
    shown = ssh_board.run(["sh", "-c", 'printf "%s\\n%s" "$HOME" "$XDG_CACHE_HOME"'], timeout_s=10).stdout
    home, xdg = shown.split("\n")
    assert ssh_board.default_cache_dir(10) == f"{xdg or home + '/.cache'}/farmbench"


def test_transfer_errors_and_timeouts(ssh_board: SshTransport, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20_000_000))
    with pytest.raises(TransferTimeoutError, match="push of"):
        ssh_board.push(big, str(tmp_path / "big-remote.bin"), timeout_s=0.001)
    assert not list(tmp_path.glob("big-remote.bin*"))
    with pytest.raises(TransportError, match="No such file"):
        ssh_board.push(big, str(tmp_path / "no-such-dir" / "big.bin"), timeout_s=20)
    with pytest.raises(TransportError, match="No such file"):
        ssh_board.pull(str(tmp_path / "missing.bin"), tmp_path / "pulled.bin", timeout_s=20)
    assert not list(tmp_path.glob("pulled.bin*"))
    # The transport recovers from the aborted transfer.
    ssh_board.push(big, str(tmp_path / "big-remote.bin"), timeout_s=30)
    assert sha256_of(tmp_path / "big-remote.bin") == sha256_of(big)


# SSH: ssh_config and ProxyJump


def write_ssh_config(sshd: SshdPeer, path: Path, extra_hosts: str = "") -> Path:
    path.write_text(f"""\
Host myboard jump
  HostName 127.0.0.1
  Port {sshd.port}
  User {sshd.user}
  IdentityFile {sshd.client_key}

Host viajump
  HostName 127.0.0.1
  Port {sshd.port}
  User {sshd.user}
  IdentityFile {sshd.client_key}
  ProxyJump jump
{extra_hosts}""")
    return path


def test_ssh_config_alias_resolves_hostname_port_user_identity(sshd: SshdPeer, known_hosts: Path,
                                                               tmp_path: Path) -> None:
    config = write_ssh_config(sshd, tmp_path / "config")
    with SshTransport(SshTarget(host="myboard", known_hosts=known_hosts, ssh_config=config)) as board:
        assert board.device == "myboard"
        assert board.route == (f"{sshd.user}@127.0.0.1:{sshd.port}",)
        assert board.run(["id", "-un"], timeout_s=10).stdout.strip() == sshd.user


def test_proxy_jump_through_the_same_sshd(sshd: SshdPeer, known_hosts: Path, tmp_path: Path) -> None:
    config = write_ssh_config(sshd, tmp_path / "config")
    hop = f"{sshd.user}@127.0.0.1:{sshd.port}"
    with SshTransport(SshTarget(host="viajump", known_hosts=known_hosts, ssh_config=config)) as board:
        assert board.route == (hop, hop)
        assert board.run(["echo", "through the jump"], timeout_s=10).stdout == "through the jump\n"
        # The board's side of the connection is the jump host's forwarding, not our socket.
        client_port = board.run(["sh", "-c", 'echo "$SSH_CONNECTION"'], timeout_s=10).stdout.split()[1]
        assert int(client_port) != board._clients[0].get_transport().sock.getsockname()[1]
        artifact = tmp_path / "a.bin"
        artifact.write_bytes(b"x" * 1000)
        board.push(artifact, str(tmp_path / "b.bin"), timeout_s=10)
        assert (tmp_path / "b.bin").read_bytes() == artifact.read_bytes()
    # A two-hop chain, as `ProxyJump a,b` or `ssh -J a,b`.
    chain = SshTarget(host="myboard", known_hosts=known_hosts, ssh_config=config, proxy_jump="jump,jump")
    with SshTransport(chain) as board:
        assert board.route == (hop, hop, hop)
        assert board.run(["true"], timeout_s=10).rc == 0


def test_proxy_jump_failures_name_the_hop(sshd: SshdPeer, known_hosts: Path, tmp_path: Path) -> None:
    closed = _unused_port()
    config = write_ssh_config(sshd, tmp_path / "config", f"""
Host deadjump
  HostName 127.0.0.1
  Port {closed}

Host loop
  ProxyJump loop
""")
    with pytest.raises(ConnectError, match=f"127.0.0.1:{closed} refused"):
        SshTransport(SshTarget(host="myboard", known_hosts=known_hosts, ssh_config=config, proxy_jump="deadjump"))
    # The jump host reaches a closed port on the board's side.
    with pytest.raises(ConnectError, match=f"jump host .* could not connect to 127.0.0.1:{closed}"):
        SshTransport(SshTarget(host="127.0.0.1", port=closed, known_hosts=known_hosts, ssh_config=config,
                               proxy_jump="jump", connect_timeout_s=3))
    with pytest.raises(ConnectError, match="more than 8"):
        SshTransport(SshTarget(host="loop", known_hosts=known_hosts, ssh_config=config))


# SshTarget


def test_target_from_url() -> None:
    assert SshTarget.from_url("ssh://pi@10.0.0.5:2222") == SshTarget(host="10.0.0.5", port=2222, user="pi")
    assert SshTarget.from_url("ssh://board") == SshTarget(host="board")
    assert SshTarget.from_url("ssh://[::1]:22").host == "::1"
    target = SshTarget.from_url("ssh://pi@board", accept_new_host_key=True, connect_timeout_s=3.0)
    assert target.accept_new_host_key and target.connect_timeout_s == 3.0
    for bad in ("http://board", "ssh://", "ssh://board:notaport", "ssh://pi:secret@board", "ssh://board/path"):
        with pytest.raises(ConfigError):
            SshTarget.from_url(bad)


def test_password_is_kept_out_of_repr() -> None:
    target = SshTarget(host="board", password="hunter2")
    assert "hunter2" not in repr(target)


def test_transports_share_one_interface() -> None:
    assert issubclass(SshTransport, Transport) and issubclass(LocalTransport, Transport)
