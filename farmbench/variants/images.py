"""Procedural, seeded, natural-looking images: calibration data, evaluation data and a toy training task.

What and why
------------
farmbench runs on machines with no internet, so it cannot download ImageNet or any other data set.
Quantised models still need representative inputs, though: int8 calibration picks activation ranges
from them, and accuracy drift (int8 / fp16 output vs the fp32 reference) is only meaningful on inputs
whose statistics resemble real photographs. Uniform noise or flat images exercise none of the ranges a
real camera frame does. This module *makes* such inputs from a seed instead:

* :func:`natural_images` -- scenes with photograph-like statistics. Each scene is drawn at
  ``CANONICAL_SIZE`` pixels and then resized (antialiased) to the requested size, so one seed gives the
  same scene at every resolution. A scene is:

  1. a background of coloured 1/f^beta noise (beta uniform in [1.6, 2.2] per image; natural images have
     beta near 2). Three Gaussian noise fields (FFT-shaped) are mixed into RGB by a random 3x3 matrix:
     a full-resolution luminance field along a positive "tint" (the scene's colour cast), a coarser
     field along a palette axis from the base colour towards a second, usually analogous, colour (moss
     to bark, sky to cloud), and a faint random chroma field. So the channels are correlated like real
     surfaces, not per-channel confetti. Sometimes a second base colour below a wavy "horizon";
  2. 2-6 objects -- soft-edged ellipses, rotated rectangles, triangles, thin lines and stripe/checker
     textured patches -- with random colour, shading and texture, drawn in order so later ones occlude
     earlier ones and some run off the frame;
  3. a smooth illumination gradient and mild vignette, a small Gaussian blur (sigma 0.3-0.8 px),
     a contrast stretch mapping the 0.5th..99.5th percentiles onto 6..249, and mild sensor noise
     (std 0.5-2.5 grey levels, drawn at the output size: it belongs to the final pixel grid).

  Radially averaged power spectra fall as roughly f^-2 to f^-2.7, like photographs (the tests check
  the slope). Speed: roughly 1 s for 128 images at 224 px on one core; the resize is done in small
  banded blocks, so OpenBLAS keeps each product on one thread (threaded BLAS stalls on busy boards).

* :func:`calibration_images` / :func:`evaluation_images` -- ``natural_images`` with fixed seeds
  (:data:`CALIBRATION_SEED`, :data:`EVALUATION_SEED`). The same sets are used for every variant, so
  calibration differences between variants come from the models, not the data. The two seeds differ,
  so the evaluation images are never the calibration images.

* :func:`synthetic_task` -- a small labelled task (:data:`NUM_CLASSES` = 16 = 4 shapes x 4 hue
  families, ``label = shape * 4 + hue``; names in :data:`CLASS_NAMES`) used to train randomly
  initialised MobileNets for a few hundred steps so that their outputs depend on the input (a plain random
  init gives nearly constant outputs, which makes drift numbers meaningless). One dominant object
  (25-55% of the image side) on a desaturated natural background, plus 0-2 small neutral-coloured
  distractors. Colour is easy to learn, shape is harder; both are learnable by a small CNN.

* :func:`resize_bilinear` and :func:`center_crop_resize` -- the resampling used above, also usable as
  the standard ImageNet-style eval preprocessing (central 87.5% crop, then resize).

Seeds and determinism
---------------------
Image ``i`` of ``natural_images(count, size, seed)`` comes only from ``np.random.default_rng([seed, i])``,
so the first k images of a set of n are the first k images of any larger set, and images can be made
in any order or in parallel. ``synthetic_task`` uses ``default_rng([seed, i, 1])`` for image ``i`` (a
different stream, so a task never repeats a natural image with the same seed) and balanced labels: each
block of 16 consecutive indices holds every class once, in an order drawn from
``default_rng([seed, block, 2])``. Same seed, same numpy version: identical bytes (the stretch is measured
at ``CANONICAL_SIZE``, so pixel levels also agree across output sizes). The pipeline runs in
float64 and rounds once at the end, so other platforms (x86 vs ARM, different SIMD paths) are expected
to give the same bytes too, but that is not guaranteed: when a device must see exactly the host's
pixels, ship the arrays (``.npy``) instead of regenerating them there.

IMAGES_VERSION
--------------
:data:`IMAGES_VERSION` is part of artifact cache keys (calibrated models, reference outputs). Bump it
whenever generated pixels or labels change for any given ``(seed, index, size)``: any change to the
drawing code, parameter ranges, the order of random draws, the fixed seeds, ``CANONICAL_SIZE``, the
class layout, or the resize filter.

This module must stay importable on small edge boards: standard library and numpy only, Python 3.8
syntax.
"""

