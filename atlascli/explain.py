"""`atlas explain`: a subject feature described in atlas concepts (paper Fig. 1, left: each subject
feature is a linear combination of atlas concepts, row k of T), with its max-activating test
sentences, the token where it peaks in each, and the distribution of its activation."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from atlascli.errors import InputError
from atlascli.readout import (
    ConceptHit,
    alignment_atlas,
    check_subject_features,
    find_alignments,
    hit,
    run_text,
    subject_rows,
)
from atlascli.registry import Artifact, Registry
from atlascli.translate import StoredTranslation


@dataclass(frozen=True)
class ExplainConfig:
    """What to explain."""

    features: tuple[int, ...]
    """Subject feature indices (one column each when several)."""
    layer: int | None = None
    """Subject layer (None: the layer of the most recent matching alignment)."""
    subject: str | None = None
    """Subject model (None: that of the most recent alignment)."""
    method: str = "procrustes"
    """Translation method."""
    atlas: str | None = None
    """Atlas id or name to restrict the alignment to."""
    alignment: str | None = None
    """Explicit alignment id (overrides subject/layer/method)."""
    top: int = 10
    """Atlas concepts shown per sign."""
    samples: int = 5
    """Max-activating test sentences per feature (0: none, and no histogram)."""
    test_limit: int | None = None
    """Test sentences scanned (None: an extraction already in the registry, else 5000)."""
    bins: int = 12
    """Histogram bins."""
    peaks: bool = True
    """Re-run the subject on the example sentences to find each one's peak token."""
    device: str = "cpu"
    """Device of the subject model: peak tokens, and the test activations when they must be extracted (once)."""
    site: str | None = None
    """Fitted site (None: MLP neurons when fitted, :data:`atlascli.sites.FEATURE_SITES`)."""
    trust_remote_code: bool = False
    """Allow the subject's own model code from the Hub (off unless asked)."""

    def __post_init__(self) -> None:
        from atlascli.models import resolve_device
        from atlascli.translate import check_method

        if self.alignment is None:  # an alignment id names its method
            check_method(self.method)
        if self.samples > 0:  # the subject runs only for examples: test activations (when missing), peak tokens
            resolve_device(self.device)
        if self.samples < 0 or self.bins < 1 or self.top < 1:
            raise InputError(f"samples must be >= 0, bins and top >= 1 (got {self.samples}, {self.bins}, {self.top})",
                             "e.g. --samples 5 --bins 12 --top 10")


@dataclass(frozen=True)
class Example:
    """A max-activating test sentence."""

    activation: float
    """Its stored max-pooled activation of the feature."""
    text: str
    """The sentence."""
    peak_token: str | None = None
    """The token with the largest activation (None without --peaks)."""
    peak_span: tuple[int, int] | None = None
    """Character span of that token in ``text``."""
    peak_activation: float | None = None
    """The activation at that token (re-computed; equals ``activation`` up to float noise)."""


@dataclass(frozen=True)
class Histogram:
    """Distribution of the feature's max-pooled activation over the test sentences."""

    edges: list[float]
    """bins + 1 bin edges."""
    counts: list[int]
    """Sentences per bin."""
    n: int
    """Sentences counted."""
    mean: float
    """Mean activation."""
    positive: float
    """Fraction of sentences with activation > 0."""


@dataclass(frozen=True)
class FeatureExplanation:
    """One subject feature in atlas terms."""

    feature: int
    """Subject feature index."""
    row_norm: float
    """|T[k, :]|."""
    positive: list[ConceptHit]
    """Largest positive entries of T[k, :], descending."""
    negative: list[ConceptHit]
    """Most negative entries, most negative first."""
    examples: list[Example] = field(default_factory=list)
    """Max-activating test sentences."""
    histogram: Histogram | None = None
    """Activation histogram over the test sentences."""


@dataclass(frozen=True)
class ExplainResult:
    """What `atlas explain` shows."""

    alignment: str
    """Alignment id."""
    subject: str
    """Subject model."""
    layer: int
    """Subject layer."""
    site: str
    """Subject site."""
    method: str
    """Translation method."""
    atlas: str | None
    """Atlas id (None for unlabelled targets)."""
    features: list[FeatureExplanation]
    """One per requested feature, in order."""
    warnings: list[str] = field(default_factory=list)
    """Things the user should know (model revision mismatch...)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Time per stage: translation, examples, peaks."""


