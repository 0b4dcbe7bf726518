"""The results store: roundtrips, durability under SIGKILL, concurrent writers, migrations, secrets, frames, exports,
and what a resume needs."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from farmbench.errors import EXIT_USAGE, RunNotFoundError, StoreError, TransportError, UsageError
from farmbench.results import (
    FRAME_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    MeasurementRecord,
    ResultStore,
    default_db_path,
    scrub,
    summarize,
    summarize_aggregates,
)
from farmbench.results import store as store_module
from farmbench.results.scrub import REDACTED

V1_SCHEMA = REPO / "tests" / "data" / "results_schema_v1.sql"
SPEC = {"family": "mobilenet_v2", "width": 0.5, "resolution": 128, "minimalistic": False,
        "weights": {"kind": "random", "seed": 0}, "quant": "int8", "format": "tflite"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with ResultStore(tmp_path / "results.db") as opened:
        yield opened


def _run(store: ResultStore, plan_size: int = 4, **kwargs: Any) -> str:
    return store.start_run(sweep_name="smoke", sweep={"variants": {"quant": ["int8"]}},
                           plan=[{"variant": "v", "repeat": i} for i in range(plan_size)],
                           command=["farmbench", "run", "--device", "local"], seed=1, **kwargs)


def _setup(store: ResultStore) -> tuple[str, int]:
    """A run, a device and an artifact: what every measurement refers to."""
    run_id = _run(store)
    device_id = store.upsert_device("local:host-a", "local", "local", {"os": "Linux 6.1", "cores": 4})
    store.put_artifact("key-int8", "mobilenet_v2_a0.5_r128_int8.tflite", "tflite", "ab" * 32, {"spec": SPEC})
    return run_id, device_id


def _record(run_id: str, device_id: int, plan_index: int | None = 0, **kwargs: Any) -> MeasurementRecord:
    values: dict[str, Any] = {
        "run_id": run_id, "device_id": device_id, "artifact_key": "key-int8", "runtime": "litert",
        "runtime_version": "2.3.0", "status": "ok", "plan_index": plan_index,
        "config": {"threads": 2, "xnnpack": True, "warmup_runs": 5, "runs": 50},
        "samples_us": [1000.0 + 3 * i for i in range(50)], "init_ms": 12.5, "first_inference_ms": 3.25,
        "peak_rss_mb": 81.0, "context": {"os_build": "6.1.0", "temp_c_before": 41.0}, "flags": [],
    }
    values.update(kwargs)
    return MeasurementRecord(**values)


# -- roundtrip -----------------------------------------------------------------------------------------------------

def test_measurement_roundtrip(store: ResultStore) -> None:
    run_id, device_id = _setup(store)
    # Values that only survive if stored as float64 bytes, not text.
    samples_us = (np.random.default_rng(0).normal(1000.0, 40.0, size=200)).tolist()
    written = _record(run_id, device_id, samples_us=samples_us, flags=["xnnpack_not_used_int8"], repeat=2,
                      artifact_sha256="ab" * 32)
    measurement_id = store.add_measurement(written)
    [read] = store.measurements()
    assert read.id == measurement_id
    assert read.samples_us == samples_us
    assert read.latency == summarize(samples_us)  # computed on write, from the raw samples
    expected = {**written.to_json(), "id": measurement_id, "latency": read.latency.to_json() if read.latency else None,
                "started_at": read.started_at, "finished_at": read.finished_at}
    assert read.to_json() == expected
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", read.started_at or "")

    [run] = store.runs()
    assert (run.id, run.status, run.sweep_name, run.seed, run.finished_at) == (run_id, "running", "smoke", 1, None)
    assert re.fullmatch(r"r\d{8}-\d{6}-[0-9a-f]{4}", run.id)
    assert run.plan[3] == {"variant": "v", "repeat": 3}
    assert run.command == ["farmbench", "run", "--device", "local"]
    assert len(run.sweep_sha256) == 64 and run.sweep == {"variants": {"quant": ["int8"]}}
    store.finish_run(run_id, "interrupted")
    assert store.run(run_id).status == "interrupted" and store.run(run_id).finished_at is not None


def test_telemetry_roundtrip_and_frame_columns(store: ResultStore) -> None:
    run_id, device_id = _setup(store)
    power_samples = [(1000.0 + 0.1 * i, 2500.0 + (i % 3) * 0.125) for i in range(40)]
    written = _record(run_id, device_id, power_samples=power_samples,
                      power={"source": "android-battery", "avg_power_mw": 2510.5, "energy_per_inference_mj": 12.25,
                             "energy_above_idle_mj": 4.5},
                      thermal={"max_temp_before_c": 38.5, "max_temp_after_c": 44.0, "zones": {"cpu": [38.5, 44.0]}},
                      drift={"top1_agreement": 0.875, "top5_overlap": 0.9, "kl_mean": 0.0125, "cosine_mean": 0.99,
                             "max_abs_error": 0.25, "reference": "fp32"})
    store.add_measurement(written)
    [read] = store.measurements()
    assert read.power_samples == power_samples  # exact: float64 bytes
    assert (read.power, read.thermal, read.drift) == (written.power, written.thermal, written.drift)
    row = store.frame().iloc[0]
    assert (row["energy_per_inference_mj"], row["max_temp_after_c"], row["top1_agreement"]) == (12.25, 44.0, 0.875)
    # Reading without samples leaves the raw power samples out too.
    assert store._select_measurements(None, with_samples=False)[0].power_samples is None


def test_failed_and_aggregate_only_records(store: ResultStore) -> None:
    run_id, device_id = _setup(store)
    failed = _record(run_id, device_id, samples_us=None).with_error(TransportError("connection reset by pi5"))
    assert failed.status == "failed" and failed.transient and failed.error_class == "TransportError"
    aggregate = summarize_aggregates(count=50, mean_us=2000.0, std_us=50.0, min_us=1900.0, max_us=2300.0,
                                     median_us=1990.0)
    store.add_measurement(failed)
    store.add_measurement(_record(run_id, device_id, plan_index=1, samples_us=None, latency=aggregate,
                                  runtime="benchmark_model"))
    first, second = store.measurements()
    assert first.samples_us is None and first.latency is None and first.error_message == "connection reset by pi5"
    assert second.samples_us is None and second.latency == aggregate
    assert second.all_flags() == ["aggregate_only"]


def test_unknown_run_is_a_usage_error(store: ResultStore) -> None:
    with pytest.raises(RunNotFoundError) as caught:
        store.run("r20000101-000000-0000")
    assert caught.value.exit_code == EXIT_USAGE and "r20000101-000000-0000" in str(caught.value)
    for call in (lambda: store.finish_run("nope"), lambda: store.frame(["nope"]), lambda: store.done_plan_indices("x")):
        with pytest.raises(RunNotFoundError):
            call()


def test_resume_reopens_a_run(store: ResultStore) -> None:
    run_id, _ = _setup(store)
    store.finish_run(run_id, "interrupted")
    resumed = store.resume_run(run_id)
    assert resumed.status == "running" and resumed.finished_at is None and len(resumed.plan) == 4


# -- durability and concurrency --------------------------------------------------------------------------------------

WRITER = """
import sys
from farmbench.results import ResultStore, MeasurementRecord

