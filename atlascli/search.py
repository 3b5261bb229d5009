"""Concept queries (paper 3.4 step 1) and search (steps 2-3): q over atlas features -> s = T_hat q / |q|
-> the subject features that encode the concept, with their max-activating test sentences."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from atlascli.atlas.store import Atlas
from atlascli.errors import InputError, NotFoundError
from atlascli.registry import Artifact, Registry
from atlascli.translate import StoredTranslation


@dataclass(frozen=True)
class ConceptQuery:
    """A concept as weights over atlas features."""

    features: list[int]
    """Atlas feature indices."""
    weights: list[float]
    """Their weights (same order)."""
    source: str
    """How it was made: features, text, examples, contrast, concept."""
    matches: list[dict[str, Any]] = field(default_factory=list)
    """For text queries: the matched features with label and similarity."""

    def dense(self, width: int) -> torch.Tensor:
        """The query as a dense vector over ``width`` atlas features."""
        q = torch.zeros(width)
        q[self.features] = torch.tensor(self.weights, dtype=torch.float32)
        return q


_FEAT = re.compile(r"^\s*(\d+)\s*(?::\s*([-+0-9.eE]+))?\s*$")


def query_from_features(spec: str, atlas: Atlas) -> ConceptQuery:
    """``"5218,12614"`` (weight 1) or ``"5218:1.0,12614:0.5"``."""
    feats, weights = [], []
    for part in spec.split(","):
        if not part.strip():
            continue
        m = _FEAT.match(part)
        if not m:
            raise InputError(f"bad feature spec {part!r}", "use 5218,12614 or 5218:1.0,12614:0.5")
        idx = int(m.group(1))
        atlas.feature(idx)  # range check
        feats.append(idx)
        weights.append(float(m.group(2)) if m.group(2) else 1.0)
    if not feats:
        raise InputError("no features given", "use --features 5218,12614")
    return ConceptQuery(feats, weights, "features",
                        [{"index": f, "label": atlas.label(f), "weight": w} for f, w in zip(feats, weights)])


def query_from_text(text: str, atlas: Atlas, top_features: int = 5, threshold: float = 0.35,
                    embedder: str | None = None) -> ConceptQuery:
    """Embed the query and the feature labels; the best-matching features, weighted by similarity."""
    from atlascli.embed import embed

    if not text.strip():
        raise InputError("empty query", 'e.g. atlas search "dogs and cats"')
    q = embed([text], embedder or atlas.artifact.provenance.get("embedder", "minilm-l6"))[0]
    sims = atlas.label_embeddings @ q
    order = torch.argsort(sims, descending=True)[: max(top_features, 5)].tolist()
    chosen = [i for i in order[:top_features] if float(sims[i]) >= threshold]
    if not chosen:
        closest = ", ".join(f"{i} '{atlas.label(i)}' ({float(sims[i]):.2f})" for i in order[:5])
        raise InputError(f"no atlas label matches {text!r} above similarity {threshold}",
                         f"closest: {closest}; lower --threshold or use --features")
    matches = [{"index": i, "label": atlas.label(i), "weight": float(sims[i])} for i in chosen]
    return ConceptQuery(chosen, [float(sims[i]) for i in chosen], "text", matches)


def atlas_codes(sentences: list[str], atlas: Atlas, lm: Any | None = None) -> torch.Tensor:
    """Max-pooled atlas codes [n, width] of sentences (foundation model + the atlas SAE)."""
    from sae_lens import SAE

    from atlascli.extract import ExtractConfig, extract_shard
    from atlascli.models import load_model

    p = atlas.artifact.provenance
    if not sentences:
        raise InputError("no example sentences", "give a file with one sentence per line")
    lm = lm or load_model(p["foundation"])
    sae = SAE.load_from_disk(str(atlas.sae_path), device=str(lm.device))
    cfg = ExtractConfig(model=p["foundation"], layers=(int(p["layer"]),), site=p["site"], sae=atlas.id)
    out = extract_shard(lm, sentences, cfg, sae)
    from atlascli.extract import Shard

    layer = int(p["layer"])
    csr = (out[f"L{layer}.indptr"].numpy(), out[f"L{layer}.indices"].numpy(), out[f"L{layer}.values"].numpy())
    return Shard(torch.arange(len(sentences)), None, csr, atlas.width).to_dense()


def query_from_examples(examples: list[str], atlas: Atlas, contrast: list[str] | None = None,
                        top_features: int = 0, lm: Any | None = None) -> ConceptQuery:
    """Mean atlas code of example sentences, minus the mean of contrast sentences when given."""
    q = atlas_codes(examples, atlas, lm).mean(0)
    if contrast:
        q = q - atlas_codes(contrast, atlas, lm).mean(0)
    if top_features > 0:
        keep = torch.argsort(q, descending=True)[:top_features]
        mask = torch.zeros_like(q, dtype=torch.bool)
        mask[keep] = True
        q = torch.where(mask, q, torch.zeros_like(q))
    nz = torch.nonzero(q).flatten().tolist()
    if not nz:
        raise InputError("the examples activate no atlas feature", "give more or longer example sentences")
    weights = q[nz].tolist()
    order = np.argsort(-np.abs(weights))[:10]
    matches = [{"index": nz[i], "label": atlas.label(nz[i]), "weight": weights[i]} for i in order]
    return ConceptQuery(nz, weights, "contrast" if contrast else "examples", matches)


# ----------------------------------------------------------------------------- alignment lookup


def resolve_alignment(registry: Registry, alignment: str | None = None, subject: str | None = None,
                      layer: int | None = None, method: str = "procrustes", atlas: Atlas | None = None) -> Artifact:
    """The named alignment, else the most recent one matching subject / layer / method / atlas."""
    if alignment:
        art = registry.get(alignment, "alignment")
    else:
        match: dict[str, Any] = {"method": method}
        if subject:
            match["subject"] = subject
        if layer is not None:
            match["layer"] = layer
        if atlas is not None:
            match["atlas"] = atlas.id
        art_or_none = registry.latest("alignment", **match)
        if art_or_none is None:
            what = ", ".join(f"{k}={v}" for k, v in match.items())
            have = sorted({(a.provenance["subject"], a.provenance["layer"], a.provenance["method"])
                           for a in registry.list("alignment")})
            raise NotFoundError(f"no alignment with {what}",
                                f"fit one with `atlas fit`; existing: {have[:6] if have else 'none'}")
        art = art_or_none
    if atlas is not None and art.provenance.get("atlas") != atlas.id:
        raise InputError(f"alignment {art.id} was fitted to atlas {art.provenance.get('atlas')}, not {atlas.id}",
                         "pass the matching --atlas or refit")
    return art


@dataclass(frozen=True)
class SubjectFeature:
    """One search hit."""

    index: int
    """Subject feature index."""
    score: float
    """Its entry of s (eq. 3)."""
    examples: list[tuple[float, str]]
    """Max-activating test-split sentences with their activation."""


def aligned_sentences(acts: Any, layer: int, s: torch.Tensor, sentences: list[str],
                      n: int = 5) -> list[tuple[float, str]]:
    """Test sentences whose (centred, L2-normalised) subject activation is most similar to s: the
    ranking of the paper's translation-quality evaluation (4.3.1). Two streaming passes over the shards."""
    total, count = None, 0
    for shard in acts.shards(layer):
        part = shard.dense.double().sum(0)
        total = part if total is None else total + part
        count += shard.dense.shape[0]
    if total is None or count == 0:
        return []
    mean = (total / count).float()
    direction = s / s.norm().clamp_min(1e-30)
    best: list[tuple[float, int]] = []
    for shard in acts.shards(layer):
        x = torch.nn.functional.normalize(shard.dense - mean, dim=1)
        scores = x @ direction
        k = min(n, len(scores))
        vals, idx = scores.topk(k)
        best = sorted(best + [(float(v), int(shard.index[i])) for v, i in zip(vals, idx)], key=lambda t: -t[0])[:n]
    return [(v, sentences[i]) for v, i in best]


