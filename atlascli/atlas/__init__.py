"""The Concept Atlas: a foundation model's SAE with a label per feature (paper 3.2).

Names load lazily (building pulls in torch and sae-lens; resolving an atlas does not)."""

from __future__ import annotations

from typing import Any

from atlascli.atlas.store import Atlas, import_atlas, read_labels_file, resolve_atlas

__all__ = ["Atlas", "AtlasBuildConfig", "build_atlas", "import_atlas", "read_labels_file", "resolve_atlas"]


def __getattr__(name: str) -> Any:
    if name in ("AtlasBuildConfig", "build_atlas"):
        from atlascli.atlas import build

        return getattr(build, name)
    raise AttributeError(f"module 'atlascli.atlas' has no attribute {name!r}")
