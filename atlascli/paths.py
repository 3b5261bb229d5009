"""Where atlas keeps its files."""

from __future__ import annotations

import os
from pathlib import Path


def atlas_home() -> Path:
    """Root of the artifact registry and model cache: ``$ATLAS_HOME`` or ``~/.cache/atlas``."""
    env = os.environ.get("ATLAS_HOME")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "atlas"
    root.mkdir(parents=True, exist_ok=True)
    return root


def model_cache_dir() -> Path:
    """Folder holding dequantised copies of .gguf models (safetensors + config + tokenizer)."""
    env = os.environ.get("ATLAS_MODEL_CACHE")
    path = Path(env).expanduser() if env else atlas_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
