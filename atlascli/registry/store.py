"""The artifact registry: one folder per artifact under ``$ATLAS_HOME/artifacts/<kind>/<id>``.

Each folder holds safetensors and JSON files plus one ``manifest.json`` with the kind, schema
version, the sha256 of every file, provenance and the ids of the artifacts it was made from.
An artifact is built in a staging folder (``.partial-<id>``) that survives crashes, so long jobs
resume, and becomes visible only when its manifest is written and the folder renamed.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlascli import __version__
from atlascli.errors import AtlasError, CorruptArtifactError, InputError, NotFoundError
from atlascli.paths import atlas_home
from atlascli.registry import locks
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
        self._check(names, sha256_file)

    def verify_cached(self, names: list[str] | None = None) -> None:
        """:meth:`verify`, but each file is hashed only when its size or times changed since it was last
        hashed (see ``registry.hashcache``): a warm load pays a ``stat`` per file."""
        from atlascli.registry.hashcache import cached_sha256

        self._check(names, cached_sha256)

    def _check(self, names: list[str] | None, sha256: Callable[[Path], str]) -> None:
        for name in names if names is not None else list(self.manifest["files"]):
            entry = self.manifest["files"].get(name)
            path = self.path / name
            if entry is None or not path.is_file():
                raise CorruptArtifactError(
                    f"artifact {self.id}: file {name} is missing",
                    f"delete it with `atlas registry rm {self.id}` and recreate it",
                )
            if path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
                raise CorruptArtifactError(
                    f"artifact {self.id}: file {name} does not match its checksum (corrupted or truncated)",
                    f"delete it with `atlas registry rm {self.id}` and recreate it",
                )

    def files_under(self, prefix: str) -> builtins.list[str]:
        """Manifest file names starting with ``prefix`` (e.g. ``"sae/"``)."""
        return sorted(n for n in self.manifest["files"] if n.startswith(prefix))


@dataclass(frozen=True)
class Problem:
    """An artifact folder the registry skips: unreadable, incomplete or of a future schema."""

    kind: str
    """The kind folder it sits in."""
    id: str
    """Its folder name (what `atlas registry rm` takes)."""
    path: Path
    """The folder."""
    message: str
    """What is wrong."""
    fix: str
    """How to fix it."""


@dataclass
class Staging:
    """A folder where an artifact is being built; survives crashes so work can resume.

    The process holds the artifact's file lock from :meth:`Registry.stage` until :meth:`commit` or
    :meth:`discard` (or its death), so a second writer of the same id waits, then finds :attr:`published`.
    """

    registry: Registry
    """The registry it belongs to."""
    kind: str
    """Artifact kind."""
    id: str
    """Artifact id."""
    path: Path
    """The ``.partial-<id>`` folder."""
    parents: list[str] = field(default_factory=list)
    """Ids of the artifacts it is made from."""
    lock: Path | None = None
    """The lock file held while staging (None once released)."""

    @property
    def published(self) -> Artifact | None:
        """The committed artifact when another writer finished it (e.g. while this one waited for the lock)."""
        if self.registry.exists(self.id, self.kind):
            return self.registry.get(self.id, self.kind)
        return None

    def release(self) -> None:
        """Release the lock (keeping the folder, so a later run resumes)."""
        if self.lock is not None:
            locks.release(self.lock)
            self.lock = None

    def commit(self, provenance: dict[str, Any], meta: dict[str, Any] | None = None,
               required: builtins.list[str] | None = None, check: Callable[[Path], None] | None = None) -> Artifact:
        """Checksum every file, write the manifest and atomically publish the folder (releasing the lock).

        Leftover temp files (of a killed writer) are deleted first, never published; every name in
        ``required`` must be present and ``check(folder)`` (e.g. shard coverage) must pass, else nothing
        is published.
        """
        try:
            if check is not None:
                check(self.path)
            return self._commit(provenance, meta, required)
        finally:
            self.release()

    def _commit(self, provenance: dict[str, Any], meta: dict[str, Any] | None,
                required: builtins.list[str] | None) -> Artifact:
        files = {}
        for path in sorted(self.path.rglob("*")):
            if path.is_file() and path.name.endswith(".tmp"):
                path.unlink()
                continue
            if path.is_file() and path.name != MANIFEST:
                rel = path.relative_to(self.path).as_posix()
                files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        missing = [n for n in required or [] if n not in files]
        if missing:
            raise CorruptArtifactError(f"artifact {self.id} is incomplete: {', '.join(missing[:4])} missing",
                                       "run the same command again to finish it")
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
        if final.exists():  # an earlier run (or one without the lock) finished the same artifact
            shutil.rmtree(self.path)
        else:
            self.path.rename(final)
            _fsync_dir(final.parent)
        return self.registry.get(self.id, kind=self.kind)

    def discard(self) -> None:
        """Remove the staging folder and everything in it, and release the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


