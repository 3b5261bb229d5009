"""Steering faithfulness (paper 4.4, eq. 5): concept queries x seed prompts x lambdas, rated by a judge, plus the mean
change of the concept's atlas activation in the generations (Delta a), against random directions of the same norm:
a fresh one per concept, per layer and per draw (``random_key``), never one direction shared by every concept."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from atlascli.atlas import Atlas
from atlascli.evaluate.randomdirs import random_like
from atlascli.judges import Judge
from atlascli.metrics import best_lambda, concept_rate, faithfulness
from atlascli.registry import Artifact
from atlascli.search import ConceptQuery, subject_similarity
from atlascli.steering import GenerationConfig, absolute_lambdas, generate, steer_sweep

SEED_PROMPTS = ["Once upon a time", "I just started", "The candidate", "Section 1", "Documents", "The capital of",
                "Let me tell you a joke", " ", "French cuisine", "do_sample=False", "Would you like to know",
                "It is widely used", "\\scalebox{0.85}{$\\mathcal{L} =", "The team struggled", "Hallo, woher denn",
                "When you say"]
"""The paper's 16 seed prompts (A.7)."""

DEFAULT_STEER_CONCEPTS = ["dogs and cats", "food and cooking", "music", "cars and driving", "weather",
                          "diseases and medicine", "sports and games", "computers and software", "London",
                          "plants and gardening"]
"""Concepts of the steering evaluation when the atlas has no named concepts (text queries over its labels)."""

PAPER_LAMBDAS = [-50.0, -10.0, -1.0, 0.0, 1.0, 10.0, 50.0]
"""The paper's steering factors."""

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ConceptScore:
    """One concept in one (method, layers) cell."""

    rates: dict[float, float]
    """lambda -> share of generations judged to express the concept."""
    faithfulness: float
    """Eq. 5 (percent)."""
    best_lambda: float | None
    """The lambda attaining it."""
    delta_a: float
    """Mean change of the concept's atlas activation at that lambda vs unsteered."""
    unrated: int
    """Generations the judge could not rate (excluded, not scored 0)."""


@dataclass(frozen=True)
class CellResult:
    """Mean over concepts of one (method, layers) cell."""

    faithfulness: float
    """Mean eq. 5 over concepts with a defined score (percent)."""
    delta_a: float
    """Mean Delta a over those concepts."""
    unrated: int
    """Unrated generations in the cell."""
    concepts: dict[str, ConceptScore] = field(default_factory=dict)
    """Per concept."""


def concept_activation(codes: torch.Tensor, query: ConceptQuery) -> np.ndarray:
    """q_hat . code per generation: how strongly the concept's atlas features fire."""
    w = torch.tensor(query.weights, dtype=torch.float64)
    return (codes[:, query.features].double() @ (w / w.norm().clamp_min(1e-30))).numpy()


def _codes(texts: list[str], atlas: Atlas, foundation: Any) -> torch.Tensor:
    from atlascli.search import atlas_codes

    out = torch.zeros(len(texts), atlas.width)
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if keep:
        out[keep] = atlas_codes([texts[i] for i in keep], atlas, foundation)
    return out


