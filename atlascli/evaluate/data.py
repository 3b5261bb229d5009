"""Held-out data of the evaluations: subject activations and atlas codes on the test split, paired shard by shard,
after checking that none of those sentences was used to fit the alignments."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from atlascli.atlas import Atlas
from atlascli.atlas.build import atlas_dtype
from atlascli.corpus import load_split
from atlascli.errors import InputError
from atlascli.extract import Activations, ExtractConfig, find_covering
from atlascli.pinned import extract_pinned, one_revision
from atlascli.registry import Artifact, Registry

ExtractProgress = Callable[[int, int, int], None]


def _hashes(sentences: list[str]) -> set[bytes]:
    return {hashlib.blake2b(s.strip().encode("utf-8"), digest_size=12).digest() for s in sentences}


def check_disjoint(alignments: list[Artifact], test_dataset: Artifact, split: str, n: int, registry: Registry) -> None:
    """Refuse when test sentences were used to fit any alignment (same dataset and split, or shared sentences)."""
    test_fp = test_dataset.provenance["dataset_fingerprint"]
    test_set: set[bytes] | None = None
    seen: set[tuple[str, str, int]] = set()
    for al in alignments:
        for parent_id in al.parents:
            if not registry.exists(parent_id, "activations"):
                continue
            pp = registry.get(parent_id, "activations").provenance
            key = (pp["dataset"], pp["split"], int(pp["n"]))
            if key in seen:
                continue
            seen.add(key)
            if pp["dataset_fingerprint"] == test_fp and pp["split"] == split:
                raise InputError(f"the test data ({split} split of dataset {test_fp[:12]}) is the data alignment {al.id} "
                                 f"was fitted on ({pp['split']} split of {pp['dataset_fingerprint'][:12]})",
                                 "evaluate on the test split (the default) or refit on the train split")
            if test_set is None:
                test_set = _hashes(load_split(test_dataset, split)[:n])
            fit_sentences = load_split(registry.get(pp["dataset"], "dataset"), pp["split"])[: int(pp["n"])]
            shared = len(test_set & _hashes(fit_sentences))
            if shared:
                raise InputError(f"{shared} test sentences ({split} split of {test_fp[:12]}) were used to fit {al.id} "
                                 f"({pp['split']} split of {pp['dataset_fingerprint'][:12]})",
                                 "evaluate on data disjoint from the fit data")


@dataclass
class TestData:
    """Subject activations per layer and atlas codes, over the first ``n`` sentences of a test split."""

    n: int
    """Sentences used."""
    subject: dict[int, Activations]
    """Layer -> subject activations (may hold more sentences; only the first ``n`` are read)."""
    atlas: Activations
    """Atlas SAE codes."""
    atlas_layer: int
    """Layer of the atlas codes."""
    dataset_fingerprint: str
    """Fingerprint of the test dataset."""

    def paired(self, layer: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        """(sentence index, subject rows [m, ds], atlas codes as scipy CSR [m, dc]) shard by shard."""
        for s, c in zip(self.subject[layer].shards(layer), self.atlas.shards(self.atlas_layer)):
            m = int((s.index < self.n).sum())
            if m == 0:
                break
            if not torch.equal(s.index[:m], c.index[:m]):
                raise InputError("subject and atlas test shards hold different sentences",
                                 "extract both with the same --shard-size")
            yield s.index[:m], s.to_dense()[:m], c.to_scipy()[:m]

    def subject_mean(self, layer: int) -> torch.Tensor:
        """Mean subject activation over the ``n`` sentences (float64)."""
        total: torch.Tensor | None = None
        for _, x, _ in self.paired(layer):
            part = x.double().sum(0)
            total = part if total is None else total + part
        assert total is not None
        return total / self.n

    def atlas_positive_counts(self) -> np.ndarray:
        """How many test sentences activate each atlas feature."""
        counts = np.zeros(self.atlas.widths[self.atlas_layer], dtype=np.int64)
        for shard in self.atlas.shards(self.atlas_layer):
            codes = shard.to_scipy()[: int((shard.index < self.n).sum())]
            counts += np.bincount(codes.indices[codes.data > 0], minlength=counts.size)
        return counts


def load_test_data(alignments: list[Artifact], atlas: Atlas, limit: int, registry: Registry,
                   progress: Callable[[str], ExtractProgress | None] | None = None, device: str = "cpu",
                   dtype: str = "float32", trust_remote_code: bool = False) -> TestData:
    """Find (or extract once) the held-out activations the evaluations need; refuse overlap with the fit data."""
    if not alignments:
        raise InputError("no alignments to evaluate", "fit some with `atlas fit --layers ... --method all`")
    p0 = alignments[0].provenance
    revision = one_revision(alignments)  # one subject model: alignments fitted on other weights cannot share it
    dataset = registry.get(p0["dataset"], "dataset")
    n = min(limit, int(dataset.provenance["n_test"]))
    if n <= 0:
        raise InputError(f"the test split of {dataset.id} is empty", "prepare a dataset with a test split")
    check_disjoint(alignments, dataset, "test", n, registry)
    fp = dataset.provenance["dataset_fingerprint"]
    layers = sorted({int(a.provenance["layer"]) for a in alignments})
    subject: dict[int, Activations] = {}
    missing = []
    for layer in layers:
        art = find_covering(registry, p0["subject"], fp, "test", layer, n, site=p0["site"], revision=revision)
        if art is None:
            missing.append(layer)
        else:
            subject[layer] = Activations(art)
    if missing:
        art = extract_pinned(ExtractConfig(model=p0["subject"], layers=tuple(missing), site=p0["site"],
                                           dataset=dataset.id, split="test", limit=n, device=device, dtype=dtype,
                                           trust_remote_code=trust_remote_code),
                             revision, f"alignment {alignments[0].id}", registry,
                             progress("subject test activations") if progress else None)
        subject.update({layer: Activations(art) for layer in missing})
    ap = atlas.artifact.provenance
    a_layer = int(ap["layer"])
    codes = find_covering(registry, ap["foundation"], fp, "test", a_layer, n, sae=atlas.weights_id)
    if codes is None:
        codes = extract_pinned(ExtractConfig(model=ap["foundation"], layers=(a_layer,), site=ap["site"],
                                             dataset=dataset.id, split="test", sae=atlas.weights_id, limit=n,
                                             device=device, dtype=atlas_dtype(ap), trust_remote_code=trust_remote_code),
                               ap.get("revision"), f"atlas {atlas.id}", registry,
                               progress("atlas test codes") if progress else None)
    return TestData(n, subject, Activations(codes), a_layer, fp)
