"""TailHasher: the sha256 of a file hashed while it is written, used only when provably the final file's."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from atlascli.registry.tailhash import TailHasher


def _write_slowly(blobs: Path, etag: str, data: bytes, chunks: int = 16, rename: bool = True) -> threading.Thread:
    def run() -> None:
        tmp = blobs / f"{etag}.1a2b3c4d.incomplete"
        with open(tmp, "wb") as fh:
            step = max(1, len(data) // chunks)
            for i in range(0, len(data), step):
                fh.write(data[i:i + step])
                fh.flush()
                time.sleep(0.003)
        if rename:
            os.replace(tmp, blobs / etag)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_digest_of_a_file_written_in_chunks_then_renamed(tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + b"tail"
    etag = hashlib.sha256(data).hexdigest()
    tail = TailHasher(tmp_path, etag, len(data)).start()
    _write_slowly(tmp_path, etag, data).join()
    assert tail.finish(tmp_path / etag) == hashlib.sha256(data).hexdigest()


def test_digest_is_of_the_bytes_read_not_the_name(tmp_path: Path) -> None:
    """A server that names a blob by the expected sha256 but sends other bytes: the digest says so."""
    data = os.urandom(1 << 20)
    claimed = hashlib.sha256(b"something else").hexdigest()
    tail = TailHasher(tmp_path, claimed, len(data)).start()
    _write_slowly(tmp_path, claimed, data).join()
    assert tail.finish(tmp_path / claimed) == hashlib.sha256(data).hexdigest() != claimed


def test_no_temporary_file_or_another_file_gives_none(tmp_path: Path) -> None:
    data = os.urandom(1 << 16)
    etag = hashlib.sha256(data).hexdigest()
    (tmp_path / etag).write_bytes(data)  # already cached: nothing is downloaded
    assert TailHasher(tmp_path, etag, len(data)).start().finish(tmp_path / etag) is None
    other = tmp_path / "other"
    other.write_bytes(data)
    tail = TailHasher(tmp_path, "e" * 64, len(data)).start()
    _write_slowly(tmp_path, "e" * 64, data).join()
    assert tail.finish(other) is None  # not the inode that was followed


def test_short_or_rewritten_download_gives_none(tmp_path: Path) -> None:
    data = os.urandom(1 << 18)
    tail = TailHasher(tmp_path, "a" * 64, len(data) + 10).start()  # the writer stops early
    _write_slowly(tmp_path, "a" * 64, data).join()
    assert tail.finish(tmp_path / ("a" * 64)) is None
    tail = TailHasher(tmp_path, "b" * 64, len(data)).start()
    _write_slowly(tmp_path, "b" * 64, data).join()
    time.sleep(0.01)
    with open(tmp_path / ("b" * 64), "r+b") as fh:  # written again after it was hashed
        fh.write(b"X")
    assert tail.finish(tmp_path / ("b" * 64)) is None
    assert tail.finish(None) is None
