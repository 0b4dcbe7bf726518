"""TFLite/LiteRT's native ``benchmark_model`` binary: command line, CPU affinity, and output parsing.

This module is pure: it builds an argv and parses text. Running it on a phone (push, shell, timeouts) is the
transport's job; the runner glues the two.

What ``benchmark_model`` prints, and what we take from it (golden files of real output are in
``tests/data/benchmark_model/``, each with its source):

* Two ``count=`` statistic lines: the warm-up loop's first, then the timed loop's. The **last** ``count=`` line is
  the timed one (the tool always runs warm-up before the timed loop, and prints a line for each even when a loop ran
  zero times). Older TF builds print ``count first curr min max avg std``; LiteRT adds ``p5 median p95``. A line
  with ``count=1`` has only ``curr`` (and the percentiles), so min = max = mean = curr then.
* ``Inference timings in us: Init: ..., First inference: ..., Warmup (avg): ..., Inference (avg): ...`` (TF 2.x and
  LiteRT), or the older ``Average inference timings in us: Warmup: ..., Init: ..., no stats: ...`` (the label of
  the last field was the benchmark name, empty by default, hence "no stats"; we read it as the inference average).
* ``Memory footprint delta from the start of the tool (MB): init=... overall=...`` and, with
  ``--report_peak_memory_footprint``, ``Overall peak memory footprint (MB) via periodic monitoring: ...``.
* Delegate coverage: ``Explicitly applied X delegate, and the model graph will be completely executed by the
  delegate.``, ``... partially executed by the delegate w/ N delegate kernels.``, ``Though X delegate is explicitly
  applied, the model graph will not be executed by the delegate.``
* Failures: ``Didn't find op for builtin opcode 'OP' version 'V'`` (the binary is older than the converter),
  ``Failed to apply X delegate.``, ``Failed to initialize the interpreter``, ``Benchmarking failed.``

Lines may carry a prefix (``INFO: ``, a logcat header, indentation): every pattern is searched, not anchored.

benchmark_model prints aggregates only; :meth:`BenchmarkModelResult.to_latency_stats` turns them into a
:class:`~farmbench.results.stats.LatencyStats` flagged ``aggregate_only``. Repeated sessions give the distribution.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from farmbench.errors import RunnerError, UsageError
from farmbench.results.stats import LatencyStats, summarize_aggregates

Coverage = Literal["full", "partial", "none"]
ErrorKind = Literal["op_version", "delegate_failed", "init_failed", "benchmark_failed"]

CPU_SELECTIONS: Final = ("big", "little", "all")

# Most specific first: an op-version failure also prints "Failed to initialize the interpreter" and
# "Benchmarking failed.", and the user should be told the cause, not the consequence.
_ERROR_PRIORITY: Final[tuple[ErrorKind, ...]] = ("op_version", "delegate_failed", "init_failed", "benchmark_failed")

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"

_STAT_LINE = re.compile(r"\bcount=(\d+)")
_STAT_PAIR = re.compile(rf"\b(count|first|curr|min|max|avg|std|p5|median|p95)=({_NUMBER})")
_TIMINGS_LINE = re.compile(r"(Average inference timings in us|Inference timings in us):(.*)$")
_TIMING_PAIR = re.compile(rf"([A-Za-z][A-Za-z ()]*?):\s*({_NUMBER})")
_MEMORY_LINE = re.compile(
    rf"Memory footprint delta from the start of the tool \(MB\):\s*init=({_NUMBER})\s+overall=({_NUMBER})"
)
_PEAK_MEMORY_LINE = re.compile(rf"[Pp]eak memory footprint \(MB\)[^:\n]*:\s*({_NUMBER})")
_DELEGATE_FULL = re.compile(
    r"Explicitly applied (\S+) delegate, and the model graph will be completely executed by the delegate"
)
_DELEGATE_PARTIAL = re.compile(
    r"Explicitly applied (\S+) delegate, and the model graph will be partially executed by the delegate"
    r" w/ (\d+) delegate kernels"
)
_DELEGATE_NONE = re.compile(
    r"Though (\S+) delegate is explicitly applied, the model graph will not be executed by the delegate"
)
_OP_VERSION = re.compile(r"Didn't find op for builtin opcode '([A-Za-z0-9_]+)' version '(\d+)'")
_DELEGATE_FAILED = re.compile(r"Failed to apply (\S+) delegate")
_INIT_FAILED = re.compile(r"Failed to initialize the interpreter")
_BENCHMARK_FAILED = re.compile(r"Benchmarking failed")
_OP_PROFILE_START = re.compile(r"(Operator-wise Profiling Info|=+ Run Order =+)")

_TIMING_LABELS: Final = {
    "init": "init_us",
    "first inference": "first_inference_us",
    "warmup (avg)": "warmup_avg_us",
    "warmup": "warmup_avg_us",  # old "Average inference timings" line
    "inference (avg)": "inference_avg_us",
    "inference": "inference_avg_us",
    "no stats": "inference_avg_us",  # old line: the label is the (empty) benchmark name
}


# --------------------------------------------------------------------------------------------------- command line


@dataclass(frozen=True)
class BenchmarkModelConfig:
    """The flags farmbench passes to ``benchmark_model``. ``None`` means "do not pass it, use the tool's default".

    Durations keep the tool's own ``_secs`` suffix so each field reads as its flag. ``input_layer_value_files``
    pairs an input tensor name with a device path holding the raw bytes of exactly that tensor.
    """

    graph: str
    num_threads: int | None = None
    warmup_runs: int | None = None
    warmup_min_secs: float | None = None
    num_runs: int | None = None
    min_secs: float | None = None
    max_secs: float | None = None
    use_xnnpack: bool | None = None
    use_gpu: bool | None = None
    use_nnapi: bool | None = None
    nnapi_accelerator_name: str | None = None
    report_peak_memory_footprint: bool | None = None
    enable_op_profiling: bool | None = None
    input_layer_value_files: Sequence[tuple[str, str]] | None = None
    output_filepath: str | None = None

    def __post_init__(self) -> None:
        if not self.graph:
            raise UsageError("benchmark_model needs a graph path")
        for name in ("num_threads", "num_runs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"benchmark_model {name} must be at least 1, got {value}")
        for name in ("warmup_runs",):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UsageError(f"benchmark_model {name} must not be negative, got {value}")
        for name in ("warmup_min_secs", "min_secs", "max_secs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UsageError(f"benchmark_model {name} must not be negative, got {value}")
        if self.nnapi_accelerator_name and self.use_nnapi is False:
            raise UsageError(
                "benchmark_model nnapi_accelerator_name is set but use_nnapi is false",
                hint="set use_nnapi: true, or drop nnapi_accelerator_name",
            )
        if self.input_layer_value_files is not None:
            pairs = tuple((str(n), str(p)) for n, p in self.input_layer_value_files)
            for name, path in pairs:
                # The flag is "name:path,name:path"; a ':' in a name is written '::' (the tool's documented escape,
                # e.g. "input::0:/path"), but nothing escapes ',' anywhere or ':' in a path.
                if not name or not path or "," in name or any(ch in path for ch in ":,"):
                    raise UsageError(
                        f"benchmark_model input_layer_value_files entry ({name!r}, {path!r}) cannot be passed: "
                        "names and paths must be non-empty, names contain no ',' and paths no ':' or ','",
                        hint="rename the file on the device, or give the input's signature name",
                    )
            object.__setattr__(self, "input_layer_value_files", pairs)


def benchmark_model_argv(binary: str, config: BenchmarkModelConfig, *, taskset_mask: str | None) -> list[str]:
    """The command line, as a list: ``taskset MASK BINARY --graph=... --flag=value ...``.

    Only flags that are set are passed; booleans are ``true``/``false`` as the tool parses them. Without a mask
    there is no ``taskset`` (it is in toybox on current Android, but a mask of every CPU would only add a process).
    """
    argv: list[str] = []
    if taskset_mask is not None:
        argv += ["taskset", taskset_mask]
    argv += [binary, f"--graph={config.graph}"]
    ordered: list[tuple[str, Any]] = [
        ("num_threads", config.num_threads),
        ("warmup_runs", config.warmup_runs),
        ("warmup_min_secs", config.warmup_min_secs),
        ("num_runs", config.num_runs),
        ("min_secs", config.min_secs),
        ("max_secs", config.max_secs),
        ("use_xnnpack", config.use_xnnpack),
        ("use_gpu", config.use_gpu),
        ("use_nnapi", config.use_nnapi),
        ("nnapi_accelerator_name", config.nnapi_accelerator_name),
        ("report_peak_memory_footprint", config.report_peak_memory_footprint),
        ("enable_op_profiling", config.enable_op_profiling),
    ]
    for flag, value in ordered:
        if value is not None:
            argv.append(f"--{flag}={_flag_value(value)}")
    if config.input_layer_value_files:
        joined = ",".join(f"{name.replace(':', '::')}:{path}" for name, path in config.input_layer_value_files)
        argv.append(f"--input_layer_value_files={joined}")
    if config.output_filepath is not None:
        argv.append(f"--output_filepath={config.output_filepath}")
    return argv


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def cpu_mask(selection: str, clusters: Sequence[tuple[Sequence[int], int]]) -> str:
    """Resolve a CPU selection to a ``taskset`` hex mask (lowercase, no ``0x``).

    ``clusters`` are cpufreq policies as ``(cpus, max_freq_khz)``. ``all`` is every CPU listed; ``little`` the
    cluster(s) with the lowest max frequency; ``big`` every other cluster -- on a phone with prime + big + little
    cores, "big" includes the prime core, because a 4-thread benchmark pinned to the single prime core would measure
    contention, not the big cores. With one cluster, big, little and all are the same. Anything else must be a hex
    mask (``f0`` or ``0xf0``) naming only listed CPUs.
    """
    if not clusters:
        raise UsageError(
            "cannot resolve a CPU mask: the device reported no cpufreq clusters",
            hint="give an explicit hex mask (e.g. cpu_affinity: 0xf0), or probe the device again",
        )
    all_cpus = sorted({cpu for cpus, _ in clusters for cpu in cpus})
    if not all_cpus:
        raise UsageError("cannot resolve a CPU mask: the cpufreq clusters list no CPUs")
    wanted = selection.strip().lower()
    if wanted == "all":
        return _mask_of(all_cpus)
    if wanted in ("big", "little"):
        freqs = sorted({freq for _, freq in clusters})
        lowest = freqs[0]
        if len(freqs) == 1:
            return _mask_of(all_cpus)
        chosen = [cpu for cpus, freq in clusters for cpu in cpus if (freq == lowest) == (wanted == "little")]
        return _mask_of(chosen)
    text = wanted.removeprefix("0x")
    if not text or not re.fullmatch(r"[0-9a-f]+", text):
        raise UsageError(
            f"unknown CPU selection {selection!r}",
            hint=f"use one of {', '.join(CPU_SELECTIONS)} or a hex mask such as 0xf0",
        )
    mask = int(text, 16)
    if mask == 0:
        raise UsageError(f"CPU mask {selection!r} selects no CPU")
    known = int(_mask_of(all_cpus), 16)
    if mask & ~known:
        raise UsageError(
            f"CPU mask {selection!r} names CPUs the device does not have (it has CPUs {all_cpus})",
            hint=f"the mask of every CPU is 0x{known:x}",
        )
    return f"{mask:x}"


def _mask_of(cpus: Sequence[int]) -> str:
    mask = 0
    for cpu in cpus:
        if cpu < 0:
            raise UsageError(f"invalid CPU number {cpu} in the cpufreq clusters")
        mask |= 1 << cpu
    return f"{mask:x}"


# --------------------------------------------------------------------------------------------------------- output


class BenchmarkModelError(RunnerError):
    """benchmark_model failed in a way its output explains. ``kind`` is one of op_version, delegate_failed,
    init_failed, benchmark_failed, or ``bad_output`` when the output could not be understood."""

    def __init__(self, kind: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind


@dataclass(frozen=True)
class BenchmarkModelIssue:
    """One failure line benchmark_model printed, classified. ``op``/``version`` only for ``op_version``."""

    kind: ErrorKind
    message: str
    hint: str | None = None
    op: str | None = None
    version: int | None = None

    def to_error(self) -> BenchmarkModelError:
        return BenchmarkModelError(self.kind, self.message, hint=self.hint)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "hint": self.hint, "op": self.op, "version": self.version}


@dataclass(frozen=True)
class DelegateCoverage:
    """How much of the graph a delegate took. ``kernels`` is the number of delegate partitions when the tool says
    (partial: N; none: 0; full: None, since the coverage line does not give it)."""

    name: str
    coverage: Coverage
    kernels: int | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "coverage": self.coverage, "kernels": self.kernels}


@dataclass(frozen=True)
class BenchmarkModelResult:
    """Everything parsed from one benchmark_model session. Times in µs, memory in MB (the tool's MB: 2**20 bytes).

    ``count`` .. ``p95_us`` come from the timed ``count=`` line (the last one); ``warmup_*`` from the first when
    there are two. Absent values are None.
    """

    count: int | None = None
    first_us: float | None = None
    curr_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None
    avg_us: float | None = None
    std_us: float | None = None
    p5_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None
    warmup_count: int | None = None
    init_us: float | None = None
    first_inference_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    memory_init_mb: float | None = None
    memory_overall_mb: float | None = None
    peak_memory_mb: float | None = None
    delegates: tuple[DelegateCoverage, ...] = ()
    op_profile_lines: tuple[str, ...] = ()
    errors: tuple[BenchmarkModelIssue, ...] = field(default_factory=tuple)

    @property
    def delegate(self) -> DelegateCoverage | None:
        """The first delegate's coverage (benchmark_model usually applies one), or None without a delegate."""
        return self.delegates[0] if self.delegates else None

    @property
    def error(self) -> BenchmarkModelIssue | None:
        """The most specific failure printed (op-version before its "Failed to initialize" consequence)."""
        for kind in _ERROR_PRIORITY:
            for issue in self.errors:
                if issue.kind == kind:
                    return issue
        return None

    @property
    def ok(self) -> bool:
        return not self.errors and self.count is not None

    def raise_for_error(self) -> None:
        issue = self.error
        if issue is not None:
            raise issue.to_error()

    def to_latency_stats(self) -> LatencyStats:
        """The timed loop's aggregates as LatencyStats (``aggregate_only``). Raises the classified error if the run
        failed, and a ``bad_output`` error naming what is missing if the timed statistics are incomplete."""
        self.raise_for_error()
        missing = [name for name, value in (("count", self.count), ("avg", self.avg_us), ("min", self.min_us),
                                            ("max", self.max_us)) if value is None]
        if missing:
            raise BenchmarkModelError(
                "bad_output",
                "benchmark_model's timed statistics are incomplete: missing " + ", ".join(missing)
                + " in the last 'count=' line",
                hint="keep the tool's stdout whole (no head/tail) and use a benchmark_model build that prints "
                "'count=... min=... max=... avg=...'",
            )
        assert self.count is not None and self.avg_us is not None and self.min_us is not None
        assert self.max_us is not None
        if self.count == 0:
            raise BenchmarkModelError("bad_output", "benchmark_model's timed loop ran 0 iterations (count=0)",
                                      hint="raise num_runs or min_secs, or max_secs if the model is slow")
        return summarize_aggregates(
            count=self.count, mean_us=self.avg_us, std_us=self.std_us, min_us=self.min_us, max_us=self.max_us,
            p5_us=self.p5_us, median_us=self.median_us, p95_us=self.p95_us,
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "delegates":
                value = [d.to_json() for d in self.delegates]
            elif name == "errors":
                value = [e.to_json() for e in self.errors]
            elif name == "op_profile_lines":
                value = list(self.op_profile_lines)
            data[name] = value
        data["delegate"] = self.delegate.to_json() if self.delegate else None
        return data


def parse_output(text: str) -> BenchmarkModelResult:
    """Parse benchmark_model's combined stdout/stderr.

    Failures the tool explains come back as ``errors`` on the result (failure is data, so a sweep goes on).
    Output in which nothing is recognised raises :class:`BenchmarkModelError` (``bad_output``) naming what was
    looked for, as does output that has the warm-up statistics but not the timed ones (the binary stopped between
    the two loops). Output cut short after some recognised lines parses; :meth:`~BenchmarkModelResult.to_latency_stats`
    then names what is missing. Without a summary line, ``warmup_avg_us`` falls back to the warm-up line's avg.
    """
    stat_lines: list[dict[str, float]] = []
    timings: dict[str, float] = {}
    memory: tuple[float, float] | None = None
    peak_mb: float | None = None
    delegates: list[DelegateCoverage] = []
    errors: list[BenchmarkModelIssue] = []
    op_profile: list[str] = []
    in_profile = False

    for line in text.splitlines():
        if in_profile or _OP_PROFILE_START.search(line):
            in_profile = True
            op_profile.append(line.rstrip())
            continue
        if _STAT_LINE.search(line):
            stat_lines.append({key: float(value) for key, value in _STAT_PAIR.findall(line)})
            continue
        match = _TIMINGS_LINE.search(line)
        if match:
            for label, value in _TIMING_PAIR.findall(match.group(2)):
                key = _TIMING_LABELS.get(label.strip().lower())
                if key is not None:
                    timings[key] = float(value)
            continue
        if m := _MEMORY_LINE.search(line):
            memory = (float(m.group(1)), float(m.group(2)))
            continue
        if m := _PEAK_MEMORY_LINE.search(line):
            peak_mb = float(m.group(1))
            continue
        if m := _DELEGATE_PARTIAL.search(line):
            delegates.append(DelegateCoverage(m.group(1), "partial", int(m.group(2))))
            continue
        if m := _DELEGATE_FULL.search(line):
            delegates.append(DelegateCoverage(m.group(1), "full", None))
            continue
        if m := _DELEGATE_NONE.search(line):
            delegates.append(DelegateCoverage(m.group(1), "none", 0))
            continue
        if m := _OP_VERSION.search(line):
            op, version = m.group(1), int(m.group(2))
            errors.append(BenchmarkModelIssue(
                "op_version",
                f"the model uses {op} version {version}, which this benchmark_model binary does not have: "
                "the runtime (benchmark_model binary) is older than the converter that built this model",
                hint="update the binary: use a LiteRT benchmark_model for this ABI at least as new as the converter "
                "(or convert the model with an older converter)",
                op=op, version=version,
            ))
            continue
        if m := _DELEGATE_FAILED.search(line):
            errors.append(BenchmarkModelIssue(
                "delegate_failed", f"benchmark_model could not apply the {m.group(1)} delegate to this model",
                hint="run without the delegate, or with a benchmark_model build that supports this model on it",
            ))
            continue
        if _INIT_FAILED.search(line):
            errors.append(BenchmarkModelIssue(
                "init_failed", "benchmark_model failed to initialize the interpreter for this model",
                hint="see the ERROR lines before it in the stored output",
            ))
            continue
        if _BENCHMARK_FAILED.search(line):
            errors.append(BenchmarkModelIssue("benchmark_failed", "benchmark_model reported 'Benchmarking failed.'"))
            continue

    timed: dict[str, float] = {}
    warmup: dict[str, float] | None = None
    if len(stat_lines) >= 2:
        warmup, timed = stat_lines[0], stat_lines[-1]
    elif len(stat_lines) == 1 and not errors:
        # One line is the warm-up loop's: the tool prints the timed line after it, even for zero iterations.
        raise BenchmarkModelError(
            "bad_output",
            "benchmark_model printed the warm-up statistics but not the timed run's (only one 'count=' line)",
            hint="the binary probably died or was killed during the timed loop; check the device log and timeout_s",
        )
    if not stat_lines and not timings and not errors and not delegates and memory is None and peak_mb is None:
        raise BenchmarkModelError(
            "bad_output",
            "benchmark_model output has no timing statistics ('count=' lines or 'Inference timings in us:') "
            "and no failure message farmbench recognises",
            hint="check that the binary ran at all (first lines: " + _head(text) + ")",
        )

    count = int(timed["count"]) if "count" in timed else None
    curr = timed.get("curr")
    min_us, max_us, avg_us = timed.get("min"), timed.get("max"), timed.get("avg")
    if count == 1 and curr is not None:
        # A single iteration prints only curr (and its percentiles): it is the min, max and mean.
        min_us = curr if min_us is None else min_us
        max_us = curr if max_us is None else max_us
        avg_us = curr if avg_us is None else avg_us

    return BenchmarkModelResult(
        count=count,
        first_us=timed.get("first"),
        curr_us=curr,
        min_us=min_us,
        max_us=max_us,
        avg_us=avg_us,
        std_us=timed.get("std"),
        p5_us=timed.get("p5"),
        median_us=timed.get("median"),
        p95_us=timed.get("p95"),
        warmup_count=int(warmup["count"]) if warmup and "count" in warmup else None,
        init_us=timings.get("init_us"),
        first_inference_us=timings.get("first_inference_us"),
        warmup_avg_us=timings.get("warmup_avg_us", warmup.get("avg") if warmup else None),
        inference_avg_us=timings.get("inference_avg_us"),
        memory_init_mb=memory[0] if memory else None,
        memory_overall_mb=memory[1] if memory else None,
        peak_memory_mb=peak_mb,
        delegates=tuple(delegates),
        op_profile_lines=tuple(op_profile),
        errors=tuple(errors),
    )


def _head(text: str, limit: int = 160) -> str:
    flat = " | ".join(line.strip() for line in text.strip().splitlines()[:3])
    if not flat:
        return "<empty output>"
    return repr(flat[:limit] + ("..." if len(flat) > limit else ""))
