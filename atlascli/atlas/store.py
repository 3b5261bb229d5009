"""Reading atlas artifacts, and importing online ones (sae-lens release + Neuronpedia / CSV labels)."""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atlascli.errors import InputError, NotFoundError
from atlascli.registry import Artifact, Registry, slug
from atlascli.registry.files import atomic_save_tensors, atomic_write_json, load_tensors, read_json, sha256_json

if TYPE_CHECKING:  # torch loads on first use of tensors, so listing and resolving atlases stays instant
    import torch


@dataclass(frozen=True)
class Atlas:
    """A labelled Concept Atlas: SAE + one label per feature + label embeddings."""

    artifact: Artifact
    """The atlas artifact."""

    @property
    def id(self) -> str:
        """Artifact id."""
        return self.artifact.id

    @property
    def weights_id(self) -> str:
        """Id of the atlas whose SAE weights this one carries (itself unless relabelled): alignments fitted to
        that id are valid for this atlas too."""
        return str(self.artifact.provenance.get("weights_id") or self.id)

    @property
    def width(self) -> int:
        """Number of features (dc)."""
        return int(self.artifact.provenance["width"])

    @cached_property
    def labels(self) -> list[dict[str, Any]]:
        """Per-feature records: index, label, description, top samples..."""
        self.artifact.verify_cached(["labels.json"])
        return list(read_json(self.artifact.file("labels.json")))

    @cached_property
    def label_embeddings(self) -> torch.Tensor:
        """[width, dim] L2-normalised (zero rows for features without text or samples)."""
        self.artifact.verify_cached(["label_embeddings.safetensors"])
        return load_tensors(self.artifact.file("label_embeddings.safetensors"))["embeddings"]

    def label(self, index: int) -> str:
        """The short label (description when there is one) of a feature."""
        rec = self.feature(index)
        return str(rec.get("description") or rec.get("label") or "")

    def feature(self, index: int) -> dict[str, Any]:
        """The record of one feature, with a clear error when out of range."""
        if not 0 <= index < self.width:
            raise InputError(f"atlas feature {index} does not exist", f"{self.id} has features 0..{self.width - 1}")
        return self.labels[index]

    @property
    def labels_version(self) -> int:
        """1 for atlases labelled by peak tokens only (before coherence and content words), 2 after."""
        p = self.artifact.provenance
        return int(p.get("labels_version", 2 if p.get("source") == "imported" else 1))

    def _per_feature(self, key: str) -> torch.Tensor:
        """[width] float of a per-feature label field, NaN where a feature does not record it."""
        import torch

        vals = [r.get(key) for r in self.labels]
        return torch.tensor([float("nan") if v is None else float(v) for v in vals])

    @cached_property
    def coherence(self) -> torch.Tensor:
        """[width] coherence of each feature (NaN where unknown: imported or old atlases, rare features)."""
        return self._per_feature("coherence")

    @cached_property
    def frequency(self) -> torch.Tensor:
        """[width] share of labelling sentences on which each feature is active (NaN where unknown)."""
        return self._per_feature("frequency")

    @cached_property
    def coherent(self) -> torch.Tensor:
        """[width] bool: features usable for text matching (imported atlases: every labelled feature)."""
        import torch

        if self.labels_version < 2 or self.artifact.provenance.get("source") == "imported":
            return torch.tensor([bool(r.get("label")) and r.get("label") != "(dead)" for r in self.labels])
        return torch.tensor([bool(r.get("coherent")) for r in self.labels])

    @property
    def has_examples(self) -> bool:
        """Whether the atlas stores its labelling sentences' embeddings and codes (text queries via examples)."""
        return "examples.safetensors" in self.artifact.manifest["files"]

    @cached_property
    def examples(self) -> dict[str, torch.Tensor]:
        """Labelling sentences: ``embeddings`` [n, dim] and their max-pooled codes as CSR (``indptr``,
        ``indices``, ``values``); checksum-verified on first use."""
        if not self.has_examples:
            raise NotFoundError(f"atlas {self.id} stores no labelling examples",
                                "rebuild it with `atlas atlas build` (atlases built before labels v2 lack them)")
        self.artifact.verify_cached(["examples.safetensors"])
        return load_tensors(self.artifact.file("examples.safetensors"))

    @property
    def sae_path(self) -> Path:
        """Folder of the SAE in sae-lens format (absent for imported release atlases)."""
        return self.artifact.path / "sae"


