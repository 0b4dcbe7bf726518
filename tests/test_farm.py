"""Faults in a device farm, injected into real peers while `farmbench run` (the real CLI, a real process) works:
an sshd killed mid-run and started again, the ADB emulator dropping the connection mid-push and mid-benchmark, a
command that hangs, a device that disappears for good, a full disk, a corrupt model file, farmbench itself killed
with SIGKILL and resumed, and SIGINT/SIGTERM (once and twice).

Each test checks what the issue asks: every finished measurement is in the database, the summary counts are right,
nothing is left running (or half-written) on the device, and the exit code follows the policy (0 ok, 1 a device or
tool failure, 2 usage, 130 interrupted). Retry waits are shortened with --backoff-s; the policy is the product's
(farmbench/farm.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from farmbench.results.store import ResultStore
from tests.conftest import GRID_FLAGS, GRID_PREFIX, BuiltGrid, cli_command, cli_env, describe
from tests.peers.benchmark_model_standin import install as install_benchmark_model
from tests.peers.sshd import RestartableSshd, SshdPeer, _comm, _descendants

T = TypeVar("T")
TFLITE = (*GRID_FLAGS, "--format", "tflite")
FP32_TFLITE = f"{GRID_PREFIX}_fp32.tflite"
INT8_TFLITE = f"{GRID_PREFIX}_int8.tflite"


def flags(min_s: float = 0, **overrides: Any) -> tuple[str, ...]:
    """Tiny measurements (3 timed runs, one warm-up, no drift pass) and short retry waits."""
    values: dict[str, Any] = {"runs": 3, "min_s": min_s, "max_s": 60, "warmup_runs": 1, "warmup_min_s": 0,
                              "backoff_s": 0.2, "backoff_max_s": 1, **overrides}
    args = ["--no-drift"]
    for key, value in values.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return tuple(args)


def cli(*args: str | Path, cache_dir: Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    env = cli_env(cache_dir)
    env.pop("SSH_AUTH_SOCK", None)  # device files name their key
    return subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=timeout_s,
                          check=False)


def start(*args: str | Path, cache_dir: Path) -> subprocess.Popen[str]:
    env = cli_env(cache_dir)
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.Popen(cli_command(*args), env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[str], timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"farmbench did not finish within {timeout_s} s\n{stdout}\n{stderr}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def signal_and_finish(proc: subprocess.Popen[str], signum: int,
                      timeout_s: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """Send ``signum`` to farmbench and wait for it to exit: its result, and seconds from the signal to the exit."""
    signalled = time.monotonic()
    proc.send_signal(signum)
    done = finish(proc, timeout_s=timeout_s)
    return done, time.monotonic() - signalled


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 120, poll_s: float = 0.1) -> T:
    end_s = time.monotonic() + timeout_s
    while time.monotonic() < end_s:
        value = probe()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def summary_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return dict(json.loads(proc.stdout))
    except ValueError:
        raise AssertionError(f"no JSON summary\n{describe(proc)}") from None


def records(db: Path) -> list[Any]:
    if not db.exists():
        return []
    with ResultStore(db, create=False) as store:
        return store.measurements(with_samples=False)


def run_status(db: Path) -> str:
    with ResultStore(db, create=False) as store:
        (run,) = store.runs()
    return run.status


def names(db: Path) -> dict[str, str]:
    with ResultStore(db, create=False) as store:
        return store.artifact_names()


def agents(marker: str) -> list[int]:
    """PIDs of agent processes (the Python running agent.py) whose command line holds ``marker``."""
    found = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True, check=False).stdout
    pids = []
    for line in found.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1] == sys.executable and parts[2].endswith("agent.py"):
            pids.append(int(parts[0]))
    return pids


def leftovers(marker: str) -> list[str]:
    """Any process (agent, wrapper shell, timeout) still mentioning ``marker``."""
    found = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True, check=False).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def partial_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if ".part-" in p.name]


@pytest.fixture
def cache(built_grid: BuiltGrid, tmp_path: Path) -> Path:
    return built_grid.copy(tmp_path / "cache")


def board_file(directory: Path, peer: SshdPeer, name: str, board_cache: Path, *, identity: str | None = None,
               connect_timeout_s: float = 3.0) -> Path:
    """A device file for an sshd on loopback as an SSH board whose cache directory is ``board_cache``."""
    known_hosts = peer.write_known_hosts(directory / f"{name}.known_hosts")
    ssh_config = directory / "empty_ssh_config"
    ssh_config.write_text("")
    path = directory / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""\
        kind = "ssh"
        name = "{name}"
        host = "{peer.host}"
        port = {peer.port}
        user = "{peer.user}"
        key_file = "{peer.client_key}"
        known_hosts = "{known_hosts}"
        ssh_config = "{ssh_config}"
        connect_timeout_s = {connect_timeout_s}
        python = "{sys.executable}"
        cache_dir = "{board_cache}"
        """) + (f'identity = "{identity}"\n' if identity else ""))
    return path


