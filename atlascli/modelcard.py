"""The model card (``README.md``) of a published aligned atlas: YAML metadata the Hub indexes, plus how it was made,
its evaluation tables and the commands to use it. Pure text: no network, no printing."""

from __future__ import annotations

import re
from typing import Any

import yaml

from atlascli.registry import Artifact

TAGS = ["atlas-alignment", "sparse-autoencoder", "interpretability"]
"""Tags every bundle carries; ``atlas hub ls`` searches by the first."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def hub_id_or_none(name: Any) -> str | None:
    """``name`` when it looks like a Hub repo id (local paths and zoo names are not)."""
    return name if isinstance(name, str) and _HUB_ID.match(name) else None


def flatten_metrics(obj: Any, prefix: str = "", depth: int = 0, limit: int = 60) -> list[tuple[str, float]]:
    """Numeric leaves of a nested report section as (dotted key, value), at most ``limit``."""
    out: list[tuple[str, float]] = []
    if isinstance(obj, bool) or depth > 6:
        return out
    if isinstance(obj, (int, float)):
        return [(prefix, float(obj))]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) and len(obj) <= 16 else []
    for key, value in items:
        out += flatten_metrics(value, f"{prefix}.{key}" if prefix else str(key), depth + 1, limit - len(out))
        if len(out) >= limit:
            break
    return out[:limit]


def headline(reports: list[dict[str, Any]], n: int = 4) -> dict[str, float]:
    """A few metrics for listings: the shortest-keyed numeric entries of the latest report's quality section."""
    if not reports:
        return {}
    rep = reports[-1]
    found = flatten_metrics(rep.get("quality", {})) or flatten_metrics(rep.get("retrieval", {}))
    return {k: round(v, 4) for k, v in sorted(found, key=lambda kv: (kv[0].count("."), kv[0]))[:n]}


def card_metadata(index: dict[str, Any], license_id: str) -> dict[str, Any]:
    """The YAML header: library, tags, base model, datasets, license and the ``atlas_alignment`` block."""
    meta: dict[str, Any] = {"library_name": "atlascli", "tags": list(TAGS), "license": license_id}
    if hub_id_or_none(index["subject"]):
        meta["base_model"] = index["subject"]
    datasets = [d for d in index.get("datasets", []) if hub_id_or_none(d)]
    if datasets:
        meta["datasets"] = datasets
    meta["atlas_alignment"] = {k: index.get(k) for k in ("subject", "foundation", "atlas", "layers", "methods", "site",
                                                         "headline")}
    return meta


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_card(repo_id: str, index: dict[str, Any], atlas: Artifact, alignments: list[Artifact],
                reports: list[dict[str, Any]], license_id: str = "apache-2.0") -> str:
    """The full ``README.md``."""
    meta = card_metadata(index, license_id)
    ap = atlas.provenance
    made = [["subject", index["subject"], str(alignments[0].provenance.get("revision", "")) if alignments else ""],
            ["foundation (atlas)", ap.get("foundation", ""), str(ap.get("revision") or "")],
            ["atlas", atlas.id, f"layer {ap.get('layer')}, {ap.get('site')}, width {ap.get('width')}, "
                                f"{ap.get('source', 'trained')}" + (f" ({ap['sae']})" if ap.get("sae_source") else "")]]
    rows = [[a.provenance.get("layer"), a.provenance.get("site"), a.provenance.get("method"), a.provenance.get("n"),
             a.provenance.get("dataset"), str(a.provenance.get("dataset_fingerprint", ""))[:16], a.id] for a in alignments]
    parts = [f"# Aligned Concept Atlas for {index['subject']}", "",
             f"The Concept Atlas `{atlas.id}` (a labelled sparse autoencoder of `{ap.get('foundation')}`) aligned to "
             f"the subject model `{index['subject']}` with [atlascli](https://pypi.org/project/atlascli/) "
             "(Atlas-Alignment). Every artifact is a folder `<kind>/<id>/` with a `manifest.json` holding the sha256 "
             "of each file; `atlas pull` checks them all before anything is used.", "", "## How it was made", "",
             _md_table(["", "model / id", "revision / details"], made), "",
             _md_table(["layer", "site", "method", "N", "dataset", "dataset fingerprint", "alignment"], rows), ""]
    for rep in reports:
        parts += [f"## Evaluation `{rep.get('artifact') or ''}`", ""]
        for section in ("quality", "retrieval", "steering"):
            found = flatten_metrics(rep.get(section, {}))
            if found:
                parts += [f"### {section}", "", _md_table(["metric", "value"], [[k, f"{v:.4g}"] for k, v in found]), ""]
    layer = alignments[0].provenance.get("layer") if alignments else None
    parts += ["## Use it", "", "```bash", "pip install atlascli", f"atlas pull {repo_id}",
              f'atlas search --atlas {atlas.id} --subject {index["subject"]}'
              + (f" --layer {layer}" if layer is not None else "") + ' "dogs"', "```", ""]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(parts)
