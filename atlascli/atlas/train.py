"""The numeric half of an offline atlas build: one pass of the foundation model that keeps every real
token's activation, TopK SAE training with sae-lens, held-out reconstruction quality, and the
max-pooled SAE codes of every sentence computed from the kept tokens (no second forward pass)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlascli.extract import _pool_mask, _to_csr, make_batches
from atlascli.hooks import record_sites, run_until
from atlascli.models import LoadedModel


@dataclass(frozen=True)
class TokenActivations:
    """Per-token activations of a list of sentences (real tokens only: no padding, no BOS/EOS)."""

    acts: torch.Tensor
    """[T, d_in] float32, grouped by sentence (sentence order, token order)."""
    owner: torch.Tensor
    """[T] int64: the sentence each token belongs to."""
    token_ids: torch.Tensor
    """[T] int64: the token ids."""
    n_tokens: torch.Tensor
    """[n_sentences] int32: attended tokens per sentence (BOS included, as extraction counts them)."""

    def rows(self, lo: int, hi: int) -> slice:
        """The token rows of sentences ``lo..hi-1``."""
        a = int(torch.searchsorted(self.owner, torch.tensor(lo)))
        b = int(torch.searchsorted(self.owner, torch.tensor(hi)))
        return slice(a, b)


@torch.inference_mode()
def collect_tokens(lm: LoadedModel, sentences: list[str], layer: int, site: str, batch_tokens: int = 2048,
                   max_length: int = 128, progress: Callable[[int, int], None] | None = None) -> TokenActivations:
    """Run the foundation model once up to ``layer`` and keep every real token's activation."""
    tok = lm.tokenizer
    tok.padding_side = "right"
    lengths = [len(x) for x in tok(sentences, truncation=True, max_length=max_length)["input_ids"]]
    acts, owner, ids = [], [], []
    n_tokens = torch.zeros(len(sentences), dtype=torch.int32)
    done = 0
    for batch in make_batches(lengths, batch_tokens, 128):
        enc = tok([sentences[i] for i in batch], padding=True, truncation=True, max_length=max_length,
                  return_tensors="pt", return_special_tokens_mask=True)
        mask = _pool_mask(enc)
        with record_sites(lm.model, [layer], site) as store:
            run_until(lm.model, input_ids=enc["input_ids"].to(lm.device),
                      attention_mask=enc["attention_mask"].to(lm.device))
            acts.append(store[layer][mask.to(lm.device)].float().cpu())
        rows = torch.tensor(batch)[:, None].expand_as(mask)
        owner.append(rows[mask])
        ids.append(enc["input_ids"][mask])
        n_tokens[torch.tensor(batch)] = enc["attention_mask"].sum(1).to(torch.int32)
        done += len(batch)
        if progress:
            progress(done, len(sentences))
    own = torch.cat(owner)
    order = torch.argsort(own, stable=True)  # rows of a batch are row-major: tokens stay in order
    return TokenActivations(torch.cat(acts)[order], own[order], torch.cat(ids)[order], n_tokens)


