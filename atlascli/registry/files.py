"""Atomic, checksummed file writes (temp file + rename) used by every artifact."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from atlascli.errors import CorruptArtifactError

if TYPE_CHECKING:  # torch is imported only where tensors are read or written: `atlas --help` stays instant
    import torch


def _tmp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Atomically write a safetensors file, byte for byte the same for the same tensors and metadata."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata or {}))
        with open(tmp, "r+b") as fh:
            if metadata is not None and len(metadata) > 1:
                _sort_metadata(fh)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _sort_metadata(fh: BinaryIO) -> None:
    """Rewrite the header of the safetensors file open in ``fh`` with its ``__metadata__`` keys sorted.

    safetensors serialises the metadata from a Rust HashMap, whose iteration order is random per process and even per
    call: the same translation got a different header, so a different sha256, from one run to the next (found by the
    fault-injection reruns of `atlas fit`). The sorted header has the same keys and values, so it fits in the old
    one's length (the rest is padded with spaces, which the format allows) and the tensor data stays where it is."""
    n = int.from_bytes(fh.read(8), "little")
    header = json.loads(fh.read(n))
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) <= n:
        fh.seek(8)
        fh.write(text.ljust(n))
    else:  # never expected (same keys and values), but keep the file valid: move the data after the longer header
        text += b" " * (-len(text) % 8)
        fh.seek(8 + n)
        data = fh.read()
        fh.seek(0)
        fh.write(len(text).to_bytes(8, "little") + text + data)
        fh.truncate()
    fh.flush()


def read_json(path: Path) -> Any:
    """Read a JSON file, turning a truncated or invalid file into a clear error."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptArtifactError(
            f"{path} is not valid JSON ({exc.__class__.__name__})",
            "delete the artifact and create it again",
        ) from exc


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a truncated or corrupt file into a clear error."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for bad headers
        raise CorruptArtifactError(
            f"{path} is not a readable safetensors file ({exc})",
            "delete the artifact and create it again",
        ) from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so memory stays flat."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of the canonical JSON form of ``obj`` (key-sorted, compact)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
