"""`farmbench run` on an Android phone: the real CLI, over real ADB (adb-shell) to the loopback ADB device emulator,
with the user's `benchmark_model` binary pushed by hash (a stand-in that runs LiteRT for real and prints the
real tool's output format)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from farmbench.results.store import ResultStore
from tests.conftest import GRID_FLAGS, BuiltGrid, cli_command, cli_env, describe
from tests.peers.benchmark_model_standin import install as install_benchmark_model

pytestmark = pytest.mark.slow

QUICK = ("--runs", "5", "--min-s", "0", "--max-s", "30", "--warmup-runs", "1", "--warmup-min-s", "0")


def farmbench(*args: str | Path, cache_dir: Path, env: dict[str, str] | None = None,
              timeout_s: float = 300) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(cli_command(*args), env=cli_env(cache_dir, env), capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    return proc, time.monotonic() - started


def phone_file(tmp_path: Path, port: int, *, key: Path, binary: Path | None = None,
               ort_perf_test: Path | None = None, name: str = "phone") -> Path:
    """A device file for the emulated phone; ``binary`` is benchmark_model, ``ort_perf_test`` onnxruntime_perf_test."""
    lines = ['kind = "adb"', 'host = "127.0.0.1"', f"port = {port}", f'key_file = "{key}"', "connect_timeout_s = 3",
             "auth_timeout_s = 3"]
    if binary is not None:
        lines.append(f'benchmark_model = "{binary}"')
    if ort_perf_test is not None:
        lines.append(f'onnxruntime_perf_test = "{ort_perf_test}"')
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def cache(built_grid: BuiltGrid, tmp_path: Path) -> Path:
    return built_grid.copy(tmp_path / "cache")


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    """The user's benchmark_model binary on the host (farmbench pushes it to the phone)."""
    return install_benchmark_model(tmp_path / "tools" / "benchmark_model")


def records(db: Path) -> list[Any]:
    with ResultStore(db, create=False) as store:
        return store.measurements()


