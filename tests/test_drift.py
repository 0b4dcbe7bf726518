"""Drift metrics on constructed outputs, where every value can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from farmbench.errors import UsageError
from farmbench.results.drift import KL_EPSILON, accuracy, distributions, drift, looks_like_probabilities


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_a_model_against_itself_is_perfect_agreement() -> None:
    probs = softmax(np.random.default_rng(0).normal(size=(64, 16)))
    metrics = drift(probs, probs.copy())
    assert metrics.n == 64
    assert metrics.top1_agreement == 1.0 and metrics.top5_overlap == 1.0
    assert metrics.kl_mean == 0.0 and metrics.max_abs_error == 0.0
    assert metrics.cosine_mean == pytest.approx(1.0, abs=1e-12) and metrics.cosine_min == pytest.approx(1.0, abs=1e-12)
    assert metrics.outputs_are_probabilities


def test_top1_and_top5_on_constructed_rankings() -> None:
    reference = np.array([[0.5, 0.2, 0.1, 0.08, 0.07, 0.05, 0.0],     # top5 {0,1,2,3,4}
                          [0.0, 0.05, 0.07, 0.08, 0.1, 0.2, 0.5]])    # top5 {6,5,4,3,2}
    candidate = np.array([[0.2, 0.5, 0.1, 0.08, 0.07, 0.0, 0.05],     # top1 1 (differs); top5 {1,0,2,3,4}: 5/5
                          [0.5, 0.05, 0.07, 0.08, 0.1, 0.0, 0.2]])    # top1 0 (differs) ... {0,6,4,3,2}: 4/5
    metrics = drift(reference, candidate)
    assert metrics.top1_agreement == 0.0
    assert metrics.top5_overlap == pytest.approx((5 / 5 + 4 / 5) / 2)
    candidate[0] = reference[0]
    assert drift(reference, candidate).top1_agreement == 0.5


def test_kl_is_the_textbook_value_for_two_distributions() -> None:
    p = np.array([[0.5, 0.25, 0.25]])
    q = np.array([[0.25, 0.5, 0.25]])
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)  # sum p log(p/q)
    # Smoothing by KL_EPSILON moves the value by O(epsilon) only.
    assert drift(p, q).kl_mean == pytest.approx(expected, abs=10 * KL_EPSILON)


def test_logit_outputs_go_through_a_softmax() -> None:
    logits_ref = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    logits_cand = logits_ref + np.array([[0.0, 0.5, 0.0], [0.3, 0.0, 0.0]])
    metrics = drift(logits_ref, logits_cand)
    assert not metrics.outputs_are_probabilities
    p, q = softmax(logits_ref), softmax(logits_cand)
    expected = float(np.mean(np.sum(p * np.log(p / q), axis=1)))
    assert metrics.kl_mean == pytest.approx(expected, rel=1e-5)
    # Adding a constant to every logit changes nothing in the distribution.
    assert drift(logits_ref, logits_ref + 7.0).kl_mean == pytest.approx(0.0, abs=1e-12)


def test_cosine_and_max_abs_error_on_raw_outputs() -> None:
    reference = np.array([[1.0, 0.0], [1.0, 1.0]])
    candidate = np.array([[0.0, 1.0], [2.0, 2.0]])
    metrics = drift(reference, candidate)
    assert metrics.cosine_min == pytest.approx(0.0)
    assert metrics.cosine_mean == pytest.approx(0.5)
    assert metrics.max_abs_error == pytest.approx(1.0)


def test_a_zeroed_class_gives_a_large_but_finite_kl() -> None:
    reference = np.array([[0.5, 0.5]])
    candidate = np.array([[1.0, 0.0]])  # int8 softmax rounding a class to 0
    kl = drift(reference, candidate).kl_mean
    assert math.isfinite(kl) and kl > 5.0


def test_dequantised_softmax_rows_are_still_probabilities() -> None:
    rows = np.array([[0.6015625, 0.3984375 - 0.00390625, 0.0]])  # 1/256 steps, sums to 0.996
    assert looks_like_probabilities(rows)
    p = distributions(rows, probabilities=True)
    assert p.sum() == pytest.approx(1.0)
    assert not looks_like_probabilities(np.array([[3.0, -1.0]]))


@pytest.mark.parametrize("reference, candidate", [
    (np.zeros((2, 3)), np.zeros((3, 3))),
    (np.zeros((0, 3)), np.zeros((0, 3))),
    (np.array([[np.nan, 1.0]]), np.array([[0.0, 1.0]])),
])
def test_mismatched_or_broken_outputs_are_refused(reference: np.ndarray, candidate: np.ndarray) -> None:
    with pytest.raises(UsageError):
        drift(reference, candidate)


def test_accuracy_with_labels() -> None:
    outputs = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    result = accuracy(outputs, np.array([1, 1, 0]))
    assert result.top1 == pytest.approx(1 / 3)
    assert result.top5 == 1.0  # three classes: top-k is every class
    with pytest.raises(UsageError, match="labels"):
        accuracy(outputs, np.array([1, 1, 3]))
