"""Semantic retrieval (paper 4.3.2, A.6): find subject feature i back from the atlas query of a concept set X(i).

Concept sets X(i) come from a file (the paper writes 20 sentences per feature with an LLM; see ``concept_file``) or
are built offline from held-out test sentences (never used to fit T). The default offline construction is ``tail``:
``set_size`` sentences sampled among those ranked 21-200 by the feature, so no translation method's own statistic
(Semantic Lens fits on the top 20 per feature) defines the sets; ``top`` (the top ``set_size``) is kept for
comparison. As the paper's filter (ii), a feature is kept only when X(i) activates it most among all subject features
(mean z-score over X(i), z over the test split), so raw neuron scales do not decide.

Each query is ranked, as in the paper, among the validated features (its chance level is H_n/n for MRR and 1/n for
MPP, n validated features: 0.0147 and 0.0022 for the paper's 454); ranking among all ds subject features is the
harder variant, also reported."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from atlascli.errors import InputError
from atlascli.evaluate.data import TestData
from atlascli.metrics import predicted_probabilities, reciprocal_ranks
from atlascli.registry import Artifact
from atlascli.translate.base import StoredTranslation

CONSTRUCTIONS = ("tail", "top")
"""Offline concept-set constructions."""
TAIL = (20, 200)
"""Ranks (0-based, end exclusive) the ``tail`` construction samples from: the 21st to the 200th sentence."""
CANDIDATES = ("validated", "all")
"""Candidate sets a query is ranked among."""


@dataclass(frozen=True)
class RetrievalResult:
    """MRR and MPP of one alignment over the validated features."""

    mrr: float
    """Mean reciprocal rank (eq. 10)."""
    mrr_std: float
    """Its standard deviation over features."""
    mpp: float
    """Mean predicted probability (eq. 11)."""
    mpp_std: float
    """Its standard deviation over features."""
    n_candidates: int = 0
    """Size of the candidate set each query was ranked among."""


@dataclass(frozen=True)
class ConceptSets:
    """The concept sets of one layer and which features survived the filter."""

    candidates: list[int]
    """Subject features with a concept set (sampled, or named by the file)."""
    kept: list[int]
    """Those whose concept set maximally activates them and activates some atlas feature (the validated set)."""
    queries: torch.Tensor
    """[len(kept), dc] mean atlas code of each kept feature's concept set."""
    set_size: int
    """Sentences per concept set (the most, for file sets)."""
    construction: str = "top"
    """How the sets were made, in words."""
    dropped: dict[str, list[int]] = field(default_factory=dict)
    """Reason -> candidate features dropped for it."""
    members: list[list[int]] = field(default_factory=list)
    """Test-sentence indices of each kept feature's set (offline constructions; empty for file sets)."""


def construction_label(construction: str, set_size: int, tail: tuple[int, int] = TAIL) -> str:
    """The report's name of an offline construction."""
    if construction == "tail":
        return (f"tail: {set_size} held-out test sentences sampled among those ranked {tail[0] + 1}-{tail[1]} by the "
                f"subject feature (not the top-{tail[0]} statistic Semantic Lens fits on)")
    return (f"top: the {set_size} held-out test sentences that activate the subject feature most (the same statistic "
            f"Semantic Lens fits with k=20, which favours it)")


