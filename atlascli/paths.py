"""Where atlas keeps its files."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_REGISTRY = Path(".cache") / "atlas-home"
"""A checkout's own registry (what `make demo` fills), found from any folder inside the checkout."""


def project_registry(start: Path | None = None) -> Path | None:
    """The nearest ``.cache/atlas-home`` holding artifacts, from ``start`` (default: cwd) upwards, or None."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / PROJECT_REGISTRY
        if (candidate / "artifacts").is_dir():
            return candidate
    return None


def atlas_home_source() -> tuple[Path, str]:
    """The registry root and why it was chosen: ``$ATLAS_HOME``, the checkout's registry, or ``~/.cache/atlas``."""
    env = os.environ.get("ATLAS_HOME")
    if env:
        return Path(env).expanduser(), "$ATLAS_HOME"
    project = project_registry()
    if project is not None:
        return project, "this checkout's registry (make demo)"
    return Path.home() / ".cache" / "atlas", "default"


def atlas_home() -> Path:
    """Root of the artifact registry and model cache: ``$ATLAS_HOME``, else the registry of the checkout
    the command runs in (``.cache/atlas-home``, filled by `make demo`), else ``~/.cache/atlas``."""
    root = atlas_home_source()[0]
    root.mkdir(parents=True, exist_ok=True)
    return root


def model_cache_dir() -> Path:
    """Folder holding dequantised copies of .gguf models (safetensors + config + tokenizer)."""
    env = os.environ.get("ATLAS_MODEL_CACHE")
    path = Path(env).expanduser() if env else atlas_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
