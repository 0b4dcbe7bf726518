"""Build variants into the artifact cache: keys, the per-group worker, and a process pool bounded by memory.

Data flow: ``plan`` (key every variant; cache hits need no TensorFlow at all) -> group the misses by Keras model ->
one worker process per group (builds the model once, derives every quant mode and format from it, checks each
artifact in the host runtime, commits each to the cache as soon as it passes) -> results in the caller's order.

Workers are fresh processes (spawn, one group each) because TensorFlow never returns memory and prints hundreds of
lines from C++; each worker's stdout/stderr go to the group's log file in the cache.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import multiprocessing
import os
import queue as queue_module
import resource
import shutil
import socket
import sys
import tempfile
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from farmbench import __version__
from farmbench.errors import ArtifactVerificationError, BuildError, UsageError
from farmbench.variants import images
from farmbench.variants.cache import ArtifactCache, CacheEntry
from farmbench.variants.spec import Group, Variant, canonical_hash, groups_of

# Source files whose changes change artifact bytes: their hash is part of every key.
_BUILD_SOURCES = ("spec.py", "models.py", "export.py", "images.py", "build.py", "hostrun.py")
_LIBRARIES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "onnxconverter-common", "numpy",
              "ai-edge-litert")
CALIBRATION_COUNT = 128
VERIFY_COUNT = 8
# fp32 artifacts must reproduce the Keras model: max |difference| of softmax probabilities on VERIFY_COUNT
# evaluation images, and the same top-1 on every one of them.
FP32_ATOL = 1e-4

Event = dict[str, Any]
EventCallback = Callable[[Event], None]


@functools.lru_cache(maxsize=1)
def build_code_hash() -> str:
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in _BUILD_SOURCES:
        digest.update(name.encode())
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in _LIBRARIES:
        candidates = [name, f"{name}-cpu"] if name == "tensorflow" else [name]
        for candidate in candidates:
            try:
                versions[name] = importlib.metadata.version(candidate)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            versions[name] = "missing"
    return versions


def weights_key(group: Group) -> str:
    from farmbench.variants.models import TRAINING_RECIPE

    return canonical_hash({
        "group": group.key_fields(), "recipe": TRAINING_RECIPE,
        "keras": library_versions()["keras"], "tensorflow": library_versions()["tensorflow"],
    })[:32]


def group_key(group: Group) -> str:
    return canonical_hash({"group": group.key_fields(), "code": build_code_hash()})[:32]


def artifact_key(variant: Variant) -> str:
    """Everything that changes an artifact's bytes: spec, weights, calibration set, libraries, build code."""
    from farmbench.variants.models import TRAINING_RECIPE

    weights = TRAINING_RECIPE if variant.group.weights.kind == "random" else None
    return canonical_hash({
        "spec": variant.spec_json(),
        "training": weights,
        "calibration": {"images_version": images.IMAGES_VERSION, "count": CALIBRATION_COUNT},
        "libraries": library_versions(),
        "build_code": build_code_hash(),
    })[:32]


def estimate_build_memory_mb(group: Group) -> int:
    """Peak RSS of building one group, from probes on a 2-core machine: 1.1 GB for the smallest variants up to
    7.9 GB for mobilenet_v2 α1.0 r224 (training at batch 16 dominates). A rough MAC count scales between them."""
    base_macs = {"mobilenet_v1": 569e6, "mobilenet_v2": 300e6, "mobilenet_v3_small": 56e6,
                 "mobilenet_v3_large": 217e6}[group.family]
    macs = base_macs * (group.resolution / 224) ** 2 * group.width ** 2
    return int(1100 + 6800 * macs / 300e6)


def available_memory_mb() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20)


@dataclass
class BuildResult:
    """What happened to one requested artifact."""

    name: str
    key: str
    status: str  # "built" | "cached" | "failed"
    entry: CacheEntry | None = None
    error: str | None = None
    seconds: float = 0.0
    variant: Variant | None = None

    @property
    def ok(self) -> bool:
        return self.entry is not None


@dataclass(frozen=True)
class _Item:
    quant: str
    format: str
    key: str
    name: str


@dataclass(frozen=True)
class _GroupTask:
    group: Group
    items: tuple[_Item, ...]
    cache_root: str
    group_key: str
    weights_key: str
    force: bool


