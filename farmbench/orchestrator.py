"""Plan and execute a benchmark run across devices.

plan:    (artifact x device x runtime config x repeat). Each repeat is one round over every combination, in an
         order shuffled with a recorded seed, so slow drift (thermal, background load) spreads over all variants
         instead of landing on whichever ran last; repeats are independent sessions (a fresh agent process).
execute: one worker thread per device (one measurement at a time on a device, devices in parallel). Each worker
         connects, pushes the agent, probes, then runs its items in plan order. Every finished measurement, ok or
         failed, is committed to the store before the next starts; a failure becomes a record and the run goes on.
         Retries, device health and stopping on signals follow the rules in :mod:`farmbench.farm`.
resume:  ``run_sweep(..., resume=RUN)`` runs the stored plan's positions that are not finished (no ok record and no
         permanent failure), with the stored run configuration, on the same artifacts (found by key).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from farmbench.config import RunConfig, Sweep, sweep_from_json, sweep_json
from farmbench.devices.config import DeviceConfig
from farmbench.errors import EXIT_INTERRUPTED, ArtifactCorruptedError, FarmbenchError, Interrupted, UsageError
from farmbench.farm import (
    FLAG_RETRIED,
    NOT_RUN_CLASS,
    DeviceReport,
    DeviceWork,
    DeviceWorker,
    RetryPolicy,
    StopController,
    run_workers,
)
from farmbench.results.drift import accuracy, drift
from farmbench.results.schema import MeasurementRecord
from farmbench.results.store import ResultStore, utc_now
from farmbench.runners.board import BoardSession, RunSpec, device_context, open_transport, record_from_document
from farmbench.runners.phone import PhoneSession, record_from_ort_perf_test, record_from_output
from farmbench.runners.telemetry import (
    WINDOW_APPROXIMATE,
    DeviceTelemetry,
    ThermalBefore,
    agent_window,
    approximate_window,
)
from farmbench.telemetry.sampler import SamplerRun
from farmbench.transports.base import Orphan, Transport
from farmbench.variants.build import BuildResult
from farmbench.variants.cache import ArtifactCache
from farmbench.variants.evalset import EvalSet, load_evalset, reference_outputs
from farmbench.variants.inspect import inspect_model
from farmbench.variants.models import preprocess

TFLITE_RUNTIMES = ("litert", "tflite_runtime", "tensorflow")
FORMAT_RUNTIMES = {"tflite": ("auto", *TFLITE_RUNTIMES), "onnx": ("auto", "onnxruntime")}

Event = dict[str, Any]


@dataclass(frozen=True)
class PlanItem:
    index: int
    device: str
    artifact_key: str
    artifact_name: str
    format: str
    spec: RunSpec
    repeat: int

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "spec": self.spec.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlanItem:
        """A plan entry as a run stored it (``runs.plan_json``). RunSpec fields added since take their defaults."""
        known = {f.name for f in dataclasses.fields(RunSpec)}
        spec = RunSpec(**{k: v for k, v in dict(data["spec"]).items() if k in known})
        return cls(index=int(data["index"]), device=str(data["device"]), artifact_key=str(data["artifact_key"]),
                   artifact_name=str(data["artifact_name"]), format=str(data["format"]), spec=spec,
                   repeat=int(data["repeat"]))


@dataclass
class RunSummary:
    """What a run did, over its whole plan (a resumed run counts what earlier invocations finished too): each plan
    position by its latest record -- ``ok``, ``failed``, ``skipped`` (the device cannot run it), ``not_run`` (an
    unhealthy device, or a stop, left it; ``not_run_items`` say why) -- and ``retried``, the failed attempts that
    were tried again. ``devices`` is each device's part in this invocation (health, counts, busy time).
    ``status``: finished or interrupted (by ``signal``); ``aborted``: a second signal ended the wait for devices."""

    run_id: str
    planned: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    not_run: int = 0
    retried: int = 0
    status: str = "finished"
    signal: str | None = None
    aborted: bool = False
    resumed: bool = False
    already_done: int = 0
    devices: dict[str, DeviceReport] = field(default_factory=dict)
    build_failures: list[tuple[str, str]] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (device, artifact, message)
    not_run_items: list[dict[str, Any]] = field(default_factory=list)  # device, artifact, plan_index, reason
    not_planned: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.status == "interrupted":
            return EXIT_INTERRUPTED
        return 1 if (self.failed or self.not_run or self.build_failures) else 0

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["devices"] = {name: report.to_json() for name, report in self.devices.items()}
        data["counts"] = {"ok": self.ok, "failed": self.failed, "skipped": self.skipped, "not_run": self.not_run}
        data["exit_code"] = self.exit_code
        data["wall_s"] = round(self.wall_s, 3)
        return data


class DriftSetup:
    """What the accuracy-drift pass needs, shared by the device threads: each artifact's fp32 twin, the evaluation
    set per resolution and the host reference outputs (computed once per twin and set, cached on disk).

    Drift is measured once per (device, artifact, runtime configuration): on repeat 0, after the timed session,
    with the same runtime configuration and one untimed inference per evaluation image."""

    def __init__(self, references: dict[str, BuildResult], cache_dir: Path, run: RunConfig) -> None:
        self.references = references
        self.cache_dir = cache_dir
        self.run = run
        self._lock = threading.Lock()
        self._evalsets: dict[int, EvalSet] = {}
        self._outputs: dict[tuple[str, str], np.ndarray] = {}

    def inputs(self, artifact: BuildResult) -> tuple[EvalSet, np.ndarray, np.ndarray, BuildResult] | None:
        """(evaluation set, model inputs, reference outputs, twin) for ``artifact``; None without a twin."""
        twin = self.references.get(artifact.key)
        if twin is None or twin.entry is None or artifact.variant is None:
            return None
        variant = artifact.variant
        with self._lock:
            evalset = self._evalsets.get(variant.resolution)
            if evalset is None:
                evalset = load_evalset(variant.resolution, directory=self.run.eval_dir or None,
                                       count=self.run.eval_images)
                self._evalsets[variant.resolution] = evalset
            inputs = preprocess(variant.family, evalset.pixels)
            key = (twin.key, evalset.digest)
            reference = self._outputs.get(key)
            if reference is None:
                reference = reference_outputs(twin.entry.model_path, str(twin.entry.manifest["sha256"]), inputs,
                                              evalset.digest, self.cache_dir)
                self._outputs[key] = reference
        return evalset, inputs, reference, twin


def drift_document(outputs: np.ndarray, reference: np.ndarray, evalset: EvalSet, twin: BuildResult) -> dict[str, Any]:
    """The stored drift document: metrics (top level, see results.drift), the reference and the set; with labels,
    the accuracy of both sides and the change."""
    metrics = drift(reference, outputs.reshape(reference.shape))
    document: dict[str, Any] = {**metrics.to_json(), "reference": twin.name,
                                "reference_sha256": twin.entry.manifest.get("sha256") if twin.entry else None,
                                "evalset": evalset.describe()}
    if evalset.labels is not None:
        mine, theirs = accuracy(outputs.reshape(reference.shape), evalset.labels), accuracy(reference, evalset.labels)
        document.update(top1_accuracy=mine.top1, top5_accuracy=mine.top5, reference_top1_accuracy=theirs.top1,
                        reference_top5_accuracy=theirs.top5, top1_accuracy_delta=mine.top1 - theirs.top1)
    return document


def make_plan(artifacts: Sequence[BuildResult], devices: Sequence[DeviceConfig],
              run: RunConfig) -> tuple[list[PlanItem], list[str]]:
    """The ordered plan, and the combinations left out with the reason (e.g. an ONNX file and only TFLite
    runtimes requested)."""
    items: list[PlanItem] = []
    not_planned: list[str] = []
    ok_artifacts = [a for a in artifacts if a.entry is not None]
    combos_by_device: dict[str, list[tuple[BuildResult, RunSpec]]] = {}
    for device in devices:
        combos: list[tuple[BuildResult, RunSpec]] = []
        for artifact in ok_artifacts:
            fmt = str(artifact.entry.manifest.get("format") if artifact.entry else "")
            runtimes = [r for r in run.runtime if r in FORMAT_RUNTIMES.get(fmt, ())]
            if not runtimes:
                not_planned.append(f"{artifact.name} on {device.name}: no requested runtime runs .{fmt} files"
                                   f" (asked for {', '.join(run.runtime)})")
                continue
            # XNNPACK is a TFLite delegate; for ONNX the axis collapses to one value.
            xnnpack_axis = run.xnnpack if fmt == "tflite" else ("on",)
            # GPU and NNAPI delegates exist only in benchmark_model on phones; ONNX uses ort_provider instead.
            delegate_axis = run.delegate if fmt == "tflite" else ("cpu",)
            if device.kind != "adb" and any(d != "cpu" for d in delegate_axis):
                not_planned.append(f"{artifact.name} on {device.name}: delegate"
                                   f" {', '.join(d for d in delegate_axis if d != 'cpu')} is measured on Android"
                                   f" phones only (benchmark_model); this {device.kind} device runs cpu")
                delegate_axis = tuple(d for d in delegate_axis if d == "cpu")
            for runtime, threads, xnnpack, delegate in itertools.product(runtimes, run.threads, xnnpack_axis,
                                                                         delegate_axis):
                combos.append((artifact, RunSpec(
                    runtime=runtime, threads=threads, xnnpack=xnnpack, ort_provider=run.ort_provider,
                    ort_opt_level=run.ort_opt_level, warmup_runs=run.warmup_runs, warmup_min_s=run.warmup_min_s,
                    runs=run.runs, min_s=run.min_s, max_s=run.max_s, affinity=run.affinity, seed=run.order_seed,
                    delegate=delegate)))
        combos_by_device[device.name] = combos
    index = 0
    for device in devices:
        # String seeds are hashed deterministically by random.Random, so the order is reproducible per device.
        rng = random.Random(f"{run.order_seed}:{device.name}")
        for repeat in range(run.repeats):
            round_ = list(combos_by_device[device.name])
            rng.shuffle(round_)
            for artifact, spec in round_:
                items.append(PlanItem(index, device.name, artifact.key, artifact.name,
                                      str(artifact.entry.manifest.get("format")) if artifact.entry else "",
                                      spec, repeat))
                index += 1
    return items, not_planned


def git_commit(directory: Path | None = None) -> str | None:
    try:
        completed = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory or Path.cwd(), capture_output=True,
                                   text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def execute(
    plan: Sequence[PlanItem],
    devices: Sequence[DeviceConfig],
    artifacts: dict[str, BuildResult],
    store: ResultStore,
    run_id: str,
    run: RunConfig,
    *,
    on_event: Callable[[Event], None] | None = None,
    accept_new_host_key: bool = False,
    drift_setup: DriftSetup | None = None,
    stop: StopController | None = None,
) -> tuple[dict[str, DeviceReport], bool]:
    """Measure ``plan``: one worker per device, under :class:`~farmbench.farm.RetryPolicy` from ``run``. Returns each
    device's report, and False when a second signal ended the wait with devices still busy."""
    notify = on_event or (lambda event: None)
    stop = stop or StopController()
    policy = RetryPolicy.from_run(run)
    checker = _ArtifactChecker(artifacts)
    workers: list[DeviceWorker[_Session, PlanItem]] = []
    for device in devices:
        items = [item for item in plan if item.device == device.name]
        if not items:
            continue
        device_run = _DeviceRun(device, artifacts, store, run_id, run, accept_new_host_key, drift_setup, stop,
                                checker, notify, [item for item in items])
        workers.append(DeviceWorker(device_run.work(items), policy, stop))
    notify({"event": "run-start", "run_id": run_id, "planned": len(plan),
            "devices": {worker.work.name: len(worker.work.items) for worker in workers}})

    def on_stop() -> None:
        notify({"event": "stopping", "signal": stop.reason})

    finished = run_workers(workers, stop, on_stop)
    return {worker.work.name: worker.report for worker in workers}, finished


