"""`atlas read`: what the subject model "sees" in a text, in atlas concepts.

The subject activations a_s of the text are mapped into the atlas as â_c = T^T x(a_s), where x is
the transform the fit applied to subject rows: row-L2 normalisation for Procrustes (eq. 2),
centring for covariance (eq. 6), centring and scaling by the standard deviation for correlation
(eq. 7), nothing for least squares and Semantic Lens. Whole text: max-pool a_s over the real
tokens first, as extraction did for fitting; per token: each token's a_s.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from atlascli.atlas.store import Atlas
from atlascli.errors import InputError, NotFoundError
from atlascli.readout import (
    ConceptHit,
    alignment_atlas,
    context_length,
    find_alignments,
    hit,
    map_to_atlas,
    run_text,
)
from atlascli.registry import Artifact, Registry
from atlascli.translate import StoredTranslation

METHOD_TRANSFORM = {"procrustes": "row-l2", "cov": "centre", "corr": "standardise", "linreg": "none",
                    "semlens": "none"}
"""The transform each fitter applied to subject rows before fitting (see ``atlascli.translate``)."""


@dataclass(frozen=True)
class InputTransform:
    """The fit's transform f of a subject activation row, applied before T^T (then minus ``offset``)."""

    kind: str
    """row-l2, centre, standardise or none."""
    mean: torch.Tensor | None = None
    """[ds] subject mean of the fit's data (centre, standardise)."""
    std: torch.Tensor | None = None
    """[ds] unbiased subject standard deviation (standardise); 0 maps to 0, as in the fit."""
    offset: torch.Tensor | None = None
    """[ds] subtracted after f: the mean of f over the fit's rows (``--centre``), so that the reading shows
    what is specific to the text rather than what every text shares (max-pooled neurons have large baselines)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Transform rows of ``x`` [n, ds] (float64 inside, float32 out)."""
        x = x.double()
        if self.kind == "row-l2":
            x = _row_l2(x)
        elif self.kind in ("centre", "standardise"):
            assert self.mean is not None
            x = x - self.mean.double()
            if self.kind == "standardise":
                assert self.std is not None
                sd = self.std.double()
                x = torch.where(sd > 0, x / sd.clamp_min(1e-300), torch.zeros_like(x))
        elif self.kind != "none":
            raise InputError(f"unknown input transform {self.kind!r}", "use row-l2, centre, standardise or none")
        if self.offset is not None:
            x = x - self.offset.double()
        return x.float()


def _row_l2(x: torch.Tensor) -> torch.Tensor:
    norms = x.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, x / norms.clamp_min(1e-300), torch.zeros_like(x))


@dataclass(frozen=True)
class SubjectStats:
    """Column statistics of the subject rows an alignment was fitted on."""

    mean: torch.Tensor
    """[ds] mean (float64)."""
    std: torch.Tensor
    """[ds] unbiased standard deviation."""
    mean_normalised: torch.Tensor
    """[ds] mean of the row-L2-normalised rows (Procrustes' average input)."""
    n: int
    """Rows."""


def fit_activations(art: Artifact, registry: Registry) -> Iterator[Any]:
    """Readers of the dense subject activations an alignment was fitted on (its parent artifacts in the registry
    that hold its subject at its layer), in parent order."""
    from atlascli.activations import Activations

    p = art.provenance
    layer = int(p["layer"])
    for pid in art.parents:
        if not registry.exists(pid, "activations"):
            continue
        cand = registry.get(pid, "activations")
        cp = cand.provenance
        if cp.get("model") == p.get("subject") and layer in cp.get("layers", []) and not cp.get("sparse"):
            yield Activations(cand)


def subject_stats(art: Artifact, registry: Registry) -> SubjectStats:
    """Statistics of the subject activations the alignment was fitted on (its parent artifact; float64, streamed)."""
    p = art.provenance
    layer = int(p["layer"])
    for acts in fit_activations(art, registry):
        n, width = 0, acts.widths[layer]
        s, sq, sn = (torch.zeros(width, dtype=torch.float64) for _ in range(3))
        for shard in acts.shards(layer):
            d = shard.to_dense().double()
            n += d.shape[0]
            s, sq, sn = s + d.sum(0), sq + (d * d).sum(0), sn + _row_l2(d).sum(0)
        if n >= 2:
            var = (sq - s * s / n) / (n - 1)
            return SubjectStats(s / n, var.clamp_min(0).sqrt(), sn / n, n)
    raise NotFoundError(f"the subject activations {art.id} was fitted on are not in the registry; "
                        f"{p.get('method')} needs their statistics to transform inputs",
                        "re-run the same `atlas fit`" + (", or drop --centre" if p.get("method") not in ("cov", "corr")
                                                         else ", or use --method procrustes"))


