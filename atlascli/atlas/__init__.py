"""The Concept Atlas: a foundation model's SAE with a label per feature (paper 3.2)."""

from atlascli.atlas.build import AtlasBuildConfig, build_atlas
from atlascli.atlas.store import Atlas, import_atlas, read_labels_file, resolve_atlas

__all__ = ["Atlas", "AtlasBuildConfig", "build_atlas", "import_atlas", "read_labels_file", "resolve_atlas"]
