"""Translation methods between a subject latent space and the Concept Atlas (paper 3.3, A.3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from atlascli.errors import InputError
from atlascli.translate.base import METHODS, StoredTranslation, Translation, similarity_dense
from atlascli.translate.moments import (
    CorrelationFitter,
    CovarianceFitter,
    LinRegFitter,
    Moments,
    ProcrustesFitter,
)
from atlascli.translate.semlens import SemanticLensFitter


def parse_methods(text: str) -> list[str]:
    """``"all"`` or a comma list -> method names, with a clear error for unknown ones."""
    names = list(METHODS) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise InputError(f"unknown method {', '.join(bad) or text!r}", f"use one of {', '.join(METHODS)} or all")
    return names


def check_method(method: str) -> str:
    """``method`` when it is one translation method; else a clear error."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
    return method


class MultiFitter:
    """Fits several methods in one pass, sharing the moment statistics between them."""

    def __init__(self, methods: list[str], ridge: float = 0.0, k: int = 20) -> None:
        need = set(methods)
        shared = Moments(gram="linreg" in need, normalised="procrustes" in need,
                         raw=bool(need & {"cov", "corr", "linreg"}))
        self.fitters: dict[str, Any] = {}
        for m in methods:
            if m == "procrustes":
                self.fitters[m] = ProcrustesFitter(shared)
            elif m == "cov":
                self.fitters[m] = CovarianceFitter(shared)
            elif m == "corr":
                self.fitters[m] = CorrelationFitter(shared)
            elif m == "linreg":
                self.fitters[m] = LinRegFitter(shared, ridge=ridge)
            elif m == "semlens":
                self.fitters[m] = SemanticLensFitter(k=k)
        self._moments = shared if need - {"semlens"} else None
        self._semlens = self.fitters.get("semlens")

    def update(self, subject: Any, atlas: Any, start: int | None = None) -> MultiFitter:
        """Add one paired batch to every method (``start``: the sample index of its first row, default the rows
        seen so far)."""
        if self._moments is not None:
            self._moments.update(subject, atlas)
        if self._semlens is not None:
            self._semlens.update(subject, atlas, start)
        return self

    def reduce(self, sum_f64: Callable[[Any], Any], gather: Callable[[Any], list[Any]], ds: int, dc: int) -> None:
        """Combine what every process of a distributed fit accumulated (disjoint batches): moment sums are summed
        in float64 (``sum_f64``, an all_reduce), Semantic Lens merges the per-process top-k (``gather``, an
        all_gather of objects). Afterwards :meth:`results` equals a one-process fit over every batch (up to the
        order of float64 additions)."""
        if self._moments is not None:
            self._moments.reduce(sum_f64, ds, dc)
        if self._semlens is not None:
            self._semlens.reduce(gather)

    def results(self) -> dict[str, Translation]:
        """Frozen translations by method."""
        return {m: f.result() for m, f in self.fitters.items()}


__all__ = [
    "METHODS", "CorrelationFitter", "CovarianceFitter", "LinRegFitter", "Moments", "MultiFitter",
    "ProcrustesFitter", "SemanticLensFitter", "StoredTranslation", "Translation", "parse_methods",
    "similarity_dense",
]