@dataclass
class BuildOptions:
    cache: ArtifactCache = field(default_factory=ArtifactCache)
    jobs: int = 0  # 0: as many as cores allow
    force: bool = False
    memory_budget_mb: int | None = None  # None: 85% of available memory
    on_event: EventCallback | None = None


def build_variants(variants: Sequence[Variant], options: BuildOptions | None = None) -> list[BuildResult]:
    """Build (or take from the cache) every variant. Failures are results with an error, never exceptions,
    so one broken variant does not stop the others."""
    options = options or BuildOptions()
    notify = options.on_event or (lambda event: None)
    results: dict[str, BuildResult] = {}
    tasks: list[_GroupTask] = []
    for group, members in groups_of(variants).items():
        items: list[_Item] = []
        unavailable = _imagenet_unavailable(group)
        for variant in members:
            key = artifact_key(variant)
            if unavailable:
                # Known before any worker starts: no need to import Keras to say so.
                results[key] = BuildResult(variant.name(), key, "failed", variant=variant, error=unavailable)
                notify({"event": "done", "name": variant.name(), "status": "failed", "seconds": 0.0,
                        "error": unavailable})
                continue
            entry = None if options.force else options.cache.get(key)
            if entry is not None:
                results[key] = BuildResult(variant.name(), key, "cached", entry=entry, variant=variant)
                notify({"event": "done", "name": variant.name(), "status": "cached", "seconds": 0.0})
            else:
                results[key] = BuildResult(variant.name(), key, "failed", variant=variant,
                                           error="not built (the build did not reach it)")
                items.append(_Item(variant.quant, variant.format, key, variant.name()))
        if items:
            tasks.append(_GroupTask(group, tuple(items), str(options.cache.root), group_key(group),
                                    weights_key(group), options.force))
    if tasks:
        jobs = options.jobs or os.cpu_count() or 1
        budget = options.memory_budget_mb or int(available_memory_mb() * 0.85)
        for outcome in _run_pool(tasks, jobs, budget, notify):
            result = results[outcome["key"]]
            result.status = outcome["status"]
            result.error = outcome.get("error")
            result.seconds = outcome.get("seconds", 0.0)
            if outcome["status"] in ("built", "cached"):
                result.entry = options.cache.get(outcome["key"], touch=False)
                if result.entry is None:
                    result.status, result.error = "failed", "the worker reported success but the entry is missing"
    return [results[artifact_key(v)] for v in variants]


def _imagenet_unavailable(group: Group) -> str | None:
    from farmbench.variants.spec import imagenet_weights_status

    if group.weights.kind != "imagenet":
        return None
    if imagenet_weights_status(group.family, group.width, group.resolution) != "none":
        return None
    return (f"Keras publishes no ImageNet weights for {group.family} at width {group.width} (resolution"
            f" {group.resolution}); use --weights random or a weights file (`farmbench build --plan` lists them)")


def _run_pool(tasks: list[_GroupTask], jobs: int, budget_mb: int, notify: EventCallback) -> list[dict[str, Any]]:
    """Run group tasks in spawned processes, at most ``jobs`` at once and within ``budget_mb`` of estimated peak
    memory (a task larger than the budget still runs, alone)."""
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    pending = sorted(tasks, key=lambda t: estimate_build_memory_mb(t.group), reverse=True)
    outcomes: list[dict[str, Any]] = []
    running: dict[Future[list[dict[str, Any]]], _GroupTask] = {}
    retried: set[_GroupTask] = set()
    pool = _new_pool(jobs, ctx, events)
    try:
        while pending or running:
            used = sum(estimate_build_memory_mb(t.group) for t in running.values())
            for task in list(pending):
                if len(running) >= jobs:
                    break
                need = estimate_build_memory_mb(task.group)
                if running and used + need > budget_mb:
                    continue
                pending.remove(task)
                running[pool.submit(_build_group, task)] = task
                used += need
                notify({"event": "group-start", "name": task.group.name(), "artifacts": len(task.items),
                        "estimated_memory_mb": need})
            done, _ = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
            _drain(events, notify)
            broken = False
            for future in done:
                task = running.pop(future)
                try:
                    outcomes.extend(future.result())
                except BrokenProcessPool:
                    broken = True
                    if task in retried:
                        log = ArtifactCache(Path(task.cache_root)).log_path(task.group_key)
                        outcomes.extend(_failed(task, "the build worker process died (the kernel's OOM killer, or a"
                                                      f" crash inside a converter); see {log}, or retry with --jobs 1"))
                    else:
                        retried.add(task)
                        pending.append(task)
                except Exception as exc:  # a bug in the worker itself: report it per artifact and go on
                    outcomes.extend(_failed(task, f"{type(exc).__name__}: {exc}"))
            if broken:
                # A dead worker breaks the whole pool; the groups that were running beside it are retried once,
                # so only a group that kills its worker twice is reported as failed.
                for task in running.values():
                    if task not in retried:
                        retried.add(task)
                        pending.append(task)
                    else:
                        outcomes.extend(_failed(task, "the build worker process died twice"))
                running.clear()
                pool.shutdown(cancel_futures=True)
                pool = _new_pool(jobs, ctx, events)
        _drain(events, notify)
    finally:
        pool.shutdown(cancel_futures=True)
    return outcomes