class _ArtifactChecker:
    """Hashes each artifact file once, on first use, against its manifest: a cache file changed since it was built
    (disk corruption, a hand edit) fails its measurements for good instead of measuring other bytes."""

    def __init__(self, artifacts: dict[str, BuildResult]) -> None:
        self._artifacts = artifacts
        self._lock = threading.Lock()
        self._verdicts: dict[str, ArtifactCorruptedError | None] = {}
        self._key_locks: dict[str, threading.Lock] = {}

    def check(self, key: str) -> None:
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self._verdicts:
                self._verdicts[key] = self._verify(key)
        error = self._verdicts[key]
        if error is not None:
            raise error

    def _verify(self, key: str) -> ArtifactCorruptedError | None:
        artifact = self._artifacts[key]
        entry = artifact.entry
        assert entry is not None
        expected = str(entry.manifest.get("sha256"))
        try:
            with entry.model_path.open("rb") as handle:
                actual = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as err:
            return ArtifactCorruptedError(f"artifact {artifact.name} ({entry.model_path}) cannot be read: {err}",
                                          hint=f"remove it with `farmbench cache prune --key {key[:12]}` and run again"
                                               " (it is rebuilt)")
        if actual == expected:
            return None
        return ArtifactCorruptedError(
            f"artifact {artifact.name} is corrupt: {entry.model_path} has sha256 {actual}, its manifest says"
            f" {expected}", hint=f"remove it with `farmbench cache prune --key {key[:12]}` and run again (it is"
                                 " rebuilt), or `farmbench build --force` with the same flags")


