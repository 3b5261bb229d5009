"""Test sentences for a subject direction or feature: the max-activating sentences of features, and the sentences
whose activations are most aligned with a direction s. Streamed over the activation shards (memory ~ shard size)."""

from __future__ import annotations

from typing import Any

import torch

from atlascli.errors import InputError

ALIGNMENT_METRICS = ("standardised", "centred")
"""How `aligned_sentences` compares a sentence's activation x with s: ``standardised`` (cosine of
(x - mean) / sd with s / sd: each subject dimension in units of its own spread over the test sentences, so a few
high-variance dimensions that separate short fragments from long sentences do not decide the ranking; the default)
or ``centred`` (cosine of x - mean with s: the ranking of the paper's translation-quality evaluation, 4.3.1)."""

SD_FLOOR = 1e-6
"""Dimensions whose spread is below this share of the largest one (dead units) take no part in the standardised
comparison."""

SD_MIN_SHARE = 0.1
"""In the standardised comparison no live dimension's spread counts as less than this share of the median one: a
unit that fires on one test sentence in thousands has a tiny spread, and dividing by it would let that unit alone
decide the ranking (on SmolLM2's MLP neurons one unit of 1,536 at layer 19 is below it, none at layers 3, 12, 25)."""


def check_alignment_metric(metric: str) -> str:
    """``metric`` when it is one of :data:`ALIGNMENT_METRICS`; else a clear error."""
    if metric not in ALIGNMENT_METRICS:
        raise InputError(f"unknown alignment metric {metric!r}", f"use one of {', '.join(ALIGNMENT_METRICS)}")
    return metric


def top_examples(acts: Any, layer: int, features: list[int], sentences: list[str],
                 n: int = 3) -> dict[int, list[tuple[float, str]]]:
    """Max-activating sentences per subject feature."""
    best: dict[int, list[tuple[float, int]]] = {f: [] for f in features}
    cols = torch.tensor(features)
    for shard in acts.shards(layer):
        block = shard.dense[:, cols]
        k = min(n, block.shape[0])
        vals, idx = block.topk(k, dim=0)
        for j, f in enumerate(features):
            best[f].extend((float(v), int(shard.index[i])) for v, i in zip(vals[:, j], idx[:, j]))
            best[f] = sorted(best[f], key=lambda t: -t[0])[:n]
    return {f: [(v, sentences[i]) for v, i in lst] for f, lst in best.items()}


def varying(sd: torch.Tensor) -> torch.Tensor:
    """Dimensions whose spread is at least :data:`SD_FLOOR` of the largest one (the others are dead units)."""
    return sd > SD_FLOOR * float(sd.max().clamp_min(1e-300))


def activation_moments(acts: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """Mean and standard deviation (float64, population) of the activations at ``layer``, and the row count.

    Shards are combined with Chan et al.'s pairwise update of (mean, sum of squared deviations), not as
    E[x^2] - E[x]^2: that difference cancels for a unit that is (nearly) constant at a large value, leaving a spread of
    rounding noise that can lift a dead unit over :data:`SD_FLOOR` and into the standardised ranking."""
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None
    count = 0
    for shard in acts.shards(layer):
        x = shard.dense.double()
        n = x.shape[0]
        if n == 0:
            continue
        mb = x.mean(0)
        m2b = (x - mb).square().sum(0)
        if mean is None or m2 is None:
            mean, m2, count = mb, m2b, n
            continue
        delta, total = mb - mean, count + n
        mean = mean + delta * (n / total)
        m2 = m2 + m2b + delta.square() * (count * n / total)
        count = total
    if mean is None or m2 is None or count == 0:
        return None
    return mean, (m2 / count).sqrt(), count


def alignment_scores(x: torch.Tensor, s: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor | None) -> torch.Tensor:
    """Cosine of each row of ``x`` (centred; standardised when ``sd`` is given) with ``s`` (divided by ``sd``)."""
    xc = x.double() - mean
    d = s.double()
    if sd is not None:
        sd = sd.double()
        alive = varying(sd)
        floor = SD_MIN_SHARE * float(sd[alive].median()) if alive.any() else 1.0
        inv = torch.where(alive, 1.0 / sd.clamp_min(floor), torch.zeros_like(sd))
        xc, d = xc * inv, d * inv
    if float(d.norm()) == 0.0:  # s is zero where the activations vary: no sentence is aligned with it
        return torch.zeros(x.shape[0], dtype=torch.float64)
    return torch.nn.functional.normalize(xc, dim=1) @ (d / d.norm())


def aligned_sentences(acts: Any, layer: int, s: torch.Tensor, sentences: list[str], n: int = 5,
                      metric: str = "standardised") -> list[tuple[float, str]]:
    """Test sentences whose activation is most similar to s under ``metric`` (see `ALIGNMENT_METRICS`).
    Two streaming passes over the shards."""
    check_alignment_metric(metric)
    moments = activation_moments(acts, layer)
    if moments is None:
        return []
    mean, sd, _ = moments
    if not bool((s.double()[varying(sd)] != 0).any()):  # s is zero where the activations vary: nothing is aligned with it
        return []
    best: list[tuple[float, int]] = []
    for shard in acts.shards(layer):
        scores = alignment_scores(shard.dense, s, mean, sd if metric == "standardised" else None)
        k = min(n, len(scores))
        vals, idx = scores.topk(k)
        best = sorted(best + [(float(v), int(shard.index[i])) for v, i in zip(vals, idx)], key=lambda t: -t[0])[:n]
    return [(v, sentences[i]) for v, i in best]
