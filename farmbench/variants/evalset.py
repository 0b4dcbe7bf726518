"""The inputs accuracy drift is measured on, and the fp32 reference outputs on them.

Two sources:

* the built-in set: ``count`` (default 64) procedural natural images (:func:`farmbench.variants.images.evaluation_images`,
  seed disjoint from the int8 calibration set), made at the model's resolution; no labels.
* a user's folder. ImageFolder layout (``DIR/<class>/<image>``) gives labels, so top-1/top-5 accuracy too: class
  folders named by integers are those class indices of the model's output (``DIR/281/cat.jpg`` is class 281);
  otherwise classes are numbered in sorted folder-name order, as torchvision's ImageFolder does. Images directly in
  ``DIR`` (no class folders) are an unlabelled set. Files are read in sorted order, decoded with Pillow, converted
  to RGB and given the standard ImageNet evaluation preprocessing: the central square of 87.5% of the shorter side,
  resized to the model's resolution (antialiased bilinear); then the family's scaling
  (:func:`farmbench.variants.models.preprocess`).

The reference for a variant is its fp32 twin (same family, width, resolution, weights) run on the host over the
same inputs, cached under ``<cache>/references/`` by the twin's sha256 and the set's digest.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farmbench.errors import CacheError, UsageError
from farmbench.variants.images import center_crop_resize, evaluation_images

DEFAULT_EVAL_COUNT = 64
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".gif")


@dataclass(frozen=True)
class EvalSet:
    """Evaluation images at one resolution. ``pixels`` uint8 (N, size, size, 3); ``labels`` int64 (N,) or None."""

    source: str  # "built-in" or the folder
    pixels: np.ndarray
    labels: np.ndarray | None
    class_names: tuple[str, ...]
    files: tuple[str, ...]  # relative paths for a folder, empty for the built-in set

    @property
    def count(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def digest(self) -> str:
        """sha256 of the pixels and labels: a reference cached for one set is never used for another."""
        h = hashlib.sha256(self.pixels.tobytes())
        h.update(repr(self.pixels.shape).encode())
        if self.labels is not None:
            h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "count": self.count, "labelled": self.labels is not None,
                "classes": len(self.class_names), "digest": self.digest}


def builtin_evalset(size: int, count: int = DEFAULT_EVAL_COUNT) -> EvalSet:
    return EvalSet("built-in", evaluation_images(size, count), None, (), ())


def image_folder_evalset(directory: str | Path, size: int, count: int | None = None) -> EvalSet:
    """Load a user's image folder (see the module docstring). ``count`` keeps the first N files in sorted order."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise UsageError(f"evaluation image folder {root} does not exist",
                         hint="give a folder of images, or DIR/<class>/<image> for labelled accuracy")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries: list[tuple[Path, int | None]] = []
    class_names: tuple[str, ...] = ()
    if class_dirs:
        class_names = tuple(p.name for p in class_dirs)
        numeric = all(name.isdigit() for name in class_names)
        for position, folder in enumerate(class_dirs):
            label = int(folder.name) if numeric else position
            entries += [(f, label) for f in _images_in(folder)]
    else:
        entries = [(f, None) for f in _images_in(root)]
    if count is not None:
        entries = entries[:count]
    if not entries:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}",
                         hint="put images in DIR or in DIR/<class>/ folders")
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("reading an image folder needs Pillow", hint="pip install pillow") from None
    pixels = np.empty((len(entries), size, size, 3), dtype=np.uint8)
    for index, (path, _) in enumerate(entries):
        try:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read evaluation image {path}: {exc}",
                             hint="remove or fix the file; every file with an image suffix is used") from exc
        resized = center_crop_resize(rgb[None], size)[0]
        pixels[index] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    labels = None
    if class_dirs:
        labels = np.array([label for _, label in entries], dtype=np.int64)
    return EvalSet(str(root), pixels, labels, class_names, tuple(str(p.relative_to(root)) for p, _ in entries))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_evalset(size: int, *, directory: str | Path | None = None, count: int | None = None) -> EvalSet:
    if directory:
        return image_folder_evalset(directory, size, count)
    return builtin_evalset(size, count or DEFAULT_EVAL_COUNT)


def reference_outputs(model_path: Path, model_sha256: str, inputs: np.ndarray, inputs_digest: str,
                      cache_dir: Path) -> np.ndarray:
    """The host's outputs of ``model_path`` on ``inputs`` (float32, preprocessed), cached by model and set."""
    from farmbench.variants.hostrun import HostModel

    key = hashlib.sha256(f"{model_sha256}:{inputs_digest}".encode()).hexdigest()[:24]
    path = Path(cache_dir) / "references" / f"{key}.npy"
    if path.is_file():
        try:
            cached: np.ndarray = np.load(path, allow_pickle=False)
            if cached.shape[0] == inputs.shape[0]:
                return cached
        except (OSError, ValueError):
            pass  # a broken cache file is recomputed and replaced
    outputs = HostModel(Path(model_path)).run(inputs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
        with temporary.open("wb") as handle:
            np.save(handle, outputs, allow_pickle=False)
        os.replace(temporary, path)
    except OSError as exc:
        raise CacheError(f"cannot write the reference outputs to {path}: {exc}",
                         hint="check free space and permissions of the cache directory") from exc
    return outputs


__all__ = ["DEFAULT_EVAL_COUNT", "EvalSet", "builtin_evalset", "image_folder_evalset", "load_evalset",
           "reference_outputs"]
