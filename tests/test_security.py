"""Security: shell injection through names, paths and config values does nothing; private keys that others can read
are warned about; secrets stay out of the results database and everything made from it.

Everything runs against real peers: this machine (no shell in between), Debian's sshd on loopback (a POSIX shell
parses every command) and the ADB device emulator (the same, through adb-shell's ADB protocol). An injection that
worked would create a marker file: an absolute path where a value may hold one (directories), or ``~/<name>`` via
``$(cd;touch <name>)`` where it may not (file names cannot contain "/"). Each test asserts no marker exists and that
the value arrived literally (a file pushed under such a name exists under exactly that name).

Where quoting happens: farmbench/transports/quoting.py (``join``/``quote``) is the one place argv becomes a command
line; scripts take values as positional parameters ("$1") or embed them through ``quote`` (the sampler), and the
few values that must be embedded unquoted as shell globs (``sysfs_root``, power_supply node names) are refused at
load time unless they are plain paths/names. These tests hold that up end to end.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from farmbench.telemetry.sampler import Channel, SamplerSpec, parse_sampler_output, wrap_with_sampler
from farmbench.transports.adb import AdbTarget, AdbTransport, load_or_create_key
from farmbench.transports.base import Transport
from farmbench.transports.local import LocalTransport
from farmbench.transports.ssh import SshTransport
from tests.conftest import cli_command, cli_env, describe, require_module
from tests.peers.adb_emulator import AdbEmulator
from tests.peers.sshd import SshdPeer, running_sshd

EmulatorFactory = Callable[..., AdbEmulator]


# --- markers ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Markers:
    """Where a successful injection would leave a file. ``home_names`` are created in the home directory of whoever
    runs the shell (this user: sshd and the emulator run commands as us)."""

    directory: Path
    tag: str

    def absolute(self, n: int) -> Path:
        return self.directory / f"pwned-{self.tag}-{n}"

    def home(self, n: int) -> Path:
        return Path.home() / f"fb-pwned-{self.tag}-{n}"

    def file_name(self, suffix: str = "") -> str:
        """A file name (no "/") a careless quoter would let a shell act on."""
        return (f"m;$(cd;touch fb-pwned-{self.tag}-1) `cd;touch fb-pwned-{self.tag}-2` && cd | touch "
                f"fb-pwned-{self.tag}-3 it's \"q\" $HOME *\nline ünï{suffix}")

    def dir_name(self) -> str:
        """A directory name (may hold "/") with absolute markers."""
        return (f"dir;$(touch {self.absolute(1)}) `touch {self.absolute(2)}` it's \"q\" > {self.absolute(3)}\n"
                "line ünï")

    def args(self) -> list[str]:
        return [f"; touch {self.absolute(4)}", f"$(touch {self.absolute(5)})", f"`touch {self.absolute(6)}`",
                f"&& touch {self.absolute(7)}", f"| touch {self.absolute(8)}", f"> {self.absolute(9)}",
                "it's", '"double" and \'single\'', "new\nline", "", "  spaced  ", "*", "~", "$HOME ${HOME}",
                "back\\slash", "--not-an-option", "ünïcödé", self.file_name(), self.dir_name()]

    def fired(self) -> list[Path]:
        found = [p for p in self.directory.iterdir() if p.name.startswith(f"pwned-{self.tag}")]
        return found + [p for p in Path.home().iterdir() if p.name.startswith(f"fb-pwned-{self.tag}")]


@pytest.fixture
def markers(tmp_path: Path) -> Iterator[Markers]:
    directory = tmp_path / "markers"
    directory.mkdir()
    found = Markers(directory, uuid.uuid4().hex[:10])
    yield found
    for path in Path.home().glob(f"fb-pwned-{found.tag}-*"):  # only if a test failed: do not litter $HOME
        path.unlink()


# --- the three transports --------------------------------------------------------------------------------------


@dataclass
class Device:
    """A connected transport, a remote directory to work in, and where a remote path is on this machine."""

    transport: Transport
    remote_root: str
    host_path: Callable[[str], Path]


@pytest.fixture(scope="module")
def adb_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("android") / "adbkey"
    load_or_create_key(path)
    return path


@pytest.fixture(params=["local", "ssh", "adb"])
def device(request: pytest.FixtureRequest, tmp_path: Path, adb_key: Path) -> Iterator[Device]:
    kind = request.param
    if kind == "local":
        root = tmp_path / "remote"
        root.mkdir()
        yield Device(LocalTransport(), str(root), Path)
    elif kind == "ssh":
        sshd: SshdPeer = request.getfixturevalue("sshd")
        root = tmp_path / "remote"
        root.mkdir()
        with SshTransport(sshd.target(sshd.write_known_hosts(tmp_path / "known_hosts"))) as board:
            yield Device(board, str(root), Path)  # the board is this machine: same paths
    else:
        emulator = request.getfixturevalue("adb_emulator")(auth="accept", authorized_keys=[Path(f"{adb_key}.pub")])
        with AdbTransport(AdbTarget(host="127.0.0.1", port=emulator.port, key_path=adb_key)) as phone:
            phone.mkdir_p("/data/local/tmp/inj", timeout_s=10)
            yield Device(phone, "/data/local/tmp/inj", emulator.device_path)


def test_arguments_arrive_literally(device: Device, markers: Markers) -> None:
    args = markers.args()
    done = device.transport.run(["printf", "%s\\0", *args], timeout_s=20).check()
    assert done.stdout.split("\0")[:-1] == args
    assert markers.fired() == []


def test_paths_and_file_names_arrive_literally(device: Device, markers: Markers, tmp_path: Path) -> None:
    """mkdir, push, hash, push_cached, pull and remove with a directory and a file name full of shell syntax."""
    transport = device.transport
    local = tmp_path / "payload.bin"
    payload = uuid.uuid4().bytes * 1000
    local.write_bytes(payload)
    directory = f"{device.remote_root}/{markers.dir_name()}"
    name = markers.file_name(".tflite")
    remote = f"{directory}/{name}"

    transport.mkdir_p(directory, timeout_s=20)
    transport.push(local, remote, timeout_s=30)
    assert device.host_path(remote).read_bytes() == payload, "pushed under exactly that name"
    assert [p.name for p in device.host_path(directory).iterdir()] == [name]
    import hashlib

    sha256 = hashlib.sha256(payload).hexdigest()
    assert transport.remote_sha256(remote, 20) == sha256
    cached, uploaded = transport.push_cached(local, sha256, directory, name, timeout_s=30)
    assert uploaded and cached == f"{directory}/{sha256[:16]}/{name}"
    assert device.host_path(cached).read_bytes() == payload
    assert transport.push_cached(local, sha256, directory, name, timeout_s=30) == (cached, False)
    back = tmp_path / "back.bin"
    transport.pull(cached, back, timeout_s=30)
    assert back.read_bytes() == payload
    transport.remove([remote, cached], timeout_s=20)
    assert not device.host_path(remote).exists() and not device.host_path(cached).exists()
    assert device.host_path(directory).is_dir(), "rm -f removed the files, not their directory"
    assert markers.fired() == []


def test_the_power_sampler_reads_a_file_with_shell_syntax_in_its_name(device: Device, markers: Markers) -> None:
    """The sampler script embeds channel paths through quoting.quote: it must read the file, not run its name."""
    name = markers.file_name().replace("\n", " ")  # channel paths may not hold control characters
    path = f"{device.remote_root}/{name}"
    host = device.host_path(path)
    host.parent.mkdir(parents=True, exist_ok=True)
    host.write_text("4321\n")
    spec = SamplerSpec(channels=(Channel("power.current", path),), rate_hz=20)
    wrapped = wrap_with_sampler(spec, ["sh", "-c", "sleep 0.3"])
    completed = device.transport.run(wrapped.argv, timeout_s=30)
    run = parse_sampler_output(completed.stdout, spec, wrapped.tag)
    assert run.exit_code == 0, completed.stdout
    assert run.samples and {sample.values for sample in run.samples} == {("4321",)}
    assert markers.fired() == []


# --- config values that are embedded as globs are refused at load time -----------------------------------------


@pytest.mark.parametrize("key, table, value", [
    ("sysfs_root", None, "/sys;touch {marker}"),
    ("sysfs_root", None, "/sys/$(touch {marker})"),
    ("node", "power", "battery;touch {marker}"),
    ("current_file", "power", "current_now`touch {marker}`"),
])
def test_config_values_embedded_in_scripts_must_be_plain(key: str, table: str | None, value: str, tmp_path: Path,
                                                        markers: Markers) -> None:
    nasty = value.format(marker=markers.absolute(1))
    lines = ['kind = "local"']
    if table is None:
        lines.append(f"{key} = {json.dumps(nasty)}")
    else:
        lines += [f"[{table}]", 'source = "android-battery"', f"{key} = {json.dumps(nasty)}"]
    path = tmp_path / "nasty.toml"
    path.write_text("\n".join(lines) + "\n")
    env = cli_env()
    proc = subprocess.run(cli_command("devices", "--probe", "-d", path), env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2, describe(proc)
    line = len(lines)
    qualified = key if table is None else f"{table}.{key}"
    assert f"error: {path}:{line}: {qualified}:" in proc.stderr, describe(proc)
    assert markers.fired() == []


# --- a whole run: names, paths, work dirs and config values through the CLI ------------------------------------


def relu_onnx(path: Path) -> Path:
    """A real ONNX model (one Relu over 8 floats), small enough that a run takes a second per device."""
    require_module("onnx")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "relu",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7  # readable by older onnxruntime builds
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def toml(value: str) -> str:
    """A TOML basic string holding ``value`` exactly (JSON's escapes are TOML's)."""
    return json.dumps(value)


QUICK = ("--runs", "5", "--min-s", "0", "--max-s", "30", "--warmup-runs", "1", "--warmup-min-s", "0",
         "--repeats", "1", "--no-drift", "--json")


def farmbench_cli(*args: str | Path, cache_dir: Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    env = cli_env(cache_dir)
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


def test_a_run_with_shell_syntax_in_every_name_and_path(sshd: SshdPeer, adb_emulator: EmulatorFactory,
                                                        adb_key: Path, markers: Markers, tmp_path: Path) -> None:
    require_module("onnxruntime")
    from tests.peers.ort_perf_test_standin import install as install_ort_perf_test

    model_name = markers.file_name(".onnx")
    model = relu_onnx(tmp_path / "models" / model_name)
    sweep_name = f"sweep;$(touch {markers.absolute(10)}) `touch {markers.absolute(11)}` 'q' \"d\"\nline"
    sweep = tmp_path / "nasty-sweep.toml"
    sweep.write_text(f"name = {toml(sweep_name)}\n[variants]\nfamily = []\nmodels = {toml(str(model))}\n")

    devices = tmp_path / "device_configs"
    devices.mkdir()
    work = tmp_path / markers.dir_name()
    names = {kind: f"{kind};$(touch {markers.absolute(20)}) `touch {markers.absolute(21)}` it's \"q\"\n2"
             for kind in ("local", "board", "phone")}
    zones = toml(f"*cpu*;$(touch {markers.absolute(30)})")
    (devices / "local.toml").write_text(textwrap.dedent(f"""\
        kind = "local"
        name = {toml(names["local"])}
        cache_dir = {toml(str(work / "local"))}
        description = {toml(f"desc $(touch {markers.absolute(31)})")}
        [thermal]
        zones = [{zones}]
        max_wait_s = 0
        """))
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")
    (tmp_path / "ssh_config").write_text("")
    (devices / "board.toml").write_text(textwrap.dedent(f"""\
        kind = "ssh"
        name = {toml(names["board"])}
        host = "{sshd.host}"
        port = {sshd.port}
        user = "{sshd.user}"
        key_file = "{sshd.client_key}"
        known_hosts = "{known_hosts}"
        ssh_config = "{tmp_path / 'ssh_config'}"
        python = "{sys.executable}"
        cache_dir = {toml(str(work / "board"))}
        [thermal]
        zones = [{zones}]
        max_wait_s = 0
        """))
    emulator = adb_emulator(auth="accept", authorized_keys=[Path(f"{adb_key}.pub")])
    phone_dir = f"/data/local/tmp/{markers.dir_name()}"
    (devices / "phone.toml").write_text(textwrap.dedent(f"""\
        kind = "adb"
        name = {toml(names["phone"])}
        host = "127.0.0.1"
        port = {emulator.port}
        key_file = "{adb_key}"
        onnxruntime_perf_test = "{install_ort_perf_test(tmp_path / 'tools' / 'onnxruntime_perf_test')}"
        device_dir = {toml(phone_dir)}
        """))
    db = tmp_path / "results.db"
    cache = tmp_path / "cache"
    proc = farmbench_cli("run", "--sweep", sweep, *QUICK, "--db", db, "-d", devices / "local.toml",
                         "-d", devices / "board.toml", "-d", devices / "phone.toml", cache_dir=cache)
    assert proc.returncode == 0, describe(proc)
    summary = json.loads(proc.stdout)
    assert (summary["ok"], summary["failed"]) == (3, 0), describe(proc)
    assert markers.fired() == []

    # Names round-trip literally into the results...
    results = farmbench_cli("results", "--db", db, "--format", "json", cache_dir=cache)
    document = json.loads(results.stdout)
    assert [run["sweep_name"] for run in document["runs"]] == [sweep_name]
    assert sorted(m["device"] for m in document["measurements"]) == sorted(names.values())
    assert {m["artifact"] for m in document["measurements"]} == {model_name}
    # ... and the work directories are exactly those (the model goes to <work dir>/<sha256[:16]>/ under the cache's
    # own file name: the user's file name is not sent to devices).
    for kind in ("local", "board"):
        pushed = [p for p in (work / kind).rglob("*") if p.is_file() and p.suffix == ".onnx"]
        assert len(pushed) == 1 and pushed[0].parent.parent == work / kind, (kind, pushed)
    on_phone = [p for p in emulator.device_path(phone_dir).rglob("*") if p.is_file() and p.suffix == ".onnx"]
    assert len(on_phone) == 1 and on_phone[0].parent.parent == emulator.device_path(phone_dir), on_phone
    assert emulator.violations == []

    # The health check walks the same device files (work dirs go into its busy-scan script as "$1").
    health = farmbench_cli("devices", "--json", *(arg for kind in ("local", "board", "phone")
                                                  for arg in ("-d", str(devices / f"{kind}.toml"))), cache_dir=cache)
    assert health.returncode == 0, describe(health)
    assert sorted(entry["name"] for entry in json.loads(health.stdout)) == sorted(names.values())
    assert markers.fired() == []


# --- private keys others can read ------------------------------------------------------------------------------


def test_loose_adb_key_is_warned_about_once_with_the_fix(adb_emulator: EmulatorFactory, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    key = tmp_path / "android" / "adbkey"
    load_or_create_key(key)
    emulator = adb_emulator(auth="accept", authorized_keys=[Path(f"{key}.pub")])
    key.chmod(0o640)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # a second connection in the same process says nothing new
            with AdbTransport(AdbTarget(host="127.0.0.1", port=emulator.port, key_path=key)) as phone:
                assert phone.run(["true"], timeout_s=10).ok
    warnings = [r.getMessage() for r in caplog.records if "accessible by other users" in r.getMessage()]
    assert warnings == [(f"warning: ADB private key {key} is accessible by other users (mode 640); OpenSSH would "
                         f"refuse it, and anyone who can read it can use what trusts it. Run: chmod 600 {key}")]

    # The CLI prints it on stderr (once), and the check goes on.
    devices = tmp_path / "device_configs"
    devices.mkdir()
    (devices / "phone.toml").write_text(f'kind = "adb"\nhost = "127.0.0.1"\nport = {emulator.port}\n'
                                        f'key_file = "{key}"\n')
    (devices / "local.toml").write_text(f'kind = "local"\ncache_dir = "{tmp_path / "work"}"\n')
    proc = subprocess.run(cli_command("devices", "--json"), env=cli_env(extra={"FARMBENCH_DEVICE_DIR": str(devices)}),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr.count(f"Run: chmod 600 {key}") == 1, describe(proc)

    key.chmod(0o600)
    quiet = subprocess.run(cli_command("devices", "--json"), env=cli_env(extra={"FARMBENCH_DEVICE_DIR": str(devices)}),
                           capture_output=True, text=True, timeout=120, check=False)
    assert quiet.returncode == 0 and "chmod" not in quiet.stderr, describe(quiet)


def test_loose_ssh_key_is_warned_about_once_per_process(sshd: SshdPeer, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    key = tmp_path / "loose_ed25519"
    shutil.copyfile(sshd.client_key, key)
    key.chmod(0o644)
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            with SshTransport(sshd.target(known_hosts, key_file=key)) as board:
                assert board.run(["true"], timeout_s=10).ok
    warnings = [r.getMessage() for r in caplog.records if str(key) in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].endswith(f"Run: chmod 600 {key}"), warnings
    assert "SSH private key" in warnings[0] and "mode 644" in warnings[0]


# --- secrets stay out of results -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd_with_encrypted_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SshdPeer, Path, str]]:
    """A separate sshd whose authorized_keys also holds a passphrase-protected key (so the shared one is left
    alone); yields the peer, the encrypted key and its passphrase."""
    from tests.peers.sshd import SSHD, require_tool

    require_tool(str(SSHD))
    directory = tmp_path_factory.mktemp("sshd-secrets")
    passphrase = f"pass-{uuid.uuid4().hex} phrase"
    key = directory / "encrypted_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "secret-test", "-f", str(key)],
                   check=True, capture_output=True)
    with running_sshd(directory) as peer:
        with (directory / "authorized_keys").open("a") as authorized:
            authorized.write(Path(f"{key}.pub").read_text())
        yield peer, key, passphrase


def test_passwords_passphrases_and_key_contents_stay_out_of_results(sshd_with_encrypted_key: tuple[SshdPeer, Path, str],
                                                                    tmp_path: Path) -> None:
    require_module("onnxruntime")
    sshd, key, passphrase = sshd_with_encrypted_key
    password = f"hunter2-{uuid.uuid4().hex}"
    model = relu_onnx(tmp_path / "models" / "relu.onnx")
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")
    (tmp_path / "ssh_config").write_text("")

    def board(name: str, key_passphrase: str) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(textwrap.dedent(f"""\
            kind = "ssh"
            host = "{sshd.host}"
            port = {sshd.port}
            user = "{sshd.user}"
            key_file = "{key}"
            key_passphrase = {toml(key_passphrase)}
            password = {toml(password)}
            known_hosts = "{known_hosts}"
            ssh_config = "{tmp_path / 'ssh_config'}"
            python = "{sys.executable}"
            cache_dir = "{tmp_path / f'work-{name}'}"
            connect_timeout_s = 5
            """))
        return path

    good, wrong = board("secret-board", passphrase), board("wrong-passphrase", f"not-{passphrase}")
    db = tmp_path / "results.db"
    cache = tmp_path / "cache"
    proc = farmbench_cli("run", "--model", model, *QUICK, "--db", db, "-d", good, "-d", wrong, cache_dir=cache)
    assert proc.returncode == 1, describe(proc)
    summary = json.loads(proc.stdout)
    # The passphrase decrypts the key (the run on that board works); the wrong one is an auth failure on record.
    assert (summary["ok"], summary["failed"]) == (1, 1), describe(proc)
    (failure,) = summary["failures"]
    assert failure[0] == "wrong-passphrase" and failure[2].startswith("AuthError: "), failure
    assert str(key) in failure[2] and "key_passphrase" in failure[2], failure

    outputs: dict[str, bytes] = {"run stdout": proc.stdout.encode(), "run stderr": proc.stderr.encode()}
    for path in sorted(db.parent.glob("results.db*")):  # the database and any WAL / journal beside it
        outputs[path.name] = path.read_bytes()
    for fmt in ("csv", "json", "parquet"):
        out = tmp_path / f"export.{fmt}"
        exported = farmbench_cli("export", "--db", db, "--format", fmt, "--out", out, cache_dir=cache)
        assert exported.returncode == 0, describe(exported)
        outputs[f"export {fmt}"] = out.read_bytes()
    results = farmbench_cli("results", "--db", db, "--format", "json", cache_dir=cache)
    assert results.returncode == 0, describe(results)
    outputs["results json"] = results.stdout.encode()
    outputs["results table"] = farmbench_cli("results", "--db", db, cache_dir=cache).stdout.encode()
    shown = farmbench_cli("devices", "--json", "-d", good, "-d", wrong, cache_dir=cache)
    assert shown.returncode == 1, describe(shown)
    assert [entry["status"] for entry in json.loads(shown.stdout)] == ["online", "unauthorized"]
    outputs["devices --json"] = shown.stdout.encode() + shown.stderr.encode()
    # No HTML report command exists on this branch yet; `farmbench report` output is for that branch to check.

    secrets = {"password": password, "passphrase": passphrase, "wrong passphrase": f"not-{passphrase}"}
    key_lines = [line for line in key.read_text().splitlines() if line.strip()]
    assert len(key_lines) >= 3
    secrets.update({f"private key line {n}": line for n, line in enumerate(key_lines)})
    leaks = [(where, what) for where, data in outputs.items() for what, secret in secrets.items()
             if secret.encode() in data]
    assert leaks == []
    assert len(outputs["results.db"]) > 0 and b"secret-board" in b"".join(outputs.values())


def test_an_encrypted_key_without_its_passphrase_says_so(sshd_with_encrypted_key: tuple[SshdPeer, Path, str],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from farmbench.errors import AuthError

    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    sshd, key, passphrase = sshd_with_encrypted_key
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")
    with pytest.raises(AuthError) as caught:
        SshTransport(sshd.target(known_hosts, key_file=key))
    assert str(caught.value) == (f"{sshd.user}@127.0.0.1:{sshd.port}: cannot use key file {key}: it is encrypted and "
                                 "no key_passphrase is set")
    assert "ssh-add" in (caught.value.hint or "")
    with SshTransport(sshd.target(known_hosts, key_file=key, passphrase=passphrase)) as board:
        assert board.run(["true"], timeout_s=10).ok
    assert passphrase not in repr(sshd.target(known_hosts, key_file=key, passphrase=passphrase))


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    device = tmp_path / "board.toml"
    device.write_text('kind = "ssh"\nhost = "10.0.0.7"\npassword = 31415926535\n')
    proc = subprocess.run(cli_command("devices", "--no-check", "-d", device), env=cli_env(), capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2, describe(proc)
    assert f"{device}:3: password: expected a string (the value is not shown: it is a secret)" in proc.stderr
    assert "31415926535" not in proc.stdout + proc.stderr