from __future__ import annotations

import functools
import math

import numpy as np

IMAGES_VERSION = 1
CANONICAL_SIZE = 256

CALIBRATION_SEED = 20261
EVALUATION_SEED = 20262

NUM_CLASSES = 16
SHAPE_NAMES = ("ellipse", "rectangle", "triangle", "striped_square")
HUE_NAMES = ("red", "green", "blue", "yellow")
CLASS_NAMES = tuple(s + "/" + h for s in SHAPE_NAMES for h in HUE_NAMES)

# Hue families for the task, as (centre, half-width) in degrees on the HSV wheel.
_HUE_FAMILIES = ((0.0, 12.0), (120.0, 22.0), (222.0, 18.0), (52.0, 8.0))

_TASK_STREAM = 1
_LABEL_STREAM = 2

# ----------------------------------------------------------------------------------------------------
# Resampling


@functools.lru_cache(maxsize=64)
def _resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 weights of a triangle filter, half-pixel centres.

    When downscaling, the triangle is stretched by the scale factor (like PIL's BILINEAR and TF's
    ``antialias=True``), so every input pixel contributes and high frequencies are averaged away instead
    of aliasing. Rows are normalised, which clamps to the edge at the borders.
    """
    scale = in_size / out_size
    support = max(scale, 1.0)
    centres = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    pixels = np.arange(in_size, dtype=np.float64) + 0.5
    weights = np.clip(1.0 - np.abs(pixels[None, :] - centres[:, None]) / support, 0.0, None)
    weights /= weights.sum(axis=1, keepdims=True)
    weights.setflags(write=False)
    return weights


# Upper bound on m * n * k of one matmul in _resize_planar. OpenBLAS picks its thread count from that
# product and runs small ones on one thread; threaded ones stall badly when the cores are busy (on a
# 2-core machine at load 2, one dense 256 -> 224 resize took 28 ms instead of 1.5 ms).
_GEMM_BUDGET = 1 << 17


def _resize_planar(planes: np.ndarray, rows: np.ndarray, cols: np.ndarray, widen: int = 0) -> np.ndarray:
    """Apply ``rows`` (out_h, H) and ``cols`` (out_w, W) to the last two axes of ``planes`` (..., H, W).

    Both matrices must have the non-zero pattern of ``_resize_matrix`` widened by ``widen`` columns
    on each side. They are banded (a few taps per output pixel), so each block of output rows is a
    small matmul over only the input rows it touches: several times fewer flops than a dense product.
    """
    in_h, in_w = planes.shape[-2:]
    out_h, out_w = rows.shape[0], cols.shape[0]
    half = np.empty(planes.shape[:-2] + (out_h, in_w), dtype=planes.dtype)
    for r0, r1, c0, c1 in _bands(in_h, out_h, widen, in_w):
        half[..., r0:r1, :] = np.matmul(rows[r0:r1, c0:c1], planes[..., c0:c1, :])
    out = np.empty(planes.shape[:-2] + (out_h, out_w), dtype=planes.dtype)
    for r0, r1, c0, c1 in _bands(in_w, out_w, widen, out_h):
        out[..., r0:r1] = np.matmul(half[..., c0:c1], cols[r0:r1, c0:c1].T)
    return out


@functools.lru_cache(maxsize=256)
def _bands(in_size: int, out_size: int, widen: int, other: int) -> tuple[tuple[int, int, int, int], ...]:
    """Blocks (r0, r1, c0, c1): output rows r0..r1 only read input c0..c1; each block within budget."""
    nonzero = _resize_matrix(in_size, out_size) != 0
    first = np.maximum(nonzero.argmax(axis=1) - widen, 0)
    last = np.minimum(in_size - nonzero[:, ::-1].argmax(axis=1) + widen, in_size)
    blocks: list[tuple[int, int, int, int]] = []
    r0 = 0
    while r0 < out_size:
        r1 = r0 + 1  # first[] and last[] are non-decreasing, so a block's span is last[r1-1] - first[r0]
        while r1 < out_size and (r1 + 1 - r0) * (last[r1] - first[r0]) * other <= _GEMM_BUDGET:
            r1 += 1
        blocks.append((r0, r1, int(first[r0]), int(last[r1 - 1])))
        r0 = r1
    return tuple(blocks)


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(N, H, W, C)`` images of any dtype to float32 ``(N, size, size, C)``.

    Bilinear with half-pixel centres (pixel ``i`` is centred at ``i + 0.5``); when downscaling the
    triangle filter is widened by the scale factor, i.e. antialiased like PIL or TF ``antialias=True``.
    Values are not rescaled: uint8 in gives float32 in [0, 255] out.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError("resize_bilinear expects (N, H, W, C) images, got shape %r" % (images.shape,))
    size = _check_size(size)
    work = np.float64 if images.dtype == np.float64 else np.float32
    n, h, w, c = images.shape
    planes = np.empty((n, c, h, w), dtype=work)
    planes[...] = images.transpose(0, 3, 1, 2)  # channels-first so both passes are plain matmuls
    rows = _resize_matrix(h, size).astype(work)
    cols = _resize_matrix(w, size).astype(work)
    out = _resize_planar(planes, rows, cols).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(out, dtype=np.float32)


def center_crop_resize(images: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
    """Central crop then resize, the standard ImageNet eval preprocessing; float32 ``(N, size, size, C)``.

    The crop is the central square whose side is ``crop_fraction`` of the shorter image side (as
    torchvision's Resize(size / crop_fraction) + CenterCrop(size), up to resampling details).
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError("center_crop_resize expects (N, H, W, C) images, got shape %r" % (images.shape,))
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError("crop_fraction must be in (0, 1], got %r" % (crop_fraction,))
    h, w = images.shape[1], images.shape[2]
    side = max(1, int(round(min(h, w) * crop_fraction)))
    top, left = (h - side) // 2, (w - side) // 2
    return resize_bilinear(images[:, top : top + side, left : left + side, :], size)


# ----------------------------------------------------------------------------------------------------
# Public generators


def natural_images(count: int, size: int, seed: int) -> np.ndarray:
    """``count`` natural-looking uint8 RGB images ``(count, size, size, 3)``; image i from ``(seed, i)``."""
    count, size = _check_count(count), _check_size(size)
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        _finish(_natural_scene(rng), rng, size, out[index])
    return out


def calibration_images(size: int, count: int = 128) -> np.ndarray:
    """The int8 calibration set: ``natural_images(count, size, CALIBRATION_SEED)``, same for every variant."""
    return natural_images(count, size, CALIBRATION_SEED)


def evaluation_images(size: int, count: int = 64) -> np.ndarray:
    """The accuracy-drift set: ``natural_images(count, size, EVALUATION_SEED)``, disjoint from calibration."""
    return natural_images(count, size, EVALUATION_SEED)


def synthetic_task(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A labelled toy task: uint8 images ``(count, size, size, 3)`` and int64 labels in [0, NUM_CLASSES).

    ``label = shape * 4 + hue`` with shapes :data:`SHAPE_NAMES` and hue families :data:`HUE_NAMES`
    (see :data:`CLASS_NAMES`). Labels are balanced: every 16 consecutive indices hold each class once.
    """
    count, size = _check_count(count), _check_size(size)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty((count,), dtype=np.int64)
    order = np.arange(NUM_CLASSES)
    for index in range(count):
        block, slot = divmod(index, NUM_CLASSES)
        if slot == 0:
            order = np.random.default_rng([seed, block, _LABEL_STREAM]).permutation(NUM_CLASSES)
        label = int(order[slot])
        rng = np.random.default_rng([seed, index, _TASK_STREAM])
        _finish(_task_scene(rng, label), rng, size, images[index])
        labels[index] = label
    return images, labels


def _check_count(count: int) -> int:
    if int(count) != count or count < 0:
        raise ValueError("count must be a non-negative integer, got %r" % (count,))
    return int(count)


def _check_size(size: int) -> int:
    if int(size) != size or size < 1:
        raise ValueError("size must be a positive integer, got %r" % (size,))
    return int(size)


# ----------------------------------------------------------------------------------------------------
# Scene drawing. Images are float64 channel-planes (3, n, n) at CANONICAL_SIZE, values roughly in
# [0, 1], pixel centres at i + 0.5. The order of rng draws below defines the pixels: changing it (or any
# range) means bumping IMAGES_VERSION.

_CHROMA_SIZE = 64  # chroma varies more slowly than luminance in real scenes, so it is made coarse


@functools.lru_cache(maxsize=4)
def _log_freq2(n: int) -> np.ndarray:
    """log(fx^2 + fy^2) on the rfft2 grid, in cycles per image; +inf at DC so its amplitude becomes 0."""
    fy = np.fft.fftfreq(n) * n
    fx = np.fft.rfftfreq(n) * n
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2
    f2[0, 0] = 1.0
    out = np.log(f2)
    out[0, 0] = np.inf
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=4)
def _grid(n: int) -> np.ndarray:
    grid = np.arange(n, dtype=np.float64) + 0.5
    grid.setflags(write=False)
    return grid


def _noise_fields(rng: np.random.Generator, n: int, count: int, beta: float) -> np.ndarray:
    """``count`` independent zero-mean, unit-std Gaussian fields (count, n, n) with power ~ f^-beta."""
    # Complex white noise (real and imaginary parts drawn as adjacent float64 pairs), shaped.
    spectrum = rng.standard_normal((count, n, n // 2 + 1, 2)).view(np.complex128)[..., 0]
    spectrum *= np.exp(_log_freq2(n) * (-beta / 4.0))  # amplitude ~ f^(-beta/2), so power ~ f^-beta
    fields = np.fft.irfft2(spectrum, s=(n, n), axes=(-2, -1))
    fields /= fields.std(axis=(1, 2), keepdims=True)
    return fields


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (h in turns, s and v in [0, 1]) as an RGB float64 vector."""
    h = (h % 1.0) * 6.0
    i = int(h) % 6
    f = h - int(h)
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    return np.array(((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))[i])


def _rotation(rng: np.random.Generator) -> tuple[float, float]:
    theta = rng.uniform(0.0, 2.0 * math.pi)
    return math.cos(theta), math.sin(theta)


def _background(rng: np.random.Generator, n: int, saturation_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Coloured 1/f noise background (3, n, n) and a texture field (n, n) for objects to use."""
    beta = rng.uniform(1.6, 2.2)
    luminance = _noise_fields(rng, n, 1, beta)[0]
    chroma = _noise_fields(rng, _CHROMA_SIZE, 2, beta + 0.3)
    hue = rng.random()
    base = _hsv(hue, rng.uniform(0.05, 0.5) * saturation_scale, rng.uniform(0.3, 0.7))
    tint = 0.55 + 0.45 * rng.random(3)  # positive: luminance-like, with the scene's colour cast
    tint *= rng.uniform(0.09, 0.2) * math.sqrt(3.0) / np.linalg.norm(tint)
    # Real scenes vary mostly along one palette axis (moss to bark, sky to cloud), plus a little else.
    # Mostly an analogous hue, as in foliage or stone; sometimes anything.
    mate_hue = hue + rng.uniform(-0.15, 0.15) if rng.random() < 0.8 else rng.random()
    mate = _hsv(mate_hue, rng.uniform(0.1, 0.6) * saturation_scale, rng.uniform(0.3, 0.7))
    mix = np.empty((3, 2))
    mix[:, 0] = (mate - base) * rng.uniform(0.25, 0.5)
    mix[:, 1] = rng.standard_normal(3) * (rng.uniform(0.005, 0.02) * saturation_scale)
    # Mixing is linear, so the chroma is mixed into RGB at the coarse size and then upsampled.
    coarse = np.einsum("ck,kyx->cyx", mix, chroma)
    coarse += base[:, None, None]
    up = _resize_matrix(_CHROMA_SIZE, n)
    img = _resize_planar(coarse, up, up)
    img += tint[:, None, None] * luminance
    if rng.random() < 0.45:
        # A second base colour below a wavy horizon, like ground vs sky or a wall vs a floor.
        x = _grid(n) / n
        k = rng.uniform(1.0, 4.0, 3)
        a = rng.uniform(0.0, 0.04, 3) / k
        phase = rng.uniform(0.0, 2.0 * math.pi, 3)
        wave = (np.sin(2.0 * math.pi * np.outer(x, k) + phase) * a).sum(axis=1)
        horizon = (rng.uniform(0.25, 0.8) + rng.uniform(-0.25, 0.25) * (x - 0.5) + wave) * n
        other = _hsv(rng.random(), rng.uniform(0.05, 0.5) * saturation_scale, rng.uniform(0.2, 0.8))
        soft = rng.uniform(0.7, 6.0)
        mask = np.clip((_grid(n)[:, None] - horizon[None, :]) / soft + 0.5, 0.0, 1.0)
        img += (other - base)[:, None, None] * mask
    # The transposed luminance field: 1/f texture with no visible relation to the background's.
    return img, luminance.T


def _draw(
    img: np.ndarray,
    texture: np.ndarray,
    rng: np.random.Generator,
    shape: str,
    centre: tuple[float, float],
    dims: tuple[float, ...],
    colour: np.ndarray,
    pattern: str = "plain",
    second: np.ndarray | None = None,
) -> None:
    """Composite one soft-edged object onto ``img`` (3, n, n) in place, evaluating only its bounding box.

    ``dims``: ellipse and rectangle (a, b) half-axes; triangle (r0, r1, r2, jitter) vertex radii and
    angular jitter; line (half_length, half_width). ``pattern``: plain, stripes or checker (alternating
    ``colour`` and ``second``).
    """
    n = img.shape[-1]
    cx, cy = centre
    cos_t, sin_t = _rotation(rng)
    soft = rng.uniform(0.6, 2.5)  # edge width in px: some objects in focus, some not
    shade = rng.uniform(-0.35, 0.35)  # light falling across the object
    shade_cos, shade_sin = _rotation(rng)
    texture_gain = rng.uniform(0.0, 0.12)
    opacity = 1.0 if rng.random() < 0.8 else rng.uniform(0.6, 0.95)
    period = rng.uniform(4.0, 16.0)
    pattern_phase = rng.uniform(0.0, 2.0 * math.pi)
    if shape == "triangle":
        angles = rng.uniform(0.0, 2.0 * math.pi) + np.array((0.0, 2.0, 4.0)) * (math.pi / 3.0)
        angles += rng.uniform(-dims[3], dims[3], 3)
        verts = np.stack((np.cos(angles), np.sin(angles)), axis=1) * np.array(dims[:3])[:, None]
        reach = max(dims[:3])
    elif shape == "ellipse":
        reach = max(dims[0], dims[1])
    else:  # rectangle and line: the corners stick out furthest
        reach = math.hypot(dims[0], dims[1])
    reach += 2.0 * soft + 1.0
    x0, x1 = max(0, int(cx - reach)), min(n, int(math.ceil(cx + reach)))
    y0, y1 = max(0, int(cy - reach)), min(n, int(math.ceil(cy + reach)))
    if x0 >= x1 or y0 >= y1:
        return
    dx = _grid(n)[None, x0:x1] - cx
    dy = _grid(n)[y0:y1, None] - cy
    u = dx * cos_t + dy * sin_t  # object-local coordinates
    v = dy * cos_t - dx * sin_t
    if shape == "ellipse":
        a, b = dims[0], dims[1]
        q = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        grad = np.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2) / np.maximum(q, 1e-9)
        dist = (q - 1.0) / np.maximum(grad, 1e-9)  # first-order signed distance, exact at the edge
    elif shape == "rectangle":
        dist = np.maximum(np.abs(u) - dims[0], np.abs(v) - dims[1])
    elif shape == "triangle":
        edges = []  # signed distance to each edge's line; the max is the convex polygon's distance
        for i in range(3):
            p, q2 = verts[i], verts[(i + 1) % 3]
            normal = np.array((q2[1] - p[1], p[0] - q2[0])) / math.hypot(q2[0] - p[0], q2[1] - p[1])
            if normal @ (verts[(i + 2) % 3] - p) > 0:  # make it point outwards
                normal = -normal
            edges.append((u - p[0]) * normal[0] + (v - p[1]) * normal[1])
        dist = np.maximum(np.maximum(edges[0], edges[1]), edges[2])
    elif shape == "line":
        along = np.clip(u, -dims[0], dims[0])
        dist = np.sqrt((u - along) ** 2 + v * v) - dims[1]
    else:
        raise ValueError("unknown shape %r" % (shape,))
    alpha = np.clip(0.5 - dist / soft, 0.0, 1.0)
    if opacity < 1.0:
        alpha *= opacity
    light = 1.0 + (shade / max(dims[0], 1.0)) * (dx * shade_cos + dy * shade_sin)
    light += texture_gain * texture[y0:y1, x0:x1]
    paint = colour[:, None, None] * light
    if pattern != "plain":
        assert second is not None, "patterned objects need a second colour"
        p = np.sin((2.0 * math.pi / period) * u + pattern_phase)
        if pattern == "checker":
            p = p * np.sin((2.0 * math.pi / period) * v)
        weight = np.clip(p * 3.0 + 0.5, 0.0, 1.0)  # a soft square wave
        paint = paint * weight + (second[:, None, None] * light) * (1.0 - weight)
    region = img[:, y0:y1, x0:x1]
    region += alpha * (paint - region)


def _random_object(img: np.ndarray, texture: np.ndarray, rng: np.random.Generator) -> None:
    n = img.shape[-1]
    kind = int(rng.choice(5, p=(0.25, 0.22, 0.16, 0.15, 0.22)))
    radius = n * math.exp(rng.uniform(math.log(0.04), math.log(0.3)))  # log-uniform: scale invariance
    centre = (rng.uniform(-0.05, 1.05) * n, rng.uniform(-0.05, 1.05) * n)
    colour = _hsv(rng.random(), rng.uniform(0.0, 1.0) ** 1.3, rng.uniform(0.1, 0.95))
    aspect = rng.uniform(0.3, 1.0)
    if kind == 0:
        _draw(img, texture, rng, "ellipse", centre, (radius, radius * aspect), colour)
    elif kind == 1:
        _draw(img, texture, rng, "rectangle", centre, (radius, radius * aspect), colour)
    elif kind == 2:
        dims = tuple(radius * rng.uniform(0.6, 1.0, 3)) + (0.5,)
        _draw(img, texture, rng, "triangle", centre, dims, colour)
    elif kind == 3:
        _draw(img, texture, rng, "line", centre, (radius * 1.5, rng.uniform(0.5, 2.5)), colour)
    else:
        second = _hsv(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.1, 0.95))
        shape = "rectangle" if rng.random() < 0.6 else "ellipse"
        pattern = "stripes" if rng.random() < 0.6 else "checker"
        _draw(img, texture, rng, shape, centre, (radius, radius * aspect), colour, pattern, second)


def _natural_scene(rng: np.random.Generator) -> np.ndarray:
    img, texture = _background(rng, CANONICAL_SIZE, 1.0)
    for _ in range(int(rng.integers(2, 7))):
        _random_object(img, texture, rng)
    return img


def _task_scene(rng: np.random.Generator, label: int) -> np.ndarray:
    n = CANONICAL_SIZE
    shape, hue = divmod(label, len(HUE_NAMES))
    # A desaturated background keeps the labelled hue the most colourful thing in the picture.
    img, texture = _background(rng, n, 0.45)
    for _ in range(int(rng.integers(0, 3))):
        radius = n * rng.uniform(0.04, 0.09)
        centre = (rng.uniform(0.05, 0.95) * n, rng.uniform(0.05, 0.95) * n)
        grey = _hsv(rng.random(), rng.uniform(0.0, 0.12), rng.uniform(0.15, 0.9))
        kind = ("ellipse", "rectangle")[int(rng.integers(0, 2))]
        _draw(img, texture, rng, kind, centre, (radius, radius * rng.uniform(0.5, 1.0)), grey)
    centre_hue, spread = _HUE_FAMILIES[hue]
    hue_turns = (centre_hue + rng.uniform(-spread, spread)) / 360.0
    colour = _hsv(hue_turns, rng.uniform(0.6, 0.95), rng.uniform(0.55, 0.95))
    half = 0.5 * n * rng.uniform(0.25, 0.55)  # the object's extent is 25-55% of the side
    centre = (rng.uniform(half + 2.0, n - half - 2.0), rng.uniform(half + 2.0, n - half - 2.0))
    if shape == 0:
        _draw(img, texture, rng, "ellipse", centre, (half, half * rng.uniform(0.6, 1.0)), colour)
    elif shape == 1:
        side = half * 0.72  # a square's corners reach sqrt(2) * side
        _draw(img, texture, rng, "rectangle", centre, (side, side * rng.uniform(0.55, 1.0)), colour)
    elif shape == 2:
        dims = tuple(half * rng.uniform(0.9, 1.0, 3)) + (0.2,)
        _draw(img, texture, rng, "triangle", centre, dims, colour)
    else:
        side = half * 0.72
        dark = colour * rng.uniform(0.25, 0.45)
        _draw(img, texture, rng, "rectangle", centre, (side, side), colour, "stripes", dark)
    return img


def _blur_resize_matrix(n: int, size: int, sigma: float) -> np.ndarray:
    """(size, n): a 5-tap Gaussian blur (edge-clamped) followed by the antialiased resize, as one matrix."""
    taps = np.exp(-0.5 * (np.arange(-2, 3) / sigma) ** 2)
    taps /= taps.sum()
    resize = _resize_matrix(n, size)
    out = np.zeros_like(resize)
    for g, shift in zip(taps, range(-2, 3)):
        # blurred[i] = sum_shift g * x[clamp(i + shift)]; fold that into the columns of the resize.
        if shift > 0:
            out[:, shift:] += g * resize[:, : n - shift]
            out[:, n - 1] += g * resize[:, n - shift :].sum(axis=1)
        elif shift < 0:
            out[:, : n + shift] += g * resize[:, -shift:]
            out[:, 0] += g * resize[:, :-shift].sum(axis=1)
        else:
            out += g * resize
    return out


def _finish(img: np.ndarray, rng: np.random.Generator, size: int, dest: np.ndarray) -> None:
    """Light, blur, resize, stretch, sensor noise: (3, n, n) float64 -> ``dest`` (size, size, 3) uint8."""
    n = img.shape[-1]
    x = _grid(n) / n - 0.5
    gx, gy = _rotation(rng)
    strength = rng.uniform(0.15, 0.6)
    vignette = rng.uniform(0.0, 0.5)
    # light(y, x) = 1 + strength * (gx x + gy y) - vignette * (x^2 + y^2), a sum of two 1-D parts.
    along_y = 1.0 + strength * gy * x - vignette * x * x
    along_x = strength * gx * x - vignette * x * x
    img *= along_y[:, None] + along_x[None, :]
    sigma = rng.uniform(0.3, 0.8)
    noise_levels = rng.uniform(0.5, 2.5)  # sensor noise std in output grey levels
    # Blur and resize are linear and their rows sum to 1, so the (affine) contrast stretch can be
    # measured on the canonical image and applied afterwards, on fewer pixels.
    sample = img[:, ::4, ::4].ravel()
    k_lo, k_hi = int(0.005 * (sample.size - 1)), int(0.995 * (sample.size - 1))
    part = np.partition(sample, (k_lo, k_hi))
    lo, hi = part[k_lo], part[k_hi]
    gain = 243.0 / max(hi - lo, 1e-6)
    matrix = _blur_resize_matrix(n, size, sigma)
    out = _resize_planar(img, matrix, matrix, widen=2)
    out -= lo
    out *= gain
    # Drawn last and at the output size: sensor noise belongs to the final pixel grid.
    out += rng.standard_normal((size, size)) * noise_levels + 6.0
    np.clip(out, 0.0, 255.0, out=out)
    np.rint(out, out=out)
    np.copyto(dest, out.transpose(1, 2, 0), casting="unsafe")  # exact: already integers in [0, 255]
