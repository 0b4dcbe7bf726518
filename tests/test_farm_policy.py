"""The farm's rules in isolation: retry backoff, the [run] keys that configure it, the stored sweep a resume runs,
the build pool's memory bound, and the two progress displays (fed the orchestrator's events)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest

from farmbench.config import (
    default_sweep,
    load_sweep,
    merge_run_overrides,
    sweep_from_json,
    sweep_json,
)
from farmbench.errors import ConfigError
from farmbench.farm import RetryPolicy
from farmbench.orchestrator import PlanItem
from farmbench.results.schema import MeasurementRecord
from farmbench.runners.board import RunSpec
from farmbench.variants.build import admit


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy(retries=5, backoff_s=0.5, backoff_max_s=3.0)
    assert [policy.delay_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert RetryPolicy(backoff_s=0.0).delay_s(3) == 0.0


def test_run_keys_for_retries_are_validated(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.toml"
    sweep.write_text("[run]\nretries = 4\nunhealthy_after = 0\nbackoff_s = 2\nbackoff_max_s = 60\n")
    run = load_sweep(sweep).run
    assert (run.retries, run.unhealthy_after, run.backoff_s, run.backoff_max_s) == (4, 0, 2.0, 60.0)
    assert RetryPolicy.from_run(run) == RetryPolicy(4, 0, 2.0, 60.0)
    defaults = default_sweep().run
    assert (defaults.retries, defaults.unhealthy_after, defaults.backoff_s, defaults.backoff_max_s) == (2, 3, 1, 30)
    sweep.write_text("[run]\nretries = -1\n")
    with pytest.raises(ConfigError, match=r"sweep.toml:2: run.retries: must be >= 0"):
        load_sweep(sweep)
    sweep.write_text("[run]\nbackoff_s = 10\nbackoff_max_s = 5\n")
    with pytest.raises(ConfigError, match=r"backoff_s \(10.0\) is larger than backoff_max_s \(5.0\)"):
        load_sweep(sweep)
    sweep.write_text("[run]\nretry = 3\n")
    with pytest.raises(ConfigError, match=r"sweep.toml:2: run.retry: unknown key") as caught:
        load_sweep(sweep)
    assert caught.value.hint == "did you mean 'retries'?"


def test_a_stored_sweep_comes_back_as_it_was() -> None:
    sweep = merge_run_overrides(default_sweep(), {"threads": "1,4", "retries": 5, "min_s": 0.25,
                                                  "devices": "local,rpi5"})
    stored = sweep_json(sweep)
    again = sweep_from_json(stored)
    assert again.run == sweep.run and again.variants == sweep.variants and again.name == sweep.name
    # A run recorded before the retry keys existed resumes with their defaults.
    old = {**stored, "run": {k: v for k, v in stored["run"].items()
                             if k not in ("retries", "unhealthy_after", "backoff_s", "backoff_max_s")}}
    assert sweep_from_json(old).run.retries == 2


def test_plan_items_round_trip_through_the_stored_plan() -> None:
    spec = RunSpec(runtime="litert", threads=2, xnnpack="on", ort_provider="CPUExecutionProvider",
                   ort_opt_level="all", warmup_runs=1, warmup_min_s=0.0, runs=3, min_s=0.0, max_s=10.0)
    item = PlanItem(7, "rpi5", "k" * 32, "m.tflite", "tflite", spec, 1)
    stored = item.to_json()
    assert PlanItem.from_json(stored) == item
    stored["spec"]["a_field_from_the_future"] = 1
    assert PlanItem.from_json(stored) == item


def test_build_pool_admits_within_jobs_and_memory() -> None:
    need = {"v2-a1.0-r224": 7900, "v2-a0.5": 2200, "v3s-a0.5": 1700, "v1-a0.25": 1800}.__getitem__
    pending = ["v2-a1.0-r224", "v2-a0.5", "v3s-a0.5", "v1-a0.25"]
    # 6 GB and 4 workers: the 7.9 GB build does not fit beside anything, the small ones go together.
    assert admit(pending[1:], [], 4, 6000, need) == ["v2-a0.5", "v3s-a0.5", "v1-a0.25"]
    assert admit(["v3s-a0.5", "v1-a0.25"], [2200], 4, 6000, need) == ["v3s-a0.5", "v1-a0.25"]
    assert admit(["v1-a0.25", "v2-a1.0-r224"], [2200, 1700, 1800], 4, 6000, need) == []  # 5.7 GB in use
    # The job limit holds whatever the memory.
    assert admit(pending[1:], [], 2, 100_000, need) == ["v2-a0.5", "v3s-a0.5"]
    # A build larger than the whole budget runs alone rather than never; not beside another.
    assert admit(pending, [], 4, 6000, need) == ["v2-a1.0-r224"]
    assert admit(pending[:1], [1700], 4, 6000, need) == []


def _record(status: str, **fields: Any) -> MeasurementRecord:
    return MeasurementRecord(run_id="r1", device_id=1, artifact_key="k", runtime="litert", status=status,
                             config={"threads": 1}, samples_us=[1000.0, 1100.0, 1200.0], **fields)


EVENTS: list[dict[str, Any]] = [
    {"event": "run-start", "run_id": "r1", "planned": 4, "devices": {"rpi5": 2, "pixel8": 2}},
    {"event": "device-connect", "device": "rpi5", "attempt": 1},
    {"event": "device-ready", "device": "rpi5", "runtimes": {"litert": "2.3.0"}, "telemetry": ""},
    {"event": "measuring", "device": "rpi5", "artifact": "a.tflite", "attempt": 1},
    {"event": "measured", "device": "rpi5", "artifact": "a.tflite", "status": "ok", "record": _record("ok"),
     "final": True},
    {"event": "measured", "device": "pixel8", "artifact": "a.tflite", "status": "failed", "final": False,
     "record": _record("failed", error_class="TransportError", error_message="connection reset", transient=True)},
    {"event": "retry", "device": "pixel8", "artifact": "a.tflite", "attempt": 1, "retries": 2, "delay_s": 1.0},
    {"event": "device-unhealthy", "device": "pixel8", "reason": "pixel8 keeps dropping", "not_run": 2},
    {"event": "stopping", "signal": "SIGINT"},
]


def test_plain_progress_is_one_line_per_event_with_count_and_eta(capsys: pytest.CaptureFixture[str]) -> None:
    from farmbench.progress import PlainProgress

    progress = PlainProgress()
    for event in EVENTS:
        progress(event)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("run r1: 4 measurements on 2 devices")
    assert any(re.search(r"1/4 ETA \S+\] rpi5: ok a.tflite \[litert t1\] p50 1.100 ms, n=3", line) for line in lines)
    assert any("pixel8: failed, will retry a.tflite" in line and "connection reset" in line for line in lines)
    assert any("pixel8: retrying a.tflite in 1 s (attempt 2 of 3)" in line for line in lines)
    assert any("pixel8: unhealthy, 2 measurements not run: pixel8 keeps dropping" in line for line in lines)
    assert any("stopping (SIGINT)" in line and "Ctrl-C again" in line for line in lines)


def test_live_progress_draws_device_lines_and_an_overall_bar() -> None:
    from rich.console import Console

    from farmbench.progress import LiveProgress

    buffer = io.StringIO()
    live = LiveProgress(Console(file=buffer, force_terminal=True, width=140, color_system=None))
    with live:
        for event in EVENTS[:-1]:
            live(event)
    text = buffer.getvalue()
    assert "run r1" in text and "rpi5" in text and "pixel8" in text
    assert re.search(r"run r1\s.*\b3/4\b", text), text  # 1 ok + 2 not run of 4
    assert "unhealthy" in text and "pixel8: failed (retrying)" in text
    assert "-:--:--" in text or re.search(r"\d:\d\d:\d\d", text)  # the ETA column