def slug(text: str) -> str:
    """Filesystem-safe short form of a model name or path."""
    text = text.rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()[:48] or "x"


def _check_kind(kind: str) -> str:
    """``kind`` when it is one of :data:`KINDS`; else a clear error."""
    if kind not in KINDS:
        raise InputError(f"unknown artifact kind {kind!r}", f"use one of {', '.join(KINDS)}")
    return kind


class Registry:
    """All artifacts under one root (``$ATLAS_HOME/artifacts`` by default).

    Reading is isolated per artifact: a folder that cannot be read (bad JSON, missing keys, a future
    schema) is skipped by :meth:`list` and default resolution and reported by :meth:`problems`; only
    commands that name it fail. "Latest" means the most recently committed *here* (the manifest's
    ctime), never the date a manifest claims.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or atlas_home() / "artifacts").expanduser()

    def kind_dir(self, kind: str) -> Path:
        """Folder holding all artifacts of ``kind``."""
        _check_kind(kind)
        path = self.root / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    def lock_path(self, kind: str, artifact_id: str) -> Path:
        """The lock file serialising writers (and removers) of one artifact id."""
        return self.kind_dir(kind) / ".locks" / f"{artifact_id}.lock"

    def stage(self, kind: str, artifact_id: str, parents: builtins.list[str] | None = None) -> Staging:
        """Open (or reopen, to resume) the staging folder of an artifact, holding its lock.

        Waits while another process stages the same id; check :attr:`Staging.published` afterwards
        to reuse what that process committed.
        """
        if not _ID_RE.match(artifact_id):
            raise InputError(f"invalid artifact id {artifact_id!r}", "use letters, digits, '.', '_' and '-'")
        lock = self.lock_path(kind, artifact_id)
        locks.acquire(lock)
        try:
            path = self.kind_dir(kind) / f".partial-{artifact_id}"
            path.mkdir(parents=True, exist_ok=True)
        except BaseException:
            locks.release(lock)
            raise
        return Staging(self, kind, artifact_id, path, list(parents or []), lock)

    def exists(self, artifact_id: str, kind: str | None = None) -> bool:
        """Whether a committed artifact with exactly this id exists."""
        kinds = [kind] if kind else list(KINDS)
        return any((self.root / k / artifact_id / MANIFEST).exists() for k in kinds)

    def _load(self, path: Path) -> Artifact:
        hint = f"remove it with `atlas registry rm {path.name}` and recreate it"
        try:
            manifest = read_json(path / MANIFEST)
        except CorruptArtifactError as exc:
            raise CorruptArtifactError(exc.message, hint) from exc
        if not isinstance(manifest, dict):
            raise CorruptArtifactError(f"artifact {path.name}: manifest.json is not an object", hint)
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise CorruptArtifactError(
                f"artifact {path.name} has schema version {manifest.get('schema_version')}, "
                f"this atlas reads {SCHEMA_VERSION}",
                f"upgrade atlas, or remove it with `atlas registry rm {path.name}`",
            )
        if manifest.get("id") != path.name or manifest.get("kind") != path.parent.name:
            raise CorruptArtifactError(f"artifact {path.name}: its manifest names {manifest.get('kind')} "
                                       f"{manifest.get('id')!r}, not the folder it is in", hint)
        if not isinstance(manifest.get("files"), dict):
            raise CorruptArtifactError(f"artifact {path.name}: manifest.json has no file list", hint)
        return Artifact(manifest["id"], manifest["kind"], path, manifest)

    def _scan(self, kind: str | None) -> tuple[builtins.list[Artifact], builtins.list[Problem]]:
        kinds = [_check_kind(kind)] if kind else list(KINDS)
        found: builtins.list[tuple[int, str, Artifact]] = []
        problems: builtins.list[Problem] = []
        for k in kinds:
            folder = self.root / k
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.name.startswith(".") or not path.is_dir():
                    continue
                try:
                    if not (path / MANIFEST).is_file():
                        raise CorruptArtifactError(f"artifact {path.name} has no manifest.json (incomplete copy?)",
                                                   f"remove it with `atlas registry rm {path.name}`")
                    art = self._load(path)
                    found.append(((path / MANIFEST).stat().st_ctime_ns, art.id, art))
                except (AtlasError, OSError) as exc:
                    message = exc.message if isinstance(exc, AtlasError) else f"{path.name}: {exc}"
                    fix = (exc.hint if isinstance(exc, AtlasError) else None) or f"atlas registry rm {path.name}"
                    problems.append(Problem(k, path.name, path, message, fix))
        found.sort(key=lambda t: (t[0], t[1]))
        return [a for _, _, a in found], sorted(problems, key=lambda p: (p.kind, p.id))

    def list(self, kind: str | None = None) -> builtins.list[Artifact]:
        """Readable committed artifacts, oldest commit first (unreadable ones: see :meth:`problems`)."""
        return self._scan(kind)[0]

    def problems(self, kind: str | None = None) -> builtins.list[Problem]:
        """Artifact folders that :meth:`list` skips, each with what is wrong and the fix."""
        return self._scan(kind)[1]

    def get(self, ref: str, kind: str | None = None) -> Artifact:
        """Look up an artifact by exact id or unique id prefix (an unreadable exact match raises)."""
        kinds = [kind] if kind else list(KINDS)
        for k in kinds:
            if (self.root / k / ref / MANIFEST).exists():
                return self._load(self.root / k / ref)
        arts, problems = self._scan(kind)
        matches = [a for a in arts if a.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        what = kind or "artifact"
        if not matches:
            broken = [p for p in problems if p.id.startswith(ref)]
            if len(broken) == 1:
                raise CorruptArtifactError(broken[0].message, broken[0].fix)
            raise NotFoundError(f"no {what} named {ref!r} in {self.root}", "list them with `atlas registry ls`")
        raise InputError(
            f"{ref!r} matches {len(matches)} artifacts ({', '.join(a.id for a in matches[:4])}...)",
            "give more of the id",
        )

    def find(self, kind: str, **provenance: Any) -> builtins.list[Artifact]:
        """Committed artifacts of ``kind`` whose provenance has all the given key/values."""
        return [a for a in self.list(kind) if all(a.provenance.get(k) == v for k, v in provenance.items())]

    def latest(self, kind: str, **provenance: Any) -> Artifact | None:
        """The most recently committed match of :meth:`find`, or None."""
        found = self.find(kind, **provenance)
        return found[-1] if found else None

    def removal_targets(self, ref: str) -> tuple[builtins.list[Path], bool]:
        """Folders ``atlas registry rm REF`` would delete, without parsing them, and whether ``ref`` matched
        exactly (an id, or the path of a folder directly under a kind folder) rather than as a prefix.
        Refs that point outside the registry are refused."""
        root = self.root.resolve()
        if "/" in ref or os.sep in ref or ref in {".", ".."} or ref.startswith("~"):
            path = Path(ref).expanduser().resolve()
            if path.parent.parent != root or path.parent.name not in KINDS or path.name.startswith("."):
                raise InputError(f"refusing to remove {ref}: it is not an artifact folder of the registry {root}",
                                 "give an artifact id from `atlas registry ls` or `atlas registry verify`")
            if not path.is_dir():
                raise NotFoundError(f"no artifact folder {path}", "list them with `atlas registry ls`")
            return [path], True
        if not _ID_RE.match(ref):
            raise InputError(f"invalid artifact id {ref!r}", "use letters, digits, '.', '_' and '-'")
        exact = [root / k / ref for k in KINDS if (root / k / ref).is_dir()]
        if exact:
            return exact, True
        prefix = sorted((p for k in KINDS if (root / k).is_dir() for p in (root / k).iterdir()
                         if p.is_dir() and not p.name.startswith(".") and p.name.startswith(ref)),
                        key=lambda p: (p.parent.name, p.name))
        if not prefix:
            raise NotFoundError(f"no artifact named {ref!r} in {self.root}", "list them with `atlas registry ls`")
        return prefix, False

    def remove_folder(self, path: Path) -> None:
        """Delete one artifact folder under its lock: renamed away first (atomic), then deleted."""
        root = self.root.resolve()
        path = path.resolve()
        if path.parent.parent != root or path.parent.name not in KINDS or path.name.startswith("."):
            raise InputError(f"refusing to remove {path}: not an artifact folder of {root}", "give an artifact id")
        with locks.file_lock(self.lock_path(path.parent.name, path.name)):
            if not path.exists():
                return
            trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
            path.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)

    def remove(self, ref: str, prefix_ok: bool = True) -> builtins.list[Path]:
        """Delete the artifact folder(s) ``ref`` names (see :meth:`removal_targets`); a prefix must be unique
        unless the caller confirmed it (``prefix_ok``). Returns the removed folders."""
        targets, exact = self.removal_targets(ref)
        if not exact and (not prefix_ok or len(targets) > 1):
            raise InputError(f"{ref!r} is a prefix of {len(targets)} artifact(s) "
                             f"({', '.join(p.name for p in targets[:4])})", "give the full id")
        for path in targets:
            self.remove_folder(path)
        return targets