def transform_for(art: Artifact, registry: Registry, centre: bool | None = False) -> InputTransform:
    """The input transform of an alignment's method (with the fit's subject statistics when it needs them).

    ``centre`` also subtracts the mean transformed row of the fit's data (a no-op for cov / corr, which
    centre already); ``None`` centres when those statistics are in the registry and skips it otherwise.
    """
    kind = METHOD_TRANSFORM.get(str(art.provenance.get("method")), "none")
    if kind in ("row-l2", "none") and centre is False:
        return InputTransform(kind)
    try:
        st = subject_stats(art, registry)
    except NotFoundError:
        if centre is None and kind in ("row-l2", "none"):
            return InputTransform(kind)  # auto: nothing to centre with (e.g. a pulled bundle without fit data)
        raise
    offset = None
    if centre is not False and kind == "row-l2":
        offset = st.mean_normalised
    elif centre is not False and kind == "none":
        offset = st.mean
    return InputTransform(kind, st.mean, st.std, offset)


@dataclass(frozen=True)
class ReadConfig:
    """What to read."""

    text: str
    """The input text (one sequence)."""
    layers: tuple[int, ...] | None = None
    """Subject layers (None: every fitted layer of the subject and method)."""
    subject: str | None = None
    """Subject model (None: that of the most recent alignment)."""
    method: str = "procrustes"
    """Translation method."""
    atlas: str | None = None
    """Atlas id or name to restrict alignments to."""
    top: int = 10
    """Concepts listed for the whole text."""
    per_token: bool = False
    """Also list concepts per token."""
    centre: bool | None = False
    """Subtract the fit's average transformed (max-pooled) subject row before T^T: what is specific to this
    text. Per-token rows get the same offset (an approximation: the fit saw pooled rows only)."""
    token_top: int = 3
    """Concepts listed per token."""
    max_tokens: int | None = None
    """Truncate to this many tokens (default and upper bound: the model's context)."""
    device: str = "cpu"
    """Device of the subject model."""
    coherent_only: bool = False
    """Leave incoherent (``syntax: ...``) atlas features out of the listing (atlases with labels v2)."""
    standardise: bool = False
    """Rank concepts by z-score: each atlas concept's score minus its mean, over its standard deviation, across the
    sentences the alignment was fitted on (what is unusual for this text, not what some concepts score everywhere).
    Needs the fit's subject activations in the registry; skipped with a warning otherwise. Per-token rows use the
    same (pooled) scale, an approximation like ``centre``'s."""
    site: str | None = None
    """Fitted site (None: MLP neurons when fitted, :data:`atlascli.sites.FEATURE_SITES`)."""
    trust_remote_code: bool = False
    """Allow the subject's own model code from the Hub (off unless asked)."""


@dataclass(frozen=True)
class TokenReading:
    """The concepts of one token."""

    position: int
    """Token position in the (truncated) input."""
    token: str
    """Surface string."""
    span: tuple[int, int]
    """Character span in the text."""
    concepts: list[ConceptHit]
    """Top concepts of this token, descending."""


@dataclass(frozen=True)
class LayerReading:
    """The reading of one layer."""

    layer: int
    """Subject layer."""
    alignment: str
    """Alignment id."""
    atlas: str | None
    """Atlas id of that alignment (None for unlabelled targets)."""
    method: str
    """Translation method."""
    transform: str
    """Input transform applied before T^T (``+centre`` when the fit's average row was subtracted)."""
    concepts: list[ConceptHit]
    """Top concepts of the whole text (max-pooled activations), descending."""
    tokens: list[TokenReading] = field(default_factory=list)
    """Per real token (with ``per_token``)."""
    highlight: dict[int, list[float]] = field(default_factory=dict)
    """Per top concept: its score at each real token (with ``per_token``), for highlighting spans."""


