"""benchmark_model runner: argv, CPU masks, and parsing real outputs (golden files with their source links)."""

from __future__ import annotations

from pathlib import Path

import pytest

from farmbench.errors import RunnerError, UsageError
from farmbench.results.stats import WARN_AGGREGATE_ONLY
from farmbench.runners.benchmark_model import (
    BenchmarkModelConfig,
    BenchmarkModelError,
    benchmark_model_argv,
    cpu_mask,
    parse_output,
)

GOLDEN = Path(__file__).parent / "data" / "benchmark_model"


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


def test_tf_format_gpu_fully_delegated() -> None:
    r = parse_output(golden("tf_gpu_full_delegate.txt"))
    # The timed line is the last count= line, not the warm-up one (count=4).
    assert r.count == 50
    assert (r.first_us, r.curr_us, r.min_us, r.max_us, r.avg_us, r.std_us) == (
        119212, 118055, 113737, 124776, 119375, 1948)
    assert r.p5_us is None and r.median_us is None and r.p95_us is None
    assert r.warmup_count == 4
    assert (r.init_us, r.first_inference_us, r.warmup_avg_us, r.inference_avg_us) == (
        870557, 130565, 122373, 119375)
    assert r.memory_init_mb is None and r.peak_memory_mb is None
    assert r.delegate is not None and r.delegate.to_json() == {"name": "GPU", "coverage": "full", "kernels": None}
    assert r.errors == () and r.ok
    stats = r.to_latency_stats()
    assert stats.n == 50 and stats.mean_us == 119375 and stats.std_us == 1948
    assert stats.min_us == 113737 and stats.max_us == 124776 and stats.p50_us is None
    assert WARN_AGGREGATE_ONLY in stats.warnings


def test_tf_format_cpu_fractional_values_and_no_delegate() -> None:
    r = parse_output(golden("tf_cpu_no_delegate.txt"))
    assert r.count == 14192
    assert (r.first_us, r.curr_us, r.min_us, r.max_us, r.avg_us, r.std_us) == (93, 70, 68, 249, 69.691, 5)
    assert r.warmup_count == 7028
    assert (r.init_us, r.first_inference_us, r.warmup_avg_us, r.inference_avg_us) == (1304, 2071, 70.3736, 69.691)
    assert r.delegates == ()
    assert r.to_latency_stats().mean_us == pytest.approx(69.691)


def test_tf_format_without_summary_line_takes_last_count_line() -> None:
    # The issue's paste stops before the "Inference timings" line: the statistics still come from the count= lines.
    r = parse_output(golden("tf_external_full_delegate_no_summary.txt"))
    assert r.count == 120
    assert (r.min_us, r.max_us, r.avg_us, r.std_us) == (24979, 46407, 33329.7, 2946)
    assert r.warmup_count == 23
    assert r.warmup_avg_us == 22013.8  # from the warm-up count= line
    assert r.init_us is None and r.inference_avg_us is None
    assert r.delegate is not None and (r.delegate.name, r.delegate.coverage) == ("EXTERNAL", "full")
    assert r.to_latency_stats().n == 120


def test_litert_format_with_percentiles_partial_delegation_and_memory() -> None:
    r = parse_output(golden("litert_xnnpack_partial_percentiles.txt"))
    assert r.count == 50
    assert (r.first_us, r.curr_us, r.min_us, r.max_us, r.avg_us, r.std_us) == (
        900416, 898333, 898007, 906121, 899641, 1549)
    assert (r.p5_us, r.median_us, r.p95_us) == (898333, 899281, 904305)
    assert r.warmup_count == 1
    assert (r.init_us, r.first_inference_us, r.warmup_avg_us, r.inference_avg_us) == (
        614333, 905463, 905463, 899641)
    assert (r.memory_init_mb, r.memory_overall_mb) == (146.363, 150.141)
    assert r.delegate is not None and r.delegate.to_json() == {"name": "XNNPACK", "coverage": "partial", "kernels": 1}
    stats = r.to_latency_stats()
    assert (stats.p5_us, stats.p50_us, stats.p95_us) == (898333, 899281, 904305)
    assert r.to_json()["delegate"] == {"name": "XNNPACK", "coverage": "partial", "kernels": 1}


def test_old_average_inference_timings_line() -> None:
    r = parse_output(golden("old_average_inference_timings.txt"))
    assert r.count == 10
    assert (r.first_us, r.curr_us, r.min_us, r.max_us, r.avg_us, r.std_us) == (
        133816, 133763, 133474, 134269, 133690, 230)
    assert r.warmup_count == 4
    assert (r.warmup_avg_us, r.init_us, r.inference_avg_us) == (146548, 12516, 133690)
    assert r.first_inference_us is None
    assert r.to_latency_stats().n == 10


