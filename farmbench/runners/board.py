"""The host side of the agent runner: prepare a device (agent pushed, probed), push models, run one measurement.

Timing happens on the device, inside the agent; this module only moves files, starts the agent and turns its one
JSON document into a :class:`MeasurementRecord`. Works the same over every transport (local, SSH).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from farmbench.devices.config import DeviceConfig
from farmbench.errors import RunnerError, TransportError
from farmbench.results.schema import MeasurementRecord
from farmbench.runners.telemetry import DeviceTelemetry, run_sampled
from farmbench.telemetry.sampler import SamplerRun
from farmbench.transports.base import Completed, Deadline, Transport
from farmbench.variants.inspect import ModelFacts

AGENT_SOURCE = Path(__file__).with_name("agent.py")
AGENT_SCHEMA_VERSION = 1
SETUP_TIMEOUT_S = 120.0


def open_transport(device: DeviceConfig, *, accept_new_host_key: bool = False) -> Transport:
    """Connect to a device. SSH connection errors name the host and what to try (see transports.ssh)."""
    if device.kind == "local":
        from farmbench.transports.local import LocalTransport

        return LocalTransport(device=device.name)
    if device.kind == "ssh":
        from farmbench.transports.ssh import SshTarget, SshTransport

        v = device.values
        # Pass only what the device file sets: SshTarget's own defaults (~/.ssh/config, ~/.ssh/known_hosts) apply
        # otherwise, and an explicit None would switch ssh_config off.
        options: dict[str, Any] = {key: Path(v[key]).expanduser() for key in ("key_file", "known_hosts", "ssh_config")
                                   if v.get(key)}
        target = SshTarget(
            host=v["host"], port=v.get("port"), user=v.get("user"), **options,
            password=v.get("password"), passphrase=v.get("key_passphrase"),
            accept_new_host_key=bool(v.get("accept_new_host_key")) or accept_new_host_key,
            connect_timeout_s=float(v.get("connect_timeout_s") or 10.0),
        )
        return SshTransport(target, device=device.name)
    if device.kind == "adb":
        from farmbench.transports.adb import AdbTarget, AdbTransport

        v = device.values
        adb_options: dict[str, Any] = {"key_path": Path(v["key_file"]).expanduser()} if v.get("key_file") else {}
        adb_target = AdbTarget(host=v.get("host"), port=int(v.get("port") or 5555), serial=v.get("serial"),
                               connect_timeout_s=float(v.get("connect_timeout_s") or 10.0),
                               read_timeout_s=float(v.get("read_timeout_s") or 10.0),
                               auth_timeout_s=float(v.get("auth_timeout_s") or 30.0), **adb_options)
        return AdbTransport(adb_target, device=device.name)
    raise RunnerError(f"device {device.name}: kind {device.kind!r} is not supported")


@dataclass(frozen=True)
class RunSpec:
    """One runtime configuration of a measurement: what the agent is asked to do (see the agent's protocol)."""

    runtime: str
    threads: int
    xnnpack: str
    ort_provider: str
    ort_opt_level: str
    warmup_runs: int
    warmup_min_s: float
    runs: int
    min_s: float
    max_s: float
    affinity: str = ""
    seed: int = 0
    delegate: str = "cpu"  # the TFLite delegate besides XNNPACK: gpu/nnapi only through benchmark_model on phones

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def agent_args(self) -> list[str]:
        args = ["--runtime", self.runtime, "--threads", str(self.threads), "--xnnpack", self.xnnpack,
                "--ort-provider", self.ort_provider, "--ort-opt-level", self.ort_opt_level,
                "--warmup-runs", str(self.warmup_runs), "--warmup-min-s", repr(self.warmup_min_s),
                "--runs", str(self.runs), "--min-s", repr(self.min_s), "--max-s", repr(self.max_s),
                "--seed", str(self.seed)]
        if self.affinity:
            args += ["--affinity", self.affinity]
        return args


class BoardSession:
    """A device prepared for agent runs: its transport, the agent pushed by hash, and what the probe found."""

    def __init__(self, device: DeviceConfig, transport: Transport) -> None:
        self.device = device
        self.transport = transport
        self.python = device.get("python") or (sys.executable if device.kind == "local" else "python3")
        self.cache_dir = device.get("cache_dir") or transport.default_cache_dir(SETUP_TIMEOUT_S)
        self.agent_path = ""
        self.probe: dict[str, Any] = {}
        self._pushed: dict[str, str] = {}

    def prepare(self, runtimes: Sequence[str] | None = None) -> dict[str, Any]:
        """Push the agent (skipped when the device has this version) and probe the device for ``runtimes``
        (default: all the agent knows). Importing TensorFlow alone takes ~5 s, so runs probe only what they use."""
        agent_sha = hashlib.sha256(AGENT_SOURCE.read_bytes()).hexdigest()
        self.transport.mkdir_p(self.cache_dir, timeout_s=SETUP_TIMEOUT_S)
        self.agent_path, _ = self.transport.push_cached(AGENT_SOURCE, agent_sha, self.cache_dir, "agent.py",
                                                        timeout_s=SETUP_TIMEOUT_S)
        args = ["probe", "--work-dir", self.cache_dir]
        if runtimes:
            args += ["--runtimes", ",".join(runtimes)]
        self.probe = self._agent(args, timeout_s=SETUP_TIMEOUT_S)
        if self.probe.get("status") != "ok":
            raise RunnerError(f"device {self.device.name}: the agent's probe failed:"
                              f" {self.probe.get('error_message')}")
        return self.probe

    def identity(self) -> str:
        """A stable identity for results: machine-id when the device has one, else the host name it reports."""
        completed = self.transport.run(["cat", "/etc/machine-id"], timeout_s=30.0)
        machine_id = completed.stdout.strip() if completed.rc == 0 else ""
        hostname = str(self.probe.get("hostname") or socket.gethostname())
        return f"{self.device.kind}:{machine_id or 'no-machine-id'}:{hostname}"

    def usable_runtimes(self) -> dict[str, str]:
        """Runtime name -> version for the runtimes that import here (and the device config allows)."""
        allowed = set(self.device.get("runtimes") or [])
        return {r["name"]: str(r.get("version")) for r in self.probe.get("runtimes", [])
                if r.get("usable") and (not allowed or r["name"] in allowed)}

    def runtime_problem(self, name: str) -> str:
        for runtime in self.probe.get("runtimes", []):
            if runtime["name"] == name:
                return str(runtime.get("problem") or f"{name} is not usable here")
        return f"{name} is not known to the agent"

    def ensure_model(self, local_path: Path, sha256: str) -> str:
        """The model's path on the device, uploading it only when the device lacks these bytes."""
        if sha256 not in self._pushed:
            remote, _ = self.transport.push_cached(local_path, sha256, self.cache_dir, local_path.name,
                                                   timeout_s=SETUP_TIMEOUT_S)
            self._pushed[sha256] = remote
        return self._pushed[sha256]

    def bench(self, remote_model: str, spec: RunSpec, *, timeout_s: float) -> dict[str, Any]:
        return self.bench_sampled(remote_model, spec, timeout_s=timeout_s)[0]

    def bench_sampled(self, remote_model: str, spec: RunSpec, *, timeout_s: float,
                      telemetry: DeviceTelemetry | None = None) -> tuple[dict[str, Any], SamplerRun | None]:
        """One agent ``bench`` session; when ``telemetry`` measures power, under the sampler (its idle baseline
        first). The agent's document reports its timed phase on CLOCK_BOOTTIME, the sampler's clock."""
        argv = [self.python, self.agent_path, "bench", "--model", remote_model, *spec.agent_args()]
        completed, run = run_sampled(self.transport, argv, telemetry, timeout_s=timeout_s)
        return self._document(completed), run

    def outputs(self, remote_model: str, spec: RunSpec, facts: ModelFacts, samples: np.ndarray, *,
                timeout_s: float) -> np.ndarray:
        """The model's first output for each sample (float32, dequantised), computed on the device by the agent with
        the same runtime configuration as ``spec`` and one untimed inference per sample (``--dump-outputs``).
        The samples go over as one .npy pushed by hash, so a set is uploaded once per device."""
        deadline = Deadline(timeout_s)
        with tempfile.TemporaryDirectory(prefix="farmbench-io-") as tmp_text:
            local_inputs = Path(tmp_text) / "inputs.npy"
            np.save(local_inputs, np.ascontiguousarray(samples, dtype=np.float32), allow_pickle=False)
            sha = hashlib.sha256(local_inputs.read_bytes()).hexdigest()
            remote_inputs, _ = self.transport.push_cached(local_inputs, sha, f"{self.cache_dir}/inputs", "inputs.npy",
                                                          timeout_s=max(1.0, deadline.remaining_s()))
            remote_outputs = f"{self.cache_dir}/outputs/{sha[:16]}-{os.getpid()}.npy"
            self.transport.mkdir_p(f"{self.cache_dir}/outputs", timeout_s=max(1.0, deadline.remaining_s()))
            once = replace(spec, warmup_runs=0, warmup_min_s=0.0, runs=1, min_s=0.0)
            args = ["bench", "--model", remote_model, *once.agent_args(), "--inputs", remote_inputs,
                    "--dump-outputs", remote_outputs]
            for flag, info in (("--input-quant", facts.inputs[0]), ("--output-quant", facts.outputs[0])):
                if facts.format == "onnx" and info.quant_scale:
                    zero = info.quant_zero_point[0] if info.quant_zero_point else 0
                    args += [flag, f"{info.quant_scale[0]!r},{zero}"]
            local_outputs = Path(tmp_text) / "outputs.npy"
            try:
                document = self._agent(args, timeout_s=max(1.0, deadline.remaining_s()))
                if document.get("status") != "ok":
                    raise RunnerError(f"device {self.device.name}: computing outputs failed:"
                                      f" {document.get('error_class')}: {document.get('error_message')}")
                self.transport.pull(remote_outputs, local_outputs, timeout_s=max(1.0, deadline.remaining_s()))
            finally:
                # Also when the run is stopping (remove() is cleanup) or the agent was cut short mid-write.
                with contextlib.suppress(TransportError):
                    self.transport.remove([remote_outputs], timeout_s=30.0)
            outputs: np.ndarray = np.load(local_outputs, allow_pickle=False)
        return outputs

    def _agent(self, args: list[str], *, timeout_s: float) -> dict[str, Any]:
        return self._document(self.transport.run([self.python, self.agent_path, *args], timeout_s=timeout_s))

    def _document(self, completed: Completed) -> dict[str, Any]:
        try:
            document = json.loads(completed.stdout)
        except ValueError:
            raise RunnerError(
                f"device {self.device.name}: the agent printed no JSON (exit {completed.rc});"
                f" stderr: {completed.stderr.strip()[-600:]}",
                hint=f"check that {self.python} on the device is Python 3.8+ with numpy",
            ) from None
        if not isinstance(document, dict) or document.get("schema_version") != AGENT_SCHEMA_VERSION:
            raise RunnerError(f"device {self.device.name}: agent document version"
                              f" {document.get('schema_version') if isinstance(document, dict) else '?'},"
                              f" this farmbench reads {AGENT_SCHEMA_VERSION}")
        return document

    def close(self) -> None:
        self.transport.close()


def device_context(session: BoardSession) -> dict[str, Any]:
    """What the probe found that makes a number comparable: OS, kernel, CPU, governors, Python, runtimes."""
    probe = session.probe
    platform = probe.get("platform") or {}
    return {
        "os": probe.get("os_release"), "kernel": platform.get("release"), "arch": probe.get("arch"),
        "cpu": (probe.get("cpu") or {}).get("model"), "logical_cores": probe.get("logical_cores"),
        "cpufreq": probe.get("cpufreq"), "mem_total_kib": probe.get("mem_total_kib"),
        "python": probe.get("python_version"), "numpy": (probe.get("numpy") or {}).get("version"),
        "runtimes": {r["name"]: r.get("version") for r in probe.get("runtimes", []) if r.get("importable")},
        "hostname": probe.get("hostname"),
    }


def record_from_document(doc: dict[str, Any], base: MeasurementRecord,
                         manifest: dict[str, Any], session: BoardSession) -> MeasurementRecord:
    """An agent ``bench`` document -> a measurement record (ok or failed)."""
    runtime = doc.get("runtime") or {}
    context = {
        **device_context(session),
        "runtime": runtime.get("name"), "runtime_version": runtime.get("version"),
        "converter_versions": manifest.get("versions"),
        "applied": doc.get("applied"), "affinity": doc.get("affinity"),
        "loadavg_before": doc.get("loadavg_before"), "loadavg_after": doc.get("loadavg_after"),
        "input_source": doc.get("input_source"), "timer": doc.get("timer"),
        "timed_runs": doc.get("timed_runs"), "timed_wall_s": doc.get("timed_wall_s"),
        "timed_run_delay_s": doc.get("timed_run_delay_s"), "timed_other_cpus": doc.get("timed_other_cpus"),
        "warmup_runs": doc.get("warmup_runs"), "warmup_s": doc.get("warmup_s"),
    }
    record = replace(base, runtime=str(runtime.get("name") or base.runtime),
                     runtime_version=runtime.get("version"), context=context,
                     flags=list(doc.get("flags") or []))
    if doc.get("status") != "ok":
        return replace(record, status="failed", error_class=str(doc.get("error_class") or "runtime_error"),
                       error_message=str(doc.get("error_message") or doc.get("error_raw") or "the agent failed"),
                       transient=False)
    samples_us = [ns / 1000.0 for ns in doc.get("latencies_ns") or []]
    peak_kib = doc.get("peak_rss_kib")
    return replace(
        record, status="ok", samples_us=samples_us,
        init_ms=_ms(doc.get("init_ns")), first_inference_ms=_ms(doc.get("first_inference_ns")),
        peak_rss_mb=None if peak_kib is None else float(peak_kib) / 1024.0,
    )


def _ms(ns: Any) -> float | None:
    return None if ns is None else float(ns) / 1e6


__all__ = ["BoardSession", "RunSpec", "device_context", "open_transport", "record_from_document"]
