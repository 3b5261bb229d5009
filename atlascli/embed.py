"""Sentence embedder for labels, queries and judges (default: all-MiniLM-L6-v2 from its PyPI package)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from atlascli.errors import NotFoundError
from atlascli.models import ZOO, package_dir


@lru_cache(maxsize=2)
def load_embedder(name: str = "minilm-l6", device: str = "cpu") -> Any:
    """A SentenceTransformer from the zoo (offline) or a local folder / hub id."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    if name in ZOO:
        entry = ZOO[name]
        folder = package_dir(entry.package, entry.pip)
        import importlib

        mod = importlib.import_module(entry.package)
        path = str(mod.get_model_path()) if hasattr(mod, "get_model_path") else str(folder / "model")
    else:
        path = name
    try:
        return SentenceTransformer(path, device=device)
    except Exception as exc:
        raise NotFoundError(f"cannot load embedder {name!r} ({exc.__class__.__name__})",
                            "use minilm-l6 (offline) or a local sentence-transformers folder") from exc


def embed(texts: list[str], name: str = "minilm-l6", batch_size: int = 128) -> torch.Tensor:
    """L2-normalised embeddings [len(texts), dim] float32."""
    model = load_embedder(name)
    if not texts:
        dim = int(model.get_sentence_embedding_dimension())
        return torch.empty(0, dim)
    out = model.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                       show_progress_bar=False)
    return out.float().cpu()


def embed_query(text: str, name: str = "minilm-l6") -> torch.Tensor:
    """The embedding of one query, cached on disk (``$ATLAS_HOME/cache/embed``) so a repeated search does not
    load the embedder: raw float32 bytes, written atomically, keyed by embedder and text."""
    import hashlib

    import numpy as np

    from atlascli.paths import atlas_home
    from atlascli.registry.files import atomic_write_bytes

    key = hashlib.sha256(f"{name}\0{text}".encode()).hexdigest()[:32]
    path = atlas_home() / "cache" / "embed" / f"{key}.f32"
    if path.exists():
        vec = np.fromfile(path, dtype=np.float32)
        if vec.size and np.isfinite(vec).all():
            return torch.from_numpy(vec.copy())
    out = embed([text], name)[0]
    atomic_write_bytes(path, out.numpy().astype(np.float32).tobytes())
    return out
