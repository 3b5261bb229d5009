"""Offline Concept Atlas build: a TopK SAE trained with sae-lens on the foundation model's per-token
activations over the default corpus, then every feature labelled without network (paper 3.2).

Labels come from each feature's top-activating sentences and the tokens where it peaks; the label
embedding is the mean embedding of those sentences (as Semantic Lens does).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlascli.corpus import load_split, resolve_dataset
from atlascli.errors import InputError
from atlascli.extract import Activations, ExtractConfig, _pool_mask, extract, make_batches
from atlascli.hooks import record_sites, run_until
from atlascli.models import DEFAULTS, LoadedModel, check_layer, load_model
from atlascli.registry import Artifact, Registry, slug
from atlascli.registry.files import atomic_save_tensors, atomic_write_json, sha256_json

ProgressFn = Callable[[str, int, int], None]
"""Progress callback: (stage, done, total)."""


@dataclass(frozen=True)
class AtlasBuildConfig:
    """How to build an offline atlas."""

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
    train_sentences: int = 16000
    """Sentences whose tokens train the SAE (5% of them held out for quality metrics)."""
    max_tokens: int = 300_000
    """At most this many training tokens are kept in memory."""
    epochs: int = 4
    """Passes over the training tokens."""
    batch_size: int = 4096
    """Tokens per SAE training step."""
    lr: float = 5e-4
    """Adam learning rate."""
    label_sentences: int = 20000
    """Sentences whose pooled codes label the features (also reused by `atlas fit`)."""
    top_samples: int = 10
    """Max-activating samples kept per feature."""
    embedder: str = DEFAULTS["embedder"]
    """Embedder of labels and queries."""
    seed: int = 0
    """Seed of initialisation and shuffling."""
    device: str = "cpu"
    """cpu, cuda or auto."""


def collect_tokens(lm: LoadedModel, sentences: list[str], layer: int, site: str, max_tokens: int,
                   batch_tokens: int = 2048, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Per-token activations (real tokens only: no padding, no BOS) [T, width] float32."""
    tok = lm.tokenizer
    tok.padding_side = "right"
    lengths = [len(x) for x in tok(sentences, truncation=True, max_length=128)["input_ids"]]
    chunks, total = [], 0
    for batch in make_batches(lengths, batch_tokens, 128):
        enc = tok([sentences[i] for i in batch], padding=True, truncation=True, max_length=128,
                  return_tensors="pt", return_special_tokens_mask=True)
        mask = _pool_mask(enc)
        with torch.inference_mode(), record_sites(lm.model, [layer], site) as store:
            run_until(lm.model, input_ids=enc["input_ids"].to(lm.device),
                      attention_mask=enc["attention_mask"].to(lm.device))
            chunks.append(store[layer][mask.to(lm.device)].float().cpu())
        total += chunks[-1].shape[0]
        if progress:
            progress(min(total, max_tokens), max_tokens)
        if total >= max_tokens:
            break
    return torch.cat(chunks)[:max_tokens]