@dataclass(frozen=True)
class SearchResult:
    """What `atlas search` shows."""

    query: ConceptQuery
    """The resolved concept query."""
    alignment: str
    """Alignment id used."""
    features: list[SubjectFeature]
    """Top subject features by s."""
    similarity: torch.Tensor
    """The full s vector [ds]."""
    aligned: list[tuple[float, str]] = field(default_factory=list)
    """Test sentences whose subject activations are most similar to s (cosine, centred)."""


def subject_similarity(query: ConceptQuery, alignment: Artifact) -> torch.Tensor:
    """s = T_hat q / |q| reading only the query's rows of the stored translation."""
    tr = StoredTranslation(alignment.file("translation.safetensors"))
    return tr.similarity(query.features, query.weights)


def top_examples(acts: Any, layer: int, features: list[int], sentences: list[str],
                 n: int = 3) -> dict[int, list[tuple[float, str]]]:
    """Max-activating sentences per subject feature, streamed over the shards (memory ~ shard size)."""
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


def search(query: ConceptQuery, alignment: Artifact, top: int = 10, examples: int = 3,
           test_acts: Any | None = None, test_sentences: list[str] | None = None,
           negative: bool = False, n_aligned: int = 5) -> SearchResult:
    """Rank subject features by eq. 3; with test activations, attach each feature's max-activating
    sentences and the sentences most aligned with s."""
    s = subject_similarity(query, alignment)
    order = torch.argsort(s, descending=not negative)[:top].tolist()
    ex: dict[int, list[tuple[float, str]]] = {}
    aligned: list[tuple[float, str]] = []
    if test_acts is not None and test_sentences is not None:
        layer = int(alignment.provenance["layer"])
        if examples > 0:
            ex = top_examples(test_acts, layer, order, test_sentences, examples)
        if n_aligned > 0:
            aligned = aligned_sentences(test_acts, layer, -s if negative else s, test_sentences, n_aligned)
    feats = [SubjectFeature(i, float(s[i]), ex.get(i, [])) for i in order]
    return SearchResult(query, alignment.id, feats, s, aligned)
