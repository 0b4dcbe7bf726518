"""Outputs stored with each measurement (schema v4) and compared between devices, runtimes and delegates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from farmbench.results import MeasurementRecord, ResultStore
from farmbench.results.crossdrift import compare_executions
from farmbench.results.drift import drift


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with ResultStore(tmp_path / "results.db") as opened:
        yield opened


def _outputs(seed: int, n: int = 8, classes: int = 10) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(n, classes))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def _add(store: ResultStore, run_id: str, device_id: int, outputs: np.ndarray | None, *, runtime: str = "litert",
         digest: str = "set-a", status: str = "ok", **config: Any) -> int:
    drift_doc = {"top1_agreement": 1.0, "evalset": {"digest": digest}}
    return store.add_measurement(MeasurementRecord(
        run_id=run_id, device_id=device_id, artifact_key="k-int8", runtime=runtime, status=status,
        config={"threads": 1, "xnnpack": "on", "delegate": "cpu", **config}, samples_us=[100.0, 101.0, 99.0],
        drift=drift_doc if status == "ok" else None, outputs=outputs))


def test_outputs_roundtrip_exactly_and_only_for_ok_records(store: ResultStore) -> None:
    run_id = store.start_run(sweep_name="s", sweep={}, plan=[], command=["farmbench"])
    device = store.upsert_device("local:a", "local", "local", {})
    store.put_artifact("k-int8", "m_int8.tflite", "tflite", None, {})
    values = _outputs(1, n=64, classes=1000)
    kept = _add(store, run_id, device, values)
    failed = _add(store, run_id, device, values, status="failed")
    none = _add(store, run_id, device, None)
    stored = store.outputs([kept, failed, none])
    assert set(stored) == {kept}
    array, digest = stored[kept]
    assert digest == "set-a" and array.dtype == np.float32 and np.array_equal(array, values)
    record = store.measurements()[0]
    assert record.outputs is None and record.to_json()["outputs_shape"] is None  # listing stays cheap


def test_reference_is_this_machine_cpu_and_every_other_execution_is_compared(store: ResultStore) -> None:
    run_id = store.start_run(sweep_name="s", sweep={}, plan=[], command=["farmbench"])
    local = store.upsert_device("local:a", "desk", "local", {})
    board = store.upsert_device("ssh:b", "board", "ssh", {})
    phone = store.upsert_device("adb:c", "phone", "adb", {})
    store.put_artifact("k-int8", "m_int8.tflite", "tflite", None, {})
    base = _outputs(1)
    shifted = base.copy()
    shifted[0] = shifted[0][::-1]  # one image's ranking reversed: top-1 moves on 1 of 8
    _add(store, run_id, phone, base, runtime="benchmark_model")
    _add(store, run_id, phone, shifted, runtime="benchmark_model", delegate="gpu")
    _add(store, run_id, board, base, threads=4)
    _add(store, run_id, board, shifted, threads=2)  # fewer threads stand for the execution
    _add(store, run_id, local, base, threads=2)
    _add(store, run_id, local, base, xnnpack="off")
    _add(store, run_id, local, _outputs(2), digest="set-b")  # another evaluation set: alone, compared with nothing
    pairs = compare_executions(store)
    assert {p.reference.label for p in pairs} == {"desk litert"}
    assert {p.reference.threads for p in pairs} == {2}  # XNNPACK on beats fewer threads with it off
    by_label = {p.other.label: p for p in pairs}
    assert set(by_label) == {"desk litert no-xnnpack", "board litert", "phone benchmark_model",
                             "phone benchmark_model gpu"}
    assert by_label["phone benchmark_model"].metrics.top1_agreement == 1.0
    assert by_label["board litert"].other.threads == 2
    expected = drift(base, shifted)
    assert by_label["phone benchmark_model gpu"].metrics == expected
    assert expected.top1_agreement == pytest.approx(7 / 8)
    assert all(p.evalset_digest == "set-a" for p in pairs)


def test_without_the_host_the_first_device_cpu_is_the_reference(store: ResultStore) -> None:
    run_id = store.start_run(sweep_name="s", sweep={}, plan=[], command=["farmbench"])
    phone = store.upsert_device("adb:c", "phone", "adb", {})
    store.put_artifact("k-int8", "m_int8.tflite", "tflite", None, {})
    _add(store, run_id, phone, _outputs(3), runtime="benchmark_model", delegate="nnapi")
    _add(store, run_id, phone, _outputs(3), runtime="benchmark_model")
    pairs = compare_executions(store)
    assert [(p.reference.label, p.other.label) for p in pairs] == [("phone benchmark_model",
                                                                     "phone benchmark_model nnapi")]
    assert compare_executions(store, [store.start_run(sweep_name="t", sweep={}, plan=[], command=[])]) == []
