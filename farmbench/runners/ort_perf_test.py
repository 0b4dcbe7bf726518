"""ONNX Runtime's native ``onnxruntime_perf_test`` binary: command line, output and result-file parsing.

This module is pure, like :mod:`farmbench.runners.benchmark_model`: it builds an argv and parses text. Running the
binary on a phone (push, shell, timeouts, reading the result file back) is :class:`~farmbench.runners.phone.
PhoneSession`'s job.

What the tool does (``onnxruntime/test/perftest/`` in microsoft/onnxruntime: ``command_args_parser.cc``,
``performance_runner.cc``, ``ort_test_session.cc``, ``main.cc``):

* ``perf_test [options...] model_path [result_file]``. Options are single letters (``-r 50``); ONNX Runtime 1.23+
  parses them with Abseil flags (``-x 2`` and ``--x=2`` both work, an unknown one prints ``ERROR: Unknown command
  line flag 'W'`` and exits 1), older releases with getopt (``invalid option -- 'W'`` or, on Android's bionic,
  ``unknown option -- W``, then the usage text, exit 255). A rejected value (``-r 0``, ``-e foo``) prints the usage
  text and exits 255.
* ``-m times -r N``: N timed runs; ``-m duration -t S``: runs until the *sum of run times* reaches S whole seconds.
  There is no "at least N runs and at least S seconds". ``-x N`` intra-op threads (0: ORT's default), ``-e`` the
  execution provider, ``-o`` the graph optimisation level (0, 1, 2, 3 on 1.23+, 99), ``-I`` generates inputs
  (otherwise the model's directory must hold ``test_data_set_*`` protobufs), ``-s`` prints latency percentiles,
  ``-p FILE`` writes an ORT profile.
* Exactly one untimed warm-up run (not configurable), reported as ``First inference time cost: N ms`` (whole
  milliseconds) on releases since 2021.
* Summary on stdout, in seconds unless the line says ms (golden files of real output are in
  ``tests/data/onnxruntime_perf_test/``, each with its source)::

      Session creation time cost: 0.217932 s
      First inference time cost: 196 ms
      Total inference time cost: 0.49481 s           (sum of the timed runs)
      Total inference requests: 5
      Average inference time cost total: 98.961997 ms (older: "Average inference time cost: 144.871 ms")
      Total inference run time: 0.494854 s           (wall time of the timed loop)
      Number of inferences per second: 10.104
      Avg CPU usage: 11 %
      Peak working set size: 271122432 bytes         (getrusage ru_maxrss on Linux/Android)

  Releases before 2020 wrote ``Session creation time cost:1.84149 s`` (no space) and older ones ``Total time
  cost:``, ``Total iterations:``, ``Average time cost:``. With ``-s`` (or without a result file) the percentiles
  follow: ``Min Latency: 0.0958204 s`` ... ``P999 Latency: ...`` (older: ``Min Latency is 0.0559777 sec``); they are
  order statistics at index ``floor(n * q)`` of the sorted runs, not interpolated.
* The result file (opened for **append**, so use a fresh name per run) gets one line per timed run:
  ``model_name,run_time_s,peak_working_set_bytes,avg_cpu_percent,run_index`` -- the model name is the name of the
  directory holding the model. Since microsoft/onnxruntime#26313 (October 2025) there is one more column, the
  submission time before the total run time: ``model_name,submission_s,total_s,peak,cpu,run_index``; the total is
  the run's latency. With ``-s`` a blank line and the percentile lines follow the rows. Times are C++ stream
  doubles (6 significant digits), i.e. per-run samples with about 0.1 µs resolution at millisecond latencies.
  If the file cannot be opened the tool says ``failed to open result file '...'. will dump stats to output.``.
* Failures print a message and exit 255: a C++ exception's text on stderr (``Load model from X failed:...``,
  ``Unsupported model IR version: 10, max supported IR version: 9``, ``Could not find an implementation for
  Foo(19) node with name '...'``, ``NNAPI is not supported in this build``, ``... test case dir doesn't exist``),
  or on stdout ``there is no test input data for input X and model Y`` / ``Run failed:failed to initialize.``.

Parsed times are converted to µs (``_us``), memory stays in bytes. The per-run times from the result file are raw
samples (:func:`~farmbench.results.stats.summarize` computes the statistics); without them only the printed
aggregates are left (:func:`~farmbench.results.stats.summarize_aggregates`, flagged ``aggregate_only``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from farmbench.errors import RunnerError, UsageError
from farmbench.results.stats import LatencyStats, summarize, summarize_aggregates

ErrorKind = Literal["ir_version", "unsupported_op", "provider_unavailable", "model_load", "no_test_data",
                    "test_case_dir", "bad_flag", "run_failed", "crashed", "exit_status"]

# Most specific first: an IR-version failure is also a "Load model ... failed", and a missing input also prints
# "Run failed:failed to initialize."; the user should be told the cause, not the consequence.
_ERROR_PRIORITY: Final[tuple[ErrorKind, ...]] = (
    "ir_version", "unsupported_op", "provider_unavailable", "model_load", "no_test_data", "test_case_dir",
    "bad_flag", "run_failed", "crashed", "exit_status")

# The -e values of the tool (command_args_parser.cc), and the ONNX Runtime provider names farmbench's run config
# uses for them. Providers a phone can have come first.
PROVIDER_FLAGS: Final[dict[str, str]] = {
    "CPUExecutionProvider": "cpu",
    "XnnpackExecutionProvider": "xnnpack",
    "NnapiExecutionProvider": "nnapi",
    "QNNExecutionProvider": "qnn",
    "SNPEExecutionProvider": "snpe",
    "ACLExecutionProvider": "acl",
    "ArmNNExecutionProvider": "armnn",
    "WebGpuExecutionProvider": "webgpu",
    "CoreMLExecutionProvider": "coreml",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
    "DnnlExecutionProvider": "dnnl",
    "OpenVINOExecutionProvider": "openvino",
    "DmlExecutionProvider": "dml",
    "ROCMExecutionProvider": "rocm",
    "MIGraphXExecutionProvider": "migraphx",
    "VitisAIExecutionProvider": "vitisai",
}
# farmbench's ort_opt_level names -> the tool's -o values (GraphOptimizationLevel; 3 is "layout", 1.23+ only).
OPT_LEVEL_FLAGS: Final[dict[str, int]] = {"disable": 0, "basic": 1, "extended": 2, "all": 99}
_OPT_LEVELS: Final = (0, 1, 2, 3, 99)

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def provider_flag(name: str) -> str:
    """The ``-e`` value for a provider given as ONNX Runtime names it (``NnapiExecutionProvider``) or as the flag
    itself (``nnapi``)."""
    if name in PROVIDER_FLAGS:
        return PROVIDER_FLAGS[name]
    if name in PROVIDER_FLAGS.values():
        return name
    raise UsageError(
        f"onnxruntime_perf_test has no execution provider {name!r}",
        hint="use one of " + ", ".join(list(PROVIDER_FLAGS)[:6]) + " (or its -e name: cpu, xnnpack, nnapi, ...)",
    )


def opt_level_flag(level: str) -> int:
    """The ``-o`` value for farmbench's ``ort_opt_level`` (disable, basic, extended, all)."""
    try:
        return OPT_LEVEL_FLAGS[level]
    except KeyError:
        raise UsageError(f"unknown ONNX Runtime optimisation level {level!r}",
                         hint="use one of " + ", ".join(OPT_LEVEL_FLAGS)) from None


