"""A stand-in for ONNX Runtime's native ``onnxruntime_perf_test`` (a test peer): same flags, same output, real runs.

It runs the model for real with the host's ``onnxruntime`` Python package (each ``InferenceSession.run`` timed with
``perf_counter``) and behaves like the current (Abseil-flags) releases of the tool, as read from
``onnxruntime/test/perftest/`` in microsoft/onnxruntime and matching the golden files in
``tests/data/onnxruntime_perf_test/``:

* ``onnxruntime_perf_test [options...] model_path [result_file]``; options are ``-name value``, ``-name=value`` or
  with ``--``. Implemented: ``-m times|duration``, ``-r N``, ``-t S`` (whole seconds of summed run time), ``-x N``
  (intra-op threads, 0: default), ``-e PROVIDER`` (only providers the host's onnxruntime has run; the others fail
  like a build without them: ``NNAPI is not supported in this build``, exit 255), ``-o 0|1|2|3|99`` (larger values
  mean 99), ``-I`` (generated inputs, free dimensions 1), ``-S SEED``, ``-s``, ``-v``, ``-p PROFILE_PREFIX``.
  Without ``-I`` it reads ``test_data_set_*/input_*.pb`` beside the model, or fails as the tool does (``there is no
  test data for model ...`` / ``Run failed:failed to initialize.``, exit 255).
* A flag the tool does not have: ``ERROR: Unknown command line flag 'W'`` on stderr, exit 1 (Abseil). A flag the
  tool has but this stand-in does not implement: a message saying so on stderr, exit 2 (so a test never silently
  measures something else). A rejected value (``-r 0``, ``-e foo``, ``-x -1``, a wrong number of positional
  arguments): the usage text on stdout, exit 255.
* One untimed warm-up run, then the timed runs; the summary on stdout in the current format (``Session creation
  time cost: ... s``, ``First inference time cost: N ms``, ..., ``Average inference time cost total: %.6f ms``,
  ..., ``Peak working set size: N bytes``; numbers as a C++ stream prints doubles, 6 significant digits). The peak is
  ``ru_maxrss`` in bytes and the CPU usage ``times()`` over the timed loop divided by the CPU count, as the tool's
  posix ``utils.cc`` computes them.
* The result file is opened for append and gets ``model_name,run_time_s,peak_bytes,cpu_percent,run_index`` per
  timed run (the model name is its directory's name), then with ``-s`` a blank line and the ``Min Latency: X s``
  ... ``P999 Latency: X s`` lines (order statistics at ``floor(n * q)``), which also go to stdout. Without a result
  file: ``Avg CPU usage:N`` / ``Peak working set size:N`` / ``Runs:N`` and the percentiles on stdout.
* A model that does not load: the ONNX Runtime message on stderr without the Python prefix (``Load model from X
  failed:...``), exit 255. A run that raises: ``Run failed:PerformanceRunner::RunOneIteration caught exception:
  ...``, exit 255.

Fault switches (environment):

* ``FARMBENCH_ORT_STANDIN_MAX_IR_VERSION=N``: behave like a build whose ONNX supports IR versions up to N, i.e. a
  binary older than the converter: ``Load model from X failed:... Unsupported model IR version: M, max supported IR
  version: N``, exit 255, for models with IR version M > N.
* ``FARMBENCH_ORT_STANDIN_SLEEP_S=S``: sleep S seconds before creating the session (a hung binary).

Run it as ``python ort_perf_test_standin.py ARGS``; :func:`install` writes a ``sh`` wrapper that execs it with this
interpreter (the ADB emulator runs commands with ``/bin/sh`` and a PATH without the venv).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

VALUE_FLAGS = {"m": "str", "r": "int", "t": "int", "x": "int", "e": "str", "o": "int", "S": "int", "p": "str"}
BOOL_FLAGS = {"I", "s", "v"}
# Flags the real tool has that this stand-in does not implement (refused, so no test measures something else).
UNIMPLEMENTED = {"A", "M", "P", "c", "y", "f", "F", "i", "T", "C", "R", "u", "d", "q", "z", "D", "Z", "n", "l", "g",
                 "X", "b", "k", "plugin_ep_libs", "plugin_eps", "plugin_ep_options", "list_ep_devices",
                 "select_ep_devices"}
# -e values -> (onnxruntime provider name, the name the tool's "not supported in this build" message uses).
PROVIDERS = {
    "cpu": ("CPUExecutionProvider", "CPU"), "xnnpack": ("XnnpackExecutionProvider", "XNNPACK"),
    "nnapi": ("NnapiExecutionProvider", "NNAPI"), "qnn": ("QNNExecutionProvider", "QNN"),
    "snpe": ("SNPEExecutionProvider", "SNPE"), "acl": ("ACLExecutionProvider", "Acl"),
    "armnn": ("ArmNNExecutionProvider", "ArmNN"), "webgpu": ("WebGpuExecutionProvider", "WebGPU"),
    "coreml": ("CoreMLExecutionProvider", "CoreML"), "cuda": ("CUDAExecutionProvider", "CUDA"),
    "tensorrt": ("TensorrtExecutionProvider", "TensorRT"), "dnnl": ("DnnlExecutionProvider", "DNNL"),
    "openvino": ("OpenVINOExecutionProvider", "OpenVINO"), "dml": ("DmlExecutionProvider", "DML"),
    "rocm": ("ROCMExecutionProvider", "ROCM"), "migraphx": ("MIGraphXExecutionProvider", "MIGraphX"),
    "vitisai": ("VitisAIExecutionProvider", "VitisAI"), "vsinpu": ("VSINPUExecutionProvider", "VSINPU"),
    "nvtensorrtrtx": ("NvTensorRTRTXExecutionProvider", "NvTensorRTRTX"),
}
DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
          "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
          "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool"}
USAGE = """perf_test [options...] model_path [result_file]
Options:
\t-m [test_mode]: 'duration' or 'times'.
\t-r [repeated_times]: runs in 'times' mode.
\t-t [seconds_to_run]: seconds of runs in 'duration' mode.
\t-x [intra_op_num_threads]: 0 lets ONNX Runtime choose. Must >=0.
\t-e [cpu|xnnpack|nnapi|...]: the execution provider.
\t-o [optimization level]: 0, 1, 2, 3 or 99.
\t-I: Generate tensor input binding.
\t-S: random seed for generated inputs.
\t-s: Show statistics result.
\t-v: Show verbose information.
\t-p [profile_file]: profile prefix.
\t-h: help
"""
QUANTILES = (("P50", 0.5), ("P90", 0.9), ("P95", 0.95), ("P99", 0.99), ("P999", 0.999))


class Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def err(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def fmt(value: float) -> str:
    """A double as a C++ ostream prints it by default (%g, 6 significant digits)."""
    return f"{value:g}"


def usage_failure() -> Exit:
    out(USAGE)
    return Exit(255)


def parse_args(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(flag values, positional arguments) the way Abseil reads them; raises :class:`Exit` like the tool."""
    values: dict[str, Any] = {}
    positional: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional += argv[i:]
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, eq, text = arg.lstrip("-").partition("=")
        if name in ("h", "help"):
            raise usage_failure()
        if name in BOOL_FLAGS:
            if eq and text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                err(f"ERROR: Illegal value '{text}' specified for flag '{name}'\n")
                raise Exit(1)
            values[name] = not eq or text.lower() in ("true", "1", "yes")
            continue
        if name in VALUE_FLAGS:
            if not eq:
                if i >= len(argv):
                    err(f"ERROR: Missing the value for the flag '{name}'\n")
                    raise Exit(1)
                text = argv[i]
                i += 1
            if VALUE_FLAGS[name] == "int":
                try:
                    values[name] = int(text)
                except ValueError:
                    err(f"ERROR: Illegal value '{text}' specified for flag '{name}'\n")
                    raise Exit(1) from None
                if name in ("r", "t") and values[name] < 0:
                    # size_t flags: Abseil refuses a negative value.
                    err(f"ERROR: Illegal value '{text}' specified for flag '{name}'\n")
                    raise Exit(1)
            else:
                values[name] = text
            continue
        if name in UNIMPLEMENTED:
            err(f"onnxruntime_perf_test stand-in: -{name} exists in the real tool but is not implemented here\n")
            raise Exit(2)
        unknown.append(name)
    if unknown:
        for name in unknown:
            err(f"ERROR: Unknown command line flag '{name}'\n")
        raise Exit(1)
    return values, positional


