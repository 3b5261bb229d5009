"""Advisory file locks (``fcntl.flock``) that serialise writers of one artifact or cache entry.

The kernel releases a flock when its process dies (even on SIGKILL), so a crashed writer never leaves a
stale lock. Locks are re-entrant within a process: a second acquire of a path the process already holds
only increments a count, so nested code paths never deadlock on themselves.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from atlascli.errors import AtlasError

_HELD: dict[str, tuple[int, int]] = {}
"""Locks held by this process: path -> (file descriptor, count)."""
_GUARD = threading.Lock()


def acquire(path: Path, timeout: float | None = None) -> None:
    """Take the exclusive lock ``path`` (created if needed), waiting for other processes to release it.

    ``timeout`` (seconds, None = wait forever; also ``$ATLAS_LOCK_TIMEOUT``) raises an AtlasError when exceeded.
    """
    key = str(path)
    with _GUARD:
        if key in _HELD:
            fd, count = _HELD[key]
            _HELD[key] = (fd, count + 1)
            return
    if timeout is None and os.environ.get("ATLAS_LOCK_TIMEOUT"):
        timeout = float(os.environ["ATLAS_LOCK_TIMEOUT"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise AtlasError(f"{path.name} is locked by another atlas process",
                                     "wait for it to finish (or raise ATLAS_LOCK_TIMEOUT)") from None
                time.sleep(0.05)
    except BaseException:
        os.close(fd)
        raise
    with _GUARD:
        _HELD[key] = (fd, 1)


def release(path: Path) -> None:
    """Release one hold of ``path`` (the lock is dropped when the last hold goes)."""
    key = str(path)
    with _GUARD:
        if key not in _HELD:
            return
        fd, count = _HELD[key]
        if count > 1:
            _HELD[key] = (fd, count - 1)
            return
        del _HELD[key]
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def held(path: Path) -> bool:
    """Whether this process holds ``path``."""
    with _GUARD:
        return str(path) in _HELD


@contextmanager
def file_lock(path: Path, timeout: float | None = None) -> Iterator[None]:
    """``with file_lock(path): ...`` — exclusive across processes, re-entrant within one."""
    acquire(path, timeout)
    try:
        yield
    finally:
        release(path)