def test_op_version_failure_is_classified() -> None:
    r = parse_output(golden("op_version_mul.txt"))
    assert [e.kind for e in r.errors] == ["op_version", "init_failed", "benchmark_failed"]
    issue = r.error
    assert issue is not None and issue.kind == "op_version"
    assert (issue.op, issue.version) == ("MUL", 5)
    assert "older than the converter" in issue.message and "update the binary" in (issue.hint or "")
    assert not r.ok and r.count is None
    with pytest.raises(BenchmarkModelError) as info:
        r.to_latency_stats()
    assert info.value.kind == "op_version" and isinstance(info.value, RunnerError)
    assert "MUL version 5" in str(info.value)


def test_delegate_not_applied_in_logcat_output() -> None:
    # Logcat prefixes ("05-31 ... I tflite  : ") do not hide the line; the paste ends before any timing.
    r = parse_output(golden("nnapi_not_applied_logcat.txt"))
    assert r.delegate is not None and r.delegate.to_json() == {"name": "NNAPI", "coverage": "none", "kernels": 0}
    with pytest.raises(BenchmarkModelError, match="missing count, avg, min, max"):
        r.to_latency_stats()


def test_delegate_apply_failure_is_classified() -> None:
    r = parse_output(golden("xnnpack_apply_failed.txt"))
    assert [e.kind for e in r.errors] == ["delegate_failed", "benchmark_failed"]
    assert r.error is not None and r.error.kind == "delegate_failed" and "XNNPACK" in r.error.message


# ----------------------------------------------------------------------------------- constructed (not golden) lines


def test_peak_memory_line() -> None:
    # No public paste with --report_peak_memory_footprint was found; this line is written from the tool's format.
    text = (
        "count=2 first=10 curr=11 min=10 max=12 avg=11 std=1\n"
        "count=5 first=10 curr=11 min=10 max=12 avg=11 std=1\n"
        "Overall peak memory footprint (MB) via periodic monitoring: 12.5\n"
    )
    assert parse_output(text).peak_memory_mb == 12.5


def test_single_iteration_line_has_only_curr() -> None:
    text = "count=0\ncount=1 curr=905463 p5=905463 median=905463 p95=905463\n"
    r = parse_output(text)
    assert (r.count, r.min_us, r.max_us, r.avg_us, r.std_us) == (1, 905463, 905463, 905463, None)
    assert r.to_latency_stats().n == 1


def test_op_profile_lines_are_kept() -> None:
    text = (
        "count=1 first=5 curr=5 min=5 max=5 avg=5 std=0\ncount=3 first=5 curr=5 min=5 max=5 avg=5 std=0\n"
        "============================== Run Order ==============================\n"
        "\t             [node type]\t  [first]\n\t                 CONV_2D\t    0.100\n"
    )
    r = parse_output(text)
    assert r.op_profile_lines[0].startswith("=====") and "CONV_2D" in r.op_profile_lines[-1]
    assert r.count == 3


# ------------------------------------------------------------------------------------------------- garbled output


@pytest.mark.parametrize("text", ["", "sh: /data/local/tmp/benchmark_model: not found\n", "random\nnoise\n"])
def test_unrecognised_output_raises_naming_what_is_missing(text: str) -> None:
    with pytest.raises(BenchmarkModelError) as info:
        parse_output(text)
    assert info.value.kind == "bad_output"
    assert "count=" in str(info.value) and "Inference timings" in str(info.value)
    assert info.value.hint is not None and "first lines" in info.value.hint


def test_only_warmup_statistics_is_an_error() -> None:
    with pytest.raises(BenchmarkModelError, match="warm-up statistics but not the timed"):
        parse_output("count=4 first=1 curr=1 min=1 max=1 avg=1 std=0\n")


def test_timed_line_without_avg_names_the_missing_field() -> None:
    r = parse_output("count=4 first=1 curr=1 min=1 max=1 avg=1 std=0\ncount=50 first=1 curr=1 min=1 max=2\n")
    with pytest.raises(BenchmarkModelError, match="missing avg"):
        r.to_latency_stats()


# ------------------------------------------------------------------------------------------------------- argv


def test_argv_minimal_config_passes_only_the_graph() -> None:
    argv = benchmark_model_argv("/data/local/tmp/bm", BenchmarkModelConfig(graph="/data/local/tmp/m.tflite"),
                                taskset_mask=None)
    assert argv == ["/data/local/tmp/bm", "--graph=/data/local/tmp/m.tflite"]