def _new_pool(jobs: int, ctx: Any, events: Any) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(events,),
                               max_tasks_per_child=1)


def _failed(task: _GroupTask, message: str) -> list[dict[str, Any]]:
    return [{"key": item.key, "status": "failed", "error": message} for item in task.items]


def _drain(events: Any, notify: EventCallback) -> None:
    while True:
        try:
            notify(events.get_nowait())
        except queue_module.Empty:
            return


# ---------------------------------------------------------------------------------------------------------------
# Worker side

_EVENTS: Any = None


def _worker_init(events: Any) -> None:
    global _EVENTS
    _EVENTS = events
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def _emit(event: Event) -> None:
    if _EVENTS is not None:
        _EVENTS.put(event)


def _redirect_output(log_path: Path) -> None:
    """Send this process's stdout and stderr, C++ included, to the log file (the converters print a lot)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _build_group(task: _GroupTask) -> list[dict[str, Any]]:
    cache = ArtifactCache(Path(task.cache_root))
    log_path = cache.log_path(task.group_key)
    _redirect_output(log_path)
    print(f"==== {datetime.now(timezone.utc).isoformat()} building {task.group.name()} pid {os.getpid()}",
          flush=True)
    outcomes: list[dict[str, Any]] = []
    with cache.lock(task.group_key):
        todo: list[_Item] = []
        for item in task.items:
            # Another process may have built it while we waited for the lock.
            if not task.force and cache.get(item.key, touch=False) is not None:
                outcomes.append({"key": item.key, "status": "cached"})
                _emit({"event": "done", "name": item.name, "status": "cached", "seconds": 0.0})
            else:
                todo.append(item)
        if todo:
            outcomes.extend(_build_items(task, todo, cache, log_path))
    return outcomes


def _build_items(task: _GroupTask, todo: list[_Item], cache: ArtifactCache, log_path: Path) -> list[dict[str, Any]]:
    group = task.group
    started = time.perf_counter()
    try:
        from farmbench.variants import export
        from farmbench.variants.models import build_keras_model, count_macs, input_range, preprocess

        model, weights_info = build_keras_model(group, cache.weights_path(task.weights_key))
        verify_x = preprocess(group.family, images.evaluation_images(group.resolution, VERIFY_COUNT))
        calibration = preprocess(group.family, images.calibration_images(group.resolution, CALIBRATION_COUNT))
        reference = np.concatenate([np.asarray(model(verify_x[i:i + 1], training=False))
                                    for i in range(len(verify_x))])
        keras_facts = {"param_count": int(model.count_params()), "macs": int(count_macs(model))}
    except Exception as exc:
        message = _describe(exc)
        traceback.print_exc()
        return [{"key": item.key, "status": "failed", "error": message} for item in todo]
    model_seconds = time.perf_counter() - started
    _emit({"event": "model", "name": group.name(), "seconds": model_seconds, "weights": weights_info.get("weights")})
    common = {
        "weights": weights_info,
        "input_range": list(input_range(group.family)),
        "preprocessing": "pixels/127.5-1" if input_range(group.family) == (-1.0, 1.0) else "pixels 0..255",
        "keras": keras_facts,
        "model_seconds": model_seconds,
    }
    outcomes: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="farmbench-build-") as tmp:
        work = Path(tmp)
        producers = _Producers(export, model, group.resolution, calibration, work)
        for item in todo:
            item_started = time.perf_counter()
            _emit({"event": "start", "name": item.name})
            staging = cache.staging_dir(item.key)
            try:
                target = staging / f"model.{item.format}"
                producers.produce(item.format, item.quant, target)
                verification = verify_artifact(target, item.quant, verify_x, reference)
                manifest = _manifest(task, item, target, common, verification, time.perf_counter() - item_started)
                cache.commit(item.key, staging, manifest, replace=task.force)
                status, error = "built", None
            except Exception as exc:
                cache.discard(staging)
                traceback.print_exc()
                status, error = "failed", _describe(exc)
            seconds = time.perf_counter() - item_started
            outcomes.append({"key": item.key, "status": status, "error": error, "seconds": seconds,
                             "peak_rss_mb": _peak_rss_mb()})
            _emit({"event": "done", "name": item.name, "status": status, "seconds": seconds, "error": error,
                   "log": str(log_path)})
    return outcomes


class _Producers:
    """Makes each (format, quant) file, sharing intermediate files (SavedModel, fp32 ONNX, int8 ONNX)."""

    def __init__(self, export: Any, model: Any, resolution: int, calibration: np.ndarray, work: Path) -> None:
        self.export = export
        self.model = model
        self.resolution = resolution
        self.calibration = calibration
        self.work = work
        self._saved_model: Path | None = None
        self._onnx: dict[str, Path] = {}

    def produce(self, fmt: str, quant: str, target: Path) -> None:
        if fmt == "tflite":
            if self._saved_model is None:
                self._saved_model = self.work / "saved_model"
                self.export.export_saved_model(self.model, self._saved_model)
            target.write_bytes(self.export.convert_tflite(self._saved_model, quant, self.calibration))
        elif fmt == "onnx":
            shutil.copyfile(self._onnx_file(quant), target)
        else:
            raise UsageError(f"unknown format {fmt!r}")

    def _onnx_file(self, quant: str) -> Path:
        if quant in self._onnx:
            return self._onnx[quant]
        path = self.work / f"{quant}.onnx"
        if quant == "fp32":
            self.export.convert_onnx_fp32(self.model, self.resolution, path)
        elif quant == "fp16":
            self.export.onnx_fp16(self._onnx_file("fp32"), path)
        elif quant == "dynamic-int8":
            self.export.onnx_dynamic_int8(self._onnx_file("fp32"), path)
        elif quant == "int8":
            work = self.work / "int8-work"
            work.mkdir(exist_ok=True)
            self.export.onnx_static_int8(self._onnx_file("fp32"), path, self.calibration, work)
        elif quant == "int8-io":
            self.export.onnx_int8_io(self._onnx_file("int8"), path)
        else:
            raise UsageError(f"unknown quantisation mode {quant!r}")
        self._onnx[quant] = path
        return path


def _expected_weight_dtype(quant: str, fmt: str) -> str | None:
    if quant in ("int8", "int8-io", "dynamic-int8"):
        return "int8"
    if quant == "fp16":
        return "float16"
    if quant == "fp32":
        return "float32"
    return None


def verify_artifact(path: Path, quant: str, inputs: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Load and run a fresh artifact on the host and check it is what it claims to be.

    Every mode: it loads, runs, has the reference's output shape, finite outputs that vary with the input, and the
    weight dtype its mode implies (an int8 model really holds int8 weights). fp32 must also match the Keras model
    within FP32_ATOL with the same top-1 on every input. Top-1 agreement and error of the other modes are
    recorded, not judged: that is drift, measured properly later.
    """
    from farmbench.variants.hostrun import HostModel
    from farmbench.variants.inspect import inspect_model

    model = HostModel(path)
    outputs = model.run(inputs)
    fmt = path.suffix.lstrip(".")
    if outputs.shape != reference.shape:
        raise ArtifactVerificationError(f"{path.name}: output shape {outputs.shape}, Keras gives {reference.shape}")
    if not np.isfinite(outputs).all():
        raise ArtifactVerificationError(f"{path.name} ({quant}) gives non-finite outputs")
    if np.ptp(outputs, axis=0).max() == 0:
        raise ArtifactVerificationError(f"{path.name} ({quant}) gives the same output for every input")
    max_abs = float(np.abs(outputs - reference).max())
    agreement = float(np.mean(outputs.argmax(axis=1) == reference.argmax(axis=1)))
    if quant == "fp32" and (max_abs > FP32_ATOL or agreement < 1.0):
        raise ArtifactVerificationError(
            f"{path.name}: fp32 output differs from Keras by up to {max_abs:.3g} (tolerance {FP32_ATOL}),"
            f" top-1 agreement {agreement:.2f}")
    facts = inspect_model(path)
    expected = _expected_weight_dtype(quant, fmt)
    dominant = max(facts.weight_dtypes, key=lambda k: facts.weight_dtypes[k]) if facts.weight_dtypes else None
    if expected and dominant != expected:
        raise ArtifactVerificationError(
            f"{path.name}: a {quant} model should hold mostly {expected} weights, found {facts.weight_dtypes}")
    if quant == "int8-io" and (facts.inputs[0].dtype != "int8" or facts.outputs[0].dtype != "int8"):
        raise ArtifactVerificationError(f"{path.name}: int8-io must have int8 input and output")
    return {
        "inputs": int(len(inputs)),
        "max_abs_diff_vs_keras": max_abs,
        "top1_agreement_vs_keras": agreement,
        "fp32_tolerance": FP32_ATOL if quant == "fp32" else None,
        "output_std": float(outputs.std()),
    }


