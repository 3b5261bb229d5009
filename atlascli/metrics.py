"""Evaluation metrics of the paper (4.3, 4.4, A.6): AUROC / AP, MRR (eq. 10), MPP (eq. 11), faithfulness (eq. 5).

Pure numpy; ties are handled as scikit-learn does (AUROC by average ranks, AP by grouping equal scores)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy.stats import rankdata

from atlascli.errors import InputError


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise InputError(f"{s.size} scores but {y.size} labels", "give one label per score")
    if not np.isfinite(s).all():
        raise InputError("scores contain NaN or inf", "check the activations")
    return s, y


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks); NaN when only one class is present."""
    s, y = _check(scores, labels)
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct score thresholds; NaN without positives."""
    s, y = _check(scores, labels)
    pos = int(y.sum())
    if pos == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # end of each group of equal scores
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def reciprocal_ranks(similarities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Eq. 10 per query: 1 / (1 + #{k != i : s_k > s_i}) for row similarities[q] and its correct index."""
    sim = np.asarray(similarities, dtype=np.float64)
    t = np.asarray(targets, dtype=np.int64)
    correct = sim[np.arange(len(t)), t]
    above = (sim > correct[:, None]).sum(1)
    return 1.0 / (1.0 + above)


def predicted_probabilities(similarities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Eq. 11 per query: softmax of the z-scored similarity vector, at the correct index."""
    sim = np.asarray(similarities, dtype=np.float64)
    t = np.asarray(targets, dtype=np.int64)
    sd = sim.std(1, keepdims=True)
    z = (sim - sim.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    return p[np.arange(len(t)), t]


def concept_rate(ratings: list[int | None]) -> tuple[float, int, int]:
    """Share of rated items judged 'present' (2) among those rated 0 or 2 (class 1 is excluded, as in A.7).

    Returns (rate, items used, items unrated); the rate is NaN when nothing usable was rated."""
    used = [r for r in ratings if r in (0, 2)]
    unrated = sum(r is None for r in ratings)
    if not used:
        return math.nan, 0, unrated
    return sum(r == 2 for r in used) / len(used), len(used), unrated


def faithfulness(rates: Mapping[float, float]) -> float:
    """Eq. 5: max over lambda != 0 of (r_lambda - r_0) / (1 - r_0) x 100; NaN when r_0 = 1 or missing."""
    if 0.0 not in rates:
        raise InputError("faithfulness needs the unsteered rate (lambda 0)", "include 0 in the lambdas")
    r0 = rates[0.0]
    others = [r for lam, r in rates.items() if lam != 0.0 and not math.isnan(r)]
    if math.isnan(r0) or r0 >= 1.0 or not others:
        return math.nan
    return max((r - r0) / (1.0 - r0) for r in others) * 100.0


def best_lambda(rates: Mapping[float, float]) -> float | None:
    """The lambda that attains eq. 5's maximum (None when undefined)."""
    others = {lam: r for lam, r in rates.items() if lam != 0.0 and not math.isnan(r)}
    return max(others, key=lambda lam: others[lam]) if others else None
