"""Offline Concept Atlas build (paper 3.2): one pass of the foundation model over the labelling sentences
keeps every real token's activation; a TopK SAE is trained on them with sae-lens; the same tokens give
every sentence's max-pooled codes (stored as the activations `atlas fit` reuses); every feature is
labelled offline from its top sentences (see :mod:`atlascli.atlas.labels`).

The atlas also stores the labelling sentences' embeddings and codes (``examples.safetensors``), so a
text query can be resolved through examples: the sentences most similar to the query, their mean code
minus the corpus mean (the paper's query from examples, with the examples found for the user).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from atlascli.atlas.labels import COHERENCE_THRESHOLD, label_features, labelling_stats, top_samples
from atlascli.atlas.train import SAETraining, collect_tokens, pooled_codes, reconstruction_quality, train_sae
from atlascli.corpus import load_sources, load_split, resolve_dataset
from atlascli.errors import InputError
from atlascli.extract import ExtractConfig, _artifact_id, shard_name
from atlascli.models import DEFAULTS, LoadedModel, check_layer, load_model, local_revision, model_card
from atlascli.pinned import load_foundation
from atlascli.registry import Artifact, Registry, slug
from atlascli.registry.files import atomic_save_tensors, atomic_write_json, load_tensors, read_json, sha256_json

LABELS_VERSION = 2
"""Version of the offline labelling (1: peak tokens only; 2: content words, WordNet, coherence)."""

ProgressFn = Callable[[str, int, int], None]
"""Progress callback: (stage, done, total)."""


@dataclass(frozen=True)
class AtlasBuildConfig:
    """How to build an offline atlas (defaults: about 10 minutes on 2 CPU cores)."""

    name: str = "default"
    """Registry name."""
    foundation: str = DEFAULTS["foundation"]
    """Foundation model."""
    layer: int = 12
    """Foundation layer (0-based block index)."""
    site: str = "resid"
    """Foundation site."""
    width: int = 4096
    """Number of SAE features."""
    k: int = 32
    """TopK sparsity (active features per token)."""
    dataset: str = "default"
    """Dataset (train split) for training and labelling."""
    train_sentences: int = 12000
    """Sentences whose tokens train the SAE (the last 5% held out for quality metrics)."""
    max_tokens: int = 300_000
    """At most this many training tokens are used."""
    epochs: int = 2
    """Passes over the training tokens."""
    batch_size: int = 1024
    """Tokens per SAE training step."""
    lr: float = 1e-3
    """Adam learning rate."""
    label_sentences: int = 12000
    """Sentences whose pooled codes label the features (stored as the activations `atlas fit` reuses)."""
    top_samples: int = 20
    """Max-activating samples kept per feature (labels, coherence)."""
    aux_coefficient: float = 1.0
    """Weight of the TopK auxiliary loss that revives dead features."""
    coherence_threshold: float = COHERENCE_THRESHOLD
    """Features whose top samples are less coherent than this are labelled ``syntax: ...``."""
    embedder: str = DEFAULTS["embedder"]
    """Embedder of labels and queries."""
    seed: int = 0
    """Seed of initialisation and shuffling."""
    device: str = "cpu"
    """cpu, cuda or auto."""
    dtype: str = "float32"
    """Dtype of the foundation's forward pass (the SAE trains in float32 either way). bfloat16 runs about 2.2x
    faster on CPUs with AVX-512 BF16 (Gemma 3 270M layer 12: token activations at cosine 0.99998 to float32);
    it is part of the atlas's identity, and `atlas fit` / `evaluate` run the atlas side in it."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the foundation; the commit it resolves to names the atlas."""
    trust_remote_code: bool = False
    """Allow the foundation's own model code from the Hub (off unless asked)."""

    def __post_init__(self) -> None:
        if self.width < 2 or self.k < 1 or self.k > self.width:
            raise InputError(f"bad SAE shape: width={self.width}, k={self.k}", "need 1 <= k <= width")
        for name in ("train_sentences", "max_tokens", "epochs", "batch_size", "label_sentences", "top_samples"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}",
                                 f"e.g. --{name.replace('_', '-')} {getattr(AtlasBuildConfig, name)}")
        if not self.lr > 0 or self.aux_coefficient < 0:
            raise InputError(f"lr must be > 0 and aux coefficient >= 0 (got {self.lr}, {self.aux_coefficient})",
                             "e.g. --lr 1e-3")
        if self.layer < 0:
            raise InputError(f"layer must be >= 0, got {self.layer}", "e.g. --layer 12")
        from atlascli.preflight import check_runtime

        check_runtime("cpu", self.dtype)  # (the device is checked by the plan)


