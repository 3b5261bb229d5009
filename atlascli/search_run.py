"""Search with example sentences: finds (or extracts once) the subject's test-split activations."""

from __future__ import annotations

from atlascli.corpus import load_split
from atlascli.extract import Activations, ExtractConfig, find_covering
from atlascli.pinned import extract_pinned
from atlascli.registry import Artifact, Registry
from atlascli.samples import check_alignment_metric
from atlascli.search import ConceptQuery, SearchResult, search

DEFAULT_TEST_LIMIT = 5000
"""Test sentences extracted for examples when none are in the registry yet."""
MIN_REUSED_TEST = 1000
"""With no limit given, an existing test extraction of at least this many sentences is used as it is."""


def test_activations(alignment: Artifact, limit: int | None, registry: Registry, device: str = "cpu",
                     trust_remote_code: bool = False) -> tuple[Activations, list[str]]:
    """Subject activations on the test split at the alignment's layer (reused; extracted when missing, on ``device``,
    from the weights the alignment was fitted on). With ``limit`` None: the newest extraction of at least
    :data:`MIN_REUSED_TEST` sentences already there (e.g. the evaluation's), else :data:`DEFAULT_TEST_LIMIT`."""
    p = alignment.provenance
    dataset = registry.get(p["dataset"], "dataset")
    if limit is None:
        some = find_covering(registry, p["subject"], p["dataset_fingerprint"], "test", int(p["layer"]),
                             min(MIN_REUSED_TEST, int(dataset.provenance["n_test"])), site=p["site"],
                             revision=p["revision"])
        if some is not None:
            return Activations(some), load_split(dataset, "test")
        limit = DEFAULT_TEST_LIMIT
    n = min(limit, dataset.provenance["n_test"])
    art = find_covering(registry, p["subject"], p["dataset_fingerprint"], "test", int(p["layer"]), n, site=p["site"],
                        revision=p["revision"])
    if art is None:
        art = extract_pinned(ExtractConfig(model=p["subject"], layers=(int(p["layer"]),), site=p["site"],
                                           dataset=dataset.id, split="test", limit=limit, device=device,
                                           trust_remote_code=trust_remote_code),
                             p.get("revision"), f"alignment {alignment.id}", registry)
    return Activations(art), load_split(dataset, "test")


def run_search(query: ConceptQuery, alignment: Artifact, top: int, samples: int, test_limit: int | None,
               registry: Registry, n_aligned: int = 5, aligned_metric: str = "standardised", device: str = "cpu",
               trust_remote_code: bool = False) -> SearchResult:
    """:func:`atlascli.search.search` with test sentences attached (per feature, and along s); test activations
    missing from the registry are extracted once on ``device``."""
    check_alignment_metric(aligned_metric)  # before any extraction
    need = samples > 0 or n_aligned > 0
    acts, sentences = (test_activations(alignment, test_limit, registry, device, trust_remote_code) if need
                       else (None, None))
    return search(query, alignment, top, samples, acts, sentences, n_aligned=n_aligned, aligned_metric=aligned_metric)
