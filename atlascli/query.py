"""A concept as weights over atlas features (no torch at import: listing concepts stays instant)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ConceptQuery:
    """A concept as weights over atlas features."""

    features: list[int]
    """Atlas feature indices."""
    weights: list[float]
    """Their weights (same order)."""
    source: str
    """How it was made: features, text (labels), text (examples), examples, contrast, concept."""
    matches: list[dict[str, Any]] = field(default_factory=list)
    """The features the query leans on most, with label, coherence and weight."""
    examples: list[str] = field(default_factory=list)
    """For text resolved through examples: the labelling sentences found for the query."""
    note: str | None = None
    """What the user should know about how well the atlas covers the query (e.g. words no feature is labelled
    with), or None."""
    text: str | None = None
    """For a text query: the text (a word-aligned steering query also reads its words in the examples)."""

    def dense(self, width: int) -> torch.Tensor:
        """The query as a dense vector over ``width`` atlas features."""
        import torch

        q = torch.zeros(width)
        q[self.features] = torch.tensor(self.weights, dtype=torch.float32)
        return q