def identity(cfg: AtlasBuildConfig) -> dict[str, Any]:
    """The settings that name an atlas: every field, with the default float32 dtype left out (atlases built
    before the dtype option keep their ids). The foundation's revision enters as the commit it resolved to (by the
    caller), so the asked-for name and ``trust_remote_code`` (which changes no number) are left out."""
    out = asdict(cfg)
    if out.get("dtype") == "float32":
        out.pop("dtype")
    out.pop("revision")
    out.pop("trust_remote_code")
    return out


def atlas_dtype(provenance: dict[str, Any]) -> str:
    """The dtype an atlas's foundation runs in (float32 for atlases that do not record one, e.g. imported SAEs)."""
    return str(provenance.get("dtype") or "float32")


def codes_config(cfg: AtlasBuildConfig, atlas_id: str, n: int) -> ExtractConfig:
    """The extraction whose artifact holds the labelling sentences' codes (what `atlas fit --limit n` asks for)."""
    return ExtractConfig(model=cfg.foundation, layers=(cfg.layer,), site=cfg.site, dataset=cfg.dataset, split="train",
                         sae=atlas_id, limit=n, device=cfg.device, dtype=cfg.dtype)


def _store_codes(registry: Registry, cfg: AtlasBuildConfig, atlas_id: str, lm: LoadedModel, dataset: Artifact,
                 sae: Any, toks: Any, n: int, forward_seconds: float | None = None) -> Artifact:
    """Write the labelling sentences' pooled codes as the activations artifact `atlas fit` would extract."""
    ecfg = codes_config(cfg, atlas_id, n)
    ds_fp = dataset.provenance["dataset_fingerprint"]
    sae_prov = {"sae": atlas_id, "sae_source": "atlas"}
    art_id = _artifact_id(ecfg, lm.revision, ds_fp, sae_prov)
    if registry.exists(art_id, "activations"):
        return registry.get(art_id, "activations")
    stage = registry.stage("activations", art_id, parents=[dataset.id])
    if (published := stage.published) is not None:
        stage.release()
        return published
    n_shards = (n + ecfg.shard_size - 1) // ecfg.shard_size
    tokens = 0
    for k in range(n_shards):
        lo, hi = k * ecfg.shard_size, min(n, (k + 1) * ecfg.shard_size)
        t = {key.replace("L.", f"L{cfg.layer}."): v for key, v in pooled_codes(sae, toks, lo, hi).items()}
        t["index"] = torch.arange(lo, hi, dtype=torch.int64)
        tokens += int(t["n_tokens"].sum())
        atomic_save_tensors(stage.path / shard_name(k), t)
    provenance = {
        "model": ecfg.model, "revision": lm.revision, "layers": [cfg.layer], "site": cfg.site, "dataset": dataset.id,
        "dataset_fingerprint": ds_fp, "split": "train", "n": n, "limit": n, "dtype": ecfg.dtype,
        "pooling": "max over non-special tokens", "max_length": ecfg.max_length, "shard_size": ecfg.shard_size,
        "sae": sae_prov, "sparse": True,
    }
    meta = {"widths": {str(cfg.layer): int(sae.cfg.d_sae)}, "n_shards": n_shards, "tokens": tokens,
            "model_card": model_card(lm), "computed_by": "atlas build (from the kept tokens, no second pass)"}
    if forward_seconds:  # this machine's forward throughput (the plan of a later `atlas fit` / `extract` reads it)
        n_all = int(toks.n_tokens.shape[0])
        meta["throughput"] = {"sentences": n_all, "seconds": round(forward_seconds, 3),
                              "sentences_per_s": n_all / forward_seconds,
                              "tokens_per_s": float(toks.n_tokens.sum()) / forward_seconds, "device": lm.device.type,
                              "dtype": cfg.dtype, "deepest_layer": cfg.layer, "sae": False}
    return stage.commit(provenance, meta, required=[shard_name(k) for k in range(n_shards)])


