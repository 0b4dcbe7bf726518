"""Build variants into the artifact cache: keys, the per-group worker, and a process pool bounded by memory.

Data flow: ``plan`` (key every variant; cache hits need no TensorFlow at all) -> group the misses by Keras model ->
one worker process per group (builds the model once, derives every quant mode and format from it, checks each
artifact in the host runtime, commits each to the cache as soon as it passes) -> results in the caller's order.

Workers are fresh processes (spawn, one group each) because TensorFlow never returns memory and prints hundreds of
lines from C++; each worker's stdout/stderr go to the group's log file in the cache.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from farmbench import __version__
from farmbench.errors import ArtifactVerificationError, UsageError
from farmbench.variants.cache import ArtifactCache, CacheEntry
from farmbench.variants.keys import (
    CALIBRATION_COUNT,
    artifact_key,
    build_code_hash,
    group_key,
    library_versions,
    weights_key,
)
from farmbench.variants.spec import Group, Variant, canonical_hash, groups_of
from farmbench.variants.worker import Event, _build_group, _describe, _GroupTask, _Item, _worker_init

EventCallback = Callable[[Event], None]
__all__ = ["CALIBRATION_COUNT", "BuildOptions", "BuildResult", "artifact_key", "build_variants", "group_key",
           "import_model", "library_versions", "weights_key"]

def estimate_build_memory_mb(group: Group) -> int:
    """Peak RSS of building one group. Measured worker peaks (2-core machine, TF 2.21): mobilenet_v3_small
    α0.5 r128 1.7 GB, mobilenet_v2 α0.5 r128 2.2 GB; an early probe that trained at full resolution reached 7.9 GB
    for mobilenet_v2 α1.0 r224. A fixed TensorFlow cost plus a rough MAC count scales between them, erring high."""
    base_macs = {"mobilenet_v1": 569e6, "mobilenet_v2": 300e6, "mobilenet_v3_small": 56e6,
                 "mobilenet_v3_large": 217e6}[group.family]
    macs = base_macs * (group.resolution / 224) ** 2 * group.width ** 2
    return int(1700 + 6200 * macs / 300e6)


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
            running_mb = [estimate_build_memory_mb(t.group) for t in running.values()]
            for task in admit(pending, running_mb, jobs, budget_mb, lambda t: estimate_build_memory_mb(t.group)):
                pending.remove(task)
                running[pool.submit(_build_group, task)] = task
                notify({"event": "group-start", "name": task.group.name(), "artifacts": len(task.items),
                        "estimated_memory_mb": estimate_build_memory_mb(task.group)})
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


T = TypeVar("T")


def admit(pending: Sequence[T], running_mb: Sequence[int], jobs: int, budget_mb: int,
          need_mb: Callable[[T], int]) -> list[T]:
    """Which of ``pending`` (in order) start now, beside builds already using ``running_mb``: at most ``jobs`` at
    once, and together within ``budget_mb`` of estimated peak memory -- except that a build larger than the whole
    budget still runs when nothing else does (alone), or it would never run."""
    started: list[T] = []
    used_mb = sum(running_mb)
    count = len(running_mb)
    for task in pending:
        if count >= jobs:
            break
        need = need_mb(task)
        if count and used_mb + need > budget_mb:
            continue
        started.append(task)
        used_mb += need
        count += 1
    return started


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
            "build": {"built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                      "host": socket.gethostname(), "convert_seconds": 0.0},
        }
        entry = cache.commit(key, staging, manifest)
    except Exception as exc:
        cache.discard(staging)
        return BuildResult(name, key, "failed", error=_describe(exc), seconds=time.perf_counter() - started)
    return BuildResult(name, key, "built", entry=entry, seconds=time.perf_counter() - started)
