"""Offline labels v2: distinctive words, coherence, WordNet facts, top samples from CSR codes."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from atlascli.atlas.labels import (
    coherence,
    distinctive_words,
    label_features,
    pairwise_baseline,
    stop_words,
    top_samples,
    words,
)


def test_top_samples_match_a_dense_argsort():
    rng = np.random.default_rng(0)
    dense = rng.random((40, 7)) * (rng.random((40, 7)) < 0.3)
    dense[:, 6] = 0  # a dead feature
    rows, cols = np.nonzero(dense)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=40))])
    values = dense[rows, cols].astype(np.float32)
    peaks = (rows * 100 + cols).astype(np.int32)
    got = top_samples(indptr, cols.astype(np.int32), values, peaks, 7, top=4)
    for f in range(7):
        want = [i for i in np.argsort(-dense[:, f], kind="stable") if dense[i, f] > 0][:4]
        assert got.ids[f].tolist() == want
        assert got.peaks[f].tolist() == [i * 100 + f for i in want]
        assert got.frequency[f] == pytest.approx((dense[:, f] > 0).mean())
    assert len(got.ids[6]) == 0


def test_distinctive_words_find_the_planted_topic_and_skip_stop_words():
    stop = stop_words()
    corpus = [f"the weather was fine on day {i} and the people walked" for i in range(200)]
    corpus += ["the terrier barked at the hound", "a spaniel and a terrier played", "the hound chased a terrier",
               "my spaniel is a good hound"]
    docs = [words(s, stop) for s in corpus]
    df: Counter[str] = Counter()
    for d in docs:
        df.update(d)
    got = distinctive_words(np.arange(200, 204), docs, df, len(corpus))
    assert {w for w, _ in got} == {"terrier", "hound", "spaniel"}
    assert got[-1][0] == "spaniel"  # in 2 of the 4 top sentences, the others in 3
    assert "the" not in {w for w, _ in got}
    # the z-score follows Monroe et al.'s formula
    c, m, n, alpha = 3, 4, len(corpus), 10.0
    a = alpha * df["terrier"] / n
    z = (math.log((c + a) / (m + alpha - c - a)) - math.log((df["terrier"] + a) / (n + alpha - df["terrier"] - a))) \
        / math.sqrt(1 / (c + a) + 1 / (df["terrier"] + a))
    assert dict(got)["terrier"] == pytest.approx(z, abs=1e-3)


def test_coherence_is_high_for_a_tight_cluster_and_zero_for_random():
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(500, 16, generator=gen), dim=1)
    centre = torch.nn.functional.normalize(torch.randn(16, generator=gen), dim=0)
    emb[:10] = torch.nn.functional.normalize(centre + 0.1 * torch.randn(10, 16, generator=gen), dim=1)
    base = pairwise_baseline(emb)
    tight = coherence(emb, np.arange(10), base)
    loose = coherence(emb, np.arange(100, 120), base)
    assert tight is not None and loose is not None
    assert tight > 0.8 and abs(loose) < 0.1
    # against a direct numpy computation
    e = emb[:10].numpy()
    sim = e @ e.T
    assert tight == pytest.approx((sim.sum() - np.trace(sim)) / 90 - base, abs=1e-5)
    assert coherence(emb, np.arange(2), base) is None


def test_label_features_names_coherent_topics_and_flags_incoherent_ones():
    from atlascli.atlas.labels import TopSamples

    sents = [f"Terrier number {i} is a dog that barks at the hound." for i in range(5)]
    sents += ["The cat sat.", "Stocks fell sharply.", "Rain is wet today.", "He sings a song.", "Paris in spring."]
    sents += [f"filler sentence {i} about nothing much" for i in range(40)]
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(len(sents), 8, generator=gen), dim=1)
    emb[:5] = torch.nn.functional.normalize(torch.ones(5, 8) + 0.05 * torch.randn(5, 8, generator=gen), dim=1)
    samples = TopSamples(ids=[np.arange(5), np.arange(5, 10), np.array([], dtype=np.int64)],
                         values=[np.ones(5), np.ones(5), np.array([])],
                         peaks=[np.array([7] * 5), np.array([1, 2, 1, 2, 1]), np.array([], dtype=np.int64)],
                         frequency=np.array([0.1, 0.1, 0.0]))
    records, femb = label_features(samples, sents, None, emb, lambda t: {7: " dog", 1: "the", 2: "of"}[t], threshold=0.3)
    assert records[0]["coherent"] and records[0]["label"] == "barks / dog / hound"  # tied z-scores: alphabetical
    assert not records[1]["coherent"] and records[1]["label"].startswith("syntax: ")
    assert records[2]["label"] == "(dead)" and float(femb[2].norm()) == 0
    assert float(femb[0].norm()) == pytest.approx(1.0, abs=1e-5)


def test_wordnet_facts_from_the_debian_files():
    from atlascli.wordnet import shared_facts, wordnet_reader

    if wordnet_reader() is None:
        pytest.skip("Debian wordnet-base not unpacked (make corpus-src)")
    # dog, Chihuahua, Afghan hound, English springer: all noun.animal, all canines
    facts = shared_facts(["n.02084071", "n.02085620", "n.02088094", "n.02102040"])
    assert facts is not None and facts.lexname == "noun.animal"
    assert facts.hypernym in {"dog", "canine", "domestic dog"}
    fruit = shared_facts(["n.07747607", "n.07753592", "n.07739125"])  # orange, banana, apple
    assert fruit is not None and fruit.lexname == "noun.food" and fruit.hypernym in {"edible fruit", "fruit"}