@dataclass
class _Session:
    """A connected, prepared device: the runner session, its telemetry and the device's row in the store."""

    session: BoardSession | PhoneSession
    telemetry: DeviceTelemetry
    device_id: int

    @property
    def transport(self) -> Transport:
        return self.session.transport

    def close(self) -> None:
        self.session.close()


class _DeviceRun:
    """One device's side of a run: the callables a :class:`~farmbench.farm.DeviceWorker` drives."""

    def __init__(self, device: DeviceConfig, artifacts: dict[str, BuildResult], store: ResultStore, run_id: str,
                 run: RunConfig, accept_new_host_key: bool, drift_setup: DriftSetup | None, stop: StopController,
                 checker: _ArtifactChecker, notify: Callable[[Event], None], items: Sequence[PlanItem]) -> None:
        self.device = device
        self.artifacts = artifacts
        self.store = store
        self.run_id = run_id
        self.run = run
        self.accept_new_host_key = accept_new_host_key
        self.drift_setup = drift_setup
        self.stop = stop
        self.checker = checker
        self.notify = notify
        self.items = items
        self.device_id: int | None = None

    def work(self, items: Sequence[PlanItem]) -> DeviceWork[_Session, PlanItem]:
        return DeviceWork(name=self.device.name, items=items, connect=self.connect, measure=self.measure,
                          failed=self.failed, not_run=self.not_run, commit=self.commit,
                          label=lambda item: item.artifact_name, notify=self.notify)

    def connect(self, attempt: int, orphans: Sequence[Orphan]) -> _Session:
        device = self.device
        transport = open_transport(device, accept_new_host_key=self.accept_new_host_key)
        self.stop.register(transport)
        session: BoardSession | PhoneSession | None = None
        configured = f"{device.kind}:configured:{device.get('identity')}" if device.get("identity") else None
        try:
            transport.reap(orphans)
            if device.kind == "adb":
                session = PhoneSession(device, transport)
                session.prepare()
                context = session.context()
                identity = configured or session.identity()
                runtimes = {"benchmark_model": session.binary_path or "not configured",
                            "onnxruntime_perf_test": session.ort_perf_test_path or "not configured"}
            else:
                session = BoardSession(device, transport)
                wanted = _runtimes_to_probe(self.items)
                session.prepare(wanted)
                tflite_auto = any(i.spec.runtime == "auto" and i.format == "tflite" for i in self.items)
                if tflite_auto and not {"litert", "tflite_runtime"} & set(session.usable_runtimes()):
                    session.prepare([*wanted, "tensorflow"])  # the last TFLite fallback, worth its import time only now
                context = device_context(session)
                identity = configured or session.identity()  # a configured identity saves the board a command
                runtimes = session.usable_runtimes()
            self.device_id = self.store.upsert_device(identity, device.name, device.kind, context)
            # The cooldown gate's waits end early on a stop; the next command then raises Interrupted.
            telemetry = DeviceTelemetry(device, transport, sleep=self._sleep)
            telemetry.prepare()
        except BaseException:
            self.stop.unregister(transport)
            if session is not None:
                session.close()
            else:
                transport.close()
            raise
        self.notify({"event": "device-ready", "device": device.name, "runtimes": runtimes,
                     "telemetry": telemetry.describe(), "attempt": attempt})
        return _Session(session, telemetry, self.device_id)

    def _sleep(self, seconds: float) -> None:
        self.stop.sleep(seconds)

    def _device_id(self) -> int:
        """The device's row; before a first successful connect, one named after its configuration."""
        if self.device_id is None:
            device = self.device
            configured = device.get("identity")
            identity = (f"{device.kind}:configured:{configured}" if configured
                        else f"{device.kind}:unreached:{device.name}")
            self.device_id = self.store.upsert_device(identity, device.name, device.kind, {"source": device.source})
        return self.device_id

    def base(self, item: PlanItem, attempt: int) -> MeasurementRecord:
        return replace(_base_record(item, self.run_id, self._device_id(), self.artifacts), started_at=utc_now(),
                       context={"attempt": attempt})

    def measure(self, session: _Session, item: PlanItem, attempt: int) -> MeasurementRecord:
        self.checker.check(item.artifact_key)
        artifact = self.artifacts[item.artifact_key]
        base = replace(_base_record(item, self.run_id, session.device_id, self.artifacts), started_at=utc_now())
        runner = session.session
        if isinstance(runner, PhoneSession):
            record = _measure_phone(runner, item, base, artifact, self.run, session.telemetry)
        else:
            record = _measure(runner, item, base, runner.usable_runtimes(), artifact, self.run, session.telemetry)
        if self.drift_setup is not None and record.status == "ok" and item.repeat == 0:
            record = _with_drift(runner, item, record, artifact, self.drift_setup, self.run)
        return replace(record, context={**record.context, "attempt": attempt})

    def failed(self, item: PlanItem, error: FarmbenchError, attempt: int) -> MeasurementRecord:
        return self.base(item, attempt).with_error(error)

    def not_run(self, item: PlanItem, reason: str) -> MeasurementRecord:
        return replace(self.base(item, 0), status="skipped", error_class=NOT_RUN_CLASS, transient=True,
                       error_message=f"not run: {reason}. `farmbench run --resume {self.run_id}` runs it once the"
                                     " device is back")

    def commit(self, item: PlanItem, record: MeasurementRecord) -> None:
        record = replace(record, finished_at=utc_now())
        self.store.add_measurement(record)
        self.notify({"event": "measured", "device": self.device.name, "artifact": item.artifact_name,
                     "status": record.status, "record": record, "plan_index": item.index,
                     "final": FLAG_RETRIED not in record.flags})


