"""`atlas fit`: run or reuse the extractions, stream paired shards through the fitters, store
each translation as an ``alignment`` artifact."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from atlascli.atlas.build import atlas_dtype
from atlascli.distributed import world
from atlascli.errors import InputError, NotFoundError
from atlascli.extract import Activations, ExtractConfig, extract, stored_prefix
from atlascli.fit_health import Health, HoldoutHealth, health_meta
from atlascli.models import DEFAULTS
from atlascli.pinned import check_revision, check_unchanged, hub_revision
from atlascli.registry import Artifact, Registry, slug
from atlascli.registry.files import sha256_json
from atlascli.translate import MultiFitter, parse_methods

ProgressFn = Callable[[str, int, int], None]
"""Progress callback: (stage, done, total)."""


@dataclass(frozen=True)
class FitConfig:
    """What to fit."""

    subject: str = DEFAULTS["subject"]
    """Subject model (zoo name, folder or HF id)."""
    layers: tuple[int, ...] = (12,)
    """Subject layers; one alignment per layer and method."""
    site: str = "mlp"
    """Subject site: mlp (neurons), mlp_out or resid."""
    atlas: str | None = None
    """Atlas artifact id, activations artifact id, or ``MODEL@LAYER[:SITE]`` (dense, unlabeled)."""
    methods: str = "procrustes"
    """Comma list or ``all``."""
    dataset: str = "default"
    """Dataset id or name (its train split is used)."""
    limit: int | None = None
    """Use only the first N training sentences."""
    ridge: float = 0.0
    """Ridge term of least squares."""
    k: int = 20
    """Top-k of Semantic Lens."""
    device: str = "cpu"
    """Device of the extractions."""
    dtype: str = "float32"
    """Dtype of the extractions."""
    shard_size: int = 2048
    """Sentences per shard of the extractions (the unit of resumption and of the work split across ranks)."""
    batch_tokens: int = 2048
    """Token budget of an extraction batch (raise it on a GPU; it does not change the results' ids)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the subject; the commit it resolves to is recorded."""
    trust_remote_code: bool = False
    """Allow the subject's (and the atlas foundation's) own model code from the Hub (off unless asked)."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise InputError(f"limit must be at least 1, got {self.limit}", "omit --limit to use every sentence")
        if not math.isfinite(self.ridge) or self.ridge < 0:
            raise InputError(f"ridge must be a finite number >= 0, got {self.ridge}", "e.g. --ridge 0.1")
        if self.k < 1:
            raise InputError(f"k must be at least 1, got {self.k}", "e.g. --k 20")
        if any(layer < 0 for layer in self.layers):
            raise InputError(f"layers must be non-negative, got {list(self.layers)}", "e.g. --layer 12")
        for name in ("shard_size", "batch_tokens"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}",
                                 f"e.g. --{name.replace('_', '-')} 2048")

    def extraction(self, model: str, layers: tuple[int, ...], site: str, sae: str | None = None,
                   dtype: str | None = None, revision: str | None = None,
                   trust_remote_code: bool = False) -> ExtractConfig:
        """The extraction this fit runs (or reuses) for one side: its training sentences, device, dtype (``--dtype``
        unless given: an atlas's codes run in the atlas's own dtype), shards, the model's revision."""
        return ExtractConfig(model=model, layers=layers, site=site, dataset=self.dataset, split="train", sae=sae,
                             limit=self.limit, device=self.device, dtype=dtype or self.dtype, shard_size=self.shard_size,
                             batch_tokens=self.batch_tokens, revision=revision, trust_remote_code=trust_remote_code)

    def codes_extraction(self, atlas: Artifact) -> ExtractConfig:
        """The atlas side of an SAE atlas: its codes in the atlas's own dtype, its foundation at the revision the SAE
        was trained on (a Hub commit is asked for; other revisions are checked after extraction)."""
        p = atlas.provenance
        return self.extraction(p["foundation"], (int(p["layer"]),), p["site"], sae=atlas.id,
                               dtype=atlas_dtype(p), revision=hub_revision(p["foundation"], p.get("revision")),
                               trust_remote_code=self.trust_remote_code)

    def subject_extraction(self) -> ExtractConfig:
        """The subject side: its layers and site at ``--revision``, with ``--trust-remote-code`` when asked."""
        return self.extraction(self.subject, self.layers, self.site, revision=self.revision,
                               trust_remote_code=self.trust_remote_code)


def resolve_atlas_ref(ref: str | None, registry: Registry) -> tuple[str, int, str] | Artifact:
    """What ``fit --atlas`` names: a dense ``MODEL@LAYER[:SITE]`` spec as (model, layer, site), else the atlas or
    activations artifact (the latest atlas when None; an atlas by registry name, else an id or prefix)."""
    if ref is None:
        latest = registry.latest("atlas")
        if latest is None:
            raise NotFoundError("no Concept Atlas in the registry",
                                "build one with `atlas atlas build`, or pass --atlas gemma3-270m@9 for dense "
                                "foundation activations")
        return latest
    if "@" in ref:
        model, _, rest = ref.partition("@")
        layer_s, _, site = rest.partition(":")
        try:
            return model, int(layer_s), site or "resid"
        except ValueError:
            raise InputError(f"bad atlas spec {ref!r}", "use MODEL@LAYER[:SITE], e.g. gemma3-270m@9:resid") from None
    named = registry.latest("atlas", name=ref)  # an atlas by its registry name (`atlas atlas build --name`)
    return named if named is not None else registry.get(ref)


def open_extraction(ecfg: ExtractConfig, registry: Registry,
                    progress: Callable[[int, int, int], None] | None) -> Activations:
    """The rows of one side of the fit: the first ``--limit`` sentences of a published extraction with the same
    settings when there is one (no model loaded: `fit --limit 5000` after `--limit 10000` reads the first 5,000),
    else the extraction itself (run, resumed or reused)."""
    prefix = stored_prefix(ecfg, registry)
    if prefix is not None:
        return Activations(prefix, ecfg.limit)
    return Activations(extract(ecfg, registry, progress))


def resolve_atlas_activations(cfg: FitConfig, registry: Registry,
                              progress: Callable[[int, int, int], None] | None) -> tuple[Activations, int, dict[str, Any]]:
    """The atlas-side activations over the same sentences: (reader, layer, atlas provenance)."""
    art = resolve_atlas_ref(cfg.atlas, registry)
    if isinstance(art, tuple):
        model, layer, site = art
        dense = open_extraction(cfg.extraction(model, (layer,), site), registry, progress)
        return dense, layer, {"atlas": cfg.atlas, "atlas_version": dense.artifact.id, "atlas_kind": "dense"}
    if art.kind == "activations":
        reader = Activations(art)
        return reader, reader.layers[0], {"atlas": art.id, "atlas_version": art.id, "atlas_kind": "activations"}
    if art.kind != "atlas":
        raise InputError(f"{art.id} is a {art.kind}, not an atlas", "pass an atlas or activations id")
    p = art.provenance
    weights = p.get("weights_id") or art.id  # a relabelled atlas shares its SAE (and alignments) with the original
    if weights != art.id and registry.exists(weights, "atlas"):
        art = registry.get(weights, "atlas")
    check_unchanged(p["foundation"], p.get("revision"), f"atlas {art.id}")  # before extracting anything
    codes = open_extraction(cfg.codes_extraction(art), registry, progress)
    # the SAE belongs to the foundation's weights it was trained on
    check_revision(p["foundation"], codes.artifact.provenance.get("revision"), p.get("revision"), f"atlas {art.id}")
    return (codes, int(p["layer"]),
            {"atlas": art.id, "atlas_version": art.manifest["created"], "atlas_kind": "sae"})


def fit(cfg: FitConfig, registry: Registry | None = None, progress: ProgressFn | None = None,
        on_plan: Callable[[Any], None] | None = None) -> list[Artifact]:
    """Fit every (layer, method); returns the alignment artifacts (reused when identical).

    Every input (both models, layers, site, atlas, dataset, disk) is checked from configs first;
    ``on_plan`` gets the :class:`atlascli.plan.Plan` before any model is loaded."""
    from atlascli.plan_tasks import plan_fit

    registry = registry or Registry()
    plan = plan_fit(cfg, registry)
    if on_plan:
        on_plan(plan)
    methods = parse_methods(cfg.methods)

    def stage_progress(stage: str) -> Callable[[int, int, int], None] | None:
        return (lambda d, t, _tok: progress(stage, d, t)) if progress else None

    atlas_acts, atlas_layer, atlas_prov = resolve_atlas_activations(cfg, registry, stage_progress("atlas extract"))
    subj = open_extraction(cfg.subject_extraction(), registry,
                           stage_progress("subject extract"))
    sp, ap = subj.artifact.provenance, atlas_acts.artifact.provenance
    if sp["dataset_fingerprint"] != ap["dataset_fingerprint"] or sp["split"] != ap["split"]:
        raise InputError(f"subject and atlas activations come from different datasets "
                         f"({sp['dataset_fingerprint'][:12]} [{sp['split']}] vs {ap['dataset_fingerprint'][:12]} "
                         f"[{ap['split']}])", "extract both over the same dataset and split")
    if subj.n != atlas_acts.n:
        raise InputError(f"subject has N={subj.n} sentences but the atlas N={atlas_acts.n}",
                         "use the same --limit for both")
    out: list[Artifact] = []
    ranks = world(cfg.device)
    for layer in cfg.layers:

        def fitted(layer: int = layer) -> list[Artifact] | None:
            return _fitted(registry, cfg, layer, methods, sp, atlas_prov, subj.artifact.id, subj.n)

        def commit(fitter: MultiFitter, checked: dict[str, Health] | str, layer: int = layer) -> list[Artifact]:
            return _commit(registry, cfg, layer, fitter, checked, subj, atlas_acts.artifact, atlas_prov)

        fitter = MultiFitter(methods, ridge=cfg.ridge, k=cfg.k)
        if ranks.size > 1:  # torchrun / accelerate launch: the ranks share the shards, rank 0 solves and commits
            from atlascli.fit_dist import fit_layer_ranks

            bar = (lambda d, t, layer=layer: progress(f"fit layer {layer}", d, t)) if progress else None
            out.extend(fit_layer_ranks(ranks, registry, fitter, subj, atlas_acts, layer, atlas_layer, fitted, commit,
                                       bar))
            continue
        done_before = fitted()
        if done_before is not None:  # a rerun: every method of this layer is already in the registry
            out.extend(done_before)
            continue
        health = HoldoutHealth(subj.n)  # scores the last ~5% with T fitted on the rest, in this same pass
        done = 0
        for s_shard, c_shard in zip(subj.shards(layer), atlas_acts.shards(atlas_layer), strict=True):
            if not torch.equal(s_shard.index, c_shard.index):
                raise InputError("subject and atlas shards hold different sentences",
                                 "extract both with the same --shard-size")
            atlas_batch = c_shard.to_scipy() if atlas_acts.sparse else c_shard.dense
            health.feed(fitter, s_shard.dense, atlas_batch)
            done += len(s_shard.index)
            if progress:
                progress(f"fit layer {layer}", done, subj.n)
        out.extend(commit(fitter, health.report()))
    return out


def _commit(registry: Registry, cfg: FitConfig, layer: int, fitter: MultiFitter, checked: dict[str, Health] | str,
            subj: Activations, atlas_acts: Artifact, atlas_prov: dict[str, Any]) -> list[Artifact]:
    """Solve every method of ``fitter`` and store each translation as an alignment (reused when it exists)."""
    sp = subj.artifact.provenance
    out: list[Artifact] = []
    for method, tr in fitter.results().items():
        prov = {"method": method, "subject": cfg.subject, "revision": sp["revision"], "layer": layer,
                "site": cfg.site, **atlas_prov, "dataset": sp["dataset"],
                "dataset_fingerprint": sp["dataset_fingerprint"], "n": subj.n, "shape": list(tr.shape),
                "normalisation": tr.info.get("normalisation", "none")}
        key = sha256_json({**prov, "ridge": cfg.ridge, "k": cfg.k, "subject_acts": subj.artifact.id})
        art_id = f"align-{slug(cfg.subject)}-L{layer}-{cfg.site}-{method}-{key[:10]}"
        if registry.exists(art_id, "alignment"):
            out.append(registry.get(art_id, "alignment"))
            continue
        stage = registry.stage("alignment", art_id, parents=[subj.artifact.id, atlas_acts.id])
        if (published := stage.published) is not None:  # another process fitted it while we waited
            stage.release()
            out.append(published)
            continue
        tr.save(stage.path / "translation.safetensors")
        out.append(stage.commit(prov, {"info": tr.info, "config": {"ridge": cfg.ridge, "k": cfg.k},
                                       "health": health_meta(checked, method)}))
    return out


def _fitted(registry: Registry, cfg: FitConfig, layer: int, methods: list[str], sp: dict[str, Any],
            atlas_prov: dict[str, Any], subject_acts: str, n: int) -> list[Artifact] | None:
    """The existing alignments of every method at ``layer`` fitted from exactly these activations (their first ``n``
    sentences) and settings, or None when any is missing (then the layer is fitted again, in one pass for all
    methods)."""
    found = []
    for method in methods:
        match = [a for a in registry.find("alignment", method=method, subject=cfg.subject, revision=sp["revision"],
                                          layer=layer, site=cfg.site, atlas=atlas_prov["atlas"],
                                          dataset_fingerprint=sp["dataset_fingerprint"], n=n)
                 if subject_acts in a.parents and a.meta.get("config") == {"ridge": cfg.ridge, "k": cfg.k}]
        if not match:
            return None
        found.append(match[-1])
    return found
