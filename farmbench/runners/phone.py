"""The Android side: prepare a phone (probe it, push the user's ``benchmark_model`` and ``onnxruntime_perf_test``
binaries), run one measurement.

TFLite: timing happens on the phone inside LiteRT's ``benchmark_model``; it prints aggregates only (count, mean, std,
min, max, and p5/median/p95 on LiteRT builds), so each repeat is one session and the distribution across sessions is
what statistics and checks use. The record carries ``latency`` from :func:`summarize_aggregates` and no raw samples.

ONNX: timing happens inside ONNX Runtime's ``onnxruntime_perf_test``, whose result file holds every timed run's
latency: those are the record's raw samples (see :mod:`farmbench.runners.ort_perf_test`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from farmbench.devices.config import DeviceConfig
from farmbench.errors import CommandTimeoutError, FarmbenchError, RunnerError, UsageError
from farmbench.results.schema import MeasurementRecord
from farmbench.runners.benchmark_model import BenchmarkModelConfig, benchmark_model_argv, cpu_mask, parse_output
from farmbench.runners.board import RunSpec
from farmbench.runners.ort_perf_test import (
    OrtPerfTestConfig,
    OrtPerfTestRun,
    opt_level_flag,
    ort_perf_test_argv,
    parse_run,
    provider_flag,
)
from farmbench.runners.telemetry import DeviceTelemetry, run_sampled
from farmbench.runners.tensor_io import input_bytes, split_outputs
from farmbench.telemetry.sampler import SamplerRun
from farmbench.transports.base import Deadline, Transport
from farmbench.variants.inspect import ModelFacts

SETUP_TIMEOUT_S = 120.0
DEFAULT_DEVICE_DIR = "/data/local/tmp/farmbench"
PROPS = ("ro.product.manufacturer", "ro.product.model", "ro.soc.model", "ro.board.platform", "ro.hardware",
         "ro.build.fingerprint", "ro.build.version.sdk", "ro.build.version.release", "ro.product.cpu.abi",
         "ro.serialno")


class PhoneSession:
    """A phone prepared for benchmark_model runs: probed, binary pushed by hash."""

    def __init__(self, device: DeviceConfig, transport: Transport) -> None:
        self.device = device
        self.transport = transport
        self.device_dir = str(device.get("device_dir") or DEFAULT_DEVICE_DIR)
        self.binary_path = ""
        self.binary_sha256: str | None = None
        self.ort_perf_test_path = ""
        self.ort_perf_test_sha256: str | None = None
        self._ort_runs = 0
        self.probe: dict[str, Any] = {}
        self._pushed: dict[str, str] = {}

    def prepare(self) -> dict[str, Any]:
        props = self._getprops()
        clusters = self._clusters()
        self.probe = {
            "props": props, "cpu_clusters": [{"cpus": c, "max_freq_khz": f} for c, f in clusters],
            "battery": self._battery(), "rooted": self._rooted(),
        }
        self.transport.mkdir_p(self.device_dir, timeout_s=SETUP_TIMEOUT_S)
        binary = self.device.get("benchmark_model")
        if binary:
            local = Path(str(binary)).expanduser()
            if not local.is_file():
                raise UsageError(f"device {self.device.name}: benchmark_model binary {local} does not exist",
                                 hint="download LiteRT's prebuilt benchmark_model for the phone's ABI"
                                      f" ({props.get('ro.product.cpu.abi') or 'see getprop ro.product.cpu.abi'})")
            sha = hashlib.sha256(local.read_bytes()).hexdigest()
            self.binary_sha256 = sha
            self.binary_path, _ = self.transport.push_cached(local, sha, self.device_dir, "benchmark_model",
                                                             timeout_s=SETUP_TIMEOUT_S)
            self.transport.run(["chmod", "755", self.binary_path], timeout_s=30.0).check()
        ort_binary = self.device.get("onnxruntime_perf_test")
        if ort_binary:
            local = Path(str(ort_binary)).expanduser()
            if not local.is_file():
                raise UsageError(f"device {self.device.name}: onnxruntime_perf_test binary {local} does not exist",
                                 hint="build it for the phone's ABI"
                                      f" ({props.get('ro.product.cpu.abi') or 'see getprop ro.product.cpu.abi'}):"
                                      " ONNX Runtime's build.sh --android (see the README's Android section)")
            self.ort_perf_test_sha256 = hashlib.sha256(local.read_bytes()).hexdigest()
            self.ort_perf_test_path, _ = self.transport.push_cached(
                local, self.ort_perf_test_sha256, self.device_dir, "onnxruntime_perf_test", timeout_s=SETUP_TIMEOUT_S)
            self.transport.run(["chmod", "755", self.ort_perf_test_path], timeout_s=30.0).check()
            self.transport.mkdir_p(f"{self.device_dir}/ort_results", timeout_s=SETUP_TIMEOUT_S)
        return self.probe

    def identity(self) -> str:
        props = self.probe.get("props", {})
        serial = props.get("ro.serialno") or props.get("ro.build.fingerprint") or self.device.name
        return f"adb:{serial}:{props.get('ro.product.model', '')}"

    def context(self) -> dict[str, Any]:
        props = self.probe.get("props", {})
        return {
            "manufacturer": props.get("ro.product.manufacturer"), "model": props.get("ro.product.model"),
            "soc": props.get("ro.soc.model") or props.get("ro.board.platform") or props.get("ro.hardware"),
            "build_fingerprint": props.get("ro.build.fingerprint"), "sdk": props.get("ro.build.version.sdk"),
            "release": props.get("ro.build.version.release"), "abi": props.get("ro.product.cpu.abi"),
            "cpu_clusters": self.probe.get("cpu_clusters"), "battery": self.probe.get("battery"),
            "rooted": self.probe.get("rooted"),
        }

    def ensure_model(self, local_path: Path, sha256: str) -> str:
        if sha256 not in self._pushed:
            remote, _ = self.transport.push_cached(local_path, sha256, self.device_dir, local_path.name,
                                                   timeout_s=SETUP_TIMEOUT_S)
            self._pushed[sha256] = remote
        return self._pushed[sha256]

    def bench(self, remote_model: str, spec: RunSpec, *, timeout_s: float) -> str:
        return self.bench_sampled(remote_model, spec, timeout_s=timeout_s)[0]

    def bench_sampled(self, remote_model: str, spec: RunSpec, *, timeout_s: float,
                      telemetry: DeviceTelemetry | None = None) -> tuple[str, SamplerRun | None]:
        """One benchmark_model session (its output, stdout then stderr); when ``telemetry`` measures power, under
        the sampler, whose lines are taken out of the output."""
        if not self.binary_path:
            raise RunnerError(f"device {self.device.name}: no benchmark_model binary configured",
                              hint='set benchmark_model = "/path/to/benchmark_model" in the device file')
        config = BenchmarkModelConfig(
            graph=remote_model, num_threads=spec.threads, warmup_runs=spec.warmup_runs,
            warmup_min_secs=spec.warmup_min_s, num_runs=spec.runs, min_secs=spec.min_s, max_secs=spec.max_s,
            use_xnnpack=spec.xnnpack == "on", report_peak_memory_footprint=True,
            use_gpu=True if spec.delegate == "gpu" else None, use_nnapi=True if spec.delegate == "nnapi" else None,
        )
        mask = None
        if spec.affinity:
            clusters = [(c["cpus"], c["max_freq_khz"]) for c in self.probe.get("cpu_clusters", [])]
            mask = cpu_mask(spec.affinity, clusters)
        argv = benchmark_model_argv(self.binary_path, config, taskset_mask=mask)
        completed, run = run_sampled(self.transport, argv, telemetry, timeout_s=timeout_s)
        return completed.stdout + completed.stderr, run

    def output_tensors(self, remote_model: str, facts: ModelFacts, samples: np.ndarray, *, threads: int = 1,
                       xnnpack: bool | None = None, delegate: str = "cpu", timeout_s: float) -> list[np.ndarray]:
        """Run the model once per sample on the phone and return its outputs: one float32 array per model output,
        ``(len(samples), ...)``, dequantised. Each sample (float values, one input) goes over as the raw bytes of
        the input tensor (pushed by hash, so the evaluation set is uploaded once per phone and input type), through
        ``--input_layer_value_files``; ``--output_filepath`` brings back the last (only) run's outputs."""
        if not self.binary_path:
            raise RunnerError(f"device {self.device.name}: no benchmark_model binary configured",
                              hint='set benchmark_model = "/path/to/benchmark_model" in the device file')
        if len(facts.inputs) != 1:
            raise UsageError(f"outputs on a phone are measured for one-input models; this one has"
                             f" {len(facts.inputs)} inputs")
        info = facts.inputs[0]
        deadline = Deadline(timeout_s)

        def left_s() -> float:
            remaining = deadline.remaining_s()
            if remaining <= 0:
                raise CommandTimeoutError(f"{self.device.name}: output tensors for {len(samples)} inputs took longer"
                                          f" than {timeout_s:g} s", hint="raise timeout_s or use fewer inputs")
            return remaining

        out_dir = f"{self.device_dir}/outputs"
        self.transport.mkdir_p(out_dir, timeout_s=left_s())
        remote_output = f"{out_dir}/out.bin"
        per_output: list[list[np.ndarray]] = [[] for _ in facts.outputs]
        with tempfile.TemporaryDirectory(prefix="farmbench-io-") as tmp_text:
            tmp = Path(tmp_text)
            for index, sample in enumerate(samples):
                data = input_bytes(sample, info)
                local_input = tmp / "input.bin"
                local_input.write_bytes(data)
                sha = hashlib.sha256(data).hexdigest()
                remote_input, _ = self.transport.push_cached(local_input, sha, f"{self.device_dir}/inputs",
                                                             "input.bin", timeout_s=left_s())
                config = BenchmarkModelConfig(
                    graph=remote_model, num_threads=threads, warmup_runs=0, warmup_min_secs=0.0, num_runs=1,
                    min_secs=0.0, use_xnnpack=xnnpack, use_gpu=True if delegate == "gpu" else None,
                    use_nnapi=True if delegate == "nnapi" else None, input_layer_value_files=[(info.name, remote_input)],
                    output_filepath=remote_output)
                self.transport.run(["rm", "-f", remote_output], timeout_s=left_s()).check()
                completed = self.transport.run(benchmark_model_argv(self.binary_path, config, taskset_mask=None),
                                               timeout_s=left_s())
                text = completed.stdout + completed.stderr
                parse_output(text).raise_for_error()
                if completed.rc != 0:
                    raise RunnerError(f"{self.device.name}: benchmark_model exited {completed.rc} on input {index}"
                                      f" ({_tail(text)})", hint="run the same command in `adb shell` to see why")
                local_output = tmp / "output.bin"
                self.transport.pull(remote_output, local_output, timeout_s=left_s())
                for k, array in enumerate(split_outputs(local_output.read_bytes(), facts.outputs)):
                    per_output[k].append(array)
        return [np.concatenate(arrays, axis=0) for arrays in per_output]

    def bench_onnx(self, remote_model: str, spec: RunSpec, *, timeout_s: float) -> OrtPerfTestRun:
        return self.bench_onnx_sampled(remote_model, spec, timeout_s=timeout_s)[0]

    def bench_onnx_sampled(self, remote_model: str, spec: RunSpec, *, timeout_s: float,
                           telemetry: DeviceTelemetry | None = None) -> tuple[OrtPerfTestRun, SamplerRun | None]:
        """One onnxruntime_perf_test session: ``spec.runs`` timed runs (``-m times -r``) after the tool's single
        warm-up, ``-x threads``, ``-e``/``-o`` from the spec's ONNX Runtime provider and optimisation level, generated
        inputs (``-I``), statistics (``-s``), pinned with the same ``taskset`` mask as benchmark_model. The per-run
        result file is read back and deleted. The tool cannot honour warm-up counts, min_s or max_s (see
        :func:`ort_protocol`); ``timeout_s`` bounds the whole session. With ``telemetry`` measuring power, the tool
        runs under the sampler (reading the result file back does not)."""
        if not self.ort_perf_test_path:
            raise RunnerError(f"device {self.device.name}: no onnxruntime_perf_test binary configured",
                              hint='set onnxruntime_perf_test = "/path/to/onnxruntime_perf_test" in the device file')
        self._ort_runs += 1
        # The tool appends to its result file: a fresh name per session, deleted before and after.
        result_file = f"{self.device_dir}/ort_results/{os.getpid()}-{self._ort_runs}.csv"
        config = OrtPerfTestConfig(
            model=remote_model, result_file=result_file, repeated_times=spec.runs, intra_op_threads=spec.threads,
            execution_provider=provider_flag(spec.ort_provider), optimization_level=opt_level_flag(spec.ort_opt_level),
            generate_inputs=True, show_statistics=True,
        )
        mask = None
        if spec.affinity:
            clusters = [(c["cpus"], c["max_freq_khz"]) for c in self.probe.get("cpu_clusters", [])]
            mask = cpu_mask(spec.affinity, clusters)
        argv = ort_perf_test_argv(self.ort_perf_test_path, config, taskset_mask=mask)
        try:
            self.transport.remove([result_file], timeout_s=30.0)
            completed, run = run_sampled(self.transport, argv, telemetry, timeout_s=timeout_s)
            read = self.transport.run(["cat", result_file], timeout_s=30.0)
        finally:
            with contextlib.suppress(FarmbenchError):
                self.transport.remove([result_file], timeout_s=30.0)
        return OrtPerfTestRun(output=completed.stdout + completed.stderr, exit_code=completed.rc,
                              result_file=read.stdout if read.rc == 0 else None, argv=tuple(argv)), run

    def close(self) -> None:
        self.transport.close()

    def _getprops(self) -> dict[str, str]:
        completed = self.transport.run(["getprop"], timeout_s=30.0)
        found = dict(re.findall(r"^\[([^\]]+)\]: \[([^\]]*)\]", completed.stdout, flags=re.M))
        return {key: found[key] for key in PROPS if found.get(key)}

    def _clusters(self) -> list[tuple[list[int], int]]:
        """CPU clusters from cpufreq: (cpus, max frequency in kHz), one per distinct related_cpus set."""
        script = ("for d in /sys/devices/system/cpu/cpu[0-9]*/cpufreq; do "
                  "echo \"$(cat $d/related_cpus 2>/dev/null)|$(cat $d/cpuinfo_max_freq 2>/dev/null)\"; done")
        completed = self.transport.run(["sh", "-c", script], timeout_s=30.0)
        clusters: dict[tuple[int, ...], int] = {}
        for line in completed.stdout.splitlines():
            cpus_text, _, freq_text = line.partition("|")
            cpus = tuple(int(c) for c in cpus_text.split() if c.isdigit())
            if cpus and freq_text.strip().isdigit():
                clusters[cpus] = int(freq_text)
        return [(list(cpus), freq) for cpus, freq in sorted(clusters.items())]

    def _battery(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name in ("capacity", "status", "temp"):
            completed = self.transport.run(["cat", f"/sys/class/power_supply/battery/{name}"], timeout_s=30.0)
            if completed.rc == 0:
                out[name] = completed.stdout.strip()
        return out

    def _rooted(self) -> bool:
        completed = self.transport.run(["id", "-u"], timeout_s=30.0)
        return completed.stdout.strip() == "0"


def record_from_output(text: str, base: MeasurementRecord, manifest: dict[str, Any],
                       session: PhoneSession) -> MeasurementRecord:
    """benchmark_model's output -> a record: aggregate statistics, delegate coverage, classified failures."""
    result = parse_output(text)
    # benchmark_model prints no version: its sha256 is what tells one build from another (a checked context field).
    context = {**session.context(), "converter_versions": manifest.get("versions"),
               "benchmark_model": result.to_json(), "binary_sha256": session.binary_sha256}
    record = replace(base, runtime="benchmark_model", context=context)
    issue = result.error
    if issue is not None:
        return replace(record, status="failed", error_class=issue.kind, error_message=issue.message, transient=False)
    flags: list[str] = []
    delegate = result.delegate
    if delegate is not None and delegate.coverage == "partial":
        flags.append(f"{delegate.name.lower()}_partially_applied")
    elif delegate is not None and delegate.coverage == "none":
        flags.append(f"{delegate.name.lower()}_not_applied")
    return replace(
        record, status="ok", latency=result.to_latency_stats(), flags=flags,
        init_ms=None if result.init_us is None else result.init_us / 1000.0,
        first_inference_ms=None if result.first_inference_us is None else result.first_inference_us / 1000.0,
        peak_rss_mb=result.peak_memory_mb,
    )


def _tail(text: str, limit: int = 200) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    flat = " | ".join(lines[-3:])
    return flat[-limit:] if flat else "no output"


def ort_protocol(config: dict[str, Any]) -> dict[str, Any]:
    """What an onnxruntime_perf_test session did of the run config (a RunSpec's JSON): it does exactly one untimed
    warm-up run and then ``runs`` timed runs; it has no "at least N runs and at least S seconds" (its duration mode
    counts whole seconds of summed run time, and would drop the run count), so min_s and max_s are not applied and
    the session is bounded by timeout_s instead."""
    not_applied = {key: config.get(key) for key in ("warmup_runs", "warmup_min_s", "min_s", "max_s")
                   if config.get(key) not in (None, 0, 0.0) and not (key == "warmup_runs" and config.get(key) == 1)}
    return {"warmup_runs": 1, "timed_runs": config.get("runs"), "not_applied": not_applied}


def record_from_ort_perf_test(run: OrtPerfTestRun, base: MeasurementRecord, manifest: dict[str, Any],
                              session: PhoneSession) -> MeasurementRecord:
    """onnxruntime_perf_test's output and result file -> a record: per-run samples (raw) when the result file had
    them, else the printed aggregates; classified failures."""
    result = parse_run(run)
    context = {**session.context(), "converter_versions": manifest.get("versions"),
               "onnxruntime_perf_test": result.to_json(), "binary_sha256": session.ort_perf_test_sha256,
               "command": list(run.argv), "protocol": ort_protocol(base.config)}
    record = replace(base, runtime="onnxruntime_perf_test", context=context)
    issue = result.error
    if issue is not None:
        message = issue.message + (f"\n  hint: {issue.hint}" if issue.hint else "")
        return replace(record, status="failed", error_class=issue.kind, error_message=message, transient=False)
    flags: list[str] = []
    if result.result_file_error or not result.samples_us:
        flags.append("no_raw_samples")
    threads = base.config.get("threads")
    if result.intra_op_threads is not None and threads is not None and result.intra_op_threads != threads:
        flags.append("threads_not_applied")
    return replace(
        record, status="ok", samples_us=list(result.samples_us) or None,
        latency=result.to_latency_stats(), flags=flags,
        init_ms=None if result.session_creation_us is None else result.session_creation_us / 1000.0,
        first_inference_ms=None if result.first_inference_us is None else result.first_inference_us / 1000.0,
        peak_rss_mb=None if result.peak_working_set_bytes is None else result.peak_working_set_bytes / 2**20,
    )