def load_test_data(model: Path, session: Any, model_name: str) -> list[dict[str, Any]]:
    """Inputs from ``test_data_set_*/input_*.pb`` beside the model (one feed per data set)."""
    import onnx
    from onnx import numpy_helper

    feeds: list[dict[str, Any]] = []
    inputs = session.get_inputs()
    for data_dir in sorted(p for p in model.parent.glob("test_data_set_*") if p.is_dir()):
        by_name: dict[str, Any] = {}
        files = sorted(data_dir.glob("input_*.pb"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
        for index, path in enumerate(files):
            tensor = onnx.TensorProto()
            tensor.ParseFromString(path.read_bytes())
            name = tensor.name or (inputs[index].name if index < len(inputs) else "")
            by_name[name] = numpy_helper.to_array(tensor)
        for info in inputs:
            if info.name not in by_name:
                out(f"there is no test input data for input {info.name} and model {model_name}\n")
                out("Run failed:failed to initialize.\n")
                raise Exit(255)
        feeds.append({info.name: by_name[info.name] for info in inputs})
    if not feeds:
        out(f"there is no test data for model {model_name}\n")
        out("Run failed:failed to initialize.\n")
        raise Exit(255)
    return feeds


def generated_inputs(session: Any, seed: int) -> list[dict[str, Any]]:
    """One feed of random values; free dimensions are 1 (what ``-I`` does)."""
    import numpy as np

    rng = np.random.default_rng(seed if seed >= 0 else None)
    feed: dict[str, Any] = {}
    for info in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in info.shape]
        dtype = np.dtype(DTYPES.get(info.type, "float32"))
        if dtype.kind == "f":
            feed[info.name] = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
        elif dtype.kind in "iu":
            limits = np.iinfo(dtype)
            feed[info.name] = rng.integers(limits.min, limits.max, size=shape, endpoint=True).astype(dtype)
        else:
            feed[info.name] = np.zeros(shape, dtype=dtype)
    return [feed]


def model_ir_version(path: Path) -> int | None:
    try:
        import onnx

        return int(onnx.load(str(path), load_external_data=False).ir_version)
    except Exception:  # noqa: BLE001 - an unreadable model fails later in ONNX Runtime, with its own message
        return None


def ort_message(exc: Exception) -> str:
    """ONNX Runtime's own message: the C++ tool prints Ort::Exception::what(), without the Python prefix."""
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(exc)).strip()