def test_run_on_emulated_phone(adb_emulator: Any, cache: Path, binary: Path, tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept-new")
    device = phone_file(tmp_path, emulator.port, binary=binary, key=tmp_path / "keys" / "adbkey")
    db = tmp_path / "results.db"
    proc, _ = farmbench("run", *GRID_FLAGS, "--quant", "fp32,int8", "--format", "tflite,onnx", "--device", device,
                        "--threads", "1,2", "--repeats", "1", *QUICK, "--db", db, "--json", cache_dir=cache)
    assert proc.returncode == 0, describe(proc)
    summary = json.loads(proc.stdout)
    assert (summary["ok"], summary["skipped"], summary["failed"]) == (4, 4, 0), describe(proc)
    found = records(db)
    ok = [r for r in found if r.status == "ok"]
    assert {(r.runtime, r.config["threads"]) for r in ok} == {("benchmark_model", 1), ("benchmark_model", 2)}
    for record in ok:
        assert record.latency is not None and record.latency.n == 5
        assert record.latency.p50_us is not None and record.latency.p50_us > 0
        assert "aggregate_only" in record.all_flags()
        assert record.context["abi"] == "arm64-v8a" and record.context["model"]
        assert record.context["benchmark_model"]["count"] == 5
        # No version is printed: the binary's sha256 identifies the runtime for regression checks.
        assert record.context["binary_sha256"] == hashlib.sha256(binary.read_bytes()).hexdigest()
        assert record.init_ms is not None and record.init_ms > 0
    skipped = [r for r in found if r.status == "skipped"]
    assert len(skipped) == 4 and all("onnxruntime_perf_test" in (r.error_message or "") for r in skipped)
    with ResultStore(db, create=False) as store:
        devices = store.devices()
    assert any(d.identity.startswith("adb:") and d.kind == "adb" for d in devices)
    # The binary and models went to the phone once each, by hash.
    pushed = list((emulator.sandbox / "data/local/tmp/farmbench").rglob("*"))
    assert sum(p.name == "benchmark_model" for p in pushed) == 1
    assert sum(p.suffix == ".tflite" for p in pushed) == 2


def test_unauthorized_phone_is_a_clear_failure(adb_emulator: Any, cache: Path, binary: Path, tmp_path: Path) -> None:
    emulator = adb_emulator(auth="never")
    device = phone_file(tmp_path, emulator.port, binary=binary, key=tmp_path / "keys" / "adbkey")
    db = tmp_path / "results.db"
    proc, seconds = farmbench("run", *GRID_FLAGS, "--quant", "fp32", "--format", "tflite", "--device", device,
                              "--repeats", "1", *QUICK, "--db", db, cache_dir=cache)
    assert proc.returncode == 1, describe(proc)
    failed = records(db)
    assert failed and all(r.status == "failed" for r in failed)
    assert "did not accept ADB key" in (failed[0].error_message or "")
    assert "Allow USB debugging" in (failed[0].error_message or ""), failed[0].error_message  # the hint is kept
    assert seconds < 60


def test_offline_phone_fails_within_its_timeout(cache: Path, binary: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    device = phone_file(tmp_path, port, binary=binary, key=tmp_path / "keys" / "adbkey")
    db = tmp_path / "results.db"
    proc, seconds = farmbench("run", *GRID_FLAGS, "--quant", "fp32", "--format", "tflite", "--device", device,
                              "--repeats", "1", *QUICK, "--db", db, cache_dir=cache)
    assert proc.returncode == 1, describe(proc)
    failed = records(db)
    assert failed and f"127.0.0.1:{port}" in (failed[0].error_message or "")
    assert seconds < 30


def test_op_version_mismatch_is_classified(adb_emulator: Any, cache: Path, binary: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The emulator runs phone commands with its own environment: the stand-in then fails like an old binary.
    monkeypatch.setenv("FARMBENCH_STANDIN_OP_VERSION", "1")
    emulator = adb_emulator(auth="accept-new")
    device = phone_file(tmp_path, emulator.port, binary=binary, key=tmp_path / "keys" / "adbkey")
    db = tmp_path / "results.db"
    proc, _ = farmbench("run", *GRID_FLAGS, "--quant", "fp32", "--format", "tflite", "--device", device,
                        "--repeats", "1", *QUICK, "--db", db, cache_dir=cache)
    assert proc.returncode == 1, describe(proc)
    failed = records(db)
    assert failed and failed[0].error_class == "op_version"
    assert "older than the converter" in (failed[0].error_message or "")


def test_devices_probe_describes_the_phone(adb_emulator: Any, binary: Path, tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept-new")
    device = phone_file(tmp_path, emulator.port, binary=binary, key=tmp_path / "keys" / "adbkey")
    proc = subprocess.run(cli_command("devices", "--probe", "-d", device), env=cli_env(None, None),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, describe(proc)
    for needle in ("reachable", "android", "arm64-v8a", "MHz", "battery", "benchmark_model"):
        assert needle in proc.stdout, describe(proc)


def test_partial_delegation_is_recorded_and_flagged(adb_emulator: Any, cache: Path, binary: Path,
                                                    tmp_path: Path) -> None:
    # The dynamic-range int8 model keeps hybrid ops XNNPACK does not take: benchmark_model says "partially
    # executed by the delegate w/ N delegate kernels"; the record keeps N and carries the trust flag.
    emulator = adb_emulator(auth="accept-new")
    device = phone_file(tmp_path, emulator.port, binary=binary, key=tmp_path / "keys" / "adbkey")
    db = tmp_path / "results.db"
    proc, _ = farmbench("run", *GRID_FLAGS, "--quant", "fp32,dynamic-int8", "--format", "tflite", "--device", device,
                        "--xnnpack", "on", "--repeats", "1", *QUICK, "--db", db, cache_dir=cache)
    assert proc.returncode == 0, describe(proc)
    by_quant = {r.artifact_key: r for r in records(db)}
    assert len(by_quant) == 2
    partial = [r for r in by_quant.values() if "xnnpack_partially_applied" in r.flags]
    full = [r for r in by_quant.values() if "xnnpack_partially_applied" not in r.flags]
    assert len(partial) == 1 and len(full) == 1, [(r.artifact_key, r.flags) for r in by_quant.values()]
    delegate = partial[0].context["benchmark_model"]["delegate"]
    assert delegate["name"] == "XNNPACK" and delegate["coverage"] == "partial" and delegate["kernels"] > 1
    assert full[0].context["benchmark_model"]["delegate"]["coverage"] == "full"
    assert partial[0].status == "ok" and partial[0].latency is not None  # flagged, not hidden


def test_benchmark_silent_longer_than_the_default_read_timeout_works(
        adb_emulator: Any, cache: Path, binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # adb-shell's read timeout is an inactivity limit (default 10 s in the device file). A benchmark that prints
    # nothing for longer (here: 12 s before loading the model) must still complete when timeout_s allows it.
    monkeypatch.setenv("FARMBENCH_STANDIN_SLEEP_S", "12")
    emulator = adb_emulator(auth="accept-new")
    device = phone_file(tmp_path, emulator.port, binary=binary, key=tmp_path / "keys" / "adbkey")
    db = tmp_path / "results.db"
    proc, seconds = farmbench("run", *GRID_FLAGS, "--quant", "fp32", "--format", "tflite", "--device", device,
                              "--repeats", "1", *QUICK, "--timeout-s", "60", "--db", db, cache_dir=cache)
    assert proc.returncode == 0, describe(proc)
    (record,) = records(db)
    assert record.status == "ok" and record.latency is not None
    assert seconds > 12


def test_benchmark_past_timeout_s_is_killed_and_recorded(
        adb_emulator: Any, cache: Path, binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARMBENCH_STANDIN_SLEEP_S", "30")
    emulator = adb_emulator(auth="accept-new")
    device = phone_file(tmp_path, emulator.port, binary=binary, key=tmp_path / "keys" / "adbkey")
    db = tmp_path / "results.db"
    proc, seconds = farmbench("run", *GRID_FLAGS, "--quant", "fp32", "--format", "tflite", "--device", device,
                              "--repeats", "1", *QUICK, "--timeout-s", "4", "--retries", "0", "--db", db,
                              cache_dir=cache)
    assert proc.returncode == 1, describe(proc)
    (record,) = records(db)
    assert record.status == "failed" and "did not finish within 4 s" in (record.error_message or "")
    assert seconds < 25
    # Nothing of the benchmark is left running on the "phone".
    leftover = subprocess.run(["pgrep", "-af", "benchmark_model"], capture_output=True, text=True, check=False)
    assert not [line for line in leftover.stdout.splitlines() if str(emulator.sandbox) in line], leftover.stdout
