"""Translation quality (paper 4.3.1): for single-feature queries e_f, rank held-out sentences by the cosine of their
(centred) subject activations with s_f = T_hat e_f and score that ranking against "atlas feature f is active".

Features whose label is constant on the test sentences (no positive, or positive everywhere) have no AUROC: they are
left out of the means and counted (``dropped``), never silently. The chance level is a fresh random direction per
feature and per draw (several draws: mean and spread)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from atlascli.errors import InputError
from atlascli.evaluate.data import TestData
from atlascli.evaluate.randomdirs import random_direction
from atlascli.metrics import auroc, average_precision
from atlascli.registry import Artifact
from atlascli.translate.base import StoredTranslation


@dataclass(frozen=True)
class QualityResult:
    """AUROC / AP of one alignment, averaged over atlas features."""

    auroc: float
    """Mean AUROC over features."""
    ap: float
    """Mean average precision over features."""
    auroc_std: float
    """Standard deviation of AUROC over features."""
    ap_std: float
    """Standard deviation of AP over features."""
    per_feature: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Atlas feature -> (AUROC, AP)."""
    used: int = 0
    """Features in the means."""


@dataclass(frozen=True)
class QualityBaseline:
    """What chance gives on the same features and sentences."""

    positive_rate: float
    """Mean share of sentences that activate a feature (AP of a random ranking)."""
    random_auroc: float
    """Mean AUROC of random directions (mean over draws of the mean over features)."""
    random_ap: float
    """Mean AP of random directions."""
    random_auroc_std: float = 0.0
    """Spread (std) over draws of the mean random AUROC."""
    random_ap_std: float = 0.0
    """Spread (std) over draws of the mean random AP."""
    draws: int = 1
    """Random directions per feature."""
    dropped: dict[str, list[int]] = field(default_factory=dict)
    """Reason -> features left out of every mean (label constant on the test sentences)."""


def sample_features(counts: np.ndarray, n_sentences: int, n: int, seed: int, given: list[int] | None = None,
                    min_positives: int = 5) -> list[int]:
    """The given atlas features (checked), or ``n`` sampled with ``seed`` among those active on at least
    ``min_positives`` and not on every test sentence (AUROC needs both classes)."""
    width = counts.size
    if given:
        bad = [f for f in given if not 0 <= f < width]
        if bad:
            raise InputError(f"atlas feature(s) {bad[:5]} outside the atlas (0..{width - 1})", "pick features in range")
        return list(dict.fromkeys(given))
    eligible = np.flatnonzero((counts >= min_positives) & (counts < n_sentences))
    if eligible.size == 0:
        raise InputError(f"no atlas feature is active on {min_positives}+ test sentences",
                         "use more test sentences (--test-limit)")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(eligible, size=min(n, eligible.size), replace=False).tolist())


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if not math.isnan(v)])
    return (float(arr.mean()), float(arr.std())) if arr.size else (math.nan, math.nan)


def dropped_features(Y: np.ndarray, features: list[int]) -> dict[str, list[int]]:
    """Features whose label is constant over the sentences, by reason."""
    pos = Y.sum(0)
    out = {"no positive test sentence": [f for f, p in zip(features, pos) if p == 0],
           "positive on every test sentence": [f for f, p in zip(features, pos) if p == Y.shape[0]]}
    return {k: v for k, v in out.items() if v}


def translation_quality(data: TestData, alignments: list[Artifact], features: list[int], seed: int = 0,
                        draws: int = 3) -> tuple[dict[str, QualityResult], dict[int, QualityBaseline]]:
    """Results per alignment id, and the chance baseline per layer. One streaming pass per layer."""
    if draws < 1:
        raise InputError(f"--random-draws must be >= 1, got {draws}", "e.g. --random-draws 3")
    results: dict[str, QualityResult] = {}
    baselines: dict[int, QualityBaseline] = {}
    by_layer: dict[int, list[Artifact]] = {}
    for al in alignments:
        by_layer.setdefault(int(al.provenance["layer"]), []).append(al)
    cols = np.asarray(features)
    for layer, arts in sorted(by_layer.items()):
        directions = []
        for al in arts:
            tr = StoredTranslation.from_artifact(al)
            if tr.dc != data.atlas.widths[data.atlas_layer]:
                raise InputError(f"{al.id} maps to {tr.dc} atlas features but the atlas has "
                                 f"{data.atlas.widths[data.atlas_layer]}", "evaluate alignments of this atlas")
            s = tr.rows(features).double() / tr.row_norms.clamp_min(1e-30)  # [F, ds], eq. 3 for e_f
            directions.append(s)
        ds = directions[0].shape[1]
        for d in range(draws):  # a fresh direction per feature and per draw
            directions.append(torch.stack([random_direction(ds, "quality", seed, layer, f, d) for f in features]))
        D = torch.nn.functional.normalize(torch.cat(directions), dim=1).T.float()  # [ds, F * (methods + 1)]
        mean = data.subject_mean(layer).float()
        scores, labels = [], []
        for _, x, codes in data.paired(layer):
            xn = torch.nn.functional.normalize(x - mean, dim=1)
            scores.append((xn @ D).numpy())
            labels.append(codes[:, cols].toarray() > 0)
        S, Y = np.concatenate(scores), np.concatenate(labels)
        F = len(features)
        dropped = dropped_features(Y, features)
        gone = {f for v in dropped.values() for f in v}
        ok = [i for i, f in enumerate(features) if f not in gone]
        rand: list[tuple[float, float]] = []
        rows: list[Artifact | None] = [*arts, *([None] * draws)]
        for j, art in enumerate(rows):
            per = {features[i]: (auroc(S[:, j * F + i], Y[:, i]), average_precision(S[:, j * F + i], Y[:, i]))
                   for i in ok}
            per.update({f: (math.nan, math.nan) for f in features if f in gone})
            a_mean, a_std = _mean_std([v[0] for v in per.values()])
            p_mean, p_std = _mean_std([v[1] for v in per.values()])
            if art is None:
                rand.append((a_mean, p_mean))
            else:
                results[art.id] = QualityResult(a_mean, p_mean, a_std, p_std, per, len(ok))
        ra, rp = np.array([r[0] for r in rand]), np.array([r[1] for r in rand])
        baselines[layer] = QualityBaseline(float(Y[:, ok].mean(0).mean()) if ok else math.nan, float(ra.mean()),
                                           float(rp.mean()), float(ra.std()), float(rp.std()), draws, dropped)
    return results, baselines