def _batches(x: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(x.shape[0], generator=gen)
        for a in range(0, x.shape[0] - batch + 1, batch):
            yield x[perm[a:a + batch]]


def train_sae(tokens: torch.Tensor, cfg: AtlasBuildConfig, out: Path,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train a TopK SAE with sae-lens on ``tokens`` and save it (inference format) to ``out``."""
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(cfg.seed)
    d_in = tokens.shape[1]
    batch = min(cfg.batch_size, tokens.shape[0])
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.width, k=cfg.k, device="cpu"))
    scale = float(np.sqrt(d_in) / tokens.norm(dim=1).mean())
    with torch.no_grad():
        sae.b_dec.copy_(tokens.mean(0) * scale)
    total = cfg.epochs * tokens.shape[0]
    steps = max(1, total // batch)
    trainer = SAETrainer(SAETrainerConfig(total_training_samples=total, train_batch_size_samples=batch, lr=cfg.lr,
                                          lr_end=cfg.lr / 10, lr_warm_up_steps=max(1, steps // 20),
                                          lr_decay_steps=max(1, steps // 5), device="cpu",
                                          dead_feature_window=max(10, total // batch // 4),
                                          feature_sampling_window=max(10, total // batch // 2)),
                         sae, data_provider=_batches(tokens, batch, cfg.seed))
    trainer.activation_scaler.scaling_factor = scale
    provider = _batches(tokens, batch, cfg.seed)
    last: dict[str, float] = {}
    while trainer.n_training_samples < total:
        trainer.maybe_reset_sparsity()
        step = trainer.step(next(provider))
        trainer.n_training_steps += 1
        last = {"loss": float(step.loss.detach())}
        if progress:
            progress(trainer.n_training_samples, total)
    sae.fold_activation_norm_scaling_factor(scale)
    trainer.activation_scaler.scaling_factor = None
    trainer.set_final_sae_metadata()
    sae.save_inference_model(out)
    return {"steps": trainer.n_training_steps, "tokens_seen": trainer.n_training_samples, "final_loss": last.get("loss"),
            "scaling_factor_folded": scale, "batch_size": batch, "lr": cfg.lr}


@torch.no_grad()
def reconstruction_quality(sae: Any, tokens: torch.Tensor) -> dict[str, float]:
    """Fraction of variance explained, MSE and L0 on held-out tokens."""
    codes = sae.encode(tokens)
    recon = sae.decode(codes)
    resid = ((tokens - recon) ** 2).sum()
    var = ((tokens - tokens.mean(0)) ** 2).sum()
    return {"fraction_variance_explained": float(1 - resid / var), "mse": float(((tokens - recon) ** 2).mean()),
            "l0": float((codes > 0).float().sum(1).mean()), "heldout_tokens": int(tokens.shape[0])}


def label_features(codes: Activations, layer: int, sentences: list[str], tokenizer: Any, top: int,
                   embedder: str) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Per feature: top samples, peak tokens, a short label; and label embeddings [width, dim]."""
    from atlascli.embed import embed

    cols, vals, rows, peaks = [], [], [], []
    for shard in codes.shards(layer):
        assert shard.csr is not None and shard.peak_tokens is not None
        indptr, indices, values = shard.csr
        counts = np.diff(indptr)
        rows.append(np.repeat(shard.index.numpy(), counts))
        cols.append(indices.astype(np.int64))
        vals.append(values)
        peaks.append(shard.peak_tokens)
    col, val, row, peak = (np.concatenate(x) for x in (cols, vals, rows, peaks))
    width = codes.widths[layer]
    freq = np.bincount(col, minlength=width) / max(codes.n, 1)
    order = np.lexsort((-val, col))
    starts = np.searchsorted(col[order], np.arange(width))
    ends = np.searchsorted(col[order], np.arange(width), side="right")
    labels: list[dict[str, Any]] = []
    top_ids: list[list[int]] = []
    for f in range(width):
        sel = order[starts[f]:min(ends[f], starts[f] + top)]
        ids = row[sel].tolist()
        toks = [tokenizer.decode([int(t)]).strip() for t in peak[sel]]
        common = [t for t, _ in Counter(t.lower() for t in toks if t).most_common(3)]
        labels.append({"index": f, "label": " / ".join(common) if common else "(dead)", "description": None,
                       "top_tokens": toks, "top_samples": [sentences[i] for i in ids],
                       "top_values": [round(float(v), 5) for v in val[sel]], "frequency": round(float(freq[f]), 6)})
        top_ids.append(ids)
    uniq = sorted({i for ids in top_ids for i in ids})
    pos = {i: n for n, i in enumerate(uniq)}
    emb = embed([sentences[i] for i in uniq], embedder)
    out = torch.zeros(width, emb.shape[1] if len(uniq) else 384)
    for f, ids in enumerate(top_ids):
        if ids:
            v = emb[[pos[i] for i in ids]].mean(0)
            out[f] = v / v.norm().clamp_min(1e-12)
    return labels, out


def build_atlas(cfg: AtlasBuildConfig, registry: Registry | None = None, progress: ProgressFn | None = None,
                lm: LoadedModel | None = None) -> Artifact:
    """Train, label and store an atlas (reused when an identical one exists)."""
    from sae_lens import SAE

    registry = registry or Registry()
    if cfg.width < 2 or cfg.k < 1 or cfg.k > cfg.width:
        raise InputError(f"bad SAE shape: width={cfg.width}, k={cfg.k}", "need 1 <= k <= width")
    dataset = resolve_dataset(cfg.dataset, registry)
    sentences = load_split(dataset, "train")
    lm = lm or load_model(cfg.foundation, cfg.device)
    check_layer(lm.model, cfg.layer, cfg.site)
    ds_fp = dataset.provenance["dataset_fingerprint"]
    key = sha256_json({**asdict(cfg), "revision": lm.revision, "dataset": ds_fp})
    art_id = f"atlas-{cfg.name}-{slug(cfg.foundation)}-L{cfg.layer}-{cfg.site}-w{cfg.width}-{key[:10]}"
    if registry.exists(art_id, "atlas"):
        return registry.get(art_id, "atlas")
    stage = registry.stage("atlas", art_id, parents=[dataset.id])

    def cb(stage_name: str) -> Callable[[int, int], None] | None:
        return (lambda d, t: progress(stage_name, d, t)) if progress else None

    train = sentences[: cfg.train_sentences]
    n_hold = max(1, len(train) // 20)
    tokens = collect_tokens(lm, train[:-n_hold], cfg.layer, cfg.site, cfg.max_tokens, progress=cb("foundation tokens"))
    held = collect_tokens(lm, train[-n_hold:], cfg.layer, cfg.site, max(1, cfg.max_tokens // 20))
    if tokens.shape[0] < cfg.batch_size // 8:
        raise InputError(f"only {tokens.shape[0]} training tokens", "use more --train-sentences")
    sae_dir = stage.path / "sae"
    training = train_sae(tokens, cfg, sae_dir, cb("train SAE"))
    del tokens
    sae = SAE.load_from_disk(str(sae_dir), device=str(lm.device))
    quality = reconstruction_quality(sae, held.to(lm.device))
    codes_art = extract(ExtractConfig(model=cfg.foundation, layers=(cfg.layer,), site=cfg.site, dataset=cfg.dataset,
                                      split="train", sae=art_id, limit=cfg.label_sentences, device=cfg.device),
                        registry, (lambda d, t, _k: progress("label codes", d, t)) if progress else None, lm=lm, sae=sae)
    labels, label_emb = label_features(Activations(codes_art), cfg.layer, sentences, lm.tokenizer, cfg.top_samples,
                                       cfg.embedder)
    atomic_write_json(stage.path / "labels.json", labels)
    atomic_save_tensors(stage.path / "label_embeddings.safetensors", {"embeddings": label_emb})
    dead = sum(1 for x in labels if x["frequency"] == 0)
    quality.update({"dead_features": dead, "dead_fraction": dead / cfg.width})
    provenance = {"name": cfg.name, "foundation": cfg.foundation, "revision": lm.revision, "layer": cfg.layer,
                  "site": cfg.site, "width": cfg.width, "k": cfg.k, "dataset": dataset.id,
                  "dataset_fingerprint": ds_fp, "seed": cfg.seed, "embedder": cfg.embedder, "source": "trained",
                  "labels": "offline: peak tokens of top samples; embedding = mean of top samples"}
    return stage.commit(provenance, {"quality": quality, "training": training, "config": asdict(cfg),
                                     "label_codes": codes_art.id})
