"""`atlas evaluate --subjects A,B,C`: one evaluation per subject model, assembled like the paper's Table 7
(subjects x layers as rows, methods as columns) in one report artifact."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from atlascli.errors import InputError
from atlascli.evaluate.run import EvaluateConfig, Report, evaluate, id_config
from atlascli.registry import Registry, slug
from atlascli.registry.files import atomic_write_json, sha256_json


@dataclass
class MultiReport:
    """Reports of several subjects against one atlas, and the assembled tables."""

    subjects: list[str]
    """Subject models, in the order given."""
    atlas: str
    """Atlas id (the same for every subject)."""
    methods: list[str]
    """Methods present for every subject (columns of Table 7)."""
    reports: dict[str, Report] = field(default_factory=dict)
    """Subject -> its full report (also stored on its own)."""
    table: dict[str, Any] = field(default_factory=dict)
    """kind -> subject -> layer -> method -> numbers (quality: auroc/ap; retrieval: mrr/mpp; steering: f/delta_a)."""
    artifact: str | None = None
    """Report artifact id once stored."""


def parse_subjects(text: str) -> list[str]:
    """``A,B,C`` -> subjects (distinct, in order)."""
    subjects = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not subjects:
        raise InputError("no subjects given", "e.g. --subjects smollm2-135m-instruct,./my-model")
    return subjects


def _cells(report: Report) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, keys in (("quality", ("auroc", "ap")), ("retrieval", ("mrr", "mpp")),
                       ("steering", ("faithfulness", "delta_a"))):
        block = getattr(report, kind)
        if not block:
            continue
        rows = block["cells"] if kind == "steering" else block
        cols = block["columns"] if kind == "steering" else [str(la) for la in report.layers]
        methods = [*report.methods, "random"] if kind == "steering" else report.methods
        out[kind] = {c: {m: {k: rows[m][c].get(k) for k in keys} for m in methods if m in rows} for c in cols}
        if kind == "quality":
            for c in cols:
                b = block["baseline"][c]
                out[kind][c]["random"] = {"auroc": b["random_auroc"], "ap": b["random_ap"]}
        if kind == "retrieval":
            for c in cols:
                out[kind][c]["random"] = {k: block["baseline"][c][k] for k in keys}
    return out


def evaluate_subjects(cfg: EvaluateConfig, subjects: list[str], registry: Registry | None = None,
                      progress: Callable[[str, int, int], None] | None = None) -> MultiReport:
    """Evaluate each subject with the same settings (same atlas, seed, features, judge) and assemble the tables."""
    registry = registry or Registry()
    reports: dict[str, Report] = {}
    for subject in subjects:
        reports[subject] = evaluate(replace(cfg, subject=subject), registry, progress)
    atlases = {r.atlas for r in reports.values()}
    if len(atlases) != 1:
        raise InputError(f"the subjects were evaluated against different atlases {sorted(atlases)}",
                         "pass --atlas so every subject uses the same one")
    methods = [m for m in next(iter(reports.values())).methods if all(m in r.methods for r in reports.values())]
    multi = MultiReport(subjects, atlases.pop(), methods, reports)
    for subject, rep in reports.items():
        for kind, by_layer in _cells(rep).items():
            multi.table.setdefault(kind, {})[subject] = by_layer
    key = sha256_json({"config": id_config(asdict(cfg)), "subjects": subjects, "reports": [r.artifact for r in reports.values()]})
    art_id = f"report-table7-{slug('-'.join(subjects))[:60]}-{key[:10]}"
    if registry.exists(art_id, "report"):
        registry.remove(art_id)
    stage = registry.stage("report", art_id, parents=[multi.atlas, *[r.artifact for r in reports.values() if r.artifact]])
    multi.artifact = art_id
    atomic_write_json(stage.path / "report.json", _jsonable(asdict(multi)))
    stage.commit({"subjects": subjects, "atlas": multi.atlas, "kinds": list(cfg.kinds), "methods": methods,
                  "seed": cfg.seed})
    return multi


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x
