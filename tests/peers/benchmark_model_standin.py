"""A stand-in for TFLite/LiteRT's native ``benchmark_model`` (a test peer): same flags, same log format, real runs.

It runs the model for real with the host's ``ai_edge_litert`` Interpreter (each ``invoke()`` timed with
``perf_counter``) and prints what LiteRT's ``benchmark_model`` prints, in the same structure as
``tests/data/benchmark_model/litert_xnnpack_partial_percentiles.txt``: every line on stderr with a ``INFO: ``,
``WARNING: `` or ``ERROR: `` prefix (the tool's minimal logger), the warm-up and timed ``count=`` lines (integer
microseconds, ``avg`` with up to 6 significant digits like a C++ stream), the ``Inference timings in us:`` summary
and the memory footprint lines.

Flags (``--flag=value``; booleans ``true``/``false``/``1``/``0``): graph, num_threads, warmup_runs,
warmup_min_secs, num_runs, min_secs, max_secs, use_xnnpack, use_gpu, use_nnapi, nnapi_accelerator_name,
report_peak_memory_footprint, enable_op_profiling, input_layer_value_files (``name:path,...``; ``::`` is a literal
``:`` in a name, as in the real tool; the name is a tensor name or a signature input name), output_filepath (the
last run's outputs, raw bytes, concatenated in output order). Unknown flags are reported as the real tool does
(``WARNING: Unconsumed cmdline flags: ...``) and ignored.

Delegates, as far as a host can honour them:

* ``--use_xnnpack=true``: the XNNPACK delegate (the interpreter's default one) is applied and the coverage line is
  printed, worked out from the interpreter's nodes: the number of ``DELEGATE`` nodes, and whether any original
  node stayed outside every delegate partition (full / partial w/ N delegate kernels / not executed).
* ``--use_xnnpack=false``: no delegate at all (builtin kernels only). Unset: the default delegate is applied
  silently, as current LiteRT does.
* ``--use_gpu=true``: there is no GPU here: ``ERROR: Failed to apply GPU delegate.`` / ``Benchmarking failed.``,
  exit 1.
* ``--use_nnapi=true``: NNAPI does not exist on the host: the "will not be executed by the delegate" line and a
  CPU run.

Fault switches (environment):

* ``FARMBENCH_STANDIN_OP_VERSION=1`` (or ``OP:VERSION``, e.g. ``MUL:5``): print the op-version failure the real tool
  prints for a model newer than the binary (format of ``op_version_mul.txt``; default op CONV_2D version 8) and
  exit 1.
* ``FARMBENCH_STANDIN_SLEEP_S=N``: sleep N seconds after the parameter lines, before loading the model (a hung
  binary, for timeout tests).

Run it as ``python benchmark_model_standin.py --graph=...``; :func:`install` writes a ``sh`` wrapper that execs it
with this interpreter (the ADB emulator runs commands with ``/bin/sh`` and a PATH without the venv).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

FLAGS: dict[str, str] = {
    # flag: kind (int, float, bool, str)
    "graph": "str",
    "num_threads": "int",
    "warmup_runs": "int",
    "warmup_min_secs": "float",
    "num_runs": "int",
    "min_secs": "float",
    "max_secs": "float",
    "use_xnnpack": "bool",
    "use_gpu": "bool",
    "use_nnapi": "bool",
    "nnapi_accelerator_name": "str",
    "report_peak_memory_footprint": "bool",
    "enable_op_profiling": "bool",
    "input_layer_value_files": "str",
    "output_filepath": "str",
}
DEFAULTS: dict[str, Any] = {
    "graph": "", "num_threads": -1, "warmup_runs": 1, "warmup_min_secs": 0.5, "num_runs": 50, "min_secs": 1.0,
    "max_secs": 150.0, "use_xnnpack": None, "use_gpu": False, "use_nnapi": False, "nnapi_accelerator_name": "",
    "report_peak_memory_footprint": False, "enable_op_profiling": False, "input_layer_value_files": "",
    "output_filepath": "",
}
# How the real tool labels each parameter in "Label: [value]" lines (only the flags given are logged).
LABELS: dict[str, str] = {
    "graph": "Graph", "num_threads": "Num threads", "warmup_runs": "Min warmup runs",
    "warmup_min_secs": "Min warmup runs duration (seconds)", "num_runs": "Min num runs",
    "min_secs": "Min runs duration (seconds)", "max_secs": "Max runs duration (seconds)",
    "use_xnnpack": "Use xnnpack", "use_gpu": "Use gpu", "use_nnapi": "Use NNAPI",
    "nnapi_accelerator_name": "NNAPI accelerator name",
    "report_peak_memory_footprint": "Report the peak memory footprint", "enable_op_profiling": "Enable op profiling",
    "input_layer_value_files": "Input layer values files",
    "output_filepath": "File path to export outputs layer as binary data",
}
DEFAULT_OP_VERSION_FAULT = ("CONV_2D", 8)


def log(level: str, message: str) -> None:
    sys.stderr.write(f"{level}: {message}\n")
    sys.stderr.flush()


def info(message: str) -> None:
    log("INFO", message)


class FlagError(Exception):
    pass


def parse_flags(argv: list[str]) -> tuple[dict[str, Any], set[str], list[str]]:
    """(values with defaults filled in, the flags given, the unconsumed arguments)."""
    values = dict(DEFAULTS)
    given: set[str] = set()
    unconsumed: list[str] = []
    for arg in argv:
        name, eq, text = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or name not in FLAGS:
            unconsumed.append(arg)
            continue
        kind = FLAGS[name]
        try:
            if kind == "int":
                value: Any = int(text)
            elif kind == "float":
                value = float(text)
            elif kind == "bool":
                if not eq or text.lower() in ("true", "1"):
                    value = True
                elif text.lower() in ("false", "0"):
                    value = False
                else:
                    raise ValueError(text)
            else:
                value = text
        except ValueError as err:
            raise FlagError(f"Failed to parse the value of flag --{name}: {text!r}") from err
        values[name] = value
        given.add(name)
    return values, given, unconsumed


def split_input_files(spec: str) -> list[tuple[str, str]]:
    """``name:path,name:path`` with ``::`` as a literal ``:`` in the name (the real tool's escaping)."""
    pairs = []
    for item in filter(None, spec.split(",")):
        marker = "\0"
        escaped = item.replace("::", marker)
        name, sep, path = escaped.partition(":")
        if not sep or not name or not path:
            raise FlagError(f"Wrong input value file item specified: {item}")
        pairs.append((name.replace(marker, ":"), path.replace(marker, ":")))
    return pairs


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB (2**20 bytes), from /proc/self/status."""
    current = peak = 0.0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024.0
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return current, peak


def fmt(value: float) -> str:
    """A double as a C++ ostream prints it by default (%g, 6 significant digits)."""
    return f"{value:g}"


def stat_line(samples_us: list[int]) -> str:
    """The tool's Stat<int64_t> line: ``count=1 curr=.. p5=..`` for one sample, the full line otherwise."""
    count = len(samples_us)
    if count == 0:
        return "count=0"
    ordered = sorted(samples_us)

    def percentile(p: float) -> int:
        return ordered[min(count - 1, max(0, math.ceil(p / 100.0 * count) - 1))]

    pct = f"p5={percentile(5)} median={percentile(50)} p95={percentile(95)}"
    if count == 1:
        return f"count=1 curr={samples_us[0]} {pct}"
    avg = sum(samples_us) / count
    std = round(math.sqrt(sum((s - avg) ** 2 for s in samples_us) / count))
    return (f"count={count} first={samples_us[0]} curr={samples_us[-1]} min={ordered[0]} max={ordered[-1]} "
            f"avg={fmt(avg)} std={std} {pct}")


def delegate_coverage(ops: list[dict[str, Any]]) -> tuple[int, int]:
    """(delegate kernels, original nodes left outside every delegate partition).

    After a delegate is applied the interpreter keeps the replaced nodes and appends one ``DELEGATE`` node per
    partition. A partition is everything reached walking back from a DELEGATE node's outputs through producers,
    stopping at its inputs (every tensor entering a partition is one of its inputs).
    """
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer: dict[int, int] = {}
    for op in originals:
        for tensor in op["outputs"]:
            producer[int(tensor)] = int(op["index"])
    by_index = {int(op["index"]): op for op in originals}
    inside: set[int] = set()
    for node in delegates:
        stop = {int(t) for t in node["inputs"]}
        todo = [int(t) for t in node["outputs"]]
        seen: set[int] = set()
        while todo:
            tensor = todo.pop()
            if tensor in seen or tensor in stop or tensor not in producer:
                continue
            seen.add(tensor)
            index = producer[tensor]
            if index not in inside:
                inside.add(index)
                todo.extend(int(t) for t in by_index[index]["inputs"] if int(t) >= 0)
    return len(delegates), len(originals) - len(inside)


def op_version_fault(spec: str) -> tuple[str, int]:
    if ":" in spec:
        op, _, version = spec.partition(":")
        return op.strip().upper(), int(version)
    return DEFAULT_OP_VERSION_FAULT


def run_loop(interpreter: Any, min_runs: int, min_secs: float, max_secs: float) -> list[int]:
    """The tool's loop: at least ``min_runs`` iterations and at least ``min_secs``, but stop past ``max_secs``."""
    samples: list[int] = []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if not ((len(samples) < min_runs or elapsed < min_secs) and (max_secs <= 0 or elapsed < max_secs)):
            break
        t0 = time.perf_counter()
        interpreter.invoke()
        samples.append(round((time.perf_counter() - t0) * 1e6))
    return samples


def fail(*errors: str) -> int:
    for message in errors:
        log("ERROR", message)
    return 1


def main(argv: list[str]) -> int:
    start_rss, _ = rss_mb()
    try:
        params, given, unconsumed = parse_flags(argv)
        input_files = split_input_files(params["input_layer_value_files"])
    except FlagError as err:
        return fail(str(err))
    info("STARTING!")
    if unconsumed:
        log("WARNING", "Unconsumed cmdline flags: " + " ".join(unconsumed))
    info("Log parameter values verbosely: [0]")
    for name in FLAGS:
        if name in given:
            value = params[name]
            shown = ("1" if value else "0") if isinstance(value, bool) else (fmt(value) if isinstance(value, float)
                                                                            else str(value))
            info(f"{LABELS[name]}: [{shown}]")
    if not params["graph"]:
        return fail("Please specify the name of your TF Lite input file with --graph", "Benchmarking failed.")

    sleep_s = os.environ.get("FARMBENCH_STANDIN_SLEEP_S")
    if sleep_s:
        time.sleep(float(sleep_s))

    graph = params["graph"]
    try:
        model_size = os.path.getsize(graph)
        with open(graph, "rb"):
            pass
    except OSError:
        log("ERROR", f"Could not open '{graph}'.")
        log("ERROR", f"Failed to mmap model {graph}")
        sys.stderr.write("Benchmarking failed.\n")
        return 1
    info(f"Loaded model {graph}")

    fault = os.environ.get("FARMBENCH_STANDIN_OP_VERSION", "")
    if fault and fault != "0":
        op, version = op_version_fault(fault)
        log("ERROR", f"Didn't find op for builtin opcode '{op}' version '{version}'. An older version of this "
                     "builtin might be supported. Are you using an old TFLite binary with a newer model?\n")
        log("ERROR", "Registration failed.\n")
        sys.stderr.write("Failed to initialize the interpreter\nBenchmarking failed.\n")
        return 1

    if params["use_gpu"]:
        log("ERROR", "Failed to apply GPU delegate.")
        sys.stderr.write("Benchmarking failed.\n")
        return 1

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    threads = params["num_threads"]
    use_xnnpack = params["use_xnnpack"]
    resolver = (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if use_xnnpack is False
                else OpResolverType.AUTO)
    init_start = time.perf_counter()
    try:
        interpreter = Interpreter(model_path=graph, num_threads=threads if threads > 0 else None,
                                  experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        log("ERROR", str(err).strip())
        sys.stderr.write("Failed to initialize the interpreter\nBenchmarking failed.\n")
        return 1
    init_us = (time.perf_counter() - init_start) * 1e6
    info(f"#threads used for CPU inference: [{threads if threads > 0 else os.cpu_count() or 1}]")

    if use_xnnpack:
        info("XNNPACK delegate created.")
        # The interpreter has no public API for its nodes.
        kernels, outside = delegate_coverage(interpreter._get_ops_details())
        if kernels == 0:
            info("Though XNNPACK delegate is explicitly applied, the model graph will not be executed by the "
                 "delegate.")
        elif kernels == 1 and outside == 0:
            info("Explicitly applied XNNPACK delegate, and the model graph will be completely executed by the "
                 "delegate.")
        else:
            info("Explicitly applied XNNPACK delegate, and the model graph will be partially executed by the "
                 f"delegate w/ {kernels} delegate kernels.")
    if params["use_nnapi"]:
        info("Though NNAPI delegate is explicitly applied, the model graph will not be executed by the delegate.")
    info(f"The input model file size (MB): {fmt(model_size / 1e6)}")
    info(f"Initialized session in {fmt(init_us / 1000.0)}ms.")

    # Inputs: the given files, else random data (the tool fills unlisted inputs with random values).
    details = interpreter.get_input_details()
    aliases: dict[str, int] = {}
    for key in interpreter.get_signature_list():
        try:
            for alias, detail in interpreter.get_signature_runner(key).get_input_details().items():
                aliases.setdefault(alias, int(detail["index"]))
        except Exception:  # noqa: BLE001, S112 - signatures are optional; tensor names always work
            continue
    import numpy as np

    rng = np.random.default_rng(0)
    from_files: dict[int, bytes] = {}
    for name, path in input_files:
        index = next((int(d["index"]) for d in details if d["name"] == name), aliases.get(name))
        if index is None:
            return fail(f"Cannot find input layer '{name}' in the model.", "Benchmarking failed.")
        detail = next(d for d in details if int(d["index"]) == index)
        expected = int(np.prod(detail["shape"])) * np.dtype(detail["dtype"]).itemsize
        try:
            data = Path(path).read_bytes()
        except OSError:
            return fail(f"Failed to open input layer value file '{path}'.", "Benchmarking failed.")
        if len(data) != expected:
            return fail(f"The size of the input layer value file '{path}' is {len(data)} bytes, expected "
                        f"{expected} for input '{name}'.", "Benchmarking failed.")
        from_files[index] = data
    for detail in details:
        index = int(detail["index"])
        dtype = np.dtype(detail["dtype"])
        if index in from_files:
            value = np.frombuffer(from_files[index], dtype=dtype).reshape(detail["shape"])
        elif dtype.kind == "f":
            value = rng.uniform(-1.0, 1.0, size=detail["shape"]).astype(dtype)
        elif dtype.kind in "iu":
            info_ = np.iinfo(dtype)
            value = rng.integers(info_.min, info_.max, size=detail["shape"], endpoint=True).astype(dtype)
        else:
            value = np.zeros(detail["shape"], dtype=dtype)
        interpreter.set_tensor(index, value)
    init_rss, _ = rss_mb()

    info(f"Running benchmark for at least {params['warmup_runs']} iterations and at least "
         f"{fmt(params['warmup_min_secs'])} seconds but terminate if exceeding {fmt(params['max_secs'])} seconds.")
    warmup = run_loop(interpreter, params["warmup_runs"], params["warmup_min_secs"], params["max_secs"])
    info(stat_line(warmup))
    info(f"Running benchmark for at least {params['num_runs']} iterations and at least "
         f"{fmt(params['min_secs'])} seconds but terminate if exceeding {fmt(params['max_secs'])} seconds.")
    timed = run_loop(interpreter, params["num_runs"], params["min_secs"], params["max_secs"])
    info(stat_line(timed))

    if params["output_filepath"]:
        with open(params["output_filepath"], "wb") as handle:
            for detail in interpreter.get_output_details():
                handle.write(np.ascontiguousarray(interpreter.get_tensor(detail["index"])).tobytes())

    if params["enable_op_profiling"]:
        info("Operator-wise Profiling Info for Regular Benchmark Runs:")
        info("============================== Run Order ==============================")
        info("\t             [node type]\t  [index]")
        for op in interpreter._get_ops_details():
            info(f"\t{op['op_name']:>24}\t{op['index']:>9}")
        info("(the stand-in has no per-operator timings)")

    first = warmup[0] if warmup else (timed[0] if timed else 0)
    warmup_avg = sum(warmup) / len(warmup) if warmup else 0.0
    inference_avg = sum(timed) / len(timed) if timed else 0.0
    info(f"Inference timings in us: Init: {fmt(init_us)}, First inference: {first}, Warmup (avg): "
         f"{fmt(warmup_avg)}, Inference (avg): {fmt(inference_avg)}")
    overall_rss, peak_rss = rss_mb()
    info("Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the "
         "actual memory footprint of the model at runtime. Take the information at your discretion.")
    info(f"Memory footprint delta from the start of the tool (MB): init={fmt(init_rss - start_rss)} "
         f"overall={fmt(overall_rss - start_rss)}")
    if params["report_peak_memory_footprint"]:
        info(f"Overall peak memory footprint (MB) via periodic monitoring: {fmt(peak_rss)}")
    return 0


WRAPPER = """#!/bin/sh
# farmbench benchmark_model stand-in (tests/peers/benchmark_model_standin.py)
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
