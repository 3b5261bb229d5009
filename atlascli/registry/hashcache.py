"""sha256 of files, cached by (real path, size, mtime, ctime) so that a warm run hashes nothing.

The cache lives in ``$ATLAS_HOME/cache/file-hashes.json`` (plus an in-process copy). It guards against
accidental change (a rewritten, truncated or replaced file changes its size or times), not against an
attacker who restores timestamps. Concurrent writers may lose each other's entries: that only costs a rehash.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from atlascli.paths import atlas_home
from atlascli.registry.files import atomic_write_json, sha256_file

MAX_ENTRIES = 20000
_MEMO: dict[str, dict[str, Any]] = {}
_LOADED: set[str] = set()
_GUARD = threading.Lock()


def _cache_file() -> Path:
    return atlas_home() / "cache" / "file-hashes.json"


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _table(cache_file: Path) -> dict[str, Any]:
    key = str(cache_file)
    with _GUARD:
        if key not in _LOADED:
            try:
                raw = json.loads(cache_file.read_text())
                _MEMO[key] = raw if isinstance(raw, dict) else {}
            except (OSError, ValueError):
                _MEMO[key] = {}
            _LOADED.add(key)
        return _MEMO[key]


def cached_sha256(path: Path, persist: bool = True) -> str:
    """Hex sha256 of ``path``; rehashed only when its size, mtime, ctime or inode changed."""
    real = str(Path(path).resolve())
    cache_file = _cache_file()
    table = _table(cache_file)
    stamp = _stamp(Path(real))
    hit = table.get(real)
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return str(hit["sha256"])
    digest = sha256_file(Path(real))
    if _stamp(Path(real)) != stamp:  # changed while we read it: do not cache
        return digest
    with _GUARD:
        table[real] = {"stamp": stamp, "sha256": digest}
        if len(table) > MAX_ENTRIES:
            for old in list(table)[: len(table) - MAX_ENTRIES]:
                del table[old]
        snapshot = dict(table)
    if persist:
        try:
            atomic_write_json(cache_file, snapshot)
        except OSError:
            pass  # a read-only home only costs rehashing
    return digest


def forget(path: Path) -> None:
    """Drop ``path`` from the in-process cache (tests and rewrites)."""
    table = _table(_cache_file())
    with _GUARD:
        table.pop(str(Path(path).resolve()), None)


def reset_memory() -> None:
    """Forget the in-process copy (the on-disk cache is read again on next use)."""
    with _GUARD:
        _MEMO.clear()
        _LOADED.clear()