def _batches(x: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(x.shape[0], generator=gen)
        for a in range(0, x.shape[0] - batch + 1, batch):
            yield x[perm[a:a + batch]].float()


@dataclass(frozen=True)
class SAETraining:
    """How to train the atlas SAE."""

    width: int
    """Number of SAE features."""
    k: int
    """Active features per token (TopK)."""
    epochs: float
    """Passes over the training tokens."""
    batch_size: int
    """Tokens per step."""
    lr: float
    """Adam learning rate (warm-up, then decay to lr/10)."""
    aux_coefficient: float = 1.0
    """Weight of sae-lens's TopK auxiliary loss (dead features learn to predict the residual)."""
    data_init: bool = True
    """Initialise decoder rows (and the encoder as their transpose) from random centred training tokens."""
    seed: int = 0
    """Seed of initialisation and shuffling."""


def train_sae(tokens: torch.Tensor, cfg: SAETraining, out: Path,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train a TopK SAE with sae-lens on ``tokens`` and save it (inference format) to ``out``."""
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(cfg.seed)
    d_in = tokens.shape[1]
    batch = min(cfg.batch_size, tokens.shape[0])
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.width, k=cfg.k, device="cpu",
                                                aux_loss_coefficient=cfg.aux_coefficient))
    scale = float(np.sqrt(d_in) / tokens.float().norm(dim=1).mean())
    with torch.no_grad():
        sae.b_dec.copy_(tokens.float().mean(0) * scale)
        if cfg.data_init:
            gen = torch.Generator().manual_seed(cfg.seed)
            pick = torch.randint(0, tokens.shape[0], (cfg.width,), generator=gen)
            w = tokens[pick].float() * scale - sae.b_dec
            w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-8) * 0.1
            sae.W_dec.copy_(w)
            sae.W_enc.copy_(w.T)
    total = int(cfg.epochs * tokens.shape[0])
    steps = max(1, total // batch)
    trainer = SAETrainer(SAETrainerConfig(total_training_samples=total, train_batch_size_samples=batch, lr=cfg.lr,
                                          lr_end=cfg.lr / 10, lr_warm_up_steps=max(1, steps // 20),
                                          lr_decay_steps=max(1, steps // 5), device="cpu",
                                          dead_feature_window=max(10, steps // 8),
                                          feature_sampling_window=max(10, steps // 2)),
                         sae, data_provider=_batches(tokens, batch, cfg.seed))
    trainer.activation_scaler.scaling_factor = scale
    provider = _batches(tokens, batch, cfg.seed)
    loss = None
    while trainer.n_training_samples < total:
        trainer.maybe_reset_sparsity()
        step = trainer.step(next(provider))
        trainer.n_training_steps += 1
        loss = float(step.loss.detach())
        if progress:
            progress(min(trainer.n_training_samples, total), total)
    sae.fold_activation_norm_scaling_factor(scale)
    trainer.activation_scaler.scaling_factor = None
    trainer.set_final_sae_metadata()
    sae.save_inference_model(out)
    return {"steps": trainer.n_training_steps, "tokens_seen": trainer.n_training_samples, "final_loss": loss,
            "scaling_factor_folded": scale, "batch_size": batch, "lr": cfg.lr, "aux_coefficient": cfg.aux_coefficient,
            "data_init": cfg.data_init, "training_tokens": int(tokens.shape[0])}


@torch.no_grad()
def reconstruction_quality(sae: Any, tokens: torch.Tensor, chunk: int = 8192) -> dict[str, float]:
    """Fraction of variance explained, MSE and L0 on held-out tokens."""
    resid = l0 = sq = 0.0
    mean = tokens.float().mean(0)
    var = float(((tokens.float() - mean) ** 2).sum())
    for a in range(0, tokens.shape[0], chunk):
        x = tokens[a:a + chunk].float()
        codes = sae.encode(x)
        rec = sae.decode(codes)
        resid += float(((x - rec) ** 2).sum())
        sq += float(((x - rec) ** 2).mean(1).sum())
        l0 += float((codes > 0).float().sum())
    n = max(tokens.shape[0], 1)
    return {"fraction_variance_explained": 1 - resid / max(var, 1e-30), "mse": sq / n, "l0": l0 / n,
            "heldout_tokens": int(tokens.shape[0])}


@torch.no_grad()
def pooled_codes(sae: Any, toks: TokenActivations, lo: int, hi: int) -> dict[str, torch.Tensor]:
    """Max-pooled SAE codes of sentences ``lo..hi-1`` in extraction's shard format (CSR + peak tokens)."""
    sl = toks.rows(lo, hi)
    x = toks.acts[sl]
    own = toks.owner[sl] - lo
    ids = toks.token_ids[sl]
    n = hi - lo
    codes = sae.encode(x.to(sae.W_enc.dtype)).clamp_min(0).float()
    width = codes.shape[1]
    pooled = torch.zeros(n, width).scatter_reduce(0, own[:, None].expand_as(codes), codes, "amax", include_self=True)
    # peak token: the first token (in order) reaching the pooled maximum
    pos = torch.arange(x.shape[0], 0, -1, dtype=torch.float32)[:, None]  # earlier tokens score higher
    hit = (codes == pooled[own]) & (codes > 0)
    first = torch.zeros(n, width).scatter_reduce(0, own[:, None].expand_as(codes), hit * pos, "amax", include_self=True)
    peak_row = (x.shape[0] - first).long().clamp(0, max(x.shape[0] - 1, 0))
    peak_ids = ids[peak_row] if x.shape[0] else torch.zeros(n, width, dtype=torch.long)
    out = {f"L.{k}": v for k, v in _to_csr(pooled).items()}
    out["L.peak_tokens"] = peak_ids[pooled != 0].to(torch.int32).contiguous()
    out["n_tokens"] = toks.n_tokens[lo:hi].clone()
    return out
