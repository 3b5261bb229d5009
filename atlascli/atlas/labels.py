"""Offline labels that say what a feature means (paper 3.2, without an LLM).

Per feature, from its top-activating labelling sentences:

- the **content words** that distinguish them from all labelling sentences (log-odds with a
  Dirichlet prior against the corpus, stop words out),
- for WordNet-gloss sentences, what WordNet knows of their synsets (lexicographer file such as
  ``noun.food``, the shared hypernym, the lemmas),
- a **coherence** score: how much closer the top sentences are to each other (MiniLM cosine) than
  random labelling sentences are. Features below the threshold are labelled ``syntax: <peak tokens>``
  and left out of text matching by default.

Label examples: ``canine (noun.animal): terrier, hound, spaniel``; ``music / song / musical``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import torch

COHERENCE_THRESHOLD = 0.05
"""Default threshold: a feature is coherent when its top sentences' mean pairwise cosine exceeds that of
random labelling sentences by at least this much."""

_WORD = re.compile(r"[a-z][a-z'-]*[a-z]|[a-z]")


def stop_words() -> frozenset[str]:
    """English stop words (plus gloss boilerplate such as 'relating', 'characterized')."""
    text = resources.files("atlascli.data").joinpath("stopwords.txt").read_text()
    return frozenset(text.split())


def words(sentence: str, stop: frozenset[str]) -> set[str]:
    """Distinct lower-case content words of a sentence."""
    return {w for w in _WORD.findall(sentence.lower()) if w not in stop and len(w) > 2}


@dataclass(frozen=True)
class TopSamples:
    """Each feature's max-activating labelling sentences, from max-pooled codes."""

    ids: list[np.ndarray]
    """Per feature: sentence indices, most activating first."""
    values: list[np.ndarray]
    """Per feature: their pooled activations."""
    peaks: list[np.ndarray]
    """Per feature: the token id where each of those sentences peaked."""
    frequency: np.ndarray
    """Per feature: fraction of labelling sentences on which it is active."""


def top_samples(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, peak_tokens: np.ndarray,
                width: int, top: int) -> TopSamples:
    """Top ``top`` sentences per feature from CSR codes (rows = sentences) and per-value peak tokens."""
    n = len(indptr) - 1
    rows = np.repeat(np.arange(n), np.diff(indptr))
    col = indices.astype(np.int64)
    order = np.lexsort((-values, col))
    starts = np.searchsorted(col[order], np.arange(width))
    ends = np.searchsorted(col[order], np.arange(width), side="right")
    ids, vals, peaks = [], [], []
    for f in range(width):
        sel = order[starts[f]:min(ends[f], starts[f] + top)]
        ids.append(rows[sel])
        vals.append(values[sel])
        peaks.append(peak_tokens[sel])
    return TopSamples(ids, vals, peaks, np.bincount(col, minlength=width) / max(n, 1))


def distinctive_words(top_ids: np.ndarray, doc_words: list[set[str]], df: Counter[str], n_docs: int,
                      k: int = 3, alpha: float = 10.0) -> list[tuple[str, float]]:
    """Words over-represented in the top sentences against all labelling sentences: the z-scored
    log-odds ratio with an informative Dirichlet prior (Monroe et al. 2008), words in >= 2 top sentences."""
    counts: Counter[str] = Counter()
    for i in top_ids:
        counts.update(doc_words[int(i)])
    m = len(top_ids)
    scored = []
    for w, c in counts.items():
        if c < 2:
            continue
        p = df[w] / n_docs
        a = alpha * p
        l1 = math.log((c + a) / max(m + alpha - c - a, 0.5))
        l0 = math.log((df[w] + a) / max(n_docs + alpha - df[w] - a, 0.5))
        var = 1.0 / (c + a) + 1.0 / (df[w] + a)
        scored.append((w, (l1 - l0) / math.sqrt(var)))
    scored.sort(key=lambda t: (-round(t[1], 9), t[0]))  # ties by word: labels do not depend on hash order
    return [(w, round(z, 3)) for w, z in scored[:k] if z > 1.0]


def coherence(emb: torch.Tensor, ids: np.ndarray, baseline: float) -> float | None:
    """Mean pairwise cosine of the sentences ``ids`` minus ``baseline`` (None with fewer than 3)."""
    if len(ids) < 3:
        return None
    e = emb[torch.as_tensor(ids, dtype=torch.long)].float()
    sim = e @ e.T
    m = len(ids)
    return float((sim.sum() - sim.diagonal().sum()) / (m * (m - 1))) - baseline


