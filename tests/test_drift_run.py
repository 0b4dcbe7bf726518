"""Accuracy drift in real runs, on every transport: this machine, an SSH board (the loopback sshd) and an Android
phone (the ADB emulator, whose benchmark_model stand-in runs LiteRT for real).

Each variant's outputs on the evaluation set are compared with its fp32 twin's, run on the host. What must hold:
fp32 against itself is perfect agreement; an int8 variant drifts more than its fp16 twin; and the fp32 model's
top-1 class varies across the evaluation set (with constant outputs, every drift number would be meaningless).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from farmbench.results.store import ResultStore
from farmbench.variants.evalset import builtin_evalset
from farmbench.variants.hostrun import HostModel
from farmbench.variants.models import preprocess
from tests.conftest import GRID_FAMILY, GRID_FLAGS, GRID_RESOLUTION, BuiltGrid, cli_command, cli_env, describe
from tests.peers.benchmark_model_standin import install as install_benchmark_model
from tests.peers.sshd import SshdPeer
from tests.test_run import (
    Board,
    board,  # noqa: F401  (the module-scoped fixture, reused)
)

pytestmark = pytest.mark.slow

EVAL_IMAGES = 12
QUICK = ("--runs", "3", "--min-s", "0", "--max-s", "30", "--warmup-runs", "0", "--warmup-min-s", "0",
         "--repeats", "2", "--eval-images", str(EVAL_IMAGES))


@pytest.fixture(scope="module")
def cache(built_grid: BuiltGrid, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_grid.copy(tmp_path_factory.mktemp("drift-cache") / "cache")


def run(device: str | Path, formats: str, cache: Path, db: Path) -> list[Any]:
    proc = subprocess.run(cli_command("run", *GRID_FLAGS, "--quant", "fp32,fp16,int8", "--format", formats,
                                      "--device", str(device), *QUICK, "--db", db),
                          env=cli_env(cache, None), capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, describe(proc)
    with ResultStore(db, create=False) as store:
        return store.measurements()


def check_drift(records: list[Any], formats: tuple[str, ...]) -> None:
    ok = [r for r in records if r.status == "ok"]
    with_drift = [r for r in ok if r.repeat == 0]
    assert with_drift and all(r.drift is None for r in ok if r.repeat > 0)  # once per combination, not per repeat
    by_name: dict[str, dict[str, Any]] = {}
    for record in with_drift:
        assert record.drift is not None and "error" not in record.drift, record.drift
        name = record.drift["reference"].rsplit("_", 1)[0]  # the group, e.g. mobilenet_v2_a0.35_r96
        quant = next(q for q in ("fp32", "fp16", "int8") if f"_{q}." in _artifact_name(record))
        fmt = _artifact_name(record).rsplit(".", 1)[1]
        by_name[f"{quant}.{fmt}"] = record.drift
        assert record.drift["n"] == EVAL_IMAGES and record.drift["evalset"]["source"] == "built-in"
        assert name.startswith("mobilenet_v2_a0.35_r96")
    for fmt in formats:
        fp32, fp16, int8 = by_name[f"fp32.{fmt}"], by_name[f"fp16.{fmt}"], by_name[f"int8.{fmt}"]
        assert fp32["top1_agreement"] == 1.0 and fp32["top5_overlap"] == 1.0
        assert fp32["kl_mean"] < 1e-9 and fp32["max_abs_error"] < 1e-5 and fp32["cosine_min"] > 1 - 1e-9
        assert int8["kl_mean"] > fp16["kl_mean"], (fmt, int8, fp16)
        assert int8["max_abs_error"] > fp16["max_abs_error"], (fmt, int8, fp16)


_NAMES: dict[str, str] = {}


def _artifact_name(record: Any) -> str:
    return _NAMES[record.artifact_key]


def remember_names(db: Path) -> None:
    with ResultStore(db, create=False) as store:
        frame = store.frame()
    _NAMES.update(dict(zip(frame["artifact_key"], frame["artifact"])))


def test_reference_top1_varies_across_the_evaluation_set(built_grid: BuiltGrid) -> None:
    fp32 = next(r for v, r in zip(built_grid.variants, built_grid.results)
                if v.quant == "fp32" and v.format == "tflite")
    assert fp32.entry is not None
    evalset = builtin_evalset(GRID_RESOLUTION, 64)
    outputs = HostModel(Path(fp32.entry.model_path)).run(preprocess(GRID_FAMILY, evalset.pixels))
    classes = np.bincount(outputs.argmax(axis=1), minlength=outputs.shape[1])
    assert (classes > 0).sum() >= 4, classes  # several classes win, none takes (nearly) every image
    assert classes.max() <= 0.75 * len(outputs), classes


def test_drift_on_this_machine(cache: Path, tmp_path: Path) -> None:
    db = tmp_path / "local.db"
    records = run("local", "tflite,onnx", cache, db)
    remember_names(db)
    check_drift(records, ("tflite", "onnx"))


def test_drift_on_an_ssh_board(board: Board, cache: Path, tmp_path: Path, sshd: SshdPeer) -> None:  # noqa: F811
    db = tmp_path / "ssh.db"
    records = run(board.device_file("drift-board"), "tflite,onnx", cache, db)
    remember_names(db)
    check_drift(records, ("tflite", "onnx"))


def test_drift_on_an_emulated_phone(adb_emulator: Any, cache: Path, tmp_path: Path) -> None:
    emulator = adb_emulator(auth="accept-new")
    binary = install_benchmark_model(tmp_path / "tools" / "benchmark_model")
    device = tmp_path / "phone.toml"
    device.write_text(f'kind = "adb"\nhost = "127.0.0.1"\nport = {emulator.port}\n'
                      f'key_file = "{tmp_path / "keys" / "adbkey"}"\nbenchmark_model = "{binary}"\n')
    db = tmp_path / "phone.db"
    records = run(device, "tflite", cache, db)
    remember_names(db)
    check_drift(records, ("tflite",))


def test_outputs_compared_across_devices_and_delegates(board: Board, adb_emulator: Any, cache: Path,  # noqa: F811
                                                       tmp_path: Path, sshd: SshdPeer) -> None:
    """One variant on this machine, the SSH board and the emulated phone (CPU, GPU and NNAPI delegates): outputs
    are stored with each measurement and compared between executions after the run. Every execution here runs the
    same LiteRT kernels, so they agree exactly; the emulator has no GPU (benchmark_model fails to apply the
    delegate: a failed record), and the GPU/NNAPI axis is not planned on the board or this machine."""
    emulator = adb_emulator(auth="accept-new")
    binary = install_benchmark_model(tmp_path / "tools" / "benchmark_model")
    phone = tmp_path / "phone.toml"
    phone.write_text(f'kind = "adb"\nhost = "127.0.0.1"\nport = {emulator.port}\n'
                     f'key_file = "{tmp_path / "keys" / "adbkey"}"\nbenchmark_model = "{binary}"\n')
    db = tmp_path / "cross.db"
    proc = subprocess.run(cli_command("run", *GRID_FLAGS, "--quant", "fp32,int8", "--format", "tflite",
                                      "--device", "local", "--device", str(board.device_file("cross-board")),
                                      "--device", str(phone), "--delegate", "cpu,gpu,nnapi", *QUICK,
                                      "--repeats", "1", "--db", db),
                          env=cli_env(cache, None), capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 1, describe(proc)  # the GPU delegate failed on the phone
    assert "measured on Android phones only" in proc.stdout + proc.stderr, describe(proc)
    with ResultStore(db, create=False) as store:
        frame = store.frame()
    by_delegate = {d: frame[frame["delegate"] == d] for d in ("cpu", "gpu", "nnapi")}
    assert set(by_delegate["gpu"]["device"]) == {"phone"} and set(by_delegate["nnapi"]["device"]) == {"phone"}
    assert (by_delegate["gpu"]["status"] == "failed").all()
    assert by_delegate["gpu"]["error_message"].str.contains("GPU", case=False).all(), by_delegate["gpu"]
    assert (by_delegate["nnapi"]["status"] == "ok").all() and (by_delegate["cpu"]["status"] == "ok").all()
    assert len(by_delegate["cpu"]) == 6  # 2 artifacts x 3 devices

    shown = subprocess.run(cli_command("results", "--format", "json", "--db", db), env=cli_env(cache, None),
                           capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0, describe(shown)
    pairs = json.loads(shown.stdout)["execution_drift"]
    compared = {(p["artifact"].rsplit("_", 1)[1], p["other"]["label"]) for p in pairs}
    assert compared == {(f"{q}.tflite", label) for q in ("fp32", "int8")
                        for label in ("cross-board litert", "phone benchmark_model", "phone benchmark_model nnapi")}
    for pair in pairs:
        assert pair["reference"]["label"] == "local litert" and pair["n"] == EVAL_IMAGES
        assert pair["top1_agreement"] == 1.0 and pair["max_abs_error"] < 1e-6, pair
    table = subprocess.run(cli_command("results", "--db", db), env=cli_env(cache, None), capture_output=True,
                           text=True, timeout=120, check=False)
    assert "across devices and delegates" in table.stdout and "phone benchmark_model nnapi" in table.stdout, table.stdout
