#!/usr/bin/env python3
"""farmbench agent: the one module that runs on a device (a Linux board, or the host as device ``local``).

It is copied to the device as this single file and run there as ``python3 agent.py MODE ...``. So it imports only
the standard library at import time (numpy too, but a missing numpy still lets ``probe`` answer), imports the
runtimes lazily, keeps to Python 3.8 syntax and stdlib, and imports nothing from farmbench.

Usage::

    python3 agent.py probe [--work-dir DIR] [--runtimes litert,tflite_runtime,tensorflow,onnxruntime]
    python3 agent.py bench --model PATH [--runtime auto|litert|tflite_runtime|tensorflow|onnxruntime]
        [--threads N] [--warmup-runs N] [--warmup-min-s S] [--runs N] [--min-s S] [--max-s S]
        [--xnnpack on|off] [--ort-provider NAME] [--ort-opt-level disable|basic|extended|all] [--seed N]
        [--inputs FILE.npy] [--dump-outputs FILE.npy] [--input-quant SCALE,ZP] [--output-quant SCALE,ZP]
        [--affinity CPU_LIST]

Output contract
---------------
Exactly one JSON document on stdout, carrying ``"schema_version": 1``; everything else (runtime logs, numpy's
banners, our own notes) goes to stderr. File descriptor 1 is pointed at stderr while the agent works, so even a
native library that printf()s cannot corrupt the document. The exit status is 0 whenever the document was printed,
including when the benchmark failed: the document then has ``"status": "failed"``, an ``error_class`` (below), an
``error_message`` saying what to do, the ``error_stage`` and the raw exception text. Only argument errors exit 2
(argparse usage on stderr, nothing on stdout).

Measurement protocol (``bench``)
--------------------------------
Every duration is ``time.perf_counter_ns()`` on the device; the host never times anything. In order:

1. Affinity. ``--affinity 0-3,6`` is applied with ``os.sched_setaffinity`` before the runtime is imported, so
   every thread the runtime creates inherits it. ``affinity`` records ``os.sched_getaffinity`` as actually in effect.
2. Runtime import, timed as ``runtime_import_ns`` (not part of init).
3. Init, ``init_ns``: load + allocate. TFLite (LiteRT, tflite-runtime, tf.lite): ``Interpreter(model_path,
   num_threads, op resolver)`` + ``allocate_tensors()``, which includes applying the default XNNPACK delegate.
   ONNX Runtime: ``InferenceSession(...)`` (graph optimisation included) + creating its IOBinding.
   ``rss_before_load_kib`` is the process's peak RSS just before, ``peak_rss_after_load_kib`` just after.
4. Inputs are prepared (generated or read and quantised) before anything below, outside every timer.
5. First inference, ``first_inference_ns``: the first invoke after init, timed alone. It pays one-off work
   (weight packing, lazy allocation) and is neither a warm-up run nor a sample.
6. Warm-up: invoke until BOTH ``--warmup-runs`` runs are done AND ``--warmup-min-s`` seconds have passed since
   warm-up began, or until ``--max-s`` (flag ``warmup_stopped_by_max_s``). Kept: ``warmup_runs``, ``warmup_s``.
   With 0 runs and 0 seconds there is no warm-up at all.
7. Timed runs: invoke until BOTH ``--runs`` runs are done AND ``--min-s`` seconds have passed since the timed
   phase began; but stop once ``--max-s`` seconds have passed even if not (``stopped_by_max_s: true`` and a flag).
   The stop test follows each iteration, so there is always at least one sample and the phase may overrun
   ``--max-s`` by one iteration. ``latencies_ns`` holds every iteration; ``timed_runs`` is its length;
   ``timed_wall_s`` is the wall time of the whole phase, bookkeeping included.

   Inside the timer there is exactly one call: TFLite ``interpreter.invoke()``; ONNX Runtime
   ``session.run_with_iobinding(binding)`` with the inputs already bound (ORT allocates the outputs inside the
   call, as ``session.run`` does). Outside the timer: setting inputs (``set_tensor`` / ``bind_cpu_input``) -- once
   before the first inference when there is one input row, before every iteration when ``--inputs`` has several
   rows (row ``i % N``) -- appending the sample and the stop test. The garbage collector is disabled during
   warm-up and timed runs so that a collection cannot land inside a sample.
8. ``--dump-outputs``: after the timed loop, each input row is run once (not timed) and the outputs are saved.

Inputs: by default one seeded (``--seed``) random tensor per model input matching its dtype and shape: int8/uint8
over their full range; floats uniform in [-1, 1] (the model's expected float range is unknown). ``--inputs FILE.npy``
is a float32 batch ``(N, ...)``, one inference per row; for an integer-input model the rows are quantised with the
input tensor's scale and zero point (TFLite carries them; for ONNX Runtime pass ``--input-quant SCALE,ZP``).
``--dump-outputs FILE.npy`` saves float32 outputs, dequantised for integer outputs (``--output-quant`` for ONNX
Runtime), concatenated over the rows; the raw dtype is recorded. Output k > 0 goes to ``FILE.out<k>.npy``.

Flags (``flags``): ``tflite_runtime_int8_no_xnnpack`` (tflite-runtime never hands int8 models to XNNPACK),
``xnnpack_requested_but_unavailable`` (XNNPACK on, but no delegate node in the graph), ``xnnpack_partially_applied``,
``xnnpack_off_unavailable`` (this runtime cannot turn the default delegate off), ``ort_provider_not_applied``,
``high_cv`` (sample CV of ``latencies_ns`` > 10%), ``stopped_by_max_s``, ``warmup_stopped_by_max_s``,
``few_samples`` (< 10 timed runs), ``cpu_contention`` (the process's threads waited for a CPU, runnable, for more
than 10% of the timed phase: ``timed_run_delay_s``, from Linux schedstat; other work shared the CPUs), ``host_busy``
(other work kept more than half a CPU busy on average during the timed phase -- ``timed_other_cpus``, from
/proc/stat, steal included -- slowing the benchmark through shared caches, memory bandwidth or SMT siblings).

Error classes: ``numpy_abi`` (a runtime built for numpy 1.x under numpy 2), ``op_version`` (the runtime is older than
the converter that built the model), ``unsupported_model`` (not a model this runtime can load), ``missing_runtime``
(the runtime -- or a name this agent does not know --, an execution provider or numpy is not there),
``bad_input`` (model path, --inputs, --dump-outputs, affinity), ``runtime_error`` (anything else the runtime raised).
A runtime that kills the process (a signal) leaves no document; the host reports the exit status instead.

Defaults: ``--runtime auto --threads 1`` (0: the runtime's own default) ``--warmup-runs 10 --warmup-min-s 0
--runs 50 --min-s 0 --max-s 60 --xnnpack on --ort-provider CPUExecutionProvider --ort-opt-level all --seed 0``.

Document fields (``bench``; null where a stage was not reached):
  schema_version, agent_version, mode, status ("ok" | "failed"), error_class, error_message, error_stage,
  error_raw (the exception chain, "Type: message" each), error_detail (e.g. {"op", "op_version"}), flags,
  hostname, python_version, python_implementation, python_executable, python_pointer_bits, numpy_version,
  config (every argument as given), runtime {name, module, version, auto_skipped [{name, error}]},
  model {path, sha256, size_bytes, inputs, outputs: [{name, index, shape, shape_signature, dtype, quant_scale,
  quant_zero_point}]}, applied {threads, xnnpack (a delegate node exists), op_resolver, xnnpack_delegate_nodes,
  xnnpack_fully_delegated, xnnpack_undelegated_ops, ort_providers, ort_opt_level}, input_source ("random" | "file"),
  input_rows, timer (what is inside the timer, in words), runtime_import_ns, init_ns, first_inference_ns,
  warmup_runs, warmup_s, warmup_stopped_by_max_s, timed_runs, timed_wall_s, stopped_by_max_s, latencies_ns,
  summary {median_ns, mean_ns, min_ns, max_ns, stdev_ns, cv} (a convenience; the host recomputes from latencies_ns),
  rss_before_load_kib, peak_rss_after_load_kib, peak_rss_kib (getrusage ru_maxrss, KiB on every OS), affinity,
  loadavg_before, loadavg_after, start_monotonic_ns, end_monotonic_ns, timed_start_boottime_s,
  timed_end_boottime_s (the timed phase's start and end on CLOCK_BOOTTIME in seconds, the clock of
  ``/proc/uptime`` that the power sampler stamps samples with; null without that clock), timed_run_delay_s (time
  the process's threads spent runnable but waiting for a CPU during the timed phase; absent where the kernel does
  not report it), timed_other_cpus (CPUs busy with other work on average over the timed phase, steal included;
  absent where /proc/stat is missing), start_unix_s, end_unix_s,
  start_wall, end_wall (ISO 8601 UTC), dump {rows, files [{path, output, shape, raw_dtype, dequantized, quant_scale,
  quant_zero_point}]}.
``probe``: schema_version, agent_version, mode, status, hostname, python_*, platform {system, release, version,
  machine, libc}, arch, os_release, cpu {model, hardware, board_model, arm_parts}, logical_cores, affinity,
  cpufreq [{policy, cpus, governor, cpuinfo_min_freq_khz, cpuinfo_max_freq_khz, scaling_max_freq_khz,
  scaling_cur_freq_khz}], mem_total_kib, loadavg, work_dir, work_dir_free_bytes, numpy {importable, version,
  import_error}, runtimes [{name, module, importable, version, import_error, import_ns, usable, problem_class,
  problem, providers (onnxruntime)}]. ``usable`` is false when the runtime imports but cannot run here (tflite-runtime
  built for numpy 1.x under numpy 2, read from its extension module).

Document format history (bump SCHEMA_VERSION on any change a reader must know about):
  1 -- first version. Fields added since, without a version change (readers ignore what they do not know):
       timed_start_boottime_s and timed_end_boottime_s; timed_run_delay_s, timed_other_cpus and the cpu_contention and host_busy flags.
"""

