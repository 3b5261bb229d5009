"""Metrics against scikit-learn and direct transcriptions of the paper's eq. 5, 10 and 11."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from atlascli.errors import InputError
from atlascli.metrics import (
    auroc,
    average_precision,
    best_lambda,
    concept_rate,
    faithfulness,
    predicted_probabilities,
    reciprocal_ranks,
)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_ap_match_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    y = rng.random(n) < rng.uniform(0.03, 0.6)
    y[0], y[1] = True, False
    s = rng.standard_normal(n) + 0.8 * y
    if ties:
        s = np.round(s, 1)  # many equal scores
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_metric_edge_cases() -> None:
    assert math.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1])))
    assert math.isnan(average_precision(np.array([0.1, 0.2]), np.array([0, 0])))
    assert auroc(np.array([0.9, 0.1]), np.array([1, 0])) == 1.0
    assert average_precision(np.array([0.9, 0.1, 0.5]), np.array([1, 0, 0])) == 1.0
    with pytest.raises(InputError, match="labels"):
        auroc(np.zeros(3), np.zeros(2))
    with pytest.raises(InputError, match="NaN"):
        average_precision(np.array([np.nan, 1.0]), np.array([1, 0]))


def _mrr_eq10(sim: np.ndarray, targets: np.ndarray) -> float:
    total = 0.0
    for i, row in enumerate(sim):
        t = targets[i]
        total += 1.0 / (1 + sum(1 for k in range(len(row)) if k != t and row[t] < row[k]))
    return total / len(sim)


def _mpp_eq11(sim: np.ndarray, targets: np.ndarray) -> float:
    total = 0.0
    for i, row in enumerate(sim):
        mu = sum(row) / len(row)
        sd = math.sqrt(sum((v - mu) ** 2 for v in row) / len(row))
        z = [(v - mu) / sd for v in row]
        total += math.exp(z[targets[i]]) / sum(math.exp(v) for v in z)
    return total / len(sim)


def test_mrr_mpp_hand_made() -> None:
    sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.1, 0.2, 0.3]])
    targets = np.array([0, 1, 0])
    rr = reciprocal_ranks(sim, targets)
    assert rr.tolist() == [1.0, 0.5, pytest.approx(1 / 3)]
    assert rr.mean() == pytest.approx(_mrr_eq10(sim, targets))
    # [1, 0, -1]: z = [sqrt(1.5), 0, -sqrt(1.5)]
    p = predicted_probabilities(np.array([[1.0, 0.0, -1.0]]), np.array([0]))[0]
    z = math.sqrt(1.5)
    assert p == pytest.approx(math.exp(z) / (math.exp(z) + 1 + math.exp(-z)))
    # ties do not count as "ranked above" (strict < in eq. 10)
    assert reciprocal_ranks(np.array([[0.5, 0.5, 0.1]]), np.array([1]))[0] == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_mrr_mpp_match_transcription(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sim = rng.standard_normal((25, 40))
    targets = rng.integers(0, 40, size=25)
    assert reciprocal_ranks(sim, targets).mean() == pytest.approx(_mrr_eq10(sim, targets), abs=1e-12)
    assert predicted_probabilities(sim, targets).mean() == pytest.approx(_mpp_eq11(sim, targets), abs=1e-12)


def test_faithfulness_eq5() -> None:
    rates = {0.0: 0.2, -10.0: 0.1, 10.0: 0.6, 50.0: 0.4}
    assert faithfulness(rates) == pytest.approx((0.6 - 0.2) / (1 - 0.2) * 100)
    assert best_lambda(rates) == 10.0
    assert faithfulness({0.0: 0.5, 10.0: 0.2}) == pytest.approx(-60.0)  # steering can only hurt: negative
    assert math.isnan(faithfulness({0.0: 1.0, 10.0: 1.0}))
    with pytest.raises(InputError, match="unsteered"):
        faithfulness({10.0: 0.3})


def test_concept_rate_excludes_vague_and_unrated() -> None:
    rate, used, unrated = concept_rate([2, 0, 1, None, 2, None])
    assert (rate, used, unrated) == (pytest.approx(2 / 3), 3, 2)
    assert math.isnan(concept_rate([None, 1])[0])
