"""What a model variant is, how a grid expands, and the stable keys that name variants and artifacts.

A *variant* is one file farmbench benchmarks: (family, width multiplier, input resolution, quantisation, format)
plus the weights it was built from. Variants that share (family, width, resolution, minimalistic, weights) form a
*group*: the Keras model is built (and, for random weights, trained) once per group and every quantisation mode
and format of the group is derived from it, because building the model is most of the cost.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from farmbench.errors import UsageError

FAMILIES: tuple[str, ...] = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
QUANT_MODES: tuple[str, ...] = ("fp32", "fp16", "dynamic-int8", "int8", "int8-io")
FORMATS: tuple[str, ...] = ("tflite", "onnx")
MIN_RESOLUTION = 32

# Width multipliers and resolutions that Keras publishes ImageNet weights for (keras.applications sources).
# V1 and V2 fall back to the 224 weights, with a warning, at other resolutions; V3 weights were trained at 224
# and load at any resolution. Anything else must use random or user weights.
IMAGENET_WEIGHTS: dict[str, tuple[tuple[float, ...], tuple[int, ...]]] = {
    "mobilenet_v1": ((0.25, 0.5, 0.75, 1.0), (128, 160, 192, 224)),
    "mobilenet_v2": ((0.35, 0.5, 0.75, 1.0, 1.3, 1.4), (96, 128, 160, 192, 224)),
    "mobilenet_v3_small": ((0.75, 1.0), (224,)),
    "mobilenet_v3_large": ((0.75, 1.0), (224,)),
}
# V2's two widest multipliers exist only at 224.
_V2_WIDE_ONLY_224 = (1.3, 1.4)


def imagenet_weights_status(family: str, width: float, resolution: int) -> str:
    """'published' (exact weights exist), 'other-resolution' (Keras loads weights trained at another size),
    or 'none' (no ImageNet weights for this width)."""
    widths, resolutions = IMAGENET_WEIGHTS[family]
    if not any(abs(width - w) < 1e-9 for w in widths):
        return "none"
    if family == "mobilenet_v2" and width in _V2_WIDE_ONLY_224 and resolution != 224:
        return "none"
    if resolution in resolutions:
        return "published"
    return "other-resolution"


def format_width(width: float) -> str:
    """0.35 -> '0.35', 1.0 -> '1.0': the shortest text that round-trips, for names and keys."""
    text = repr(float(width))
    return text


@dataclass(frozen=True, order=True)
class Weights:
    """Where a group's weights come from.

    kind: 'random' (seeded init + a short synthetic training run, see variants.models), 'imagenet', or 'file'.
    seed: for 'random'. sha256/path: for 'file' (the hash goes into cache keys, the path does not).
    """

    kind: str
    seed: int = 0
    sha256: str = ""
    path: str = ""

    def key_fields(self) -> dict[str, object]:
        if self.kind == "random":
            return {"kind": "random", "seed": self.seed}
        if self.kind == "file":
            return {"kind": "file", "sha256": self.sha256}
        return {"kind": self.kind}

    def label(self) -> str:
        if self.kind == "random":
            return f"random:{self.seed}"
        if self.kind == "file":
            return f"file:{self.sha256[:12]}"
        return self.kind


@dataclass(frozen=True, order=True)
class Group:
    """A Keras model that several variants derive from."""

    family: str
    width: float
    resolution: int
    minimalistic: bool
    weights: Weights

    def name(self) -> str:
        mini = "-min" if self.minimalistic else ""
        return f"{self.family}{mini}_a{format_width(self.width)}_r{self.resolution}"

    def key_fields(self) -> dict[str, object]:
        return {
            "family": self.family,
            "width": float(self.width),
            "resolution": int(self.resolution),
            "minimalistic": bool(self.minimalistic),
            "weights": self.weights.key_fields(),
        }


@dataclass(frozen=True, order=True)
class Variant:
    """One artifact to build: a group, a quantisation mode and a format."""

    group: Group
    quant: str
    format: str

    @property
    def family(self) -> str:
        return self.group.family

    @property
    def width(self) -> float:
        return self.group.width

    @property
    def resolution(self) -> int:
        return self.group.resolution

    def name(self) -> str:
        """Human-readable and unique within a sweep, e.g. 'mobilenet_v2_a0.35_r96_int8.tflite'."""
        return f"{self.group.name()}_{self.quant}.{self.format}"

    def spec_json(self) -> dict[str, object]:
        """The variant spec as stored in manifests and the results database."""
        return {**self.group.key_fields(), "quant": self.quant, "format": self.format}


def canonical_hash(obj: object) -> str:
    """sha256 of the canonical JSON of obj (sorted keys, no whitespace): stable across runs and machines."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(data).hexdigest()


def validate_group(family: str, width: float, resolution: int, minimalistic: bool) -> None:
    if family not in FAMILIES:
        raise UsageError(f"unknown family {family!r}", hint=f"choose from {', '.join(FAMILIES)}")
    if not width > 0:
        raise UsageError(f"width multiplier must be > 0, got {width}")
    if resolution < MIN_RESOLUTION:
        raise UsageError(f"resolution must be >= {MIN_RESOLUTION}, got {resolution}")
    if minimalistic and not family.startswith("mobilenet_v3"):
        raise UsageError(f"minimalistic applies to mobilenet_v3_* only, not {family}")


def expand_grid(
    families: Sequence[str],
    widths: Sequence[float],
    resolutions: Sequence[int],
    quants: Sequence[str],
    formats: Sequence[str],
    weights: Weights,
    minimalistic: bool = False,
) -> list[Variant]:
    """The cross product, deduplicated and in a stable order (family, width, resolution, quant, format).

    ``minimalistic`` applies to the V3 families only; other families in the same grid are built as usual.
    """
    for quant in quants:
        if quant not in QUANT_MODES:
            raise UsageError(f"unknown quantisation {quant!r}", hint=f"choose from {', '.join(QUANT_MODES)}")
    for fmt in formats:
        if fmt not in FORMATS:
            raise UsageError(f"unknown format {fmt!r}", hint=f"choose from {', '.join(FORMATS)}")
    seen: set[Variant] = set()
    out: list[Variant] = []
    for family, width, resolution, quant, fmt in itertools.product(
        families, widths, resolutions, quants, formats
    ):
        mini = minimalistic and family.startswith("mobilenet_v3")
        validate_group(family, float(width), int(resolution), mini)
        group = Group(family, float(width), int(resolution), mini, weights)
        variant = Variant(group, quant, fmt)
        if variant not in seen:
            seen.add(variant)
            out.append(variant)
    order = {name: i for i, name in enumerate(FAMILIES)}
    qorder = {name: i for i, name in enumerate(QUANT_MODES)}
    forder = {name: i for i, name in enumerate(FORMATS)}
    out.sort(key=lambda v: (order[v.family], v.width, v.resolution, v.group.minimalistic,
                            qorder[v.quant], forder[v.format]))
    return out


def groups_of(variants: Iterable[Variant]) -> dict[Group, list[Variant]]:
    """Variants bucketed by the Keras model they derive from, in first-seen order."""
    buckets: dict[Group, list[Variant]] = {}
    for variant in variants:
        buckets.setdefault(variant.group, []).append(variant)
    return buckets


def spec_dict(variant: Variant) -> dict[str, object]:
    return asdict(variant)
