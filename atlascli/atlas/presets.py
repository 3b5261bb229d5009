"""Named atlas presets: the paper's Gemma Scope atlases in one command (`atlas atlas import --preset NAME`).

The SAE comes from sae-lens's pretrained release directory, the feature explanations from Neuronpedia's public
export for that SAE (cached); both need the network once, then work offline from the caches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from atlascli.errors import InputError, NotFoundError
from atlascli.registry import Artifact, Registry


@dataclass(frozen=True)
class Preset:
    """An online atlas: a sae-lens SAE plus its Neuronpedia explanations."""

    name: str
    """Registry name of the imported atlas (pass it as --atlas)."""
    release: str
    """sae-lens release."""
    sae_id: str
    """SAE id inside the release."""
    foundation: str
    """Foundation model (Hugging Face id) the SAE reads."""
    layer: int
    """Its layer."""
    site: str
    """Its site."""
    width: int
    """SAE features."""
    neuronpedia_model: str
    """Neuronpedia model id."""
    neuronpedia_sae: str
    """Neuronpedia SAE id."""
    description: str
    """One line."""

    @property
    def sae_ref(self) -> str:
        """``RELEASE:SAE_ID`` as :func:`atlascli.saes.load_sae` takes it."""
        return f"{self.release}:{self.sae_id}"


PRESETS: dict[str, Preset] = {
    "gemma-scope-2b-16k-l20": Preset(
        "gemma-scope-2b-16k-l20", "gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical", "google/gemma-2-2b",
        20, "resid", 16384, "gemma-2-2b", "20-gemmascope-res-16k",
        "Gemma Scope 16k, Gemma-2-2B layer 20 residual stream: the paper's main Concept Atlas (Tables 1-8)"),
    "gemma-scope-2b-65k-l20": Preset(
        "gemma-scope-2b-65k-l20", "gemma-scope-2b-pt-res-canonical", "layer_20/width_65k/canonical", "google/gemma-2-2b",
        20, "resid", 65536, "gemma-2-2b", "20-gemmascope-res-65k",
        "Gemma Scope 65k, Gemma-2-2B layer 20 residual stream: the paper's second atlas (Table 4)"),
}
"""Known presets."""


def get_preset(name: str) -> Preset:
    """A preset by name, with the list of known ones when unknown."""
    if name not in PRESETS:
        raise InputError(f"unknown atlas preset {name!r}", f"known: {', '.join(PRESETS)}")
    return PRESETS[name]


def import_preset(name: str, labels: Path | None = None, neuronpedia_url: str | None = None, refresh: bool = False,
                  embedder: str = "minilm-l6", registry: Registry | None = None) -> Artifact:
    """Import a preset atlas: explanations (given file, or Neuronpedia export, cached) + the sae-lens SAE."""
    from atlascli.atlas.store import import_atlas
    from atlascli.registry.neuronpedia import fetch_explanations, offline

    preset = get_preset(name)
    registry = registry or Registry()
    labels_path = labels or fetch_explanations(preset.neuronpedia_model, preset.neuronpedia_sae, neuronpedia_url, refresh)
    try:
        return import_atlas(preset.sae_ref, labels_path, preset.foundation, preset.layer, preset.site, name=preset.name,
                            embedder=embedder, registry=registry)
    except NotFoundError as exc:
        if "cannot load SAE" not in exc.message:
            raise
        need = (f"the SAE weights of sae-lens release {preset.release!r}, id {preset.sae_id!r} (Hugging Face repo "
                "google/gemma-scope-2b-pt-res)")
        if offline():
            raise NotFoundError(f"offline, and {need} are not in the Hugging Face cache",
                                f"go online once (unset HF_HUB_OFFLINE) and rerun `atlas atlas import --preset {name}`; "
                                f"the explanations are already cached at {labels_path}") from exc
        raise NotFoundError(f"cannot download {need}", "check the network and the sae-lens version") from exc