# --------------------------------------------------------------------------------------------------- command line


@dataclass(frozen=True)
class OrtPerfTestConfig:
    """The options farmbench passes to ``onnxruntime_perf_test``. ``None``/``False`` means "do not pass it".

    ``repeated_times`` (``-m times -r N``) and ``duration_s`` (``-m duration -t S``, whole seconds of summed run
    time, because the tool reads an integer) are exclusive; with neither the tool's default mode applies (600 s of
    runs on current releases). ``execution_provider`` is the ``-e`` value (see :func:`provider_flag`).
    """

    model: str
    result_file: str | None = None
    repeated_times: int | None = None
    duration_s: int | None = None
    intra_op_threads: int | None = None
    execution_provider: str | None = None
    optimization_level: int | None = None
    generate_inputs: bool = False
    show_statistics: bool = False
    profile_file: str | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise UsageError("onnxruntime_perf_test needs a model path")
        for name in ("model", "result_file", "profile_file"):
            value = getattr(self, name)
            # The tool would read "-x.onnx" as an option; farmbench's device paths are absolute anyway.
            if value is not None and (not value or value.startswith("-")):
                raise UsageError(f"onnxruntime_perf_test {name} {value!r} cannot be passed: it must be a non-empty "
                                 "path that does not start with '-'")
        if self.repeated_times is not None and self.duration_s is not None:
            raise UsageError("onnxruntime_perf_test runs either a number of times (-r) or for a duration (-t), "
                             "not both", hint="set repeated_times or duration_s")
        for name in ("repeated_times", "duration_s"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UsageError(f"onnxruntime_perf_test {name} must be a whole number of at least 1, got {value!r}")
        if self.intra_op_threads is not None and self.intra_op_threads < 0:
            raise UsageError(f"onnxruntime_perf_test intra_op_threads must not be negative, got "
                             f"{self.intra_op_threads}", hint="0 lets ONNX Runtime choose")
        if self.execution_provider is not None and self.execution_provider not in PROVIDER_FLAGS.values():
            raise UsageError(f"onnxruntime_perf_test has no execution provider {self.execution_provider!r}",
                             hint="pass the -e name, e.g. via provider_flag('NnapiExecutionProvider')")
        if self.optimization_level is not None and self.optimization_level not in _OPT_LEVELS:
            raise UsageError(f"onnxruntime_perf_test optimization_level must be one of {_OPT_LEVELS}, got "
                             f"{self.optimization_level}")


def ort_perf_test_argv(binary: str, config: OrtPerfTestConfig, *, taskset_mask: str | None) -> list[str]:
    """The command line, as a list: ``taskset MASK BINARY -m times -r N -x T ... MODEL [RESULT_FILE]``.

    Options come before the positional arguments and take their value as the next argument, the one spelling both
    the getopt and the Abseil releases accept. Only what is set is passed.
    """
    argv: list[str] = []
    if taskset_mask is not None:
        argv += ["taskset", taskset_mask]
    argv.append(binary)
    if config.repeated_times is not None:
        argv += ["-m", "times", "-r", str(config.repeated_times)]
    if config.duration_s is not None:
        argv += ["-m", "duration", "-t", str(config.duration_s)]
    if config.intra_op_threads is not None:
        argv += ["-x", str(config.intra_op_threads)]
    if config.execution_provider is not None:
        argv += ["-e", config.execution_provider]
    if config.optimization_level is not None:
        argv += ["-o", str(config.optimization_level)]
    if config.generate_inputs:
        argv.append("-I")
    if config.show_statistics:
        argv.append("-s")
    if config.profile_file is not None:
        argv += ["-p", config.profile_file]
    argv.append(config.model)
    if config.result_file is not None:
        argv.append(config.result_file)
    return argv


# --------------------------------------------------------------------------------------------------------- output


class OrtPerfTestError(RunnerError):
    """onnxruntime_perf_test failed in a way its output explains. ``kind`` is an :data:`ErrorKind`, or
    ``bad_output`` when the output (or the result file) could not be understood."""

    def __init__(self, kind: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind


@dataclass(frozen=True)
class OrtPerfTestIssue:
    """One failure the tool reported, classified. ``op``/``version`` for ``unsupported_op`` (opset) and
    ``ir_version`` (the model's IR version), ``provider`` for ``provider_unavailable``, ``flag`` for ``bad_flag``."""

    kind: ErrorKind
    message: str
    hint: str | None = None
    op: str | None = None
    version: int | None = None
    provider: str | None = None
    flag: str | None = None

    def to_error(self) -> OrtPerfTestError:
        return OrtPerfTestError(self.kind, self.message, hint=self.hint)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "hint": self.hint, "op": self.op,
                "version": self.version, "provider": self.provider, "flag": self.flag}


@dataclass(frozen=True)
class ResultFileRow:
    """One line of the result file: one timed run. ``submission_us`` only in the six-column format."""

    model_name: str
    latency_us: float
    peak_working_set_bytes: int
    avg_cpu_percent: int
    run_index: int
    submission_us: float | None = None


@dataclass(frozen=True)
class ResultFile:
    """The parsed result file: its rows (the last session's, see :func:`parse_result_file`) and the percentile
    lines that follow them with ``-s`` (µs, keyed ``min``, ``max``, ``p50`` .. ``p999``)."""

    rows: tuple[ResultFileRow, ...]
    percentiles_us: dict[str, float] = field(default_factory=dict)

    @property
    def samples_us(self) -> tuple[float, ...]:
        return tuple(row.latency_us for row in self.rows)


@dataclass(frozen=True)
class OrtPerfTestRun:
    """What one invocation left behind: combined stdout+stderr, the exit code (None if unknown), the result
    file's text (None when there was none to read) and the command line that ran."""

    output: str
    exit_code: int | None = None
    result_file: str | None = None
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class OrtPerfTestResult:
    """Everything parsed from one onnxruntime_perf_test session. Times in µs, memory in bytes; absent values are
    None. ``samples_us`` are the per-run latencies from the result file, in run order (empty without one)."""

    intra_op_threads: int | None = None
    session_creation_us: float | None = None
    first_inference_us: float | None = None
    total_inference_us: float | None = None
    requests: int | None = None
    average_us: float | None = None
    total_run_time_us: float | None = None
    inferences_per_s: float | None = None
    avg_cpu_percent: int | None = None
    peak_working_set_bytes: int | None = None
    min_us: float | None = None
    max_us: float | None = None
    p50_us: float | None = None
    p90_us: float | None = None
    p95_us: float | None = None
    p99_us: float | None = None
    p999_us: float | None = None
    samples_us: tuple[float, ...] = ()
    result_file_error: str | None = None
    errors: tuple[OrtPerfTestIssue, ...] = ()

    @property
    def error(self) -> OrtPerfTestIssue | None:
        """The most specific failure reported (the IR version before its "Load model failed" consequence)."""
        for kind in _ERROR_PRIORITY:
            for issue in self.errors:
                if issue.kind == kind:
                    return issue
        return None

    @property
    def ok(self) -> bool:
        return not self.errors and self.requests is not None

    def raise_for_error(self) -> None:
        issue = self.error
        if issue is not None:
            raise issue.to_error()

    def with_result_file(self, result_file: ResultFile) -> OrtPerfTestResult:
        """This result with the result file's per-run samples (and its percentiles where stdout had none). A row
        count that disagrees with ``Total inference requests`` is an error: the samples would not be this run's."""
        if self.requests is not None and result_file.rows and len(result_file.rows) != self.requests:
            raise OrtPerfTestError(
                "bad_output",
                f"onnxruntime_perf_test reported {self.requests} timed runs but its result file holds "
                f"{len(result_file.rows)} rows",
                hint="the result file must be fresh for each run (the tool appends to it)",
            )
        from_file = result_file.percentiles_us

        def kept(name: str, value: float | None) -> float | None:
            return value if value is not None else from_file.get(name)

        return replace(self, samples_us=result_file.samples_us, min_us=kept("min", self.min_us),
                       max_us=kept("max", self.max_us), p50_us=kept("p50", self.p50_us),
                       p90_us=kept("p90", self.p90_us), p95_us=kept("p95", self.p95_us),
                       p99_us=kept("p99", self.p99_us), p999_us=kept("p999", self.p999_us))

    def to_latency_stats(self, *, seed: int = 0) -> LatencyStats:
        """Statistics of the timed runs: from the raw samples when the result file gave them, else from the
        printed aggregates (``aggregate_only``; p90/p99 as the tool printed them). Raises the classified error if
        the run failed, and a ``bad_output`` error naming what is missing otherwise."""
        self.raise_for_error()
        if self.samples_us:
            return summarize(self.samples_us, seed=seed)
        missing = [name for name, value in (("Total inference requests", self.requests),
                                            ("Average inference time cost", self.average_us),
                                            ("Min Latency", self.min_us), ("Max Latency", self.max_us))
                   if value is None]
        if missing:
            raise OrtPerfTestError(
                "bad_output",
                "onnxruntime_perf_test gave no per-run times (result file) and its summary lacks "
                + ", ".join(missing),
                hint="pass a result file and -s, and keep the tool's stdout whole",
            )
        assert self.requests is not None and self.average_us is not None
        assert self.min_us is not None and self.max_us is not None
        if self.requests == 0:
            raise OrtPerfTestError("bad_output", "onnxruntime_perf_test's timed loop ran 0 times")
        stats = summarize_aggregates(count=self.requests, mean_us=self.average_us, std_us=None, min_us=self.min_us,
                                     max_us=self.max_us, median_us=self.p50_us, p95_us=self.p95_us)
        return replace(stats, p90_us=self.p90_us, p99_us=self.p99_us)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "errors":
                value = [e.to_json() for e in self.errors]
            elif name == "samples_us":
                continue  # stored as the record's samples, not twice
            data[name] = value
        data["samples"] = len(self.samples_us)
        data["error"] = self.error.to_json() if self.error else None
        return data


def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


# Summary lines, current and older spellings. Each maps to (field, factor to µs or None for counts/percent/bytes).
_SUMMARY: Final[tuple[tuple[re.Pattern[str], str, float | None], ...]] = (
    (_pattern(rf"Session creation time cost:\s*({_NUMBER})\s*s\b"), "session_creation_us", 1e6),
    (_pattern(rf"First inference time cost:\s*({_NUMBER})\s*ms\b"), "first_inference_us", 1e3),
    (_pattern(rf"Total inference time cost:\s*({_NUMBER})"), "total_inference_us", 1e6),
    (_pattern(rf"^\s*Total time cost:\s*({_NUMBER})"), "total_inference_us", 1e6),
    (_pattern(r"Total inference requests:\s*(\d+)"), "requests", None),
    (_pattern(r"^\s*Total iterations:\s*(\d+)"), "requests", None),
    (_pattern(rf"Average inference time cost(?: total)?:\s*({_NUMBER})\s*ms\b"), "average_us", 1e3),
    (_pattern(rf"^\s*Average time cost:\s*({_NUMBER})\s*ms\b"), "average_us", 1e3),
    (_pattern(rf"Total inference run time:\s*({_NUMBER})\s*s\b"), "total_run_time_us", 1e6),
    (_pattern(rf"^\s*Total run time:\s*({_NUMBER})\s*s\b"), "total_run_time_us", 1e6),
    (_pattern(rf"Number of inferences per second:\s*({_NUMBER})"), "inferences_per_s", 1.0),
    (_pattern(r"Avg CPU usage:\s*(-?\d+)"), "avg_cpu_percent", None),
    (_pattern(r"Peak working set size:\s*(\d+)"), "peak_working_set_bytes", None),
    (_pattern(r"Setting intra_op_num_threads to (\d+)"), "intra_op_threads", None),
)
_RUNS_LINE = _pattern(r"^\s*Runs:\s*(\d+)\s*$")
_LATENCY_LINE = _pattern(rf"\b(Min|Max|P50|P90|P95|P99|P999) Latency(?::| is)\s*({_NUMBER})\s*(?:s|sec)\b")
_RESULT_FILE_ERROR = _pattern(r"failed to open result file(?: '([^']*)')?")

_IR_VERSION = _pattern(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")
_UNSUPPORTED_OP = _pattern(r"Could not find an implementation for (?:the node )?([A-Za-z0-9_.]+)\((\d+)\)")
_UNREGISTERED_OP = _pattern(r"([A-Za-z0-9_.]*):([A-Za-z0-9_]+)\((-?\d+)\) is not a registered function/op")
_PROVIDER_UNAVAILABLE = _pattern(r"([A-Za-z0-9_]+)(?: [Ee]xecution [Pp]rovider)? is not supported in this build")
_MODEL_LOAD = _pattern(r"Load model from (.+?) failed:\s*(.*)$")
_NO_TEST_DATA = _pattern(r"there is no test (?:input )?data for (?:input (\S+) and )?model ?(\S*)")
_TEST_CASE_DIR = _pattern(r"test case dir doesn't exist")
_UNKNOWN_FLAG = _pattern(r"Unknown command line flag '([^']+)'")
_GETOPT_FLAG = _pattern(r"(?:invalid|unknown|illegal) option -- '?([^'\s]+)'?")
_USAGE = _pattern(r"perf_test \[options\.\.\.\] model_path")
_RUN_FAILED = _pattern(r"Run failed:\s*(.*)$")
_ENV_FAILED = _pattern(r"Error creating environment:\s*(.*)$")

_OLDER_THAN_CONVERTER = "the onnxruntime_perf_test binary is older than the converter that built this model"
_NEWER_RELEASE_HINT = ("build onnxruntime_perf_test from an ONNX Runtime release at least as new as the one in the "
                       "model's manifest (converter_versions)")


def parse_output(text: str, *, exit_code: int | None = None) -> OrtPerfTestResult:
    """Parse onnxruntime_perf_test's combined stdout/stderr (``exit_code`` when known).

    Failures the tool explains come back as ``errors`` on the result (failure is data, so a sweep goes on), and so
    does a non-zero exit it does not explain (``crashed`` for a signal, ``exit_status`` otherwise). Output in which
    nothing is recognised and that exited 0 (or with an unknown status) raises :class:`OrtPerfTestError`
    (``bad_output``) naming what was looked for.
    """
    values: dict[str, float | int] = {}
    percentiles: dict[str, float] = {}
    runs_line: int | None = None
    result_file_error: str | None = None
    errors: list[OrtPerfTestIssue] = []
    usage_shown = False

    for line in text.splitlines():
        matched = False
        for pattern, name, factor in _SUMMARY:
            if m := pattern.search(line):
                values[name] = float(m.group(1)) * factor if factor is not None else int(m.group(1))
                matched = True
                break
        if matched:
            continue
        if m := _LATENCY_LINE.search(line):
            percentiles[m.group(1).lower()] = float(m.group(2)) * 1e6
            continue
        if m := _RUNS_LINE.search(line):
            runs_line = int(m.group(1))
            continue
        if m := _RESULT_FILE_ERROR.search(line):
            result_file_error = line.strip()
            continue
        issue = _classify(line)
        if issue is not None:
            errors.append(issue)
            continue
        if _USAGE.search(line):
            usage_shown = True

    if usage_shown and not any(issue.kind == "bad_flag" for issue in errors):
        errors.append(OrtPerfTestIssue(
            "bad_flag", "onnxruntime_perf_test rejected its command line and printed its usage",
            hint="a value farmbench passes is out of the range this binary accepts (-r, -x, -e or -o); run it by "
                 "hand with the stored command to see which"))
    if exit_code is not None and exit_code != 0 and not errors:
        errors.append(_exit_issue(exit_code, text))

    if "requests" not in values and runs_line is not None:
        values["requests"] = runs_line
    if not values and not percentiles and not errors:
        raise OrtPerfTestError(
            "bad_output",
            "onnxruntime_perf_test output has no timing summary ('Total inference requests', 'Average inference "
            "time cost', 'Min Latency') and no failure message farmbench recognises",
            hint="check that the binary ran at all (first lines: " + _head(text) + ")",
        )

    def number(name: str) -> float | None:
        value = values.get(name)
        return None if value is None else float(value)

    def count(name: str) -> int | None:
        value = values.get(name)
        return None if value is None else int(value)

    return OrtPerfTestResult(
        intra_op_threads=count("intra_op_threads"),
        session_creation_us=number("session_creation_us"),
        first_inference_us=number("first_inference_us"),
        total_inference_us=number("total_inference_us"),
        requests=count("requests"),
        average_us=number("average_us"),
        total_run_time_us=number("total_run_time_us"),
        inferences_per_s=number("inferences_per_s"),
        avg_cpu_percent=count("avg_cpu_percent"),
        peak_working_set_bytes=count("peak_working_set_bytes"),
        min_us=percentiles.get("min"), max_us=percentiles.get("max"), p50_us=percentiles.get("p50"),
        p90_us=percentiles.get("p90"), p95_us=percentiles.get("p95"), p99_us=percentiles.get("p99"),
        p999_us=percentiles.get("p999"),
        result_file_error=result_file_error,
        errors=tuple(errors),
    )


def _classify(line: str) -> OrtPerfTestIssue | None:
    if m := _IR_VERSION.search(line):
        model_ir, max_ir = int(m.group(1)), int(m.group(2))
        return OrtPerfTestIssue(
            "ir_version",
            f"the model has ONNX IR version {model_ir}; this onnxruntime_perf_test supports at most {max_ir}: "
            + _OLDER_THAN_CONVERTER, hint=_NEWER_RELEASE_HINT, version=model_ir)
    if m := _UNSUPPORTED_OP.search(line):
        op, opset = m.group(1), int(m.group(2))
        return OrtPerfTestIssue(
            "unsupported_op",
            f"this onnxruntime_perf_test build has no kernel for {op} (opset {opset}) with these input types",
            hint="use a full (not minimal or reduced-operator) build of a release at least as new as the converter "
                 "that built the model, or convert the model for an older opset",
            op=op, version=opset)
    if m := _UNREGISTERED_OP.search(line):
        op, opset = m.group(2), int(m.group(3))
        return OrtPerfTestIssue(
            "unsupported_op", f"this onnxruntime_perf_test does not know the operator {m.group(1) or 'ai.onnx'}:{op}",
            hint=_NEWER_RELEASE_HINT, op=op, version=opset if opset >= 0 else None)
    if m := _PROVIDER_UNAVAILABLE.search(line):
        provider = m.group(1)
        return OrtPerfTestIssue(
            "provider_unavailable", f"this onnxruntime_perf_test build has no {provider} execution provider",
            hint=f"use ort_provider = \"CPUExecutionProvider\", or a binary built with {provider} (build.sh "
                 f"--use_{provider.lower()})", provider=provider)
    if m := _MODEL_LOAD.search(line):
        return OrtPerfTestIssue(
            "model_load", f"onnxruntime_perf_test could not load the model: {m.group(2).strip() or line.strip()}",
            hint="check the model file on the phone (a minimal build loads only .ort models)")
    if m := _NO_TEST_DATA.search(line):
        return OrtPerfTestIssue(
            "no_test_data", "onnxruntime_perf_test found no input data for the model" +
            (f" (input {m.group(1)})" if m.group(1) else ""),
            hint="farmbench passes -I to generate inputs; a binary that ignores it predates -I: use a newer one")
    if _TEST_CASE_DIR.search(line):
        return OrtPerfTestIssue(
            "test_case_dir", "onnxruntime_perf_test failed with \"test case dir doesn't exist\"",
            hint="a bug of the 1.18 release with -I (microsoft/onnxruntime#21267): use another release")
    if m := _UNKNOWN_FLAG.search(line) or _GETOPT_FLAG.search(line):
        flag = m.group(1)
        return OrtPerfTestIssue(
            "bad_flag", f"onnxruntime_perf_test does not accept the flag -{flag}",
            hint="the binary is older (or newer) than the releases farmbench knows; see the README's Android "
                 "section for the flags farmbench passes", flag=flag)
    if m := _ENV_FAILED.search(line):
        return OrtPerfTestIssue("run_failed", f"onnxruntime_perf_test could not create its environment: "
                                              f"{m.group(1).strip()}")
    if m := _RUN_FAILED.search(line):
        return OrtPerfTestIssue("run_failed", f"onnxruntime_perf_test reported 'Run failed:{m.group(1).strip()}'",
                                hint="see the lines before it in the stored output")
    return None


def _exit_issue(exit_code: int, text: str) -> OrtPerfTestIssue:
    if exit_code > 128:
        return OrtPerfTestIssue(
            "crashed", f"onnxruntime_perf_test died of signal {exit_code - 128} (exit status {exit_code}); last "
                       f"output: {_tail(text)}",
            hint="look for a tombstone (adb logcat -b crash); an ABI mismatch or a missing shared library is common")
    return OrtPerfTestIssue(
        "exit_status", f"onnxruntime_perf_test exited with status {exit_code}: {_tail(text)}",
        hint="run the stored command by hand in `adb shell` to see why"
             + ("; 127 means the binary or a library it needs was not found" if exit_code == 127 else ""))


def parse_result_file(text: str) -> ResultFile:
    """Parse the tool's result file: one ``model,latency_s,peak_bytes,cpu_percent,index`` row per timed run (or
    ``model,submission_s,total_s,peak_bytes,cpu_percent,index`` since late 2025), then with ``-s`` a blank line
    and the percentile lines.

    Fields are read from the right, so a comma inside the model name does not shift them. The file is opened for
    append by the tool; if it holds several sessions (run index restarting at 0), the last one is returned.
    A line that is neither a row nor a percentile raises :class:`OrtPerfTestError` (``bad_output``).
    """
    rows: list[ResultFileRow] = []
    percentiles: dict[str, float] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if m := _LATENCY_LINE.search(line):
            percentiles[m.group(1).lower()] = float(m.group(2)) * 1e6
            continue
        row = _result_row(line)
        if row is None:
            raise OrtPerfTestError(
                "bad_output", f"onnxruntime_perf_test result file line {number} is not a run: {line[:120]!r}",
                hint="expected 'model,seconds,peak_bytes,cpu_percent,run_index'")
        if row.run_index == 0:
            rows.clear()
            percentiles.clear()
        rows.append(row)
    return ResultFile(tuple(rows), percentiles)


def _result_row(line: str) -> ResultFileRow | None:
    fields = line.strip().split(",")
    if len(fields) < 5:
        return None
    try:
        run_index, cpu, peak = int(fields[-1]), int(fields[-2]), int(fields[-3])
        rest = fields[:-3]
        submission: float | None = None
        if len(rest) >= 3 and _is_number(rest[-2]):
            submission, total = float(rest[-2]) * 1e6, float(rest[-1]) * 1e6
            name = ",".join(rest[:-2])
        else:
            total, name = float(rest[-1]) * 1e6, ",".join(rest[:-1])
    except ValueError:
        return None
    return ResultFileRow(name, total, peak, cpu, run_index, submission)


def _is_number(text: str) -> bool:
    return re.fullmatch(_NUMBER, text.strip()) is not None


def parse_run(run: OrtPerfTestRun) -> OrtPerfTestResult:
    """Output, exit code and result file of one invocation -> one result with its raw samples when the run
    succeeded and the file holds them."""
    result = parse_output(run.output, exit_code=run.exit_code)
    if result.error is None and run.result_file is not None and run.result_file.strip():
        result = result.with_result_file(parse_result_file(run.result_file))
    return result


def _head(text: str, limit: int = 160) -> str:
    flat = " | ".join(line.strip() for line in text.strip().splitlines()[:3])
    if not flat:
        return "<empty output>"
    return repr(flat[:limit] + ("..." if len(flat) > limit else ""))


def _tail(text: str, limit: int = 200) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    flat = " | ".join(lines[-3:])
    return repr(flat[-limit:]) if flat else "<no output>"


__all__ = [
    "OPT_LEVEL_FLAGS", "PROVIDER_FLAGS", "OrtPerfTestConfig", "OrtPerfTestError", "OrtPerfTestIssue",
    "OrtPerfTestResult", "OrtPerfTestRun", "ResultFile", "ResultFileRow", "opt_level_flag", "ort_perf_test_argv",
    "parse_output", "parse_result_file", "parse_run", "provider_flag",
]