def phone_file(directory: Path, port: int, binary: Path, name: str = "phone") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""\
        kind = "adb"
        host = "127.0.0.1"
        port = {port}
        key_file = "{directory / 'adbkey'}"
        connect_timeout_s = 3
        auth_timeout_s = 3
        benchmark_model = "{binary}"
        """))
    return path


class AgentWatch:
    """Samples the agent processes under ``marker`` every 20 ms while a run goes on: the most that were alive at
    once, and every PID seen."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.most_at_once = 0
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            alive = agents(self.marker)
            self.seen.update(alive)
            self.most_at_once = max(self.most_at_once, len(alive))
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --- SSH: sshd killed mid-run, then started again ------------------------------------------------------------------


@pytest.mark.slow
def test_sshd_killed_mid_measurement_then_restarted(restartable_sshd: RestartableSshd, cache: Path,
                                                     tmp_path: Path) -> None:
    marker = f"board-{uuid.uuid4().hex}"
    board_cache = tmp_path / marker
    device = board_file(tmp_path, restartable_sshd.peer, "flaky-board", board_cache)
    db = tmp_path / "results.db"
    # Two measurements of at least 8 s each; the second is cut by the crash. Backoff 0.5, 1, 2, 2 s: the board is
    # back after about 1 s, well within the retries.
    proc = start("run", *TFLITE, "--quant", "fp32", "--device", device, "--repeats", "2", "--db", db, "--json",
                 *flags(min_s=8, retries=4, backoff_s=0.5, backoff_max_s=2), cache_dir=cache)
    watch = AgentWatch(marker)
    try:
        first = wait_for("the first measurement to be stored", lambda: records(db))
        orphan = wait_for("the second measurement's agent", lambda: agents(marker))
        time.sleep(1.0)
        killed = restartable_sshd.crash()
        assert killed, "sshd was running"
        assert all(Path(f"/proc/{pid}").exists() for pid in orphan), "the agent outlives its sshd session"
        time.sleep(1.0)
        restartable_sshd.start()
        done = finish(proc)
    finally:
        watch.stop()
        if proc.poll() is None:
            proc.kill()
    assert done.returncode == 0, describe(done)
    summary = summary_of(done)
    assert (summary["ok"], summary["failed"], summary["not_run"], summary["planned"]) == (2, 0, 0, 2), summary
    assert summary["retried"] >= 1 and summary["devices"]["flaky-board"]["health"] == "healthy"
    assert summary["devices"]["flaky-board"]["connects"] >= 2

    stored = sorted(records(db), key=lambda r: r.id)
    assert stored[0].id == first[0].id and stored[0].status == "ok", "the measurement finished before is kept"
    retried = [r for r in stored if r.status == "failed"]
    assert retried and all(r.transient and "retried" in r.flags for r in retried)
    assert "connection" in (retried[0].error_message or ""), retried[0].error_message
    assert [r.plan_index for r in stored if r.status == "ok"] == [0, 1]
    assert stored[-1].context["attempt"] == len(retried) + 1
    # The agent orphaned by the crash was killed when farmbench reconnected, before the retry started: never two
    # agents at once on the board, and nothing left afterwards.
    assert watch.most_at_once == 1, f"{len(watch.seen)} agents seen, {watch.most_at_once} at once"
    assert not any(Path(f"/proc/{pid}").exists() for pid in orphan)
    assert leftovers(marker) == []
    assert partial_files(board_cache) == []
    assert run_status(db) == "finished"


