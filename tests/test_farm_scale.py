"""Sixteen devices at once: 8 SSH board entries (one loopback sshd) and 8 ADB device emulators (ports of their own),
each running a short workload in one `farmbench run`. Results must never mix devices up: every record belongs to the
device its plan position names, each device row has the identity of the device it came from, and each phone's
measurements carry that phone's own model name (read from it when connecting)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from farmbench.results.store import ResultStore
from tests.conftest import GRID_FLAGS, BuiltGrid, cli_command, cli_env, describe
from tests.peers.farm import simulated_farm
from tests.peers.sshd import SshdPeer

pytestmark = pytest.mark.slow


def test_sixteen_devices_in_parallel_never_mix_results(built_grid: BuiltGrid, sshd: SshdPeer,
                                                        tmp_path: Path) -> None:
    cache = built_grid.copy(tmp_path / "cache")
    db = tmp_path / "results.db"
    with simulated_farm(tmp_path / "farm", boards=8, phones=8, sshd=sshd) as farm:
        env = cli_env(cache)
        env.pop("SSH_AUTH_SOCK", None)
        proc = subprocess.run(cli_command(
            "run", *GRID_FLAGS, "--quant", "fp32,int8", "--format", "tflite", *farm.device_args(), "--repeats", "1",
            "--runs", "3", "--min-s", "0", "--warmup-runs", "1", "--warmup-min-s", "0", "--no-drift", "--json",
            "--db", db), env=env, capture_output=True, text=True, timeout=900, check=False)
        leftovers = [p for emulator in farm.emulators for p in emulator.leftover_processes()]
    assert proc.returncode == 0, describe(proc)
    summary = json.loads(proc.stdout)
    assert (summary["planned"], summary["ok"], summary["failed"], summary["not_run"]) == (32, 32, 0, 0), summary
    assert set(summary["devices"]) == {device.name for device in farm.devices}
    assert all(report["ok"] == 2 and report["health"] == "healthy" for report in summary["devices"].values())
    assert leftovers == []

    with ResultStore(db, create=False) as store:
        (run,) = store.runs()
        rows = {row.id: row for row in store.devices()}
        stored = store.measurements(with_samples=False)
    expected = {device.name: device for device in farm.devices}
    assert {row.name: row.identity for row in rows.values()} == {d.name: d.identity for d in farm.devices}
    planned_device = {item["index"]: item["device"] for item in run.plan}
    assert sorted(record.plan_index for record in stored) == list(range(32))
    for record in stored:
        device = rows[record.device_id].name
        assert device == planned_device[record.plan_index], (record.plan_index, device)
        if expected[device].kind == "adb":
            assert record.context["model"] == expected[device].model, (device, record.context["model"])
            assert record.runtime == "benchmark_model"
        else:
            assert record.runtime == "litert" and record.context["hostname"]
    # Sixteen devices worked at the same time: the measurements of different devices overlap.
    starts = sorted(record.started_at for record in stored)
    first_finish = min(record.finished_at for record in stored)
    assert sum(start < first_finish for start in starts) >= 8, "devices ran in parallel"