@dataclass(frozen=True)
class ReadResult:
    """What `atlas read` shows."""

    text: str
    """The text as given."""
    subject: str
    """Subject model."""
    atlas: str | None
    """Atlas id of the (last) layer's alignment."""
    n_tokens: int
    """Tokens read (after truncation)."""
    truncated: bool
    """Whether the text was cut to fit the context."""
    tokens: list[str]
    """The real tokens read (no special tokens)."""
    spans: list[tuple[int, int]]
    """Their character spans."""
    layers: list[LayerReading]
    """One per layer, in the requested order."""
    warnings: list[str] = field(default_factory=list)
    """E.g. truncation."""
    combined: list[ConceptHit] = field(default_factory=list)
    """Top concepts of the mean z-score over the layers read (``standardise``, two or more distinct layers mapped to
    one atlas, each with its fit's activations in the registry; empty otherwise): each layer's translation is a noisy
    reading of the same text, and their mean is a better one than any layer's (400 test sentences of the demo, MLP
    layers 3/12/19/25: MiniLM similarity of the top-3 labels to the sentence, over random coherent labels, +0.228
    for the mean against +0.176 to +0.213 per layer; bench/read.py)."""


def top_concepts(scores: torch.Tensor, n: int, atlas: Any, coherent_only: bool = False) -> list[ConceptHit]:
    """The ``n`` largest entries of an atlas score vector, labelled (only coherent features if asked and known)."""
    if coherent_only and atlas is not None and atlas.labels_version >= 2:
        scores = torch.where(atlas.coherent, scores, torch.full_like(scores, float("-inf")))
    v, i = scores.topk(min(n, scores.numel()))
    return [hit(atlas, int(j), float(x)) for x, j in zip(v, i)]


def read_text(cfg: ReadConfig, registry: Registry | None = None, lm: Any | None = None) -> ReadResult:
    """Map a text's subject activations into atlas concepts at one or more layers."""
    registry = registry or Registry()
    if not cfg.text.strip():
        raise InputError("the text is empty", 'give some text: atlas read "The dog barked at the cat"')
    if cfg.top < 1 or cfg.token_top < 1:
        raise InputError("--top and --token-top must be >= 1", "e.g. --top 10")
    arts = find_alignments(registry, list(cfg.layers) if cfg.layers else None, cfg.subject, cfg.method, cfg.atlas,
                           site=cfg.site)
    subject = str(arts[0].provenance["subject"])
    from atlascli.pinned import check_fitted_on, load_pinned, one_revision

    if lm is None:  # the weights the alignments were fitted on (alignments of two revisions: refused before loading)
        lm = load_pinned(subject, one_revision(arts), f"alignment {arts[-1].id}", cfg.device,
                         trust_remote_code=cfg.trust_remote_code)
    check_fitted_on(lm, arts)
    ctx = context_length(lm)
    warnings: list[str] = []
    max_len = ctx
    if cfg.max_tokens is not None:
        if cfg.max_tokens < 1:
            raise InputError(f"--max-tokens must be >= 1, got {cfg.max_tokens}", "e.g. --max-tokens 128")
        if cfg.max_tokens > ctx:
            warnings.append(f"--max-tokens {cfg.max_tokens} exceeds the model's context of {ctx}; using {ctx}")
        max_len = min(cfg.max_tokens, ctx)
    sites: dict[str, list[int]] = {}
    for a in arts:
        sites.setdefault(str(a.provenance.get("site", "mlp")), []).append(int(a.provenance["layer"]))
    run = run_text(lm, cfg.text, sites, max_len)
    truncated = run.n_tokens_full > len(run.token_ids)
    if truncated:
        why = "the model's context" if max_len == ctx else "--max-tokens"
        warnings.append(f"the text has {run.n_tokens_full} tokens, more than {why} ({max_len}): "
                        f"only the first {len(run.token_ids)} were read")
    pos = torch.nonzero(run.real).flatten().tolist()
    read = [_read_layer(a, run, pos, cfg, registry, warnings) for a in arts]
    layers = [lr for lr, _, _ in read]
    combined: list[ConceptHit] = []
    zs = [z for _, z, _ in read]
    distinct = len({lr.alignment for lr in layers}) > 1
    if distinct and all(z is not None for z in zs) and len({lr.atlas for lr in layers}) == 1:
        mean = torch.stack([z for z in zs if z is not None]).mean(0)
        combined = top_concepts(mean, cfg.top, read[-1][2], cfg.coherent_only)
    return ReadResult(cfg.text, subject, layers[-1].atlas, len(run.token_ids),
                      truncated, [run.tokens[i] for i in pos], [run.offsets[i] for i in pos], layers, warnings,
                      combined)


