"""Checks for data that comes from elsewhere (a Hub repo, a folder someone sent): bundle indexes and manifests.

Nothing here trusts a remote id, kind or file name: ids must be plain folder names, kinds one of ``KINDS``,
file names relative POSIX paths without ``..``, absolute parts, backslashes or hidden components, sizes
integers and checksums 64 hex digits. Only JSON is parsed (never pickle), with a size cap.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atlascli.errors import CorruptArtifactError
from atlascli.registry.store import KINDS, MANIFEST, SCHEMA_VERSION

BUNDLE_INDEX = "atlas-bundle.json"
"""Name of the index file at the root of a published bundle."""
MAX_JSON_BYTES = 64 << 20
"""Largest manifest / index / label file parsed from a remote source."""

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+=-]{0,200}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _bad(what: str, source: str) -> CorruptArtifactError:
    return CorruptArtifactError(f"{source}: {what}; refusing it", "the remote bundle is malformed or was tampered with; "
                                "nothing was added to the registry")


def check_id(value: Any, source: str) -> str:
    """An artifact id that is a single safe folder name."""
    if not isinstance(value, str) or not _ID_RE.match(value) or value in (".", ".."):
        raise _bad(f"invalid artifact id {str(value)[:80]!r}", source)
    return value


def check_kind(value: Any, source: str) -> str:
    """A known artifact kind."""
    if value not in KINDS:
        raise _bad(f"unknown artifact kind {str(value)[:40]!r}", source)
    return str(value)


def check_name(value: Any, source: str) -> str:
    """A file name inside an artifact: relative, POSIX, no '..', no hidden or odd components."""
    if not isinstance(value, str) or not value or len(value) > 512 or "\\" in value or value.startswith("/"):
        raise _bad(f"unsafe file name {str(value)[:80]!r}", source)
    parts = value.split("/")
    if any(p in ("", ".", "..") or not _PART_RE.match(p) for p in parts) or value == MANIFEST:
        raise _bad(f"unsafe file name {value[:80]!r}", source)
    return value


def parse_json_bytes(data: bytes, source: str) -> Any:
    """Parse JSON from an untrusted source with a size cap."""
    if len(data) > MAX_JSON_BYTES:
        raise _bad(f"JSON of {len(data)} bytes is larger than {MAX_JSON_BYTES}", source)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"not valid JSON ({exc.__class__.__name__})", source) from exc


def read_json_file(path: Path, source: str) -> Any:
    """Parse a downloaded JSON file (regular file only, size-capped)."""
    real = path.resolve()
    if not real.is_file():
        raise _bad("not a regular file", source)
    if real.stat().st_size > MAX_JSON_BYTES:
        raise _bad(f"JSON file larger than {MAX_JSON_BYTES} bytes", source)
    return parse_json_bytes(real.read_bytes(), source)


@dataclass(frozen=True)
class RemoteEntry:
    """One artifact listed in a bundle index."""

    kind: str
    """Validated kind."""
    id: str
    """Validated id."""

    @property
    def folder(self) -> str:
        """Its folder in the repo: ``<kind>/<id>``."""
        return f"{self.kind}/{self.id}"


def check_index(obj: Any, source: str = BUNDLE_INDEX) -> tuple[dict[str, Any], list[RemoteEntry]]:
    """Validate a bundle index; returns it and its artifact entries."""
    if not isinstance(obj, dict) or not isinstance(obj.get("artifacts"), list):
        raise _bad("no 'artifacts' list", source)
    if obj.get("schema_version") != SCHEMA_VERSION:
        raise CorruptArtifactError(f"{source}: bundle schema version {obj.get('schema_version')!r}, this atlas reads "
                                   f"{SCHEMA_VERSION}", "upgrade atlas (pip install -U atlascli)")
    entries, seen = [], set()
    for rec in obj["artifacts"][:10_000]:
        if not isinstance(rec, dict):
            raise _bad("artifact entry is not an object", source)
        entry = RemoteEntry(check_kind(rec.get("kind"), source), check_id(rec.get("id"), source))
        if entry.id in seen:
            raise _bad(f"artifact {entry.id} listed twice", source)
        seen.add(entry.id)
        entries.append(entry)
    if not entries:
        raise _bad("the bundle lists no artifacts", source)
    return obj, entries


def check_manifest(obj: Any, entry: RemoteEntry) -> dict[str, Any]:
    """Validate a remote manifest against the entry it was listed as; returns it unchanged."""
    source = f"{entry.folder}/{MANIFEST}"
    if not isinstance(obj, dict):
        raise _bad("manifest is not an object", source)
    if obj.get("schema_version") != SCHEMA_VERSION:
        raise CorruptArtifactError(f"{source}: schema version {obj.get('schema_version')!r}, this atlas reads "
                                   f"{SCHEMA_VERSION}", "upgrade atlas, or ask the publisher to republish")
    if check_kind(obj.get("kind"), source) != entry.kind or check_id(obj.get("id"), source) != entry.id:
        raise _bad(f"manifest says {obj.get('kind')} {obj.get('id')}, the index says {entry.kind} {entry.id}", source)
    files = obj.get("files")
    if not isinstance(files, dict) or not files:
        raise _bad("manifest lists no files", source)
    for name, meta in files.items():
        check_name(name, source)
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or not _SHA_RE.match(meta["sha256"]):
            raise _bad(f"file {name}: bad sha256", source)
        if not isinstance(meta.get("bytes"), int) or isinstance(meta["bytes"], bool) or meta["bytes"] < 0:
            raise _bad(f"file {name}: bad size", source)
    parents = obj.get("parents", [])
    if not isinstance(parents, list):
        raise _bad("parents is not a list", source)
    for p in parents:
        check_id(p, source)
    for key in ("provenance", "meta"):
        if not isinstance(obj.get(key, {}), dict):
            raise _bad(f"{key} is not an object", source)
    return obj


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside ``root`` (symlinks resolved)."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def no_symlinks(folder: Path, root: Path) -> None:
    """Refuse a folder that is a symlink, holds one, or resolves outside ``root``."""
    if folder.is_symlink() or not inside(folder, root):
        raise CorruptArtifactError(f"{folder} is a link or lies outside {root}", "remove it by hand; atlas will not follow it")
    for p in folder.rglob("*"):
        if p.is_symlink():
            raise CorruptArtifactError(f"{p} is a symbolic link", "artifacts hold regular files only; remove it by hand")
