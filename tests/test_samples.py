from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from atlascli.cli.main import main
from atlascli.errors import InputError
from atlascli.registry import Registry
from atlascli.samples import activation_moments, aligned_sentences, top_examples
from atlascli.search import query_from_features, resolve_alignment, subject_similarity


@dataclass
class _Shard:
    dense: torch.Tensor
    index: torch.Tensor


class _Acts:
    """Activations split into shards of ``size`` rows (as the registry stores them)."""

    def __init__(self, x: np.ndarray, size: int = 7) -> None:
        self.x = torch.from_numpy(x).float()
        self.size = size

    def shards(self, layer: int):
        for a in range(0, self.x.shape[0], self.size):
            yield _Shard(self.x[a:a + self.size], torch.arange(a, min(a + self.size, self.x.shape[0])))


def _reference(x: np.ndarray, s: np.ndarray, standardise: bool) -> np.ndarray:
    xc = x - x.mean(0)
    d = s.copy()
    if standardise:  # dead units (spread < 1e-6 of the largest) out; no live spread below 0.1 x the median one
        sd = x.std(0)
        keep = sd > 1e-6 * sd.max()
        sd = np.maximum(sd, 0.1 * np.median(sd[keep]))
        xc, d = xc[:, keep] / sd[keep], d[keep] / sd[keep]
    return (xc / np.linalg.norm(xc, axis=1, keepdims=True)) @ (d / np.linalg.norm(d))


@pytest.mark.parametrize("metric", ["standardised", "centred"])
def test_aligned_sentences_match_a_numpy_reference_across_shards(metric):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) * np.array([1, 5, 0.2, 3, 1, 0])  # last column dead: no spread
    x[:, 5] = 2.0
    s = rng.normal(size=6)
    sentences = [f"sentence {i}" for i in range(40)]
    got = aligned_sentences(_Acts(x), 0, torch.from_numpy(s).float(), sentences, n=5, metric=metric)
    ref = _reference(x.astype(np.float32).astype(np.float64), s.astype(np.float32), metric == "standardised")
    order = np.argsort(-ref)[:5]
    assert [t for _, t in got] == [sentences[i] for i in order]
    np.testing.assert_allclose([v for v, _ in got], ref[order], rtol=1e-5)


def test_standardised_ranking_is_not_decided_by_one_high_variance_dimension():
    """Planted: dimension 0 has a huge spread unrelated to the concept (sentence length, say); the concept is
    dimensions 1-3, on in sentences 0-4. The centred cosine follows dimension 0; the standardised one finds 0-4."""
    rng = np.random.default_rng(1)
    n = 200
    x = rng.normal(size=(n, 8))
    x[:, 0] *= 40.0
    x[:5, 1:4] += 5.0
    s = np.zeros(8)
    s[0], s[1:4] = 0.3, 1.0  # the direction leaks a little into the high-variance dimension
    sentences = [str(i) for i in range(n)]
    acts = _Acts(x, size=50)
    std = {t for _, t in aligned_sentences(acts, 0, torch.from_numpy(s).float(), sentences, n=5)}
    cen = {t for _, t in aligned_sentences(acts, 0, torch.from_numpy(s).float(), sentences, n=5, metric="centred")}
    assert std == {"0", "1", "2", "3", "4"}
    assert cen != std  # the centred cosine lets a sentence with an extreme dimension 0 in


def test_moments_are_the_population_mean_and_sd():
    x = np.random.default_rng(2).normal(size=(23, 4))
    mean, sd, n = activation_moments(_Acts(x, size=5), 0)
    assert n == 23
    np.testing.assert_allclose(mean.numpy(), x.astype(np.float32).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sd.numpy(), x.astype(np.float32).std(0), rtol=1e-4)
    assert activation_moments(_Acts(np.zeros((0, 3))), 0) is None


def test_unknown_metric_is_refused():
    with pytest.raises(InputError, match="unknown alignment metric"):
        aligned_sentences(_Acts(np.ones((3, 2))), 0, torch.ones(2), ["a", "b", "c"], metric="dot")


