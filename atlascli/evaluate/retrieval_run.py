"""The retrieval part of `atlas evaluate`: concept sets per layer (file or offline construction), both candidate sets,
and their chance levels, counted drops included."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atlascli.atlas import Atlas
from atlascli.evaluate.concept_file import ConceptSetFile, file_concept_sets, read_concept_sets, sets_for_layer
from atlascli.evaluate.data import TestData
from atlascli.evaluate.retrieval import chance_retrieval, concept_sets, construction_label, retrieval
from atlascli.pinned import pinned_models
from atlascli.registry import Artifact

if TYPE_CHECKING:
    from atlascli.evaluate.run import EvaluateConfig


def precheck_concept_sets(cfg: EvaluateConfig, table: dict[str, dict[int, Artifact]]) -> ConceptSetFile | None:
    """Read and validate ``--concept-sets`` for every evaluated layer before anything is extracted."""
    if not cfg.concept_sets or "retrieval" not in cfg.kinds:
        return None
    sets = read_concept_sets(Path(cfg.concept_sets))
    first = next(iter(table.values()))
    for layer, art in first.items():
        sets_for_layer(sets, layer, int(art.provenance["shape"][0]), cfg.concept_sets)
    return sets


def run_retrieval(cfg: EvaluateConfig, data: TestData, atlas: Atlas, subject: str, table: dict[str, dict[int, Artifact]],
                  progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
    """method -> layer -> {mrr, mpp (over ``cfg.candidates``), validated: {...}, all: {...}}; ``baseline`` (chance
    over both candidate sets), ``kept`` (validated / candidates, drops by reason) and the construction's name."""
    methods = list(table)
    layers = sorted(table[methods[0]])
    file_sets = precheck_concept_sets(cfg, table)
    models: dict[str, Any] = {}
    out: dict[str, Any] = {"candidates": cfg.candidates}
    for i, layer in enumerate(layers):
        first = table[methods[0]][layer]
        ds = int(first.provenance["shape"][0])
        if file_sets is not None:
            if not models:
                models = pinned_models(first, atlas, cfg.device, cfg.trust_remote_code)
            mine = sets_for_layer(file_sets, layer, ds, cfg.concept_sets or "")
            label = f"file {cfg.concept_sets}: {len(mine)} concept sets (sentences no translation method was fitted on)"
            sets = file_concept_sets(data, layer, mine, models["subject"], first.provenance["site"], atlas,
                                     models["foundation"], label)
        else:
            sets = concept_sets(data, layer, cfg.retrieval_features, cfg.set_size, cfg.seed, cfg.concept_construction)
        out["construction"] = sets.construction if file_sets is not None else construction_label(
            cfg.concept_construction, cfg.set_size)
        for m in methods:
            both = retrieval(sets, table[m][layer])
            chosen = asdict(both[cfg.candidates])
            out.setdefault(m, {})[str(layer)] = {**chosen, "validated": asdict(both["validated"]),
                                                 "all": asdict(both["all"])}
        chance = {"validated": chance_retrieval(len(sets.kept)), "all": chance_retrieval(ds)}
        out.setdefault("baseline", {})[str(layer)] = {**chance[cfg.candidates], **chance}
        out.setdefault("kept", {})[str(layer)] = {
            "kept": len(sets.kept), "sampled": len(sets.candidates), "set_size": sets.set_size,
            "dropped": sum(len(v) for v in sets.dropped.values()),
            "dropped_by_reason": {k: len(v) for k, v in sets.dropped.items()}, "dropped_features": sets.dropped}
        if progress:
            progress("retrieval", i + 1, len(layers))
    return out
