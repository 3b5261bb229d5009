"""The frozen result of a fit and its storage layout.

A translation T (ds x dc) is stored transposed, ``Tt`` = T^T (dc x ds), with the row norms of T,
so that eq. 3 for a query on a few atlas features reads only those features' rows: a search
against a 14336 x 16384 translation touches kilobytes, not a gigabyte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from atlascli.errors import InputError
from atlascli.registry.files import atomic_save_tensors

METHODS = ("procrustes", "cov", "corr", "linreg", "semlens")
FILE = "translation.safetensors"


@dataclass(frozen=True)
class Translation:
    """A translation from subject features to Concept Atlas features."""

    method: str
    """One of ``METHODS``."""
    T: torch.Tensor
    """[ds, dc] float32; row k expresses subject feature k in atlas features."""
    info: dict[str, Any] = field(default_factory=dict)
    """Method details: normalisation, ridge, k, N, dead atlas features..."""

    @property
    def shape(self) -> tuple[int, int]:
        """(ds, dc)."""
        return (int(self.T.shape[0]), int(self.T.shape[1]))

    def save(self, path: Path) -> None:
        """Write ``Tt`` (dc x ds) and the row norms of T atomically."""
        t = self.T.float()
        atomic_save_tensors(path, {"Tt": t.T.contiguous(), "row_norms": t.norm(dim=1).contiguous()},
                            metadata={"method": self.method, "ds": str(t.shape[0]), "dc": str(t.shape[1])})

    def similarity(self, q: torch.Tensor) -> torch.Tensor:
        """Eq. 3 on the in-memory matrix: s = T_hat q / |q|."""
        return similarity_dense(self.T, q)


def similarity_dense(T: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """s = T_hat q / |q| with T_hat the row-normalised T (eq. 3)."""
    qn = q.double().norm()
    if qn == 0:
        raise InputError("the concept query is all zeros", "pick features with non-zero weight")
    norms = T.double().norm(dim=1).clamp_min(1e-30)
    return ((T.double() @ q.double()) / norms / qn).float()


class StoredTranslation:
    """Memory-mapped stored translation: reads only the atlas rows a query needs."""

    @classmethod
    def from_artifact(cls, artifact: Any) -> StoredTranslation:
        """The translation of an ``alignment`` artifact, checked against its manifest first (hash cached by
        size and times: a warm load only stats the file)."""
        artifact.verify_cached(["translation.safetensors"])
        return cls(artifact.file("translation.safetensors"))

    def __init__(self, path: Path) -> None:
        self.path = path
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            self.row_norms = f.get_tensor("row_norms").double()
        self.method = meta.get("method", "")
        self.ds, self.dc = int(meta["ds"]), int(meta["dc"])

    def rows(self, features: list[int]) -> torch.Tensor:
        """Columns of T for the given atlas features, as [len(features), ds]."""
        bad = [f for f in features if not 0 <= f < self.dc]
        if bad:
            raise InputError(f"atlas feature(s) {bad[:5]} out of range", f"valid features are 0..{self.dc - 1}")
        with safe_open(str(self.path), framework="pt") as f:
            sl = f.get_slice("Tt")
            return torch.stack([sl[int(j)] for j in features]) if features else torch.empty(0, self.ds)

    def similarity(self, features: list[int], weights: list[float]) -> torch.Tensor:
        """Eq. 3 for a sparse query sum_j w_j e_j, touching only those rows."""
        w = torch.tensor(weights, dtype=torch.float64)
        qn = w.norm()
        if qn == 0 or not features:
            raise InputError("the concept query is all zeros", "pick features with non-zero weight")
        proj = (self.rows(features).double() * w[:, None]).sum(0)
        return (proj / self.row_norms.clamp_min(1e-30) / qn).float()

    def similarity_dense(self, q: torch.Tensor) -> torch.Tensor:
        """Eq. 3 for a dense query (reads the rows of its non-zero entries only)."""
        if q.shape[-1] != self.dc:
            raise InputError(f"query has {q.shape[-1]} atlas features, this translation {self.dc}",
                             "the query and alignment must use the same atlas")
        nz = torch.nonzero(q).flatten().tolist()
        return self.similarity(nz, q[nz].double().tolist())

    def load(self) -> torch.Tensor:
        """The full T as [ds, dc] float32."""
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor("Tt").T.contiguous()


def as_numpy64(x: Any) -> Any:
    """float64 numpy (dense) or scipy CSR (sparse) view of a batch."""
    import scipy.sparse as sp

    if sp.issparse(x):
        return x.tocsr().astype(np.float64)
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)