def feature_stats(data: TestData, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of every subject feature over the test sentences (float64)."""
    total = sq = None
    for _, x, _ in data.paired(layer):
        xd = x.double()
        total = xd.sum(0) if total is None else total + xd.sum(0)
        sq = (xd**2).sum(0) if sq is None else sq + (xd**2).sum(0)
    assert total is not None and sq is not None
    mean = total / data.n
    return mean, (sq / data.n - mean**2).clamp_min(0).sqrt()


def _top_members(data: TestData, layer: int, cand: list[int], depth: int) -> torch.Tensor:
    """[C, depth] test-sentence indices of each candidate feature's ``depth`` largest activations, best first."""
    cols = torch.tensor(cand)
    top_v: torch.Tensor | None = None
    top_i: torch.Tensor | None = None
    for idx, x, _ in data.paired(layer):
        xs = x[:, cols].T
        cand_v = xs if top_v is None else torch.cat([top_v, xs], 1)
        ids = idx.expand(len(cand), -1)
        cand_i = ids if top_i is None else torch.cat([top_i, ids], 1)
        top_v, pos = cand_v.topk(min(depth, cand_v.shape[1]), dim=1)
        top_i = cand_i.gather(1, pos)
    assert top_i is not None
    return top_i


def validate(cand: list[int], Q: torch.Tensor, Z: torch.Tensor, set_size: int, construction: str,
             members: torch.Tensor | None = None) -> ConceptSets:
    """Filter (ii) of the paper, plus concept sets that activate no atlas feature (they cannot retrieve anything)."""
    not_max = [f for j, f in enumerate(cand) if int(Z[j].argmax()) != f]
    empty = [f for j, f in enumerate(cand) if f not in not_max and float(Q[j].abs().sum()) == 0.0]
    keep = [j for j, f in enumerate(cand) if f not in not_max and f not in empty]
    dropped = {"set does not activate its feature most": not_max, "set activates no atlas feature": empty}
    kept_members = [members[j].tolist() for j in keep] if members is not None else []
    return ConceptSets(cand, [cand[j] for j in keep], Q[keep].float(), set_size, construction,
                       {k: v for k, v in dropped.items() if v}, kept_members)


def concept_sets(data: TestData, layer: int, n_features: int, set_size: int, seed: int,
                 construction: str = "tail", tail: tuple[int, int] = TAIL) -> ConceptSets:
    """Offline concept sets from the test split: statistics pass, top-ranks pass, then the sets' codes and z-scores."""
    if construction not in CONSTRUCTIONS:
        raise InputError(f"unknown concept-set construction {construction!r}", f"use {' or '.join(CONSTRUCTIONS)}")
    lo, hi = (tail[0], min(tail[1], data.n)) if construction == "tail" else (0, set_size)
    if set_size < 1 or hi - lo < set_size:
        need = f"ranks {lo + 1}-{tail[1]}" if construction == "tail" else "the top sentences"
        raise InputError(f"concept sets of {set_size} sentences from {need} of {data.n} test sentences",
                         "use a smaller --set-size or more test sentences (--test-limit)")
    mean, std = feature_stats(data, layer)
    alive = torch.nonzero(std > 1e-12).flatten().numpy()
    rng = np.random.default_rng(seed)
    cand = sorted(rng.choice(alive, size=min(n_features, alive.size), replace=False).tolist())
    ranked = _top_members(data, layer, cand, hi)  # [C, hi]
    if construction == "tail":
        picks = np.stack([rng.choice(np.arange(lo, hi), size=set_size, replace=False) for _ in cand])
        members = ranked.gather(1, torch.from_numpy(picks))
    else:
        members = ranked[:, :set_size]
    C, dc = len(cand), data.atlas.widths[data.atlas_layer]
    Q = torch.zeros(C, dc, dtype=torch.float64)
    Z = torch.zeros(C, mean.numel(), dtype=torch.float64)
    safe = torch.where(std > 1e-12, std, torch.ones_like(std))
    for idx, x, codes in data.paired(layer):
        M = (members[:, :, None] == idx[None, None, :]).any(1).double()  # [C, m]
        if not M.any():
            continue
        Q += M @ torch.from_numpy(codes.toarray())
        Z += M @ ((x.double() - mean) / safe)
    return validate(cand, Q / set_size, Z / set_size, set_size, construction_label(construction, set_size, tail), members)


def _summary(rr: np.ndarray, pp: np.ndarray, n: int) -> RetrievalResult:
    return RetrievalResult(float(rr.mean()), float(rr.std()), float(pp.mean()), float(pp.std()), n)


def retrieval(sets: ConceptSets, alignment: Artifact) -> dict[str, RetrievalResult]:
    """Eq. 3 for each concept set's query; MRR and MPP of the correct feature ranked among the validated features
    (``validated``, the paper's protocol) and among all subject features (``all``)."""
    if not sets.kept:
        why = "; ".join(f"{len(v)} {k}" for k, v in sets.dropped.items())
        raise InputError(f"no subject feature passed the concept-set filter ({len(sets.candidates)} concept sets: {why})",
                         "use more test sentences (--test-limit), more --retrieval-features, --concept-construction "
                         "top, or a --concept-sets file")
    tr = StoredTranslation.from_artifact(alignment)
    if tr.dc != sets.queries.shape[1]:
        raise InputError(f"{alignment.id} maps to {tr.dc} atlas features, the queries have {sets.queries.shape[1]}",
                         "evaluate alignments of the same atlas")
    T = tr.load().double()  # [ds, dc]
    Q = sets.queries.double()
    sim = ((Q @ T.T) / tr.row_norms.clamp_min(1e-30) / Q.norm(dim=1, keepdim=True).clamp_min(1e-30)).numpy()
    kept = np.asarray(sets.kept)
    local = np.arange(len(kept))
    sub = sim[:, kept]
    return {"validated": _summary(reciprocal_ranks(sub, local), predicted_probabilities(sub, local), len(kept)),
            "all": _summary(reciprocal_ranks(sim, kept), predicted_probabilities(sim, kept), tr.ds)}


def chance_retrieval(n: int) -> dict[str, Any]:
    """What a random ranking scores among ``n`` candidates: MRR = H_n / n (its std too) and MPP = 1 / n."""
    if n < 1:
        raise InputError("no retrieval candidates", "use more test sentences or features")
    k = np.arange(1, n + 1, dtype=np.float64)
    mrr = float((1.0 / k).sum() / n)
    return {"mrr": mrr, "mrr_std": float(np.sqrt(max((1.0 / k**2).sum() / n - mrr**2, 0.0))), "mpp": 1.0 / n,
            "mpp_std": None, "n_candidates": n}
