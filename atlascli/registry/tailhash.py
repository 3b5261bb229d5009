"""Hash a file while another writer (huggingface_hub's downloader) is still writing it.

A pull must check the sha256 of every downloaded byte. Hashing after the download is a second pass over the
file that nothing overlaps for the last (usually the largest) file: on a fast link it adds about a sixth to the
pull (bench/hub.py). :class:`TailHasher` follows the temporary file huggingface_hub appends to
(``blobs/<etag>.<random>.incomplete``, renamed to ``blobs/<etag>`` when complete) and hashes each block as it lands.

The result is only about the final file when it is the same inode (a rename keeps it), the expected number of
bytes was read, and nothing was written after the last read; otherwise (a cached, resumed or out-of-order
download, a changed cache layout) it is None. Callers accept the file only when the digest equals the expected
sha256 and hash the finished file in every other case, so this is a speed-up that never weakens the check (it
assumes only that the local writer does not rewrite bytes it has written: huggingface_hub appends).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

POLL_S = 0.002
"""How long the follower sleeps when it has caught up with the writer."""
BLOCK = 1 << 20
"""Bytes read per step."""


class TailHasher:
    """Follows ``blobs/<etag>.*.incomplete`` in ``blobs_dir`` from ``start()`` until ``finish(final_path)``."""

    def __init__(self, blobs_dir: Path, etag: str, size: int) -> None:
        self.blobs_dir = blobs_dir
        """The HF cache folder the download lands in."""
        self.etag = etag
        """The blob's name in the cache (for LFS files, the sha256 the server claims)."""
        self.size = size
        """Bytes expected."""
        self._done = threading.Event()
        self._digest = hashlib.sha256()
        self._read = 0
        self._stat: os.stat_result | None = None
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def start(self) -> TailHasher:
        self._thread.start()
        return self

    def _find(self) -> Path | None:
        try:
            found = sorted(self.blobs_dir.glob(f"{self.etag}.*incomplete"))
        except OSError:
            return None
        return found[0] if len(found) == 1 else None  # two writers of one blob: not ours to guess

    def _follow(self) -> None:
        path = None
        while path is None:
            if self._done.is_set():
                return  # no temporary file seen: already cached, or a layout we do not know
            path = self._find()
            if path is None:
                time.sleep(POLL_S)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - held across the loop; the inode outlives the rename
        except OSError:
            return
        with fh:
            while self._read < self.size:
                block = fh.read(min(BLOCK, self.size - self._read))
                if block:
                    self._digest.update(block)
                    self._read += len(block)
                elif self._done.is_set():
                    block = fh.read(1)  # the writer is done: one last look, then stop
                    if not block:
                        break
                    self._digest.update(block)
                    self._read += 1
                else:
                    time.sleep(POLL_S)
            self._stat = os.fstat(fh.fileno())

    def finish(self, final: Path | None) -> str | None:
        """Stop following; the hex sha256 of ``final`` if the bytes hashed are provably its content, else None."""
        self._done.set()
        self._thread.join()
        if final is None or self._stat is None or self._read != self.size:
            return None
        try:
            now = final.resolve().stat()
        except OSError:
            return None
        same = (now.st_ino, now.st_dev, now.st_size) == (self._stat.st_ino, self._stat.st_dev, self.size)
        return self._digest.hexdigest() if same and now.st_mtime_ns <= self._stat.st_mtime_ns else None
