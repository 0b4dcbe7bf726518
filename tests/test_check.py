"""`farmbench check` and `farmbench baseline`: real processes over real results databases.

The first part writes runs through the store's public API with synthetic measurements (realistic latency noise,
aggregate-only sessions, energy and drift documents, failures) so each verdict, refusal and exit code is exercised
in seconds. The slow part runs this machine for real: repeated runs of one sweep must not be flagged, and a model
swapped for a slower one under the same name (a user's model file, same variant, same context) must be caught with
exit 3.
"""

from __future__ import annotations

import json
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import GRID_FLAGS, BuiltGrid, describe, require_module, run_cli

from farmbench.results.compare import REGRESSION, compare_runs
from farmbench.results.schema import MeasurementRecord
from farmbench.results.stats import summarize_aggregates
from farmbench.results.store import ResultStore

SPEC_TFLITE = {"family": "mobilenet_v2", "width": 0.35, "resolution": 96, "quant": "fp32", "format": "tflite",
               "weights": {"kind": "random", "seed": 0}, "minimalistic": False}
SPEC_ONNX = {**SPEC_TFLITE, "format": "onnx"}
NAME_TFLITE, NAME_ONNX = "mobilenet_v2_a0.35_r96_fp32.tflite", "mobilenet_v2_a0.35_r96_fp32.onnx"
CONFIG = {"runtime": "litert", "threads": 1, "xnnpack": "on", "ort_provider": "CPUExecutionProvider",
          "ort_opt_level": "all", "affinity": "", "warmup_runs": 5, "warmup_min_s": 0.5, "runs": 50, "min_s": 1.0,
          "max_s": 60.0, "seed": 0}
CONTEXT = {"os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.1.0-18-amd64", "affinity": [0, 1],
           "applied": {"threads": 1, "xnnpack": True, "op_resolver": "AUTO", "ort_providers": None}}
EVALSET = {"digest": "e" * 64, "count": 64, "source": "built-in"}


@dataclass
class Session:
    """One synthetic measurement (a repeat) of one (device, artifact, configuration)."""

    artifact: str = "tflite"
    median_us: float = 1500.0
    repeat: int = 0
    runtime: str = "litert"
    runtime_version: str | None = "2.3.0"
    config: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    status: str = "ok"
    transient: bool = False
    aggregate_only: bool = False
    energy_mj: float | None = None
    power_source: str = "rapl"
    top1: float | None = None
    evalset: dict[str, Any] | None = None
    device: str = "local"


def _samples(rng: np.random.Generator, median_us: float, n: int = 300) -> list[float]:
    """Lognormal iterations around the session's level, with 2% scheduler outliers."""
    values = median_us * np.exp(rng.normal(0.0, 0.05, n))
    outliers = rng.random(n) < 0.02
    values[outliers] *= rng.uniform(1.5, 3.0, int(outliers.sum()))
    return [float(v) for v in values]


