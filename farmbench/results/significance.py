"""Significance tests for regression checks, without SciPy (farmbench does not depend on it, and pulls it in
through no dependency; these two tests are small enough to own and to check against published values).

* :func:`mann_whitney_u` -- two-sided Mann-Whitney U (Wilcoxon rank-sum) test. When both samples are small
  (<= ``EXACT_MAX_N``) the exact permutation distribution of the rank sum (with mid-ranks, so ties are exact too;
  without ties it is the classical exact distribution, SciPy's ``method="exact"``); otherwise the normal
  approximation with the tie correction of the variance and a continuity correction of 1/2 (SciPy's
  ``method="asymptotic"``, ``use_continuity=True``). Session values (a few per side, ties possible after rounding)
  are where exactness matters: the normal approximation is conservative there. ``min_p_value`` says the smallest p a test of those sizes can give: with 3 sessions
  against 3 it is 0.1, so such a test can never reach alpha = 0.01, and the check says so instead of pretending.
* :func:`student_t_two_sided_p` -- the two-sided tail probability of Student's t, via the regularised incomplete
  beta function (continued fraction, Numerical Recipes 6.4), for the session-level guard in
  :mod:`farmbench.results.compare`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Exact distribution up to 20 per side (a table of at most 21 x 1641 counts); beyond that the normal approximation
# is within ~1e-3 of it, far below anything a verdict depends on.
EXACT_MAX_N = 20


@dataclass(frozen=True)
class MannWhitneyResult:
    """``u`` is U of the first sample (pairs x > y, ties count 1/2); ``p_value`` two-sided; ``method`` "exact" or
    "normal"; ``min_p_value`` the smallest two-sided p these sample sizes allow."""

    u: float
    p_value: float
    method: str
    n_x: int
    n_y: int
    min_p_value: float


def _rankdata(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) of ``values``, and the sizes of the groups of tied values."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Start of each run of equal values in sorted order.
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(np.append(starts, values.size))
    # The average rank of a run starting at position s (0-based) with c members is s + (c + 1) / 2.
    run_ranks = starts + (counts + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, counts)
    return ranks, counts


def _exact_u_counts(m: int, n: int) -> list[int]:
    """Number of orderings of m x's and n y's giving each U = 0 .. m*n: the coefficients of the Gaussian binomial
    [m+n choose m]_q = prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i), built by exact integer polynomial arithmetic.
    (The tie-free case of :func:`_exact_rank_sum_counts`; kept as its independent check.)"""
    size = m * n + 1
    poly = [0] * size
    poly[0] = 1
    for i in range(1, m + 1):
        # multiply by (1 - q^(n+i))
        shift = n + i
        for k in range(size - 1, shift - 1, -1):
            poly[k] -= poly[k - shift]
        # divide by (1 - q^i): running sum with stride i (exact, the quotient is a polynomial)
        for k in range(i, size):
            poly[k] += poly[k - i]
    return poly


def _exact_rank_sum_counts(doubled_ranks: Sequence[int], m: int) -> list[int]:
    """For each value s, the number of ways to choose m of the (doubled, so integral) mid-ranks with sum s: the
    exact permutation distribution of the rank sum, ties included."""
    total = sum(doubled_ranks)
    # table[k][s]: ways to pick k of the ranks seen so far with doubled sum s
    table = [[0] * (total + 1) for _ in range(m + 1)]
    table[0][0] = 1
    for weight in doubled_ranks:
        for k in range(m, 0, -1):
            row, previous = table[k], table[k - 1]
            for total_s in range(total, weight - 1, -1):
                if previous[total_s - weight]:
                    row[total_s] += previous[total_s - weight]
    return table[m]


def mann_whitney_u(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> MannWhitneyResult:
    """Two-sided Mann-Whitney U test of ``x`` against ``y``. Needs at least one value on each side."""
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    m, n = int(a.size), int(b.size)
    if m == 0 or n == 0:
        raise ValueError("the Mann-Whitney U test needs at least one value in each sample")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("Mann-Whitney U samples must be finite numbers")
    ranks, tie_counts = _rankdata(np.concatenate((a, b)))
    u = float(ranks[:m].sum() - m * (m + 1) / 2.0)
    mn = m * n
    # log-space: comb(m + n, m) overflows a float from a few hundred values on
    log_comb = math.lgamma(m + n + 1) - math.lgamma(m + 1) - math.lgamma(n + 1)
    min_p = min(1.0, 2.0 * math.exp(-log_comb))
    if max(m, n) <= EXACT_MAX_N:
        # Exact permutation distribution of the rank sum (mid-ranks for ties): symmetric about its mean, so the
        # two-sided p is twice the smaller tail.
        doubled = [round(2 * r) for r in ranks]
        counts = _exact_rank_sum_counts(doubled, m)
        observed = sum(doubled[:m])
        total = math.comb(m + n, m)
        lower = sum(counts[: observed + 1]) / total
        upper = sum(counts[observed:]) / total
        return MannWhitneyResult(u, min(1.0, 2.0 * min(lower, upper)), "exact", m, n, min_p)
    big_n = m + n
    tie_term = float(np.sum(tie_counts.astype(np.float64) ** 3 - tie_counts)) / (big_n * (big_n - 1))
    variance = mn / 12.0 * ((big_n + 1) - tie_term)
    if variance <= 0:  # every value equal: no evidence of any difference
        return MannWhitneyResult(u, 1.0, "normal", m, n, min_p)
    distance = max(0.0, abs(u - mn / 2.0) - 0.5)
    z = distance / math.sqrt(variance)
    return MannWhitneyResult(u, min(1.0, math.erfc(z / math.sqrt(2.0))), "normal", m, n, min_p)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), Numerical Recipes 6.4."""

    def nonzero(value: float) -> float:
        return value if abs(value) > 1e-300 else 1e-300

    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 / nonzero(1.0 - qab * x / qap)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 / nonzero(1.0 + aa * d)
            c = nonzero(1.0 + aa / c)
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (df > 0)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 0.0
    if math.isnan(t):
        raise ValueError("t must be a number")
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
