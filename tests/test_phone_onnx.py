"""`farmbench run` of ONNX variants on an Android phone: the real CLI, over real ADB (adb-shell) to the loopback ADB
device emulator, with the user's `onnxruntime_perf_test` binary pushed by hash (a stand-in that runs ONNX Runtime
for real, prints the real tool's output and writes its per-run result file). Without the binary in the device file,
ONNX items are skipped with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GRID_FLAGS, BuiltGrid, describe, require_module
from tests.peers.benchmark_model_standin import install as install_benchmark_model
from tests.peers.ort_perf_test_standin import install as install_ort_perf_test
from tests.test_phone_run import QUICK, farmbench, phone_file, records

pytestmark = pytest.mark.slow


@pytest.fixture
def cache(built_grid: BuiltGrid, tmp_path: Path) -> Path:
    return built_grid.copy(tmp_path / "cache")


@pytest.fixture
def ort_binary(tmp_path: Path) -> Path:
    """The user's onnxruntime_perf_test binary on the host (farmbench pushes it to the phone). The stand-in runs
    the model with this machine's onnxruntime: without it the test cannot run (a failure when CI=true)."""
    require_module("onnxruntime")
    return install_ort_perf_test(tmp_path / "tools" / "onnxruntime_perf_test")


def test_onnx_variants_run_with_onnxruntime_perf_test(adb_emulator: Any, cache: Path, ort_binary: Path,
                                                      tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept-new")
    device = phone_file(tmp_path, emulator.port, key=tmp_path / "keys" / "adbkey", ort_perf_test=ort_binary)
    db = tmp_path / "results.db"
    proc, _ = farmbench("run", *GRID_FLAGS, "--quant", "fp32,int8", "--format", "onnx", "--device", device,
                        "--threads", "1", "--affinity", "little", "--repeats", "1", *QUICK, "--db", db, "--json",
                        cache_dir=cache)
    assert proc.returncode == 0, describe(proc)
    summary = json.loads(proc.stdout)
    assert (summary["ok"], summary["skipped"], summary["failed"]) == (2, 0, 0), describe(proc)
    found = records(db)
    assert len(found) == 2
    for record in found:
        assert record.status == "ok", record.error_message
        assert record.runtime == "onnxruntime_perf_test" and record.config["runtime"] == "onnxruntime_perf_test"
        assert record.config["threads"] == 1
        # Raw samples: one per timed run, from the tool's result file.
        assert record.samples_us is not None and len(record.samples_us) == 5
        assert all(sample > 0 for sample in record.samples_us)
        assert record.latency is not None and record.latency.n == 5
        assert record.latency.p50_us is not None and record.latency.p50_us > 0
        assert record.latency.ci95_low_us is not None and "aggregate_only" not in record.all_flags()
        assert "no_raw_samples" not in record.flags
        parsed = record.context["onnxruntime_perf_test"]
        assert parsed["requests"] == 5 and parsed["samples"] == 5 and parsed["intra_op_threads"] == 1
        assert parsed["average_us"] == pytest.approx(sum(record.samples_us) / 5, rel=1e-3)
        assert record.init_ms is not None and record.init_ms > 0
        assert record.first_inference_ms is not None and record.peak_rss_mb is not None and record.peak_rss_mb > 1
        assert record.context["abi"] == "arm64-v8a" and record.context["binary_sha256"]
        command = record.context["command"]
        assert command[:2] == ["taskset", "3"]  # "little" is CPUs 0-1 in the emulator's cpufreq
        assert command[3:] and {"-r", "-x", "-e", "-o", "-I", "-s"} <= set(command)
        assert command[command.index("-r") + 1] == "5" and command[command.index("-e") + 1] == "cpu"
        protocol = record.context["protocol"]
        assert protocol["warmup_runs"] == 1 and protocol["timed_runs"] == 5
        assert protocol["not_applied"] == {"max_s": 30.0}
    # The binary and the models went to the phone once each, by hash; no result file is left behind.
    pushed = list((emulator.sandbox / "data/local/tmp/farmbench").rglob("*"))
    assert sum(p.name == "onnxruntime_perf_test" for p in pushed) == 1
    assert sum(p.suffix == ".onnx" for p in pushed) == 2
    assert not [p for p in pushed if p.suffix == ".csv"]
    assert emulator.violations == []


def test_without_the_key_onnx_is_skipped_with_the_reason(adb_emulator: Any, cache: Path, tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept-new")
    benchmark_model = install_benchmark_model(tmp_path / "tools" / "benchmark_model")
    device = phone_file(tmp_path, emulator.port, key=tmp_path / "keys" / "adbkey", binary=benchmark_model)
    db = tmp_path / "results.db"
    proc, _ = farmbench("run", *GRID_FLAGS, "--quant", "fp32", "--format", "tflite,onnx", "--device", device,
                        "--repeats", "1", *QUICK, "--db", db, "--json", cache_dir=cache)
    assert proc.returncode == 0, describe(proc)
    summary = json.loads(proc.stdout)
    assert (summary["ok"], summary["skipped"], summary["failed"]) == (1, 1, 0), describe(proc)
    by_status = {r.status: r for r in records(db)}
    assert by_status["ok"].runtime == "benchmark_model"
    skipped = by_status["skipped"]
    assert skipped.error_class == "missing_runtime"
    message = skipped.error_message or ""
    assert 'onnxruntime_perf_test = "/path/to/onnxruntime_perf_test"' in message and str(device) in message


def test_a_binary_older_than_the_converter_is_classified(adb_emulator: Any, cache: Path, ort_binary: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The emulator runs phone commands with its own environment: the stand-in then refuses the model's IR version
    # like a build of an older ONNX Runtime.
    monkeypatch.setenv("FARMBENCH_ORT_STANDIN_MAX_IR_VERSION", "3")
    emulator = adb_emulator(auth="accept-new")
    device = phone_file(tmp_path, emulator.port, key=tmp_path / "keys" / "adbkey", ort_perf_test=ort_binary)
    db = tmp_path / "results.db"
    proc, _ = farmbench("run", *GRID_FLAGS, "--quant", "fp32", "--format", "onnx", "--device", device,
                        "--repeats", "1", *QUICK, "--db", db, cache_dir=cache)
    assert proc.returncode == 1, describe(proc)
    (record,) = records(db)
    assert record.status == "failed" and record.error_class == "ir_version"
    assert "older than the converter" in (record.error_message or "")
    assert record.runtime == "onnxruntime_perf_test" and record.samples_us is None