def test_top_examples_are_the_max_activating_sentences_per_feature():
    x = np.random.default_rng(3).normal(size=(30, 5))
    sentences = [f"s{i}" for i in range(30)]
    got = top_examples(_Acts(x, size=4), 0, [1, 3], sentences, n=3)
    for f in (1, 3):
        order = np.argsort(-x[:, f].astype(np.float32))[:3]
        assert [t for _, t in got[f]] == [sentences[i] for i in order]


def test_search_on_the_registry_uses_the_standardised_ranking(aligned, tiny_models, capsys):
    atlas, _ = aligned
    reg = Registry()
    proc = resolve_alignment(reg, None, None, 2, "procrustes", atlas)
    from atlascli.search_run import run_search, test_activations

    acts, sentences = test_activations(proc, 100, reg)
    q = query_from_features("3,10", atlas)
    s = subject_similarity(q, proc)
    res = run_search(q, proc, top=3, samples=0, test_limit=100, registry=reg, n_aligned=4)
    X = acts.dense(2).double().numpy()
    ref = _reference(X, s.double().numpy(), True)
    np.testing.assert_allclose([v for v, _ in res.aligned], np.sort(ref)[::-1][:4], rtol=1e-4)
    assert main(["search", "--features", "3,10", "--layer", "2", "--aligned-metric", "centred", "--json",
                 "--test-limit", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref_c = _reference(X, s.double().numpy(), False)
    assert out["aligned_metric"] == "centred"
    np.testing.assert_allclose([a["similarity"] for a in out["aligned_sentences"]], np.sort(ref_c)[::-1][:5],
                               rtol=1e-4)
    assert main(["search", "--features", "3", "--layer", "2", "--aligned-metric", "dot"]) != 0
    err = capsys.readouterr().err
    assert "unknown alignment metric" in err and "Traceback" not in err


def test_a_unit_that_fires_once_does_not_take_over_the_standardised_ranking():
    """Planted: sentences 0-9 carry the concept (dimensions 0-7); unit 63 fires on sentence 50 only, so its spread is
    tiny. s leans on unit 63 a little: without a floor on the spread, sentence 50 would come first."""
    rng = np.random.default_rng(4)
    n = 2000
    x = rng.normal(size=(n, 64))
    x[:10, :8] += 4.0
    x[:, 63] = 0.0
    x[50, 63] = 1.0
    s = np.zeros(64)
    s[:8], s[63] = 1.0, 0.1
    sentences = [str(i) for i in range(n)]
    got = [t for _, t in aligned_sentences(_Acts(x, size=500), 0, torch.from_numpy(s).float(), sentences, n=10)]
    assert set(got) == {str(i) for i in range(10)}


def test_a_direction_without_support_aligns_no_sentence():
    x = np.random.default_rng(5).normal(size=(20, 4))
    x[:, 3] = 1.0  # dead: constant
    s = torch.tensor([0.0, 0.0, 0.0, 1.0])
    sentences = [str(i) for i in range(20)]
    assert aligned_sentences(_Acts(x), 0, s, sentences) == []
    assert aligned_sentences(_Acts(x), 0, torch.zeros(4), sentences, metric="centred") == []


def test_moments_of_a_constant_unit_at_a_large_value_are_exact():
    """A dead unit sitting at a large constant has no spread: E[x^2] - E[x]^2 would leave rounding noise there (enough
    to count it as live next to small spreads); the pairwise update across shards leaves none."""
    rng = np.random.default_rng(4)
    x = np.concatenate([np.full((1000, 1), 3301.37), rng.normal(scale=1e-3, size=(1000, 2))], axis=1)
    mean, sd, n = activation_moments(_Acts(x, size=7), 0)
    x32 = x.astype(np.float32).astype(np.float64)
    assert n == 1000 and float(sd[0]) < 1e-9 * float(sd[1:].max())  # far under SD_FLOOR: dead
    np.testing.assert_allclose(sd[1:].numpy(), x32[:, 1:].std(0), rtol=1e-9)
    np.testing.assert_allclose(mean.numpy(), x32.mean(0), rtol=1e-12)
