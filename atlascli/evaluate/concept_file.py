"""Concept sets from a file (``--concept-sets``), as the paper's LLM-written sets: subject feature -> sentences.

Accepted forms (``.json`` or ``.jsonl``)::

    {"123": ["sentence", ...], "456": [...]}                       # every evaluated layer
    [{"feature": 123, "sentences": [...], "layer": 19}, ...]      # layer optional
    one such record per line (JSONL)

No translation method ever sees these sentences, so the sets favour none of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from atlascli.errors import InputError, NotFoundError
from atlascli.evaluate.data import TestData
from atlascli.evaluate.retrieval import ConceptSets, feature_stats, validate

MIN_SENTENCES = 5
"""Fewest sentences a concept set may have."""
CHUNK = 64
"""Features whose sentences are forwarded together."""

ConceptSetFile = dict[tuple[int | None, int], list[str]]
"""(subject layer or None for every layer, subject feature) -> sentences."""


def _records(data: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(data, dict) and isinstance(data.get("sets"), list):
        data = data["sets"]
    if isinstance(data, dict):
        return [{"feature": k, "sentences": v} for k, v in data.items() if not k.startswith("_")]
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return data
    raise InputError(f"{path} is not a concept-set file", 'use {"FEATURE": ["sentence", ...]} or JSONL records '
                     '{"feature": N, "sentences": [...], "layer": L}')


def read_concept_sets(path: Path) -> ConceptSetFile:
    """Parse the file; malformed entries are refused together, each named."""
    if not path.exists():
        raise NotFoundError(f"concept-set file {path} does not exist", "write one subject feature -> sentences per entry")
    text = path.read_text(encoding="utf-8")
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is neither JSON nor JSONL (line {exc.lineno}: {exc.msg})",
                             "one JSON object, or one record per line") from None
    out: ConceptSetFile = {}
    bad: list[str] = []
    for i, rec in enumerate(_records(data, path)):
        feat, sents, layer = rec.get("feature"), rec.get("sentences"), rec.get("layer")
        try:
            key = (None if layer is None else int(layer), int(feat))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            bad.append(f"entry {i}: feature {feat!r} / layer {layer!r} is not an integer")
            continue
        if not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
            bad.append(f"feature {feat}: 'sentences' must be a list of strings")
            continue
        if key in out:
            bad.append(f"feature {feat}" + (f" (layer {layer})" if layer is not None else "") + " appears twice")
            continue
        out[key] = [s for s in sents if s.strip()]
    if bad:
        raise InputError(f"{path}: {len(bad)} malformed entr{'y' if len(bad) == 1 else 'ies'}: " + "; ".join(bad[:10])
                         + (f"; ... {len(bad) - 10} more" if len(bad) > 10 else ""), "fix or remove them")
    if not out:
        raise InputError(f"{path} holds no concept sets", 'e.g. {"123": ["sentence", ...]}')
    return out


def sets_for_layer(sets: ConceptSetFile, layer: int, ds: int, path: Path | str = "concept sets") -> dict[int, list[str]]:
    """The sets that apply to ``layer``, refusing features outside 0..ds-1 and sets of fewer than 5 sentences."""
    mine = {f: s for (la, f), s in sets.items() if la is None or la == layer}
    out_of_range = sorted(f for f in mine if not 0 <= f < ds)
    short = sorted((f, len(s)) for f, s in mine.items() if len(s) < MIN_SENTENCES)
    problems = []
    if out_of_range:
        problems.append(f"feature(s) {out_of_range[:20]}{' ...' if len(out_of_range) > 20 else ''} outside the "
                        f"subject layer's 0..{ds - 1}")
    if short:
        problems.append(f"feature(s) with fewer than {MIN_SENTENCES} sentences: "
                        + ", ".join(f"{f} ({n})" for f, n in short[:20]) + (" ..." if len(short) > 20 else ""))
    if problems:
        raise InputError(f"{path} (layer {layer}): " + "; ".join(problems),
                         f"give every feature at least {MIN_SENTENCES} sentences and use features of this layer")
    if not mine:
        have = sorted({la for la, _ in sets if la is not None})
        raise InputError(f"{path} has no concept set for layer {layer} (layers in the file: {have})",
                         "add records for this layer, or omit 'layer' to use a set at every layer")
    return dict(sorted(mine.items()))


def file_concept_sets(data: TestData, layer: int, sets: dict[int, list[str]], subject_lm: Any, site: str,
                      atlas: Any, foundation_lm: Any, label: str) -> ConceptSets:
    """Forward every set through the subject (for filter (ii), z-scored by the test split) and the foundation model +
    atlas SAE (for the query: mean max-pooled atlas code)."""
    from atlascli.extract import ExtractConfig, Shard, extract_shard
    from atlascli.saes import load_atlas_sae

    mean, std = feature_stats(data, layer)
    safe = torch.where(std > 1e-12, std, torch.ones_like(std))
    p = atlas.artifact.provenance
    a_layer = int(p["layer"])
    sae = load_atlas_sae(atlas.artifact, str(foundation_lm.device))
    s_cfg = ExtractConfig(model=str(subject_lm.name) if hasattr(subject_lm, "name") else "subject", layers=(layer,),
                          site=site)
    a_cfg = ExtractConfig(model=p["foundation"], layers=(a_layer,), site=p["site"], sae=atlas.weights_id)
    feats = list(sets)
    Q = torch.zeros(len(feats), atlas.width, dtype=torch.float64)
    Z = torch.zeros(len(feats), mean.numel(), dtype=torch.float64)
    for a in range(0, len(feats), CHUNK):
        part = feats[a : a + CHUNK]
        sentences = [s for f in part for s in sets[f]]
        owner = torch.tensor([j for j, f in enumerate(part) for _ in sets[f]])
        x = extract_shard(subject_lm, sentences, s_cfg, None)[f"L{layer}"].double()
        out = extract_shard(foundation_lm, sentences, a_cfg, sae)
        csr = (out[f"L{a_layer}.indptr"].numpy(), out[f"L{a_layer}.indices"].numpy(), out[f"L{a_layer}.values"].numpy())
        codes = Shard(torch.arange(len(sentences)), None, csr, atlas.width).to_dense().double()
        sizes = torch.tensor([len(sets[f]) for f in part], dtype=torch.float64)[:, None]
        Q[a : a + len(part)].index_add_(0, owner, codes)
        Z[a : a + len(part)].index_add_(0, owner, (x - mean) / safe)
        Q[a : a + len(part)] /= sizes
        Z[a : a + len(part)] /= sizes
    return validate(feats, Q, Z, max(len(s) for s in sets.values()), label)
