"""A results database written straight through ResultStore, shaped like real runs, for report tests and
benchmarks/report_bench.py.

Two devices: an SSH board (the agent's raw samples, power over hwmon, thermal zones) and an Android phone
(benchmark_model's aggregates only, battery power, one session charging). A grid of widths x resolutions x
quantisations as TFLite (and ONNX, which the phone skips with a reason), several repeats, and several runs of the
same sweep with one combination slowing down in the last run. Hostile strings sit wherever a device or a config
can put text: a phone whose model is ``<script>alert(1)</script>``, quotes and ampersands in names, sweep and error
messages, and a password in an error message and a command line (the report must show neither).

Latencies follow a simple cost model (MACs grow with width squared and resolution squared; int8 is about twice as
fast as fp32 on the board) with log-normal noise; drift grows as the width shrinks and under int8.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from farmbench.results.schema import MeasurementRecord
from farmbench.results.stats import summarize_aggregates
from farmbench.results.store import ResultStore

XSS = "<script>alert(1)</script>"
BOARD_NAME = 'rpi5 "lab" & bench'
PHONE_NAME = "pixel8 <fast> 'tcp'"
SWEEP_NAME = 'nightly <b>"edge" & phones</b>'
SECRET = "hunter2-do-not-show"
FAILING_ERROR = 'op_version: FULLY_CONNECTED v12 & "newer" <needed> than the binary; update benchmark_model'
QUANT_SPEEDUP = {"fp32": 1.0, "fp16": 1.05, "dynamic-int8": 1.4, "int8": 2.1, "int8-io": 2.2}


@dataclass(frozen=True)
class Synthetic:
    db: Path
    run_ids: list[str]  # oldest first; the last is the subject
    artifacts: list[str]  # names in the subject run
    slowed: str  # the artifact that regressed on the board in the last run
    failing: str  # the artifact that fails on the phone
    measurements: int


def _spec(width: float, resolution: int, quant: str, fmt: str) -> dict[str, Any]:
    return {"family": "mobilenet_v2", "width": width, "resolution": resolution, "minimalistic": False,
            "weights": {"kind": "random", "seed": 0}, "quant": quant, "format": fmt}


def _name(width: float, resolution: int, quant: str, fmt: str) -> str:
    return f"mobilenet_v2_a{width:g}_r{resolution}_{quant}.{fmt}"


def _drift(width: float, quant: str, rng: np.random.Generator, reference: str) -> dict[str, Any]:
    if quant == "fp32":
        agreement, kl = 1.0, 0.0
    else:
        loss = {"fp16": 0.002, "dynamic-int8": 0.015, "int8": 0.03, "int8-io": 0.035}[quant] * (0.5 / width)
        agreement = round(float(np.clip(1.0 - loss - rng.uniform(0, 0.01), 0.5, 1.0)) * 64) / 64
        kl = loss * 2.5 + float(rng.uniform(0, 0.002))
    return {"n": 64, "top1_agreement": agreement, "top5_overlap": min(1.0, agreement + 0.01), "kl_mean": kl,
            "cosine_mean": 1.0 - kl / 4, "cosine_min": 1.0 - kl, "max_abs_error": kl * 3,
            "outputs_are_probabilities": True, "reference": reference,
            "evalset": {"source": "built-in", "count": 64, "labelled": False, "classes": 0}}


def write_synthetic_results(db: Path, *, widths: tuple[float, ...] = (0.35, 0.5, 0.75),
                            resolutions: tuple[int, ...] = (96, 128, 160),
                            quants: tuple[str, ...] = ("fp32", "fp16", "int8"),
                            formats: tuple[str, ...] = ("tflite", "onnx"), repeats: int = 3, runs: int = 3,
                            samples_per_session: int = 300, seed: int = 1) -> Synthetic:
    rng = np.random.default_rng(seed)
    grid = [(w, r, q, f) for w in widths for r in resolutions for q in quants for f in formats]
    slowed = _name(widths[len(widths) // 2], resolutions[-1], quants[-1], "tflite")
    failing = _name(widths[0], resolutions[0], quants[-1], "tflite")
    run_ids: list[str] = []
    count = 0
    sweep = {"name": SWEEP_NAME, "path": "/home/ci/sweeps/nightly <edge>.toml",
             "variants": {"family": ["mobilenet_v2"], "width": list(widths), "resolution": list(resolutions),
                          "quant": list(quants), "format": list(formats)},
             "run": {"devices": [BOARD_NAME, PHONE_NAME], "repeats": repeats, "threads": [1]}}
    with ResultStore(db) as store:
        board = store.upsert_device("ssh:SHA256:abc:rpi5", BOARD_NAME, "ssh", {
            "os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.6.31+rpt-rpi-2712", "cpu": "Cortex-A76 & co",
            "arch": "aarch64", "logical_cores": 4, "python": "3.11.2", "password": SECRET,
            "runtimes": {"litert": "2.3.0", "onnxruntime": "1.31.1"}})
        phone = store.upsert_device("adb:38211FDH2000&X:Pixel 8", PHONE_NAME, "adb", {
            "manufacturer": 'Acme "Phones" & Sons', "model": XSS, "soc": "Tensor G3",
            "build_fingerprint": "google/shiba/shiba:14/<AP2A>/&1234:user/release-keys", "sdk": "34",
            "release": "14", "abi": "arm64-v8a",
            "cpu_clusters": [{"cpus": "0-3", "max_freq_khz": 1704000}, {"cpus": "4-7", "max_freq_khz": 2367000}]})
        for width, resolution, quant, fmt in grid:
            store.put_artifact(f"key-{width}-{resolution}-{quant}-{fmt}", _name(width, resolution, quant, fmt), fmt,
                               f"{abs(hash((width, resolution, quant, fmt))):064x}"[:64],
                               {"spec": _spec(width, resolution, quant, fmt)})
        for run_index in range(runs):
            last = run_index == runs - 1
            command = ["farmbench", "run", "--sweep", "nightly.toml", "--password", SECRET]
            run_id = store.start_run(sweep_name=SWEEP_NAME, sweep=sweep, plan=[], command=command, seed=0,
                                     git_commit="0123456789abcdef0123456789abcdef01234567")
            run_ids.append(run_id)
            for repeat in range(repeats):
                for width, resolution, quant, fmt in grid:
                    key = f"key-{width}-{resolution}-{quant}-{fmt}"
                    name = _name(width, resolution, quant, fmt)
                    macs = width ** 2 * (resolution / 96) ** 2
                    base_us = 2400.0 * macs / QUANT_SPEEDUP[quant] * (1.0 if fmt == "tflite" else 1.15)
                    if last and name == slowed:
                        base_us *= 1.35
                    reference = _name(width, resolution, "fp32", fmt)
                    for device_id, kind in ((board, "ssh"), (phone, "adb")):
                        count += 1
                        store.add_measurement(_record(rng, run_id, device_id, kind, key, name, fmt, quant, width,
                                                      base_us, repeat, samples_per_session, reference,
                                                      failing=(name == failing and kind == "adb"),
                                                      hot=width == widths[-1]))
            store.finish_run(run_id)
            time.sleep(0.005)  # runs sort by start time (milliseconds)
    return Synthetic(db, run_ids, [_name(*v) for v in grid], slowed, failing, count)


def _record(rng: np.random.Generator, run_id: str, device_id: int, kind: str, key: str, name: str, fmt: str,
            quant: str, width: float, base_us: float, repeat: int, n: int, reference: str, *,
            failing: bool, hot: bool) -> MeasurementRecord:
    runtime = {"ssh": {"tflite": "litert", "onnx": "onnxruntime"},
               "adb": {"tflite": "benchmark_model", "onnx": "onnxruntime_perf_test"}}[kind][fmt]
    config = {"threads": 1, "xnnpack": "on", "runs": 50, "min_s": 1.0, "max_s": 60.0, "warmup_runs": 5,
              "warmup_min_s": 0.5, "affinity": "", "runtime": runtime, "ort_provider": "CPUExecutionProvider",
              "ort_opt_level": "all"}
    base = MeasurementRecord(run_id=run_id, device_id=device_id, artifact_key=key, runtime=runtime, status="ok",
                             config=config, repeat=repeat, runtime_version="2.3.0" if fmt == "tflite" else "1.31.1")
    if kind == "adb" and fmt == "onnx":
        return replace(base, status="skipped", error_class="skipped",
                       error_message=f"no onnxruntime_perf_test configured for device {PHONE_NAME} (ONNX files are"
                                     " skipped)")
    if failing:
        return replace(base, status="failed", error_class="RunnerError", error_message=FAILING_ERROR)
    if kind == "ssh" and repeat == 1 and name.endswith("_fp16.onnx") and width == 0.35:
        return replace(base, status="failed", error_class="ConnectError", transient=True,
                       error_message=f"ssh://pi:{SECRET}@10.0.0.7:22 refused the connection; is the board up?")
    flags: list[str] = []
    thermal = {"max_temp_before_c": float(rng.uniform(42, 48)), "max_temp_after_c": float(rng.uniform(50, 62)),
               "throttled": False, "throttle_reasons": []}
    noise = 0.04
    if kind == "ssh" and quant == "fp32" and hot:  # the widest fp32 models heat the board into throttling
        thermal.update(throttled=True, max_temp_after_c=85.5,
                       throttle_reasons=["cpu-thermal at 85.5 C >= passive trip 85.0 C"])
        flags.append("throttled")
        noise = 0.15
    if kind == "adb" and quant == "int8" and width == 0.5:
        flags.append("xnnpack_partially_applied")
    power_mw = (3800.0 if kind == "ssh" else 2100.0) * (1.0 + 0.1 * rng.standard_normal())
    charging = kind == "adb" and repeat == 0 and quant == "fp16"
    if charging:
        flags.append("charging")
    drift = _drift(width, quant, rng, reference) if repeat == 0 else None
    if kind == "ssh":
        samples = (base_us * rng.lognormal(0.0, noise, size=n)).tolist()
        latency = None
        mean_us = float(np.mean(samples))
    else:
        phone_us = base_us * 0.55 * float(rng.lognormal(0.0, 0.03))
        latency = summarize_aggregates(count=50, mean_us=phone_us * 1.02, std_us=phone_us * 0.05,
                                       min_us=phone_us * 0.9, max_us=phone_us * 1.4, p5_us=phone_us * 0.93,
                                       median_us=phone_us, p95_us=phone_us * 1.12)
        samples = None
        mean_us = phone_us * 1.02
    energy_mj = power_mw * mean_us / 1e6
    power = {"source": "hwmon" if kind == "ssh" else "android-battery", "avg_power_mw": power_mw,
             "energy_per_inference_mj": energy_mj, "energy_above_idle_mj": energy_mj * 0.6, "flags": [],
             "window_source": "agent" if kind == "ssh" else "approximate"}
    return replace(base, samples_us=samples, latency=latency, init_ms=float(rng.uniform(20, 80)),
                   first_inference_ms=base_us / 500, peak_rss_mb=60 + 40 * width, flags=flags, power=power,
                   thermal=thermal, drift=drift,
                   context={"runtime": runtime, "converter_versions": {"tensorflow": "2.21.0", "farmbench": "0.1.0"}})
