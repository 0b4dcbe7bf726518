"""farmbench.variants.spec and the key functions of variants.build: grids, names, keys, ImageNet status, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, cli_env
from farmbench.errors import EXIT_USAGE, UsageError
from farmbench.variants.build import artifact_key, estimate_build_memory_mb
from farmbench.variants.spec import (
    FAMILIES,
    FORMATS,
    QUANT_MODES,
    Group,
    Variant,
    Weights,
    expand_grid,
    imagenet_weights_status,
)

RANDOM = Weights("random", seed=0)


def variant(family: str = "mobilenet_v2", width: float = 0.35, resolution: int = 96, quant: str = "int8",
            fmt: str = "tflite", weights: Weights = RANDOM, minimalistic: bool = False) -> Variant:
    return Variant(Group(family, width, resolution, minimalistic, weights), quant, fmt)


# --- grid expansion ---------------------------------------------------------------------------------------------


def test_grid_is_the_full_cross_product() -> None:
    grid = expand_grid(["mobilenet_v2", "mobilenet_v3_small"], [0.35, 1.0], [96, 128, 224],
                       list(QUANT_MODES), list(FORMATS), RANDOM)
    assert len(grid) == 2 * 2 * 3 * len(QUANT_MODES) * len(FORMATS) == 120
    assert len(set(grid)) == len(grid)
    combos = {(v.family, v.width, v.resolution, v.quant, v.format) for v in grid}
    assert ("mobilenet_v3_small", 1.0, 224, "int8-io", "onnx") in combos
    assert ("mobilenet_v2", 0.35, 96, "fp32", "tflite") in combos


def test_grid_drops_duplicates() -> None:
    grid = expand_grid(["mobilenet_v2", "mobilenet_v2"], [0.5, 0.5, 0.50], [128, 128], ["fp32", "fp32", "int8"],
                       ["tflite", "tflite"], RANDOM)
    assert [v.name() for v in grid] == ["mobilenet_v2_a0.5_r128_fp32.tflite", "mobilenet_v2_a0.5_r128_int8.tflite"]


def test_grid_order_is_stable_whatever_the_input_order() -> None:
    forward = expand_grid(["mobilenet_v1", "mobilenet_v3_large"], [0.5, 1.0], [128, 224], ["fp32", "int8"],
                          ["tflite", "onnx"], RANDOM)
    backward = expand_grid(["mobilenet_v3_large", "mobilenet_v1"], [1.0, 0.5], [224, 128], ["int8", "fp32"],
                           ["onnx", "tflite"], RANDOM)
    assert forward == backward
    # (family in FAMILIES order, width, resolution, quant in QUANT_MODES order, format in FORMATS order)
    assert [v.name() for v in forward[:5]] == [
        "mobilenet_v1_a0.5_r128_fp32.tflite",
        "mobilenet_v1_a0.5_r128_fp32.onnx",
        "mobilenet_v1_a0.5_r128_int8.tflite",
        "mobilenet_v1_a0.5_r128_int8.onnx",
        "mobilenet_v1_a0.5_r224_fp32.tflite",
    ]
    assert forward[-1].name() == "mobilenet_v3_large_a1.0_r224_int8.onnx"
    families = [v.family for v in forward]
    assert families == sorted(families, key=FAMILIES.index)


def test_minimalistic_applies_to_v3_families_only() -> None:
    grid = expand_grid(["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"], [1.0], [224],
                       ["fp32"], ["tflite"], RANDOM, minimalistic=True)
    flags = {v.family: v.group.minimalistic for v in grid}
    assert flags == {"mobilenet_v1": False, "mobilenet_v2": False,
                     "mobilenet_v3_small": True, "mobilenet_v3_large": True}
    assert "mobilenet_v3_small-min_a1.0_r224_fp32.tflite" in [v.name() for v in grid]
    plain = expand_grid(["mobilenet_v3_small"], [1.0], [224], ["fp32"], ["tflite"], RANDOM)
    assert not plain[0].group.minimalistic


@pytest.mark.parametrize(
    ("families", "widths", "resolutions", "quants", "formats", "needle"),
    [
        (["mobilenet_v4"], [1.0], [224], ["fp32"], ["tflite"], "family"),
        (["mobilenet_v2"], [1.0], [224], ["int9"], ["tflite"], "quantisation"),
        (["mobilenet_v2"], [1.0], [224], ["fp32"], ["pb"], "format"),
        (["mobilenet_v2"], [0.0], [224], ["fp32"], ["tflite"], "width"),
        (["mobilenet_v2"], [-0.5], [224], ["fp32"], ["tflite"], "width"),
        (["mobilenet_v2"], [1.0], [31], ["fp32"], ["tflite"], "resolution"),
    ],
)
def test_bad_grid_values_are_usage_errors(families: list[str], widths: list[float], resolutions: list[int],
                                          quants: list[str], formats: list[str], needle: str) -> None:
    with pytest.raises(UsageError, match=needle) as info:
        expand_grid(families, widths, resolutions, quants, formats, RANDOM)
    assert info.value.exit_code == EXIT_USAGE == 2


def test_smallest_resolution_is_accepted() -> None:
    assert expand_grid(["mobilenet_v2"], [1.0], [32], ["fp32"], ["tflite"], RANDOM)[0].resolution == 32


# --- names and keys ---------------------------------------------------------------------------------------------


def test_variant_name_format() -> None:
    assert variant().name() == "mobilenet_v2_a0.35_r96_int8.tflite"
    assert variant("mobilenet_v1", 1, 224, "fp32", "onnx").name() == "mobilenet_v1_a1.0_r224_fp32.onnx"
    assert variant("mobilenet_v3_large", 0.75, 160, "dynamic-int8", "tflite", minimalistic=True).name() == (
        "mobilenet_v3_large-min_a0.75_r160_dynamic-int8.tflite")
    assert variant(quant="int8-io", fmt="onnx").name() == "mobilenet_v2_a0.35_r96_int8-io.onnx"


def test_artifact_key_is_stable_across_calls() -> None:
    first = artifact_key(variant())
    assert first == artifact_key(variant())
    assert len(first) == 32 and all(c in "0123456789abcdef" for c in first)


@pytest.mark.parametrize(
    "changed",
    [
        variant(family="mobilenet_v1"),
        variant(width=0.5),
        variant(resolution=128),
        variant(quant="int8-io"),
        variant(fmt="onnx"),
        variant(weights=Weights("random", seed=1)),
        variant(weights=Weights("imagenet")),
        variant(weights=Weights("file", sha256="ab" * 32, path="/x.weights.h5")),
    ],
    ids=["family", "width", "resolution", "quant", "format", "seed", "imagenet", "file"],
)
def test_artifact_key_changes_with_every_field(changed: Variant) -> None:
    assert artifact_key(changed) != artifact_key(variant())


def test_artifact_key_follows_weights_file_hash_not_path() -> None:
    a = variant(weights=Weights("file", sha256="ab" * 32, path="/one/x.weights.h5"))
    b = variant(weights=Weights("file", sha256="ab" * 32, path="/two/y.weights.h5"))
    c = variant(weights=Weights("file", sha256="cd" * 32, path="/one/x.weights.h5"))
    assert artifact_key(a) == artifact_key(b)
    assert artifact_key(a) != artifact_key(c)


def test_artifact_key_needs_no_tensorflow_and_is_the_same_in_another_process() -> None:
    script = textwrap.dedent("""
        import json, sys
        import farmbench.variants.build as b
        from farmbench.variants.spec import Group, Variant, Weights
        v = Variant(Group("mobilenet_v2", 0.35, 96, False, Weights("random", seed=0)), "int8", "tflite")
        key = b.artifact_key(v)
        print(json.dumps({"key": key, "tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["tensorflow"] is False
    assert facts["keras"] is False
    assert facts["key"] == artifact_key(variant())


# --- ImageNet weights -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "width", "resolution", "status"),
    [
        ("mobilenet_v1", 0.25, 128, "published"),
        ("mobilenet_v1", 0.25, 96, "other-resolution"),
        ("mobilenet_v1", 0.3, 128, "none"),
        ("mobilenet_v2", 1.4, 224, "published"),
        ("mobilenet_v2", 1.4, 96, "none"),
        ("mobilenet_v2", 0.35, 96, "published"),
        ("mobilenet_v3_small", 0.75, 224, "published"),
        ("mobilenet_v3_large", 0.5, 224, "none"),
    ],
)
def test_imagenet_weights_status(family: str, width: float, resolution: int, status: str) -> None:
    assert imagenet_weights_status(family, width, resolution) == status


# --- memory estimate --------------------------------------------------------------------------------------------


def test_memory_estimate_grows_with_resolution_and_width() -> None:
    def mb(width: float, resolution: int) -> int:
        return estimate_build_memory_mb(Group("mobilenet_v2", width, resolution, False, RANDOM))

    assert mb(0.35, 96) < mb(0.35, 160) < mb(0.35, 224)
    assert mb(0.35, 224) < mb(0.75, 224) < mb(1.0, 224) < mb(1.4, 224)
    assert mb(0.35, 96) >= 1000  # TensorFlow alone needs about a gigabyte
