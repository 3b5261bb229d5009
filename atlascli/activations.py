"""Reading activations artifacts: shards of sentence-pooled activations or SAE codes, checksum-verified as they
are read, and the registry lookups that find activations covering a request."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlascli.errors import CorruptArtifactError, InputError
from atlascli.registry import Artifact, Registry
from atlascli.registry.files import load_tensors


def shard_name(k: int) -> str:
    """File name of shard ``k``."""
    return f"shard-{k:05d}.safetensors"


def check_coverage(folder: Path, n_shards: int, n: int) -> None:
    """Raise unless ``folder`` holds exactly ``n_shards`` readable shards whose indices are 0..n-1 in order."""
    from safetensors import safe_open

    names = sorted(p.name for p in folder.glob("shard-*.safetensors"))
    if names != [shard_name(k) for k in range(n_shards)]:
        raise CorruptArtifactError(f"staged activations hold {len(names)} shards, expected {n_shards}",
                                   "run the same command again to finish them")
    seen = 0
    for name in names:
        try:
            with safe_open(str(folder / name), framework="pt") as f:
                index = f.get_tensor("index")
        except Exception as exc:  # truncated or foreign file
            raise CorruptArtifactError(f"staged shard {name} is unreadable ({exc.__class__.__name__})",
                                       "run the same command again to redo it") from exc
        if not torch.equal(index, torch.arange(seen, seen + len(index), dtype=index.dtype)):
            raise CorruptArtifactError(f"staged shard {name} does not cover sentences {seen}.. in order",
                                       "run the same command again to redo it")
        seen += len(index)
    if seen != n:
        raise CorruptArtifactError(f"staged shards cover {seen} sentences, expected {n}",
                                   "run the same command again to finish them")


def find_covering(registry: Registry, model: str, dataset_fp: str, split: str, layer: int, n: int,
                  site: str | None = None, revision: str | None = None, sae: str | None = None) -> Artifact | None:
    """The newest activations of ``model`` holding ``layer`` for at least the first ``n`` sentences of a split:
    dense activations when ``sae`` is None, else the codes of that atlas/SAE id."""
    match: dict[str, Any] = {"model": model, "dataset_fingerprint": dataset_fp, "split": split}
    if site is not None:
        match["site"] = site
    if revision is not None:
        match["revision"] = revision
    art: Artifact
    for art in reversed(registry.find("activations", **match)):
        p = art.provenance
        if (p.get("sae") or {}).get("sae") == sae and layer in p["layers"] and int(p["n"]) >= n:
            return art
    return None

@dataclass(frozen=True)
class Shard:
    """One shard of one layer: sentence indices and their pooled activations."""

    index: torch.Tensor
    """Sentence indices into the split (int64)."""
    dense: torch.Tensor | None
    """Dense activations [n, width] (None when sparse)."""
    csr: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    """Sparse codes as CSR (indptr, indices, values) (None when dense)."""
    width: int
    """Number of features."""
    peak_tokens: np.ndarray | None = None
    """For SAE codes: the token id where each stored code peaked (aligned with the CSR values)."""
    argmax: torch.Tensor | None = None
    """For dense activations: the token position where each feature peaked, [n, width] (None in artifacts
    extracted before positions were kept)."""

    def head(self, k: int) -> Shard:
        """The shard's first ``k`` rows."""
        if k >= len(self.index):
            return self
        csr, peak = None, None
        if self.csr is not None:
            indptr, indices, values = self.csr
            end = int(indptr[k])
            csr = (indptr[: k + 1], indices[:end], values[:end])
            peak = None if self.peak_tokens is None else self.peak_tokens[:end]
        return Shard(self.index[:k], None if self.dense is None else self.dense[:k], csr, self.width, peak,
                     None if self.argmax is None else self.argmax[:k])

    def to_dense(self) -> torch.Tensor:
        """Dense [n, width] float32."""
        if self.dense is not None:
            return self.dense
        assert self.csr is not None
        indptr, indices, values = self.csr
        out = torch.zeros(len(indptr) - 1, self.width)
        rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        out[torch.from_numpy(rows), torch.from_numpy(indices.astype(np.int64))] = torch.from_numpy(values)
        return out

    def to_scipy(self) -> Any:
        """scipy.sparse CSR matrix (float64)."""
        import scipy.sparse as sp

        if self.csr is None:
            assert self.dense is not None
            return sp.csr_matrix(self.dense.double().numpy())
        indptr, indices, values = self.csr
        return sp.csr_matrix((values.astype(np.float64), indices, indptr), shape=(len(indptr) - 1, self.width))


class Activations:
    """Reader of an activations artifact; every shard is checksum-verified as it is read."""

    def __init__(self, artifact: Artifact, n: int | None = None) -> None:
        """``n``: read only the first ``n`` sentences (the rows of an extraction with ``--limit n`` over the same
        split and settings: a longer extraction serves a shorter one)."""
        if artifact.kind != "activations":
            raise InputError(f"{artifact.id} is a {artifact.kind}, not activations", "pick an activations artifact")
        self.artifact = artifact
        total = int(artifact.provenance["n"])
        self.n: int = total if n is None else n
        if not 1 <= self.n <= total:
            raise InputError(f"{artifact.id} holds {total} sentences, not the first {n}", "ask for at most that many")
        self.sparse: bool = bool(artifact.provenance.get("sparse"))
        self.layers: list[int] = [int(x) for x in artifact.provenance["layers"]]
        self.widths: dict[int, int] = {int(k): int(v) for k, v in artifact.meta["widths"].items()}
        self.shard_names = sorted(n for n in artifact.manifest["files"] if n.startswith("shard-"))
        if self.n < total:  # shards hold shard_size consecutive sentences (check_coverage): keep those reaching n
            size = int(artifact.provenance["shard_size"])
            self.shard_names = self.shard_names[: -(-self.n // size)]

    def _layer(self, layer: int) -> int:
        if layer not in self.layers:
            raise InputError(f"{self.artifact.id} has no layer {layer}", f"it has layers {self.layers}")
        return layer

    def shards(self, layer: int) -> Iterator[Shard]:
        """Stream the shards of one layer, verifying each file's checksum."""
        self._layer(layer)
        for name in self.shard_names:
            self.artifact.verify([name])
            t = load_tensors(self.artifact.path / name)
            if self.sparse:
                csr = (t[f"L{layer}.indptr"].numpy(), t[f"L{layer}.indices"].numpy(), t[f"L{layer}.values"].numpy())
                peak = t.get(f"L{layer}.peak_tokens")
                shard = Shard(t["index"], None, csr, self.widths[layer], None if peak is None else peak.numpy())
            else:
                shard = Shard(t["index"], t[f"L{layer}"], None, self.widths[layer], argmax=t.get(f"L{layer}.argmax"))
            yield shard.head(int((shard.index < self.n).sum()))

    def dense(self, layer: int) -> torch.Tensor:
        """All rows of one layer as a dense [N, width] float32 tensor, in split order."""
        out = torch.empty(self.n, self.widths[self._layer(layer)])
        for shard in self.shards(layer):
            out[shard.index] = shard.to_dense()
        return out
