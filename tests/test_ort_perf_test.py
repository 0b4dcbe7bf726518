"""onnxruntime_perf_test runner: argv, parsing real outputs (golden files with their source links), the result file,
and the stand-in peer (tests/peers/ort_perf_test_standin.py) run for real, directly and through the ADB emulator."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from farmbench.errors import RunnerError, UsageError
from farmbench.results.stats import WARN_AGGREGATE_ONLY
from farmbench.runners.ort_perf_test import (
    OrtPerfTestConfig,
    OrtPerfTestError,
    OrtPerfTestRun,
    opt_level_flag,
    ort_perf_test_argv,
    parse_output,
    parse_result_file,
    parse_run,
    provider_flag,
)
from farmbench.transports.quoting import join
from tests.conftest import require_module
from tests.peers.adb_emulator import AdbEmulator, install_ort_perf_test

GOLDEN = Path(__file__).parent / "data" / "onnxruntime_perf_test"
STANDIN = Path(__file__).resolve().parent / "peers" / "ort_perf_test_standin.py"


def golden(name: str) -> str:
    text = (GOLDEN / name).read_text(encoding="utf-8")
    first, _, rest = text.partition("\n")
    assert first.startswith("# source: https://"), f"{name} must start with its source link"
    return rest


def test_every_golden_file_names_its_source() -> None:
    files = sorted(GOLDEN.glob("*.txt"))
    assert len(files) >= 5
    for path in files:
        assert path.read_text(encoding="utf-8").startswith("# source: https://"), path.name


# ------------------------------------------------------------------------------------------------- golden outputs


def test_current_format_on_an_android_phone_with_statistics() -> None:
    r = parse_output(golden("android_sme2_stats_no_result_file.txt"), exit_code=0)
    assert r.errors == () and r.ok
    assert r.intra_op_threads == 1
    assert r.session_creation_us == pytest.approx(217932)
    assert r.first_inference_us == pytest.approx(196_000)  # whole milliseconds in the tool
    assert r.total_inference_us == pytest.approx(494810)
    assert r.requests == 5
    assert r.average_us == pytest.approx(98961.997)  # "Average inference time cost total: 98.961997 ms"
    assert r.total_run_time_us == pytest.approx(494854)
    assert r.inferences_per_s == pytest.approx(10.104)
    assert (r.avg_cpu_percent, r.peak_working_set_bytes) == (11, 271122432)
    assert r.min_us == pytest.approx(95820.4) and r.max_us == pytest.approx(101519)
    assert r.p50_us == pytest.approx(99508.6)
    assert r.p90_us == r.p95_us == r.p99_us == r.p999_us == pytest.approx(101519)
    assert r.samples_us == () and r.result_file_error is None
    stats = r.to_latency_stats()  # no result file: the printed aggregates
    assert stats.n == 5 and stats.mean_us == pytest.approx(98961.997)
    assert stats.min_us == pytest.approx(95820.4) and stats.p50_us == pytest.approx(99508.6)
    assert stats.p90_us == pytest.approx(101519) and stats.std_us is None
    assert WARN_AGGREGATE_ONLY in stats.warnings


def test_2020_format_with_a_result_file_and_an_execution_provider() -> None:
    r = parse_output(golden("acl_sdcard_result_file.txt"))
    assert r.ok and r.first_inference_us is None and r.inferences_per_s is None
    assert r.session_creation_us == pytest.approx(127918)
    assert r.requests == 10 and r.average_us == pytest.approx(144871)
    assert r.total_inference_us == pytest.approx(1448710) and r.total_run_time_us == pytest.approx(1449160)
    assert (r.avg_cpu_percent, r.peak_working_set_bytes) == (68, 158171136)
    # Without -s there are no percentiles, and without the result file's rows no samples: nothing to summarise.
    with pytest.raises(OrtPerfTestError, match="Min Latency") as caught:
        r.to_latency_stats()
    assert caught.value.kind == "bad_output"


def test_early_2020_format_without_space_after_the_colon_in_duration_mode() -> None:
    r = parse_output(golden("arm_linux_duration_no_space.txt"))
    assert r.session_creation_us == pytest.approx(133189)
    assert r.requests == 7160 and r.average_us == pytest.approx(83805.9)
    assert r.total_inference_us == pytest.approx(600_051_000) and r.total_run_time_us == pytest.approx(600_102_000)
    assert r.peak_working_set_bytes is None and r.errors == ()


def test_log_lines_and_the_thread_line_do_not_disturb_the_summary() -> None:
    r = parse_output(golden("windows_log_line_before_summary.txt"))
    assert r.intra_op_threads == 0 and r.errors == ()
    assert r.session_creation_us == pytest.approx(1_841_490)
    assert r.requests == 1 and r.average_us == pytest.approx(734606)


def test_missing_test_data_is_classified_before_its_run_failed_consequence() -> None:
    r = parse_output(golden("no_test_input_data.txt"), exit_code=255)
    assert [issue.kind for issue in r.errors] == ["no_test_data", "run_failed"]
    assert r.error is not None and r.error.kind == "no_test_data" and "data_0" in r.error.message
    assert r.error.hint is not None and "-I" in r.error.hint
    assert not r.ok
    with pytest.raises(OrtPerfTestError) as caught:
        r.to_latency_stats()
    assert caught.value.kind == "no_test_data" and isinstance(caught.value, RunnerError)


def test_the_1_18_test_case_dir_bug_is_classified() -> None:
    r = parse_output(golden("test_case_dir_missing_1_18.txt"), exit_code=255)
    assert r.error is not None and r.error.kind == "test_case_dir"
    assert r.error.hint is not None and "21267" in r.error.hint


# ------------------------------------------------------------------------------ failures (the tool's message forms)
# These lines follow the messages in the tool's source (main.cc, command_args_parser.cc, ort_test_session.cc) and
# ONNX Runtime's; the stand-in tests below produce them from real runs too.


@pytest.mark.parametrize(("text", "kind", "fragment"), [
    (("Load model from /d/m.onnx failed:/onnxruntime_src/onnxruntime/core/graph/model.cc:180 onnxruntime::Model::"
      "Model(...) Unsupported model IR version: 10, max supported IR version: 9\n"), "ir_version", "IR version 10"),
    ("Could not find an implementation for ConvInteger(10) node with name '/conv'\n", "unsupported_op",
     "ConvInteger (opset 10)"),
    ("/src/ort_test_session.cc:312 OnnxRuntimeTestSession NNAPI is not supported in this build\n\n",
     "provider_unavailable", "NNAPI"),
    ("Load model from /d/m.onnx failed:Protobuf parsing failed.\n", "model_load", "Protobuf parsing failed"),
    ("ERROR: Unknown command line flag 'W'\n", "bad_flag", "-W"),
    ("onnxruntime_perf_test: invalid option -- 'W'\nperf_test [options...] model_path [result_file]\n", "bad_flag",
     "-W"),
    ("onnxruntime_perf_test: unknown option -- W\nperf_test [options...] model_path [result_file]\n", "bad_flag",
     "-W"),
    ("perf_test [options...] model_path [result_file]\nOptions:\n", "bad_flag", "usage"),
    ("Run failed:PerformanceRunner::RunOneIteration caught exception: boom\n", "run_failed", "boom"),
])
def test_failures_are_classified(text: str, kind: str, fragment: str) -> None:
    r = parse_output(text, exit_code=255)
    assert r.error is not None and r.error.kind == kind, r.to_json()
    assert fragment in r.error.message
    assert r.error.hint


def test_an_unexplained_exit_is_a_failure_and_a_signal_a_crash() -> None:
    r = parse_output("Session creation time cost: 0.1 s\n", exit_code=1)
    assert r.error is not None and r.error.kind == "exit_status" and "status 1" in r.error.message
    r = parse_output("Session creation time cost: 0.1 s\n", exit_code=139)
    assert r.error is not None and r.error.kind == "crashed" and "signal 11" in r.error.message
    r = parse_output("", exit_code=127)
    assert r.error is not None and r.error.kind == "exit_status" and "127" in (r.error.hint or "")


@pytest.mark.parametrize("text", ["", "hello\nworld\n", "Segmentation fault\n"])
def test_unrecognised_output_with_success_raises_naming_what_is_missing(text: str) -> None:
    with pytest.raises(OrtPerfTestError, match="Total inference requests") as caught:
        parse_output(text, exit_code=0)
    assert caught.value.kind == "bad_output"


# ------------------------------------------------------------------------------------------------------ result file
# Rows in the format of PerformanceResult::DumpToFile (performance_runner.cc): model,seconds,peak,cpu,index.


def test_result_file_rows_are_raw_samples_in_microseconds() -> None:
    text = ("test_mnist,0.0123456,1048576,12,0\ntest_mnist,0.0101,1048576,12,1\ntest_mnist,9.5e-05,1048576,12,2\n"
            "\nMin Latency: 9.5e-05 s\nMax Latency: 0.0123456 s\nP50 Latency: 0.0101 s\nP999 Latency: 0.0123456 s\n")
    parsed = parse_result_file(text)
    assert parsed.samples_us == pytest.approx((12345.6, 10100.0, 95.0))
    assert [row.run_index for row in parsed.rows] == [0, 1, 2]
    assert {row.model_name for row in parsed.rows} == {"test_mnist"}
    assert parsed.rows[0].peak_working_set_bytes == 1048576 and parsed.rows[0].avg_cpu_percent == 12
    assert parsed.rows[0].submission_us is None
    assert parsed.percentiles_us["min"] == pytest.approx(95.0) and parsed.percentiles_us["p50"] == 10100.0


def test_result_file_six_column_format_takes_the_total_time() -> None:
    # microsoft/onnxruntime#26313: model,submission_s,total_s,peak,cpu,index.
    parsed = parse_result_file("m,0.001,0.0025,2048,50,0\nm,0.002,0.003,2048,50,1\n")
    assert parsed.samples_us == pytest.approx((2500.0, 3000.0))
    assert parsed.rows[1].submission_us == pytest.approx(2000.0)


def test_result_file_model_name_with_a_comma_and_appended_sessions() -> None:
    text = "a,b,0.5,1,1,0\na,b,0.6,1,1,1\na,b,0.002,1,1,0\na,b,0.003,1,1,1\na,b,0.004,1,1,2\n"
    parsed = parse_result_file(text)
    assert parsed.samples_us == pytest.approx((2000.0, 3000.0, 4000.0))  # the last session only
    assert parsed.rows[0].model_name == "a,b"


def test_result_file_garbage_is_an_error_naming_the_line() -> None:
    with pytest.raises(OrtPerfTestError, match="line 2") as caught:
        parse_result_file("m,0.1,1,1,0\nnot a row\n")
    assert caught.value.kind == "bad_output"


def test_parse_run_joins_output_and_result_file() -> None:
    output = golden("android_sme2_stats_no_result_file.txt")
    rows = "".join(f"resnet50v2,{s},271122432,11,{i}\n"
                   for i, s in enumerate(("0.0995086", "0.0958204", "0.101519", "0.0990000", "0.0980000")))
    r = parse_run(OrtPerfTestRun(output=output, exit_code=0, result_file=rows))
    assert r.samples_us == pytest.approx((99508.6, 95820.4, 101519.0, 99000.0, 98000.0))
    stats = r.to_latency_stats()
    assert stats.n == 5 and stats.ci95_low_us is not None and WARN_AGGREGATE_ONLY not in stats.warnings
    assert stats.min_us == pytest.approx(95820.4) and stats.p50_us == pytest.approx(99000.0)
    # The file must belong to this run: a different row count is refused.
    with pytest.raises(OrtPerfTestError, match="5 timed runs but its result file holds 2 rows"):
        parse_run(OrtPerfTestRun(output=output, exit_code=0, result_file="m,0.1,1,1,0\nm,0.1,1,1,1\n"))
    # A failed run's leftovers are not read.
    failed = parse_run(OrtPerfTestRun(output=golden("no_test_input_data.txt"), exit_code=255, result_file=rows))
    assert failed.samples_us == () and failed.error is not None


# ---------------------------------------------------------------------------------------------------- command line


def test_argv_minimal_config_passes_only_the_model() -> None:
    assert ort_perf_test_argv("/bin/ort", OrtPerfTestConfig(model="/d/m.onnx"), taskset_mask=None) == [
        "/bin/ort", "/d/m.onnx"]


def test_argv_full_config_with_taskset() -> None:
    config = OrtPerfTestConfig(model="/d/m.onnx", result_file="/d/r.csv", repeated_times=50, intra_op_threads=2,
                               execution_provider="xnnpack", optimization_level=99, generate_inputs=True,
                               show_statistics=True, profile_file="/d/prof")
    assert ort_perf_test_argv("/d/onnxruntime_perf_test", config, taskset_mask="f0") == [
        "taskset", "f0", "/d/onnxruntime_perf_test", "-m", "times", "-r", "50", "-x", "2", "-e", "xnnpack",
        "-o", "99", "-I", "-s", "-p", "/d/prof", "/d/m.onnx", "/d/r.csv"]
    duration = OrtPerfTestConfig(model="/d/m.onnx", duration_s=3)
    assert ort_perf_test_argv("ort", duration, taskset_mask=None) == ["ort", "-m", "duration", "-t", "3", "/d/m.onnx"]


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"model": ""}, "needs a model"),
    ({"model": "-x.onnx"}, "does not start with '-'"),
    ({"model": "/m.onnx", "result_file": "-r"}, "does not start with '-'"),
    ({"model": "/m.onnx", "repeated_times": 5, "duration_s": 1}, "not both"),
    ({"model": "/m.onnx", "repeated_times": 0}, "at least 1"),
    ({"model": "/m.onnx", "duration_s": 1.5}, "whole number"),
    ({"model": "/m.onnx", "intra_op_threads": -1}, "must not be negative"),
    ({"model": "/m.onnx", "execution_provider": "NnapiExecutionProvider"}, "no execution provider"),
    ({"model": "/m.onnx", "optimization_level": 4}, "optimization_level"),
])
def test_config_rejects_what_the_tool_would_misread(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        OrtPerfTestConfig(**kwargs)  # type: ignore[arg-type]


def test_provider_and_optimisation_level_names() -> None:
    assert provider_flag("CPUExecutionProvider") == "cpu" and provider_flag("NnapiExecutionProvider") == "nnapi"
    assert provider_flag("XnnpackExecutionProvider") == "xnnpack" and provider_flag("qnn") == "qnn"
    with pytest.raises(UsageError, match="no execution provider 'GPU'"):
        provider_flag("GPU")
    assert [opt_level_flag(n) for n in ("disable", "basic", "extended", "all")] == [0, 1, 2, 99]
    with pytest.raises(UsageError, match="optimisation level"):
        opt_level_flag("max")


# ------------------------------------------------------------------------------------------------------ stand-in


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN (Conv + Relu + GlobalAveragePool), batch dimension free, in a directory of its own (the tool names
    results after the model's directory)."""
    require_module("onnx")
    require_module("onnxruntime")
    import onnx
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], [0.01 * (i % 7) for i in range(108)])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weights])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path_factory.mktemp("ort-standin") / "tinycnn" / "model.onnx"
    path.parent.mkdir()
    onnx.save(proto, str(path))
    return path