# This file runs on boards with Python 3.8: typing.List/Dict/Optional, no str.removesuffix, no datetime.UTC.
# ruff: noqa: UP006, UP035, UP045, UP017, FURB188
from __future__ import annotations

import argparse
import datetime
import gc
import glob
import hashlib
import importlib
import json
import math
import os
import platform
import re
import socket
import statistics
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

try:
    import numpy as np

    _NUMPY_ERROR: Optional[str] = None
except Exception as _exc:  # noqa: BLE001 -- a broken numpy must still let `probe` say so
    _NUMPY_ERROR = "{}: {}".format(type(_exc).__name__, str(_exc).strip().splitlines()[0] if str(_exc).strip() else "")

try:
    import resource
except ImportError:  # not on Windows; peak RSS is then reported as null
    resource = None  # type: ignore[assignment]

if TYPE_CHECKING:
    Array = np.ndarray[Any, np.dtype[Any]]

SCHEMA_VERSION = 1
AGENT_VERSION = "1.0"

RUNTIMES = ("litert", "tflite_runtime", "tensorflow", "onnxruntime")
RUNTIME_MODULES = {"litert": "ai_edge_litert", "tflite_runtime": "tflite_runtime", "tensorflow": "tensorflow",
                   "onnxruntime": "onnxruntime"}
# Distribution names, for messages that tell the user what to install.
RUNTIME_PACKAGES = {"litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime", "tensorflow": "tensorflow",
                    "onnxruntime": "onnxruntime"}
TFLITE_RUNTIMES = ("litert", "tflite_runtime", "tensorflow")
ORT_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                  "all": "ORT_ENABLE_ALL"}
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
              "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool"}
HIGH_CV = 0.10  # pyperf's threshold: a standard deviation over 10% of the mean makes a number suspect
FEW_SAMPLES = 10
# Runnable-but-waiting time of the process's threads over the timed phase, as a share of its wall time, above which
# the measurement shared its CPUs with other work (a busy host, not the model, may explain a slower number).
CPU_CONTENTION = 0.10
# CPUs kept busy by other work (or taken by the hypervisor: steal) on average over the timed phase, above which the
# host was busy. Work on *other* CPUs slows a benchmark too, through shared caches, memory bandwidth and SMT
# siblings: on a 2-vCPU VM a busy sibling made single-threaded inference 1.7x slower with no run-queue wait at all.
HOST_BUSY_CPUS = 0.5
# Common Arm core part numbers (/proc/cpuinfo "CPU part"), for boards whose cpuinfo has no "model name".
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
             "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3",
             "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4", "0x004": "NVIDIA Carmel"}


# ----------------------------------------------------------------------------------------------------------------
# Error classification (pure functions over message text, so tests can feed them real captured messages)

class Failure(NamedTuple):
    error_class: str
    error_message: str
    detail: Dict[str, Any]