def test_argv_full_config_with_taskset() -> None:
    config = BenchmarkModelConfig(
        graph="/data/local/tmp/farmbench/m.tflite", num_threads=4, warmup_runs=1, warmup_min_secs=0.5,
        num_runs=50, min_secs=1.0, max_secs=150.0, use_xnnpack=False, use_gpu=False, use_nnapi=True,
        nnapi_accelerator_name="qti-dsp", report_peak_memory_footprint=True, enable_op_profiling=False,
        input_layer_value_files=[("input_1", "/data/local/tmp/in0.bin"), ("mask", "/data/local/tmp/in1.bin")],
        output_filepath="/data/local/tmp/out.bin",
    )
    assert benchmark_model_argv("/data/local/tmp/bm", config, taskset_mask="f0") == [
        "taskset", "f0", "/data/local/tmp/bm",
        "--graph=/data/local/tmp/farmbench/m.tflite",
        "--num_threads=4",
        "--warmup_runs=1",
        "--warmup_min_secs=0.5",
        "--num_runs=50",
        "--min_secs=1",
        "--max_secs=150",
        "--use_xnnpack=false",
        "--use_gpu=false",
        "--use_nnapi=true",
        "--nnapi_accelerator_name=qti-dsp",
        "--report_peak_memory_footprint=true",
        "--enable_op_profiling=false",
        "--input_layer_value_files=input_1:/data/local/tmp/in0.bin,mask:/data/local/tmp/in1.bin",
        "--output_filepath=/data/local/tmp/out.bin",
    ]


def test_colon_in_an_input_name_is_escaped_as_the_tool_documents() -> None:
    # benchmark_model's flag docs: 'In case the input layer name contains ':' e.g. "input:0", escape it with "::"'.
    config = BenchmarkModelConfig(graph="m.tflite", input_layer_value_files=[("serving_default_x:0", "/d/in.bin")])
    argv = benchmark_model_argv("bm", config, taskset_mask=None)
    assert argv[-1] == "--input_layer_value_files=serving_default_x::0:/d/in.bin"


def test_config_is_frozen_and_hashable_with_input_files() -> None:
    config = BenchmarkModelConfig(graph="m.tflite", input_layer_value_files=[("a", "/x")])
    assert config.input_layer_value_files == (("a", "/x"),)
    hash(config)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"graph": ""}, "graph"),
    ({"graph": "m", "num_threads": 0}, "num_threads"),
    ({"graph": "m", "max_secs": -1.0}, "max_secs"),
    ({"graph": "m", "use_nnapi": False, "nnapi_accelerator_name": "x"}, "use_nnapi"),
    ({"graph": "m", "input_layer_value_files": [("in,put", "/x")]}, "in,put"),
    ({"graph": "m", "input_layer_value_files": [("input", "/x:y")]}, "/x:y"),
])
def test_config_rejects_what_the_tool_would_misread(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        BenchmarkModelConfig(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- cpu masks

# Snapdragon-like: 4 little (1.8 GHz), 3 big (2.4 GHz), 1 prime (3.0 GHz).
TRI = [([0, 1, 2, 3], 1_804_800), ([4, 5, 6], 2_419_200), ([7], 2_995_200)]


def test_cpu_mask_named_selections() -> None:
    assert cpu_mask("all", TRI) == "ff"
    assert cpu_mask("little", TRI) == "f"
    assert cpu_mask("big", TRI) == "f0"  # big includes the prime core
    assert cpu_mask("BIG", [([0, 1], 1_000_000), ([2, 3], 2_000_000)]) == "c"


def test_cpu_mask_single_cluster_is_everything() -> None:
    one = [([0, 1, 2, 3], 1_500_000)]
    assert cpu_mask("big", one) == cpu_mask("little", one) == cpu_mask("all", one) == "f"


def test_cpu_mask_explicit_hex() -> None:
    assert cpu_mask("0xF0", TRI) == "f0"
    assert cpu_mask("3", TRI) == "3"


@pytest.mark.parametrize("selection, fragment", [
    ("medium", "unknown CPU selection"),
    ("0x0", "selects no CPU"),
    ("0x100", "does not have"),
    ("0xzz", "unknown CPU selection"),
])
def test_cpu_mask_errors(selection: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        cpu_mask(selection, TRI)


def test_cpu_mask_without_clusters() -> None:
    with pytest.raises(UsageError, match="no cpufreq clusters"):
        cpu_mask("big", [])
