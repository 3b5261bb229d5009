"""Named concepts: a concept query saved under a name for one atlas (``concepts`` artifacts), plus
the paper's built-in Gemma Scope 16k concepts (Table 8) for that atlas."""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import resources
from typing import Any

from atlascli.atlas.store import Atlas
from atlascli.errors import InputError
from atlascli.registry import Artifact, Registry, slug
from atlascli.registry.files import atomic_write_json, read_json
from atlascli.search import ConceptQuery, query_from_features


def builtin_concepts(atlas: Atlas) -> dict[str, list[int]]:
    """The paper's concepts when ``atlas`` is the Gemma Scope 2B 16k layer-20 SAE, else none."""
    data = json.loads(resources.files("atlascli.data").joinpath("paper_concepts.json").read_text())
    match = data["atlas_match"]
    p = atlas.artifact.provenance
    if p.get("sae") == match["sae"] and atlas.width == match["width"]:
        return {k: list(v) for k, v in data["concepts"].items()}
    return {}


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
        rows[name] = {"name": name, "source": "paper Table 8", "n_features": len(feats), "id": None}
    for art in registry.find("concepts", atlas=atlas.id):
        p = art.provenance
        rows[p["name"]] = {"name": p["name"], "source": p["source"], "n_features": p["n_features"], "id": art.id}
    return sorted(rows.values(), key=lambda r: r["name"])


def load_concept(name: str, atlas: Atlas, registry: Registry | None = None) -> ConceptQuery | None:
    """A saved (preferred) or built-in concept by name, or None."""
    registry = registry or Registry()
    art = registry.latest("concepts", name=name, atlas=atlas.id)
    if art is not None:
        art.verify(["concept.json"])
        return ConceptQuery(**read_json(art.file("concept.json")))
    builtin = builtin_concepts(atlas)
    if name in builtin:
        return query_from_features(",".join(map(str, builtin[name])), atlas)
    return None