def describe(row: torch.Tensor, row_norm: float, top: int, atlas: Any) -> tuple[list[ConceptHit], list[ConceptHit]]:
    """Top positive and most negative entries of one row of T, labelled."""
    k = min(top, row.numel())
    norm = row_norm if row_norm > 0 else 1.0
    pv, pi = row.topk(k)
    nv, ni = (-row).topk(k)
    pos = [hit(atlas, int(i), float(v), float(v) / norm) for v, i in zip(pv, pi) if v > 0]
    neg = [hit(atlas, int(i), -float(v), -float(v) / norm) for v, i in zip(nv, ni) if v > 0]
    return pos, neg


def feature_columns(acts: Any, layer: int, features: list[int]) -> np.ndarray:
    """[N, len(features)] max-pooled test activations of the features, streamed over the shards."""
    cols = torch.tensor(features)
    parts = [shard.dense[:, cols].numpy() for shard in acts.shards(layer)]
    return np.concatenate(parts) if parts else np.zeros((0, len(features)), dtype=np.float32)


def histogram(values: np.ndarray, bins: int) -> Histogram:
    """Equal-width histogram between the min and max activation."""
    if values.size == 0:
        return Histogram([], [], 0, 0.0, 0.0)
    counts, edges = np.histogram(values, bins=max(1, bins))
    return Histogram(edges.tolist(), counts.astype(int).tolist(), int(values.size), float(values.mean()),
                     float((values > 0).mean()))


def peak_tokens(lm: Any, sentences: list[str], feature: int, layer: int, site: str,
                max_length: int = 128) -> list[tuple[str, tuple[int, int], float]]:
    """For each sentence: (token, char span, activation) where ``feature`` peaks over the pooled tokens."""
    out = []
    for s in sentences:
        run = run_text(lm, s, {site: [layer]}, max_length)
        a = run.acts[layer][:, feature].masked_fill(~run.real, float("-inf"))
        pos = int(a.argmax())
        out.append((run.tokens[pos], run.offsets[pos], float(a[pos])))
    return out


def explain(cfg: ExplainConfig, registry: Registry | None = None, lm: Any | None = None) -> ExplainResult:
    """Describe subject features as atlas concepts (rows of T), with test examples and peak tokens.

    Reads only the requested rows of the stored translation. ``lm`` is the loaded subject model
    (loaded here when peak tokens are asked for and it is not given).
    """
    registry = registry or Registry()
    if not cfg.features:
        raise InputError("no subject feature given", "use --feature 42 or --features 42,77")
    if cfg.top < 1:
        raise InputError(f"--top must be >= 1, got {cfg.top}", "e.g. --top 10")
    arts = find_alignments(registry, [cfg.layer] if cfg.layer is not None else None, cfg.subject, cfg.method,
                           cfg.atlas, cfg.alignment, cfg.site)
    art = max(arts, key=lambda a: (a.manifest.get("created", ""), a.id))  # no --layer: the most recent fit
    p = art.provenance
    layer, site = int(p["layer"]), str(p.get("site", "mlp"))
    t0 = time.perf_counter()
    tr = StoredTranslation.from_artifact(art)
    feats = list(dict.fromkeys(int(k) for k in cfg.features))
    check_subject_features(feats, tr, art)
    atlas = alignment_atlas(art, registry)
    rows = subject_rows(tr, feats)
    described = {k: describe(rows[i], float(tr.row_norms[k]), cfg.top, atlas) for i, k in enumerate(feats)}
    seconds = {"translation": time.perf_counter() - t0}
    warnings: list[str] = []
    examples: dict[int, list[Example]] = {k: [] for k in feats}
    hists: dict[int, Histogram | None] = {k: None for k in feats}
    if cfg.samples > 0:
        t1 = time.perf_counter()
        examples, hists, max_length, acts = _test_side(art, feats, cfg, registry)
        seconds["examples"] = time.perf_counter() - t1
        if cfg.peaks:
            t2 = time.perf_counter()
            stored = None if lm is not None else _stored_peaks(examples, acts, layer, max_length, str(p["subject"]))
            examples = stored or _with_peaks(examples, art, layer, site, max_length, cfg, lm, warnings)
            seconds["peaks"] = time.perf_counter() - t2
    out = [FeatureExplanation(k, float(tr.row_norms[k]), *described[k], examples[k], hists[k]) for k in feats]
    return ExplainResult(art.id, str(p.get("subject")), layer, site, str(p.get("method")),
                         atlas.id if atlas else p.get("atlas"), out, warnings, seconds)