@pytest.mark.slow
def test_board_gone_for_good_is_unhealthy_and_the_rest_not_run(restartable_sshd: RestartableSshd, cache: Path,
                                                              tmp_path: Path) -> None:
    marker = f"board-{uuid.uuid4().hex}"
    device = board_file(tmp_path, restartable_sshd.peer, "doomed-board", tmp_path / marker)
    db = tmp_path / "results.db"
    # 4 measurements on each device; the board dies after its first. With 1 retry and unhealthy_after 2, its
    # second and third fail twice each, and its fourth is not run. This machine goes on.
    proc = start("run", *TFLITE, "--quant", "fp32,int8", "--device", device, "--device", "local", "--repeats", "2",
                 "--db", db, "--json", *flags(retries=1, unhealthy_after=2), cache_dir=cache)
    try:
        wait_for("the board's first measurement", lambda: [r for r in records(db) if r.status == "ok"
                                                             and r.context.get("hostname") is not None
                                                             and r.device_id == _device_id(db, "doomed-board")])
        restartable_sshd.crash()
        done = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert done.returncode == 1, describe(done)
    summary = summary_of(done)
    board = summary["devices"]["doomed-board"]
    assert board["health"] == "unhealthy" and "2 measurements in a row" in board["reason"], board
    assert (board["ok"], board["failed"], board["not_run"], board["retried"]) == (1, 2, 1, 2), board
    assert summary["devices"]["local"]["health"] == "healthy" and summary["devices"]["local"]["ok"] == 4
    assert (summary["ok"], summary["failed"], summary["not_run"], summary["planned"]) == (5, 2, 1, 8), summary
    (not_run,) = summary["not_run_items"]
    assert not_run["device"] == "doomed-board" and "unhealthy" in not_run["reason"]
    assert f"--resume {summary['run_id']}" in not_run["reason"]
    assert summary["counts"] == {"ok": 5, "failed": 2, "skipped": 0, "not_run": 1}

    board_records = [r for r in records(db) if r.device_id == _device_id(db, "doomed-board")]
    assert [r.status for r in board_records] == ["ok", "failed", "failed", "failed", "failed", "skipped"]
    assert [bool(r.transient) for r in board_records] == [False, True, True, True, True, True]
    assert board_records[-1].error_class == "device_unhealthy"
    # A resume runs only what is not finished: the failed and not-run board measurements, not the ok ones.
    with ResultStore(db, create=False) as store:
        assert len(store.done_plan_indices(summary["run_id"])) == 5
    assert leftovers(marker) == []
    assert run_status(db) == "finished"


def _device_id(db: Path, name: str) -> int | None:
    if not db.exists():
        return None
    with ResultStore(db, create=False) as store:
        return next((d.id for d in store.devices() if d.name == name), None)


# --- ADB: the connection dropped mid-push and mid-benchmark ------------------------------------------------------


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    return install_benchmark_model(tmp_path / "tools" / "benchmark_model")


def _phone_clean(emulator: Any) -> None:
    """Nothing running, no partial uploads, no PID files of farmbench's commands left on the emulated phone."""
    assert emulator.leftover_processes() == []
    root = emulator.sandbox / "data/local/tmp/farmbench"
    assert partial_files(root) == []
    pids = root / "pids"
    assert not pids.exists() or list(pids.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["drop-mid-transfer", "drop-mid-shell"])
def test_adb_connection_dropped_is_retried(fault: str, adb_emulator: Any, cache: Path, binary: Path,
                                           tmp_path: Path) -> None:
    # Mid-push: after 300 KB of the first model. Mid-benchmark: 1 s into the first benchmark_model (which runs for
    # at least 3 s). Once each; the retry reconnects and measures.
    emulator = adb_emulator(auth="accept-new", fault=fault, fault_times=1, fault_bytes=300_000,
                            fault_match="--graph=", fault_delay_s=1.0)
    device = phone_file(tmp_path, emulator.port, binary)
    db = tmp_path / "results.db"
    done = cli("run", *TFLITE, "--quant", "fp32,int8", "--device", device, "--repeats", "1", "--db", db, "--json",
               *flags(min_s=3), cache_dir=cache)
    assert done.returncode == 0, describe(done)
    assert emulator.faults_fired == 1
    summary = summary_of(done)
    assert (summary["ok"], summary["failed"], summary["retried"]) == (2, 0, 1), summary
    stored = sorted(records(db), key=lambda r: r.id)
    assert [r.status for r in stored] == ["failed", "ok", "ok"]
    failed = stored[0]
    assert failed.transient and "retried" in failed.flags and failed.error_class == "TransportError"
    assert stored[1].plan_index == failed.plan_index and stored[1].context["attempt"] == 2
    _phone_clean(emulator)


