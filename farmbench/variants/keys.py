"""Cache keys: what identifies an artifact, a group's trained weights and a group build.

An artifact's key hashes everything that changes its bytes: the variant spec (with its weights), the training
recipe, the calibration set, the library versions, and the source of the code that makes the bytes
(``BUILD_SOURCES``). Scheduling, progress and CLI code are deliberately not hashed, so editing them keeps the cache.
Computing keys imports neither TensorFlow nor any converter: a fully cached build starts no worker at all.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path

from farmbench.variants import images
from farmbench.variants.spec import Group, Variant, canonical_hash

# Source files whose changes change artifact bytes: their hash is part of every key.
BUILD_SOURCES = ("models.py", "export.py", "images.py", "worker.py")
_LIBRARIES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "onnxconverter-common", "numpy",
              "ai-edge-litert")
CALIBRATION_COUNT = 128


@functools.lru_cache(maxsize=1)
def build_code_hash() -> str:
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in BUILD_SOURCES:
        digest.update(name.encode())
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in _LIBRARIES:
        candidates = [name, f"{name}-cpu"] if name == "tensorflow" else [name]
        for candidate in candidates:
            try:
                versions[name] = importlib.metadata.version(candidate)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            versions[name] = "missing"
    return versions


def weights_key(group: Group) -> str:
    from farmbench.variants.models import TRAINING_RECIPE

    return canonical_hash({
        "group": group.key_fields(), "recipe": TRAINING_RECIPE,
        "keras": library_versions()["keras"], "tensorflow": library_versions()["tensorflow"],
    })[:32]


def group_key(group: Group) -> str:
    return canonical_hash({"group": group.key_fields(), "code": build_code_hash()})[:32]


def artifact_key(variant: Variant) -> str:
    """Everything that changes an artifact's bytes: spec, weights, calibration set, libraries, build code."""
    from farmbench.variants.models import TRAINING_RECIPE

    weights = TRAINING_RECIPE if variant.group.weights.kind == "random" else None
    return canonical_hash({
        "spec": variant.spec_json(),
        "training": weights,
        "calibration": {"images_version": images.IMAGES_VERSION, "count": CALIBRATION_COUNT},
        "libraries": library_versions(),
        "build_code": build_code_hash(),
    })[:32]
