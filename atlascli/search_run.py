"""Search with example sentences: finds (or extracts once) the subject's test-split activations."""

from __future__ import annotations

from atlascli.corpus import load_split
from atlascli.extract import Activations, ExtractConfig, extract, find_covering
from atlascli.registry import Artifact, Registry
from atlascli.search import ConceptQuery, SearchResult, search


def test_activations(alignment: Artifact, limit: int, registry: Registry) -> tuple[Activations, list[str]]:
    """Subject activations on the test split at the alignment's layer (reused; extracted when missing)."""
    p = alignment.provenance
    dataset = registry.get(p["dataset"], "dataset")
    n = min(limit, dataset.provenance["n_test"])
    art = find_covering(registry, p["subject"], p["dataset_fingerprint"], "test", int(p["layer"]), n, site=p["site"],
                        revision=p["revision"])
    if art is None:
        art = extract(ExtractConfig(model=p["subject"], layers=(int(p["layer"]),), site=p["site"], dataset=dataset.id,
                                    split="test", limit=limit), registry)
    return Activations(art), load_split(dataset, "test")


def run_search(query: ConceptQuery, alignment: Artifact, top: int, samples: int, test_limit: int,
               registry: Registry, n_aligned: int = 5) -> SearchResult:
    """:func:`atlascli.search.search` with test sentences attached (per feature, and along s)."""
    need = samples > 0 or n_aligned > 0
    acts, sentences = test_activations(alignment, test_limit, registry) if need else (None, None)
    return search(query, alignment, top, samples, acts, sentences, n_aligned=n_aligned)