@pytest.mark.slow
def test_phone_that_disappears_for_good(adb_emulator: Any, cache: Path, binary: Path, tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept-new")
    device = phone_file(tmp_path, emulator.port, binary)
    db = tmp_path / "results.db"
    proc = start("run", *TFLITE, "--quant", "fp32,int8", "--device", device, "--repeats", "2", "--db", db, "--json",
                 *flags(min_s=2, retries=1, unhealthy_after=1), cache_dir=cache)
    try:
        wait_for("the first measurement", lambda: [r for r in records(db) if r.status == "ok"])
        emulator.stop()
        done = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert done.returncode == 1, describe(done)
    summary = summary_of(done)
    phone = summary["devices"]["phone"]
    assert phone["health"] == "unhealthy" and phone["ok"] >= 1
    assert phone["ok"] + phone["failed"] + phone["not_run"] == 4 and phone["failed"] == 1, phone
    assert summary["not_run"] == phone["not_run"] >= 1
    assert all(item["device"] == "phone" for item in summary["not_run_items"])
    ok = [r for r in records(db) if r.status == "ok"]
    assert len(ok) == phone["ok"] == summary["ok"]
    assert emulator.leftover_processes() == []


# --- a full disk ----------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 4 MiB tmpfs: room for the agent and an int8 model (1.9 MB), not the fp32 one (6.7 MB)."""
    if os.geteuid() != 0:
        message = "mounting a small tmpfs needs root"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI runs the suite as root")
        pytest.skip(message)
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_full_disk_on_a_board_fails_those_measurements_for_good(sshd: SshdPeer, small_disk: Path, cache: Path,
                                                                 tmp_path: Path) -> None:
    device = board_file(tmp_path, sshd, "small-board", small_disk / "farmbench")
    db = tmp_path / "results.db"
    done = cli("run", *TFLITE, "--quant", "fp32,int8", "--device", device, "--repeats", "2", "--db", db, "--json",
               *flags(), cache_dir=cache)
    assert done.returncode == 1, describe(done)
    summary = summary_of(done)
    assert (summary["ok"], summary["failed"], summary["retried"]) == (2, 2, 0), summary
    assert summary["devices"]["small-board"]["health"] == "healthy"  # a full disk says nothing of the link
    by_name = names(db)
    for record in records(db):
        if by_name[record.artifact_key] == FP32_TFLITE:
            assert record.status == "failed" and record.error_class == "DiskFullError" and not record.transient
            assert "no room for model.tflite (6.4 MiB)" in record.error_message and "MiB free" in record.error_message
            assert "free space on the device" in record.error_message  # the hint: what to do
        else:
            assert record.status == "ok"
    assert partial_files(small_disk) == []


@pytest.mark.slow
def test_full_disk_on_a_phone(adb_emulator: Any, cache: Path, binary: Path, tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept-new", fault="disk-full", fault_bytes=4 * 2**20)
    device = phone_file(tmp_path, emulator.port, binary)
    db = tmp_path / "results.db"
    done = cli("run", *TFLITE, "--quant", "fp32,int8", "--device", device, "--repeats", "1", "--db", db, "--json",
               *flags(), cache_dir=cache)
    assert done.returncode == 1, describe(done)
    summary = summary_of(done)
    assert (summary["ok"], summary["failed"], summary["retried"]) == (1, 1, 0), summary
    (failed,) = [r for r in records(db) if r.status == "failed"]
    assert names(db)[failed.artifact_key] == FP32_TFLITE and failed.error_class == "DiskFullError"
    assert "No space left on device" in failed.error_message or "no room" in failed.error_message
    _phone_clean(emulator)


# --- a corrupt model file -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_corrupt_model_files(sshd: SshdPeer, cache: Path, tmp_path: Path) -> None:
    """A cache file that no longer matches its manifest fails its measurements for good (never pushed or retried);
    a corrupt copy on the board is replaced by the right bytes."""
    marker = f"board-{uuid.uuid4().hex}"
    board_cache = tmp_path / marker
    device = board_file(tmp_path, sshd, "board", board_cache)
    db = tmp_path / "results.db"
    first = cli("run", *TFLITE, "--quant", "int8", "--device", device, "--repeats", "1", "--db", db, *flags(),
                cache_dir=cache)
    assert first.returncode == 0, describe(first)
    # The board's copy of the int8 model is overwritten with garbage of the same size...
    (on_board,) = [p for p in board_cache.rglob("model.tflite")]
    on_board.write_bytes(os.urandom(on_board.stat().st_size))
    # ...and the host's fp32 model in the artifact cache has a flipped byte.
    manifests = {json.loads(p.read_text())["name"]: p.parent for p in cache.glob("artifacts/*/manifest.json")}
    host_model = manifests[FP32_TFLITE] / "model.tflite"
    data = bytearray(host_model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    host_model.write_bytes(bytes(data))

    second = cli("run", *TFLITE, "--quant", "fp32,int8", "--device", device, "--repeats", "1", "--db", db, "--json",
                 *flags(), cache_dir=cache)
    assert second.returncode == 1, describe(second)
    summary = summary_of(second)
    assert (summary["ok"], summary["failed"], summary["retried"]) == (1, 1, 0), summary
    by_name = names(db)
    latest = [r for r in records(db) if r.run_id == summary["run_id"]]
    (corrupt,) = [r for r in latest if by_name[r.artifact_key] == FP32_TFLITE]
    assert corrupt.status == "failed" and corrupt.error_class == "ArtifactCorruptedError" and not corrupt.transient
    assert "farmbench cache prune --key" in corrupt.error_message
    (replaced,) = [r for r in latest if by_name[r.artifact_key] == INT8_TFLITE]
    assert replaced.status == "ok"
    assert len(list(board_cache.rglob("model.tflite"))) == 1, "the corrupt fp32 model never went to the board"
    assert on_board.read_bytes() == (manifests[INT8_TFLITE] / "model.tflite").read_bytes()
    assert summary["devices"]["board"]["health"] == "healthy"


# --- SIGKILL, then resume ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_then_resume_completes_the_plan(cache: Path, tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    proc = start("run", *GRID_FLAGS, "--quant", "fp32,int8", "--format", "tflite,onnx", "--device", "local",
                 "--repeats", "2", "--db", db, *flags(min_s=0.5), cache_dir=cache)
    try:
        wait_for("three stored measurements", lambda: len(records(db)) >= 3, poll_s=0.05)
    finally:
        proc.kill()  # SIGKILL: no handler runs
        proc.wait()
    before = sorted(records(db), key=lambda r: r.id)
    assert before and all(r.status == "ok" for r in before)
    assert run_status(db) == "running"  # killed: nobody marked it
    with ResultStore(db, create=False) as store:
        run_id = store.runs()[0].id

    conflicting = cli("run", "--resume", run_id, "--threads", "2", "--db", db, cache_dir=cache)
    assert conflicting.returncode == 2, describe(conflicting)
    assert "--threads would change them" in conflicting.stderr

    resumed = cli("run", "--resume", run_id, "--db", db, "--json", cache_dir=cache)
    assert resumed.returncode == 0, describe(resumed)
    summary = summary_of(resumed)
    assert summary["resumed"] and summary["already_done"] == len(before)
    assert (summary["ok"], summary["planned"], summary["failed"], summary["not_run"]) == (8, 8, 0, 0)
    after = sorted(records(db), key=lambda r: r.id)
    assert [r.id for r in after[:len(before)]] == [r.id for r in before], "nothing finished is lost or redone"
    assert sorted(r.plan_index for r in after) == list(range(8)), "each plan position measured exactly once"
    assert all(r.status == "ok" and r.config["min_s"] == 0.5 for r in after), "the stored settings are used"
    assert run_status(db) == "finished"


def test_resume_refuses_flags_and_unknown_runs(tmp_path: Path, empty_cache: Path) -> None:
    db = tmp_path / "results.db"
    refused = cli("run", "--resume", "r1", "--family", "mobilenet_v1", "--runs", "3", "--db", db,
                  cache_dir=empty_cache, timeout_s=120)
    assert refused.returncode == 2, describe(refused)
    assert "--family, --runs would change them" in refused.stderr and "hint:" in refused.stderr
    missing_db = cli("run", "--resume", "r1", "--db", db, cache_dir=empty_cache, timeout_s=120)
    assert missing_db.returncode == 2 and "no results database" in missing_db.stderr, describe(missing_db)
    ResultStore(db).close()
    unknown = cli("run", "--resume", "r-nope", "--db", db, cache_dir=empty_cache, timeout_s=120)
    assert unknown.returncode == 2 and "no run 'r-nope'" in unknown.stderr, describe(unknown)


# --- SIGINT and SIGTERM ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigint_ends_the_measurement_on_the_board_and_exits_130(sshd: SshdPeer, cache: Path, tmp_path: Path) -> None:
    marker = f"board-{uuid.uuid4().hex}"
    board_cache = tmp_path / marker
    device = board_file(tmp_path, sshd, "board", board_cache)
    db = tmp_path / "results.db"
    proc = start("run", *TFLITE, "--quant", "fp32", "--device", device, "--repeats", "3", "--db", db, "--json",
                 *flags(min_s=30), cache_dir=cache)
    try:
        wait_for("the agent on the board", lambda: agents(marker))
        time.sleep(0.5)
        done, seconds = signal_and_finish(proc, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert done.returncode == 130, describe(done)
    assert seconds < 10, seconds
    summary = summary_of(done)
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
    assert (summary["ok"], summary["failed"], summary["not_run"]) == (0, 0, 3), summary
    assert all("--resume" in item["reason"] for item in summary["not_run_items"])
    assert summary["devices"]["board"]["health"] == "interrupted"
    assert records(db) == [], "a measurement cut short is not a result"
    assert run_status(db) == "interrupted"
    assert leftovers(marker) == [], "the agent and its wrapper are killed on the board"
    assert partial_files(board_cache) == []


@pytest.mark.slow
def test_sigterm_on_a_phone_kills_the_benchmark_there(adb_emulator: Any, cache: Path, binary: Path,
                                                      tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept-new")
    device = phone_file(tmp_path, emulator.port, binary)
    db = tmp_path / "results.db"
    proc = start("run", *TFLITE, "--quant", "fp32,int8", "--device", device, "--repeats", "1", "--db", db,
                 *flags(min_s=30), cache_dir=cache)
    try:
        wait_for("benchmark_model on the phone", lambda: [p for p in emulator.leftover_processes() if "--graph=" in p])
        done, seconds = signal_and_finish(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert done.returncode == 130, describe(done)
    assert seconds < 15, seconds
    assert "interrupted (SIGTERM)" in done.stderr and "--resume" in done.stderr, describe(done)
    assert records(db) == [] and run_status(db) == "interrupted"
    _phone_clean(emulator)


@pytest.mark.slow
def test_second_sigint_stops_waiting_for_a_wedged_board(restartable_sshd: RestartableSshd, cache: Path,
                                                        tmp_path: Path) -> None:
    """The board's sshd freezes (SIGSTOP): the first Ctrl-C cannot reach it to kill the agent, and would wait for
    the connection timeout; the second stops waiting at once and still marks the run interrupted."""
    marker = f"board-{uuid.uuid4().hex}"
    device = board_file(tmp_path, restartable_sshd.peer, "wedged-board", tmp_path / marker, connect_timeout_s=20)
    db = tmp_path / "results.db"
    proc = start("run", *TFLITE, "--quant", "fp32", "--device", device, "--repeats", "2", "--db", db,
                 *flags(min_s=30), cache_dir=cache)
    frozen: list[int] = []
    try:
        wait_for("the agent on the board", lambda: agents(marker))
        assert restartable_sshd.process is not None
        frozen = [restartable_sshd.process.pid, *[pid for pid in _descendants(restartable_sshd.process.pid)
                                                  if _comm(pid).startswith("sshd")]]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None, "the first Ctrl-C waits for the board"
        done, seconds = signal_and_finish(proc, signal.SIGINT)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    assert done.returncode == 130, describe(done)
    assert seconds < 5, seconds
    assert run_status(db) == "interrupted"
    assert records(db) == []
