"""The on-device agent, run the way a board runs it: ``python agent.py MODE ...`` in a subprocess, one JSON document
back on stdout.

The models are real. One session-scoped fixture trains a tiny Keras CNN for a few seconds -- so its classes are
decisive enough for int8 and fp32 to agree on top-1 -- and converts it to fp32 TFLite, int8-io TFLite (int8 input and
output) and fp32 ONNX. It runs in a subprocess so that TensorFlow never loads into this process next to LiteRT.

Optional interpreters, used when given (skipped otherwise, also in CI: they are extra evidence, not peers):
FARMBENCH_TEST_OLD_PYTHON (a Python 3.8 to run the agent under) and FARMBENCH_TEST_TFLITE_RUNTIME_PYTHON (a Python
with tflite-runtime installed, to meet its numpy-ABI trap or its int8-without-XNNPACK behaviour for real).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, describe, require_module

from farmbench.runners import agent

AGENT = REPO / "farmbench" / "runners" / "agent.py"

# Real text of tflite-runtime 2.14.0 creating an Interpreter under numpy 2.2.6 (captured on x86_64, Python 3.11):
# the exception chain as the agent walks it, and the lines numpy and pybind11 print on stderr before it.
NUMPY_ABI_CHAIN = [
    ("SystemError: <built-in method CreateWrapperFromFile of PyCapsule object at 0x7f62cf5ced00> returned a result "
     "with an exception set"),
    "ImportError: numpy.core.multiarray failed to import",
]
NUMPY_ABI_STDERR = """A module that was compiled using NumPy 1.x cannot be run in
NumPy 2.2.6 as it may crash. To support both 1.x and 2.x
versions of NumPy, modules must be compiled with NumPy 2.0.
Some module may need to rebuild instead e.g. with 'pybind11>=2.12'.
AttributeError: _ARRAY_API not found"""
OP_VERSION_MESSAGE = ("Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'. An older version of this "
                      "builtin might be supported. Are you using an old TFLite binary with a newer model?")

BUILD_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path

    import keras
    import numpy as np
    import tensorflow as tf
    import tf2onnx

    out = Path(sys.argv[1])
    keras.utils.set_random_seed(0)

    def images(n, seed):
        rng = np.random.default_rng(seed)
        colors = rng.uniform(-1, 1, (n, 1, 1, 3))
        return np.clip(colors + 0.3 * rng.standard_normal((n, 32, 32, 3)), -1, 1).astype(np.float32)

    inputs = keras.Input(shape=(32, 32, 3), batch_size=1, name="input")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    # Labels from the mean colour, so that the trained classes are decisive (random weights give near-uniform
    # softmax outputs on which int8 and fp32 disagree by chance).
    train = images(512, 5)
    labels = (train.mean(axis=(1, 2)) @ np.random.default_rng(3).standard_normal((3, 10))).argmax(1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(train, labels, batch_size=32, epochs=10, verbose=0)

    (out / "fp32.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

    def representative():
        for row in images(64, 7):
            yield [row[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    (out / "int8io.tflite").write_bytes(converter.convert())

    tf2onnx.convert.from_keras(model, input_signature=[tf.TensorSpec((1, 32, 32, 3), tf.float32, name="input")],
                               opset=17, output_path=str(out / "fp32.onnx"))
''')


def images(n: int, seed: int) -> np.ndarray:
    """Float32 (n, 32, 32, 3) in [-1, 1]: a random colour per image plus noise (the training distribution)."""
    rng = np.random.default_rng(seed)
    colors = rng.uniform(-1, 1, (n, 1, 1, 3))
    return np.clip(colors + 0.3 * rng.standard_normal((n, 32, 32, 3)), -1, 1).astype(np.float32)


@dataclass
class Models:
    dir: Path
    fp32_tflite: Path
    int8io_tflite: Path
    fp32_onnx: Path


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    for name in ("tensorflow", "keras", "tf2onnx", "ai_edge_litert", "onnxruntime"):
        require_module(name)
    out = tmp_path_factory.mktemp("agent-models")
    script = out / "build_models.py"
    script.write_text(BUILD_SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(script), str(out)], check=False, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, describe(proc)
    return Models(out, out / "fp32.tflite", out / "int8io.tflite", out / "fp32.onnx")


# ----------------------------------------------------------------------------------------------------------------
# helpers

def run_agent(*args: str | Path, python: str = sys.executable, cwd: Path | None = None,
              env: dict[str, str] | None = None, interpreter_flags: tuple[str, ...] = (),
              agent_path: Path = AGENT, timeout: float = 180
              ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the agent as a board would and parse its one JSON document (asserting there is exactly one)."""
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run([python, *interpreter_flags, str(agent_path), *(str(a) for a in args)],
                          check=False, capture_output=True, text=True, cwd=cwd, env=run_env, timeout=timeout)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.endswith("\n") and proc.stdout.count("\n") == 1, describe(proc)  # one document, one line
    document = json.loads(proc.stdout)
    assert document["schema_version"] == 1
    return proc, document