def _with_drift(session: BoardSession | PhoneSession, item: PlanItem, record: MeasurementRecord,
                artifact: BuildResult, setup: DriftSetup, run: RunConfig) -> MeasurementRecord:
    """``record`` with its drift document: the device's outputs on the evaluation set against the fp32 twin's on
    the host. A failure here keeps the latency and says why drift is missing (flag ``drift_failed``)."""
    if artifact.entry is None:
        return record
    if isinstance(session, PhoneSession) and item.format != "tflite":
        return replace(record, drift={"skipped": "onnxruntime_perf_test cannot write output tensors"})
    try:
        prepared = setup.inputs(artifact)
        if prepared is None:
            return replace(record, drift={"skipped": "no fp32 twin to compare with (your own model file)"})
        evalset, inputs, reference, twin = prepared
        facts = inspect_model(artifact.entry.model_path)
        remote = session.ensure_model(artifact.entry.model_path, str(artifact.entry.manifest["sha256"]))
        if isinstance(session, BoardSession):
            spec = replace(item.spec, runtime=record.runtime)
            outputs = session.outputs(remote, spec, facts, inputs, timeout_s=run.timeout_s)
        else:
            outputs = session.output_tensors(remote, facts, inputs, threads=int(record.config.get("threads") or 1),
                                             xnnpack=record.config.get("xnnpack") == "on",
                                             delegate=str(record.config.get("delegate") or "cpu"),
                                             timeout_s=run.timeout_s)[0]
        outputs = outputs.reshape(reference.shape)
        return replace(record, drift=drift_document(outputs, reference, evalset, twin), outputs=outputs)
    except Interrupted:
        raise  # the whole measurement runs again on resume, drift included
    except FarmbenchError as exc:
        return replace(record, drift={"error": exc.format()}, flags=[*record.flags, "drift_failed"])


