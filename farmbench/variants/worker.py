"""The build worker: one spawned process per group (see ``build``), which builds the Keras model once, derives every
requested quantisation mode and format from it, checks each file in the host runtime and commits it to the cache.

This module's source is part of every artifact key (``keys.BUILD_SOURCES``): it decides what the bytes are.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from farmbench import __version__
from farmbench.errors import ArtifactVerificationError, BuildError, UsageError
from farmbench.variants import images
from farmbench.variants.cache import ArtifactCache
from farmbench.variants.keys import CALIBRATION_COUNT, build_code_hash, library_versions
from farmbench.variants.spec import Group, Variant

VERIFY_COUNT = 8
# fp32 artifacts must reproduce the Keras model: max |difference| of softmax probabilities on VERIFY_COUNT
# evaluation images, and the same top-1 on every one of them.
FP32_ATOL = 1e-4

Event = dict[str, Any]


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
    print(f"==== {datetime.now(UTC).isoformat()} building {task.group.name()} pid {os.getpid()}",
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
        "inputs": len(inputs),
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
        "build": {"built_at": datetime.now(UTC).isoformat(timespec="seconds"),
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
