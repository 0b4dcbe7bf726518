"""`farmbench run`, `devices --probe`, `results` and `export` end to end, as real processes.

The devices are real: this machine as device ``local``, and a real OpenSSH sshd on loopback (tests/peers/sshd.py)
standing in for a Linux board. The board's device file points ``python`` at this interpreter, so the pushed agent
finds LiteRT and ONNX Runtime there, and ``cache_dir`` at a private temporary directory, so each test can see what
was uploaded and which processes are still running. The models are the shared grid (``built_grid`` in conftest:
mobilenet_v2 α0.35 r96, built once per session); each module works on its own copy of that cache, so `farmbench run`
finds every artifact built and goes straight to measuring.

Tests marked slow need the built grid; the configuration and probe tests need only the sshd.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import GRID_FLAGS, GRID_PREFIX, BuiltGrid, cli_command, cli_env, describe

from farmbench.results.schema import SCHEMA_VERSION
from farmbench.results.store import ResultStore
from tests.peers.sshd import SshdPeer, keygen, openssh_fingerprint, openssh_knows

QUANTS, FORMATS = ("fp32", "int8"), ("tflite", "onnx")
RUNTIME_OF = {"tflite": "litert", "onnx": "onnxruntime"}
GRID = (*GRID_FLAGS, "--quant", ",".join(QUANTS), "--format", ",".join(FORMATS),
        "--runtime", ",".join(RUNTIME_OF.values()))
TIMED_RUNS = 30
# Exactly TIMED_RUNS timed inferences (no minimum time), a short warm-up: seconds per measurement, not minutes.
QUICK = ("--runs", str(TIMED_RUNS), "--min-s", "0", "--max-s", "30", "--warmup-runs", "3", "--warmup-min-s", "0")
EXPECTED = {(f"{GRID_PREFIX}_{quant}.{fmt}", RUNTIME_OF[fmt]) for quant in QUANTS for fmt in FORMATS}
CLI_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Cli:
    proc: subprocess.CompletedProcess[str]
    seconds: float

    @property
    def summary(self) -> dict[str, Any]:
        """The `run --json` summary."""
        try:
            return dict(json.loads(self.proc.stdout))
        except ValueError:
            raise AssertionError(f"no JSON summary on stdout\n{describe(self.proc)}") from None


def farmbench(*args: str | Path, cache_dir: Path | None = None, env: dict[str, str] | None = None,
              timeout_s: float = CLI_TIMEOUT_S) -> Cli:
    """``python -m farmbench ARGS`` as a real process, timed. The caller's ssh-agent is left out: the device files
    say which key to use, and an agent holding the test key would hide a wrong key_file."""
    environment = cli_env(cache_dir, env)
    environment.pop("SSH_AUTH_SOCK", None)
    started = time.monotonic()
    proc = subprocess.run(cli_command(*args), check=False, env=environment, cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=timeout_s)
    return Cli(proc, time.monotonic() - started)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def machine_id() -> str:
    path = Path("/etc/machine-id")
    return (path.read_text().strip() if path.is_file() else "") or "no-machine-id"


def measurements(db: Path) -> list[Any]:
    with ResultStore(db, create=False) as store:
        return store.measurements()


def run_infos(db: Path) -> list[Any]:
    with ResultStore(db, create=False) as store:
        return store.runs()


def artifact_names(db: Path) -> dict[str, str]:
    with ResultStore(db, create=False) as store:
        frame = store.frame()
    return dict(zip(frame["artifact_key"], frame["artifact"]))


def seconds_between(started_at: str, finished_at: str) -> float:
    def parse(text: str) -> float:
        return pd.Timestamp(text).timestamp()

    return parse(finished_at) - parse(started_at)


def board_processes(marker: str) -> list[str]:
    """Command lines of processes whose arguments mention ``marker`` (a board's private cache dir)."""
    found = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True, check=False)
    return [line for line in found.stdout.splitlines() if line.strip()]


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(built_grid: BuiltGrid, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the built grid."""
    return built_grid.copy(tmp_path_factory.mktemp("run-cache") / "cache")


@dataclass(frozen=True)
class Board:
    """Writes device files for the loopback sshd "board"."""

    sshd: SshdPeer
    directory: Path
    known_hosts: Path  # holds the sshd's real host key
    ssh_config: Path  # empty: the user's ~/.ssh/config must not change what these tests connect to

    def device_file(self, name: str, *, known_hosts: Path | None = None, port: int | None = None,
                    key_file: Path | None = None, cache_dir: Path | None = None,
                    connect_timeout_s: float = 5.0) -> Path:
        path = self.directory / f"{name}.toml"
        path.write_text(textwrap.dedent(f"""\
            # The test sshd on loopback as an SSH board; the agent runs under the test's own Python.
            kind = "ssh"
            name = "{name}"
            host = "{self.sshd.host}"
            port = {port or self.sshd.port}
            user = "{self.sshd.user}"
            key_file = "{key_file or self.sshd.client_key}"
            known_hosts = "{known_hosts or self.known_hosts}"
            ssh_config = "{self.ssh_config}"
            connect_timeout_s = {connect_timeout_s}
            python = "{sys.executable}"
            cache_dir = "{cache_dir or self.directory / f'board-cache-{name}-{uuid.uuid4().hex[:8]}'}"
            """))
        return path


@pytest.fixture(scope="module")
def board(sshd: SshdPeer, tmp_path_factory: pytest.TempPathFactory) -> Board:
    directory = tmp_path_factory.mktemp("board")
    ssh_config = directory / "ssh_config"
    ssh_config.write_text("")
    return Board(sshd, directory, sshd.write_known_hosts(directory / "known_hosts"), ssh_config)


# --- 1. device local: the whole path from plan to export ----------------------------------------------------------


@dataclass(frozen=True)
class LocalRun:
    cli: Cli
    db: Path
    directory: Path


@pytest.fixture(scope="module")
def local_run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalRun:
    directory = tmp_path_factory.mktemp("local-run")
    db = directory / "results.db"
    cli = farmbench("run", *GRID, *QUICK, "--repeats", "2", "--device", "local", "--db", db, cache_dir=cache)
    return LocalRun(cli, db, directory)


@pytest.mark.slow
def test_local_run_measures_everything_without_building(local_run: LocalRun) -> None:
    proc = local_run.cli.proc
    assert proc.returncode == 0, describe(proc)
    assert "building" not in proc.stderr, describe(proc)  # every artifact came from the cache
    assert "8 ok, 0 failed, 0 skipped of 8 planned" in proc.stdout, describe(proc)
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_results_json_lists_the_run_and_its_measurements(local_run: LocalRun, cache: Path) -> None:
    shown = farmbench("results", "--format", "json", "--db", local_run.db, cache_dir=cache)
    assert shown.proc.returncode == 0, describe(shown.proc)
    document = json.loads(shown.proc.stdout)
    (run,) = document["runs"]
    assert run["status"] == "finished" and run["finished_at"]
    rows = document["measurements"]
    assert len(rows) == 8
    assert {row["run_id"] for row in rows} == {run["id"]}
    assert [row["status"] for row in rows] == ["ok"] * 8, rows
    assert {(row["artifact"], row["runtime"]) for row in rows} == EXPECTED
    assert sorted((row["artifact"], row["repeat"]) for row in rows) == sorted(
        (artifact, repeat) for artifact, _ in EXPECTED for repeat in (0, 1))
    for row in rows:
        assert row["device"] == "local" and row["device_identity"].startswith("local:")
        assert row["runtime_version"], row
        assert row["quant"] in QUANTS and row["format"] in FORMATS and row["resolution"] == 96
        assert row["n_samples"] == TIMED_RUNS
        assert 0 < row["min_us"] <= row["p50_us"] <= row["p90_us"] <= row["p99_us"], row
        assert row["ci95_low_us"] <= row["p50_us"] <= row["ci95_high_us"], row
        assert row["init_ms"] > 0 and row["first_inference_ms"] > 0
    # The table view of the same run.
    table = farmbench("results", "--db", local_run.db, cache_dir=cache)
    assert table.proc.returncode == 0, describe(table.proc)
    assert f"run {run['id']}  finished" in table.proc.stdout
    assert table.proc.stdout.count(f"{GRID_PREFIX}_") == 8


@pytest.mark.slow
def test_raw_samples_and_context_are_stored(local_run: LocalRun) -> None:
    records = measurements(local_run.db)
    assert len(records) == 8
    for record in records:
        context = record.context
        assert record.status == "ok", record.error_message
        assert record.samples_us is not None and len(record.samples_us) == context["timed_runs"] == TIMED_RUNS
        assert all(sample > 0 for sample in record.samples_us)
        assert record.latency is not None and record.latency.p50_us > 0
        assert 0 < context["timed_wall_s"] < 30
        assert context["runtime"] == record.runtime and context["runtime_version"] == record.runtime_version
        assert {"litert", "onnxruntime"} <= set(context["runtimes"]), context["runtimes"]
        assert context["runtimes"][record.runtime] == record.runtime_version
        converters = context["converter_versions"]
        assert converters["tensorflow"] and converters["farmbench"]
        if record.config["runtime"] == "onnxruntime":
            assert converters["tf2onnx"] and converters["onnx"]
        assert context["os"] and context["kernel"] == platform.release()
        assert context["python"] == platform.python_version()
        assert context["cpu"] is not None or context["arch"]
        assert record.config["threads"] == 1 and record.config["runs"] == TIMED_RUNS
        # Start and end of each measurement, not just the moment it was stored.
        assert record.started_at and record.finished_at
        assert 0 < seconds_between(record.started_at, record.finished_at) < 60


@pytest.mark.slow
def test_plan_order_is_recorded_and_interleaved(local_run: LocalRun) -> None:
    (run,) = run_infos(local_run.db)
    assert run.seed == 0  # the default --order-seed, recorded
    plan = run.plan
    assert [item["index"] for item in plan] == list(range(8))
    rounds = [[(item["artifact_name"], item["spec"]["runtime"]) for item in plan if item["repeat"] == repeat]
              for repeat in (0, 1)]
    assert set(rounds[0]) == set(rounds[1]) == EXPECTED
    assert len(rounds[0]) == len(rounds[1]) == 4
    assert rounds[0] != rounds[1], "each round is shuffled on its own"
    # Measured in plan order: repeat 0 entirely before repeat 1, each record pointing at its plan entry.
    records = sorted(measurements(local_run.db), key=lambda r: r.id)
    names = artifact_names(local_run.db)
    assert [r.plan_index for r in records] == list(range(8))
    for record in records:
        item = plan[record.plan_index]
        assert (names[record.artifact_key], record.runtime, record.repeat) == (
            item["artifact_name"], item["spec"]["runtime"], item["repeat"])
    assert all(a.finished_at <= b.started_at for a, b in itertools.pairwise(records))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_writes_one_row_per_measurement(local_run: LocalRun, cache: Path, fmt: str) -> None:
    out = local_run.directory / f"export.{fmt}"
    exported = farmbench("export", "--format", fmt, "--out", out, "--db", local_run.db, cache_dir=cache)
    assert exported.proc.returncode == 0, describe(exported.proc)
    assert str(out) in exported.proc.stdout
    if fmt == "csv":
        with out.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        statuses = [row["status"] for row in rows]
        assert {row["schema_version"] for row in rows} == {str(SCHEMA_VERSION)}
    elif fmt == "json":
        document = json.loads(out.read_text())
        rows = document["measurements"]
        statuses = [row["status"] for row in rows]
        assert document["schema_version"] == SCHEMA_VERSION and len(document["runs"]) == 1
    else:
        frame = pd.read_parquet(out)
        statuses = list(frame["status"])
        assert set(frame["schema_version"]) == {SCHEMA_VERSION}
        assert frame["p50_us"].notna().all()
    assert statuses == ["ok"] * 8


# --- 2. an SSH board: the same run over the loopback sshd ----------------------------------------------------------


@dataclass(frozen=True)
class BoardRuns:
    first: Cli
    second: Cli
    db: Path
    device: Path
    board_cache: Path
    files_before: dict[str, tuple[int, int]]  # board cache after the first run: path -> (inode, mtime_ns)
    files_after: dict[str, tuple[int, int]]
    sftp_sessions: tuple[int, int, int]  # sshd log's SFTP session count: before, after the first run, after the second


def _files(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _sftp_sessions(sshd: SshdPeer) -> int:
    return sshd.log.read_text(errors="replace").count("subsystem 'sftp'")


@pytest.fixture(scope="module")
def board_runs(board: Board, cache: Path) -> BoardRuns:
    board_cache = board.directory / f"board-cache-{uuid.uuid4().hex}"
    device = board.device_file("loopback-board", cache_dir=board_cache)
    db = board.directory / "board.db"
    args = ("run", *GRID, *QUICK, "--repeats", "1", "--device", device, "--db", db)
    sftp_0 = _sftp_sessions(board.sshd)
    first = farmbench(*args, cache_dir=cache)
    files_before = _files(board_cache) if board_cache.is_dir() else {}
    sftp_1 = _sftp_sessions(board.sshd)
    time.sleep(0.05)  # a rewrite in the second run would get a visibly newer mtime
    second = farmbench(*args, cache_dir=cache)
    return BoardRuns(first, second, db, device, board_cache, files_before,
                     _files(board_cache) if board_cache.is_dir() else {},
                     (sftp_0, sftp_1, _sftp_sessions(board.sshd)))


@pytest.mark.slow
def test_board_run_measures_fp32_and_int8_with_litert_and_onnxruntime(board_runs: BoardRuns) -> None:
    for cli in (board_runs.first, board_runs.second):
        assert cli.proc.returncode == 0, describe(cli.proc)
        assert "4 ok, 0 failed, 0 skipped of 4 planned" in cli.proc.stdout, describe(cli.proc)
    records = measurements(board_runs.db)
    names = artifact_names(board_runs.db)
    assert len(records) == 8 and {r.status for r in records} == {"ok"}
    for run in run_infos(board_runs.db):
        assert {(names[r.artifact_key], r.runtime) for r in records if r.run_id == run.id} == EXPECTED
        assert run.status == "finished"
    for record in records:
        assert record.samples_us is not None and len(record.samples_us) == TIMED_RUNS
        assert record.context["runtime_version"] and record.context["converter_versions"]
        assert record.context["python"] == platform.python_version()


@pytest.mark.slow
def test_board_is_stored_as_an_ssh_device_with_its_machine_id(board_runs: BoardRuns) -> None:
    with ResultStore(board_runs.db, create=False) as store:
        devices = store.devices()
        frame = store.frame()
    (device,) = devices  # both runs measured the same board: one device row
    assert device.kind == "ssh" and device.name == "loopback-board"
    assert device.identity == f"ssh:{machine_id()}:{socket.gethostname()}"
    assert device.context["python"] == platform.python_version()
    assert {"litert", "onnxruntime"} <= set(device.context["runtimes"])
    assert set(frame["device_identity"]) == {device.identity}


@pytest.mark.slow
def test_second_board_run_reuses_the_pushed_files(board_runs: BoardRuns) -> None:
    before, after = board_runs.files_before, board_runs.files_after
    # One agent, each model and the drift evaluation inputs (one set: one family and resolution) once, under their
    # hashes; no partial uploads and no output dumps left behind.
    assert sorted(Path(name).name for name in before) == sorted(
        ["agent.py", "inputs.npy", *(f"model.{fmt}" for _ in QUANTS for fmt in FORMATS)]), before
    assert len({Path(name).parent for name in before}) == 6
    assert not [name for name in before if ".part-" in name]
    # Nothing rewritten: same inode (an upload renames a new file into place) and the same mtime.
    assert after == before
    sftp_0, sftp_1, sftp_2 = board_runs.sftp_sessions
    assert sftp_1 > sftp_0, "the first run uploads over SFTP"
    # The second run finds every file by its hash (same inodes and mtimes above); its one SFTP session only pulls
    # the drift outputs back.
    assert sftp_2 - sftp_1 <= 1, "the second run opens at most the one SFTP session that pulls drift outputs"


# --- 3. host keys --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_unknown_host_key_fails_every_measurement_and_names_the_fingerprint(board: Board, cache: Path) -> None:
    empty = board.directory / "known_hosts_empty"
    empty.write_text("")
    device = board.device_file("stranger-board", known_hosts=empty)
    db = board.directory / "hostkey.db"
    cli = farmbench("run", *GRID, *QUICK, "--repeats", "1", "--device", device, "--db", db, "--json",
                    cache_dir=cache)
    assert cli.proc.returncode == 1, describe(cli.proc)
    fingerprint = openssh_fingerprint(board.sshd.host_public_key)
    records = measurements(db)
    assert len(records) == 4
    for record in records:
        assert record.status == "failed" and record.error_class == "HostKeyError"
        assert fingerprint in record.error_message and f"[127.0.0.1]:{board.sshd.port}" in record.error_message
        assert record.transient is False
    (run,) = run_infos(db)
    assert run.status == "finished"
    summary = cli.summary
    assert summary["failed"] == 4 and summary["ok"] == 0 and summary["exit_code"] == 1
    assert empty.read_text() == "", "nothing is recorded without the opt-in"

    # Opting in records the key and the measurement runs.
    accepted = farmbench("run", *GRID_FLAGS, "--quant", "fp32", "--format", "tflite", "--runtime", "litert",
                         *QUICK, "--repeats", "1", "--device", device, "--db", db, "--accept-new-host-key",
                         "--json", cache_dir=cache)
    assert accepted.proc.returncode == 0, describe(accepted.proc)
    assert accepted.summary["ok"] == 1
    assert openssh_knows(empty, f"[127.0.0.1]:{board.sshd.port}")
    assert board.sshd.host_key_line.split()[1] in empty.read_text()


# --- 4. authentication and reachability ----------------------------------------------------------------------------


@pytest.mark.slow
def test_wrong_client_key_is_an_auth_error_in_every_record(board: Board, cache: Path) -> None:
    stranger = board.directory / "stranger_ed25519"
    if not stranger.exists():
        keygen(stranger, "farmbench-test-not-authorized")
    device = board.device_file("wrong-key-board", key_file=stranger)
    db = board.directory / "auth.db"
    cli = farmbench("run", *GRID, *QUICK, "--repeats", "1", "--device", device, "--db", db, "--json",
                    cache_dir=cache)
    assert cli.proc.returncode == 1, describe(cli.proc)
    assert cli.summary["wall_s"] < 5, cli.summary
    assert cli.seconds < 30
    records = measurements(db)
    assert len(records) == 4 and {r.status for r in records} == {"failed"}
    for record in records:
        assert record.error_class == "AuthError"
        assert f"{board.sshd.user}@127.0.0.1:{board.sshd.port}" in record.error_message
        assert str(stranger) in record.error_message
    assert run_infos(db)[0].status == "finished"


@pytest.mark.slow
def test_closed_port_fails_within_the_connect_timeout(board: Board, cache: Path) -> None:
    port = free_port()
    device = board.device_file("closed-board", port=port, connect_timeout_s=3)
    db = board.directory / "closed.db"
    # No retries and no unhealthy verdict: this is about one connection attempt (test_farm.py covers the policy).
    cli = farmbench("run", *GRID, *QUICK, "--repeats", "1", "--device", device, "--db", db, "--json",
                    "--retries", "0", "--unhealthy-after", "0", cache_dir=cache)
    assert cli.proc.returncode == 1, describe(cli.proc)
    assert cli.seconds < 30 and cli.summary["wall_s"] < 3, (cli.seconds, cli.summary)
    records = measurements(db)
    assert len(records) == 4
    for record in records:
        assert record.status == "failed" and record.error_class == "ConnectError"
        assert f"127.0.0.1:{port}" in record.error_message
    assert [device for device, _, _ in cli.summary["failures"]] == ["closed-board"] * 4
    assert all(message.startswith(f"ConnectError: 127.0.0.1:{port}") for _, _, message in cli.summary["failures"])
    with ResultStore(db, create=False) as store:
        (device_row,) = store.devices()
    assert device_row.name == "closed-board" and device_row.kind == "ssh"
    assert run_infos(db)[0].status == "finished"


@pytest.mark.slow
def test_an_unreachable_board_does_not_stop_the_local_device(board: Board, cache: Path) -> None:
    port = free_port()
    device = board.device_file("closed-board-2", port=port, connect_timeout_s=3)
    db = board.directory / "two-devices.db"
    cli = farmbench("run", *GRID, *QUICK, "--repeats", "1", "--device", "local", "--device", device, "--db", db,
                    "--retries", "0", "--unhealthy-after", "0", cache_dir=cache)
    assert cli.proc.returncode == 1, describe(cli.proc)
    assert "4 ok, 4 failed, 0 skipped of 8 planned" in cli.proc.stdout, describe(cli.proc)
    assert f"on closed-board-2: ConnectError: 127.0.0.1:{port}" in cli.proc.stderr, describe(cli.proc)
    with ResultStore(db, create=False) as store:
        frame = store.frame()
    by_device = {name: group for name, group in frame.groupby("device")}
    local, closed = by_device["local"], by_device["closed-board-2"]
    assert list(local["status"]) == ["ok"] * 4 and set(zip(local["artifact"], local["runtime"])) == EXPECTED
    assert local["n_samples"].eq(TIMED_RUNS).all()
    assert list(closed["status"]) == ["failed"] * 4 and set(closed["error_class"]) == {"ConnectError"}
    assert run_infos(db)[0].status == "finished"


# --- 5. bad device files: exit 2, file:line: key, and nothing done ------------------------------------------------


BAD_DEVICE_FILES = {
    "misspelt-key": ('kind = "ssh"\nhots = "127.0.0.1"\n', ":2: hots: unknown key", "did you mean 'host'?"),
    "wrong-type": ('kind = "ssh"\nhost = "127.0.0.1"\nport = "x"\n', ":3: port: expected an integer", "'x'"),
    "no-host": ('kind = "ssh"\nuser = "pi"\n', ":1: host: an ssh device needs a host", 'host = "'),
}


def _assert_nothing_done(cli: Cli, cache_dir: Path, db: Path) -> None:
    assert cli.proc.returncode == 2, describe(cli.proc)
    assert "Traceback" not in cli.proc.stderr
    assert not db.exists(), "no results database for a run that never started"
    assert list(cache_dir.iterdir()) == [], "nothing built"


@pytest.mark.parametrize("case", sorted(BAD_DEVICE_FILES))
def test_bad_device_file_is_exit_2_naming_file_line_and_key(case: str, tmp_path: Path, empty_cache: Path) -> None:
    content, location, detail = BAD_DEVICE_FILES[case]
    device = tmp_path / f"{case}.toml"
    device.write_text(content)
    db = tmp_path / "results.db"
    cli = farmbench("run", *GRID, "--device", device, "--db", db, cache_dir=empty_cache, timeout_s=120)
    _assert_nothing_done(cli, empty_cache, db)
    assert f"error: {device}{location}" in cli.proc.stderr, describe(cli.proc)
    assert detail in cli.proc.stderr, describe(cli.proc)


def test_unknown_device_name_lists_the_configured_devices(tmp_path: Path, empty_cache: Path) -> None:
    devices = tmp_path / "device_configs"
    devices.mkdir()
    for name in ("rpi5", "jetson"):
        (devices / f"{name}.toml").write_text('kind = "ssh"\nhost = "board.invalid"\n')
    db = tmp_path / "results.db"
    cli = farmbench("run", *GRID, "--device", "local", "--device", "rpi6", "--db", db, cache_dir=empty_cache,
                    env={"FARMBENCH_DEVICE_DIR": str(devices)}, timeout_s=120)
    _assert_nothing_done(cli, empty_cache, db)
    assert "no device named 'rpi6'" in cli.proc.stderr, describe(cli.proc)
    assert "devices there: jetson, rpi5" in cli.proc.stderr, describe(cli.proc)


# --- 6. devices --probe --------------------------------------------------------------------------------------------


def test_probe_an_ssh_board(board: Board) -> None:
    device = board.device_file("probed-board")
    cli = farmbench("devices", "--probe", "-d", device, timeout_s=120)
    out = cli.proc.stdout
    assert cli.proc.returncode == 0, describe(cli.proc)
    assert "probed-board (ssh): reachable" in out, describe(cli.proc)
    lines = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in out.splitlines()[1:]
             if line.startswith("  ") and len(line.split(None, 1)) == 2}
    assert {"os", "kernel", "arch", "cpu", "python", "runtimes"} <= set(lines), out
    assert lines["kernel"] == platform.release()
    assert lines["arch"] == platform.machine()
    assert lines["python"] == platform.python_version()
    assert f"x{os.cpu_count()}" in lines["cpu"]
    assert "litert " in lines["runtimes"] and "onnxruntime " in lines["runtimes"], out
    assert lines["os"] not in ("None", "")

    as_json = farmbench("devices", "--probe", "-d", device, "--json", timeout_s=120)
    assert as_json.proc.returncode == 0, describe(as_json.proc)
    (report,) = json.loads(as_json.proc.stdout)
    assert report["status"] == "reachable" and report["identity"] == f"ssh:{machine_id()}:{socket.gethostname()}"


def test_probe_a_closed_port_says_unreachable(board: Board) -> None:
    port = free_port()
    device = board.device_file("closed-probe", port=port, connect_timeout_s=3)
    cli = farmbench("devices", "--probe", "-d", device, timeout_s=120)
    assert cli.proc.returncode == 1, describe(cli.proc)
    assert "closed-probe (ssh): unreachable" in cli.proc.stdout, describe(cli.proc)
    assert f"127.0.0.1:{port}" in cli.proc.stdout
    assert cli.seconds < 30


# --- 7. a measurement that runs past --timeout-s -------------------------------------------------------------------


@pytest.mark.slow
def test_a_hanging_agent_is_killed_on_the_board_and_the_run_goes_on(board: Board, cache: Path) -> None:
    marker = f"board-cache-hang-{uuid.uuid4().hex}"
    board_cache = board.directory / marker
    device = board.device_file("hanging-board", cache_dir=board_cache)
    db = board.directory / "hang.db"
    # The agent would time a million inferences for at least 100 s; the run allows 3 s per measurement. A timeout
    # is transient: each measurement is tried once more after reconnecting, then recorded as failed.
    cli = farmbench("run", *GRID_FLAGS, "--quant", "fp32", "--format", "tflite,onnx", "--runtime",
                    "litert,onnxruntime", "--runs", "1000000", "--min-s", "100", "--max-s", "200",
                    "--warmup-min-s", "0", "--repeats", "1", "--timeout-s", "3", "--device", device, "--db", db,
                    "--retries", "1", "--backoff-s", "0.2", "--json", cache_dir=cache)
    leftovers = board_processes(marker)
    assert cli.proc.returncode == 1, describe(cli.proc)
    assert leftovers == [], "the agent must be killed on the board"
    records = sorted(measurements(db), key=lambda r: r.id)
    assert len(records) == 4, "two attempts per measurement, and the run goes on with the next after a timeout"
    for record in records:
        assert record.status == "failed" and record.error_class == "CommandTimeoutError", record.error_message
        assert "within 3 s" in record.error_message and "killed on the board" in record.error_message
        assert "agent.py bench" in record.error_message and record.transient
        assert seconds_between(record.started_at, record.finished_at) < 10
    assert ["retried" in r.flags for r in records] == [True, False, True, False]
    assert [r.plan_index for r in records] == [0, 0, 1, 1]
    assert {artifact_names(db)[r.artifact_key] for r in records} == {
        f"{GRID_PREFIX}_fp32.tflite", f"{GRID_PREFIX}_fp32.onnx"}
    assert all(a.finished_at <= b.started_at for a, b in itertools.pairwise(records))
    assert run_infos(db)[0].status == "finished"
    assert (cli.summary["failed"], cli.summary["retried"]) == (2, 2)
    assert cli.summary["devices"]["hanging-board"]["health"] == "healthy"  # 2 in a row, unhealthy_after is 3