def run_standin(*args: str | Path, env: dict[str, str] | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(STANDIN), *map(str, args)], check=False, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_standin_output_and_result_file_parse_with_farmbench(model: Path, tmp_path: Path) -> None:
    result_file = tmp_path / "r.csv"
    config = OrtPerfTestConfig(model=str(model), result_file=str(result_file), repeated_times=7, intra_op_threads=1,
                               execution_provider="cpu", optimization_level=99, generate_inputs=True,
                               show_statistics=True)
    argv = ort_perf_test_argv(str(STANDIN), config, taskset_mask=None)
    proc = subprocess.run([sys.executable, *argv], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("Setting intra_op_num_threads to 1\nSession creation time cost: ")
    assert "Average inference time cost total: " in proc.stdout and "Runs:" not in proc.stdout
    file_text = result_file.read_text()
    rows = file_text.split("\n\n")[0].splitlines()
    assert len(rows) == 7 and all(row.startswith("tinycnn,") for row in rows)
    assert "P999 Latency: " in file_text  # -s with a result file: the statistics go there too
    r = parse_run(OrtPerfTestRun(output=proc.stdout + proc.stderr, exit_code=0, result_file=file_text))
    assert r.ok and r.requests == 7 and r.intra_op_threads == 1 and len(r.samples_us) == 7
    assert r.min_us == pytest.approx(min(r.samples_us), rel=1e-5)
    assert r.max_us == pytest.approx(max(r.samples_us), rel=1e-5)
    assert r.average_us == pytest.approx(sum(r.samples_us) / 7, rel=1e-4)
    assert r.session_creation_us is not None and r.first_inference_us is not None
    assert r.peak_working_set_bytes is not None and r.peak_working_set_bytes > 10 * 2**20
    stats = r.to_latency_stats()
    assert stats.n == 7 and WARN_AGGREGATE_ONLY not in stats.warnings


def test_standin_without_result_file_prints_runs_and_statistics(model: Path) -> None:
    proc = run_standin("-r", "4", "-I", model)
    assert proc.returncode == 0, proc.stderr
    assert "\nRuns:4\nMin Latency: " in proc.stdout
    r = parse_output(proc.stdout, exit_code=proc.returncode)
    assert r.ok and r.requests == 4 and r.p999_us is not None


def test_standin_appends_to_its_result_file(model: Path, tmp_path: Path) -> None:
    result_file = tmp_path / "r.csv"
    for _ in range(2):
        assert run_standin("-r", "3", "-I", model, result_file).returncode == 0
    assert len(result_file.read_text().splitlines()) == 6
    assert len(parse_result_file(result_file.read_text()).rows) == 3


@pytest.mark.parametrize(("args", "env", "rc", "kind"), [
    (["-r", "2", "-W", "1", "-I"], {}, 1, "bad_flag"),
    (["-r", "0", "-I"], {}, 255, "bad_flag"),
    (["-r", "2", "-e", "foo", "-I"], {}, 255, "bad_flag"),
    (["-r", "2", "-e", "nnapi", "-I"], {}, 255, "provider_unavailable"),
    (["-r", "2"], {}, 255, "no_test_data"),
    (["-r", "2", "-I"], {"FARMBENCH_ORT_STANDIN_MAX_IR_VERSION": "7"}, 255, "ir_version"),
])
def test_standin_fails_like_the_tool(model: Path, args: list[str], env: dict[str, str], rc: int, kind: str) -> None:
    proc = run_standin(*args, model, env=env)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    r = parse_output(proc.stdout + proc.stderr, exit_code=proc.returncode)
    assert r.error is not None and r.error.kind == kind, r.to_json()


def test_standin_model_that_does_not_load(tmp_path: Path) -> None:
    require_module("onnxruntime")
    broken = tmp_path / "broken" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not a protobuf at all")
    proc = run_standin("-r", "1", "-I", broken)
    assert proc.returncode == 255
    assert proc.stderr.startswith(f"Load model from {broken} failed:")  # no Python "[ONNXRuntimeError]" prefix
    r = parse_output(proc.stdout + proc.stderr, exit_code=255)
    assert r.error is not None and r.error.kind == "model_load"


def test_standin_sleep_fault_delays_the_run(model: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run_standin("-r", "1", "-I", model, env={"FARMBENCH_ORT_STANDIN_SLEEP_S": "30"}, timeout=1.5)


def test_standin_through_the_adb_emulator(adb_emulator: Callable[..., AdbEmulator], model: Path,
                                          tmp_path: Path) -> None:
    require_module("adb_shell")
    from adb_shell.adb_device import AdbDeviceTcp

    emulator = adb_emulator(auth="none")
    installed = install_ort_perf_test(emulator.sandbox)
    assert installed == emulator.sandbox / "system/bin/onnxruntime_perf_test"
    device = AdbDeviceTcp("127.0.0.1", emulator.port, default_transport_timeout_s=10.0)
    device.connect(auth_timeout_s=3.0)
    try:
        device.shell("mkdir -p /data/local/tmp/m", read_timeout_s=10)
        device.push(str(model), "/data/local/tmp/m/model.onnx")
        config = OrtPerfTestConfig(model="/data/local/tmp/m/model.onnx", result_file="/data/local/tmp/m/r.csv",
                                   repeated_times=5, intra_op_threads=1, generate_inputs=True, show_statistics=True)
        argv = ort_perf_test_argv("onnxruntime_perf_test", config, taskset_mask="1")  # on the phone's PATH
        output = device.shell(join(argv) + " 2>&1", read_timeout_s=60)
        result_file = device.shell("cat /data/local/tmp/m/r.csv", read_timeout_s=10)
        r = parse_run(OrtPerfTestRun(output=output, exit_code=0, result_file=result_file))
        assert r.ok and r.requests == 5 and len(r.samples_us) == 5, output
        assert (emulator.sandbox / "data/local/tmp/m/r.csv").is_file()
    finally:
        device.close()
    assert emulator.violations == []