def _manifest(task: _GroupTask, item: _Item, path: Path, common: dict[str, Any],
              verification: dict[str, Any], seconds: float) -> dict[str, Any]:
    from farmbench.variants.inspect import inspect_model

    facts = inspect_model(path)
    variant = Variant(task.group, item.quant, item.format)
    return {
        "name": item.name,
        "source": "farmbench",
        "spec": variant.spec_json(),
        "file": path.name,
        **facts.to_json(),
        **{k: v for k, v in common.items() if k != "model_seconds"},
        "calibration": ({"images_version": images.IMAGES_VERSION, "count": CALIBRATION_COUNT,
                         "set": "variants.images.calibration_images"}
                        if item.quant in ("int8", "int8-io") else None),
        "versions": {**library_versions(), "farmbench": __version__, "build_code": build_code_hash(),
                     "python": sys.version.split()[0]},
        "build": {"built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "host": socket.gethostname(), "convert_seconds": round(seconds, 3),
                  "model_seconds": round(common["model_seconds"], 3),
                  # Peak RSS of the group's worker so far: model build/training plus conversions up to this one.
                  "worker_peak_rss_mb": round(_peak_rss_mb(), 1)},
        "verification": verification,
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, BuildError):
        return exc.format()
    return f"{type(exc).__name__}: {first[:400]}"