def bench(model: Path, *args: str | Path, **kwargs: Any) -> dict[str, Any]:
    return run_agent("bench", "--model", model, *args, **kwargs)[1]


def ok(document: dict[str, Any]) -> dict[str, Any]:
    assert document["status"] == "ok", json.dumps({k: v for k, v in document.items() if k != "latencies_ns"},
                                                  indent=1)
    return document


def litert_reference(path: Path, rows: np.ndarray, threads: int = 1) -> np.ndarray:
    """The model run in this process, float in and float out (int8 I/O quantised as the host reference does)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    results = []
    for row in rows:
        feed = row[None]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            feed = np.clip(np.round(feed / scale) + zero, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], feed)
        interpreter.invoke()
        value = interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            value = (value.astype(np.float32) - zero) * scale
        results.append(value)
    return np.concatenate(results)


def ort_reference(path: Path, rows: np.ndarray, threads: int = 1) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: row[None]})[0] for row in rows])


# ----------------------------------------------------------------------------------------------------------------
# probe

def test_probe_reports_runtimes_with_versions(tmp_path: Path) -> None:
    require_module("ai_edge_litert")
    require_module("onnxruntime")
    _, doc = run_agent("probe", "--work-dir", tmp_path)
    assert doc["mode"] == "probe" and doc["status"] == "ok"
    runtimes = {r["name"]: r for r in doc["runtimes"]}
    assert list(runtimes) == ["litert", "tflite_runtime", "tensorflow", "onnxruntime"]
    assert runtimes["litert"]["importable"] and runtimes["litert"]["usable"]
    assert runtimes["litert"]["version"] == importlib.metadata.version("ai-edge-litert")
    assert runtimes["onnxruntime"]["version"] == importlib.metadata.version("onnxruntime")
    assert "CPUExecutionProvider" in runtimes["onnxruntime"]["providers"]
    if importlib.util.find_spec("tensorflow") is not None:
        assert runtimes["tensorflow"]["version"] == importlib.metadata.version("tensorflow-cpu")
    if importlib.util.find_spec("tflite_runtime") is None:
        tflite_runtime = runtimes["tflite_runtime"]
        assert not tflite_runtime["importable"] and tflite_runtime["problem_class"] == "missing_runtime"
        assert tflite_runtime["import_error"].startswith("ModuleNotFoundError")
    assert doc["numpy"] == {"importable": True, "version": np.__version__, "import_error": None}
    assert doc["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert doc["logical_cores"] == os.cpu_count()
    assert doc["work_dir"] == str(tmp_path) and doc["work_dir_free_bytes"] > 0
    assert doc["arch"] == os.uname().machine and doc["cpu"]["model"]
    if Path("/etc/os-release").exists():
        assert doc["os_release"]
    for policy in doc["cpufreq"]:  # empty in containers without cpufreq
        assert policy["policy"].startswith("policy") and "governor" in policy


def test_probe_reads_numpy_abi_from_extension_files(tmp_path: Path) -> None:
    """The scan that predicts tflite-runtime's numpy trap without creating an Interpreter: the import path a
    compiled extension carries says which numpy headers built it."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "_wrapper.so").write_bytes(b"\x7fELF...numpy.core._multiarray_umath\x00...")
    assert agent._numpy_abi_of_extensions(str(package)) == "1.x"
    (package / "other.so").write_bytes(b"numpy._core._multiarray_umath\x00numpy.core._multiarray_umath\x00")
    assert agent._numpy_abi_of_extensions(str(package)) == "2.x"
    assert agent._numpy_abi_of_extensions(str(tmp_path / "empty")) is None