def _power_window(spec: RunSpec, telemetry: DeviceTelemetry | None) -> tuple[RunSpec, dict[str, Any]]:
    """``spec`` with its timed phase lasting at least the power configuration's ``min_window_s`` (fuel gauges
    update about once a second), and what the record's config says about it."""
    window_s = telemetry.min_window_s if telemetry is not None else None
    if window_s is None or spec.min_s >= window_s:
        return spec, {}
    raised = replace(spec, min_s=window_s, max_s=max(spec.max_s, window_s))
    return raised, {"power_min_window_s": window_s, "requested_min_s": spec.min_s, "requested_max_s": spec.max_s}


def _with_telemetry(record: MeasurementRecord, telemetry: DeviceTelemetry, before: ThermalBefore,
                    run: SamplerRun | None, window: tuple[float, float] | None, source: str,
                    inferences: int | None) -> MeasurementRecord:
    ok = record.status == "ok"
    return telemetry.after(before, run, window=window if ok else None, window_source=source,
                           inferences=inferences if ok else None).apply(record)


def _phone_window(record: MeasurementRecord, run: SamplerRun | None) -> tuple[tuple[float, float] | None, int | None]:
    """The approximate timed window of a phone session and its inference count, from the record's latency."""
    latency = record.latency
    if latency is not None:
        count, mean_us = latency.n, latency.mean_us
    elif record.samples_us:
        count, mean_us = len(record.samples_us), sum(record.samples_us) / len(record.samples_us)
    else:
        return None, None
    return approximate_window(run, count, mean_us), count