def write_run(db: Path, sessions: Sequence[Session], *, sweep: str = "nightly", status: str = "finished",
              seed: int = 0) -> str:
    """A run in the database at ``db`` holding ``sessions``; returns its id."""
    rng = np.random.default_rng(seed)
    with ResultStore(db) as store:
        run_id = store.start_run(sweep_name=sweep, sweep={"name": sweep, "variants": {"width": [0.35]}},
                                 plan=[{"i": i} for i in range(len(sessions))], command=["farmbench", "run"])
        store.put_artifact("k-tflite", NAME_TFLITE, "tflite", "a" * 64, {"spec": SPEC_TFLITE})
        store.put_artifact("k-onnx", NAME_ONNX, "onnx", "b" * 64, {"spec": SPEC_ONNX})
        for index, s in enumerate(sessions):
            if s.device.endswith(":unreached"):
                name = s.device.split(":")[0]
                device_id = store.upsert_device(f"ssh:unreached:{name}", name, "ssh", {})
            else:
                device_id = store.upsert_device(f"ssh:{s.device}-fingerprint", s.device, "ssh", {"os": "Linux"})
            level = s.median_us * float(np.exp(rng.normal(0.0, 0.01)))  # sessions of one run agree within ~1%
            record = MeasurementRecord(
                run_id=run_id, device_id=device_id, artifact_key=f"k-{s.artifact}", runtime=s.runtime,
                status=s.status, config={**CONFIG, "runtime": s.runtime, **s.config}, plan_index=index,
                repeat=s.repeat, runtime_version=s.runtime_version, artifact_sha256=("a" if s.artifact == "tflite"
                                                                                     else "b") * 64,
                context={**CONTEXT, **s.context}, flags=list(s.flags), transient=s.transient)
            if s.status != "ok":
                record = replace(record, error_class="ConnectError" if s.transient else "op_version",
                                 error_message="device said no")
            elif s.aggregate_only:
                record = replace(record, latency=summarize_aggregates(
                    count=50, mean_us=level, std_us=level * 0.05, min_us=level * 0.9, max_us=level * 1.3))
            else:
                record = replace(record, samples_us=_samples(rng, level))
            if s.status == "ok" and s.energy_mj is not None:
                energy = s.energy_mj * float(np.exp(rng.normal(0.0, 0.01)))
                record = replace(record, power={"source": s.power_source, "energy_per_inference_mj": energy,
                                                "flags": []})
            if s.status == "ok" and s.top1 is not None:
                record = replace(record, drift={"top1_agreement": s.top1, "evalset": s.evalset or EVALSET})
            store.add_measurement(record)
        store.finish_run(run_id, status)
    time.sleep(0.01)  # started_at has millisecond resolution; keep runs strictly ordered
    return run_id


def repeats(n: int = 3, **kwargs: Any) -> list[Session]:
    return [Session(repeat=i, **kwargs) for i in range(n)]


def check(db: Path, *args: str | Path) -> Any:
    return run_cli("check", "--db", db, *args)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "results.db"