# ----------------------------------------------------------------------------------------------------------------
# bench: counts, timing bounds, what was applied

@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_bench_gives_one_latency_per_run(models: Models, fmt: str) -> None:
    model = models.fp32_tflite if fmt == "tflite" else models.fp32_onnx
    doc = ok(bench(model, "--runs", "25", "--min-s", "0", "--warmup-runs", "3", "--threads", "1"))
    assert doc["runtime"]["name"] == ("litert" if fmt == "tflite" else "onnxruntime")
    assert doc["runtime"]["version"] == importlib.metadata.version(
        "ai-edge-litert" if fmt == "tflite" else "onnxruntime")
    assert doc["timed_runs"] == 25 and len(doc["latencies_ns"]) == 25
    assert all(isinstance(v, int) and v > 0 for v in doc["latencies_ns"])
    assert doc["warmup_runs"] == 3 and doc["warmup_s"] > 0
    assert doc["init_ns"] > 0 and doc["first_inference_ns"] > 0 and doc["runtime_import_ns"] > 0
    assert 0 < doc["rss_before_load_kib"] <= doc["peak_rss_after_load_kib"] <= doc["peak_rss_kib"]
    assert doc["config"]["threads"] == 1 and doc["applied"]["threads"] == 1
    assert doc["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert doc["model"]["inputs"][0]["shape"] == [1, 32, 32, 3] and doc["model"]["inputs"][0]["dtype"] == "float32"
    assert doc["model"]["outputs"][0]["shape"] == [1, 10]
    assert doc["input_source"] == "random" and doc["stopped_by_max_s"] is False
    assert doc["affinity"] == sorted(os.sched_getaffinity(0))
    assert doc["start_monotonic_ns"] < doc["end_monotonic_ns"] and doc["start_unix_s"] <= doc["end_unix_s"]
    # The timed window on CLOCK_BOOTTIME (the power sampler's clock): it holds the samples and little else.
    timed_s = doc["timed_end_boottime_s"] - doc["timed_start_boottime_s"]
    assert sum(doc["latencies_ns"]) / 1e9 <= timed_s <= doc["timed_wall_s"] + 0.01
    assert doc["timed_start_boottime_s"] <= time.clock_gettime(time.CLOCK_BOOTTIME)
    assert doc["summary"]["median_ns"] == float(np.median(doc["latencies_ns"]))
    assert "stopped_by_max_s" not in doc["flags"] and "few_samples" not in doc["flags"]
    # Run-queue wait of the process's threads over the timed phase (Linux schedstat); flagged above 10% of it.
    assert 0 <= doc["timed_run_delay_s"]
    assert ("cpu_contention" in doc["flags"]) == (doc["timed_run_delay_s"] > 0.1 * doc["timed_wall_s"])
    assert 0 <= doc["timed_other_cpus"] and ("host_busy" in doc["flags"]) == (doc["timed_other_cpus"] > 0.5)
    if fmt == "onnx":
        assert doc["applied"]["ort_providers"][0] == "CPUExecutionProvider"
        assert doc["applied"]["ort_opt_level"] == "ORT_ENABLE_ALL"


@pytest.mark.slow
def test_min_s_keeps_running_and_warmup_min_s_too(models: Models) -> None:
    doc = ok(bench(models.fp32_tflite, "--runs", "1", "--min-s", "0.3", "--warmup-runs", "1",
                   "--warmup-min-s", "0.2"))
    assert doc["timed_wall_s"] >= 0.3 and doc["timed_runs"] > 1
    assert doc["warmup_s"] >= 0.2 and doc["warmup_runs"] > 1
    assert doc["stopped_by_max_s"] is False


def _hogs(cpu: int, count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` busy loops pinned to ``cpu``."""
    code = f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def _stop(hogs: list[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        hog.kill()
        hog.wait()


@pytest.mark.slow
def test_cpu_contention_is_measured_and_flagged(models: Models) -> None:
    """Two busy loops pinned to the agent's one CPU: its threads wait for that CPU about two thirds of the time."""
    cpu = min(os.sched_getaffinity(0))
    hogs = _hogs(cpu, 2)
    try:
        doc = ok(bench(models.fp32_tflite, "--affinity", str(cpu), "--runs", "1", "--min-s", "1.0",
                       "--warmup-runs", "1"))
    finally:
        _stop(hogs)
    assert doc["timed_run_delay_s"] > 0.3 * doc["timed_wall_s"]
    assert "cpu_contention" in doc["flags"]


@pytest.mark.slow
def test_work_on_another_cpu_is_measured_and_flagged(models: Models) -> None:
    """A busy loop on another CPU: no run-queue wait for the agent, but the host was busy (shared caches, memory
    bandwidth, SMT siblings), about one CPU's worth."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    hogs = _hogs(cpus[1], 1)
    try:
        doc = ok(bench(models.fp32_tflite, "--affinity", str(cpus[0]), "--runs", "1", "--min-s", "1.0",
                       "--warmup-runs", "1"))
    finally:
        _stop(hogs)
    assert doc["timed_other_cpus"] > 0.7 and "host_busy" in doc["flags"]


@pytest.mark.slow
def test_max_s_caps_the_timed_loop_and_is_flagged(models: Models) -> None:
    started = time.monotonic()
    doc = ok(bench(models.fp32_onnx, "--runs", "1000000000", "--max-s", "0.25", "--warmup-runs", "0"))
    assert time.monotonic() - started < 60
    assert doc["stopped_by_max_s"] is True and "stopped_by_max_s" in doc["flags"]
    assert 0.25 <= doc["timed_wall_s"] < 1.0
    assert 1 <= doc["timed_runs"] < 1_000_000_000 and doc["warmup_runs"] == 0


@pytest.mark.slow
def test_few_samples_flagged(models: Models) -> None:
    doc = ok(bench(models.fp32_tflite, "--runs", "3"))
    assert doc["timed_runs"] == 3 and "few_samples" in doc["flags"]


@pytest.mark.slow
def test_xnnpack_on_and_off_are_recorded_as_applied(models: Models) -> None:
    on = ok(bench(models.fp32_tflite, "--xnnpack", "on", "--runs", "5"))
    assert on["applied"]["xnnpack"] is True and on["applied"]["op_resolver"] == "AUTO"
    assert on["applied"]["xnnpack_delegate_nodes"] >= 1 and on["applied"]["xnnpack_fully_delegated"] is True
    off = ok(bench(models.fp32_tflite, "--xnnpack", "off", "--runs", "5"))
    assert off["config"]["xnnpack"] == "off"
    assert off["applied"]["xnnpack"] is False and off["applied"]["xnnpack_delegate_nodes"] == 0
    assert off["applied"]["op_resolver"] == "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
    assert "xnnpack_requested_but_unavailable" not in off["flags"]


@pytest.mark.slow
def test_partial_delegation_is_flagged_not_hidden(models: Models) -> None:
    """LiteRT's XNNPACK takes the int8 convolutions; what it leaves on the builtin kernels is named and flagged."""
    doc = ok(bench(models.int8io_tflite, "--runs", "5"))
    applied = doc["applied"]
    assert applied["xnnpack_delegate_nodes"] >= 1
    assert ("xnnpack_partially_applied" in doc["flags"]) == (not applied["xnnpack_fully_delegated"])
    assert bool(applied["xnnpack_undelegated_ops"]) == (not applied["xnnpack_fully_delegated"])


@pytest.mark.slow
def test_affinity_applied_and_refused(models: Models) -> None:
    first_cpu = min(os.sched_getaffinity(0))
    doc = ok(bench(models.fp32_tflite, "--affinity", str(first_cpu), "--runs", "5"))
    assert doc["affinity"] == [first_cpu]
    refused = bench(models.fp32_tflite, "--affinity", "4095", "--runs", "5")
    assert refused["status"] == "failed" and refused["error_class"] == "bad_input"
    assert "4095" in refused["error_message"] and refused["error_stage"] == "affinity"


@pytest.mark.slow
def test_tf_lite_runtime_runs_the_same_protocol(models: Models) -> None:
    require_module("tensorflow")
    doc = ok(bench(models.fp32_tflite, "--runtime", "tensorflow", "--runs", "5", "--xnnpack", "off"))
    assert doc["runtime"]["name"] == "tensorflow" and doc["runtime"]["version"] == importlib.metadata.version(
        "tensorflow-cpu")
    assert doc["timed_runs"] == 5 and doc["applied"]["xnnpack"] is False


# ----------------------------------------------------------------------------------------------------------------
# bench: given inputs and dumped outputs

@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_dumped_outputs_equal_running_the_model_in_process(models: Models, tmp_path: Path, fmt: str) -> None:
    model = models.fp32_tflite if fmt == "tflite" else models.fp32_onnx
    rows = images(8, seed=11)
    np.save(tmp_path / "inputs.npy", rows)
    dump = tmp_path / "outputs.npy"
    doc = ok(bench(model, "--inputs", tmp_path / "inputs.npy", "--dump-outputs", dump, "--runs", "16"))
    assert doc["input_source"] == "file" and doc["input_rows"] == 8 and doc["timed_runs"] == 16
    (entry,) = doc["dump"]["files"]
    assert doc["dump"]["rows"] == 8 and entry["raw_dtype"] == "float32" and entry["dequantized"] is False
    outputs = np.load(dump)
    assert outputs.dtype == np.float32 and outputs.shape == (8, 10) and entry["shape"] == [8, 10]
    reference = litert_reference(model, rows) if fmt == "tflite" else ort_reference(model, rows)
    np.testing.assert_allclose(outputs, reference, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_int8_io_model_quantizes_float_inputs(models: Models, tmp_path: Path) -> None:
    rows = images(48, seed=13)
    np.save(tmp_path / "inputs.npy", rows)
    doc = ok(bench(models.int8io_tflite, "--inputs", tmp_path / "inputs.npy", "--dump-outputs",
                   tmp_path / "int8.npy", "--runs", "5"))
    (entry,) = doc["dump"]["files"]
    assert entry["raw_dtype"] == "int8" and entry["dequantized"] is True and entry["quant_scale"] > 0
    assert doc["model"]["inputs"][0]["dtype"] == "int8" and doc["model"]["inputs"][0]["quant_scale"] > 0
    int8_out = np.load(tmp_path / "int8.npy")
    # Exactly what the host reference gives for the same float rows (same quantisation of the input) ...
    np.testing.assert_allclose(int8_out, litert_reference(models.int8io_tflite, rows), atol=1e-6, rtol=0)
    # ... and close to the fp32 model: same top-1 on most inputs (a loose bound; quantisation moves near-ties).
    fp32_out = litert_reference(models.fp32_tflite, rows)
    assert len(set(fp32_out.argmax(1))) >= 3  # the check means something only if the classes differ
    agreement = float(np.mean(int8_out.argmax(1) == fp32_out.argmax(1)))
    assert agreement >= 0.8, agreement
    assert float(np.abs(int8_out - fp32_out).max()) < 0.25


@pytest.mark.slow
def test_random_int8_inputs_cover_the_full_range(models: Models, tmp_path: Path) -> None:
    doc = ok(bench(models.int8io_tflite, "--dump-outputs", tmp_path / "out.npy", "--runs", "3", "--seed", "5"))
    assert doc["input_source"] == "random" and doc["dump"]["rows"] == 1
    again = ok(bench(models.int8io_tflite, "--dump-outputs", tmp_path / "again.npy", "--runs", "3", "--seed", "5"))
    assert again["dump"]["files"][0]["shape"] == [1, 10]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.load(tmp_path / "again.npy"))  # seeded


@pytest.mark.slow
def test_wrong_inputs_and_dump_paths_are_bad_input(models: Models, tmp_path: Path) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((2, 16, 16, 3), np.float32))
    doc = bench(models.fp32_tflite, "--inputs", tmp_path / "wrong.npy")
    assert doc["status"] == "failed" and doc["error_class"] == "bad_input" and doc["error_stage"] == "inputs"
    assert "[16, 16, 3]" in doc["error_message"]
    doc = bench(models.fp32_tflite, "--dump-outputs", tmp_path / "no" / "such" / "dir.npy", "--runs", "2")
    assert doc["status"] == "failed" and doc["error_class"] == "bad_input" and doc["error_stage"] == "dump"


# ----------------------------------------------------------------------------------------------------------------
# failures become documents

@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_corrupt_model_is_unsupported_model(tmp_path: Path, suffix: str) -> None:
    require_module("ai_edge_litert" if suffix == ".tflite" else "onnxruntime")
    corrupt = tmp_path / ("corrupt" + suffix)
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    proc, doc = run_agent("bench", "--model", corrupt)
    assert proc.returncode == 0
    assert doc["status"] == "failed" and doc["error_class"] == "unsupported_model", doc
    assert doc["error_stage"] == "load" and str(corrupt) in doc["error_message"]
    assert doc["model"]["sha256"] == hashlib.sha256(corrupt.read_bytes()).hexdigest()
    assert doc["latencies_ns"] is None and doc["error_raw"]


@pytest.mark.slow
def test_unknown_or_absent_runtime_is_missing_runtime(models: Models) -> None:
    doc = bench(models.fp32_tflite, "--runtime", "tvm")
    assert doc["status"] == "failed" and doc["error_class"] == "missing_runtime"
    assert "litert" in doc["error_message"]
    if importlib.util.find_spec("tflite_runtime") is None:
        doc = bench(models.fp32_tflite, "--runtime", "tflite_runtime")
        assert doc["status"] == "failed" and doc["error_class"] == "missing_runtime"
        assert doc["error_stage"] == "import" and "pip install tflite-runtime" in doc["error_message"]
    doc = bench(models.fp32_onnx, "--ort-provider", "NoSuchExecutionProvider")
    assert doc["error_class"] == "missing_runtime" and "CPUExecutionProvider" in doc["error_message"]


def test_missing_model_file_is_bad_input(tmp_path: Path) -> None:
    _, doc = run_agent("bench", "--model", tmp_path / "absent.tflite")
    assert doc["status"] == "failed" and doc["error_class"] == "bad_input" and "push it" in doc["error_message"]


@pytest.mark.parametrize("args", [
    ["bench"],                                                   # no --model
    ["bench", "--model", "m.tflite", "--runs", "0"],
    ["bench", "--model", "m.tflite", "--min-s", "2", "--max-s", "1"],
    ["bench", "--model", "m.tflite", "--xnnpack", "maybe"],
    ["bench", "--model", "m.tflite", "--affinity", "3-1"],
    ["bench", "--model", "m.onnx", "--input-quant", "x,1"],
    ["probe", "--runtimes", "litert,tvm"],
    ["nonsense"],
])
def test_argument_errors_exit_2_with_nothing_on_stdout(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(AGENT), *args], check=False, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stdout == "", describe(proc)
    assert "usage:" in proc.stderr


# ----------------------------------------------------------------------------------------------------------------
# classification of the known traps, on their real message text

def test_op_version_message_is_parsed_and_classified() -> None:
    assert agent.parse_op_version(OP_VERSION_MESSAGE) == ("FULLY_CONNECTED", 12)
    assert agent.parse_op_version("Didn't find op for builtin opcode 'CONV_2D' version '7'\nRegistration failed.") \
        == ("CONV_2D", 7)
    assert agent.parse_op_version("some other failure") is None
    failure = agent.classify_failure(["ValueError: " + OP_VERSION_MESSAGE + "\nRegistration failed.\n"], "load",
                                     "tflite_runtime", "2.14.0")
    assert failure.error_class == "op_version"
    assert failure.detail == {"op": "FULLY_CONNECTED", "op_version": 12}
    assert "FULLY_CONNECTED version 12" in failure.error_message
    assert "older than the converter" in failure.error_message and "tflite-runtime 2.14.0" in failure.error_message


def test_numpy_abi_message_is_classified() -> None:
    for messages in (NUMPY_ABI_CHAIN, [NUMPY_ABI_STDERR]):
        failure = agent.classify_failure(messages, "load", "tflite_runtime", "2.14.0")
        assert failure.error_class == "numpy_abi"
        assert failure.error_message.startswith("tflite-runtime 2.14.0 was built for numpy 1.x; install numpy<2 on "
                                                "the board or use ai-edge-litert")
    # Another runtime with the same ABI problem (onnxruntime built for numpy 1 fails at import).
    failure = agent.classify_failure(["ImportError: numpy.core.multiarray failed to import"], "import",
                                     "onnxruntime", None)
    assert failure.error_class == "numpy_abi" and "numpy<2" in failure.error_message


def test_other_messages_are_classified() -> None:
    assert agent.classify_failure(["ValueError: The model is not a valid Flatbuffer buffer"], "load",
                                  "litert").error_class == "unsupported_model"
    ir_message = ("Fail: [ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:Unsupported model IR version: "
                  "11, max supported IR version: 10")
    ir = agent.classify_failure([ir_message], "load", "onnxruntime", "1.16.3")
    assert ir.error_class == "op_version" and ir.detail == {"ir_version": 11, "max_ir_version": 10}
    assert agent.classify_failure(["ModuleNotFoundError: No module named 'ai_edge_litert'"], "import",
                                  "litert").error_class == "missing_runtime"
    assert agent.classify_failure(["RuntimeError: something odd"], "timed", "litert").error_class == "runtime_error"
    exc = SystemError("outer")
    exc.__cause__ = ImportError("numpy.core.multiarray failed to import")
    chain = agent.exception_messages(exc)
    assert chain == ["SystemError: outer", "ImportError: numpy.core.multiarray failed to import"]


def test_cpu_list_parsing() -> None:
    assert agent.parse_cpu_list("0-3,6") == [0, 1, 2, 3, 6]
    assert agent.parse_cpu_list("4") == [4]
    for bad in ("", "3-1", "-1", "a"):
        with pytest.raises(ValueError):
            agent.parse_cpu_list(bad)


# ----------------------------------------------------------------------------------------------------------------
# the agent is one self-contained file

STDLIB = set(getattr(sys, "stdlib_module_names", ()))


def test_agent_source_is_self_contained_and_python38() -> None:
    source = AGENT.read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    top_level: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the agent"
            top_level.add((node.module or "").split(".")[0])
    assert "farmbench" not in top_level
    # Module-level imports: stdlib and numpy only; runtimes are imported by name, lazily.
    module_imports = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
                      for alias in node.names}
    module_imports |= {(node.module or "").split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    for node in tree.body:
        if isinstance(node, ast.Try):
            for inner in node.body:
                if isinstance(inner, ast.Import):
                    module_imports.update(alias.name.split(".")[0] for alias in inner.names)
    assert module_imports - STDLIB - {"__future__"} == {"numpy"}
    assert not any(isinstance(node, ast.Match) for node in ast.walk(tree))  # 3.10+ syntax


@pytest.mark.slow
def test_agent_copied_alone_runs_without_farmbench(models: Models, tmp_path: Path) -> None:
    """As on a board: the one file in an empty directory, no PYTHONPATH, isolated mode (-I: no script dir or user
    site on sys.path). -X importtime lists every module imported, so nothing from farmbench can hide."""
    board = tmp_path / "board"
    board.mkdir()
    copied = Path(shutil.copy(AGENT, board / "agent.py"))
    shutil.copy(models.fp32_tflite, board / "m.tflite")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc, doc = run_agent("probe", "--runtimes", "litert,onnxruntime", agent_path=copied, cwd=board, env=env,
                          interpreter_flags=("-I", "-X", "importtime"))
    assert doc["status"] == "ok"
    assert not [m for m in imported_modules(proc.stderr) if m.split(".")[0] == "farmbench"]
    proc, doc = run_agent("bench", "--model", "m.tflite", "--runs", "5", agent_path=copied, cwd=board, env=env,
                          interpreter_flags=("-I", "-X", "importtime"))
    ok(doc)
    imported = {m.split(".")[0] for m in imported_modules(proc.stderr)}
    assert "farmbench" not in imported and "ai_edge_litert" in imported
    assert "tensorflow" not in imported  # auto picked LiteRT without touching the heavier candidates


def imported_modules(importtime_stderr: str) -> list[str]:
    """Module names from ``python -X importtime`` output (the editable install's path finder, which site loads
    for every process, is not an import of farmbench)."""
    return [line.split("|")[-1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and "|" in line and "self [us]" not in line]


def test_agent_without_site_packages_still_answers(tmp_path: Path) -> None:
    """python -S: no site-packages, so no numpy and no runtime. probe still describes the device; bench fails with
    a document that says numpy is missing (exit 0)."""
    copied = Path(shutil.copy(AGENT, tmp_path / "agent.py"))
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\x00" * 64)
    _, doc = run_agent("probe", agent_path=copied, cwd=tmp_path, interpreter_flags=("-S", "-I"))
    assert doc["status"] == "ok" and doc["logical_cores"]
    if doc["numpy"]["importable"]:
        pytest.skip("numpy is importable without site-packages on this interpreter")
    assert doc["numpy"]["import_error"].startswith("ModuleNotFoundError")
    assert not any(r["importable"] for r in doc["runtimes"])
    _, doc = run_agent("bench", "--model", model, agent_path=copied, cwd=tmp_path, interpreter_flags=("-S", "-I"))
    assert doc["status"] == "failed" and doc["error_class"] == "missing_runtime" and "numpy" in doc["error_message"]


def _optional_python(variable: str) -> str:
    python = os.environ.get(variable)
    if not python:
        pytest.skip(f"set {variable} to an interpreter to run this check")
    return python


def test_agent_runs_on_an_old_python(tmp_path: Path) -> None:
    """Under the oldest Python a board may have: probe always; bench too when that interpreter has numpy and
    onnxruntime (an ONNX model is written with the onnx package here, so no TensorFlow build is needed)."""
    python = _optional_python("FARMBENCH_TEST_OLD_PYTHON")
    copied = Path(shutil.copy(AGENT, tmp_path / "agent.py"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _, doc = run_agent("probe", "--runtimes", "litert,onnxruntime", python=python, agent_path=copied, cwd=tmp_path,
                       env=env)
    assert doc["status"] == "ok" and doc["python_version"].startswith("3.")
    old_version = doc["python_version"]
    runtimes = {r["name"]: r for r in doc["runtimes"]}
    if not runtimes["onnxruntime"]["importable"]:
        return
    require_module("onnx")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])], "relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7  # readable by old onnxruntime builds
    onnx.save(model, str(tmp_path / "relu.onnx"))
    rows = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    np.save(tmp_path / "rows.npy", rows)
    _, doc = run_agent("bench", "--model", "relu.onnx", "--runs", "5", "--inputs", "rows.npy", "--dump-outputs",
                       "out.npy", python=python, agent_path=copied, cwd=tmp_path, env=env)
    ok(doc)
    assert doc["timed_runs"] == 5 and doc["python_version"] == old_version
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.maximum(rows, 0))


@pytest.mark.slow
def test_tflite_runtime_traps_for_real(models: Models, tmp_path: Path) -> None:
    """With a real tflite-runtime: under numpy 2 the probe predicts and bench reports numpy_abi; under numpy 1 an
    int8 model runs without XNNPACK and says so."""
    python = _optional_python("FARMBENCH_TEST_TFLITE_RUNTIME_PYTHON")
    _, probe = run_agent("probe", "--runtimes", "tflite_runtime", python=python)
    (entry,) = probe["runtimes"]
    assert entry["importable"], entry
    doc = bench(models.int8io_tflite, "--runtime", "tflite_runtime", "--runs", "5", python=python)
    if entry["problem_class"] == "numpy_abi":
        assert not entry["usable"] and "numpy<2" in entry["problem"]
        assert doc["status"] == "failed" and doc["error_class"] == "numpy_abi" and doc["error_stage"] == "load"
    else:
        ok(doc)
        assert "tflite_runtime_int8_no_xnnpack" in doc["flags"]
        assert "xnnpack_requested_but_unavailable" in doc["flags"] and doc["applied"]["xnnpack"] is False
        fp32 = ok(bench(models.fp32_tflite, "--runtime", "tflite_runtime", "--runs", "5", python=python))
        assert fp32["applied"]["xnnpack"] is True and "tflite_runtime_int8_no_xnnpack" not in fp32["flags"]
