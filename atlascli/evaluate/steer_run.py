"""The steering part of `atlas evaluate`: resolve concepts and judge, then score every (method, layers) cell."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from atlascli.atlas import Atlas
from atlascli.errors import InputError
from atlascli.evaluate.faithfulness import DEFAULT_STEER_CONCEPTS, SEED_PROMPTS, CellResult, SteeringEval
from atlascli.judges import (
    ChatJudge,
    EmbeddingJudge,
    Judge,
    calibrate_threshold,
    judge_accuracy,
    parse_judge,
    redact_url,
)
from atlascli.pinned import check_fitted_on, pinned_models
from atlascli.registry import Artifact, Registry
from atlascli.search import ConceptQuery

if TYPE_CHECKING:
    from atlascli.evaluate.run import EvaluateConfig


def resolve_concepts(names: list[str], atlas: Atlas, registry: Registry) -> dict[str, ConceptQuery]:
    """Saved / built-in concepts by name, else text queries over the atlas labels."""
    from atlascli.concepts import load_concept
    from atlascli.search import query_from_text

    out: dict[str, ConceptQuery] = {}
    for name in names:
        q = load_concept(name, atlas, registry)
        if q is None:
            q = query_from_text(name, atlas, top_features=5)
        out[name] = q
    if not out:
        raise InputError("no steering concepts", "pass --concepts 'dogs and cats,music'")
    return out


def default_concepts(atlas: Atlas, registry: Registry) -> list[str]:
    """The paper's Table 8 on its atlas (Gemma Scope 16k L20); else the atlas' saved concepts, else a fixed list."""
    from atlascli.concepts import is_paper_atlas, list_concepts, paper_data

    if is_paper_atlas(atlas):
        return list(paper_data()["concepts"])
    named = [c["name"] for c in list_concepts(atlas, registry)]
    return named or list(DEFAULT_STEER_CONCEPTS)


def prompt_format(tokenizer: Any, chat: bool | None) -> tuple[bool, str]:
    """Whether to apply the chat template, and the sentence that says so in the report. Default (None): raw
    continuations, as the paper did (its A.7 seed prompts are continuations; Table 2's unsteered Llama-IT output
    continues "Once upon a time")."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat is None:
        return False, "raw continuations (the paper's default; --chat applies the chat template)"
    if chat and not has_template:
        return False, "raw continuations (--chat asked, but the tokenizer has no chat template)"
    return chat, "chat template (user turn + generation prompt)" if chat else "raw continuations (--raw)"


def _random_json(draws: list[CellResult]) -> dict[str, Any]:
    """Mean and spread over random draws, each draw a fresh direction per concept and layer."""
    import numpy as np

    f = np.array([c.faithfulness for c in draws if not math.isnan(c.faithfulness)])
    d = np.array([c.delta_a for c in draws if not math.isnan(c.delta_a)])
    return {"faithfulness": float(f.mean()) if f.size else None, "faithfulness_std": float(f.std()) if f.size else None,
            "delta_a": float(d.mean()) if d.size else None, "delta_a_std": float(d.std()) if d.size else None,
            "unrated": sum(c.unrated for c in draws), "n_draws": len(draws),
            "draws": [_cell_json(c) for c in draws], "concepts": _cell_json(draws[0])["concepts"]}


def build_judge(cfg: EvaluateConfig, concepts: list[str], registry: Registry, dataset_id: str) -> tuple[Judge, dict[str, Any]]:
    """The judge, with the embedding judge's threshold calibrated on held-out sentences."""
    from atlascli.corpus import load_split

    judge = parse_judge(cfg.judge, cfg.judge_url)
    info: dict[str, Any] = {"judge": cfg.judge}
    if isinstance(judge, EmbeddingJudge):
        sentences = load_split(registry.get(dataset_id, "dataset"), "test")
        sample = random.Random(cfg.seed).sample(sentences, min(2000, len(sentences)))
        judge.threshold = calibrate_threshold(concepts, sample, cfg.judge_fpr, judge.embedder)
        info.update(threshold=judge.threshold, calibration=f"{1 - cfg.judge_fpr:.2f} quantile of concept-sentence cosines "
                    f"over {len(sample)} test sentences (false-positive rate {cfg.judge_fpr})",
                    accuracy_on_paper_examples=judge_accuracy(judge))
    elif isinstance(judge, ChatJudge):
        judge.retries, judge.backoff, judge.timeout = max(1, cfg.judge_retries), cfg.judge_backoff, cfg.judge_timeout
        judge.preflight()  # a wrong key, URL or model fails here, before any generation
        info.update(retries=judge.retries, timeout=judge.timeout, url=redact_url(judge.url), samples=judge.samples,
                    temperature=judge.temperature)
    return judge, info


def _cell_json(cell: CellResult) -> dict[str, Any]:
    def fin(x: float) -> float | None:
        return None if math.isnan(x) else x

    return {"faithfulness": fin(cell.faithfulness), "delta_a": fin(cell.delta_a), "unrated": cell.unrated,
            "concepts": {name: {**asdict(s), "rates": {str(k): fin(v) for k, v in s.rates.items()},
                                "faithfulness": fin(s.faithfulness), "delta_a": fin(s.delta_a)}
                         for name, s in cell.concepts.items()}}


