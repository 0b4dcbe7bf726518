"""The benchmark_model stand-in (tests/peers/benchmark_model_standin.py): its output parses with farmbench's own
parser, its input/output files round-trip, its fault switches give the classified errors, and it runs through the
ADB emulator like the real binary on a phone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from farmbench.runners.benchmark_model import BenchmarkModelConfig, benchmark_model_argv, parse_output
from tests.conftest import require_module
from tests.peers.adb_emulator import AdbEmulator
from tests.peers.benchmark_model_standin import delegate_coverage, install, stat_line

STANDIN = Path(__file__).resolve().parent / "peers" / "benchmark_model_standin.py"
FAST = ["--warmup_min_secs=0", "--min_secs=0"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny CNN (batch 1) as fp32 and int8 (representative data, float I/O), and a model XNNPACK can only take
    partly (CUMSUM between two dense layers: two delegate partitions)."""
    require_module("tensorflow")
    require_module("ai_edge_litert")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    out = tmp_path_factory.mktemp("standin-models")
    keras.utils.set_random_seed(7)
    inputs = keras.Input((16, 16, 3), batch_size=1)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    cnn = keras.Model(inputs, keras.layers.Dense(5)(x))

    converter = tf.lite.TFLiteConverter.from_keras_model(cnn)
    (out / "fp32.tflite").write_bytes(converter.convert())

    rng = np.random.default_rng(0)
    converter = tf.lite.TFLiteConverter.from_keras_model(cnn)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.random((1, 16, 16, 3), dtype=np.float32)] for _ in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    (out / "int8.tflite").write_bytes(converter.convert())

    inputs = keras.Input((8,), batch_size=1)
    x = keras.layers.Dense(8)(inputs)
    x = keras.layers.Lambda(lambda t: tf.math.cumsum(t, axis=1))(x)
    split = keras.Model(inputs, keras.layers.Dense(4)(x))
    (out / "partial.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(split).convert())
    return {p.stem: p for p in out.glob("*.tflite")}


def run_standin(*args: str, env: dict[str, str] | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(STANDIN), *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_stat_line_formats_like_the_tool() -> None:
    assert stat_line([]) == "count=0"
    assert stat_line([905463]) == "count=1 curr=905463 p5=905463 median=905463 p95=905463"
    line = stat_line([10, 30, 20, 20])
    assert line == "count=4 first=10 curr=20 min=10 max=30 avg=20 std=7 p5=10 median=20 p95=30"


def test_delegate_coverage_walks_partitions() -> None:
    def op(name: str, index: int, inputs: list[int], outputs: list[int]) -> dict[str, object]:
        return {"op_name": name, "index": index, "inputs": inputs, "outputs": outputs}

    chain = [op("CONV_2D", 0, [0, 1], [2]), op("MEAN", 1, [2], [3])]
    assert delegate_coverage(chain + [op("DELEGATE", 2, [0, 1], [3])]) == (1, 0)
    assert delegate_coverage(chain + [op("DELEGATE", 2, [2], [3])]) == (1, 1)
    assert delegate_coverage(chain) == (0, 2)


@pytest.mark.parametrize(("model", "coverage", "kernels"),
                         [("fp32", "full", None), ("int8", "full", None), ("partial", "partial", 2)])
def test_output_parses_with_farmbench_parser(models: dict[str, Path], model: str, coverage: str,
                                              kernels: int | None) -> None:
    config = BenchmarkModelConfig(graph=str(models[model]), num_threads=1, warmup_runs=2, warmup_min_secs=0,
                                  num_runs=9, min_secs=0, use_xnnpack=True, report_peak_memory_footprint=True)
    argv = benchmark_model_argv(str(STANDIN), config, taskset_mask=None)
    proc = subprocess.run([sys.executable, *argv], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "INFO: STARTING!" in text and "INFO: #threads used for CPU inference: [1]" in text
    result = parse_output(text)
    assert result.ok, result.to_json()
    assert result.count == 9 and result.warmup_count == 2
    assert result.p5_us is not None and result.median_us is not None and result.p95_us is not None
    assert result.min_us is not None and result.max_us is not None
    assert result.min_us <= result.p5_us <= result.median_us <= result.p95_us <= result.max_us
    assert result.init_us is not None and result.inference_avg_us == result.avg_us
    assert result.memory_overall_mb is not None and result.peak_memory_mb is not None
    assert result.delegate is not None
    assert (result.delegate.name, result.delegate.coverage, result.delegate.kernels) == ("XNNPACK", coverage,
                                                                                          kernels)
    stats = result.to_latency_stats()
    assert stats.n == 9 and stats.mean_us == result.avg_us


def test_without_xnnpack_no_coverage_line_and_unknown_flags_warn(models: dict[str, Path]) -> None:
    proc = run_standin(f"--graph={models['fp32']}", "--use_xnnpack=false", "--num_runs=3", "--bogus=1", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: Unconsumed cmdline flags: --bogus=1" in proc.stderr
    result = parse_output(proc.stderr)
    assert result.ok and result.count == 3 and result.delegates == ()


def test_min_secs_keeps_running_past_num_runs(models: dict[str, Path]) -> None:
    proc = run_standin(f"--graph={models['fp32']}", "--num_runs=1", "--warmup_min_secs=0", "--min_secs=0.2")
    result = parse_output(proc.stderr)
    assert result.ok and result.count is not None and result.count > 1


def test_input_and_output_files_round_trip(models: dict[str, Path], tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    for name in ("fp32", "int8"):
        interpreter = Interpreter(model_path=str(models[name]))
        interpreter.allocate_tensors()
        (detail,) = interpreter.get_input_details()
        data = np.random.default_rng(3).uniform(-1, 1, detail["shape"]).astype(detail["dtype"])
        input_file = tmp_path / f"{name}.in"
        input_file.write_bytes(data.tobytes())
        interpreter.set_tensor(detail["index"], data)
        interpreter.invoke()
        expected = b"".join(interpreter.get_tensor(d["index"]).tobytes() for d in interpreter.get_output_details())

        # By signature input name (what farmbench passes: tensor names with ':' cannot be), and by tensor name with
        # the tool's '::' escaping.
        signature_name = next(iter(interpreter.get_signature_runner().get_input_details()))
        for layer in (signature_name, detail["name"].replace(":", "::")):
            output_file = tmp_path / f"{name}.out"
            output_file.unlink(missing_ok=True)
            proc = run_standin(f"--graph={models[name]}", "--num_runs=2", *FAST,
                               f"--input_layer_value_files={layer}:{input_file}", f"--output_filepath={output_file}")
            assert proc.returncode == 0, proc.stderr
            assert parse_output(proc.stderr).ok
            got = np.frombuffer(output_file.read_bytes(), dtype=np.float32)
            np.testing.assert_allclose(got, np.frombuffer(expected, dtype=np.float32), rtol=1e-5, atol=1e-5)


def test_input_file_of_the_wrong_size_fails(models: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.in"
    bad.write_bytes(b"\0" * 7)
    proc = run_standin(f"--graph={models['fp32']}", f"--input_layer_value_files=keras_tensor:{bad}", *FAST)
    assert proc.returncode == 1
    assert "expected 3072" in proc.stderr
    assert parse_output(proc.stderr).error is not None


def test_op_version_fault_is_classified(models: dict[str, Path]) -> None:
    proc = run_standin(f"--graph={models['fp32']}", env={"FARMBENCH_STANDIN_OP_VERSION": "1"})
    assert proc.returncode == 1
    assert "ERROR: Didn't find op for builtin opcode 'CONV_2D' version '8'" in proc.stderr
    result = parse_output(proc.stderr)
    assert result.error is not None and (result.error.kind, result.error.op, result.error.version) == (
        "op_version", "CONV_2D", 8)
    assert {e.kind for e in result.errors} == {"op_version", "init_failed", "benchmark_failed"}

    proc = run_standin(f"--graph={models['fp32']}", env={"FARMBENCH_STANDIN_OP_VERSION": "MUL:5"})
    assert parse_output(proc.stderr).error.op == "MUL"  # type: ignore[union-attr]


def test_gpu_and_missing_graph_fail_like_the_tool(models: dict[str, Path], tmp_path: Path) -> None:
    proc = run_standin(f"--graph={models['fp32']}", "--use_gpu=true")
    error = parse_output(proc.stderr).error
    assert proc.returncode == 1 and error is not None and error.kind == "delegate_failed"
    proc = run_standin(f"--graph={tmp_path / 'nope.tflite'}")
    assert proc.returncode == 1 and "Benchmarking failed." in proc.stderr


def test_sleep_fault_delays_the_run(models: dict[str, Path]) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run_standin(f"--graph={models['fp32']}", *FAST, env={"FARMBENCH_STANDIN_SLEEP_S": "30"}, timeout=1.5)


# --- through the ADB emulator ---------------------------------------------------------------------------------


def _device(emulator: AdbEmulator, tmp_path: Path):  # type: ignore[no-untyped-def]
    require_module("adb_shell")
    from adb_shell.adb_device import AdbDeviceTcp

    device = AdbDeviceTcp("127.0.0.1", emulator.port, default_transport_timeout_s=10.0)
    device.connect(auth_timeout_s=3.0)
    return device


def test_through_the_adb_emulator(adb_emulator: Callable[..., AdbEmulator], models: dict[str, Path],
                                  tmp_path: Path) -> None:
    emulator = adb_emulator(auth="none", benchmark_model=True)
    assert emulator.benchmark_model_path == emulator.sandbox / "system/bin/benchmark_model"
    device = _device(emulator, tmp_path)
    try:
        device.push(str(models["fp32"]), "/data/local/tmp/m.tflite")
        text = device.shell("benchmark_model --graph=/data/local/tmp/m.tflite --num_runs=5 --warmup_min_secs=0 "
                            "--min_secs=0 --use_xnnpack=true", read_timeout_s=60)
        result = parse_output(text)
        assert result.ok, text
        assert result.count == 5 and result.delegate is not None and result.delegate.coverage == "full"

        # Pushed like a user-provided binary, and run the way farmbench runs it (taskset + full path).
        user_binary = install(tmp_path / "benchmark_model")
        device.push(str(user_binary), "/data/local/tmp/bm/benchmark_model")
        argv = benchmark_model_argv("/data/local/tmp/bm/benchmark_model",
                                    BenchmarkModelConfig(graph="/data/local/tmp/m.tflite", num_runs=4,
                                                         warmup_min_secs=0, min_secs=0), taskset_mask="1")
        result = parse_output(device.shell(" ".join(argv) + " 2>&1", read_timeout_s=60))
        assert result.ok and result.count == 4
    finally:
        device.close()
    assert emulator.violations == []