class BenchFailure(Exception):
    """A classified failure; becomes a ``status: failed`` document."""

    def __init__(self, error_class: str, error_message: str, detail: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(error_message)
        self.error_class = error_class
        self.error_message = error_message
        self.detail = detail or {}


_OP_VERSION_RE = re.compile(r"Didn't find op for builtin opcode '([^']+)' version '(\d+)'")
_CUSTOM_OP_RE = re.compile(r"Encountered unresolved custom op: ([^.\s]+)")
_ORT_IR_RE = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")
# What a numpy-1.x extension module says when numpy 2 is installed: the C API capsule lookup fails
# ("_ARRAY_API not found"), then import_array() reports "numpy.core.multiarray failed to import".
_NUMPY_ABI_MARKERS = ("_ARRAY_API not found", "numpy.core.multiarray failed to import",
                      "numpy.core._multiarray_umath failed to import", "compiled using NumPy 1.x")
_BAD_MODEL_MARKERS = ("not a valid Flatbuffer", "model identifier", "INVALID_PROTOBUF", "Protobuf parsing failed",
                      "INVALID_GRAPH", "Failed to load model", "Could not open", "NO_MODEL", "Model is not valid",
                      "Could not find an implementation for")


def parse_op_version(text: str) -> Optional[Tuple[str, int]]:
    """The (op, version) of a TFLite "Didn't find op for builtin opcode 'X' version 'N'" message, else None."""
    match = _OP_VERSION_RE.search(text)
    return (match.group(1), int(match.group(2))) if match else None


def exception_messages(exc: BaseException) -> List[str]:
    """``Type: message`` for the exception and everything in its __cause__/__context__ chain. The numpy ABI
    failure, for one, only says what happened two links down ("_ARRAY_API not found")."""
    out: List[str] = []
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out.append(f"{type(current).__name__}: {str(current).strip()}")
        current = current.__cause__ or current.__context__
    return out


def classify_failure(messages: Sequence[str], stage: str, runtime: Optional[str] = None,
                     runtime_version: Optional[str] = None, model_path: Optional[str] = None) -> Failure:
    """Map raw exception text to an error class and a message that says what to do."""
    text = "\n".join(messages)
    first = _first_line(messages[0]) if messages else ""
    label = "{} {}".format(RUNTIME_PACKAGES.get(runtime or "", runtime or "the runtime"), runtime_version or "").strip()
    if any(marker in text for marker in _NUMPY_ABI_MARKERS):
        numpy_version = _numpy_version() or "2.x"
        if runtime == "tflite_runtime":
            message = (f"{label} was built for numpy 1.x; install numpy<2 on the board or use ai-edge-litert "
                       f"(numpy {numpy_version} is installed)")
        else:
            message = (f"{label} was built for numpy 1.x but numpy {numpy_version} is installed; install numpy<2 "
                       f"on the board or a build of {label} made for numpy 2")
        return Failure("numpy_abi", message, {"numpy_version": numpy_version})
    op = parse_op_version(text)
    if op is not None:
        message = (f"the model needs builtin op {op[0]} version {op[1]}, which {label} does not have: the runtime is "
                   "older than the converter that built this model. Use a newer runtime on the board "
                   "(ai-edge-litert) or convert with an older TensorFlow")
        return Failure("op_version", message, {"op": op[0], "op_version": op[1]})
    ir = _ORT_IR_RE.search(text)
    if ir is not None:
        message = (f"the model has ONNX IR version {ir.group(1)} but {label} reads at most {ir.group(2)}: the "
                   "runtime is older than the converter that built this model. Install a newer onnxruntime on "
                   "the board or export with an older opset/IR")
        return Failure("op_version", message, {"ir_version": int(ir.group(1)), "max_ir_version": int(ir.group(2))})
    custom = _CUSTOM_OP_RE.search(text)
    if custom is not None:
        return Failure("unsupported_model", f"the model uses custom op {custom.group(1)}, which {label} does not "
                       "provide; convert without custom/select TF ops", {"op": custom.group(1)})
    if stage == "import":
        package = RUNTIME_PACKAGES.get(runtime or "", runtime or "")
        return Failure("missing_runtime", f"{runtime} does not import on this device ({first}). Install it (pip "
                       f"install {package}) or choose another --runtime; `agent.py probe` lists what imports", {})
    if any(marker in text for marker in _BAD_MODEL_MARKERS) or (stage == "load" and "FileNotFound" in text):
        return Failure("unsupported_model", "{} is not a model {} can load ({}). Check the file arrived whole (compare "
                       "its sha256) and that the runtime matches the format (.tflite: LiteRT/tflite-runtime/tf.lite, "
                       ".onnx: onnxruntime)".format(model_path or "the model", label, first), {})
    if stage == "inputs":
        return Failure("bad_input", f"the inputs do not fit the model: {first}", {})
    if stage == "dump":
        return Failure("bad_input", f"could not write the --dump-outputs file(s): {first}", {})
    return Failure("runtime_error", f"{label} failed during {stage}: {first}", {})


# ----------------------------------------------------------------------------------------------------------------
# Small helpers

def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()[:500]
    return ""


def _numpy_version() -> Optional[str]:
    return None if _NUMPY_ERROR is not None else str(np.__version__)


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _read_int(path: str) -> Optional[int]:
    text = _read_text(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _peak_rss_kib() -> Optional[int]:
    # Linux: VmHWM is this process's own peak. ru_maxrss is not: after fork+exec it keeps the peak of the
    # forked copy of the parent, so an agent started by a 500 MB farmbench would report 500 MB.
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    if resource is None:
        return None
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    # ru_maxrss is KiB on Linux but bytes on macOS.
    return peak // 1024 if sys.platform == "darwin" else peak


def _affinity() -> Optional[List[int]]:
    getter = getattr(os, "sched_getaffinity", None)
    return sorted(getter(0)) if getter is not None else None


def _run_delay_ns() -> Optional[int]:
    """Nanoseconds this process's threads have spent runnable but waiting for a CPU (the second field of Linux's
    /proc/<pid>/task/<tid>/schedstat, summed over threads), or None where the kernel does not say (not Linux)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    total, found = 0, False
    for task in tasks:
        try:
            with open("/proc/self/task/" + task + "/schedstat") as handle:
                total += int(handle.read().split()[1])
            found = True
        except (OSError, ValueError, IndexError):
            continue  # a thread that just exited
    return total if found else None


def _cpu_busy_s() -> Optional[float]:
    """Seconds of CPU time all CPUs have spent busy (user, nice, system, irq, softirq, steal) since boot, from Linux
    /proc/stat, or None elsewhere."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
        ticks = float(os.sysconf("SC_CLK_TCK"))
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except (OSError, ValueError, AttributeError):
        return None
    return (user + nice + system + irq + softirq + steal) / ticks


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _boottime_s() -> Optional[float]:
    """CLOCK_BOOTTIME in seconds (the clock of /proc/uptime, which the power sampler stamps its samples with), or
    None where the platform has no such clock (not Linux)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is None:
        return None
    try:
        return time.clock_gettime(clock)
    except OSError:
        return None


def _wall_iso(epoch_s: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, datetime.timezone.utc).isoformat()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_cpu_list(text: str) -> List[int]:
    """``"0-3,6"`` -> [0, 1, 2, 3, 6] (the kernel's cpulist format)."""
    cpus: Set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-", 1)
            first, last = int(low), int(high)
            if last < first:
                raise ValueError(f"range {part} runs backwards")
            cpus.update(range(first, last + 1))
        else:
            cpus.add(int(part))
    if not cpus or min(cpus) < 0:
        raise ValueError(f"no CPUs in {text!r}")
    return sorted(cpus)


def _parse_quant(text: str) -> Tuple[float, int]:
    scale, _, zero = text.partition(",")
    value = (float(scale), int(zero or "0"))
    if not value[0] > 0:
        raise ValueError("scale must be > 0")
    return value


def _module_version(module: Any, distribution: str) -> Optional[str]:
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    try:
        from importlib import metadata  # 3.8+

        return str(metadata.version(distribution))
    except Exception:  # noqa: BLE001 -- no version is a fact to report, not a failure
        return None


def _finite(value: Any) -> Any:
    """The same structure with NaN and infinities replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class _StdoutGuard:
    """Point fd 1 at stderr while the agent works and keep the real stdout for the one JSON document."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._saved_fd = os.dup(1)
        os.dup2(2, 1)
        self._saved_stdout = sys.stdout
        sys.stdout = sys.stderr

    def emit(self, document: Dict[str, Any]) -> None:
        sys.stderr.flush()
        try:
            text = json.dumps(document, allow_nan=False, default=str)
        except ValueError:  # a NaN/inf somewhere (a runtime's odd quantisation scale): JSON has no such numbers
            text = json.dumps(_finite(document), allow_nan=False, default=str)
        data = (text + "\n").encode("utf-8")
        os.dup2(self._saved_fd, 1)
        os.close(self._saved_fd)
        sys.stdout = self._saved_stdout
        view = memoryview(data)
        while view:  # a long latencies list can exceed one pipe write
            written = os.write(1, view)
            view = view[written:]


# ----------------------------------------------------------------------------------------------------------------
# probe

def _numpy_abi_of_extensions(package_dir: str) -> Optional[str]:
    """Which numpy C API the package's extension modules were compiled against, read from the .so files without
    loading them: numpy-2 headers look up ``numpy._core._multiarray_umath`` (and fall back to the 1.x name), numpy-1
    headers only know ``numpy.core._multiarray_umath``. Returns "2.x", "1.x" or None (no numpy C API found)."""
    old, new = False, False
    for path in glob.glob(os.path.join(package_dir, "**", "*.so"), recursive=True):
        try:
            with open(path, "rb") as handle:
                blob = handle.read()
        except OSError:
            continue
        new = new or b"numpy._core._multiarray_umath" in blob
        old = old or b"numpy.core._multiarray_umath" in blob
    if new:
        return "2.x"
    return "1.x" if old else None


def _probe_runtime(name: str) -> Dict[str, Any]:
    module_name = RUNTIME_MODULES[name]
    entry: Dict[str, Any] = {"name": name, "module": module_name, "importable": False, "version": None,
                             "import_error": None, "import_ns": None, "usable": False, "problem_class": None,
                             "problem": None}
    started = time.perf_counter_ns()
    try:
        module = importlib.import_module(module_name)
        if name == "tensorflow":
            _ = module.lite.Interpreter  # a TF build without tf.lite cannot run .tflite
        elif name in ("litert", "tflite_runtime"):
            importlib.import_module(module_name + ".interpreter")
    except Exception as exc:  # noqa: BLE001 -- any import failure is data for the planner
        entry["import_ns"] = time.perf_counter_ns() - started
        messages = exception_messages(exc)
        entry["import_error"] = _first_line(messages[0])
        failure = classify_failure(messages, "import", name)
        entry["problem_class"], entry["problem"] = failure.error_class, failure.error_message
        return entry
    entry["import_ns"] = time.perf_counter_ns() - started
    entry["importable"] = True
    entry["usable"] = True
    entry["version"] = _module_version(module, RUNTIME_PACKAGES[name])
    if name == "onnxruntime":
        try:
            entry["providers"] = list(module.get_available_providers())
        except Exception as exc:  # noqa: BLE001 -- a provider query that fails is reported, not fatal
            entry["providers"] = None
            entry["problem"] = f"get_available_providers() failed: {_first_line(str(exc))}"
    if name == "tflite_runtime" and _NUMPY_ERROR is None and int(np.__version__.split(".")[0]) >= 2:
        # tflite-runtime imports fine under numpy 2 and only fails when an Interpreter is created; read the .so.
        package_dir = os.path.dirname(getattr(module, "__file__", "") or "")
        if package_dir and _numpy_abi_of_extensions(package_dir) == "1.x":
            entry["usable"] = False
            failure = classify_failure(["_ARRAY_API not found"], "load", name, entry["version"])
            entry["problem_class"], entry["problem"] = failure.error_class, failure.error_message
    return entry


def _cpu_info() -> Dict[str, Any]:
    info: Dict[str, Any] = {"model": None, "hardware": None, "board_model": None, "arm_parts": []}
    text = _read_text("/proc/cpuinfo") or ""
    parts = []
    implementer = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "model name" and info["model"] is None:
            info["model"] = value
        elif key == "Hardware":
            info["hardware"] = value
        elif key == "Model":
            info["board_model"] = value
        elif key == "CPU implementer":
            implementer = value
        elif key == "CPU part":
            label = ARM_PARTS.get(value.lower(), f"part {value}")
            entry = f"{label} (implementer {implementer})" if implementer else label
            if entry not in parts:
                parts.append(entry)
    info["arm_parts"] = parts
    if info["board_model"] is None:
        tree_model = _read_text("/proc/device-tree/model")
        info["board_model"] = tree_model.strip("\x00\n ") if tree_model else None
    if info["model"] is None:
        info["model"] = ", ".join(parts) or platform.processor() or None
    return info


def _cpufreq() -> List[Dict[str, Any]]:
    policies = []
    paths = glob.glob("/sys/devices/system/cpu/cpufreq/policy*")
    for path in sorted(paths, key=lambda p: int(re.sub(r"\D", "", os.path.basename(p)) or 0)):
        governor = _read_text(os.path.join(path, "scaling_governor"))
        cpus = _read_text(os.path.join(path, "affected_cpus"))
        policies.append({
            "policy": os.path.basename(path),
            "cpus": [int(c) for c in cpus.split()] if cpus else None,
            "governor": governor.strip() if governor else None,
            "cpuinfo_min_freq_khz": _read_int(os.path.join(path, "cpuinfo_min_freq")),
            "cpuinfo_max_freq_khz": _read_int(os.path.join(path, "cpuinfo_max_freq")),
            "scaling_max_freq_khz": _read_int(os.path.join(path, "scaling_max_freq")),
            "scaling_cur_freq_khz": _read_int(os.path.join(path, "scaling_cur_freq")),
        })
    return policies


def _os_release() -> Optional[str]:
    text = _read_text("/etc/os-release") or _read_text("/usr/lib/os-release")
    if text:
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    if sys.platform == "darwin":
        return "macOS " + platform.mac_ver()[0]
    return None


def _mem_total_kib() -> Optional[int]:
    for line in (_read_text("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return None


def _host_fields() -> Dict[str, Any]:
    return {"hostname": socket.gethostname(), "python_version": platform.python_version(),
            "python_implementation": platform.python_implementation(), "python_executable": sys.executable,
            # A 32-bit userland on a 64-bit kernel (older Raspberry Pi OS) reports machine=aarch64 but needs armv7l
            # wheels; the pointer size of this interpreter is the truth.
            "python_pointer_bits": 64 if sys.maxsize > 2 ** 32 else 32}


def probe(work_dir: str, runtimes: Sequence[str]) -> Dict[str, Any]:
    uname = platform.uname()
    try:
        free_bytes: Optional[int] = int(__import__("shutil").disk_usage(work_dir).free)
        disk_error = None
    except OSError as exc:
        free_bytes, disk_error = None, _first_line(str(exc))
    document: Dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "agent_version": AGENT_VERSION, "mode": "probe", "status": "ok",
        "error_class": None, "error_message": None,
    }
    document.update(_host_fields())
    document.update({
        "platform": {"system": uname.system, "release": uname.release, "version": uname.version,
                     "machine": uname.machine, "libc": " ".join(platform.libc_ver()).strip() or None},
        "arch": uname.machine,
        "os_release": _os_release(),
        "cpu": _cpu_info(),
        "logical_cores": os.cpu_count(),
        "affinity": _affinity(),
        "cpufreq": _cpufreq(),
        "mem_total_kib": _mem_total_kib(),
        "loadavg": _loadavg(),
        "work_dir": os.path.abspath(work_dir),
        "work_dir_free_bytes": free_bytes,
        "work_dir_error": disk_error,
        "numpy": {"importable": _NUMPY_ERROR is None, "version": _numpy_version(), "import_error": _NUMPY_ERROR},
        "runtimes": [_probe_runtime(name) for name in runtimes],
    })
    return document


# ----------------------------------------------------------------------------------------------------------------
# bench: runtime adapters. Each exposes inputs/outputs (details), set_input(i, array), invoke (the bound call that
# goes inside the timer, nothing else), outputs() and applied (what was actually configured).

def _tensor_entry(name: str, shape: Sequence[int], dtype: str, quant: Optional[Tuple[float, int]],
                  shape_signature: Optional[Sequence[Any]] = None, index: Optional[int] = None) -> Dict[str, Any]:
    return {"name": name, "index": index, "shape": [int(d) for d in shape],
            "shape_signature": list(shape_signature) if shape_signature is not None else None, "dtype": dtype,
            "quant_scale": quant[0] if quant else None, "quant_zero_point": quant[1] if quant else None}


class _TfliteModel:
    """LiteRT, tflite-runtime or tf.lite: the same Interpreter API."""

    def __init__(self, runtime: str, module: Any, path: str, threads: int, xnnpack: bool) -> None:
        if runtime == "tensorflow":
            interpreter_cls = module.lite.Interpreter
            resolver = getattr(getattr(module.lite, "experimental", None), "OpResolverType", None)
        else:
            interpreter_module = importlib.import_module(RUNTIME_MODULES[runtime] + ".interpreter")
            interpreter_cls = interpreter_module.Interpreter
            resolver = getattr(interpreter_module, "OpResolverType", None)
        kwargs: Dict[str, Any] = {"model_path": path}
        if threads > 0:
            kwargs["num_threads"] = threads
        self.xnnpack_off_unavailable = False
        self.resolver_applied = "AUTO"
        if not xnnpack:
            if resolver is not None and hasattr(resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES"):
                # AUTO (the default) applies the XNNPACK delegate; this resolver type leaves it out.
                kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                self.resolver_applied = "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
            else:
                self.xnnpack_off_unavailable = True
        self.interpreter = interpreter_cls(**kwargs)
        self.interpreter.allocate_tensors()
        self._input_details = self.interpreter.get_input_details()
        self._output_details = self.interpreter.get_output_details()
        self.invoke: Callable[[], Any] = self.interpreter.invoke
        self.inputs = [self._entry(d) for d in self._input_details]
        self.outputs = [self._entry(d) for d in self._output_details]
        self.threads_applied: Optional[int] = threads if threads > 0 else None

    @staticmethod
    def _entry(detail: Dict[str, Any]) -> Dict[str, Any]:
        scale, zero = detail.get("quantization", (0.0, 0))
        quant = (float(scale), int(zero)) if scale else None
        signature = detail.get("shape_signature")
        return _tensor_entry(str(detail["name"]), list(detail["shape"]), np.dtype(detail["dtype"]).name, quant,
                             [int(d) for d in signature] if signature is not None else None, int(detail["index"]))

    def set_input(self, position: int, array: Array) -> None:
        self.interpreter.set_tensor(self._input_details[position]["index"], array)

    def get_outputs(self) -> List[Array]:
        return [self.interpreter.get_tensor(d["index"]) for d in self._output_details]

    def is_quantized(self) -> bool:
        """Whether any tensor is int8/uint8 with quantisation parameters (an int8 model, whatever its I/O)."""
        for detail in self.interpreter.get_tensor_details():
            scales = detail.get("quantization_parameters", {}).get("scales", [])
            if np.dtype(detail["dtype"]).name in ("int8", "uint8") and len(scales) > 0:
                return True
        return False

    def delegation(self) -> Dict[str, Any]:
        """How much of the graph the default delegate took, from the node list (a private but long-standing API):
        after allocate_tensors each delegated partition appears as an extra node named DELEGATE, and the original
        nodes stay listed. An original node still runs outside the delegate when it is connected to a DELEGATE node
        (or to such a node) by a tensor the delegate does not produce itself: it consumes a delegate output, or
        produces a delegate input. Fully delegated: there is none, and the DELEGATE nodes produce every model
        output."""
        try:
            ops = self.interpreter._get_ops_details()
        except Exception:  # noqa: BLE001 -- older builds: say "unknown" rather than guess
            return {"delegate_nodes": None, "fully_delegated": None, "undelegated_ops": None}
        delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
        if not delegates:
            return {"delegate_nodes": 0, "fully_delegated": False, "undelegated_ops": None}
        delegate_outputs = {int(t) for op in delegates for t in op["outputs"]}
        downstream = set(delegate_outputs)  # tensors an undelegated node may consume
        upstream = {int(t) for op in delegates for t in op["inputs"]}  # tensors an undelegated node may produce
        originals = [op for op in ops if op["op_name"] != "DELEGATE"]
        undelegated: Dict[int, str] = {}
        changed = True
        while changed:  # a fixpoint: undelegated nodes pull in their own neighbours
            changed = False
            for op in originals:
                outputs = {int(t) for t in op["outputs"]}
                if op["index"] in undelegated or outputs <= delegate_outputs:
                    continue  # already counted, or replaced by the delegate (it yields the same tensor)
                inputs = {int(t) for t in op["inputs"] if int(t) >= 0}
                if inputs & downstream or outputs & upstream:
                    undelegated[op["index"]] = str(op["op_name"])
                    downstream |= outputs
                    upstream |= inputs
                    changed = True
        model_outputs = {int(d["index"]) for d in self._output_details}
        full = not undelegated and model_outputs <= delegate_outputs
        return {"delegate_nodes": len(delegates), "fully_delegated": full,
                "undelegated_ops": [undelegated[i] for i in sorted(undelegated)]}


class _OrtModel:
    def __init__(self, ort: Any, path: str, threads: int, provider: str, opt_level: str) -> None:
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_OPT_LEVELS[opt_level])
        self.session = ort.InferenceSession(path, options, providers=[provider])
        self.binding = self.session.io_binding()
        self._input_names = [i.name for i in self.session.get_inputs()]
        self._output_names = [o.name for o in self.session.get_outputs()]
        for name in self._output_names:
            self.binding.bind_output(name, "cpu")
        binding, run = self.binding, self.session.run_with_iobinding

        def invoke() -> None:
            run(binding)

        self.invoke: Callable[[], Any] = invoke
        self.inputs = [self._entry(i) for i in self.session.get_inputs()]
        self.outputs = [self._entry(o) for o in self.session.get_outputs()]
        applied = self.session.get_session_options()
        self.threads_applied: Optional[int] = int(applied.intra_op_num_threads) or None
        self.opt_level_applied = str(applied.graph_optimization_level).split(".")[-1]
        self.providers_applied = list(self.session.get_providers())

    @staticmethod
    def _entry(node: Any) -> Dict[str, Any]:
        signature = list(node.shape)
        # Symbolic or unknown dims (batch "N", None) run as 1: the agent feeds one sample per inference.
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in signature]
        return _tensor_entry(str(node.name), shape, ORT_DTYPES.get(node.type, node.type), None, signature)

    def set_input(self, position: int, array: Array) -> None:
        self.binding.bind_cpu_input(self._input_names[position], array)

    def get_outputs(self) -> List[Array]:
        return [np.asarray(a) for a in self.binding.copy_outputs_to_cpu()]


# ----------------------------------------------------------------------------------------------------------------
# bench: inputs

def _quantize(x: Array, scale: float, zero_point: int, dtype: Any) -> Array:
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point  # same rounding as the host reference (farmbench.variants.hostrun)
    return np.clip(q, info.min, info.max).astype(dtype)


def _random_input(rng: np.random.Generator, entry: Dict[str, Any]) -> Array:
    dtype = np.dtype(entry["dtype"])
    shape = tuple(entry["shape"])
    if dtype.kind == "f":
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if dtype.itemsize == 1 or entry["quant_scale"] is not None:
            return rng.integers(int(info.min), int(info.max) + 1, size=shape, dtype=dtype)
        return rng.integers(0, 2, size=shape, dtype=dtype)  # indices/ids: keep them valid for any vocabulary
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise BenchFailure("bad_input", "cannot generate random data for input {} of dtype {}; pass --inputs".format(
        entry["name"], dtype.name))


def _rows_from_file(path: str, entry: Dict[str, Any]) -> List[Array]:
    try:
        batch = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BenchFailure("bad_input", f"--inputs {path}: not a readable .npy file ({_first_line(str(exc))})")
    shape = tuple(entry["shape"])
    dtype = np.dtype(entry["dtype"])
    if batch.ndim < 1 or batch.shape[0] == 0:
        raise BenchFailure("bad_input", f"--inputs {path}: expected a batch (N, ...) with N >= 1, got shape "
                           f"{list(batch.shape)}")
    row_shape = tuple(batch.shape[1:])
    if row_shape != shape[1:] and row_shape != shape:
        raise BenchFailure("bad_input", "--inputs {}: rows have shape {} but input {} takes {} (rows are one "
                           "sample each, without or with the batch dimension)".format(
                               path, list(row_shape), entry["name"], list(shape)))
    rows = []
    for row in batch:
        row = row.reshape(shape)
        if row.dtype.kind == "f":
            if dtype.kind in "iu":
                if entry["quant_scale"] is None:
                    raise BenchFailure("bad_input", "input {} is {} but its scale and zero point are unknown; pass "
                                       "--input-quant SCALE,ZP (the host reads them from the artifact)".format(
                                           entry["name"], dtype.name))
                row = _quantize(row.astype(np.float32), entry["quant_scale"], entry["quant_zero_point"], dtype)
            else:
                row = row.astype(dtype)
        elif row.dtype != dtype:
            raise BenchFailure("bad_input", "--inputs {}: dtype {} does not match input {} ({}); give float32 rows "
                               "(quantised here) or rows of exactly the input dtype".format(
                                   path, row.dtype.name, entry["name"], dtype.name))
        rows.append(np.ascontiguousarray(row))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# bench: the loop

def run_loop(invoke: Callable[[], Any], set_row: Optional[Callable[[int], None]], n_rows: int, min_runs: int,
             min_ns: int, max_ns: int) -> Tuple[List[int], int, bool]:
    """Invoke until min_runs are done and min_ns has passed, or max_ns has passed. Returns (latencies_ns,
    wall_ns, stopped_by_max). Only ``invoke()`` is inside the timer; see the module docstring."""
    clock = time.perf_counter_ns
    latencies: List[int] = []
    append = latencies.append  # bound once: attribute lookups stay out of the loop
    count = 0
    start = clock()
    t1 = start
    if set_row is None or n_rows <= 1:
        while True:
            t0 = clock()
            invoke()
            t1 = clock()
            append(t1 - t0)
            count += 1
            if count >= min_runs and t1 - start >= min_ns:
                return latencies, t1 - start, False
            if t1 - start >= max_ns:
                return latencies, t1 - start, True
    row = 0
    while True:
        set_row(row)
        row = row + 1 if row + 1 < n_rows else 0
        t0 = clock()
        invoke()
        t1 = clock()
        append(t1 - t0)
        count += 1
        if count >= min_runs and t1 - start >= min_ns:
            return latencies, t1 - start, False
        if t1 - start >= max_ns:
            return latencies, t1 - start, True


def _summary(latencies_ns: Sequence[int]) -> Dict[str, Any]:
    if not latencies_ns:
        return {"median_ns": None, "mean_ns": None, "min_ns": None, "max_ns": None, "stdev_ns": None, "cv": None}
    mean = statistics.fmean(latencies_ns) if hasattr(statistics, "fmean") else statistics.mean(latencies_ns)
    stdev = statistics.stdev(latencies_ns) if len(latencies_ns) > 1 else None
    return {"median_ns": statistics.median(latencies_ns), "mean_ns": mean, "min_ns": min(latencies_ns),
            "max_ns": max(latencies_ns), "stdev_ns": stdev,
            "cv": (stdev / mean) if stdev is not None and mean > 0 else None}


# ----------------------------------------------------------------------------------------------------------------
# bench

def _pick_runtime(requested: str, model_path: str) -> List[str]:
    """Runtimes to try, in order: one when named; for auto, by file suffix."""
    if requested in RUNTIMES:
        return [requested]
    if requested != "auto":
        raise BenchFailure("missing_runtime", "unknown runtime {!r}: this agent runs {} (or auto)".format(
            requested, ", ".join(RUNTIMES)))
    suffix = os.path.splitext(model_path)[1].lower()
    if suffix == ".tflite":
        return ["litert", "tflite_runtime", "tensorflow"]
    if suffix == ".onnx":
        return ["onnxruntime"]
    raise BenchFailure("bad_input", f"cannot tell the model format from the suffix of {model_path!r}; name a --runtime")


def _empty_bench_document(args: argparse.Namespace) -> Dict[str, Any]:
    document: Dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "agent_version": AGENT_VERSION, "mode": "bench", "status": "failed",
        "error_class": None, "error_message": None, "error_stage": None, "error_raw": None, "error_detail": None,
        "flags": [],
    }
    document.update(_host_fields())
    document.update({
        "config": {"model": args.model, "runtime": args.runtime, "threads": args.threads,
                   "warmup_runs": args.warmup_runs, "warmup_min_s": args.warmup_min_s, "runs": args.runs,
                   "min_s": args.min_s, "max_s": args.max_s, "xnnpack": args.xnnpack, "ort_provider": args.ort_provider,
                   "ort_opt_level": args.ort_opt_level, "seed": args.seed, "inputs": args.inputs,
                   "dump_outputs": args.dump_outputs, "input_quant": args.input_quant,
                   "output_quant": args.output_quant, "affinity": args.affinity},
        "runtime": {"name": None, "module": None, "version": None, "auto_skipped": []},
        "numpy_version": _numpy_version(),
        "model": {"path": args.model, "sha256": None, "size_bytes": None, "inputs": None, "outputs": None},
        "applied": {"threads": None, "xnnpack": None, "op_resolver": None, "xnnpack_delegate_nodes": None,
                    "xnnpack_fully_delegated": None, "xnnpack_undelegated_ops": None, "ort_providers": None,
                    "ort_opt_level": None},
        "input_source": None, "input_rows": None,
        "timer": ("perf_counter_ns around the runtime's invoke only (TFLite interpreter.invoke(); ONNX Runtime "
                  "session.run_with_iobinding(binding)); inputs set before the timer; gc disabled in the loops"),
        "runtime_import_ns": None, "init_ns": None, "first_inference_ns": None,
        "warmup_runs": None, "warmup_s": None, "warmup_stopped_by_max_s": None,
        "timed_runs": None, "timed_wall_s": None, "stopped_by_max_s": None, "latencies_ns": None, "summary": None,
        "rss_before_load_kib": None, "peak_rss_after_load_kib": None, "peak_rss_kib": None,
        "affinity": None, "loadavg_before": _loadavg(), "loadavg_after": None,
        "start_monotonic_ns": time.monotonic_ns(), "end_monotonic_ns": None,
        "timed_start_boottime_s": None, "timed_end_boottime_s": None,
        "start_unix_s": time.time(), "end_unix_s": None, "start_wall": None, "end_wall": None,
        "dump": None,
    })
    document["start_wall"] = _wall_iso(document["start_unix_s"])
    return document


def bench(args: argparse.Namespace) -> Dict[str, Any]:
    document = _empty_bench_document(args)
    state: Dict[str, Any] = {"stage": "setup", "runtime": None, "version": None}
    gc_was_enabled = gc.isenabled()
    try:
        _bench(args, document, state)
        document["status"] = "ok"
    except BenchFailure as known:
        document.update({"error_class": known.error_class, "error_message": known.error_message,
                         "error_stage": state["stage"], "error_detail": known.detail or None})
    except Exception as exc:  # noqa: BLE001 -- whatever the runtime raises becomes a classified failed document
        messages = exception_messages(exc)
        failure = classify_failure(messages, state["stage"] or "setup", state["runtime"], state["version"],
                                   args.model)
        document.update({"error_class": failure.error_class, "error_message": failure.error_message,
                         "error_stage": state["stage"], "error_detail": failure.detail or None,
                         "error_raw": [m[:2000] for m in messages]})
        traceback.print_exc(file=sys.stderr)
    finally:
        if gc_was_enabled:
            gc.enable()
    document["affinity"] = _affinity()
    document["loadavg_after"] = _loadavg()
    document["end_monotonic_ns"] = time.monotonic_ns()
    document["end_unix_s"] = time.time()
    document["end_wall"] = _wall_iso(document["end_unix_s"])
    if document["peak_rss_kib"] is None:
        document["peak_rss_kib"] = _peak_rss_kib()
    return document


def _bench(args: argparse.Namespace, document: Dict[str, Any], state: Dict[str, Any]) -> None:
    flags: List[str] = document["flags"]
    if _NUMPY_ERROR is not None:
        state["stage"] = "import"
        raise BenchFailure("missing_runtime", f"numpy does not import on this device ({_NUMPY_ERROR}); install numpy "
                           "(pip install numpy; numpy<2 if the runtime is tflite-runtime)")

    state["stage"] = "affinity"
    if args.affinity is not None:
        setter = getattr(os, "sched_setaffinity", None)
        if setter is None:
            raise BenchFailure("bad_input", f"--affinity is not supported on {sys.platform}; leave it out")
        cpus = parse_cpu_list(args.affinity)
        try:
            setter(0, cpus)
        except OSError as exc:
            raise BenchFailure("bad_input", f"--affinity {args.affinity}: the kernel refused it ({exc.strerror}); "
                               f"this device allows CPUs {_affinity()}") from exc
    document["affinity"] = _affinity()

    state["stage"] = "model"
    if not os.path.isfile(args.model):
        raise BenchFailure("bad_input", f"model file {args.model} does not exist on this device; push it first")
    document["model"]["sha256"] = _sha256(args.model)
    document["model"]["size_bytes"] = os.path.getsize(args.model)

    state["stage"] = "import"
    candidates = _pick_runtime(args.runtime, args.model)
    module: Any = None
    skipped: List[Dict[str, Any]] = document["runtime"]["auto_skipped"]
    for name in candidates:
        state["runtime"] = name
        started = time.perf_counter_ns()
        try:
            module = importlib.import_module(RUNTIME_MODULES[name])
            if name == "tensorflow":
                _ = module.lite.Interpreter  # a TF build without tf.lite cannot run .tflite
            elif name != "onnxruntime":
                importlib.import_module(RUNTIME_MODULES[name] + ".interpreter")
        except Exception as exc:  # classified below, or the next candidate is tried
            if len(candidates) == 1:
                raise
            skipped.append({"name": name, "error": _first_line(exception_messages(exc)[0])})
            continue
        document["runtime_import_ns"] = time.perf_counter_ns() - started
        break
    else:
        tried = "; ".join("{}: {}".format(s["name"], s["error"]) for s in skipped)
        raise BenchFailure("missing_runtime", f"no TFLite runtime imports on this device ({tried}). Install one: pip "
                           "install ai-edge-litert")
    runtime: str = state["runtime"]
    version = _module_version(module, RUNTIME_PACKAGES[runtime])
    state["version"] = version
    document["runtime"].update({"name": runtime, "module": RUNTIME_MODULES[runtime], "version": version})
    if runtime == "onnxruntime":
        available = list(module.get_available_providers())
        if args.ort_provider not in available:
            raise BenchFailure("missing_runtime", "execution provider {} is not available in onnxruntime {} here "
                               "(available: {}); install an onnxruntime build that has it or choose one of "
                               "those".format(args.ort_provider, version, ", ".join(available)))

    state["stage"] = "load"
    xnnpack = args.xnnpack == "on"
    document["rss_before_load_kib"] = _peak_rss_kib()
    started = time.perf_counter_ns()
    model: Any
    if runtime in TFLITE_RUNTIMES:
        model = _TfliteModel(runtime, module, args.model, args.threads, xnnpack)
    else:
        model = _OrtModel(module, args.model, args.threads, args.ort_provider, args.ort_opt_level)
    document["init_ns"] = time.perf_counter_ns() - started
    document["peak_rss_after_load_kib"] = _peak_rss_kib()

    # Quantisation parameters the runtime does not report (ONNX Runtime) come from the flags.
    for entries, text in ((model.inputs, args.input_quant), (model.outputs, args.output_quant)):
        if text is not None and entries and entries[0]["quant_scale"] is None and \
                np.dtype(entries[0]["dtype"]).kind in "iu":
            entries[0]["quant_scale"], entries[0]["quant_zero_point"] = _parse_quant(text)
    document["model"]["inputs"], document["model"]["outputs"] = model.inputs, model.outputs

    applied = document["applied"]
    applied["threads"] = model.threads_applied
    if isinstance(model, _TfliteModel):
        delegation = model.delegation()
        applied.update({"op_resolver": model.resolver_applied, "xnnpack_delegate_nodes": delegation["delegate_nodes"],
                        "xnnpack_fully_delegated": delegation["fully_delegated"],
                        "xnnpack_undelegated_ops": delegation["undelegated_ops"]})
        nodes = delegation["delegate_nodes"]
        applied["xnnpack"] = None if nodes is None else nodes > 0
        if xnnpack:
            if runtime == "tflite_runtime" and model.is_quantized():
                flags.append("tflite_runtime_int8_no_xnnpack")
            if nodes == 0:
                flags.append("xnnpack_requested_but_unavailable")
            elif nodes and not delegation["fully_delegated"]:
                flags.append("xnnpack_partially_applied")
        elif model.xnnpack_off_unavailable:
            flags.append("xnnpack_off_unavailable")
    else:
        applied.update({"ort_providers": model.providers_applied, "ort_opt_level": model.opt_level_applied})
        if not model.providers_applied or model.providers_applied[0] != args.ort_provider:
            flags.append("ort_provider_not_applied")

    state["stage"] = "inputs"
    rng = np.random.default_rng(args.seed)
    if args.inputs is not None:
        if len(model.inputs) != 1:
            raise BenchFailure("bad_input", f"--inputs feeds one input but the model has {len(model.inputs)}")
        rows = _rows_from_file(args.inputs, model.inputs[0])
        document["input_source"] = "file"
    else:
        rows = [_random_input(rng, model.inputs[0])]
        document["input_source"] = "random"
    document["input_rows"] = len(rows)
    for position, entry in enumerate(model.inputs[1:], start=1):
        model.set_input(position, _random_input(rng, entry))
    model.set_input(0, rows[0])

    def set_row(index: int) -> None:
        model.set_input(0, rows[index])

    state["stage"] = "first_inference"
    started = time.perf_counter_ns()
    model.invoke()
    document["first_inference_ns"] = time.perf_counter_ns() - started

    max_ns = int(args.max_s * 1e9)
    gc.collect()
    gc.disable()  # re-enabled by bench(); a collection must not land inside a sample

    state["stage"] = "warmup"
    if args.warmup_runs > 0 or args.warmup_min_s > 0:
        warm, warm_ns, warm_stopped = run_loop(model.invoke, set_row, len(rows), args.warmup_runs,
                                               int(args.warmup_min_s * 1e9), max_ns)
    else:
        warm, warm_ns, warm_stopped = [], 0, False
    document.update({"warmup_runs": len(warm), "warmup_s": warm_ns / 1e9, "warmup_stopped_by_max_s": warm_stopped})
    if warm_stopped:
        flags.append("warmup_stopped_by_max_s")

    state["stage"] = "timed"
    timed_start_boottime_s = _boottime_s()
    delay_before_ns, busy_before_s, own_before_s = _run_delay_ns(), _cpu_busy_s(), _own_cpu_s()
    latencies, wall_ns, stopped = run_loop(model.invoke, set_row, len(rows), args.runs, int(args.min_s * 1e9),
                                           max_ns)
    delay_after_ns, busy_after_s, own_after_s = _run_delay_ns(), _cpu_busy_s(), _own_cpu_s()
    timed_end_boottime_s = _boottime_s()
    gc.enable()
    if delay_before_ns is not None and delay_after_ns is not None:
        document["timed_run_delay_s"] = (delay_after_ns - delay_before_ns) / 1e9
        if wall_ns > 0 and delay_after_ns - delay_before_ns > CPU_CONTENTION * wall_ns:
            flags.append("cpu_contention")
    if busy_before_s is not None and busy_after_s is not None and wall_ns > 0:
        other_cpus = max(0.0, (busy_after_s - busy_before_s) - (own_after_s - own_before_s)) / (wall_ns / 1e9)
        document["timed_other_cpus"] = round(other_cpus, 3)
        if other_cpus > HOST_BUSY_CPUS:
            flags.append("host_busy")
    document.update({"timed_start_boottime_s": timed_start_boottime_s,
                     "timed_end_boottime_s": timed_end_boottime_s})
    document["peak_rss_kib"] = _peak_rss_kib()
    summary = _summary(latencies)
    document.update({"timed_runs": len(latencies), "timed_wall_s": wall_ns / 1e9, "stopped_by_max_s": stopped,
                     "latencies_ns": latencies, "summary": summary})
    if summary["cv"] is not None and summary["cv"] > HIGH_CV:
        flags.append("high_cv")
    if stopped:
        flags.append("stopped_by_max_s")
    if len(latencies) < FEW_SAMPLES:
        flags.append("few_samples")

    if args.dump_outputs is not None:
        state["stage"] = "dump"
        document["dump"] = _dump_outputs(model, rows, args.dump_outputs)


def _dump_outputs(model: Any, rows: Sequence[Array], path: str) -> Dict[str, Any]:
    per_output: List[List[Array]] = [[] for _ in model.outputs]
    for index in range(len(rows)):
        model.set_input(0, rows[index])
        model.invoke()
        for k, raw in enumerate(model.get_outputs()):
            per_output[k].append(np.array(raw, copy=True))
    files = []
    for k, (entry, arrays) in enumerate(zip(model.outputs, per_output)):
        raw = np.concatenate(arrays, axis=0) if arrays[0].ndim > 0 else np.stack(arrays)
        dequantized = False
        if raw.dtype.kind in "iu" and entry["quant_scale"] is not None:
            values = (raw.astype(np.float32) - np.float32(entry["quant_zero_point"])) * np.float32(entry["quant_scale"])
            dequantized = True
        else:
            values = raw.astype(np.float32)
        target = path if k == 0 else "{}.out{}.npy".format(path[:-4] if path.endswith(".npy") else path, k)
        with open(target, "wb") as handle:  # np.save(str) would append ".npy" to a name without it
            np.save(handle, values)
        files.append({"path": target, "output": entry["name"], "shape": list(values.shape),
                      "raw_dtype": raw.dtype.name, "dequantized": dequantized,
                      "quant_scale": entry["quant_scale"], "quant_zero_point": entry["quant_zero_point"]})
    return {"rows": len(rows), "files": files}


# ----------------------------------------------------------------------------------------------------------------
# command line

def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent.py", description="farmbench on-device agent: one JSON document "
                                     "on stdout (see the module docstring for the protocol).")
    modes = parser.add_subparsers(dest="mode")
    modes.required = True
    p = modes.add_parser("probe", help="describe this device and which runtimes import")
    p.add_argument("--work-dir", default=".", help="directory whose free space to report")
    p.add_argument("--runtimes", default=",".join(RUNTIMES),
                   help="comma-separated runtimes to try importing (importing tensorflow takes seconds)")
    b = modes.add_parser("bench", help="time one model")
    b.add_argument("--model", required=True)
    # Not argparse choices: a runtime this agent does not know is a fact about the device ("cannot run that"),
    # reported as missing_runtime in the document like a runtime that does not import.
    b.add_argument("--runtime", default="auto", help="auto|" + "|".join(RUNTIMES))
    b.add_argument("--threads", type=_non_negative_int, default=1, help="0: the runtime's default")
    b.add_argument("--warmup-runs", type=_non_negative_int, default=10)
    b.add_argument("--warmup-min-s", type=_non_negative_float, default=0.0)
    b.add_argument("--runs", type=_positive_int, default=50)
    b.add_argument("--min-s", type=_non_negative_float, default=0.0)
    b.add_argument("--max-s", type=_non_negative_float, default=60.0)
    b.add_argument("--xnnpack", choices=("on", "off"), default="on", help="TFLite runtimes only")
    b.add_argument("--ort-provider", default="CPUExecutionProvider")
    b.add_argument("--ort-opt-level", choices=tuple(ORT_OPT_LEVELS), default="all")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--inputs", default=None, help="float32 .npy batch (N, ...); one inference per row")
    b.add_argument("--dump-outputs", default=None, help=".npy path for float32 outputs of each input row")
    b.add_argument("--input-quant", default=None, help="SCALE,ZP for an integer input the runtime cannot describe")
    b.add_argument("--output-quant", default=None, help="SCALE,ZP for an integer output the runtime cannot describe")
    b.add_argument("--affinity", default=None, help="CPU list, e.g. 0-3 or 4,5")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mode == "bench":
        if not args.max_s > 0:
            parser.error("--max-s must be > 0")
        if args.max_s < args.min_s:
            parser.error(f"--max-s ({args.max_s}) is below --min-s ({args.min_s})")
        for flag in ("input_quant", "output_quant"):
            if getattr(args, flag) is not None:
                try:
                    _parse_quant(getattr(args, flag))
                except ValueError as exc:
                    parser.error("--{} wants SCALE,ZERO_POINT: {}".format(flag.replace("_", "-"), exc))
        if args.affinity is not None:
            try:
                parse_cpu_list(args.affinity)
            except ValueError as exc:
                parser.error(f"--affinity wants a CPU list like 0-3,6: {exc}")
    else:
        unknown = [r for r in args.runtimes.split(",") if r and r not in RUNTIMES]
        if unknown:
            parser.error("--runtimes: unknown {} (known: {})".format(", ".join(unknown), ", ".join(RUNTIMES)))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)  # argument errors exit 2 here, before stdout is claimed
    guard = _StdoutGuard()
    try:
        if args.mode == "probe":
            document = probe(args.work_dir, [r for r in args.runtimes.split(",") if r])
        else:
            document = bench(args)
    except Exception as exc:  # noqa: BLE001 -- a bug in the agent must still give the host a document
        traceback.print_exc(file=sys.stderr)
        document = {"schema_version": SCHEMA_VERSION, "agent_version": AGENT_VERSION, "mode": args.mode,
                    "status": "failed", "error_class": "runtime_error",
                    "error_message": "agent error: {}".format(_first_line(f"{type(exc).__name__}: {exc}")),
                    "error_raw": exception_messages(exc)}
    guard.emit(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
