"""Semantic Lens (eq. 9): each subject feature is the mean atlas code of its top-k samples.

Streaming: a running top-k (value, sample) per subject feature, and the atlas rows of only the
samples currently in some top-k set (at most ds * k rows, independent of N).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from atlascli.errors import InputError
from atlascli.translate.base import Translation, as_numpy64
from atlascli.translate.moments import _check


class SemanticLensFitter:
    """Eq. 9 with a streaming top-k per subject feature."""

    method = "semlens"

    def __init__(self, k: int = 20) -> None:
        if k < 1:
            raise InputError(f"semlens k must be >= 1, got {k}", "e.g. --k 20")
        self.k = k
        self.n = 0
        self.top_vals: np.ndarray | None = None
        self.top_ids: np.ndarray | None = None
        self.rows: dict[int, Any] = {}
        self.dc: int | None = None

    def update(self, subject: Any, atlas: Any, start: int | None = None) -> SemanticLensFitter:
        """Add one paired batch; returns self. ``start`` is the sample index of its first row (default: the rows
        seen so far, i.e. batches in order; a rank of a distributed fit passes the global index)."""
        s, c = as_numpy64(subject), as_numpy64(atlas)
        _check(s, c)
        b, ds = s.shape
        if self.top_vals is None:
            self.top_vals = np.full((ds, self.k), -np.inf)
            self.top_ids = np.full((ds, self.k), -1, dtype=np.int64)
            self.dc = c.shape[1]
        assert self.top_ids is not None
        if ds != self.top_vals.shape[0] or c.shape[1] != self.dc:
            raise InputError("batch widths differ from earlier batches", "use one subject layer and one atlas")
        first = self.n if start is None else start
        ids = np.arange(first, first + b)
        vals = np.concatenate([self.top_vals, s.T], axis=1)
        cand = np.concatenate([self.top_ids, np.broadcast_to(ids, (ds, b))], axis=1)
        # top-k by value, ties broken by the earlier sample, so batch order does not matter
        order = np.lexsort((cand, -vals), axis=1)[:, : self.k]
        self.top_vals = np.take_along_axis(vals, order, 1)
        self.top_ids = np.take_along_axis(cand, order, 1)
        keep = set(np.unique(self.top_ids).tolist())
        c_csr = c.tocsr() if sp.issparse(c) else None
        for j in keep:
            if first <= j < first + b:
                self.rows[j] = c_csr[j - first] if c_csr is not None else c[j - first].copy()
        self.rows = {j: r for j, r in self.rows.items() if j in keep}
        self.n += b
        return self

    def reduce(self, gather: Callable[[Any], list[Any]]) -> None:
        """Merge the top-k of every process of a distributed fit (each fed disjoint rows with global ``start``
        indices): the top-k of the union under the same order (value, then earlier sample), so the result is exactly
        what one process streaming every row gets. ``gather(obj)`` returns every process's ``obj``; the atlas rows
        travel only for the samples in the merged top-k."""
        tops = gather({"n": self.n, "dc": self.dc, "vals": self.top_vals, "ids": self.top_ids})
        self.n = sum(int(t["n"]) for t in tops)
        live = [t for t in tops if t["vals"] is not None]
        if not live:  # no process saw a row (every process sees the same tops, so all return here)
            return
        vals = np.concatenate([t["vals"] for t in live], axis=1)
        cand = np.concatenate([t["ids"] for t in live], axis=1)
        order = np.lexsort((cand, -vals), axis=1)[:, : self.k]
        self.top_vals = np.take_along_axis(vals, order, 1)
        self.top_ids = np.take_along_axis(cand, order, 1)
        self.dc = live[0]["dc"]
        keep = set(np.unique(self.top_ids).tolist())
        rows: dict[int, Any] = {}
        for part in gather({j: r for j, r in self.rows.items() if j in keep}):
            rows.update(part)
        self.rows = rows

    def fit(self, subject: Any, atlas: Any) -> Translation:
        """One-shot fit."""
        return self.update(subject, atlas).result()

    def result(self) -> Translation:
        """The frozen translation."""
        if self.top_ids is None or self.n < self.k:
            raise InputError(f"semlens needs at least k={self.k} samples, got {self.n}", "lower --k or add data")
        assert self.dc is not None
        T = np.zeros((self.top_ids.shape[0], self.dc))
        for i, ids in enumerate(self.top_ids):
            for j in ids:
                r = self.rows[int(j)]
                if sp.issparse(r):
                    T[i, r.indices] += r.data
                else:
                    T[i] += r
        T /= self.k
        info = {"n": self.n, "k": self.k, "cached_rows": len(self.rows)}
        return Translation(self.method, torch.from_numpy(T).float(), info)
