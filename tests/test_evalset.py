"""Evaluation sets for drift: the built-in images, a user's ImageFolder, and the cached host reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farmbench.errors import UsageError
from farmbench.variants.evalset import builtin_evalset, image_folder_evalset, load_evalset, reference_outputs
from tests.conftest import require_module


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (80, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_builtin_set_is_deterministic_and_varied() -> None:
    first, second = builtin_evalset(64, 8), builtin_evalset(64, 8)
    assert first.pixels.shape == (8, 64, 64, 3) and first.pixels.dtype == np.uint8
    assert first.digest == second.digest and first.labels is None
    assert len({img.tobytes() for img in first.pixels}) == 8
    assert builtin_evalset(64, 9).digest != first.digest


def test_image_folder_with_class_folders_gives_labels(tmp_path: Path) -> None:
    write_image(tmp_path / "cat" / "b.png", (200, 10, 10))
    write_image(tmp_path / "cat" / "a.jpg", (190, 20, 20))
    write_image(tmp_path / "dog" / "c.png", (10, 10, 200), size=(50, 90))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    evalset = image_folder_evalset(tmp_path, 32)
    assert evalset.files == ("cat/a.jpg", "cat/b.png", "dog/c.png")
    assert evalset.labels is not None and evalset.labels.tolist() == [0, 0, 1]
    assert evalset.class_names == ("cat", "dog")
    assert evalset.pixels.shape == (3, 32, 32, 3)
    # Solid colours survive the crop and resize.
    assert evalset.pixels[2, 16, 16].tolist() == [10, 10, 200]


def test_numeric_class_folders_are_the_models_class_indices(tmp_path: Path) -> None:
    write_image(tmp_path / "281" / "x.png", (1, 2, 3))
    write_image(tmp_path / "7" / "y.png", (4, 5, 6))
    evalset = image_folder_evalset(tmp_path, 16)
    assert evalset.labels is not None and sorted(evalset.labels.tolist()) == [7, 281]


def test_flat_folder_is_unlabelled_and_count_keeps_the_first(tmp_path: Path) -> None:
    for i in range(5):
        write_image(tmp_path / f"{i}.png", (i * 40, 0, 0))
    evalset = load_evalset(16, directory=tmp_path, count=3)
    assert evalset.labels is None and evalset.count == 3 and evalset.files == ("0.png", "1.png", "2.png")


def test_bad_folders_and_images_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        image_folder_evalset(tmp_path / "missing", 16)
    with pytest.raises(UsageError, match="no images"):
        image_folder_evalset(tmp_path, 16)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match="broken.png"):
        image_folder_evalset(tmp_path, 16)


@pytest.mark.slow
def test_reference_outputs_are_cached_by_model_and_set(tmp_path: Path) -> None:
    require_module("tensorflow")
    import tensorflow as tf

    # A tiny real TFLite model: per-image channel means through a dense layer and a softmax.
    model = tf.keras.Sequential([tf.keras.Input((16, 16, 3)), tf.keras.layers.GlobalAveragePooling2D(),
                                 tf.keras.layers.Dense(4, activation="softmax")])
    path = tmp_path / "m.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    evalset = builtin_evalset(16, 4)
    inputs = evalset.pixels.astype(np.float32) / 255.0
    first = reference_outputs(path, "a" * 64, inputs, evalset.digest, tmp_path / "cache")
    cached = list((tmp_path / "cache" / "references").glob("*.npy"))
    assert len(cached) == 1 and first.shape == (4, 4)
    np.testing.assert_allclose(first.sum(axis=1), 1.0, atol=1e-5)
    path.write_bytes(b"")  # the cached outputs are used: the model is not loaded again
    np.testing.assert_array_equal(reference_outputs(path, "a" * 64, inputs, evalset.digest, tmp_path / "cache"), first)