def pairwise_baseline(emb: torch.Tensor, seed: int = 0, n: int = 2000) -> float:
    """Mean pairwise cosine of random labelling sentences."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(emb.shape[0], generator=gen)[: min(n, emb.shape[0])]
    e = emb[pick].float()
    sim = e @ e.T
    m = len(pick)
    return float((sim.sum() - sim.diagonal().sum()) / max(m * (m - 1), 1))


def _token_label(tokens: list[str]) -> str:
    common = [t for t, _ in Counter(t.lower() for t in tokens if t).most_common(3)]
    return " / ".join(common)


def label_features(samples: TopSamples, sentences: list[str], sources: list[str] | None, emb: torch.Tensor,
                   decode: Callable[[int], str], threshold: float = COHERENCE_THRESHOLD, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Label every feature; returns the records and the feature embeddings (mean of the top sentences'
    embeddings, L2-normalised; zero rows for dead features)."""
    from atlascli.wordnet import shared_facts, synset_keys

    stop = stop_words()
    doc_words = [words(s, stop) for s in sentences]
    df: Counter[str] = Counter()
    for ws in doc_words:
        df.update(ws)
    baseline = pairwise_baseline(emb, seed)
    width = len(samples.ids)
    out_emb = torch.zeros(width, emb.shape[1])
    records: list[dict[str, Any]] = []
    for f in range(width):
        ids = samples.ids[f]
        toks = [decode(int(t)).strip() for t in samples.peaks[f]]
        rec: dict[str, Any] = {"index": f, "description": None, "top_tokens": toks,
                               "top_samples": [sentences[int(i)] for i in ids],
                               "top_values": [round(float(v), 5) for v in samples.values[f]],
                               "frequency": round(float(samples.frequency[f]), 6)}
        if len(ids) == 0:
            rec.update(label="(dead)", coherence=None, coherent=False, words=[], wordnet=None)
            records.append(rec)
            continue
        v = emb[torch.as_tensor(ids, dtype=torch.long)].float().mean(0)
        out_emb[f] = v / v.norm().clamp_min(1e-12)
        coh = coherence(emb, ids, baseline)
        top_words = distinctive_words(ids, doc_words, df, len(sentences))
        facts = shared_facts(synset_keys([sources[int(i)] for i in ids])) if sources else None
        coherent = coh is not None and coh >= threshold
        wordlist = ", ".join(w for w, _ in top_words)
        if not coherent:
            label = f"syntax: {_token_label(toks)}" if coh is not None else _token_label(toks) or "(rare)"
        elif facts is not None and (facts.hypernym or facts.lexname):
            head = facts.hypernym or (top_words[0][0] if top_words else facts.lemmas[0])
            label = f"{head} ({facts.lexname})" if facts.lexname else head
            label += f": {wordlist or ', '.join(facts.lemmas)}"
        elif top_words:
            label = " / ".join(w for w, _ in top_words)
        else:
            label = _token_label(toks)
        rec.update(label=label, coherence=None if coh is None else round(coh, 4), coherent=coherent,
                   words=top_words,
                   wordnet=None if facts is None else {"lexname": facts.lexname, "hypernym": facts.hypernym,
                                                       "lemmas": facts.lemmas, "synsets": facts.n})
        records.append(rec)
        if progress and (f % 256 == 0 or f == width - 1):
            progress(f + 1, width)
    return records, out_emb


def labelling_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Share of dead, coherent and WordNet-labelled features."""
    n = max(len(records), 1)
    dead = sum(1 for r in records if not r.get("top_samples"))
    coherent = sum(1 for r in records if r.get("coherent"))
    wordnet = sum(1 for r in records if r.get("coherent") and (r.get("wordnet") or {}).get("lexname"))
    cohs = [r["coherence"] for r in records if r.get("coherence") is not None]
    return {"coherent_features": coherent, "coherent_fraction": coherent / n, "wordnet_labelled": wordnet,
            "median_coherence": float(np.median(cohs)) if cohs else None, "dead_in_labelling": dead,
            "coherence_threshold": COHERENCE_THRESHOLD}
