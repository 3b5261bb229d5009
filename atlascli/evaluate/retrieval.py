"""Semantic retrieval (paper 4.3.2, A.6): find subject feature i back from the atlas query of a concept set X(i).

The paper writes 20 sentences per feature with an LLM from feature descriptions. Offline we take, for each sampled
subject feature, the ``set_size`` held-out test sentences that activate it most (never used to fit T). As the paper's
filter (ii), a feature is kept only when X(i) activates it most among all subject features (mean z-score over X(i),
z over the test split), so raw neuron scales do not decide."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from atlascli.errors import InputError
from atlascli.evaluate.data import TestData
from atlascli.metrics import predicted_probabilities, reciprocal_ranks
from atlascli.registry import Artifact
from atlascli.translate.base import StoredTranslation


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


@dataclass(frozen=True)
class ConceptSets:
    """The concept sets of one layer and which features survived the filter."""

    candidates: list[int]
    """Sampled subject features."""
    kept: list[int]
    """Those whose concept set maximally activates them."""
    queries: torch.Tensor
    """[len(kept), dc] mean atlas code of each kept feature's concept set."""
    set_size: int
    """Sentences per concept set."""


def concept_sets(data: TestData, layer: int, n_features: int, set_size: int, seed: int) -> ConceptSets:
    """Two streaming passes: per-feature statistics and top sentences, then the sets' atlas codes and z-scores."""
    if set_size < 1 or set_size > data.n:
        raise InputError(f"concept sets of {set_size} sentences from {data.n} test sentences",
                         "use --set-size between 1 and the number of test sentences")
    total = sq = None
    top_v: torch.Tensor | None = None
    top_i: torch.Tensor | None = None
    for idx, x, _ in data.paired(layer):
        xd = x.double()
        total = xd.sum(0) if total is None else total + xd.sum(0)
        sq = (xd**2).sum(0) if sq is None else sq + (xd**2).sum(0)
        cand_v = x.T if top_v is None else torch.cat([top_v, x.T], 1)
        cand_i = idx.expand(x.shape[1], -1) if top_i is None else torch.cat([top_i, idx.expand(x.shape[1], -1)], 1)
        k = min(set_size, cand_v.shape[1])
        top_v, pos = cand_v.topk(k, dim=1)
        top_i = cand_i.gather(1, pos)
    assert total is not None and sq is not None and top_i is not None
    mean = total / data.n
    std = (sq / data.n - mean**2).clamp_min(0).sqrt()
    alive = torch.nonzero(std > 1e-12).flatten().numpy()
    rng = np.random.default_rng(seed)
    cand = sorted(rng.choice(alive, size=min(n_features, alive.size), replace=False).tolist())
    members = top_i[cand]  # [C, set_size] sentence indices
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
    Q /= set_size
    Z /= set_size
    keep = [j for j, f in enumerate(cand) if int(Z[j].argmax()) == f]
    return ConceptSets(cand, [cand[j] for j in keep], Q[keep].float(), set_size)


def retrieval(sets: ConceptSets, alignment: Artifact) -> RetrievalResult:
    """Eq. 3 for each concept set's query over all subject features; MRR and MPP of the correct one."""
    if not sets.kept:
        raise InputError("no subject feature passed the concept-set filter", "use more test sentences or features")
    tr = StoredTranslation(alignment.file("translation.safetensors"))
    if tr.dc != sets.queries.shape[1]:
        raise InputError(f"{alignment.id} maps to {tr.dc} atlas features, the queries have {sets.queries.shape[1]}",
                         "evaluate alignments of the same atlas")
    T = tr.load().double()  # [ds, dc]
    Q = sets.queries.double()
    qn = Q.norm(dim=1, keepdim=True)
    ok = (qn.squeeze(1) > 0).numpy()
    sim = ((Q @ T.T) / tr.row_norms.clamp_min(1e-30) / qn.clamp_min(1e-30)).numpy()  # [K, ds], eq. 3 per row
    targets = np.asarray(sets.kept)
    rr = reciprocal_ranks(sim[ok], targets[ok])
    pp = predicted_probabilities(sim[ok], targets[ok])
    # A query with no active atlas feature cannot retrieve anything: it counts as a miss (rank ds).
    rr = np.r_[rr, np.full(int((~ok).sum()), 1.0 / tr.ds)]
    pp = np.r_[pp, np.full(int((~ok).sum()), 1.0 / tr.ds)]
    return RetrievalResult(float(rr.mean()), float(rr.std()), float(pp.mean()), float(pp.std()))


def random_retrieval(n_queries: int, ds: int, seed: int = 0, repeats: int = 10) -> RetrievalResult:
    """MRR / MPP of random Gaussian similarity vectors (the chance level for ``ds`` subject features)."""
    rng = np.random.default_rng(seed)
    n = max(n_queries, 1) * repeats
    sim = rng.standard_normal((n, ds))
    targets = rng.integers(0, ds, size=n)
    rr, pp = reciprocal_ranks(sim, targets), predicted_probabilities(sim, targets)
    return RetrievalResult(float(rr.mean()), float(rr.std()), float(pp.mean()), float(pp.std()))