# ---------------------------------------------------------------------------------------------------------------
# Bring your own model


def import_model(path: Path, cache: ArtifactCache) -> BuildResult:
    """A user's .tflite/.onnx file as an artifact: copied into the cache by content, manifest read from the file,
    checked to load and run once on the host."""
    from farmbench.variants.hostrun import HostModel
    from farmbench.variants.inspect import inspect_model, sha256_file

    path = Path(path)
    name = path.name
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("tflite", "onnx"):
        raise UsageError(f"{path}: bring-your-own models must be .tflite or .onnx files")
    if not path.is_file():
        raise UsageError(f"{path}: no such model file")
    started = time.perf_counter()
    sha = sha256_file(path)
    key = canonical_hash({"byo": sha, "build_code": build_code_hash()})[:32]
    entry = cache.get(key)
    if entry is not None:
        return BuildResult(name, key, "cached", entry=entry)
    staging = cache.staging_dir(key)
    try:
        target = staging / f"model.{fmt}"
        shutil.copyfile(path, target)
        # Check the user's file, not the copy, so that errors name the file the user gave (same bytes).
        facts = inspect_model(path)
        shape = tuple(1 if d < 0 else d for d in facts.inputs[0].shape)
        rng = np.random.default_rng(0)
        output = HostModel(path).run_one(rng.uniform(-1.0, 1.0, size=shape).astype(np.float32))
        if not np.isfinite(output).all():
            raise ArtifactVerificationError(f"{path} gives non-finite outputs on a random input")
        manifest = {
            "name": name, "source": "user", "spec": {"source": "file", "format": fmt, "name": path.stem},
            "original_path": str(path.resolve()), "file": target.name, **facts.to_json(),
            "versions": {**library_versions(), "farmbench": __version__},
            "build": {"built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "host": socket.gethostname(), "convert_seconds": 0.0},
        }
        entry = cache.commit(key, staging, manifest)
    except Exception as exc:
        cache.discard(staging)
        return BuildResult(name, key, "failed", error=_describe(exc), seconds=time.perf_counter() - started)
    return BuildResult(name, key, "built", entry=entry, seconds=time.perf_counter() - started)
