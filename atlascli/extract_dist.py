"""Extraction across the ranks of a torchrun / accelerate run (called by :func:`atlascli.extract.extract`).

Every rank loads the model and the split; they first check that they run the same job (configuration, dataset
fingerprint, model revision). Rank 0 alone holds the artifact's lock: it reuses a committed artifact, or opens
(resumes) the staging folder, validates the shards already there and lists the missing ones. The missing shards are
dealt round-robin (the i-th missing shard to rank i mod world size), so each rank computes a disjoint, deterministic
share into the same staging folder, and a rerun after a crash splits what is left evenly whatever the world size now
is (or runs single-process: it resumes the same folder). Shards depend only on their own sentences, so the
committed files are byte-identical to a one-process run. When every rank is done, rank 0 checks the coverage and
commits; the others then read the committed artifact.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atlascli.distributed import World, all_gather_object, check_agreement, on_main, raise_any
from atlascli.errors import AtlasError
from atlascli.registry import Artifact, Registry
from atlascli.registry.files import atomic_save_tensors, atomic_write_json

if TYPE_CHECKING:
    from atlascli.extract import ExtractConfig, ProgressFn
    from atlascli.models import LoadedModel
    from atlascli.registry.store import Staging


def scan_shards(folder: Path, n: int, shard_size: int) -> tuple[list[int], int]:
    """(the shards still to compute, the tokens of the valid ones) in a staging folder; shards that are unreadable or
    hold other sentences are deleted (they are recomputed)."""
    import torch
    from safetensors import safe_open

    from atlascli.extract import shard_name

    n_shards = (n + shard_size - 1) // shard_size
    missing: list[int] = []
    tokens = 0
    for k in range(n_shards):
        path = folder / shard_name(k)
        lo, hi = k * shard_size, min(n, (k + 1) * shard_size)
        if path.exists():
            try:
                with safe_open(str(path), framework="pt") as f:
                    index, n_tokens = f.get_tensor("index"), f.get_tensor("n_tokens")
                if torch.equal(index, torch.arange(lo, hi, dtype=torch.int64)):
                    tokens += int(n_tokens.sum())
                    continue
            except Exception:  # truncated or foreign: redo it
                pass
            path.unlink(missing_ok=True)
        missing.append(k)
    return missing, tokens


def extract_ranks(cfg: ExtractConfig, registry: Registry, progress: ProgressFn | None, lm: LoadedModel,
                  sae: Any | None, sae_prov: dict[str, Any] | None, dataset: Artifact, sentences: list[str],
                  art_id: str, w: World) -> Artifact:
    """This rank's part of a multi-process extraction; returns the committed artifact on every rank."""
    from atlascli.extract import artifact_record, check_coverage, find_reusable, shard_name, staging_plan

    ds_fp = str(dataset.provenance["dataset_fingerprint"])
    n = len(sentences)
    facts = {f"--{k.replace('_', '-')}": json.dumps(v) for k, v in asdict(cfg).items()}
    facts.update({"dataset fingerprint": ds_fp, "sentence count": str(n), "model revision": lm.revision,
                  "SAE": json.dumps(sae_prov, sort_keys=True)})
    check_agreement(facts, "the extraction")
    n_shards = (n + cfg.shard_size - 1) // cfg.shard_size
    held: dict[str, Staging] = {}

    def open_stage() -> tuple[str, str, list[int], int]:
        if registry.exists(art_id, "activations"):
            return "done", art_id, [], 0
        reusable = find_reusable(cfg, lm.revision, ds_fp, sae_prov, registry)
        if reusable is not None:
            return "done", reusable.id, [], 0
        stage = registry.stage("activations", art_id, parents=[dataset.id])  # rank 0 alone holds the lock
        if stage.published is not None:
            stage.release()
            return "done", art_id, [], 0
        plan = staging_plan(cfg, lm.revision, ds_fp, n)
        plan_path = stage.path / "plan.json"
        if plan_path.exists() and json.loads(plan_path.read_text()) != json.loads(json.dumps(plan)):
            stage.discard()
            stage = registry.stage("activations", art_id, parents=[dataset.id])
        atomic_write_json(plan_path, plan)
        held["stage"] = stage
        missing, tokens = scan_shards(stage.path, n, cfg.shard_size)
        return "work", str(stage.path), missing, tokens

    state, where, missing, tokens_before = on_main(open_stage)
    if state == "done":
        return registry.get(where, "activations")
    folder = Path(where)
    mine = missing[w.rank::w.size]
    total = sum(min(n, (k + 1) * cfg.shard_size) - k * cfg.shard_size for k in mine)
    done = tokens = 0
    started = time.perf_counter()
    error: AtlasError | None = None

    def on_batch(m: int, t: int) -> None:
        nonlocal done, tokens
        done += m
        tokens += t
        if progress:
            progress(done, total, tokens)

    try:
        import torch

        from atlascli.extract import extract_shard

        for k in mine:
            lo, hi = k * cfg.shard_size, min(n, (k + 1) * cfg.shard_size)
            tensors = extract_shard(lm, sentences[lo:hi], cfg, sae, on_batch)
            tensors["index"] = torch.arange(lo, hi, dtype=torch.int64)
            atomic_save_tensors(folder / shard_name(k), tensors)
    except AtlasError as exc:  # told to every rank below; rank 0 says it in one line
        error = exc
    seconds = time.perf_counter() - started
    try:
        raise_any(error)
    except AtlasError:
        if "stage" in held:
            held["stage"].release()  # keep the folder: a rerun resumes it
        raise
    shares = all_gather_object({"sentences": done, "tokens": tokens, "seconds": seconds})

    def commit() -> str:
        stage = held.pop("stage")
        computed = sum(int(s["sentences"]) for s in shares)
        new_tokens = sum(int(s["tokens"]) for s in shares)
        provenance, meta = artifact_record(cfg, lm, sae, sae_prov, dataset, n, tokens_before + new_tokens)
        if computed:  # per-process throughput (what atlascli.plan scales from) and the run's aggregate
            busy = max(sum(float(s["seconds"]) for s in shares), 1e-6)
            wall = max(max(float(s["seconds"]) for s in shares), 1e-6)
            meta["throughput"] = {"sentences": computed, "seconds": round(busy, 3), "sentences_per_s": computed / busy,
                                  "tokens_per_s": new_tokens / busy, "device": lm.device.type, "dtype": cfg.dtype,
                                  "deepest_layer": max(cfg.layers), "sae": sae is not None, "processes": w.size,
                                  "aggregate_sentences_per_s": computed / wall}
        return stage.commit(provenance, meta, required=[shard_name(k) for k in range(n_shards)],
                            check=lambda path: check_coverage(path, n_shards, n)).id  # releases the lock

    return registry.get(on_main(commit), "activations")
