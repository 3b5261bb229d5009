"""Concept queries (paper 3.4 step 1) and search (steps 2-3): q over atlas features -> s = T_hat q / |q|
-> the subject features that encode the concept, with their max-activating test sentences."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from atlascli.atlas.store import Atlas
from atlascli.errors import InputError, NotFoundError
from atlascli.query import ConceptQuery
from atlascli.registry import Artifact, Registry
from atlascli.samples import aligned_sentences, check_alignment_metric, top_examples
from atlascli.translate import StoredTranslation

_FEAT = re.compile(r"^\s*(\d+)\s*(?::\s*([-+0-9.eE]+))?\s*$")

TEXT_ROUTES = ("auto", "examples", "labels")
"""How text becomes a query: ``examples`` (the labelling sentences most similar to the text, their mean code
minus the corpus mean), ``labels`` (feature label embeddings), ``auto`` (examples when the atlas has them)."""


def _match(atlas: Atlas, index: int, weight: float) -> dict[str, Any]:
    rec = atlas.labels[index] if 0 <= index < atlas.width else {}
    return {"index": index, "label": atlas.label(index), "weight": weight, "coherence": rec.get("coherence")}


def query_from_features(spec: str, atlas: Atlas) -> ConceptQuery:
    """``"5218,12614"`` (weight 1) or ``"5218:1.0,12614:0.5"``; a feature named twice has its weights summed."""
    merged: dict[int, float] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        m = _FEAT.match(part)
        if not m:
            raise InputError(f"bad feature spec {part!r}", "use 5218,12614 or 5218:1.0,12614:0.5")
        idx = int(m.group(1))
        atlas.feature(idx)  # range check
        merged[idx] = merged.get(idx, 0.0) + (float(m.group(2)) if m.group(2) else 1.0)
    if not merged:
        raise InputError("no features given", "use --features 5218,12614")
    feats, weights = list(merged), list(merged.values())
    return ConceptQuery(feats, weights, "features", [_match(atlas, f, w) for f, w in zip(feats, weights)])


def query_from_text(text: str, atlas: Atlas, top_features: int = 5, threshold: float | None = None,
                    embedder: str | None = None, route: str = "auto", n_examples: int = 50,
                    include_incoherent: bool = False) -> ConceptQuery:
    """A concept query from free text, through examples or through feature labels (see :data:`TEXT_ROUTES`)."""
    from atlascli.embed import embed_query

    if not text.strip():
        raise InputError("empty query", 'e.g. atlas search "dogs and cats"')
    if route not in TEXT_ROUTES:
        raise InputError(f"unknown text route {route!r}", f"use one of {', '.join(TEXT_ROUTES)}")
    if route == "auto":
        route = "examples" if atlas.has_examples else "labels"
    q = embed_query(text, embedder or atlas.artifact.provenance.get("embedder", "minilm-l6"))
    if route == "examples":
        out = _text_via_examples(text, q, atlas, n_examples, top_features,
                                 EXAMPLE_THRESHOLD if threshold is None else threshold)
    else:
        out = _text_via_labels(text, q, atlas, top_features, LABEL_THRESHOLD if threshold is None else threshold,
                               include_incoherent)
    return replace(out, text=text)


LABEL_THRESHOLD = 0.25
"""Default minimum similarity of the query to a (centred) feature embedding."""
EXAMPLE_THRESHOLD = 0.2
"""Default minimum similarity of the query to a retrieved example sentence."""
RARE_SENTENCES = 3
"""A query word that labels no feature and occurs in at most this many labelling sentences is called rare in the
coverage note (the demo's 10,000: 'robots' 1, 'chess' 2, 'dragons' 3; 'london' 7, 'japan' 8 keep the related-concepts
note)."""
DENSE_FREQUENCY = 0.25
"""Features active on at least this share of all labelling sentences are not shown as what a query from examples
matched (they say how the examples are written, not what about: 45 of the demo atlas's 4,096 are above 0.3)."""


def centred_label_embeddings(atlas: Atlas) -> torch.Tensor:
    """Feature embeddings minus the component all features share, re-normalised (zero rows stay zero)."""
    emb = atlas.label_embeddings.float()
    alive = emb.norm(dim=1) > 0
    if not alive.any():
        return emb
    centred = emb - emb[alive].mean(0)
    centred[~alive] = 0
    return torch.nn.functional.normalize(centred, dim=1)


def coherence_weight(atlas: Atlas) -> torch.Tensor:
    """Per feature, 0.5 (coherence 0 or unknown) to 1 (coherence at the atlas's 75th percentile or above): a feature
    about one thing ranks before a diffuse one of the same similarity."""
    coh = atlas.coherence
    if not torch.isfinite(coh).any():
        return torch.ones(atlas.width)
    ref = float(coh[torch.isfinite(coh)].quantile(0.75))
    return (0.5 + 0.5 * (coh / max(ref, 1e-6)).clamp(0, 1)).nan_to_num(0.5)


def _text_via_labels(text: str, q: torch.Tensor, atlas: Atlas, top_features: int, threshold: float,
                     include_incoherent: bool) -> ConceptQuery:
    sims = centred_label_embeddings(atlas) @ q * coherence_weight(atlas)
    usable = atlas.coherent if not include_incoherent else torch.ones(atlas.width, dtype=torch.bool)
    ranked = torch.argsort(torch.where(usable, sims, torch.full_like(sims, -9.0)), descending=True)
    chosen = [i for i in ranked[:top_features].tolist() if float(sims[i]) >= threshold and bool(usable[i])]
    if not chosen:
        best_any = torch.argsort(sims, descending=True)[:3].tolist()
        closest = ", ".join(f"{i} '{atlas.label(i)}' ({float(sims[i]):.2f})" for i in ranked[:5].tolist())
        if any(not bool(usable[i]) and float(sims[i]) >= threshold for i in best_any):
            raise InputError(f"{text!r} matches only incoherent (syntax) features "
                             f"({', '.join(repr(atlas.label(i)) for i in best_any)})",
                             f"closest coherent: {closest}; or pass --include-incoherent")
        raise InputError(f"no atlas label matches {text!r} above similarity {threshold}",
                         f"closest: {closest}; lower --threshold, or use --features / --examples")
    matches = [_match(atlas, i, float(sims[i])) for i in chosen]
    return ConceptQuery(chosen, [float(sims[i]) for i in chosen], "text (labels)", matches,
                        note=coverage_note(text, atlas, [m["label"] for m in matches]))


Csr = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Sparse rows as (indptr, indices, values)."""


def _row_normalised(atlas: Atlas) -> Csr:
    """The labelling sentences' codes as CSR with every row L2-normalised (the space Procrustes is fitted in)."""
    ex = atlas.examples
    indptr, indices, values = ex["indptr"].long(), ex["indices"].long(), ex["values"].float()
    rows = torch.repeat_interleave(torch.arange(len(indptr) - 1), indptr.diff())
    norms = torch.zeros(len(indptr) - 1).index_add_(0, rows, values * values).sqrt().clamp_min(1e-12)
    return indptr, indices, values / norms[rows]


def corpus_mean_code(atlas: Atlas, csr: Csr | None = None) -> torch.Tensor:
    """Mean row-normalised max-pooled code over the atlas's labelling sentences [width] (``csr``: the result of
    :func:`_row_normalised`, when the caller has it already)."""
    indptr, indices, values = csr or _row_normalised(atlas)
    n = len(indptr) - 1
    return torch.zeros(atlas.width, dtype=torch.float64).index_add_(0, indices, values.double()) / max(n, 1)


def example_codes(atlas: Atlas, rows: list[int], csr: Csr | None = None) -> torch.Tensor:
    """Row-normalised max-pooled codes [len(rows), width] of labelling sentences."""
    indptr, indices, values = csr or _row_normalised(atlas)
    out = torch.zeros(len(rows), atlas.width)
    for j, r in enumerate(rows):
        a, b = int(indptr[r]), int(indptr[r + 1])
        out[j, indices[a:b]] = values[a:b]
    return out


def _text_via_examples(text: str, q: torch.Tensor, atlas: Atlas, n_examples: int, top_features: int,
                       threshold: float) -> ConceptQuery:
    """The paper's query from examples, with the examples found for the user: the labelling sentences most similar
    to the text, their mean row-normalised code minus the corpus mean (a contrast: features the concept lacks get
    negative weight). Measured on 20 concepts (bench/concepts.py), this beats both the positive part alone and a
    supervised direction built from the same examples in the subject model."""
    from atlascli.corpus import load_split

    emb = atlas.examples["embeddings"].float()
    sims = emb @ q
    k = min(max(n_examples, 1), emb.shape[0])
    vals, idx = sims.topk(k)
    keep = [int(i) for v, i in zip(vals.tolist(), idx.tolist()) if v >= threshold]
    if len(keep) < min(5, k):
        raise InputError(f"fewer than 5 labelling sentences are similar to {text!r} (best {float(vals[0]):.2f})",
                         "rephrase the query, lower --threshold, or give --examples / --features")
    csr = _row_normalised(atlas)
    mean_ex, mean_all = example_codes(atlas, keep, csr).double().mean(0), corpus_mean_code(atlas, csr)
    qv = (mean_ex - mean_all).float()
    lift = ((mean_ex + 1e-3) / (mean_all + 1e-3)).clamp_min(1).log().float()  # how specific to the examples
    nz = torch.nonzero(qv).flatten()
    if len(nz) == 0 or float(qv.max()) <= 0:
        raise InputError(f"the sentences found for {text!r} activate no atlas feature above the corpus mean",
                         "use --features or --examples")
    order = nz[torch.argsort(qv[nz], descending=True)].tolist()
    dataset = atlas.artifact.provenance.get("dataset")
    examples: list[str] = []
    labelling: list[str] | None = None
    try:
        from atlascli.registry import Registry

        sents = load_split(Registry().get(dataset, "dataset"), "train") if dataset else []
        examples = [sents[i] for i in keep[:5]] if sents else []
        labelling = sents[:emb.shape[0]] if len(sents) >= emb.shape[0] else None  # row i is train sentence i
    except Exception:  # noqa: BLE001 - showing the examples is optional (e.g. a pulled atlas without its dataset)
        examples = []
    top = float(qv[order[0]])
    # shown first: coherent features both raised by the examples and specific to them (lift squared demotes
    # features that fire on a fifth of all sentences), the more coherent first (coherence weight squared: over 40
    # concepts, two barely coherent form features, one for verbless fragments labelled 'maple', were shown 5 times
    # instead of 14, and the shown labels' MiniLM similarity to the query rose from 0.412 to 0.420); dense
    # features, active on a quarter of all sentences or more (e.g. one for short fragments labelled '.'), are not
    # shown as the concept; all stay in q
    dense = atlas.frequency.nan_to_num(0.0) >= DENSE_FREQUENCY
    show = qv.clamp_min(0) * (lift * coherence_weight(atlas)) ** 2 * (atlas.coherent & ~dense).float()
    n_show = max(top_features, 5)
    shown = [i for i in torch.argsort(show, descending=True)[:n_show].tolist() if show[i] > 0]
    if not shown:  # no coherent, non-dense feature is raised: show the raised ones as they are
        shown = [i for i in order[:n_show] if qv[i] > 0]
    matches = [_match(atlas, i, float(qv[i]) / top) for i in shown]  # weight: share of the largest
    return ConceptQuery(order, [float(qv[i]) for i in order], "text (examples)", matches, examples,
                        coverage_note(text, atlas, [m["label"] for m in matches], labelling))


def coverage_note(text: str, atlas: Atlas, leaning_on: list[str], corpus: list[str] | None = None) -> str | None:
    """A note when some content word of ``text`` labels no coherent atlas feature (e.g. "london" in an atlas with
    features for cities and for Britain but none for London): the query is then approximated by related concepts,
    and the user should know. With ``corpus`` (the labelling sentences), words that none of them contains (a typo,
    a made-up word: "xyzzy") are named as such: the examples found for them are only the nearest by embedding; words
    in at most :data:`RARE_SENTENCES` of them are named with their count. None when every word is covered."""
    import snowballstemmer  # the Snowball project's own (12 ms to import; nltk's pulls in scipy: 1.5 s a search)

    from atlascli.atlas.labels import stop_words, words

    stop = stop_words()
    asked = sorted(words(text, stop))
    if not asked:
        return None
    stem = snowballstemmer.stemmer("english").stemWord
    label_words: set[str] = set()
    for i in torch.nonzero(atlas.coherent).flatten().tolist():
        label_words |= words(atlas.label(i), stop)
    vocab = {stem(w) for w in label_words}

    def known(w: str) -> bool:  # same stem (banking: bank, secrets: secretly), or one stem of 5+ letters starts the
        s = stem(w)  # other (volcanoes 'volcano': volcanic 'volcan')
        return s in vocab or any(min(len(s), len(v)) >= 5 and (s.startswith(v) or v.startswith(s)) for v in vocab)

    missing = [w for w in asked if not known(w)]
    if not missing:
        return None
    related = ", ".join(dict.fromkeys(lab.split(":")[0].split(" (")[0] for lab in leaning_on[:4]))
    if corpus:
        lowered = [sentence.lower() for sentence in corpus]
        counts = {w: sum(w in sentence or stem(w) in sentence for sentence in lowered) for w in missing}
        unseen = [w for w in missing if counts[w] == 0]
        if unseen:
            return (f"{' / '.join(repr(w) for w in unseen)} occurs in none of the atlas's {len(corpus):,} labelling "
                    "sentences: the examples found are only the nearest by embedding and may be unrelated (check the "
                    "spelling and the examples, or give --examples / --features)")
        rare = [w for w in missing if counts[w] <= RARE_SENTENCES]
        if rare:
            return (" / ".join(f"{w!r} occurs in only {counts[w]}" for w in rare) + f" of the atlas's {len(corpus):,} "
                    "labelling sentences and labels no coherent feature: most examples found are only near it by "
                    f"embedding, and the query leans on {related} (check the examples, or give --examples with sentences about "
                    "it)")
    return (f"no atlas feature is labelled {' / '.join(repr(w) for w in missing)}: the query leans on related "
            f"concepts ({related}); an atlas with such a feature (a wider or imported one) will be more specific")


def atlas_codes(sentences: list[str], atlas: Atlas, lm: Any | None = None) -> torch.Tensor:
    """Max-pooled atlas codes [n, width] of sentences (foundation model ``lm``, loaded when None, + the atlas SAE)."""
    from atlascli.extract import ExtractConfig, extract_shard
    from atlascli.saes import load_atlas_sae

    p = atlas.artifact.provenance
    if not sentences:
        raise InputError("no example sentences", "give a file with one sentence per line")
    if lm is None:
        from atlascli.pinned import load_foundation

        lm = load_foundation(atlas)
    sae = load_atlas_sae(atlas.artifact, str(lm.device))  # checked against the manifest (cached)
    cfg = ExtractConfig(model=p["foundation"], layers=(int(p["layer"]),), site=p["site"], sae=atlas.id)
    out = extract_shard(lm, sentences, cfg, sae)
    from atlascli.activations import Shard

    layer = int(p["layer"])
    csr = (out[f"L{layer}.indptr"].numpy(), out[f"L{layer}.indices"].numpy(), out[f"L{layer}.values"].numpy())
    return Shard(torch.arange(len(sentences)), None, csr, atlas.width).to_dense()


def query_from_examples(examples: list[str], atlas: Atlas, contrast: list[str] | None = None,
                        top_features: int = 0, lm: Any | None = None, trust_remote_code: bool = False) -> ConceptQuery:
    """Mean atlas code of example sentences, minus the mean of contrast sentences when given (the foundation is
    loaded once, when ``lm`` is None)."""
    if not examples:
        raise InputError("no example sentences", "give a file with one sentence per line")
    if lm is None:
        from atlascli.pinned import load_foundation

        lm = load_foundation(atlas, trust_remote_code=trust_remote_code)
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
                      layer: int | None = None, method: str = "procrustes", atlas: Atlas | None = None,
                      site: str | None = None) -> Artifact:
    """The named alignment, else the most recent one matching subject / layer / method / atlas at ``site`` (default:
    the first fitted of :data:`atlascli.sites.FEATURE_SITES`, MLP neurons before the residual stream)."""
    from atlascli.sites import FEATURE_SITES, choose_site, fitted_summary, sentence_pooled
    from atlascli.translate import check_method

    if alignment:
        art = registry.get(alignment, "alignment")
    else:
        check_method(method)
        match: dict[str, Any] = {"method": method}
        if subject:
            match["subject"] = subject
        if layer is not None:
            match["layer"] = layer
        if atlas is not None:
            match["atlas"] = atlas.weights_id
        found = sentence_pooled(registry.find("alignment", **match))
        if found:
            subj = subject or found[-1].provenance["subject"]
            _, found = choose_site([a for a in found if a.provenance["subject"] == subj], site, FEATURE_SITES)
        if not found:
            from atlascli.preflight import check_subject_depth

            if layer is not None:
                known = registry.find("alignment", **{k: v for k, v in match.items() if k != "layer"})
                check_subject_depth(subject or (known[-1].provenance["subject"] if known else None), [layer])
            what = ", ".join(f"{k}={v}" for k, v in match.items() if k != "atlas")
            to = f" to atlas {atlas.id}" if atlas is not None else ""
            fitted = fitted_summary(registry.find("alignment", atlas=atlas.weights_id) if atlas is not None
                                    else registry.list("alignment"))
            fix = (f"`atlas fit --subject {subject or 'MODEL'} --layers {layer if layer is not None else 12} "
                   f"--method {method}" + (f" --site {site}" if site else "")
                   + (f" --atlas {atlas.id}" if atlas is not None else "") + "`")
            raise NotFoundError(f"no alignment with {what}{to} (fitted{to}: {fitted})",
                                f"pick a fitted one, or run {fix}")
        art = found[-1]
    if atlas is not None and art.provenance.get("atlas") != atlas.weights_id:
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
    """Test sentences whose subject activations are most similar to s (`samples.aligned_sentences`)."""