def statistics(times_s: list[float]) -> list[str]:
    ordered = sorted(times_s)
    total = len(ordered)
    lines = [f"Min Latency: {fmt(ordered[0])} s", f"Max Latency: {fmt(ordered[-1])} s"]
    lines += [f"{label} Latency: {fmt(ordered[int(total * q)])} s" for label, q in QUANTILES]
    return lines


def run(argv: list[str]) -> int:
    values, positional = parse_args(argv)
    mode = values.get("m", "duration")
    if mode not in ("duration", "times"):
        raise usage_failure()
    provider = values.get("e", "cpu")
    if provider not in PROVIDERS:
        raise usage_failure()
    repeated_times, duration_s = 1000, 600
    if "r" in values:
        if values["r"] == 0:
            raise usage_failure()
        repeated_times, mode = values["r"], "times"
    if "t" in values:
        if values["t"] <= 0:
            raise usage_failure()
        duration_s, mode = values["t"], "duration"
    threads = values.get("x", 0)
    if threads < 0:
        raise usage_failure()
    opt_level = values.get("o", 99)
    if opt_level not in (0, 1, 2, 3, 99):
        if opt_level < 99:
            raise usage_failure()
        opt_level = 99
    if len(positional) not in (1, 2):
        raise usage_failure()
    model = Path(positional[0])
    result_file = positional[1] if len(positional) == 2 else None
    show_stats = bool(values.get("s")) or result_file is None
    model_name = model.parent.name or "."

    if threads > 0:
        out(f"Setting intra_op_num_threads to {threads}\n")
    sleep_s = os.environ.get("FARMBENCH_ORT_STANDIN_SLEEP_S")
    if sleep_s:
        time.sleep(float(sleep_s))

    import onnxruntime as ort

    max_ir = os.environ.get("FARMBENCH_ORT_STANDIN_MAX_IR_VERSION")
    if max_ir:
        ir = model_ir_version(model)
        if ir is not None and ir > int(max_ir):
            err(f"Load model from {model} failed:model.cc:0 onnxruntime::Model::Model Unsupported model IR version: "
                f"{ir}, max supported IR version: {int(max_ir)}\n")
            return 255
    provider_name, build_name = PROVIDERS[provider]
    if provider_name not in ort.get_available_providers():
        err(f"ort_test_session.cc:0 onnxruntime::perftest::OnnxRuntimeTestSession::OnnxRuntimeTestSession "
            f"{build_name} is not supported in this build\n\n")
        return 255

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    levels = {0: "ORT_DISABLE_ALL", 1: "ORT_ENABLE_BASIC", 2: "ORT_ENABLE_EXTENDED", 3: "ORT_ENABLE_LAYOUT",
              99: "ORT_ENABLE_ALL"}
    level = getattr(ort.GraphOptimizationLevel, levels[opt_level], None)
    options.graph_optimization_level = level if level is not None else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if values.get("p"):
        options.enable_profiling = True
        options.profile_file_prefix = values["p"]
    created = time.perf_counter()
    try:
        session = ort.InferenceSession(str(model), options, providers=[provider_name])
    except Exception as exc:  # noqa: BLE001 - every ONNX Runtime failure here is printed as the tool prints it
        err(ort_message(exc) + "\n")
        return 255
    session_s = time.perf_counter() - created

    feeds = generated_inputs(session, values.get("S", -1)) if values.get("I") else \
        load_test_data(model, session, model_name)

    def one(index: int) -> float:
        try:
            start = time.perf_counter()
            session.run(None, feeds[index % len(feeds)])
            return time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - the tool catches every exception of a run the same way
            out(f"Run failed:PerformanceRunner::RunOneIteration caught exception: {ort_message(exc)}\n")
            raise Exit(255) from None

    warm_start = time.perf_counter()
    one(0)
    first_ms = int((time.perf_counter() - warm_start) * 1000)  # duration_cast<milliseconds> truncates

    times_s: list[float] = []
    cpu_before = os.times()
    loop_start = time.perf_counter()
    while (len(times_s) < repeated_times) if mode == "times" else (sum(times_s) < duration_s):
        times_s.append(one(len(times_s)))
        if values.get("v"):
            out(f"iteration:{len(times_s)},time_cost:{fmt(times_s[-1])}\n")
    wall_s = time.perf_counter() - loop_start
    cpu_after = os.times()
    busy_s = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    cpu_percent = int(100.0 * busy_s / max(wall_s, 1e-9) / (os.cpu_count() or 1))
    import resource

    peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if values.get("p"):
        session.end_profiling()

    total_s = sum(times_s)
    out(f"Session creation time cost: {fmt(session_s)} s\n"
        f"First inference time cost: {first_ms} ms\n"
        f"Total inference time cost: {fmt(total_s)} s\n"
        f"Total inference requests: {len(times_s)}\n"
        f"Average inference time cost total: {total_s / len(times_s) * 1000:.6f} ms\n"
        f"Total inference run time: {fmt(wall_s)} s\n"
        f"Number of inferences per second: {fmt(len(times_s) / wall_s)}\n"
        f"Avg CPU usage: {cpu_percent} %\n"
        f"Peak working set size: {peak_bytes} bytes\n")

    have_file = result_file is not None
    if result_file is not None:
        try:
            handle = open(result_file, "a")  # noqa: SIM115 - closed below; append, as the tool opens it
        except OSError:
            err(f"failed to open result file '{result_file}'. will dump stats to output.\n")
            have_file, show_stats = False, True
        else:
            with handle:
                handle.writelines(f"{model_name},{fmt(seconds)},{peak_bytes},{cpu_percent},{index}\n"
                                  for index, seconds in enumerate(times_s))
                if show_stats and times_s:
                    handle.write("\n" + "\n".join(statistics(times_s)) + "\n")
    if not have_file:
        out(f"Avg CPU usage:{cpu_percent}\nPeak working set size:{peak_bytes}\nRuns:{len(times_s)}\n")
    if show_stats and times_s:
        out("\n".join(statistics(times_s)) + "\n")
    return 0


def main(argv: list[str]) -> int:
    try:
        return run(argv)
    except Exit as done:
        return done.code


WRAPPER = """#!/bin/sh
# farmbench onnxruntime_perf_test stand-in (tests/peers/ort_perf_test_standin.py)
exec {python} {script} "$@"
"""


def install(target: Path | str) -> Path:
    """Write an executable ``sh`` wrapper at ``target`` that runs this stand-in with the current interpreter."""
    import shlex

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(WRAPPER.format(python=shlex.quote(sys.executable),
                                     script=shlex.quote(str(Path(__file__).resolve()))))
    target.chmod(0o755)
    return target


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
