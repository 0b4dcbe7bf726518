"""Building real artifacts with TensorFlow: every quantisation mode and format of one small MobileNet.

The session-scoped ``built_grid`` fixture (tests/conftest.py) builds mobilenet_v2 α0.35 r96 with random weights
(trained ~200 steps) in all 5 modes x 2 formats into a temporary cache, once per test session; test_run.py measures
copies of the same build. These tests read that cache, hit it, or add to it through the real CLI; the ones that
change or rebuild entries come last in the file (pytest runs them in file order).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import GRID_FAMILY, GRID_FLAGS, GRID_PREFIX, GRID_RESOLUTION, BuiltGrid, describe, run_cli, start_cli

from farmbench.variants.build import BuildOptions, BuildResult, artifact_key, build_variants
from farmbench.variants.cache import ArtifactCache
from farmbench.variants.hostrun import HostModel
from farmbench.variants.inspect import inspect_model
from farmbench.variants.spec import FORMATS, QUANT_MODES, Variant

pytestmark = pytest.mark.slow

FAMILY, RESOLUTION, PREFIX = GRID_FAMILY, GRID_RESOLUTION, GRID_PREFIX


@dataclass
class Built:
    cache_dir: Path
    cache: ArtifactCache
    variants: list[Variant]
    results: list[BuildResult]
    events: list[dict[str, Any]]
    seconds: float

    def result(self, quant: str, fmt: str) -> BuildResult:
        (found,) = [r for r in self.results if r.name == f"{PREFIX}_{quant}.{fmt}"]
        return found

    def manifest(self, quant: str, fmt: str) -> dict[str, Any]:
        entry = self.result(quant, fmt).entry
        assert entry is not None, self.result(quant, fmt).error
        return entry.manifest

    def path(self, quant: str, fmt: str) -> Path:
        entry = self.result(quant, fmt).entry
        assert entry is not None, self.result(quant, fmt).error
        return entry.model_path


@pytest.fixture(scope="module")
def built(built_grid: BuiltGrid) -> Built:
    # The session's own build cache (not a copy): the tests at the end of this file change it on purpose.
    return Built(built_grid.cache_dir, ArtifactCache(built_grid.cache_dir), built_grid.variants, built_grid.results,
                 built_grid.events, built_grid.seconds)


def evaluation_inputs(count: int) -> np.ndarray:
    from farmbench.variants.images import evaluation_images
    from farmbench.variants.models import preprocess

    return preprocess(FAMILY, evaluation_images(RESOLUTION, count))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dominant(weight_dtypes: dict[str, int]) -> str:
    return max(weight_dtypes, key=lambda k: weight_dtypes[k])


def artifact_dirs(cache_dir: Path) -> set[str]:
    artifacts = cache_dir / "artifacts"
    return {p.name for p in artifacts.iterdir()} if artifacts.exists() else set()


# --- the build --------------------------------------------------------------------------------------------------


def test_every_variant_is_built(built: Built) -> None:
    assert len(built.results) == 10
    failures = {r.name: r.error for r in built.results if r.status != "built"}
    assert failures == {}
    assert [r.name for r in built.results] == [v.name() for v in built.variants]
    assert all(r.error is None and r.entry is not None for r in built.results)
    assert {r.key for r in built.results} == {artifact_key(v) for v in built.variants}
    # One group: one model event, one done event per artifact, all built.
    assert [e["event"] for e in built.events].count("group-start") == 1
    assert [e["event"] for e in built.events].count("model") == 1
    done = [e for e in built.events if e["event"] == "done"]
    assert sorted(e["name"] for e in done) == sorted(v.name() for v in built.variants)
    assert {e["status"] for e in done} == {"built"}
    assert not [p for p in (built.cache_dir / "artifacts").iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("quant", QUANT_MODES)
def test_artifact_runs_on_the_host(built: Built, quant: str, fmt: str) -> None:
    model = HostModel(built.path(quant, fmt))
    x = evaluation_inputs(2)
    out = model.run_one(x[:1])
    assert out.shape == (1, 1000)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert not np.array_equal(out, model.run_one(x[1:2]))  # the output depends on the input


# --- what each quantisation mode holds --------------------------------------------------------------------------


def io_dtypes(manifest: dict[str, Any]) -> tuple[str, str]:
    return manifest["inputs"][0]["dtype"], manifest["outputs"][0]["dtype"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp32_is_float32_throughout(built: Built, fmt: str) -> None:
    m = built.manifest("fp32", fmt)
    assert io_dtypes(m) == ("float32", "float32")
    assert dominant(m["weight_dtypes"]) == "float32"
    assert set(m["weight_dtypes"]) == {"float32"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp16_holds_float16_weights(built: Built, fmt: str) -> None:
    m = built.manifest("fp16", fmt)
    assert dominant(m["weight_dtypes"]) == "float16"
    assert io_dtypes(m) == ("float32", "float32")
    # Half-size weights: the file is well under the fp32 file.
    assert m["size_bytes"] < 0.65 * built.manifest("fp32", fmt)["size_bytes"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_dynamic_int8_holds_int8_weights_with_float_io(built: Built, fmt: str) -> None:
    m = built.manifest("dynamic-int8", fmt)
    assert dominant(m["weight_dtypes"]) == "int8"
    assert io_dtypes(m) == ("float32", "float32")
    assert m["inputs"][0]["quant_scale"] is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_holds_int8_weights_with_float_io(built: Built, fmt: str) -> None:
    m = built.manifest("int8", fmt)
    assert dominant(m["weight_dtypes"]) == "int8"
    assert io_dtypes(m) == ("float32", "float32")
    assert m["calibration"] == {"images_version": m["calibration"]["images_version"], "count": 128,
                                "set": "variants.images.calibration_images"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_io_has_int8_input_and_output_with_quantisation(built: Built, fmt: str) -> None:
    m = built.manifest("int8-io", fmt)
    assert io_dtypes(m) == ("int8", "int8")
    assert dominant(m["weight_dtypes"]) == "int8"
    for tensor in (m["inputs"][0], m["outputs"][0]):
        assert len(tensor["quant_scale"]) == 1 and tensor["quant_scale"][0] > 0
        assert len(tensor["quant_zero_point"]) == 1 and -128 <= tensor["quant_zero_point"][0] <= 127
    # The input range -1..1 maps onto int8: the scale is about 2/255.
    assert m["inputs"][0]["quant_scale"][0] == pytest.approx(2 / 255, rel=0.05)
    # Quantising the input and dequantising the output with the manifest's parameters gives what the int8
    # model (the same graph with those steps inside) gives.
    x = evaluation_inputs(8)
    if fmt == "tflite":
        int8_io = HostModel(built.path("int8-io", fmt)).run(x)
        int8 = HostModel(built.path("int8", fmt)).run(x)
    else:
        # ORT's extended graph optimisations fuse QDQ differently once the boundary Q/DQ are gone (and change
        # int8 outputs by up to ~0.2), so compare the graphs as stored, unoptimised.
        int8_io, int8 = onnx_unoptimised(built.path("int8-io", fmt), x, m), onnx_unoptimised(built.path("int8", fmt), x)
    assert np.abs(int8_io - int8).max() <= 1.01 * m["outputs"][0]["quant_scale"][0]
    assert (int8_io.argmax(1) == int8.argmax(1)).all()


def onnx_unoptimised(path: Path, x: np.ndarray, io_manifest: dict[str, Any] | None = None) -> np.ndarray:
    import onnxruntime as ort

    from farmbench.variants.hostrun import dequantize, quantize

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = []
    for sample in x:
        feed = sample[None, ...].astype(np.float32)
        if io_manifest is not None:
            (scale,), (zero,) = io_manifest["inputs"][0]["quant_scale"], io_manifest["inputs"][0]["quant_zero_point"]
            feed = quantize(feed, scale, zero, np.dtype(np.int8))
        out = session.run(None, {name: feed})[0]
        if io_manifest is not None:
            (scale,), (zero,) = io_manifest["outputs"][0]["quant_scale"], io_manifest["outputs"][0]["quant_zero_point"]
            out = dequantize(out, scale, zero)
        outputs.append(out)
    return np.concatenate(outputs)


@pytest.mark.parametrize("quant", ["int8", "int8-io"])
def test_tflite_int8_ops_are_quantised(built: Built, quant: str) -> None:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    path = built.path(quant, "tflite")
    m = built.manifest(quant, "tflite")
    assert m["op_counts"].get("CONV_2D", 0) > 0 and m["op_counts"].get("DEPTHWISE_CONV_2D", 0) > 0
    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    convs = [op for op in interpreter._get_ops_details()
             if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert convs
    for op in convs:
        activation, weight = op["inputs"][0], op["inputs"][1]
        assert np.dtype(tensors[activation]["dtype"]) == np.int8, op
        assert np.dtype(tensors[weight]["dtype"]) == np.int8, op
    if quant == "int8":
        # float in, float out: the graph quantises its input and dequantises its output itself
        assert m["op_counts"].get("QUANTIZE", 0) >= 1 and m["op_counts"].get("DEQUANTIZE", 0) >= 1
    else:
        assert np.dtype(interpreter.get_input_details()[0]["dtype"]) == np.int8
        assert np.dtype(interpreter.get_output_details()[0]["dtype"]) == np.int8


def test_onnx_int8_is_qdq(built: Built) -> None:
    ops = built.manifest("int8", "onnx")["op_counts"]
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert ops.get("Conv", 0) > 0
    dynamic = built.manifest("dynamic-int8", "onnx")["op_counts"]
    assert dynamic.get("ConvInteger", 0) + dynamic.get("DynamicQuantizeLinear", 0) > 0


# --- manifests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("quant", QUANT_MODES)
def test_manifest_describes_the_artifact(built: Built, quant: str, fmt: str) -> None:
    result = built.result(quant, fmt)
    m = built.manifest(quant, fmt)
    path = built.path(quant, fmt)
    variant = next(v for v in built.variants if v.quant == quant and v.format == fmt)
    assert m["name"] == variant.name() == result.name
    assert m["key"] == result.key == artifact_key(variant)
    assert m["source"] == "farmbench"
    assert m["spec"] == json.loads(json.dumps(variant.spec_json()))
    assert m["spec"]["weights"] == {"kind": "random", "seed": 0}
    assert m["file"] == f"model.{fmt}" and m["format"] == fmt
    assert m["sha256"] == sha256(path)
    assert m["size_bytes"] == path.stat().st_size
    assert m["param_count"] > 300_000  # MobileNetV2 α0.35 with a 1000-class head: ~1.7 M parameters
    assert m["macs"] > 0
    # A fixed batch of 1 in both formats (a dynamic batch adds SHAPE/STRIDED_SLICE ops to TFLite graphs).
    assert m["inputs"][0]["shape"] == [1, RESOLUTION, RESOLUTION, 3]
    assert m["outputs"][0]["shape"] == [1, 1000]
    assert not {"SHAPE", "STRIDED_SLICE", "Shape"} & set(m["op_counts"])
    # The facts are the file's own, as inspect reads them now.
    assert m["op_counts"] == inspect_model(path).to_json()["op_counts"]
    weights = m["weights"]
    assert weights["weights"] == "random:0"
    assert weights["training_recipe"]["steps"] > 0
    assert weights["weights_cache"] in ("trained", "hit")
    assert m["keras"]["param_count"] > 0 and m["keras"]["macs"] > 0
    assert m["input_range"] == [-1.0, 1.0]
    versions = m["versions"]
    for library in ("tensorflow", "keras", "tf2onnx", "onnxruntime", "build_code"):
        assert versions[library] and versions[library] != "missing", library
    datetime.fromisoformat(m["build"]["built_at"])
    assert m["build"]["convert_seconds"] > 0 and m["build"]["model_seconds"] > 0
    verification = m["verification"]
    assert verification["inputs"] == 8
    assert 0.0 <= verification["top1_agreement_vs_keras"] <= 1.0
    assert verification["output_std"] > 0
    if quant == "fp32":
        assert verification["max_abs_diff_vs_keras"] <= 1e-4
        assert verification["top1_agreement_vs_keras"] == 1.0
    if quant in ("int8", "int8-io"):
        assert m["calibration"]["count"] == 128
    else:
        assert m["calibration"] is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_macs_agree_across_quant_modes(built: Built, fmt: str) -> None:
    macs = {quant: built.manifest(quant, fmt)["macs"] for quant in QUANT_MODES}
    reference = macs["fp32"]
    for quant, value in macs.items():
        assert abs(value - reference) <= 0.01 * reference, macs
    # And the file agrees with Keras' own count of the model it came from.
    keras_macs = built.manifest("fp32", fmt)["keras"]["macs"]
    assert abs(reference - keras_macs) <= 0.02 * keras_macs


def test_weights_are_trained_once_and_kept(built: Built) -> None:
    weights_files = list((built.cache_dir / "weights").glob("*.weights.h5"))
    assert len(weights_files) == 1
    assert built.manifest("fp32", "tflite")["weights"]["weights_cache"] == "trained"
    log = next((built.cache_dir / "logs").glob("*.log")).read_text()
    assert "building mobilenet_v2_a0.35_r96" in log


# --- outputs ----------------------------------------------------------------------------------------------------


def test_fp32_tflite_and_onnx_agree(built: Built) -> None:
    x = evaluation_inputs(8)
    tflite = HostModel(built.path("fp32", "tflite")).run(x)
    onnx = HostModel(built.path("fp32", "onnx")).run(x)
    assert tflite.shape == onnx.shape == (8, 1000)
    assert np.abs(tflite - onnx).max() <= 1e-4
    assert (tflite.argmax(1) == onnx.argmax(1)).all()


def test_fp32_top1_varies_across_inputs(built: Built) -> None:
    """Guard against degenerate random weights: an untrained MobileNet gives one class for everything."""
    out = HostModel(built.path("fp32", "tflite")).run(evaluation_inputs(32))
    assert len(set(out.argmax(1).tolist())) >= 3
    assert np.allclose(out.sum(1), 1.0, atol=1e-3)  # softmax probabilities
    assert out.max(1).mean() > 2 / 1000  # not a uniform softmax


# --- the cache --------------------------------------------------------------------------------------------------


def test_second_build_is_all_cache_hits(built: Built) -> None:
    events: list[dict[str, Any]] = []
    started = time.monotonic()
    again = build_variants(built.variants, BuildOptions(cache=built.cache, jobs=1, on_event=events.append))
    elapsed = time.monotonic() - started
    assert elapsed < 2, f"cache hits took {elapsed:.1f} s"
    assert [r.status for r in again] == ["cached"] * 10
    assert {(e["event"], e["status"]) for e in events} == {("done", "cached")}
    assert len(events) == 10
    for first, second in zip(built.results, again):
        assert first.key == second.key
        assert second.entry is not None and first.entry is not None
        assert second.entry.manifest["sha256"] == first.entry.manifest["sha256"] == sha256(second.entry.model_path)


def test_out_copies_artifacts_under_readable_names(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "models"
    proc = run_cli("build", *GRID_FLAGS, "--quant", "int8,fp32", "--format", "tflite", "--jobs", "1",
                   "--out", out, "--json", cache_dir=built.cache_dir, timeout=600)
    assert proc.returncode == 0, describe(proc)
    assert sorted(p.name for p in out.iterdir()) == sorted([
        f"{PREFIX}_fp32.tflite", f"{PREFIX}_fp32.tflite.json", f"{PREFIX}_int8.tflite", f"{PREFIX}_int8.tflite.json"])
    report = {a["name"]: a for a in json.loads(proc.stdout)["artifacts"]}
    for quant in ("int8", "fp32"):
        name = f"{PREFIX}_{quant}.tflite"
        manifest = json.loads((out / f"{name}.json").read_text())
        assert manifest["sha256"] == sha256(out / name)
        assert manifest["name"] == name and manifest["key"] == report[name]["key"]
        assert (out / name).read_bytes() == Path(report[name]["path"]).read_bytes()


def test_bring_your_own_model(built: Built, tmp_path: Path) -> None:
    mine = tmp_path / "my.tflite"
    shutil.copyfile(built.path("fp32", "tflite"), mine)
    proc = run_cli("build", *GRID_FLAGS, "--quant", "fp32", "--format", "tflite", "--model", mine, "--jobs", "1",
                   "--json", cache_dir=built.cache_dir, timeout=600)
    assert proc.returncode == 0, describe(proc)
    report = {a["name"]: a for a in json.loads(proc.stdout)["artifacts"]}
    assert report["my.tflite"]["status"] == "built"
    entry = ArtifactCache(built.cache_dir).get(report["my.tflite"]["key"])
    assert entry is not None
    m = entry.manifest
    assert m["source"] == "user"
    assert m["spec"] == {"source": "file", "format": "tflite", "name": "my"}
    assert m["original_path"] == str(mine.resolve())
    assert m["sha256"] == sha256(mine) == sha256(entry.model_path)
    # Read from the file itself: the same facts as farmbench's own fp32 build of the same bytes.
    ours = built.manifest("fp32", "tflite")
    assert m["param_count"] == ours["param_count"] and m["macs"] == ours["macs"]
    assert m["inputs"][0]["shape"] == [1, RESOLUTION, RESOLUTION, 3]
    assert m["outputs"][0]["shape"] == [1, 1000]

    # Importing the same bytes again is a cache hit.
    again = run_cli("build", "--sweep", _byo_sweep(tmp_path, mine), "--json", cache_dir=built.cache_dir)
    assert again.returncode == 0, describe(again)
    assert [a["status"] for a in json.loads(again.stdout)["artifacts"]] == ["cached"]


def _byo_sweep(directory: Path, model: Path) -> Path:
    sweep = directory / "byo.toml"
    sweep.write_text(f'[variants]\nfamily = []\nmodels = ["{model.name}"]\n')
    return sweep


def test_bring_your_own_garbage_fails_clearly(built: Built, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"this is not a flatbuffer" * 100)
    before = artifact_dirs(built.cache_dir)
    proc = run_cli("build", "--sweep", _byo_sweep(tmp_path, garbage), "--json", cache_dir=built.cache_dir)
    assert proc.returncode == 1, describe(proc)
    (artifact,) = json.loads(proc.stdout)["artifacts"]
    assert artifact["status"] == "failed" and artifact["path"] is None
    assert str(garbage) in artifact["error"]
    assert "garbage.tflite" in proc.stderr and "not a readable TFLite model" in proc.stderr, describe(proc)
    assert "Traceback" not in proc.stderr
    assert artifact_dirs(built.cache_dir) == before


def test_corrupt_weights_file_is_an_error_and_nothing_is_kept(built: Built, tmp_path: Path) -> None:
    weights = tmp_path / "x.weights.h5"
    weights.write_bytes(np.random.default_rng(0).bytes(4096))
    before = artifact_dirs(built.cache_dir)
    proc = run_cli("build", *GRID_FLAGS, "--quant", "fp32", "--format", "tflite", "--weights", weights,
                   "--jobs", "1", cache_dir=built.cache_dir, timeout=600)
    assert proc.returncode == 1, describe(proc)
    assert str(weights) in proc.stderr, describe(proc)
    assert "cannot load weights file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert artifact_dirs(built.cache_dir) == before


# --- tests that rebuild entries of the shared cache: keep them last ---------------------------------------------


def test_force_rebuilds_and_replaces_the_entry(built: Built) -> None:
    variant = next(v for v in built.variants if v.quant == "fp32" and v.format == "tflite")
    entry = built.cache.get(artifact_key(variant))
    assert entry is not None
    old_built_at = entry.manifest["build"]["built_at"]
    # Damage the cached file (its manifest stays): --force is how a user replaces such an entry.
    entry.model_path.write_bytes(b"damaged")
    time.sleep(1.1)  # built_at has one-second resolution
    events: list[dict[str, Any]] = []
    (result,) = build_variants([variant], BuildOptions(cache=built.cache, jobs=1, force=True,
                                                       on_event=events.append))
    assert result.status == "built", result.error
    assert result.entry is not None
    assert result.entry.manifest["sha256"] == sha256(result.entry.model_path)
    assert result.entry.manifest["build"]["built_at"] != old_built_at
    assert result.entry.manifest["weights"]["weights_cache"] == "hit"  # the trained weights were reused
    HostModel(result.entry.model_path).run_one(evaluation_inputs(1))
    assert [e["status"] for e in events if e["event"] == "done"] == ["built"]
    assert not [p for p in (built.cache_dir / "artifacts").iterdir() if p.name.startswith(".tmp")]


def test_concurrent_builds_of_one_artifact(built: Built) -> None:
    variant = next(v for v in built.variants if v.quant == "fp16" and v.format == "tflite")
    built.cache.prune(keys=(artifact_key(variant),))
    assert built.cache.get(artifact_key(variant)) is None
    args = ("build", *GRID_FLAGS, "--quant", "fp16", "--format", "tflite", "--jobs", "1", "--json")
    procs = [start_cli(*args, cache_dir=built.cache_dir) for _ in range(2)]
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=600)
            outputs.append((proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for code, stdout, stderr in outputs:
        assert code == 0, describe([f"exit {code}", stdout, stderr])
    reports = [json.loads(stdout)["artifacts"][0] for _, stdout, _ in outputs]
    assert reports[0]["key"] == reports[1]["key"]
    key = reports[0]["key"]
    # The group lock makes the second builder wait and then find the first one's entry.
    assert sorted(r["status"] for r in reports) == ["built", "cached"]
    assert reports[0]["path"] == reports[1]["path"]
    names = artifact_dirs(built.cache_dir)
    assert [n for n in names if n.startswith(key[:16])] == [key]
    assert not [n for n in names if n.startswith(".")]
    entry = ArtifactCache(built.cache_dir).get(key)
    assert entry is not None and entry.manifest["sha256"] == sha256(entry.model_path)