def junit(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    assert int(suite.get("tests", "-1")) == len(suite.findall("testcase")) == int(root.get("tests", "-2"))
    for kind in ("failure", "error", "skipped"):
        count = sum(1 for case in suite.findall("testcase") if case.find(kind) is not None)
        assert int(suite.get(f"{kind}s" if kind != "skipped" else "skipped", "-1")) == count
    return suite


def case_named(suite: ET.Element, text: str) -> ET.Element:
    [case] = [c for c in suite.findall("testcase") if text in c.get("name", "")]
    return case


# --- verdicts and exit codes --------------------------------------------------------------------------------------


def test_clean_check_exits_0_and_lists_runs_by_id(db: Path) -> None:
    base = write_run(db, repeats(artifact="tflite") + repeats(artifact="onnx", runtime="onnxruntime",
                                                                median_us=2400.0), seed=1)
    cand = write_run(db, repeats(artifact="tflite") + repeats(artifact="onnx", runtime="onnxruntime",
                                                                median_us=2400.0), seed=2)
    proc = check(db)
    assert proc.returncode == 0, describe(proc)
    assert f"OK: candidate {cand} against previous run of sweep 'nightly' ({base})" in proc.stdout
    assert "2 unchanged" in proc.stdout and "regression" not in proc.stdout
    # `farmbench results --format json` lists the runs with their ids (what --baseline/--candidate take).
    listed = run_cli("results", "--db", db, "--all-runs", "--format", "json")
    assert listed.returncode == 0, describe(listed)
    assert [r["id"] for r in json.loads(listed.stdout)["runs"]] == [base, cand]


def test_regression_exits_3_with_table_markdown_and_junit(db: Path, tmp_path: Path) -> None:
    write_run(db, repeats(artifact="tflite") + repeats(artifact="onnx", runtime="onnxruntime"), seed=1)
    cand = write_run(db, repeats(artifact="tflite", median_us=1800.0, flags=["throttled"])
                     + repeats(artifact="onnx", runtime="onnxruntime", median_us=1200.0), seed=2)
    md, xml = tmp_path / "out" / "check.md", tmp_path / "out" / "check.xml"
    proc = check(db, "--markdown", md, "--junit", xml)
    assert proc.returncode == 3, describe(proc)
    lines = proc.stdout.splitlines()
    regression = next(line for line in lines if line.startswith("regression"))
    verdict = regression.split("]")[0]
    assert "throttled" in verdict and NAME_TFLITE in regression and "+20" in regression  # ~ +20%
    assert any(line.startswith("improvement") and NAME_ONNX in line for line in lines)  # improvements too
    assert f"FAIL: candidate {cand}" in proc.stdout and "1 regression, 1 improvement" in proc.stdout

    summary = md.read_text()
    assert summary.startswith("## farmbench check: regressions found")
    assert f"`{cand}`" in summary and "throttled] | local |" in summary and "| improvement" in summary

    suite = junit(xml)
    assert len(suite.findall("testcase")) == 2
    failure = case_named(suite, NAME_TFLITE).find("failure")
    assert failure is not None and failure.get("type") == REGRESSION and "latency regression" in failure.get(
        "message", "")
    improved = case_named(suite, NAME_ONNX)
    assert improved.find("failure") is None and improved.find("skipped") is None
    assert "latency: improvement" in (improved.findtext("system-out") or "")
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["candidate_run"] == cand and properties["exit_code"] == "3"


def test_json_output_carries_the_api_fields(db: Path) -> None:
    base = write_run(db, repeats(), seed=1)
    cand = write_run(db, repeats(median_us=1800.0), seed=2)
    proc = check(db, "--json")
    assert proc.returncode == 3, describe(proc)
    document = json.loads(proc.stdout)
    assert (document["baseline_run_id"], document["candidate_run_id"], document["exit_code"]) == (base, cand, 3)
    [result] = document["results"]
    assert result["metric"] == "latency" and result["verdict"] == "regression" and result["unit"] == "us"
    assert result["key"]["variant"] == NAME_TFLITE and result["key"]["config"]["threads"] == "1"
    assert 15 < result["change_pct"] < 25 and result["p_value"] < 0.01 and result["session_p_value"] < 0.01
    assert 1400 < result["baseline_median"] < 1600 and result["baseline_sessions"] == 3


def test_refused_when_checked_context_differs_naming_the_field(db: Path, tmp_path: Path) -> None:
    write_run(db, repeats(artifact="tflite") + repeats(artifact="onnx", runtime="onnxruntime"), seed=1)
    write_run(db, repeats(artifact="tflite", median_us=3000.0, runtime_version="2.4.0")
              + repeats(artifact="onnx", runtime="onnxruntime",
                        context={"applied": {**CONTEXT["applied"], "threads": 2}}), seed=2)
    xml = tmp_path / "check.xml"
    proc = check(db, "--junit", xml)
    # Refused is not a regression: the 2x slower TFLite numbers are not compared at all.
    assert proc.returncode == 0, describe(proc)
    refused = [line for line in proc.stdout.splitlines() if line.startswith("refused")]
    assert len(refused) == 2 and "regression" not in proc.stdout.split("thresholds:")[0]
    assert any("runtime_version: baseline 2.3.0, candidate 2.4.0" in line for line in refused)
    assert any("threads: baseline 1, candidate 2" in line for line in refused)
    suite = junit(xml)
    skipped = case_named(suite, NAME_TFLITE).find("skipped")
    assert skipped is not None and skipped.get("type") == "refused"
    assert skipped.get("message", "").startswith("refused: runtime_version differs")


def test_a_changed_configuration_is_paired_and_refused(db: Path) -> None:
    write_run(db, repeats(config={"threads": 2}), seed=1)
    write_run(db, repeats(config={"threads": 1}, median_us=2500.0), seed=2)
    proc = check(db, "--json")
    assert proc.returncode == 0, describe(proc)
    [result] = json.loads(proc.stdout)["results"]
    assert result["verdict"] == "refused" and result["refused_field"] == "threads"
    assert "threads: baseline 2, candidate 1" in result["reason"]


def test_new_gone_and_failed(db: Path, tmp_path: Path) -> None:
    write_run(db, repeats(artifact="tflite") + repeats(artifact="onnx", runtime="onnxruntime"), seed=1)
    write_run(db, repeats(artifact="tflite", status="failed")
              + repeats(artifact="tflite", runtime="tflite_runtime"), seed=2)
    xml, md = tmp_path / "check.xml", tmp_path / "check.md"
    proc = check(db, "--junit", xml, "--markdown", md)
    assert proc.returncode == 3, describe(proc)  # a model that ran and now fails blocks, like a regression
    verdicts = {line.split()[0] for line in proc.stdout.splitlines() if line[:1].isalpha()}
    assert {"failed", "gone", "new"} <= verdicts
    suite = junit(xml)
    failed = case_named(suite, f"{NAME_TFLITE} [litert")
    failure = failed.find("failure")
    assert failure is not None and failure.get("type") == "failed" and "op_version" in failure.get("message", "")
    gone = case_named(suite, NAME_ONNX).find("skipped")
    new = case_named(suite, "tflite_runtime").find("skipped")
    assert gone is not None and gone.get("type") == "gone" and new is not None and new.get("type") == "new"
    assert "\n| failed" in md.read_text() and "\n| gone" in md.read_text() and "\n| new" in md.read_text()


def test_an_unreachable_device_is_a_device_failure_not_a_regression(db: Path, tmp_path: Path) -> None:
    write_run(db, repeats(device="board"), seed=1)
    write_run(db, repeats(device="board:unreached", status="failed", transient=True, runtime="auto"), seed=2)
    xml = tmp_path / "check.xml"
    proc = check(db, "--junit", xml)
    assert proc.returncode == 1, describe(proc)
    assert proc.stdout.splitlines()[2].startswith("failed") and "transient" in proc.stdout
    error = case_named(junit(xml), NAME_TFLITE).find("error")
    assert error is not None and error.get("type") == "device_failure" and "ConnectError" in error.get("message", "")


def test_aggregate_only_sessions(db: Path) -> None:
    # benchmark_model gives one mean per session: 3 sessions per side cannot reach alpha = 0.01, and says so.
    write_run(db, repeats(3, runtime="benchmark_model", aggregate_only=True), seed=1)
    write_run(db, repeats(3, runtime="benchmark_model", aggregate_only=True, median_us=2000.0), seed=2)
    proc = check(db, "--json")
    assert proc.returncode == 0, describe(proc)
    [result] = json.loads(proc.stdout)["results"]
    assert result["aggregate_only"] and result["verdict"] == "unchanged" and result["change_pct"] > 25
    assert any("underpowered" in note and "--repeats 5" in note for note in result["notes"])
    # With 5 sessions per side the same +33% is caught.
    write_run(db, repeats(5, runtime="benchmark_model", aggregate_only=True), seed=3)
    write_run(db, repeats(5, runtime="benchmark_model", aggregate_only=True, median_us=2000.0), seed=4)
    proc = check(db)
    assert proc.returncode == 3, describe(proc)
    assert "regression (session means)" in proc.stdout


def test_energy_and_drift_have_their_own_thresholds(db: Path) -> None:
    write_run(db, repeats(5, energy_mj=1.0, top1=0.95), seed=1)
    write_run(db, repeats(5, energy_mj=1.3, top1=0.90), seed=2)
    proc = check(db, "--json")
    assert proc.returncode == 3, describe(proc)
    results = {r["metric"]: r for r in json.loads(proc.stdout)["results"]}
    assert results["latency"]["verdict"] == "unchanged"
    assert results["energy"]["verdict"] == "regression" and results["energy"]["unit"] == "mJ"
    assert results["drift"]["verdict"] == "regression" and results["drift"]["change_abs"] == pytest.approx(-5.0)
    # Thresholds from flags: 50% energy and 10 points of drift make both acceptable.
    relaxed = check(db, "--energy-threshold-pct", "50", "--drift-top1-points", "10")
    assert relaxed.returncode == 0, describe(relaxed)


def test_energy_and_drift_refused_on_their_own_context(db: Path) -> None:
    write_run(db, repeats(5, energy_mj=1.0, top1=0.95), seed=1)
    write_run(db, repeats(5, energy_mj=2.0, power_source="android-battery", top1=0.80,
                          evalset={**EVALSET, "digest": "f" * 64}), seed=2)
    proc = check(db, "--json")
    assert proc.returncode == 0, describe(proc)
    results = {r["metric"]: r for r in json.loads(proc.stdout)["results"]}
    assert (results["energy"]["verdict"], results["energy"]["refused_field"]) == ("refused", "power.source")
    assert (results["drift"]["verdict"], results["drift"]["refused_field"]) == ("refused", "drift.evalset")
    assert results["latency"]["verdict"] == "unchanged"


def test_thresholds_from_the_sweep_files_check_table(db: Path, tmp_path: Path) -> None:
    write_run(db, repeats(), seed=1)
    write_run(db, repeats(median_us=1800.0), seed=2)
    sweep = tmp_path / "nightly.toml"
    sweep.write_text("[variants]\nfamily = ['mobilenet_v2']\n\n[check]\nlatency_threshold_pct = 50\n")
    relaxed = check(db, "--sweep", sweep)
    assert relaxed.returncode == 0, describe(relaxed)
    assert "within the 50% threshold" in relaxed.stdout and "latency > 50%" in relaxed.stdout
    # A flag overrides the file.
    assert check(db, "--sweep", sweep, "--latency-threshold-pct", "5").returncode == 3
    sweep.write_text("[check]\nlatency_treshold_pct = 50\n")
    broken = check(db, "--sweep", sweep)
    assert broken.returncode == 2, describe(broken)
    assert f"{sweep}:2: check.latency_treshold_pct: unknown key" in broken.stderr
    assert "did you mean 'latency_threshold_pct'?" in broken.stderr


# --- baselines and run selection --------------------------------------------------------------------------------


def test_previous_is_the_last_finished_run_of_the_same_sweep_on_the_same_devices(db: Path) -> None:
    first = write_run(db, repeats(), seed=1)
    write_run(db, repeats(median_us=900.0), sweep="other", seed=2)  # another sweep
    write_run(db, repeats(median_us=900.0), status="interrupted", seed=3)  # not finished
    write_run(db, repeats(median_us=900.0, device="elsewhere"), seed=4)  # other devices
    cand = write_run(db, repeats(), seed=5)
    with ResultStore(db) as store:
        comparison = compare_runs(store, first, cand)
    assert comparison.exit_code == 0
    proc = check(db, "--baseline", "previous", "--candidate", cand)
    assert proc.returncode == 0, describe(proc)
    assert f"previous run of sweep 'nightly' ({first})" in proc.stdout
    # The first run has nothing before it.
    lonely = check(db, "--candidate", first)
    assert lonely.returncode == 2, describe(lonely)
    assert "no previous finished run of sweep 'nightly'" in lonely.stderr and "baseline set" in lonely.stderr


def test_baseline_set_list_move_delete_and_use(db: Path) -> None:
    first = write_run(db, repeats(), seed=1)
    second = write_run(db, repeats(median_us=1800.0), seed=2)
    third = write_run(db, repeats(median_us=1800.0), seed=3)
    created = run_cli("baseline", "set", "release-1.0", first, "--db", db)
    assert created.returncode == 0, describe(created)
    assert f"baseline 'release-1.0' set to run {first}" in created.stdout
    listed = run_cli("baseline", "list", "--db", db)
    assert listed.returncode == 0 and "release-1.0" in listed.stdout and first in listed.stdout, describe(listed)

    against_release = check(db, "--baseline", "release-1.0")
    assert against_release.returncode == 3, describe(against_release)  # third vs first: +20%
    assert f"baseline 'release-1.0' ({first})" in against_release.stdout
    assert check(db, "--baseline", "previous").returncode == 0  # third vs second

    moved = run_cli("baseline", "set", "release-1.0", "latest", "--db", db)
    assert moved.returncode == 0 and f"moved from run {first} to run {third}" in moved.stdout, describe(moved)
    same = check(db, "--baseline", "release-1.0")
    assert same.returncode == 2 and "same run" in same.stderr, describe(same)
    assert check(db, "--baseline", "release-1.0", "--candidate", second).returncode == 0
    as_json = json.loads(run_cli("baseline", "list", "--json", "--db", db).stdout)
    assert [(b["name"], b["run_id"]) for b in as_json] == [("release-1.0", third)]

    deleted = run_cli("baseline", "delete", "release-1.0", "--db", db)
    assert deleted.returncode == 0, describe(deleted)
    gone = check(db, "--baseline", "release-1.0")
    assert gone.returncode == 2, describe(gone)
    assert "no baseline or run named 'release-1.0'" in gone.stderr and "baseline set" in gone.stderr


@pytest.mark.parametrize("name", ["previous", "latest", "r20261121-070740-15de", "has space", ""])
def test_baseline_names_that_would_be_ambiguous_are_refused(db: Path, name: str) -> None:
    run_id = write_run(db, repeats(), seed=1)
    proc = run_cli("baseline", "set", name, run_id, "--db", db)
    assert proc.returncode == 2, describe(proc)
    assert "cannot be a baseline name" in proc.stderr


def test_usage_errors_exit_2(db: Path, tmp_path: Path) -> None:
    missing = check(tmp_path / "nope.db")
    assert missing.returncode == 2 and "no results database" in missing.stderr, describe(missing)
    write_run(db, repeats(), seed=1)
    unknown_run = check(db, "--candidate", "r20990101-000000-abcd")
    assert unknown_run.returncode == 2 and "r20990101-000000-abcd" in unknown_run.stderr, describe(unknown_run)
    unknown_set = run_cli("baseline", "set", "nightly", "r20990101-000000-abcd", "--db", db)
    assert unknown_set.returncode == 2, describe(unknown_set)
    bad_alpha = check(db, "--alpha", "2")
    assert bad_alpha.returncode == 2 and "alpha: must be < 1" in bad_alpha.stderr, describe(bad_alpha)


# --- real runs on this machine ----------------------------------------------------------------------------------

QUICK = ("--runs", "50", "--min-s", "0.5", "--max-s", "30", "--warmup-runs", "5", "--warmup-min-s", "0.2")


@pytest.fixture(scope="module")
def real_cache(built_grid: BuiltGrid, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_grid.copy(tmp_path_factory.mktemp("check-cache") / "cache")


@pytest.mark.slow
def test_repeated_real_runs_of_one_sweep_are_not_flagged(real_cache: Path, tmp_path: Path) -> None:
    """Three runs of the same sweep on this machine, each checked against the one before: nothing is flagged,
    though the medians of back-to-back runs here differ by 5-35% (the sessions' spread keeps those quiet).

    One exception is allowed, and must say so: a latency verdict where a side ran on a busy host, flagged
    ``host_busy`` (other work kept over half a CPU busy during the timed phase) or ``cpu_contention`` (its threads
    waited for a CPU). On this shared 2-core VM other suites keep the load at 2-19; once three of a run's five ONNX
    sessions came out 1.7x slower than every session of the run before, with under 2% run-queue wait -- the other
    vCPU was busy -- so the numbers really moved and only those flags tell it apart from a regression. On a quiet
    runner nothing is flagged busy and the assertion is strict."""
    db = tmp_path / "results.db"
    sweep = (*GRID_FLAGS, "--quant", "fp32", "--format", "tflite,onnx", "--device", "local", "--repeats", "5",
             "--eval-images", "16", *QUICK)
    checked_pairs = 0
    for attempt in range(3):
        ran = run_cli("run", *sweep, "--db", db, "-q", cache_dir=real_cache, timeout=600)
        assert ran.returncode == 0, describe(ran)
        if attempt == 0:
            continue
        checked = check(db, "--json")
        results = json.loads(checked.stdout)["results"]
        assert {(r["key"]["variant"], r["metric"]) for r in results} == {
            (name, metric) for name in (NAME_TFLITE, NAME_ONNX) for metric in ("latency", "drift")}
        flagged = [r for r in results if r["verdict"] != "unchanged"]
        busy = {"host_busy", "cpu_contention"}
        assert all(r["metric"] == "latency" and busy & {*r["baseline_flags"], *r["candidate_flags"]}
                   for r in flagged), checked.stdout
        assert checked.returncode == (3 if any(r["verdict"] == "regression" for r in flagged) else 0), \
            describe(checked)
        checked_pairs += 1
    assert checked_pairs == 2


def _keras_tflite(resolution: int, path: Path) -> None:
    """A MobileNetV2 a0.35 TFLite file at ``resolution`` with untrained weights (latency does not care)."""
    import tensorflow as tf

    model = tf.keras.applications.MobileNetV2(input_shape=(resolution, resolution, 3), alpha=0.35, weights=None)
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    require_module("tensorflow")
    directory = tmp_path_factory.mktemp("byo")
    files = {resolution: directory / f"mobilenet_v2_r{resolution}.tflite" for resolution in (96, 160)}
    for resolution, path in files.items():
        _keras_tflite(resolution, path)
    return files


@pytest.mark.slow
def test_a_slower_model_under_the_same_name_is_caught(model_files: dict[int, Path], tmp_path: Path) -> None:
    """The injected slowdown: a user's model file replaced by a heavier one (the same network at 160 px instead of
    96 px, ~2.8x the MACs) under the same name, so the variant, runtime, device and every checked context field
    stay the same -- what a regression check exists to catch, e.g. a retrained or re-exported model. Swapping
    back is an improvement, reported, exit 0."""
    db, cache = tmp_path / "results.db", tmp_path / "cache"
    model = tmp_path / "model.tflite"
    sweep = tmp_path / "byo.toml"
    sweep.write_text("name = 'byo'\n[variants]\nfamily = []\nmodels = ['model.tflite']\n"
                     "[run]\ndevices = ['local']\nrepeats = 3\nruns = 50\nmin_s = 0.5\nwarmup_min_s = 0.2\n")
    ids = []
    for resolution in (96, 160, 96):
        shutil.copyfile(model_files[resolution], model)
        ran = run_cli("run", "--sweep", sweep, "--db", db, "-q", "--json", cache_dir=cache, timeout=600)
        assert ran.returncode == 0, describe(ran)
        ids.append(json.loads(ran.stdout)["run_id"])
    xml = tmp_path / "check.xml"
    slower = check(db, "--baseline", "previous", "--candidate", ids[1], "--junit", xml, "--sweep", sweep)
    assert slower.returncode == 3, describe(slower)
    [row] = [line for line in slower.stdout.splitlines() if line.startswith("regression")]
    assert "model.tflite" in row and "artifact changed" in row
    failure = case_named(junit(xml), "model.tflite").find("failure")
    assert failure is not None and failure.get("type") == "regression"
    faster = check(db, "--baseline", ids[1], "--json")
    assert faster.returncode == 0, describe(faster)
    [result] = json.loads(faster.stdout)["results"]
    assert result["verdict"] == "improvement" and result["change_pct"] < -30