def _measure_phone(session: PhoneSession, item: PlanItem, base: MeasurementRecord, artifact: BuildResult,
                   run: RunConfig, telemetry: DeviceTelemetry | None = None) -> MeasurementRecord:
    """One session on a phone: benchmark_model for TFLite, onnxruntime_perf_test for ONNX when the device file
    names one. Anything else is skipped with the reason. With telemetry: the cooldown gate first, the sampler
    around the tool when power is measured (benchmark_model's min_secs raised to the power window; the ONNX tool
    has no minimum duration), temperatures and power after."""
    if item.format == "onnx":
        if not session.ort_perf_test_path:
            return replace(base, status="skipped", error_class="missing_runtime",
                           error_message=f"{session.device.name}: ONNX files on a phone run with ONNX Runtime's"
                                         " onnxruntime_perf_test, and this device has none: set"
                                         ' onnxruntime_perf_test = "/path/to/onnxruntime_perf_test" in'
                                         f" {session.device.source}")
        assert artifact.entry is not None
        spec = replace(item.spec, runtime="onnxruntime_perf_test")
        try:
            remote = session.ensure_model(artifact.entry.model_path, str(artifact.entry.manifest["sha256"]))
            before = telemetry.before() if telemetry is not None else None
            ort_run, sampled = session.bench_onnx_sampled(remote, spec, timeout_s=run.timeout_s, telemetry=telemetry)
            record = record_from_ort_perf_test(ort_run, replace(base, config=spec.to_json()),
                                               artifact.entry.manifest, session)
        except FarmbenchError as exc:
            return replace(base, config=spec.to_json()).with_error(exc)
        if telemetry is None or before is None:
            return record
        window, count = _phone_window(record, sampled)
        return _with_telemetry(record, telemetry, before, sampled, window, WINDOW_APPROXIMATE, count)
    if item.format != "tflite":
        return replace(base, status="skipped", error_class="unsupported_on_device",
                       error_message=f"{session.device.name}: phones run .tflite (benchmark_model) and .onnx"
                                     f" (onnxruntime_perf_test) files, not .{item.format}")
    if item.spec.runtime not in ("auto", "litert"):
        return replace(base, status="skipped", error_class="missing_runtime",
                       error_message=f"{session.device.name}: phones run TFLite with benchmark_model (LiteRT),"
                                     f" not {item.spec.runtime}")
    assert artifact.entry is not None
    spec, power_config = _power_window(replace(item.spec, runtime="benchmark_model"), telemetry)
    config = {**spec.to_json(), **power_config}
    try:
        remote = session.ensure_model(artifact.entry.model_path, str(artifact.entry.manifest["sha256"]))
        before = telemetry.before() if telemetry is not None else None
        output, sampled = session.bench_sampled(remote, spec, timeout_s=run.timeout_s, telemetry=telemetry)
        record = record_from_output(output, replace(base, config=config), artifact.entry.manifest, session)
    except FarmbenchError as exc:
        return replace(base, config=config).with_error(exc)
    if telemetry is None or before is None:
        return record
    window, count = _phone_window(record, sampled)
    return _with_telemetry(record, telemetry, before, sampled, window, WINDOW_APPROXIMATE, count)


def _runtimes_to_probe(items: Sequence[PlanItem]) -> list[str]:
    """The runtimes these items may use. ``auto`` for TFLite prefers LiteRT, then tflite-runtime; TensorFlow (a
    ~5 s import) is probed only when asked for by name, or as the last TFLite fallback when nothing else is asked."""
    wanted: list[str] = []
    for item in items:
        if item.spec.runtime != "auto":
            wanted.append(item.spec.runtime)
        elif item.format == "tflite":
            wanted += ["litert", "tflite_runtime"]
        else:
            wanted.append("onnxruntime")
    return list(dict.fromkeys(wanted))


def _base_record(item: PlanItem, run_id: str, device_id: int, artifacts: dict[str, BuildResult]) -> MeasurementRecord:
    entry = artifacts[item.artifact_key].entry
    return MeasurementRecord(
        run_id=run_id, device_id=device_id, artifact_key=item.artifact_key, runtime=item.spec.runtime,
        status="failed", config=item.spec.to_json(), plan_index=item.index, repeat=item.repeat,
        artifact_sha256=str(entry.manifest.get("sha256")) if entry else None,
    )