def _csr_of(codes: Artifact, layer: int) -> tuple[Any, Any, Any, Any]:
    import numpy as np

    from atlascli.activations import Activations

    parts: list[list[Any]] = [[], [], [], []]
    offset = 0
    for shard in Activations(codes).shards(layer):
        assert shard.csr is not None and shard.peak_tokens is not None
        indptr, indices, values = shard.csr
        parts[0].append(indptr[1:] + offset if parts[0] else indptr + offset)
        offset += int(indptr[-1])
        parts[1].append(indices)
        parts[2].append(values)
        parts[3].append(shard.peak_tokens)
    return tuple(np.concatenate(p) for p in parts)  # type: ignore[return-value]


def label_and_store(folder: Any, codes_art: Artifact, layer: int, width: int, sentences: list[str],
                    sources: list[str] | None, embedder: str, decode: Callable[[int], str], top: int,
                    threshold: float, seed: int, progress: ProgressFn | None) -> dict[str, Any]:
    """Label every feature from the labelling sentences' codes and write ``labels.json``,
    ``label_embeddings.safetensors`` and ``examples.safetensors`` into ``folder``; returns labelling stats."""
    from atlascli.embed import embed

    indptr, indices, values, peaks = _csr_of(codes_art, layer)
    n_label = len(indptr) - 1
    label_sents = sentences[:n_label]
    emb = embed(label_sents, embedder)
    samples = top_samples(indptr, indices, values, peaks, width, top)
    labels, label_emb = label_features(samples, label_sents, sources[:n_label] if sources else None, emb, decode,
                                       threshold, seed, (lambda d, t: progress("label features", d, t)) if progress
                                       else None)
    atomic_write_json(folder / "labels.json", labels)
    atomic_save_tensors(folder / "label_embeddings.safetensors", {"embeddings": label_emb})
    atomic_save_tensors(folder / "examples.safetensors", {
        "embeddings": emb.half(), "indptr": torch.from_numpy(indptr).long(),
        "indices": torch.from_numpy(indices.astype("int32")), "values": torch.from_numpy(values).half()})
    return {**labelling_stats(labels), "dead_in_labelling": sum(1 for x in labels if x["frequency"] == 0)}


def relabel_offline(atlas: Any, folder: Any, registry: Registry, progress: ProgressFn | None = None,
                    trust_remote_code: bool = False) -> tuple[list[dict[str, Any]], torch.Tensor, dict[str, Any]]:
    """Offline labels v2 for an existing trained atlas, from the codes it was labelled with."""
    p, meta = atlas.artifact.provenance, atlas.artifact.meta
    codes_id = meta.get("label_codes")
    if not codes_id or not registry.exists(codes_id, "activations"):
        raise InputError(f"atlas {atlas.id} has no labelling codes in the registry ({codes_id})",
                         "rebuild it with `atlas atlas build`")
    dataset = registry.get(p["dataset"], "dataset")
    # a cached model loads in seconds; only its tokenizer is used (the token ids of the stored codes)
    tok = load_foundation(atlas, trust_remote_code=trust_remote_code).tokenizer
    cfg = meta.get("config", {})
    stats = label_and_store(folder, registry.get(codes_id, "activations"), int(p["layer"]), int(p["width"]),
                            load_split(dataset, "train"), load_sources(dataset, "train"),
                            p.get("embedder", DEFAULTS["embedder"]), lambda t: tok.decode([t]),
                            max(int(cfg.get("top_samples", 20)), 20),
                            COHERENCE_THRESHOLD, int(p.get("seed", 0)), progress)
    stats.pop("dead_in_labelling")
    return (read_json(folder / "labels.json"), load_tensors(folder / "label_embeddings.safetensors")["embeddings"],
            stats)