def _test_side(art: Artifact, feats: list[int], cfg: ExplainConfig,
               registry: Registry) -> tuple[dict[int, list[Example]], dict[int, Histogram | None], int, Any]:
    from atlascli.samples import top_examples
    from atlascli.search_run import test_activations

    layer = int(art.provenance["layer"])
    acts, sentences = test_activations(art, cfg.test_limit, registry, cfg.device, cfg.trust_remote_code)
    ex = top_examples(acts, layer, feats, sentences, cfg.samples)
    cols = feature_columns(acts, layer, feats)  # the same sentences top_examples scanned
    hists: dict[int, Histogram | None] = {k: histogram(cols[:, i], cfg.bins) for i, k in enumerate(feats)}
    examples = {k: [Example(v, t) for v, t in ex[k]] for k in feats}
    return examples, hists, int(acts.artifact.provenance.get("max_length") or 128), (acts, sentences)


def _stored_peaks(examples: dict[int, list[Example]], acts_sentences: Any, layer: int, max_length: int,
                  subject: str) -> dict[int, list[Example]] | None:
    """Peak tokens from the token positions kept at extraction and the tokenizer alone (no model, no forward
    pass); None when the activations predate kept positions or the tokenizer needs the model loaded."""
    from atlascli.models import tokenizer_file

    acts, sentences = acts_sentences
    wanted = {e.text for exs in examples.values() for e in exs}
    rows = {s: i for i, s in enumerate(sentences) if s in wanted}
    pos: dict[tuple[int, int], int] = {}
    for shard in acts.shards(layer):
        if shard.argmax is None:
            return None
        local = {int(r): j for j, r in enumerate(shard.index.tolist())}
        for k, exs in examples.items():
            for e in exs:
                j = local.get(rows.get(e.text, -1))
                if j is not None:
                    pos[(k, rows[e.text])] = int(shard.argmax[j, k])
    path = tokenizer_file(subject)
    if path is None:
        return None
    from tokenizers import Tokenizer  # the fast tokenizer's own backend: same ids and offsets, no transformers import

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length)
    out: dict[int, list[Example]] = {}
    for k, exs in examples.items():
        out[k] = []
        for e in exs:
            at = pos.get((k, rows.get(e.text, -1)))
            enc = tok.encode(e.text)
            if at is None or at >= len(enc.ids):
                return None
            a, b = enc.offsets[at]
            token = e.text[a:b] if b > a else enc.tokens[at]
            out[k].append(Example(e.activation, e.text, token, (int(a), int(b)), e.activation))
    return out


def _with_peaks(examples: dict[int, list[Example]], art: Artifact, layer: int, site: str, max_length: int,
                cfg: ExplainConfig, lm: Any | None, warnings: list[str]) -> dict[int, list[Example]]:
    if not any(examples.values()):
        return examples
    p = art.provenance
    if lm is None:  # a Hub subject at the commit it was fitted on (peak tokens only: a changed model is a warning)
        from atlascli.models import load_model
        from atlascli.pinned import hub_revision

        lm = load_model(str(p["subject"]), cfg.device, revision=hub_revision(str(p["subject"]), p.get("revision")),
                        trust_remote_code=cfg.trust_remote_code)
    if p.get("revision") and lm.revision != p["revision"]:
        warnings.append(f"the loaded subject model's revision {lm.revision} differs from the alignment's "
                        f"{p['revision']}: peak tokens may not match")
    out = {}
    for k, exs in examples.items():
        peaks = peak_tokens(lm, [e.text for e in exs], k, layer, site, max_length)
        out[k] = [Example(e.activation, e.text, tok, span, val) for e, (tok, span, val) in zip(exs, peaks)]
    return out
