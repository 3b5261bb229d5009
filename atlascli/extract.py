"""Streaming extraction of max-pooled activations into sharded safetensors.

The split is cut into fixed shards of consecutive sentences; each shard is tokenised, sorted by
length into token-budget batches (minimal padding), run only up to the deepest requested layer,
max-pooled over real (non-padding, non-special) tokens and written atomically. Re-running after a
crash skips complete shards; since a shard's batches depend only on its own sentences, the result
is bit-for-bit that of an uninterrupted run. Shards of different models over the same dataset
hold the same sentences, so fits can stream them pairwise.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from atlascli.activations import Activations, Shard, check_coverage, find_covering, shard_name
from atlascli.corpus import load_split, resolve_dataset
from atlascli.distributed import world
from atlascli.errors import AtlasError, CorruptArtifactError, InputError
from atlascli.hooks import record_sites, run_until
from atlascli.models import LoadedModel, check_layer, load_model, model_card
from atlascli.registry import Artifact, Registry, slug
from atlascli.registry.files import atomic_save_tensors, atomic_write_json, load_tensors, sha256_json

__all__ = ["Activations", "ExtractConfig", "Shard", "check_coverage", "extract", "extract_shard", "find_covering",
           "find_reusable", "make_batches", "shard_name"]
"""Readers live in :mod:`atlascli.activations`; re-exported here for callers of the extraction API."""

ProgressFn = Callable[[int, int, int], None]
"""Progress callback: (sentences done, sentences total, tokens done)."""


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract."""

    model: str
    """Zoo name, local folder/.gguf, or Hugging Face id."""
    layers: tuple[int, ...]
    """Block indices (0-based)."""
    site: str = ""
    """``mlp`` (MLP neurons), ``mlp_out`` or ``resid``; empty: :func:`default_site` (``mlp``, what a fit reads by
    default, or the SAE's own site when ``sae`` is given)."""
    dataset: str = "default"
    """Dataset artifact id or name."""
    split: str = "train"
    """``train`` or ``test``."""
    sae: str | None = None
    """SAE to encode activations with (one layer only); codes are stored sparsely."""
    limit: int | None = None
    """Use only the first N sentences of the split."""
    device: str = "cpu"
    """cpu, cuda or auto."""
    dtype: str = "float32"
    """float32, bfloat16 or float16."""
    batch_tokens: int = 2048
    """Token budget of a batch (padded length x batch size)."""
    max_batch: int = 128
    """Most sentences in one batch."""
    max_length: int = 128
    """Sentences are truncated to this many tokens."""
    shard_size: int = 2048
    """Sentences per shard (the unit of resumption)."""
    revision: str | None = None
    """Hub revision of the model."""
    trust_remote_code: bool = False
    """Allow custom model code from the Hub."""

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "max_batch", "max_length", "shard_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}",
                                 f"e.g. --{name.replace('_', '-')} {getattr(ExtractConfig, name)}")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"limit must be at least 1, got {self.limit}", "omit --limit to use every sentence")
        if any(layer < 0 for layer in self.layers):
            raise InputError(f"layers must be non-negative, got {list(self.layers)}", "e.g. --layers 3,12")
        if not self.site:
            object.__setattr__(self, "site", default_site(self.sae))


def default_site(sae: str | None, registry: Registry | None = None) -> str:
    """The site ``atlas extract`` reads when none is given: with an SAE that is an atlas of the registry, the site
    it was trained on; with another SAE (a sae-lens folder or release), its ``hook_name`` when the folder says it,
    else ``resid`` (where most published SAEs read); without an SAE, ``mlp``, what ``atlas fit`` reads by default,
    so that an extraction made first is the one the fit reuses."""
    from atlascli.saes import resolve_sae_ref

    if not sae:
        return "mlp"
    try:
        found = resolve_sae_ref(sae, registry)
    except AtlasError:
        return "resid"  # the plan reports an unresolvable reference with its own message
    if found.atlas is not None:
        return str(found.atlas.provenance.get("site", "resid"))
    hook = ""
    if found.folder is not None:
        try:
            hook = str(json.loads((found.folder / "cfg.json").read_text()).get("hook_name") or "")
        except (OSError, ValueError):
            pass  # the plan reports an unreadable folder with its own message
    if hook.endswith(("hook_mlp_out", "mlp.hook_out")):
        return "mlp_out"
    if hook.endswith(("mlp.hook_post", "mlp.hook_pre")):
        return "mlp"
    return "resid"


