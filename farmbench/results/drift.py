"""Accuracy drift: how far a variant's outputs move from a reference's on the same inputs.

The reference is normally the fp32 variant of the same family, width and resolution run on the host; the same
functions compare two devices or two delegates for one variant (e.g. GPU delegate against CPU).

Both arrays are ``(N, classes)`` float outputs for the same N inputs, in the same order. MobileNet classifiers end
in a softmax, so their outputs are probabilities; a model that outputs logits works too. What each metric uses:

* ``top1_agreement``  -- fraction of inputs whose arg-max class is the reference's. Ties (int8 softmax outputs
  often tie) go to the lowest class index on both sides, as ``numpy.argmax`` does.
* ``top5_overlap``    -- mean of ``|top5(candidate) & top5(reference)| / 5`` (``k = min(5, classes)``); ties in
  the ranking are broken by class index (a stable sort of the negated scores).
* ``kl_mean``         -- mean over inputs of ``KL(P_ref || P_cand)`` in nats, between the softmax distributions.
  Probability outputs are used as they are (clipped at 0 and renormalised, since dequantised int8 softmax rows
  do not sum to exactly 1); logits go through a softmax. Both distributions are smoothed with
  :data:`KL_EPSILON` before renormalising, so a class the candidate rounds to 0 gives a large, finite value.
* ``cosine_mean``/``cosine_min`` -- cosine similarity of the raw output vectors, per input, then mean and minimum
  (for a softmax model these are the probabilities; for a logit model, the logits).
* ``max_abs_error``   -- the largest absolute difference of the raw outputs over all inputs and classes.

With labels (an ImageFolder evaluation set), :func:`accuracy` gives top-1/top-5 accuracy of each side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from farmbench.errors import UsageError

KL_EPSILON = 1e-7
PROBABILITY_TOLERANCE = 1e-2  # rows of a softmax output sum to 1 within this (dequantised int8 included)


@dataclass(frozen=True)
class DriftMetrics:
    """Drift of one set of outputs against a reference on the same ``n`` inputs."""

    n: int
    top1_agreement: float
    top5_overlap: float
    kl_mean: float
    cosine_mean: float
    cosine_min: float
    max_abs_error: float
    outputs_are_probabilities: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Accuracy:
    n: int
    top1: float
    top5: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def looks_like_probabilities(outputs: np.ndarray) -> bool:
    """Whether every row is non-negative and sums to 1 (within :data:`PROBABILITY_TOLERANCE`)."""
    values = np.asarray(outputs, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        return False
    return bool((values >= -PROBABILITY_TOLERANCE).all()
                and np.allclose(values.sum(axis=1), 1.0, atol=PROBABILITY_TOLERANCE))


def distributions(outputs: np.ndarray, *, probabilities: bool) -> np.ndarray:
    """Rows as smoothed probability distributions (float64), per the module docstring."""
    values = np.asarray(outputs, dtype=np.float64)
    if probabilities:
        p = np.clip(values, 0.0, None)
        sums = p.sum(axis=1, keepdims=True)
        p = np.divide(p, sums, out=np.full_like(p, 1.0 / p.shape[1]), where=sums > 0)
    else:
        shifted = values - values.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        p = exp / exp.sum(axis=1, keepdims=True)
    p = p + KL_EPSILON
    smoothed: np.ndarray = p / p.sum(axis=1, keepdims=True)
    return smoothed


def _check_pair(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    ref = ref.reshape(ref.shape[0], -1) if ref.ndim > 2 else ref
    cand = cand.reshape(cand.shape[0], -1) if cand.ndim > 2 else cand
    if ref.ndim != 2 or ref.shape != cand.shape or ref.shape[0] == 0 or ref.shape[1] == 0:
        raise UsageError(f"drift needs two (inputs, classes) output arrays of one shape, got {np.shape(reference)}"
                         f" and {np.shape(candidate)}")
    if not (np.isfinite(ref).all() and np.isfinite(cand).all()):
        raise UsageError("drift needs finite outputs: the reference or the candidate holds NaN or infinity")
    return ref, cand


def top_k(outputs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores per row, ties to the lower index (stable sort of the negated scores)."""
    return np.argsort(-np.asarray(outputs, dtype=np.float64), axis=1, kind="stable")[:, :k]


def drift(reference: np.ndarray, candidate: np.ndarray) -> DriftMetrics:
    """The drift of ``candidate`` against ``reference`` (see the module docstring for each metric)."""
    ref, cand = _check_pair(reference, candidate)
    n, classes = ref.shape
    probabilities = looks_like_probabilities(ref)
    top1 = float(np.mean(ref.argmax(axis=1) == cand.argmax(axis=1)))
    k = min(5, classes)
    ref_top, cand_top = top_k(ref, k), top_k(cand, k)
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref_top.tolist(), cand_top.tolist())]))
    p_ref = distributions(ref, probabilities=probabilities)
    p_cand = distributions(cand, probabilities=probabilities)
    kl = float(np.mean(np.sum(p_ref * (np.log(p_ref) - np.log(p_cand)), axis=1)))
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    dots = np.sum(ref * cand, axis=1)
    # Two zero vectors are identical (cosine 1); one zero vector against a non-zero one shares no direction (0).
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(cand, axis=1) == 0)
    cosine = np.divide(dots, norms, out=np.where(both_zero, 1.0, 0.0), where=norms > 0)
    cosine = np.clip(cosine, -1.0, 1.0)
    return DriftMetrics(
        n=n, top1_agreement=top1, top5_overlap=overlap, kl_mean=max(kl, 0.0), cosine_mean=float(cosine.mean()),
        cosine_min=float(cosine.min()), max_abs_error=float(np.abs(ref - cand).max()),
        outputs_are_probabilities=probabilities,
    )


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> Accuracy:
    """Top-1 and top-5 accuracy of ``outputs`` (N, classes) against integer ``labels`` (N,)."""
    values = np.asarray(outputs, dtype=np.float64)
    truth = np.asarray(labels)
    if values.ndim != 2 or truth.shape != (values.shape[0],) or values.shape[0] == 0:
        raise UsageError(f"accuracy needs (N, classes) outputs and N labels, got {values.shape} and {truth.shape}")
    if truth.min() < 0 or truth.max() >= values.shape[1]:
        raise UsageError(f"labels must be class indices in [0, {values.shape[1]}), got {truth.min()}..{truth.max()}")
    k = min(5, values.shape[1])
    top = top_k(values, k)
    return Accuracy(n=int(values.shape[0]), top1=float(np.mean(top[:, 0] == truth)),
                    top5=float(np.mean((top == truth[:, None]).any(axis=1))))


__all__ = ["Accuracy", "DriftMetrics", "accuracy", "distributions", "drift", "looks_like_probabilities", "top_k"]