def subject_similarity(query: ConceptQuery, alignment: Artifact) -> torch.Tensor:
    """s = T_hat q / |q| reading only the query's rows of the stored translation."""
    tr = StoredTranslation.from_artifact(alignment)
    return tr.similarity(query.features, query.weights)


def search(query: ConceptQuery, alignment: Artifact, top: int = 10, examples: int = 3,
           test_acts: Any | None = None, test_sentences: list[str] | None = None,
           negative: bool = False, n_aligned: int = 5, aligned_metric: str = "standardised") -> SearchResult:
    """Rank subject features by eq. 3; with test activations, attach each feature's max-activating
    sentences and the sentences most aligned with s (under ``aligned_metric``, see `samples.ALIGNMENT_METRICS`)."""
    check_alignment_metric(aligned_metric)
    s = subject_similarity(query, alignment)
    order = torch.argsort(s, descending=not negative)[:top].tolist()
    ex: dict[int, list[tuple[float, str]]] = {}
    aligned: list[tuple[float, str]] = []
    if test_acts is not None and test_sentences is not None:
        layer = int(alignment.provenance["layer"])
        if examples > 0:
            ex = top_examples(test_acts, layer, order, test_sentences, examples)
        if n_aligned > 0:
            aligned = aligned_sentences(test_acts, layer, -s if negative else s, test_sentences, n_aligned,
                                        aligned_metric)
    feats = [SubjectFeature(i, float(s[i]), ex.get(i, [])) for i in order]
    return SearchResult(query, alignment.id, feats, s, aligned)