def build_atlas(cfg: AtlasBuildConfig, registry: Registry | None = None, progress: ProgressFn | None = None,
                lm: LoadedModel | None = None, on_plan: Callable[[Any], None] | None = None) -> Artifact:
    """Train, label and store an atlas (reused when an identical one exists).

    Every input is checked from configs first (:func:`atlascli.plan_tasks.plan_build`); ``on_plan`` gets the
    plan before any model is loaded or anything is written."""
    from atlascli.plan_tasks import plan_build

    plan = plan_build(cfg, registry or Registry())
    if on_plan:
        on_plan(plan)

    registry = registry or Registry()
    dataset = resolve_dataset(cfg.dataset, registry)
    sentences = load_split(dataset, "train")
    ds_fp = dataset.provenance["dataset_fingerprint"]

    def atlas_id(revision: str) -> str:
        key = sha256_json({**identity(cfg), "revision": revision, "dataset": ds_fp, "labels": LABELS_VERSION})
        return f"atlas-{cfg.name}-{slug(cfg.foundation)}-L{cfg.layer}-{cfg.site}-w{cfg.width}-{key[:10]}"

    known = lm.revision if lm is not None else local_revision(cfg.foundation)  # a rerun: reuse before loading
    if known is not None and registry.exists(known_id := atlas_id(known), "atlas"):
        return registry.get(known_id, "atlas")
    lm = lm or load_model(cfg.foundation, cfg.device, cfg.dtype, cfg.revision, cfg.trust_remote_code)
    check_layer(lm.model, cfg.layer, cfg.site)
    art_id = atlas_id(lm.revision)
    if registry.exists(art_id, "atlas"):
        return registry.get(art_id, "atlas")

    def cb(stage_name: str) -> Callable[[int, int], None] | None:
        return (lambda d, t: progress(stage_name, d, t)) if progress else None

    n = min(len(sentences), max(cfg.train_sentences, cfg.label_sentences))
    n_train = min(cfg.train_sentences, n)
    n_hold = max(1, n_train // 20)
    if n_train - n_hold < 2:
        raise InputError(f"only {n_train} training sentences", "use more --train-sentences")
    stage = registry.stage("atlas", art_id, parents=[dataset.id])
    if (published := stage.published) is not None:
        stage.release()
        return published
    started = time.perf_counter()
    toks = collect_tokens(lm, sentences[:n], cfg.layer, cfg.site, progress=cb("foundation tokens"))
    forward_seconds = time.perf_counter() - started
    train_rows = toks.rows(0, n_train - n_hold)
    train_tokens = toks.acts[train_rows][: cfg.max_tokens]
    if train_tokens.shape[0] < max(cfg.batch_size // 8, 2):
        raise InputError(f"only {train_tokens.shape[0]} training tokens", "use more --train-sentences")
    sae_dir = stage.path / "sae"
    training = train_sae(train_tokens, SAETraining(cfg.width, cfg.k, cfg.epochs, cfg.batch_size, cfg.lr,
                                                   cfg.aux_coefficient, True, cfg.seed), sae_dir, cb("train SAE"))
    del train_tokens
    from sae_lens import SAE  # (7 s of imports, paid only when an atlas is trained, not when one is reused)

    sae = SAE.load_from_disk(str(sae_dir), device="cpu")
    quality = reconstruction_quality(sae, toks.acts[toks.rows(n_train - n_hold, n_train)])
    n_label = min(cfg.label_sentences, n)
    codes_art = _store_codes(registry, cfg, art_id, lm, dataset, sae, toks, n_label, forward_seconds)
    del toks
    stats = label_and_store(stage.path, codes_art, cfg.layer, cfg.width, sentences, load_sources(dataset, "train"),
                            cfg.embedder, lambda t: lm.tokenizer.decode([t]), cfg.top_samples,
                            cfg.coherence_threshold, cfg.seed, progress)
    dead = stats.pop("dead_in_labelling")
    quality.update({"dead_features": dead, "dead_fraction": dead / cfg.width, **stats})
    provenance = {"name": cfg.name, "foundation": cfg.foundation, "revision": lm.revision, "layer": cfg.layer,
                  "site": cfg.site, "width": cfg.width, "k": cfg.k, "dataset": dataset.id,
                  "dataset_fingerprint": ds_fp, "seed": cfg.seed, "embedder": cfg.embedder, "source": "trained",
                  "dtype": cfg.dtype, "labels": "offline v2: distinctive content words, WordNet synsets, coherence",
                  "labels_version": LABELS_VERSION, "n_label_sentences": n_label}
    return stage.commit(provenance, {"quality": quality, "training": training, "config": asdict(cfg),
                                     "label_codes": codes_art.id})
