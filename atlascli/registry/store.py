"""The artifact registry: one folder per artifact under ``$ATLAS_HOME/artifacts/<kind>/<id>``.

Each folder holds safetensors and JSON files plus one ``manifest.json`` with the kind, schema
version, the sha256 of every file, provenance and the ids of the artifacts it was made from.
An artifact is built in a staging folder (``.partial-<id>``) that survives crashes, so long jobs
resume, and becomes visible only when its manifest is written and the folder renamed.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlascli import __version__
from atlascli.errors import CorruptArtifactError, InputError, NotFoundError
from atlascli.paths import atlas_home
from atlascli.registry.files import atomic_write_json, read_json, sha256_file

SCHEMA_VERSION = 1
KINDS = ("dataset", "activations", "atlas", "alignment", "concepts", "report")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Artifact:
    """A committed artifact folder and its manifest."""

    id: str
    """Unique id, also the folder name."""
    kind: str
    """One of ``KINDS``."""
    path: Path
    """The artifact's folder."""
    manifest: dict[str, Any]
    """The parsed ``manifest.json``."""

    def file(self, name: str) -> Path:
        """Path of one of the artifact's files (must be listed in the manifest)."""
        if name not in self.manifest["files"]:
            raise CorruptArtifactError(
                f"artifact {self.id} has no file {name!r} in its manifest",
                "the artifact is incomplete; delete it with `atlas registry rm` and recreate it",
            )
        return self.path / name

    @property
    def provenance(self) -> dict[str, Any]:
        """Models, revisions, layer, site, dataset fingerprint, N, method, seed..."""
        return dict(self.manifest.get("provenance", {}))

    @property
    def meta(self) -> dict[str, Any]:
        """Kind-specific metadata (shapes, shard lists, metrics)."""
        return dict(self.manifest.get("meta", {}))

    @property
    def parents(self) -> list[str]:
        """Ids of the artifacts this one was made from."""
        return list(self.manifest.get("parents", []))

    def verify(self, names: list[str] | None = None) -> None:
        """Check the sha256 of the named files (all by default); raise on mismatch."""
        for name in names if names is not None else list(self.manifest["files"]):
            entry = self.manifest["files"].get(name)
            path = self.path / name
            if entry is None or not path.exists():
                raise CorruptArtifactError(
                    f"artifact {self.id}: file {name} is missing",
                    f"delete it with `atlas registry rm {self.id}` and recreate it",
                )
            if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
                raise CorruptArtifactError(
                    f"artifact {self.id}: file {name} does not match its checksum (corrupted or truncated)",
                    f"delete it with `atlas registry rm {self.id}` and recreate it",
                )


@dataclass
class Staging:
    """A folder where an artifact is being built; survives crashes so work can resume."""

    registry: Registry
    kind: str
    id: str
    path: Path
    parents: list[str] = field(default_factory=list)

    def commit(self, provenance: dict[str, Any], meta: dict[str, Any] | None = None) -> Artifact:
        """Checksum every file, write the manifest and atomically publish the folder."""
        files = {}
        for path in sorted(self.path.rglob("*")):
            if path.is_file() and path.name != MANIFEST and not path.name.endswith(".tmp"):
                rel = path.relative_to(self.path).as_posix()
                files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = {
            "kind": self.kind,
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "atlas_version": __version__,
            "files": files,
            "provenance": provenance,
            "parents": list(self.parents),
            "meta": meta or {},
        }
        atomic_write_json(self.path / MANIFEST, manifest)
        final = self.registry.kind_dir(self.kind) / self.id
        if final.exists():  # a concurrent or earlier run finished the same artifact
            shutil.rmtree(self.path)
        else:
            self.path.rename(final)
        return self.registry.get(self.id, kind=self.kind)

    def discard(self) -> None:
        """Remove the staging folder and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


def slug(text: str) -> str:
    """Filesystem-safe short form of a model name or path."""
    text = text.rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()[:48] or "x"


class Registry:
    """All artifacts under one root (``$ATLAS_HOME/artifacts`` by default)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or atlas_home() / "artifacts").expanduser()

    def kind_dir(self, kind: str) -> Path:
        """Folder holding all artifacts of ``kind``."""
        if kind not in KINDS:
            raise InputError(f"unknown artifact kind {kind!r}", f"use one of {', '.join(KINDS)}")
        path = self.root / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stage(self, kind: str, artifact_id: str, parents: list[str] | None = None) -> Staging:
        """Open (or reopen, to resume) the staging folder of an artifact."""
        if not _ID_RE.match(artifact_id):
            raise InputError(f"invalid artifact id {artifact_id!r}", "use letters, digits, '.', '_' and '-'")
        path = self.kind_dir(kind) / f".partial-{artifact_id}"
        path.mkdir(parents=True, exist_ok=True)
        return Staging(self, kind, artifact_id, path, list(parents or []))

    def exists(self, artifact_id: str, kind: str | None = None) -> bool:
        """Whether a committed artifact with exactly this id exists."""
        kinds = [kind] if kind else list(KINDS)
        return any((self.root / k / artifact_id / MANIFEST).exists() for k in kinds)

    def _load(self, path: Path) -> Artifact:
        manifest = read_json(path / MANIFEST)
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise CorruptArtifactError(
                f"artifact {path.name} has schema version {manifest.get('schema_version')}, "
                f"this atlas reads {SCHEMA_VERSION}",
                "upgrade atlas or recreate the artifact",
            )
        return Artifact(manifest["id"], manifest["kind"], path, manifest)

    def list(self, kind: str | None = None) -> builtins.list[Artifact]:
        """Committed artifacts, oldest first."""
        kinds = [kind] if kind else list(KINDS)
        found = []
        for k in kinds:
            folder = self.root / k
            if not folder.exists():
                continue
            for path in folder.iterdir():
                if not path.name.startswith(".") and (path / MANIFEST).exists():
                    found.append(self._load(path))
        return sorted(found, key=lambda a: (a.manifest.get("created", ""), a.id))

    def get(self, ref: str, kind: str | None = None) -> Artifact:
        """Look up an artifact by exact id or unique id prefix."""
        kinds = [kind] if kind else list(KINDS)
        for k in kinds:
            if (self.root / k / ref / MANIFEST).exists():
                return self._load(self.root / k / ref)
        matches = [a for a in self.list(kind) if a.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        what = kind or "artifact"
        if not matches:
            raise NotFoundError(f"no {what} named {ref!r} in {self.root}", "list them with `atlas registry ls`")
        raise InputError(
            f"{ref!r} matches {len(matches)} artifacts ({', '.join(a.id for a in matches[:4])}...)",
            "give more of the id",
        )

    def find(self, kind: str, **provenance: Any) -> builtins.list[Artifact]:
        """Committed artifacts of ``kind`` whose provenance has all the given key/values."""
        return [a for a in self.list(kind) if all(a.provenance.get(k) == v for k, v in provenance.items())]

    def latest(self, kind: str, **provenance: Any) -> Artifact | None:
        """The most recent match of :meth:`find`, or None."""
        found = self.find(kind, **provenance)
        return found[-1] if found else None

    def remove(self, ref: str) -> Artifact:
        """Delete a committed artifact."""
        art = self.get(ref)
        shutil.rmtree(art.path)
        return art