db, label, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = ResultStore(db)
run_id = store.start_run(sweep_name=label, sweep={}, plan=[], command=[label])
device_id = store.upsert_device("dev-" + label, label, "local", {})
store.put_artifact("key", "model.tflite", "tflite", "00" * 32, {})
print("ready", run_id, flush=True)
sys.stdin.readline()  # wait for "go", so concurrent writers really overlap
i = 0
while count == 0 or i < count:
    record = MeasurementRecord(run_id=run_id, device_id=device_id, artifact_key="key", runtime="local",
                               status="ok", plan_index=i, samples_us=[float(i + k) for k in range(1, 31)])
    print(store.add_measurement(record), flush=True)
    i += 1
"""


def _start_writer(tmp_path: Path, db: Path, label: str, count: int) -> tuple[subprocess.Popen[str], str]:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    # PYTHONPATH: the writer imports this checkout's farmbench, not whichever one is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, str(script), str(db), label, str(count)], cwd=REPO, text=True, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line[:1] == ["ready"], proc.stderr.read() if proc.stderr else ""
    return proc, line[1]


def test_sigkill_loses_no_finished_measurement(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    proc, run_id = _start_writer(tmp_path, db, "killed", 0)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    acknowledged = [int(proc.stdout.readline()) for _ in range(25)]
    # Killed while it keeps writing: the next measurement may be half done, the 25 returned ones must be there.
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    with ResultStore(db) as reopened:
        records = {r.id: r for r in reopened.measurements([run_id])}
        assert set(acknowledged) <= set(records)
        assert len(records) in (25, 26)
        for record in records.values():
            assert record.samples_us is not None and len(record.samples_us) == 30
        assert set(range(25)) <= reopened.done_plan_indices(run_id)
        assert reopened.run(run_id).status == "running"  # what a resume after a SIGKILL finds


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    ResultStore(db).close()  # create and migrate once, so both writers start from the same schema
    writers = [_start_writer(tmp_path, db, label, 60) for label in ("a", "b")]
    for proc, _ in writers:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc, _ in writers:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    with ResultStore(db) as reopened:
        for _, run_id in writers:
            records = reopened.measurements([run_id])
            assert sorted(r.plan_index for r in records if r.plan_index is not None) == list(range(60))
        frame = reopened.frame()
        assert len(frame) == 120
        # Each run's measurements stay on its own device.
        assert frame.groupby("run_id")["device_identity"].nunique().tolist() == [1, 1]


def test_busy_timeout_waits_for_another_writer(store: ResultStore) -> None:
    run_id, device_id = _setup(store)
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    releaser = threading.Timer(1.0, lambda: other.execute("COMMIT"))
    releaser.start()
    started = time.monotonic()
    store.add_measurement(_record(run_id, device_id))
    waited_s = time.monotonic() - started
    releaser.join()
    other.close()
    assert waited_s >= 0.9
    assert len(store.measurements()) == 1


def test_lock_held_past_the_busy_timeout_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.2)
    db = tmp_path / "results.db"
    with ResultStore(db) as opened:
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match=str(db)):
            _run(opened)
        other.execute("ROLLBACK")
        other.close()
        assert opened.runs() == []


def test_threads_share_one_store(store: ResultStore) -> None:
    run_id, device_id = _setup(store)

    def write(offset: int) -> None:
        for i in range(20):
            store.add_measurement(_record(run_id, device_id, plan_index=offset + i, samples_us=[1.0, 2.0, 3.0]))

    threads = [threading.Thread(target=write, args=(100 * t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.done_plan_indices(run_id)) == 80


# -- schema versions -----------------------------------------------------------------------------------------------

def _schema(conn: sqlite3.Connection) -> dict[str, str]:
    rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    return {name: " ".join(sql.split()) for name, sql in rows}


def test_step_one_still_produces_the_released_v1_schema() -> None:
    released = sqlite3.connect(":memory:")
    released.executescript(V1_SCHEMA.read_text())
    fresh = sqlite3.connect(":memory:")
    MIGRATIONS[0](fresh)
    assert _schema(fresh) == _schema(released), "migration steps are frozen: add a new step instead"


def test_v1_database_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript(V1_SCHEMA.read_text())
    samples = np.array([900.0, 1000.0, 1100.0], dtype="<f8").tobytes()
    old.executescript(f"""
        INSERT INTO runs VALUES ('r20260101-000000-aaaa', '2026-01-01T00:00:00.000Z', NULL, 'interrupted', 'abc123',
            'nightly', '{"0" * 64}', '{{}}', 'ci-host', '0.1.0', '[{{"i": 0}}, {{"i": 1}}]', 7, '["farmbench", "run"]');
        INSERT INTO devices VALUES (1, 'serial:R58M', 'pixel', 'adb', '{{}}', '2026-01-01T00:00:00.000Z',
            '2026-01-01T00:00:00.000Z');
        INSERT INTO artifacts VALUES ('k', 'm.tflite', 'tflite', NULL, '{{"spec": {{"family": "mobilenet_v1"}}}}');
    """)
    old.execute("INSERT INTO measurements (run_id, device_id, artifact_key, plan_index, runtime, config_json, status,"
                " samples, samples_format, aggregates_json, context_json, flags_json, started_at, finished_at)"
                " VALUES ('r20260101-000000-aaaa', 1, 'k', 0, 'litert', '{\"threads\": 4}', 'ok', ?, 'f64le',"
                " '{}', '{}', '[]', '2026-01-01T00:00:01.000Z', '2026-01-01T00:00:02.000Z')", (samples,))
    old.commit()
    old.close()

    with ResultStore(db) as migrated:
        assert migrated.schema_version() == SCHEMA_VERSION == 5
        conn = sqlite3.connect(db)
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert conn.execute("SELECT count(*) FROM outputs").fetchone() == (0,)
        conn.close()
        assert {"measurements_by_run_plan", "measurements_by_device_artifact", "runs_by_sweep"} <= indexes
        [record] = migrated.measurements()
        assert record.samples_us == [900.0, 1000.0, 1100.0] and record.config == {"threads": 4}
        assert migrated.done_plan_indices("r20260101-000000-aaaa") == {0}
        row = migrated.frame().iloc[0]
        assert (row["family"], row["threads"], row["device_identity"]) == ("mobilenet_v1", 4, "serial:R58M")
        # v3: an old measurement has no telemetry, which reads as None, not as zeros.
        assert record.power is None and record.thermal is None and record.drift is None
        assert record.power_samples is None and pd.isna(row["energy_per_inference_mj"])
        # v5: no baselines yet, and one can be set on the migrated run.
        assert migrated.baselines() == []
        migrated.set_baseline("nightly", "r20260101-000000-aaaa")
        assert [b.run_id for b in migrated.baselines()] == ["r20260101-000000-aaaa"]

    # A migrated database and a new one have the same schema.
    fresh_db = tmp_path / "fresh.db"
    ResultStore(fresh_db).close()
    a, b = sqlite3.connect(db), sqlite3.connect(fresh_db)
    assert _schema(a) == _schema(b)
    a.close()
    b.close()


def test_a_failing_step_leaves_the_database_at_the_previous_version(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "results.db"
    ResultStore(db).close()

    def broken_step(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("step crashed half way")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, broken_step])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="half way"):
        ResultStore(db)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "half_done" not in _schema(conn)
    conn.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    ResultStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError) as caught:
        ResultStore(db)
    message = str(caught.value)
    assert str(db) in message and str(SCHEMA_VERSION + 1) in message and str(SCHEMA_VERSION) in message
    assert "upgrade farmbench" in message


def test_not_a_database_and_missing_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="junk.db"):
        ResultStore(junk)
    with pytest.raises(StoreError, match="no results database"):
        ResultStore(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_default_db_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FARMBENCH_DB", str(tmp_path / "explicit.db"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "explicit.db"
    monkeypatch.delenv("FARMBENCH_DB")
    assert default_db_path() == tmp_path / "xdg" / "farmbench" / "results.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / ".local" / "share" / "farmbench" / "results.db"


# -- secrets ---------------------------------------------------------------------------------------------------------

PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----\n"


def test_scrub_nested_structures() -> None:
    document: dict[str, Any] = {
        "ssh": {"host": "pi5", "Password": "hunter2", "key_passphrase": "s3cret-pass",
                "jump": [{"host": "bastion", "private-key": PEM}]},
        "power": {"meter": {"api_token": "tok-123", "rails": ["vdd_cpu"]}},
        "notes": f"pasted key: {PEM}",
        "url": "ssh://pi:pw1234@pi5.local:22",
        "argv": ["farmbench", "run", "--ssh-password", "pw5678", "--token=tok-456", "--threads", "4"],
        "adb": {"key_contents": "QAAAA..."},
        "numbers": (np.float64(1.5), np.int64(3), float("nan"), np.arange(2)),
    }
    cleaned = scrub(document)
    text = json.dumps(cleaned)
    for secret in ("hunter2", "s3cret-pass", "b3BlbnNzaC1rZXkt", "tok-123", "pw1234", "pw5678", "tok-456", "QAAAA"):
        assert secret not in text
    assert cleaned["ssh"]["host"] == "pi5" and cleaned["ssh"]["Password"] == REDACTED
    assert cleaned["ssh"]["jump"][0] == {"host": "bastion", "private-key": REDACTED}
    assert cleaned["power"]["meter"]["rails"] == ["vdd_cpu"]
    assert cleaned["url"] == f"ssh://pi:{REDACTED}@pi5.local:22"
    assert cleaned["argv"] == ["farmbench", "run", "--ssh-password", REDACTED, f"--token={REDACTED}", "--threads", "4"]
    assert cleaned["numbers"] == [1.5, 3, None, [0, 1]]
    assert document["ssh"]["Password"] == "hunter2"  # a copy: the caller's data is untouched


def test_no_secret_reaches_the_database_file(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    with ResultStore(db) as opened:
        run_id = opened.start_run(sweep_name="s", sweep={"devices": {"pi": {"password": "hunter2"}}}, plan=[],
                                  command=["farmbench", "run", "--device", "ssh://pi:hunter3@pi5"])
        device_id = opened.upsert_device("fp:SHA256:abc pi5", "pi5", "ssh", {"ssh": {"passphrase": "hunter4"}})
        opened.put_artifact("k", "m.tflite", "tflite", None, {"signing_secret": "hunter5"})
        opened.add_measurement(MeasurementRecord(
            run_id=run_id, device_id=device_id, artifact_key="k", runtime="litert", status="ok",
            config={"auth_token": "hunter6"}, context={"env": {"HF_TOKEN": "hunter7"}, "key": PEM},
            samples_us=[1.0, 2.0]))
        for out in ("csv", "json", "parquet"):
            opened.export(tmp_path / f"out.{out}", out)
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    for secret in (b"hunter2", b"hunter3", b"hunter4", b"hunter5", b"hunter6", b"hunter7", b"b3BlbnNzaC1rZXkt"):
        assert secret not in stored


# -- devices, artifacts, resume ----------------------------------------------------------------------------------------

def test_device_identity_upsert_keeps_one_row(store: ResultStore) -> None:
    first = store.upsert_device("serial:R58M123", "pixel", "adb", {"battery_pct": 80})
    [before] = store.devices()
    time.sleep(0.01)
    again = store.upsert_device("serial:R58M123", "pixel-7a", "adb", {"battery_pct": 55})
    other = store.upsert_device("serial:ZY22", "moto", "adb", {})
    assert first == again != other
    devices = store.devices()
    assert len(devices) == 2
    after = devices[0]
    assert (after.identity, after.name, after.context) == ("serial:R58M123", "pixel-7a", {"battery_pct": 55})
    assert after.first_seen == before.first_seen and after.last_seen > before.last_seen
    with pytest.raises(ValueError):
        store.upsert_device("x", "x", "telnet", {})


def test_artifact_placeholder_never_replaces_a_built_one(store: ResultStore) -> None:
    store.put_artifact("k", "m.tflite", "tflite", None, {"spec": {"format": "tflite"}})
    store.put_artifact("k", "m.tflite", "tflite", "11" * 32, {"spec": SPEC})
    store.put_artifact("k", "m.tflite", "tflite", None, {})
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT sha256, manifest_json FROM artifacts").fetchall() == [
        ("11" * 32, json.dumps({"spec": SPEC}, sort_keys=True, separators=(",", ":")))]
    conn.close()


def test_done_plan_indices(store: ResultStore) -> None:
    run_id, device_id = _setup(store)
    other_run = _run(store)
    store.add_measurement(_record(run_id, device_id, plan_index=0))  # ok
    store.add_measurement(_record(run_id, device_id, plan_index=1, samples_us=None).with_error(
        UsageError("model uses an op this runtime lacks")))  # permanent: not retried
    store.add_measurement(_record(run_id, device_id, plan_index=2, samples_us=None).with_error(
        TransportError("device offline")))  # transient: a resume retries it
    store.add_measurement(_record(run_id, device_id, plan_index=3, samples_us=None, status="skipped",
                                  error_message="device marked unhealthy", transient=True))
    store.add_measurement(_record(other_run, device_id, plan_index=2))
    store.add_measurement(_record(run_id, device_id, plan_index=None))  # not part of the plan
    assert store.done_plan_indices(run_id) == {0, 1}
    # The retry of plan entry 2 is a new record; the failed one stays.
    store.add_measurement(_record(run_id, device_id, plan_index=2))
    assert store.done_plan_indices(run_id) == {0, 1, 2}
    assert [r.status for r in store.measurements([run_id]) if r.plan_index == 2] == ["failed", "ok"]


# -- frame and export ------------------------------------------------------------------------------------------------

def _populated(store: ResultStore) -> list[str]:
    run_id, device_id = _setup(store)
    store.put_artifact("key-user", "detector.onnx", "onnx", "cd" * 32,
                       {"spec": {"source": "file", "format": "onnx", "name": "detector"}})
    store.add_measurement(_record(run_id, device_id, flags=["throttled"],
                                  samples_us=[1000.0, 1400.0] * 10))  # cv ~ 0.17 -> high_cv
    store.add_measurement(_record(run_id, device_id, plan_index=1, artifact_key="key-user", runtime="onnxruntime",
                                  config={"threads": 1, "provider": "CPUExecutionProvider"}))
    store.add_measurement(_record(run_id, device_id, plan_index=2, samples_us=None).with_error(
        TransportError("connection reset")))
    second = _run(store)
    store.add_measurement(_record(second, device_id))
    return [run_id, second]


def test_frame_columns_and_values(store: ResultStore) -> None:
    first, second = _populated(store)
    frame = store.frame()
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert len(frame) == 4 and len(store.frame([first])) == 3 and store.frame([second])["run_id"].tolist() == [second]

    ok = frame.iloc[0]
    samples = [1000.0, 1400.0] * 10
    expected = summarize(samples)
    assert (ok["run_id"], ok["device"], ok["device_identity"], ok["artifact"]) == (
        first, "local", "local:host-a", "mobilenet_v2_a0.5_r128_int8.tflite")
    assert (ok["family"], ok["width"], ok["resolution"], ok["quant"], ok["format"]) == (
        "mobilenet_v2", 0.5, 128, "int8", "tflite")
    assert (ok["runtime"], ok["runtime_version"], ok["threads"], ok["status"]) == ("litert", "2.3.0", 2, "ok")
    assert ok["p50_us"] == expected.p50_us and ok["p99_us"] == expected.p99_us and ok["cv"] == expected.cv
    assert ok["ci95_low_us"] == expected.ci95_low_us and ok["n_samples"] == 20
    assert (ok["init_ms"], ok["peak_rss_mb"], ok["first_inference_ms"]) == (12.5, 81.0, 3.25)
    assert ok["flags"] == "throttled,high_cv"

    user = frame.iloc[1]
    assert pd.isna(user["family"]) and pd.isna(user["width"]) and user["format"] == "onnx" and user["threads"] == 1

    failed = frame.iloc[2]
    assert (failed["status"], failed["error_class"], failed["error_message"]) == (
        "failed", "TransportError", "connection reset")
    assert pd.isna(failed["p50_us"]) and pd.isna(failed["n_samples"]) and bool(failed["transient"])

    with ResultStore(store.path.with_name("empty.db")) as other:
        empty = other.frame()
    assert list(empty.columns) == list(FRAME_COLUMNS) and len(empty) == 0


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_roundtrip(store: ResultStore, tmp_path: Path, fmt: str) -> None:
    first, _ = _populated(store)
    frame = store.frame([first])
    path = store.export(tmp_path / "exports" / f"results.{fmt}", fmt, run_ids=[first])
    if fmt == "csv":
        back = pd.read_csv(path, keep_default_na=False, na_values=[""])
    elif fmt == "parquet":
        back = pd.read_parquet(path)
    else:
        document = json.loads(path.read_text())
        assert [run["id"] for run in document["runs"]] == [first] and "plan" not in document["runs"][0]
        back = pd.DataFrame(document["measurements"])
        back.insert(0, "schema_version", document["schema_version"])
    assert (back["schema_version"] == SCHEMA_VERSION).all()
    back = back.drop(columns="schema_version")
    assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
    for column in frame.columns:
        for want, got in zip(frame[column], back[column], strict=True):
            if pd.isna(want) or want == "":
                assert pd.isna(got) or got == "", (column, want, got)
            elif isinstance(want, float):
                assert got == pytest.approx(want, rel=1e-14), column
            else:
                assert got == want, column
    assert not list(path.parent.glob(".*partial"))


def test_export_unknown_format_is_a_usage_error(store: ResultStore, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        store.export(tmp_path / "x.xlsx", "xlsx")
