"""One variant's outputs compared between devices, runtimes and delegates, after the fact.

Every measurement that ran the drift pass stores the outputs it produced on the evaluation set (schema v4,
``outputs``). Here the outputs of one artifact are compared across *executions*: an execution is a (device, runtime,
delegate, XNNPACK on/off) that ran the artifact. Thread counts do not make executions of their own (they only change
the order of float reductions); the lowest thread count stands for the execution, and the latest measurement of it
among the selected runs is used.

For each artifact, one execution is the reference and every other one is compared with it by
:func:`farmbench.results.drift.drift` (top-1 agreement, top-5 overlap, KL, cosine, max abs error):

* the reference is this machine (a ``local`` device) when it ran the artifact, else the first device by name --
  the host is where the fp32 references come from, so cross-device numbers read "how far is the phone from my desk";
* on that device, the CPU delegate with XNNPACK on, when measured.

So a GPU delegate on a phone is compared with the host CPU; when the host did not run the artifact, with the same
phone's CPU run. Outputs computed on different evaluation sets (another ``eval_dir`` or ``eval_images``) are never
compared with each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from farmbench.results.drift import DriftMetrics, drift
from farmbench.results.schema import MeasurementRecord
from farmbench.results.store import ResultStore


@dataclass(frozen=True)
class Execution:
    """Where and how one artifact's outputs were computed."""

    device: str
    device_kind: str
    runtime: str
    delegate: str
    xnnpack: str
    threads: int
    measurement_id: int
    run_id: str

    @property
    def label(self) -> str:
        parts = [self.device, self.runtime]
        if self.delegate != "cpu":
            parts.append(self.delegate)
        if self.xnnpack == "off":
            parts.append("no-xnnpack")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "device_kind": self.device_kind, "runtime": self.runtime,
                "delegate": self.delegate, "xnnpack": self.xnnpack, "threads": self.threads,
                "measurement_id": self.measurement_id, "run_id": self.run_id, "label": self.label}


@dataclass(frozen=True)
class ExecutionDrift:
    """``other``'s outputs for ``artifact`` against ``reference``'s, on the same evaluation set."""

    artifact: str
    artifact_key: str
    evalset_digest: str | None
    reference: Execution
    other: Execution
    metrics: DriftMetrics

    def to_json(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "artifact_key": self.artifact_key, "evalset": self.evalset_digest,
                "reference": self.reference.to_json(), "other": self.other.to_json(), **self.metrics.to_json()}


def _execution(record: MeasurementRecord, device: str, kind: str) -> Execution:
    config = record.config
    return Execution(device=device, device_kind=kind, runtime=record.runtime,
                     delegate=str(config.get("delegate") or "cpu"), xnnpack=str(config.get("xnnpack") or "on"),
                     threads=int(config.get("threads") or 1), measurement_id=int(record.id or 0),
                     run_id=record.run_id)


def _reference_order(execution: Execution) -> tuple[int, str, int, int, int]:
    return (execution.device_kind != "local", execution.device, execution.delegate != "cpu",
            execution.xnnpack != "on", execution.threads)


def compare_executions(store: ResultStore, run_ids: Sequence[str] | None = None) -> list[ExecutionDrift]:
    """Every artifact's outputs on each execution against its reference execution (see the module docstring), in
    artifact-name then execution order. Artifacts measured by one execution only give nothing."""
    devices = {d.id: d for d in store.devices()}
    names = store.artifact_names()
    candidates = [r for r in store.measurements(run_ids, with_samples=False)
                  if r.status == "ok" and r.id is not None and isinstance(r.drift, dict) and "top1_agreement" in r.drift]
    outputs = store.outputs(r.id for r in candidates if r.id is not None)
    # (artifact, evalset) -> execution identity -> (execution, outputs); later and fewer-thread measurements win.
    groups: dict[tuple[str, str | None], dict[tuple[str, str, str, str], tuple[Execution, np.ndarray]]] = {}
    for record in candidates:
        stored = outputs.get(int(record.id or 0))
        if stored is None:
            continue
        device = devices[record.device_id]
        execution = _execution(record, device.name, device.kind)
        key = (execution.device, execution.runtime, execution.delegate, execution.xnnpack)
        group = groups.setdefault((record.artifact_key, stored[1]), {})
        previous = group.get(key)
        if previous is None or execution.threads <= previous[0].threads:
            group[key] = (execution, stored[0])
    found: list[ExecutionDrift] = []
    for (artifact_key, digest), group in sorted(groups.items(), key=lambda item: (names.get(item[0][0], ""),
                                                                                   item[0])):
        if len(group) < 2:
            continue
        ordered = sorted(group.values(), key=lambda pair: _reference_order(pair[0]))
        reference, reference_outputs = ordered[0]
        for execution, values in ordered[1:]:
            if values.shape != reference_outputs.shape:
                continue
            found.append(ExecutionDrift(artifact=names.get(artifact_key, artifact_key), artifact_key=artifact_key,
                                        evalset_digest=digest, reference=reference, other=execution,
                                        metrics=drift(reference_outputs, values)))
    return found


__all__ = ["Execution", "ExecutionDrift", "compare_executions"]