WORD_ROW = "procrustes-word"
"""The row of word-aligned Procrustes fits (atlascli/wordfit.py), steered as `atlas steer` steers with them."""


def word_alignments(registry: Registry, atlas: Atlas, subject: str, site: str, layers: list[int]) -> dict[int, Artifact]:
    """The newest word-aligned Procrustes fit of ``subject`` at ``site`` per layer, when every one of ``layers`` has
    one (else none: a row must cover every column)."""
    from atlascli.steering import steering_alignments

    try:
        _, _, found = steering_alignments(registry, atlas, subject, "procrustes", site, "word")  # oldest first
    except InputError:  # none fitted at this site
        return {}
    by_layer = {int(a.provenance["layer"]): a for a in found}  # the newest wins
    return {layer: by_layer[layer] for layer in layers} if all(la in by_layer for la in layers) else {}


def run_steering(cfg: EvaluateConfig, registry: Registry, atlas: Atlas, subject: str,
                 table: dict[str, dict[int, Artifact]], progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
    """method (and ``random``) -> layers label -> cell; plus the judge, prompts and examples. Where the subject has
    word-aligned Procrustes fits at every evaluated layer and site (and procrustes is evaluated), they get a row of their
    own (:data:`WORD_ROW`), steered along the query `atlas steer` uses with them."""
    from atlascli.steering import GenerationConfig, site_norms

    methods = list(table)
    layers = sorted(table[methods[0]])
    first = table[methods[0]][layers[0]].provenance
    names = list(cfg.concepts) if cfg.concepts else default_concepts(atlas, registry)
    concepts = resolve_concepts(names, atlas, registry)
    prompts = list(cfg.prompts) if cfg.prompts else list(SEED_PROMPTS)
    judge, judge_info = build_judge(cfg, names, registry, first["dataset"])
    if cfg.random_draws < 1:
        raise InputError(f"--random-draws must be >= 1, got {cfg.random_draws}", "e.g. --random-draws 3")
    rows = dict(table)
    word = word_alignments(registry, atlas, subject, first["site"], layers) if "procrustes" in table else {}
    if word:
        rows[WORD_ROW] = word
    models = pinned_models(table[methods[0]][layers[0]], atlas, cfg.device, cfg.trust_remote_code)
    check_fitted_on(models["subject"], [a for by_layer in rows.values() for a in by_layer.values()])
    lm, foundation = models["subject"], models["foundation"]
    chat, fmt = prompt_format(lm.tokenizer, cfg.chat)
    norms = site_norms(lm, first["site"], layers, prompts, chat) if cfg.unit == "norm" else None
    ev = SteeringEval(lm, first["site"], concepts, prompts, [*cfg.lambdas, 0.0],
                      GenerationConfig(max_new_tokens=cfg.max_new_tokens, sample=cfg.sample, seed=cfg.seed, chat=chat),
                      judge, atlas, foundation, norms, unit=cfg.unit, progress=progress)
    columns: dict[str, list[int]] = {str(layer): [layer] for layer in layers}
    if cfg.combined and len(layers) > 1:
        columns["combined"] = layers
    out: dict[str, Any] = {}
    examples: dict[str, Any] = {}
    for method in [*rows, "random"]:
        src = table["procrustes" if "procrustes" in table else methods[0]] if method == "random" else rows[method]
        for label, cols in columns.items():
            gens: dict[str, dict[float, list[str]]] = {}
            if method == "random":
                draws = [ev.cell(f"random L{label} draw {d + 1}", {la: src[la] for la in cols}, random_key=(cfg.seed, d),
                                 generations=gens if d == 0 else None) for d in range(cfg.random_draws)]
                cell = draws[0]
                out.setdefault(method, {})[label] = _random_json(draws)
            else:
                cell = ev.cell(f"{method} L{label}", {la: src[la] for la in cols}, generations=gens)
                out.setdefault(method, {})[label] = _cell_json(cell)
            examples.setdefault(method, {})[label] = {
                name: {str(s.best_lambda): gens[name].get(s.best_lambda, []) if s.best_lambda is not None else []}
                for name, s in cell.concepts.items()}
    failures = getattr(judge, "failures", [])
    return {"cells": out, "columns": list(columns), "judge": {**judge_info, "failed_attempts": len(failures),
                                                               "failures": failures[:20]},
            "concepts": {n: {"features": q.features, "weights": q.weights, "source": q.source} for n, q in concepts.items()},
            "prompts": prompts, "prompt_format": fmt, "chat_template": chat, "random_draws": cfg.random_draws,
            "lambdas": sorted(set(ev.lambdas)), "unit": cfg.unit,
            "word_alignments": {str(la): a.id for la, a in word.items()},
            "site_norms": {str(k): v for k, v in (norms or {}).items()},
            "unsteered": {name: ev.unsteered(name)[0] for name in concepts}, "examples": examples}
