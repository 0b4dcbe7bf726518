"""Tests for farmbench.variants.images: determinism, natural-image statistics, the toy task, resampling."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import numpy as np
import pytest

from farmbench.variants import images
from farmbench.variants.images import (
    CALIBRATION_SEED,
    CLASS_NAMES,
    EVALUATION_SEED,
    NUM_CLASSES,
    calibration_images,
    center_crop_resize,
    evaluation_images,
    natural_images,
    resize_bilinear,
    synthetic_task,
)


def _spectrum_slope(image: np.ndarray) -> float:
    """Slope of log(radially averaged power) vs log(frequency), 2 .. size/4 cycles per image."""
    grey = image.astype(np.float64).mean(axis=2)
    grey -= grey.mean()
    n = grey.shape[0]
    window = np.hanning(n)
    power = np.abs(np.fft.fft2(grey * window[:, None] * window[None, :])) ** 2
    f = np.fft.fftfreq(n) * n
    radius = np.rint(np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)).astype(np.int64).ravel()
    bins = np.arange(2, n // 4)
    mean_power = np.bincount(radius, power.ravel())[bins] / np.bincount(radius)[bins]
    return float(np.polyfit(np.log(bins), np.log(mean_power), 1)[0])


def _hue_histograms(batch: np.ndarray, bins: int = 12) -> np.ndarray:
    """Per-image hue histogram weighted by saturation squared, L1-normalised: a crude colour feature."""
    x = batch.astype(np.float64) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    high, low = x.max(axis=-1), x.min(axis=-1)
    chroma = np.maximum(high - low, 1e-9)
    hue = np.where(high == g, (b - r) / chroma + 2.0, (r - g) / chroma + 4.0)
    hue = np.where(high == r, ((g - b) / chroma) % 6.0, hue)
    index = (hue / 6.0 * bins).astype(np.int64) % bins
    weight = ((high - low) / np.maximum(high, 1e-9)) ** 2
    hist = np.stack([np.bincount(i.ravel(), w.ravel(), minlength=bins) for i, w in zip(index, weight)])
    return hist / hist.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------
# Determinism and shapes


def test_same_seed_gives_identical_bytes() -> None:
    assert natural_images(4, 64, 5).tobytes() == natural_images(4, 64, 5).tobytes()
    a_images, a_labels = synthetic_task(4, 64, 5)
    b_images, b_labels = synthetic_task(4, 64, 5)
    assert a_images.tobytes() == b_images.tobytes()
    assert np.array_equal(a_labels, b_labels)


def test_first_k_of_n_are_the_first_k() -> None:
    assert np.array_equal(natural_images(3, 48, 11), natural_images(7, 48, 11)[:3])
    short_images, short_labels = synthetic_task(5, 48, 11)
    long_images, long_labels = synthetic_task(20, 48, 11)
    assert np.array_equal(short_images, long_images[:5])
    assert np.array_equal(short_labels, long_labels[:5])


def test_different_seeds_and_indices_differ() -> None:
    a, b = natural_images(3, 48, 1), natural_images(3, 48, 2)
    for i in range(3):
        assert not np.array_equal(a[i], b[i])
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(synthetic_task(3, 48, 1)[0], synthetic_task(3, 48, 2)[0])
    # The task draws from its own stream: the same seed does not reuse a natural image.
    assert not np.array_equal(synthetic_task(1, 48, 1)[0][0], a[0])


@pytest.mark.parametrize("size", [32, 96, 224, 256])
def test_dtype_shape_and_range(size: int) -> None:
    batch = natural_images(3, size, 7)
    assert batch.dtype == np.uint8
    assert batch.shape == (3, size, size, 3)
    spread = batch.reshape(3, -1).max(axis=1).astype(int) - batch.reshape(3, -1).min(axis=1)
    assert (spread >= (150 if size < 96 else 200)).all(), spread  # contrast-stretched
    task_images, labels = synthetic_task(3, size, 7)
    assert task_images.dtype == np.uint8 and task_images.shape == (3, size, size, 3)
    assert labels.dtype == np.int64 and labels.shape == (3,)


def test_empty_and_invalid_arguments() -> None:
    assert natural_images(0, 32, 1).shape == (0, 32, 32, 3)
    images_, labels = synthetic_task(0, 32, 1)
    assert images_.shape == (0, 32, 32, 3) and labels.shape == (0,)
    with pytest.raises(ValueError):
        natural_images(-1, 32, 1)
    with pytest.raises(ValueError):
        natural_images(1, 0, 1)
    with pytest.raises(ValueError):
        resize_bilinear(np.zeros((8, 8, 3)), 4)
    with pytest.raises(ValueError):
        center_crop_resize(np.zeros((1, 8, 8, 3)), 4, crop_fraction=0.0)


def test_same_scene_at_every_resolution() -> None:
    big = natural_images(2, 256, 3)
    small = natural_images(2, 64, 3)
    shrunk = resize_bilinear(big, 64)
    # Only the sensor noise (drawn at the output size) and rounding differ.
    assert np.abs(shrunk - small).mean() < 3.0
    for a, b in zip(shrunk, small):
        assert np.corrcoef(a.ravel(), b.astype(np.float64).ravel())[0, 1] > 0.98


# ---------------------------------------------------------------------------------------------------
# Natural-image statistics


def test_images_are_not_flat_and_have_natural_spectra() -> None:
    batch = natural_images(12, 224, 21)
    stds = batch.reshape(12, -1).std(axis=1)
    assert (stds > 20).all(), stds
    slopes = np.array([_spectrum_slope(image) for image in batch])
    assert ((slopes > -3.5) & (slopes < -1.2)).all(), slopes
    # Colour channels are correlated (mixed from shared fields), not independent per-channel noise.
    for image in batch[:4]:
        corr = np.corrcoef(image.reshape(-1, 3).T.astype(np.float64))
        assert corr[0, 1] > 0.3 and corr[1, 2] > 0.3, corr


def test_calibration_and_evaluation_sets() -> None:
    calibration = calibration_images(48, count=8)
    evaluation = evaluation_images(48, count=8)
    assert calibration.shape == evaluation.shape == (8, 48, 48, 3)
    assert np.array_equal(calibration, natural_images(8, 48, CALIBRATION_SEED))
    assert np.array_equal(evaluation, natural_images(8, 48, EVALUATION_SEED))
    for a in calibration:
        for b in evaluation:
            assert not np.array_equal(a, b)
    assert calibration_images(48).shape[0] == 128 and evaluation_images(48).shape[0] == 64


# ---------------------------------------------------------------------------------------------------
# Synthetic task


def test_labels_cover_all_classes_and_are_balanced() -> None:
    _, labels = synthetic_task(256, 16, 4)
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    assert (counts > 0).all(), counts
    assert counts.min() >= 12 and counts.max() <= 20, counts
    assert len(CLASS_NAMES) == NUM_CLASSES == 16


def test_hue_is_learnable_from_a_colour_histogram() -> None:
    """A nearest-centroid classifier on hue histograms beats chance (0.25) clearly: labels match pixels."""
    train_x, train_y = synthetic_task(192, 64, 1)
    test_x, test_y = synthetic_task(96, 64, 2)
    train_f, test_f = _hue_histograms(train_x), _hue_histograms(test_x)
    hue_train, hue_test = train_y % 4, test_y % 4
    centroids = np.stack([train_f[hue_train == k].mean(axis=0) for k in range(4)])
    predicted = ((test_f[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    accuracy = float((predicted == hue_test).mean())
    print("hue nearest-centroid accuracy: %.2f (chance 0.25)" % accuracy)
    assert accuracy > 0.6


# ---------------------------------------------------------------------------------------------------
# Resampling


@pytest.mark.parametrize("shape,size", [((2, 17, 23, 3), 40), ((1, 64, 48, 1), 9), ((1, 30, 30, 3), 30)])
def test_resize_keeps_a_constant_image_constant(shape: tuple, size: int) -> None:
    out = resize_bilinear(np.full(shape, 37.5), size)
    assert out.dtype == np.float32 and out.shape == (shape[0], size, size, shape[3])
    assert np.allclose(out, 37.5, atol=1e-4)
    assert np.allclose(resize_bilinear(np.full(shape, 200, dtype=np.uint8), size), 200.0, atol=1e-3)


def test_resize_keeps_a_ramp_a_ramp_with_half_pixel_centres() -> None:
    ramp = np.broadcast_to(np.arange(64, dtype=np.float64)[None, None, :, None], (1, 64, 64, 2))
    # Downscale by 2: output pixel j is centred on input coordinate 2j + 0.5 (between pixels 2j, 2j+1).
    down = resize_bilinear(ramp, 32)[0, :, :, 0]
    assert np.allclose(down[:, 2:-2], (2.0 * np.arange(32) + 0.5)[None, 2:-2], atol=1e-4)
    # Upscale by 2: output pixel j samples input coordinate (j + 0.5) / 2 - 0.5; edges clamp.
    up = resize_bilinear(ramp[:, :16, :16], 32)[0, :, :, 0]
    expected = np.clip((np.arange(32) + 0.5) / 2.0 - 0.5, 0.0, 15.0)
    assert np.allclose(up, expected[None, :], atol=1e-4)
    # Same along the other axis.
    up_rows = resize_bilinear(np.ascontiguousarray(ramp[:, :16, :16].transpose(0, 2, 1, 3)), 32)[0, :, :, 0]
    assert np.allclose(up_rows, expected[:, None], atol=1e-4)


def test_downscaling_is_antialiased() -> None:
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    batch = np.repeat(checker[None, :, :, None], 3, axis=3)
    out = resize_bilinear(batch, 16)
    # Without antialiasing every output pixel would land on one input pixel: all 0 or all 255.
    assert np.allclose(out[:, 1:-1, 1:-1], 127.5, atol=0.01), (out.min(), out.max())
    assert np.allclose(out, 127.5, atol=1.0)  # border pixels see a clipped, renormalised filter


def test_center_crop_resize() -> None:
    frame = np.zeros((2, 128, 128, 3), dtype=np.uint8)
    frame[:, 8:120, 8:120] = 200  # exactly the central 87.5%
    out = center_crop_resize(frame, 56)
    assert out.dtype == np.float32 and out.shape == (2, 56, 56, 3)
    assert np.allclose(out, 200.0)
    assert center_crop_resize(np.zeros((1, 100, 140, 3)), 32).shape == (1, 32, 32, 3)


# ---------------------------------------------------------------------------------------------------
# Portability and speed


def test_module_imports_only_stdlib_and_numpy_in_python38_syntax() -> None:
    source = Path(images.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "functools", "math", "typing", "numpy"}, imported


def test_timing_128_images_at_224() -> None:
    natural_images(1, 224, 0)  # warm the caches
    start = time.perf_counter()
    natural_images(128, 224, 1)
    elapsed_s = time.perf_counter() - start
    print("natural_images(128, 224): %.2f s" % elapsed_s)