def _artifact_id(cfg: ExtractConfig, revision: str, ds_fp: str, sae_prov: dict[str, Any] | None) -> str:
    key = {k: v for k, v in asdict(cfg).items() if k not in {"device", "batch_tokens", "max_batch"}}
    # the resolved revision names the weights; consent to run a model's own code changes no number (kept at the
    # value every earlier id was made with, so ids do not move)
    key.update(revision=revision, dataset=ds_fp, sae=sae_prov, trust_remote_code=False)
    layers = "-".join(str(x) for x in cfg.layers)
    kind = "codes" if cfg.sae else cfg.site
    return f"act-{slug(cfg.model)}-{kind}-L{layers}-{cfg.split}-{sha256_json(key)[:10]}"


def make_batches(lengths: list[int], batch_tokens: int, max_batch: int) -> list[list[int]]:
    """Group positions into batches sorted by length (longest first) under a token budget."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = max(lengths[cur[0]] if cur else 0, lengths[i])
        if cur and ((len(cur) + 1) * width > batch_tokens or len(cur) >= max_batch):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _pool_mask(enc: dict[str, torch.Tensor]) -> torch.Tensor:
    """Real tokens: attended and not special (BOS/EOS); rows with none keep all attended tokens."""
    mask = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
    empty = ~mask.any(1)
    if empty.any():
        mask[empty] = enc["attention_mask"][empty].bool()
    return mask


def _to_csr(dense: torch.Tensor) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        sp = dense.to_sparse_csr()
    return {"indptr": sp.crow_indices().to(torch.int64), "indices": sp.col_indices().to(torch.int32),
            "values": sp.values().to(torch.float32)}


def extract_shard(lm: LoadedModel, sentences: list[str], cfg: ExtractConfig,
                  sae: Any | None, on_batch: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """Max-pooled activations of ``sentences`` at every configured layer (rows in input order)."""
    tok = lm.tokenizer
    tok.padding_side = "right"
    lengths = [len(ids) for ids in tok(sentences, truncation=True, max_length=cfg.max_length)["input_ids"]]
    pooled: dict[int, torch.Tensor] = {}
    peaks: dict[int, torch.Tensor] = {}
    n_tokens = torch.zeros(len(sentences), dtype=torch.int32)
    for batch in make_batches(lengths, cfg.batch_tokens, cfg.max_batch):
        enc = tok([sentences[i] for i in batch], padding=True, truncation=True, max_length=cfg.max_length,
                  return_tensors="pt", return_special_tokens_mask=True)
        mask = _pool_mask(enc).to(lm.device)
        with torch.inference_mode(), record_sites(lm.model, list(cfg.layers), cfg.site) as store:
            run_until(lm.model, input_ids=enc["input_ids"].to(lm.device),
                      attention_mask=enc["attention_mask"].to(lm.device))
            for layer in cfg.layers:
                acts = store[layer]
                if sae is not None:
                    acts = sae.encode(acts.to(sae.W_enc.dtype)).clamp_min(0)
                    acts, pos = acts.masked_fill(~mask[..., None], 0.0).max(1)
                    peak = enc["input_ids"].to(lm.device).gather(1, pos)
                    peaks.setdefault(layer, torch.empty(len(sentences), acts.shape[-1], dtype=torch.int32))
                    peaks[layer][torch.tensor(batch)] = peak.to(torch.int32).cpu()
                else:  # max-pool, keeping where each feature peaked (explain marks it with the tokenizer alone)
                    acts, pos = acts.float().masked_fill(~mask[..., None], float("-inf")).max(1)
                    peaks.setdefault(layer, torch.empty(len(sentences), acts.shape[-1], dtype=_position_dtype(cfg)))
                    peaks[layer][torch.tensor(batch)] = pos.to(peaks[layer].dtype).cpu()
                out = pooled.setdefault(layer, torch.empty(len(sentences), acts.shape[-1]))
                out[torch.tensor(batch)] = acts.float().cpu()
        n_tokens[torch.tensor(batch)] = enc["attention_mask"].sum(1).to(torch.int32)
        if on_batch:
            on_batch(len(batch), int(enc["attention_mask"].sum()))
    tensors: dict[str, torch.Tensor] = {"n_tokens": n_tokens}
    for layer, mat in pooled.items():
        if not torch.isfinite(mat).all():
            raise InputError(f"non-finite activations at layer {layer}", "try --dtype float32")
        if sae is not None:
            tensors.update({f"L{layer}.{k}": v for k, v in _to_csr(mat).items()})
            tensors[f"L{layer}.peak_tokens"] = peaks[layer][mat != 0].contiguous()  # aligned with CSR values
        else:
            tensors[f"L{layer}"] = mat.contiguous()
            tensors[f"L{layer}.argmax"] = peaks[layer].contiguous()  # token position of each pooled maximum
    return tensors


def _position_dtype(cfg: ExtractConfig) -> torch.dtype:
    """Smallest integer type that holds every token position (uint8 up to 256 tokens)."""
    return torch.uint8 if cfg.max_length <= 256 else torch.int32


def _identity_without_loading(cfg: ExtractConfig, registry: Registry) -> tuple[str, dict[str, Any] | None] | None:
    """(revision, SAE provenance) of ``cfg``'s result when they are known without loading the model (a zoo model or
    a local one, whose revision comes from cached file hashes; no SAE or an atlas by exact id), else None."""
    from atlascli.models import local_revision

    if cfg.revision is not None or world(cfg.device).size > 1:
        return None
    sae_prov = None
    if cfg.sae:
        if not registry.exists(cfg.sae, "atlas"):
            return None
        sae_prov = {"sae": cfg.sae, "sae_source": "atlas"}
    revision = local_revision(cfg.model)
    return None if revision is None else (revision, sae_prov)


def _stored_without_loading(cfg: ExtractConfig, registry: Registry, dataset: Artifact) -> Artifact | None:
    """The published result of ``cfg`` when it can be named without loading the model, else None."""
    known = _identity_without_loading(cfg, registry)
    if known is None:
        return None
    revision, sae_prov = known
    ds_fp = dataset.provenance["dataset_fingerprint"]
    art_id = _artifact_id(cfg, revision, ds_fp, sae_prov)
    if registry.exists(art_id, "activations"):
        return registry.get(art_id, "activations")
    return find_reusable(cfg, revision, ds_fp, sae_prov, registry)


def find_prefix(cfg: ExtractConfig, revision: str | None, ds_fp: str, sae_prov: dict[str, Any] | None,
                registry: Registry) -> Artifact | None:
    """A published extraction whose first ``cfg.limit`` sentences are this one's rows: same model (and revision when
    given), site, dataset, split, length cap, shards, SAE and dtype, ``cfg.layers`` among its layers and at least
    ``cfg.limit`` sentences (an exact one first, else the newest longer one)."""
    if cfg.limit is None:
        return None
    match: dict[str, Any] = dict(model=cfg.model, site=cfg.site, dataset_fingerprint=ds_fp, split=cfg.split,
                                 max_length=cfg.max_length, shard_size=cfg.shard_size, sae=sae_prov, dtype=cfg.dtype)
    if revision is not None:
        match["revision"] = revision
    found = [a for a in reversed(registry.find("activations", **match))
             if set(cfg.layers) <= set(a.provenance["layers"]) and int(a.provenance["n"]) >= cfg.limit]
    exact = [a for a in found if int(a.provenance["n"]) == cfg.limit]
    return exact[0] if exact else found[0] if found else None


def stored_prefix(cfg: ExtractConfig, registry: Registry) -> Artifact | None:
    """:func:`find_prefix` for ``cfg`` without loading the model (zoo or local models, whose revision comes from
    cached file hashes); None when there is none or the revision is not known without loading."""
    known = None if cfg.limit is None else _identity_without_loading(cfg, registry)
    if known is None:
        return None
    dataset = resolve_dataset(cfg.dataset, registry)
    return find_prefix(cfg, known[0], dataset.provenance["dataset_fingerprint"], known[1], registry)


def extract(cfg: ExtractConfig, registry: Registry | None = None, progress: ProgressFn | None = None,
            lm: LoadedModel | None = None, sae: Any | None = None, on_plan: Callable[[Any], None] | None = None) -> Artifact:
    """Extract (or resume, or reuse) an activations artifact.

    ``sae`` supplies the SAE named by ``cfg.sae`` (an atlas id) in memory, e.g. while that atlas is built.
    Unless ``lm`` is given, every input is checked from configs first and ``on_plan`` gets the
    :class:`atlascli.plan.Plan` before any model is loaded.
    """
    registry = registry or Registry()
    if not cfg.layers:
        raise InputError("no layers given", "pass --layers, e.g. --layers 3,12")
    if lm is None:
        from atlascli.plan import plan_extract

        checked = plan_extract(cfg, registry)
        if on_plan:
            on_plan(checked)
    dataset = resolve_dataset(cfg.dataset, registry)
    sentences = load_split(dataset, cfg.split)
    if cfg.limit is not None:
        sentences = sentences[: cfg.limit]
    if lm is None and (stored := _stored_without_loading(cfg, registry, dataset)) is not None:
        return stored
    lm = lm or load_model(cfg.model, cfg.device, cfg.dtype, cfg.revision, cfg.trust_remote_code)
    for layer in cfg.layers:
        check_layer(lm.model, layer, cfg.site)
    sae_prov = None
    if cfg.sae:
        if len(cfg.layers) != 1:
            raise InputError("--sae works with exactly one layer", "pass the SAE's layer alone to --layers")
        if sae is not None:
            sae_prov = {"sae": cfg.sae, "sae_source": "atlas"}
        else:
            from atlascli.saes import load_sae

            sae, sae_prov = load_sae(cfg.sae, str(lm.device))
    ds_fp = dataset.provenance["dataset_fingerprint"]
    art_id = _artifact_id(cfg, lm.revision, ds_fp, sae_prov)
    if (ranks := world(cfg.device)).size > 1:  # torchrun / accelerate launch: the ranks share the shards
        from atlascli.extract_dist import extract_ranks

        return extract_ranks(cfg, registry, progress, lm, sae, sae_prov, dataset, sentences, art_id, ranks)
    if registry.exists(art_id, "activations"):
        return registry.get(art_id, "activations")
    reusable = find_reusable(cfg, lm.revision, ds_fp, sae_prov, registry)
    if reusable is not None:
        return reusable
    stage = registry.stage("activations", art_id, parents=[dataset.id])  # waits while another process stages it
    if (published := stage.published) is not None:
        stage.release()
        return published
    plan = staging_plan(cfg, lm.revision, ds_fp, len(sentences))
    plan_path = stage.path / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) != json.loads(json.dumps(plan)):
        stage.discard()
        stage = registry.stage("activations", art_id, parents=[dataset.id])
    atomic_write_json(plan_path, plan)
    n_shards = (len(sentences) + cfg.shard_size - 1) // cfg.shard_size
    done = tokens = computed = 0
    started, tokens_before = time.perf_counter(), 0
    for k in range(n_shards):
        lo, hi = k * cfg.shard_size, min(len(sentences), (k + 1) * cfg.shard_size)
        path = stage.path / shard_name(k)
        if path.exists():
            try:
                shard = load_tensors(path)
                index = shard.get("index")
                if index is None or not torch.equal(index, torch.arange(lo, hi, dtype=torch.int64)):
                    raise CorruptArtifactError(f"{path.name} holds other sentences", "redo it")
                tokens += int(shard["n_tokens"].sum())
                done = hi
                if progress:
                    progress(done, len(sentences), tokens)
                continue
            except CorruptArtifactError:
                path.unlink()

        def on_batch(n: int, t: int) -> None:
            nonlocal done, tokens
            done += n
            tokens += t
            if progress:
                progress(done, len(sentences), tokens)

        if not computed:
            started, tokens_before = time.perf_counter(), tokens
        tensors = extract_shard(lm, sentences[lo:hi], cfg, sae, on_batch)
        computed += hi - lo
        tensors["index"] = torch.arange(lo, hi, dtype=torch.int64)
        atomic_save_tensors(path, tensors)
    provenance, meta = artifact_record(cfg, lm, sae, sae_prov, dataset, len(sentences), tokens)
    if computed:  # this machine's throughput, read by atlascli.plan for time estimates
        secs = max(time.perf_counter() - started, 1e-6)
        meta["throughput"] = {"sentences": computed, "seconds": round(secs, 3), "sentences_per_s": computed / secs,
                              "tokens_per_s": (tokens - tokens_before) / secs, "device": lm.device.type,
                              "dtype": cfg.dtype, "deepest_layer": max(cfg.layers), "sae": sae is not None}
    return stage.commit(provenance, meta, required=[shard_name(k) for k in range(n_shards)],
                        check=lambda folder: check_coverage(folder, n_shards, len(sentences)))


def staging_plan(cfg: ExtractConfig, revision: str, ds_fp: str, n: int) -> dict[str, Any]:
    """What ``plan.json`` of a staging folder records: a rerun resumes only a folder staged with exactly this."""
    return {"config": asdict(cfg), "revision": revision, "dataset": ds_fp, "n": n}


def artifact_record(cfg: ExtractConfig, lm: LoadedModel, sae: Any | None, sae_prov: dict[str, Any] | None,
                    dataset: Artifact, n: int, tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(provenance, meta) of an activations artifact over ``n`` sentences and ``tokens`` tokens (without the
    measured throughput, which the caller adds)."""
    n_shards = (n + cfg.shard_size - 1) // cfg.shard_size
    widths = {str(layer): int(lm.width(cfg.site, layer)) for layer in cfg.layers}
    if sae is not None:
        widths = {str(cfg.layers[0]): int(sae.cfg.d_sae)}
    card = model_card(lm)
    provenance = {
        "model": cfg.model, "revision": lm.revision, "layers": list(cfg.layers), "site": cfg.site,
        "dataset": dataset.id, "dataset_fingerprint": dataset.provenance["dataset_fingerprint"], "split": cfg.split,
        "n": n, "limit": cfg.limit, "dtype": cfg.dtype, "pooling": "max over non-special tokens",
        "max_length": cfg.max_length, "shard_size": cfg.shard_size, "sae": sae_prov, "sparse": sae is not None,
    }
    meta = {"widths": widths, "n_shards": n_shards, "tokens": tokens, "model_card": card}
    return provenance, meta


def find_reusable(cfg: ExtractConfig, revision: str, ds_fp: str, sae_prov: dict[str, Any] | None,
                  registry: Registry) -> Artifact | None:
    """An existing artifact over the same model, data and settings whose layers include ``cfg.layers``."""
    art: Artifact
    for art in reversed(registry.find("activations", model=cfg.model, revision=revision, site=cfg.site,
                                      dataset_fingerprint=ds_fp, split=cfg.split, limit=cfg.limit,
                                      max_length=cfg.max_length, shard_size=cfg.shard_size, sae=sae_prov,
                                      dtype=cfg.dtype)):
        if set(cfg.layers) <= set(art.provenance["layers"]):
            return art
    return None
