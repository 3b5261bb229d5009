"""Named concepts: a concept query saved under a name for one atlas (``concepts`` artifacts), plus the paper's
built-in Gemma Scope 16k layer-20 content: Table 8 (steering evaluation), Table 6 (qualitative steering, with its
modification factors as default lambdas) and the 100 identification features of A.6.1."""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import lru_cache
from importlib import resources
from typing import Any

from atlascli.atlas.store import Atlas
from atlascli.errors import InputError
from atlascli.query import ConceptQuery
from atlascli.registry import Artifact, Registry, slug
from atlascli.registry.files import atomic_write_json, read_json

PAPER_PRESET = "gemma-scope-2b-16k-l20"
"""The atlas preset the paper's concepts and features belong to."""


@lru_cache(maxsize=1)
def paper_data() -> dict[str, Any]:
    """``atlascli/data/paper_concepts.json``."""
    return json.loads(resources.files("atlascli.data").joinpath("paper_concepts.json").read_text())


def is_paper_atlas(atlas: Atlas) -> bool:
    """Whether ``atlas`` is the Gemma Scope 2B 16k layer-20 SAE (imported from the sae-lens release or the preset)."""
    match = paper_data()["atlas_match"]
    p = atlas.artifact.provenance
    same_sae = p.get("sae") == match["sae"] or p.get("preset") == match["preset"]
    return bool(same_sae and atlas.width == match["width"])


def paper_atlas_error(what: str, atlas: Atlas) -> InputError:
    """The refusal for paper content on another atlas: which atlas is needed and how to get it."""
    p = atlas.artifact.provenance
    return InputError(f"{what} belong(s) to the paper's Gemma Scope 16k layer-20 atlas (Gemma-2-2B, "
                      f"{paper_data()['atlas_match']['sae']}, 16,384 features), not to {atlas.id} "
                      f"({p.get('foundation')} layer {p.get('layer')}, {atlas.width} features)",
                      f"import it with `atlas atlas import-preset {PAPER_PRESET}` (online once) and pass "
                      f"--atlas {PAPER_PRESET}")


def table6() -> dict[str, dict[str, Any]]:
    """Table 6: concept -> {features, lambda}."""
    return {k: {"features": list(v["features"]), "lambda": float(v["lambda"])} for k, v in paper_data()["table6"].items()}


def paper_features(atlas: Atlas) -> list[int]:
    """The 100 identification features of A.6.1 (refused, with the way out, on any other atlas)."""
    if not is_paper_atlas(atlas):
        raise paper_atlas_error("the A.6.1 identification features (--features paper)", atlas)
    return list(paper_data()["identification_features"])


def _all_paper_concepts() -> dict[str, tuple[list[int], str]]:
    out = {k: (list(v), "paper Table 8") for k, v in paper_data()["concepts"].items()}
    for k, v in table6().items():
        out[k] = (v["features"], "paper Table 6" if k not in out else "paper Tables 6 and 8")
    return out


def builtin_concepts(atlas: Atlas) -> dict[str, list[int]]:
    """The paper's concepts (Tables 8 and 6) when ``atlas`` is the Gemma Scope 2B 16k layer-20 SAE, else none."""
    if not is_paper_atlas(atlas):
        return {}
    return {k: v[0] for k, v in _all_paper_concepts().items()}


def builtin_lambda(name: str, atlas: Atlas) -> float | None:
    """The paper's modification factor (Table 6) of a built-in concept on the paper's atlas, else None.

    ``london`` -> 35, ``dogs and cats`` -> 50, ``reddit comments`` -> 50 (case-insensitive; ``paper:`` prefix ok)."""
    key = name.strip().lower().removeprefix("paper:").strip()
    entry = table6().get(key)
    return entry["lambda"] if entry is not None and is_paper_atlas(atlas) else None


def paper_concept(name: str, atlas: Atlas) -> ConceptQuery:
    """A built-in concept by name (``paper:london`` or ``london``), refused clearly on another atlas."""
    key = name.strip().lower().removeprefix("paper:").strip()
    known = _all_paper_concepts()
    if key not in known:
        raise InputError(f"{name!r} is not one of the paper's concepts", f"known: {', '.join(sorted(known))}")
    if not is_paper_atlas(atlas):
        raise paper_atlas_error(f"the paper's concept {key!r} ({known[key][1]})", atlas)
    from atlascli.search import query_from_features

    q = query_from_features(",".join(map(str, known[key][0])), atlas)
    return ConceptQuery(q.features, q.weights, known[key][1], q.matches)


def save_concept(name: str, query: ConceptQuery, atlas: Atlas, registry: Registry | None = None) -> Artifact:
    """Store a concept query under ``name`` for ``atlas`` (a newer one with the same name wins)."""
    registry = registry or Registry()
    if not name.strip():
        raise InputError("empty concept name", "e.g. atlas concept add london --query London")
    from atlascli.registry.files import sha256_json

    key = sha256_json({"name": name, "atlas": atlas.id, "q": asdict(query)})
    stage = registry.stage("concepts", f"concept-{slug(name)}-{key[:10]}", parents=[atlas.id])
    atomic_write_json(stage.path / "concept.json", asdict(query))
    return stage.commit({"name": name, "atlas": atlas.id, "source": query.source, "n_features": len(query.features)})


def list_concepts(atlas: Atlas, registry: Registry | None = None) -> list[dict[str, Any]]:
    """Saved and built-in concepts usable with ``atlas``."""
    registry = registry or Registry()
    rows: dict[str, dict[str, Any]] = {}
    for name, feats in builtin_concepts(atlas).items():
        rows[name] = {"name": name, "source": _all_paper_concepts()[name][1], "n_features": len(feats), "id": None,
                      "lambda": builtin_lambda(name, atlas)}
    for art in registry.find("concepts", atlas=atlas.id):
        p = art.provenance
        rows[p["name"]] = {"name": p["name"], "source": p["source"], "n_features": p["n_features"], "id": art.id}
    return sorted(rows.values(), key=lambda r: r["name"])


def load_concept(name: str, atlas: Atlas, registry: Registry | None = None) -> ConceptQuery | None:
    """A saved (preferred) or built-in concept by name, or None. ``paper:NAME`` asks for the built-in one only
    (refused, with the way out, on an atlas that is not the paper's)."""
    if name.strip().lower().startswith("paper:"):
        return paper_concept(name, atlas)
    registry = registry or Registry()
    art = registry.latest("concepts", name=name, atlas=atlas.id)
    if art is not None:
        art.verify(["concept.json"])
        return ConceptQuery(**read_json(art.file("concept.json")))
    if name.strip().lower() in builtin_concepts(atlas):
        return paper_concept(name, atlas)
    return None