def _measure(session: BoardSession, item: PlanItem, base: MeasurementRecord, usable: dict[str, str],
             artifact: BuildResult, run: RunConfig, telemetry: DeviceTelemetry | None = None) -> MeasurementRecord:
    """One agent session on a board or this machine. With telemetry: the cooldown gate first, the sampler around
    the agent when power is measured (its timed phase raised to the power window), temperatures and power over the
    agent's own timed window after."""
    runtime = item.spec.runtime
    candidates = TFLITE_RUNTIMES if item.format == "tflite" else ("onnxruntime",)
    if runtime == "auto":
        available = [r for r in candidates if r in usable]
        if not available:
            problems = "; ".join(session.runtime_problem(r) for r in candidates)
            return replace(base, status="skipped", error_class="missing_runtime",
                           error_message=f"no runtime for .{item.format} on {session.device.name}: {problems}")
        spec = replace(item.spec, runtime=available[0])
    elif runtime not in usable:
        return replace(base, status="skipped", error_class="missing_runtime",
                       error_message=session.runtime_problem(runtime))
    else:
        spec = item.spec
    assert artifact.entry is not None
    spec, power_config = _power_window(spec, telemetry)
    config = {**spec.to_json(), **power_config}
    try:
        remote = session.ensure_model(artifact.entry.model_path, str(artifact.entry.manifest["sha256"]))
        before = telemetry.before() if telemetry is not None else None
        document, sampled = session.bench_sampled(remote, spec, timeout_s=run.timeout_s, telemetry=telemetry)
    except FarmbenchError as exc:
        return replace(base, config=config).with_error(exc)
    record = record_from_document(document, replace(base, config=config, runtime=spec.runtime),
                                  artifact.entry.manifest, session)
    if telemetry is None or before is None:
        return record
    window, source = agent_window(document, sampled)
    timed_runs = document.get("timed_runs")
    return _with_telemetry(record, telemetry, before, sampled, window, source,
                           timed_runs if isinstance(timed_runs, int) else None)


def stored_sweep(store: ResultStore, run_id: str) -> Sweep:
    """The sweep run ``run_id`` recorded, to resume it with exactly its variants and [run] settings."""
    return sweep_from_json(store.run(run_id).sweep)


def run_sweep(
    sweep: Sweep,
    artifacts: Sequence[BuildResult],
    devices: Sequence[DeviceConfig],
    store: ResultStore,
    *,
    command: Sequence[str] = (),
    on_event: Callable[[Event], None] | None = None,
    accept_new_host_key: bool = False,
    references: dict[str, BuildResult] | None = None,
    cache_dir: Path | None = None,
    resume: str | None = None,
    stop: StopController | None = None,
) -> RunSummary:
    """Plan, record the run, measure everything, finish the run. Artifacts must be built (failed builds are
    reported in the summary and left out of the plan). ``references`` (artifact key -> fp32 twin, from
    :func:`farmbench.variants.plan.build_references`) turn on the drift pass when the sweep asks for drift;
    ``cache_dir`` is where reference outputs are cached.

    ``resume``: continue that run instead of starting one -- its stored plan, positions not yet finished (``sweep``
    must be :func:`stored_sweep`, ``artifacts`` built from it). SIGINT/SIGTERM stop the run (see
    :mod:`farmbench.farm`); the summary then says ``interrupted`` and what was not run."""
    started = time.monotonic()
    stop = stop or StopController()
    with stop.signals():  # from the moment the run exists: a signal before the first measurement still counts
        run_id, plan, done, todo, not_planned = _open_run(sweep, artifacts, devices, store, command, resume)
        status = "failed"
        reports: dict[str, DeviceReport] = {}
        finished = True
        try:
            drift_setup = None
            if sweep.run.drift and references is not None:
                drift_setup = DriftSetup(references, cache_dir or ArtifactCache().root, sweep.run)
            by_key = {a.key: a for a in artifacts if a.entry is not None}
            reports, finished = execute(todo, devices, by_key, store, run_id, sweep.run, on_event=on_event,
                                        accept_new_host_key=accept_new_host_key, drift_setup=drift_setup, stop=stop)
            status = "interrupted" if stop.stopping else "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            store.finish_run(run_id, status)
    summary = summarize_run(store, run_id, plan, status=status, signal=stop.reason)
    summary.aborted = not finished
    summary.resumed = resume is not None
    summary.already_done = len(done)
    summary.devices = reports
    summary.not_planned = not_planned
    summary.build_failures = [(a.name, a.error or "build failed") for a in artifacts if a.entry is None]
    summary.wall_s = time.monotonic() - started
    return summary