@dataclass
class SteeringEval:
    """Everything fixed across the cells of one steering evaluation."""

    lm: Any
    """Loaded subject model."""
    site: str
    """Steered site (that of the alignments)."""
    concepts: dict[str, ConceptQuery]
    """Concept name (what the judge sees) -> query."""
    prompts: list[str]
    """Seed prompts."""
    lambdas: list[float]
    """Steering factors (0 is added when missing)."""
    gen: GenerationConfig
    """Generation settings."""
    judge: Judge
    """Rates generations."""
    atlas: Atlas
    """For Delta a."""
    foundation: Any
    """Loaded foundation model (for Delta a)."""
    norms: dict[int, float] | None = None
    """Each layer's median token norm on the prompts (needed by the ``norm`` unit)."""
    unit: str = "absolute"
    """Unit of the lambdas (:data:`atlascli.steering.LAMBDA_UNITS`): the paper's ``absolute`` or `atlas steer`'s
    ``norm``."""
    progress: Progress | None = None
    """(stage, done, total) callback."""
    _base: dict[str, tuple[list[str], list[int | None], np.ndarray]] = field(default_factory=dict)
    _joined: dict[tuple[str, str], torch.Tensor | None] = field(default_factory=dict)

    def unsteered(self, name: str) -> tuple[list[str], list[int | None], np.ndarray]:
        """Generations, ratings and concept activations without steering (shared by every cell)."""
        if name not in self._base:
            texts = generate(self.lm, self.prompts, self.gen)
            acts = concept_activation(_codes(texts, self.atlas, self.foundation), self.concepts[name])
            self._base[name] = (texts, self.judge.rate(name, texts), acts)
        return self._base[name]

    def vectors(self, name: str, alignments: dict[int, Artifact]) -> dict[int, torch.Tensor]:
        """s_c per layer for one concept; at a word-aligned layer along the query `atlas steer` uses there (the text
        query joined with its words in the examples, :func:`atlascli.wordfit.hybrid_query`), when it has one."""
        from atlascli.sites import is_word_pooled
        from atlascli.translate import StoredTranslation
        from atlascli.wordfit import hybrid_query

        out = {}
        for layer, al in alignments.items():
            if is_word_pooled(al) and (name, al.id) not in self._joined:
                joined = hybrid_query(self.concepts[name], self.atlas, [al], flm=self.foundation)
                self._joined[name, al.id] = None if joined is None else joined[0]
            q = self._joined.get((name, al.id))
            out[layer] = (StoredTranslation.from_artifact(al).similarity_dense(q) if q is not None
                          else subject_similarity(self.concepts[name], al))
        return out

    def cell(self, label: str, alignments: dict[int, Artifact], random_key: tuple[object, ...] | None = None,
             generations: dict[str, dict[float, list[str]]] | None = None) -> CellResult:
        """Score one row/column cell; ``random_key`` (e.g. (seed, draw)) swaps s_c for same-norm random directions,
        drawn afresh for every concept and layer."""
        lams = sorted(set(self.lambdas) - {0.0})
        scores: dict[str, ConceptScore] = {}
        total = len(self.concepts) * len(lams)
        done = 0
        for name in self.concepts:
            base_texts, base_ratings, base_acts = self.unsteered(name)
            vecs = self.vectors(name, alignments)
            if random_key is not None:
                vecs = random_like(vecs, "steering", *random_key, name)
            base_rate, _, unrated = concept_rate(base_ratings)
            rates = {0.0: base_rate}
            texts_by_lam: dict[float, list[str]] = {0.0: base_texts}
            per_unit = absolute_lambdas(vecs, 1.0, self.unit, self.norms, self.site)  # both units are linear in lambda
            steered = steer_sweep(self.lm, self.site, vecs, lams, self.prompts, self.gen, per_unit).generations
            for lam in lams:
                texts = texts_by_lam[lam] = steered[lam]
                rate, _, miss = concept_rate(self.judge.rate(name, texts))
                rates[lam] = rate
                unrated += miss
                done += 1
                if self.progress:
                    self.progress(f"steering {label}", done, total)
            best = best_lambda(rates)
            delta = math.nan
            if best is not None:
                acts = concept_activation(_codes(texts_by_lam[best], self.atlas, self.foundation), self.concepts[name])
                delta = float((acts - base_acts).mean())
            scores[name] = ConceptScore(rates, faithfulness(rates), best, delta, unrated)
            if generations is not None:
                generations[name] = texts_by_lam
        f_vals = [s.faithfulness for s in scores.values() if not math.isnan(s.faithfulness)]
        d_vals = [s.delta_a for s in scores.values() if not math.isnan(s.delta_a)]
        return CellResult(float(np.mean(f_vals)) if f_vals else math.nan, float(np.mean(d_vals)) if d_vals else math.nan,
                          sum(s.unrated for s in scores.values()), scores)