def resolve_atlas(ref: str | None, registry: Registry | None = None) -> Atlas:
    """An atlas by id/prefix or name; the most recent one when ``ref`` is None."""
    registry = registry or Registry()
    if ref is None:
        art = registry.latest("atlas")
        if art is None:
            raise NotFoundError("no Concept Atlas in the registry",
                                "build one with `atlas atlas build` or import one with `atlas atlas import`")
        return Atlas(art)
    named = registry.latest("atlas", name=ref)
    return Atlas(named or registry.get(ref, "atlas"))


def read_labels_file(path: Path, width: int | None = None) -> dict[int, str]:
    """``index -> description`` from a Neuronpedia explanations export (JSON / JSONL, optionally .gz)
    or a CSV/TSV with ``index,description`` columns."""
    if not path.exists():
        raise NotFoundError(f"labels file {path} does not exist", "export explanations from Neuronpedia or write a CSV")
    opener: Any = gzip.open if path.suffix == ".gz" else open
    name = path.name.removesuffix(".gz")
    out: dict[int, str] = {}
    with opener(path, "rt", encoding="utf-8") as fh:
        if name.endswith((".csv", ".tsv")):
            reader = csv.DictReader(fh, delimiter="\t" if name.endswith(".tsv") else ",")
            if not reader.fieldnames or not {"index", "description"} <= set(reader.fieldnames):
                raise InputError(f"{path} needs 'index' and 'description' columns", "header: index,description")
            for rec in reader:
                out[int(rec["index"])] = rec["description"].strip()
        else:
            text = fh.read()
            try:
                data = json.loads(text)
                if isinstance(data, list):
                    records = data
                else:  # {"explanations": [...]} or a single record
                    records = data.get("explanations", [data] if "index" in data or "feature" in data else [])
            except json.JSONDecodeError:
                records = [json.loads(line) for line in text.splitlines() if line.strip()]
            for rec in records:  # Neuronpedia: {"index": "123", "description": "...", "modelId":..., "layer":...}
                idx = rec.get("index", rec.get("feature"))
                desc = rec.get("description") or rec.get("explanation")
                if idx is not None and desc:
                    out.setdefault(int(idx), str(desc).strip())
    if not out:
        raise InputError(f"no labels found in {path}", "expected index/description records")
    if width is not None:
        bad = [i for i in out if not 0 <= i < width]
        if bad:
            raise InputError(f"labels file names features {bad[:5]} outside the SAE's 0..{width - 1}",
                             "is it the export of a different SAE?")
    return out


def import_atlas(sae_ref: str, labels_path: Path, foundation: str, layer: int, site: str = "resid",
                 name: str | None = None, embedder: str = "minilm-l6", registry: Registry | None = None) -> Artifact:
    """Store an atlas from an existing SAE (local folder or sae-lens ``RELEASE:ID``) and a labels file."""
    from atlascli.embed import embed
    from atlascli.saes import load_sae

    registry = registry or Registry()
    sae, sae_prov = load_sae(sae_ref)
    width = int(sae.cfg.d_sae)
    descriptions = read_labels_file(labels_path, width)
    key = sha256_json({"sae": sae_prov, "labels": sorted(descriptions.items()), "foundation": foundation,
                       "layer": layer, "site": site, "embedder": embedder})
    art_id = f"atlas-{slug(name or sae_ref)}-L{layer}-{site}-w{width}-{key[:10]}"
    if registry.exists(art_id, "atlas"):
        return registry.get(art_id, "atlas")
    stage = registry.stage("atlas", art_id)
    sae.save_model(stage.path / "sae")
    idx = sorted(descriptions)
    emb = embed([descriptions[i] for i in idx], embedder)
    import torch

    table = torch.zeros(width, emb.shape[1])
    table[idx] = emb
    labels: list[dict[str, Any]] = [
        {"index": i, "label": descriptions.get(i, ""), "description": descriptions.get(i), "top_samples": [],
         "top_tokens": [], "frequency": None} for i in range(width)]
    atomic_write_json(stage.path / "labels.json", labels)
    atomic_save_tensors(stage.path / "label_embeddings.safetensors", {"embeddings": table})
    prov = {"name": name or slug(sae_ref), "foundation": foundation, "revision": None, "layer": layer, "site": site,
            "width": width, "embedder": embedder, "source": "imported", **sae_prov, "labels_file": str(labels_path),
            "labelled_features": len(descriptions)}
    return stage.commit(prov, {"quality": {}})