def score_scale(art: Artifact, tr: StoredTranslation, transform: InputTransform,
                registry: Registry) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Mean and standard deviation [dc] of every atlas concept's score over the sentences ``art`` was fitted on
    (their max-pooled subject rows through ``transform`` and T^T); None when those activations are not in the
    registry. Computed once per alignment and transform (a few seconds), then cached under $ATLAS_HOME/cache."""
    from atlascli.paths import atlas_home
    from atlascli.registry.files import atomic_save_tensors, load_tensors

    kind = transform.kind + ("+centre" if transform.offset is not None else "")
    path = atlas_home() / "cache" / "read-scale" / f"{art.id}-{kind}.safetensors"
    if path.exists():
        try:
            t = load_tensors(path)
            return t["mean"], t["std"]
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
            path.unlink(missing_ok=True)
    acts = next(fit_activations(art, registry), None)
    if acts is None:
        return None
    layer = int(art.provenance["layer"])
    n, total, sq = 0, torch.zeros(tr.dc, dtype=torch.float64), torch.zeros(tr.dc, dtype=torch.float64)
    for shard in acts.shards(layer):
        sc = map_to_atlas(tr, transform(shard.to_dense())).double()
        n, total, sq = n + sc.shape[0], total + sc.sum(0), sq + (sc * sc).sum(0)
    if n < 2:
        return None
    mean = total / n
    std = ((sq - total * mean) / (n - 1)).clamp_min(0).sqrt()
    atomic_save_tensors(path, {"mean": mean.float(), "std": std.float()})  # (creates the cache folder)
    return mean.float(), std.float()


def _read_layer(art: Artifact, run: Any, pos: list[int], cfg: ReadConfig, registry: Registry,
                warnings: list[str]) -> tuple[LayerReading, torch.Tensor | None, Atlas | None]:
    """The reading of one layer, the whole text's z-scores [dc] (None when not standardised) and the atlas whose
    labels it shows."""
    layer = int(art.provenance["layer"])
    atlas = alignment_atlas(art, registry)
    tr = StoredTranslation.from_artifact(art)
    # z-scores subtract each concept's mean over the fit's sentences, which centring would only shift: auto (None)
    # centres raw scores only
    transform = transform_for(art, registry, False if cfg.centre is None and cfg.standardise else cfg.centre)
    acts = run.acts[layer][pos]  # [n_real, ds]
    pooled = acts.max(0, keepdim=True).values
    x = torch.cat([pooled, acts]) if cfg.per_token else pooled
    scores = map_to_atlas(tr, transform(x))
    z = False
    if cfg.standardise:
        scale = score_scale(art, tr, transform, registry)
        if scale is None:
            warnings.append(f"layer {layer}: the fit's activations are not in the registry, so concepts are ranked "
                            "by raw score (--no-standardise silences this)")
        else:
            mean, std = scale
            # concepts constant over the fit's sentences (a zero column of T, up to rounding) score 0: they say
            # nothing about this text
            live = std > 1e-6 * float(std.max())
            scores = torch.where(live, (scores - mean) / std.clamp_min(1e-12), torch.zeros_like(scores))
            z = True
    concepts = top_concepts(scores[0], cfg.top, atlas, cfg.coherent_only)
    tokens: list[TokenReading] = []
    highlight: dict[int, list[float]] = {}
    if cfg.per_token:
        per = scores[1:]
        for j, p in enumerate(pos):
            tokens.append(TokenReading(p, run.tokens[p], run.offsets[p],
                                       top_concepts(per[j], cfg.token_top, atlas, cfg.coherent_only)))
        highlight = {c.index: per[:, c.index].tolist() for c in concepts}
    kind = transform.kind + ("+centre" if transform.offset is not None else "") + ("+z" if z else "")
    return LayerReading(layer, art.id, atlas.id if atlas else art.provenance.get("atlas"), str(art.provenance.get("method")),
                        kind, concepts, tokens, highlight), (scores[0] if z else None), atlas

