"""`farmbench doctor` on a home directory each test lays out: real key files made by ssh-keygen and adb-shell, a real
ssh-agent, real results databases, device files with mistakes in them, and runtimes imported in child processes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farmbench import doctor
from farmbench.results.schema import SCHEMA_VERSION
from farmbench.results.store import ResultStore
from farmbench.transports.adb import load_or_create_key
from tests.conftest import cli_command, cli_env, describe
from tests.peers.sshd import keygen, require_tool

V1_SCHEMA = Path(__file__).resolve().parent / "data" / "results_schema_v1.sql"


class Home:
    """A home directory (``HOME``) with ~/.android, ~/.ssh, a device directory, a cache and a results database."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.adbkey = root / ".android" / "adbkey"
        self.ssh = root / ".ssh"
        self.devices = root / "device_configs"
        self.cache = root / "cache"
        self.db = root / "data" / "results.db"
        self.devices.mkdir(parents=True)

    def healthy(self) -> Home:
        load_or_create_key(self.adbkey)
        self.ssh.mkdir(mode=0o700)
        keygen(self.ssh / "id_ed25519", "doctor-test")
        (self.ssh / "known_hosts").write_text("[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDoctor\n")
        (self.devices / "board.toml").write_text(f'kind = "ssh"\nhost = "127.0.0.1"\nkey_file = '
                                                 f'"{self.ssh / "id_ed25519"}"\n')
        with ResultStore(self.db):
            pass
        return self

    def doctor(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environment = cli_env(self.cache, {"HOME": str(self.root), "FARMBENCH_DEVICE_DIR": str(self.devices),
                                           "FARMBENCH_DB": str(self.db), **(env or {})})
        if "SSH_AUTH_SOCK" not in (env or {}):
            environment.pop("SSH_AUTH_SOCK", None)
        return subprocess.run(cli_command("doctor", *args), env=environment, capture_output=True, text=True,
                              timeout=300, check=False)

    def checks(self, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str],
                                                                             list[dict[str, Any]]]:
        proc = self.doctor("--json", *args, env=env)
        try:
            return proc, json.loads(proc.stdout)["checks"]
        except (ValueError, KeyError):
            raise AssertionError(f"no JSON on stdout\n{describe(proc)}") from None


