"""Translation quality (paper 4.3.1): for single-feature queries e_f, rank held-out sentences by the cosine of their
(centred) subject activations with s_f = T_hat e_f and score that ranking against "atlas feature f is active"."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from atlascli.errors import InputError
from atlascli.evaluate.data import TestData
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


@dataclass(frozen=True)
class QualityBaseline:
    """What chance gives on the same features and sentences."""

    positive_rate: float
    """Mean share of sentences that activate a feature (AP of a random ranking)."""
    random_auroc: float
    """Mean AUROC of random directions."""
    random_ap: float
    """Mean AP of random directions."""


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


def translation_quality(data: TestData, alignments: list[Artifact], features: list[int],
                        seed: int = 0) -> tuple[dict[str, QualityResult], dict[int, QualityBaseline]]:
    """Results per alignment id, and the chance baseline per layer. One streaming pass per layer."""
    results: dict[str, QualityResult] = {}
    baselines: dict[int, QualityBaseline] = {}
    by_layer: dict[int, list[Artifact]] = {}
    for al in alignments:
        by_layer.setdefault(int(al.provenance["layer"]), []).append(al)
    cols = np.asarray(features)
    for layer, arts in sorted(by_layer.items()):
        directions = []
        for al in arts:
            tr = StoredTranslation(al.file("translation.safetensors"))
            if tr.dc != data.atlas.widths[data.atlas_layer]:
                raise InputError(f"{al.id} maps to {tr.dc} atlas features but the atlas has "
                                 f"{data.atlas.widths[data.atlas_layer]}", "evaluate alignments of this atlas")
            s = tr.rows(features).double() / tr.row_norms.clamp_min(1e-30)  # [F, ds], eq. 3 for e_f
            directions.append(s)
        gen = torch.Generator().manual_seed(seed + layer)
        directions.append(torch.randn(len(features), directions[0].shape[1], generator=gen, dtype=torch.float64))
        D = torch.nn.functional.normalize(torch.cat(directions), dim=1).T.float()  # [ds, F * (methods + 1)]
        mean = data.subject_mean(layer).float()
        scores, labels = [], []
        for _, x, codes in data.paired(layer):
            xn = torch.nn.functional.normalize(x - mean, dim=1)
            scores.append((xn @ D).numpy())
            labels.append(codes[:, cols].toarray() > 0)
        S, Y = np.concatenate(scores), np.concatenate(labels)
        F = len(features)
        rows: list[Artifact | None] = [*arts, None]
        for j, art in enumerate(rows):
            per = {f: (auroc(S[:, j * F + i], Y[:, i]), average_precision(S[:, j * F + i], Y[:, i]))
                   for i, f in enumerate(features)}
            a_mean, a_std = _mean_std([v[0] for v in per.values()])
            p_mean, p_std = _mean_std([v[1] for v in per.values()])
            if art is None:
                baselines[layer] = QualityBaseline(float(Y.mean(0).mean()), a_mean, p_mean)
            else:
                results[art.id] = QualityResult(a_mean, p_mean, a_std, p_std, per)
    return results, baselines