def _open_run(sweep: Sweep, artifacts: Sequence[BuildResult], devices: Sequence[DeviceConfig], store: ResultStore,
              command: Sequence[str], resume: str | None
              ) -> tuple[str, list[PlanItem], set[int], list[PlanItem], list[str]]:
    """Start the run (or reopen ``resume``) and record its artifacts: (run id, whole plan, positions already done,
    positions to run, combinations not planned)."""
    by_key = {a.key: a for a in artifacts if a.entry is not None}
    if resume is not None:
        info = store.run(resume)
        plan = [PlanItem.from_json(entry) for entry in info.plan]
        done = store.done_plan_indices(resume)
        todo = [item for item in plan if item.index not in done]
        _check_resumable(resume, todo, devices, by_key)
        store.resume_run(resume)
        run_id, not_planned = resume, list[str]()
    else:
        plan, not_planned = make_plan(artifacts, devices, sweep.run)
        run_id = store.start_run(sweep_name=sweep.name, sweep=sweep_json(sweep),
                                 plan=[item.to_json() for item in plan], command=list(command) or sys.argv,
                                 seed=sweep.run.order_seed, git_commit=git_commit(), host=socket.gethostname())
        done, todo = set(), plan
    for artifact in by_key.values():
        assert artifact.entry is not None
        store.put_artifact(artifact.key, artifact.name, str(artifact.entry.manifest.get("format")),
                           str(artifact.entry.manifest.get("sha256")), artifact.entry.manifest)
    return run_id, plan, done, todo, not_planned


def _check_resumable(run_id: str, todo: Sequence[PlanItem], devices: Sequence[DeviceConfig],
                     artifacts: Mapping[str, BuildResult]) -> None:
    """Refuse a resume that would not measure what the run planned: a device no longer configured, or an artifact
    whose key changed (farmbench or a converter library was upgraded since, so the cache has other bytes)."""
    names = {device.name for device in devices}
    missing_devices = sorted({item.device for item in todo} - names)
    if missing_devices:
        raise UsageError(f"run {run_id} planned measurements on {', '.join(missing_devices)}, which its stored"
                         f" device list no longer resolves to (it has {', '.join(sorted(names)) or 'none'})",
                         hint="restore those device files, or start a new run")
    missing = sorted({item.artifact_name for item in todo if item.artifact_key not in artifacts})
    if missing:
        raise UsageError(f"run {run_id} planned {', '.join(missing)}, and building its stored sweep now gives"
                         " other artifacts (their keys changed: farmbench or a converter library is not the version"
                         " that started the run)", hint="start a new run (`farmbench run` with the same sweep)")


def summarize_run(store: ResultStore, run_id: str, plan: Sequence[PlanItem], *, status: str,
                  signal: str | None = None) -> RunSummary:
    """The summary of ``run_id`` from what the store holds: each plan position by its latest record."""
    outcomes = store.plan_outcomes(run_id)
    summary = RunSummary(run_id=run_id, planned=len(plan), status=status, signal=signal)
    for item in plan:
        record = outcomes.get(item.index)
        if record is None:
            reason = (f"the run was interrupted ({signal or 'stopped'}) before it ran; `farmbench run --resume"
                      f" {run_id}` runs it" if status == "interrupted" else "not run")
            summary.not_run += 1
            summary.not_run_items.append({"device": item.device, "artifact": item.artifact_name,
                                          "plan_index": item.index, "reason": reason})
        elif record.status == "ok":
            summary.ok += 1
        elif record.status == "skipped" and record.error_class == NOT_RUN_CLASS:
            summary.not_run += 1
            summary.not_run_items.append({"device": item.device, "artifact": item.artifact_name,
                                          "plan_index": item.index, "reason": record.error_message})
        elif record.status == "skipped":
            summary.skipped += 1
        else:
            summary.failed += 1
            summary.failures.append((item.device, item.artifact_name,
                                     f"{record.error_class}: {record.error_message}"))
    attempts = store.measurements([run_id], with_samples=False)
    summary.retried = sum(FLAG_RETRIED in record.flags for record in attempts)
    return summary


__all__ = ["DriftSetup", "PlanItem", "RunSummary", "drift_document", "execute", "make_plan", "run_sweep",
           "stored_sweep", "summarize_run"]