def named(checks: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [check for check in checks if check["name"] == name]


@pytest.fixture
def home(tmp_path: Path) -> Home:
    require_tool("ssh-keygen")
    return Home(tmp_path / "home")


def test_a_healthy_machine_passes(home: Home) -> None:
    home.healthy()
    proc, checks = home.checks("--quick")
    assert proc.returncode == 0, describe(proc)
    assert {c["status"] for c in checks} == {"ok"}, [c for c in checks if c["status"] != "ok"]
    by_name = {c["name"]: c for c in checks}
    assert by_name["python"]["detail"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")
    assert by_name["adb key"]["detail"] == f"{home.adbkey} (mode 600) and its .pub match"
    assert by_name["ssh keys"]["detail"].startswith("id_ed25519 in ")
    assert by_name["known_hosts"]["detail"].endswith(": 1 entries")
    assert by_name["results db"]["detail"] == f"{home.db}: schema version {SCHEMA_VERSION}"
    assert by_name["device files"]["detail"] == f"1 in {home.devices}: board"
    assert "GiB free at" in by_name["disk (cache)"]["detail"]
    for runtime in ("runtime litert", "runtime onnxruntime", "converter tensorflow", "converter tf2onnx"):
        assert by_name[runtime]["detail"].endswith("(not imported: --quick)"), by_name[runtime]

    text = home.doctor("--quick")
    assert text.returncode == 0, describe(text)
    assert text.stdout.rstrip().endswith(f"{len(checks)} checks: 0 warnings, 0 failures"), text.stdout


def test_loose_key_permissions_are_warnings_with_the_chmod_fix(home: Home) -> None:
    home.healthy()
    home.adbkey.chmod(0o644)
    (home.ssh / "id_ed25519").chmod(0o640)
    keygen(home.ssh / "deploy-key", "a key whose name is not id_*")
    (home.ssh / "deploy-key").chmod(0o604)
    lab_key = home.root / "keys" / "lab_ed25519"  # a device file's key outside ~/.ssh
    lab_key.parent.mkdir()
    keygen(lab_key, "lab")
    lab_key.chmod(0o644)
    (home.devices / "lab.toml").write_text(f'kind = "ssh"\nhost = "lab"\nkey_file = "{lab_key}"\n')
    proc, checks = home.checks("--quick")
    assert proc.returncode == 0, describe(proc)  # warnings only
    (adb,) = named(checks, "adb key")
    assert (adb["status"], adb["fix"]) == ("warn", f"run: chmod 600 {home.adbkey}")
    assert "mode 644" in adb["detail"]
    ssh = {c["detail"].split()[0]: c for c in named(checks, "ssh key")}
    assert set(ssh) == {str(home.ssh / "id_ed25519"), str(home.ssh / "deploy-key")}
    assert ssh[str(home.ssh / "deploy-key")]["fix"] == f"run: chmod 600 {home.ssh / 'deploy-key'}"
    assert "mode 604" in ssh[str(home.ssh / "deploy-key")]["detail"]
    (lab,) = named(checks, "device lab")
    assert (lab["status"], lab["fix"]) == ("warn", f"run: chmod 600 {lab_key}")
    assert not named(checks, "device board"), "board's key_file is ~/.ssh/id_ed25519, already reported"

    text = home.doctor("--quick")
    assert f"fix: run: chmod 600 {home.adbkey}" in text.stdout, describe(text)
    assert "4 warnings, 0 failures" in text.stdout


def test_adb_public_key_of_another_key_fails(home: Home, tmp_path: Path) -> None:
    home.healthy()
    other = tmp_path / "other" / "adbkey"
    load_or_create_key(other)
    Path(f"{home.adbkey}.pub").write_text(Path(f"{other}.pub").read_text())
    proc, checks = home.checks("--quick")
    assert proc.returncode == 1, describe(proc)
    (adb,) = named(checks, "adb key")
    assert adb["status"] == "fail" and "does not belong to" in adb["detail"]
    assert adb["fix"].startswith(f"run: adb pubkey {home.adbkey} > {home.adbkey}.pub")

    Path(f"{home.adbkey}.pub").unlink()
    _, checks = home.checks("--quick")
    (adb,) = named(checks, "adb key")
    assert adb["status"] == "warn" and "is missing" in adb["detail"]


def test_a_broken_device_file_fails_naming_file_line_and_key(home: Home) -> None:
    home.healthy()
    broken = home.devices / "rpi5.toml"
    broken.write_text('kind = "ssh"\nhots = "10.0.0.7"\n')
    (home.devices / "jetson.toml").write_text(f'kind = "ssh"\nhost = "j"\nkey_file = "{home.root / "nope"}"\n')
    proc, checks = home.checks("--quick")
    assert proc.returncode == 1, describe(proc)
    (bad,) = named(checks, "device file")
    assert bad["status"] == "fail" and bad["detail"] == f"{broken}:2: hots: unknown key"
    assert bad["fix"] == "did you mean 'host'?"
    (jetson,) = named(checks, "device jetson")
    assert jetson["status"] == "fail" and f"key_file {home.root / 'nope'} does not exist" in jetson["detail"]
    assert not named(checks, "device files"), "no 'all device files load' when one does not"


@pytest.mark.parametrize("case", ["older", "newer", "not-a-database", "another-sqlite-file"])
def test_results_database_schema_version(home: Home, case: str) -> None:
    home.healthy()
    home.db.unlink()
    for leftover in home.db.parent.glob("results.db-*"):
        leftover.unlink()
    if case == "older":
        conn = sqlite3.connect(home.db)
        conn.executescript(V1_SCHEMA.read_text())
        conn.execute("PRAGMA user_version = 1")
        conn.close()
    elif case == "newer":
        with ResultStore(home.db):
            pass
        conn = sqlite3.connect(home.db)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
    elif case == "not-a-database":
        home.db.write_bytes(b"this is not SQLite\n" * 100)
    else:
        conn = sqlite3.connect(home.db)
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.close()
    before = home.db.read_bytes()
    proc, checks = home.checks("--quick")
    (db,) = named(checks, "results db")
    expected = {"older": "warn", "newer": "fail", "not-a-database": "fail", "another-sqlite-file": "fail"}[case]
    assert db["status"] == expected, db
    assert proc.returncode == (1 if expected == "fail" else 0), describe(proc)
    assert home.db.read_bytes() == before, "doctor must not migrate or touch the database"
    if case == "older":
        assert f"schema version 1, this farmbench writes {SCHEMA_VERSION}" in db["detail"]
        assert db["fix"] == f"back it up first: cp {home.db} {home.db}.v1"
    if case == "newer":
        assert f"schema version {SCHEMA_VERSION + 1}, newer" in db["detail"]


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[str]:
    """A real ssh-agent on a socket of our own; yields SSH_AUTH_SOCK."""
    require_tool("ssh-agent")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert time.monotonic() < deadline and agent.poll() is None, "ssh-agent did not start"
        time.sleep(0.02)
    yield str(sock)
    agent.terminate()
    agent.wait()


def test_ssh_agent_identities_are_counted(home: Home, ssh_agent: str) -> None:
    home.healthy()
    _, checks = home.checks("--quick", env={"SSH_AUTH_SOCK": ssh_agent})
    (agent,) = named(checks, "ssh-agent")
    assert agent["detail"] == f"running at {ssh_agent}, no identities" and agent["status"] == "ok"  # key files exist
    subprocess.run(["ssh-add", str(home.ssh / "id_ed25519")], env={**os.environ, "SSH_AUTH_SOCK": ssh_agent},
                   check=True, capture_output=True)
    _, checks = home.checks("--quick", env={"SSH_AUTH_SOCK": ssh_agent})
    (agent,) = named(checks, "ssh-agent")
    assert agent == {"name": "ssh-agent", "status": "ok", "detail": f"running at {ssh_agent}, 1 identity", "fix": ""}


def test_no_ssh_identity_at_all_with_ssh_boards_configured(home: Home, tmp_path: Path) -> None:
    (home.devices / "board.toml").write_text('kind = "ssh"\nhost = "10.0.0.7"\n')
    gone = tmp_path / "no-agent-here.sock"
    proc, checks = home.checks("--quick", env={"SSH_AUTH_SOCK": str(gone)})
    assert proc.returncode == 0, describe(proc)
    (agent,) = named(checks, "ssh-agent")
    assert agent["status"] == "warn" and f"SSH_AUTH_SOCK={gone} but no agent answers" in agent["detail"]
    assert agent["fix"] == "run: eval $(ssh-agent) && ssh-add"
    (keys,) = named(checks, "ssh keys")
    assert keys["status"] == "warn" and keys["fix"].startswith("run: ssh-keygen -t ed25519")
    (known,) = named(checks, "known_hosts")
    assert known["status"] == "warn" and "accept_new_host_key = true" in known["fix"]
    (adb,) = named(checks, "adb key")
    assert adb["status"] == "ok" and "creates it on first use" in adb["detail"]


def test_low_disk_space_warns() -> None:
    check = doctor.check_disk("disk (cache)", Path("/nonexistent/deep/cache"), min_free_gib=1e9)
    assert check.status == "warn" and "under 1e+09 GiB" in check.detail
    assert check.detail.endswith(f"GiB free at /nonexistent/deep/cache (under {1e9:g} GiB)")
    assert "farmbench cache prune" in check.fix


def test_a_runtime_that_crashes_on_import_is_a_failure_the_others_survive(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Like tflite-runtime 2.14 under numpy 2, which takes its interpreter down: a module that kills itself."""
    package = tmp_path / "site" / "tflite_runtime"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "interpreter.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    found = doctor.import_modules(doctor.RUNTIMES, timeout_s=60)
    assert found["tflite_runtime.interpreter"] == {
        "ok": False, "error": "importing tflite_runtime.interpreter crashed (killed by signal 11)"}
    assert found["ai_edge_litert.interpreter"]["ok"] and found["onnxruntime"]["ok"]
    check = doctor.check_module(doctor.RUNTIMES[1], found["tflite_runtime.interpreter"])
    assert check.status == "fail" and "crashed (killed by signal 11)" in check.detail
    assert check.fix.startswith("reinstall it")


def test_full_doctor_imports_runtimes_and_converters(home: Home) -> None:
    home.healthy()
    started = time.monotonic()
    proc, checks = home.checks()
    seconds = time.monotonic() - started
    assert proc.returncode == 0, describe(proc)
    by_name = {c["name"]: c for c in checks}
    import ai_edge_litert  # noqa: F401  (the versions doctor reports are the ones this interpreter has)
    import onnxruntime

    assert by_name["runtime onnxruntime"] == {"name": "runtime onnxruntime", "status": "ok",
                                              "detail": onnxruntime.__version__, "fix": ""}
    for name in ("runtime litert", "converter tensorflow", "converter keras", "converter tf2onnx", "converter onnx",
                 "converter onnxconverter-common"):
        assert by_name[name]["status"] == "ok" and "not imported" not in by_name[name]["detail"], by_name[name]
    assert seconds < 120, seconds
