"""Sparse autoencoders in sae-lens format: loading by local folder, registry atlas or release."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atlascli.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from atlascli.registry import Artifact, Registry


@dataclass(frozen=True)
class SaeRef:
    """What an SAE reference names, resolved without loading any weights."""

    source: str
    """``local`` (a sae-lens folder), ``atlas`` (a registry atlas) or ``sae-lens-release``."""
    name: str
    """What provenance records: the folder's resolved path, the atlas id, or ``RELEASE:SAE_ID``."""
    folder: Path | None = None
    """The sae-lens folder (``cfg.json`` + weights): the local one or the atlas's ``sae/``; None for a release."""
    atlas: Artifact | None = None
    """The atlas artifact, for ``atlas``."""

    @property
    def provenance(self) -> dict[str, Any]:
        """``sae`` and ``sae_source``, as extractions record them."""
        return {"sae": self.name, "sae_source": self.source}


def resolve_sae_ref(ref: str, registry: Registry | None = None) -> SaeRef:
    """Resolve ``ref`` in one order for every caller: a local sae-lens folder, else an atlas id (or prefix) of the
    registry, else ``RELEASE:SAE_ID``; a clear error otherwise."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "cfg.json").exists():
            raise NotFoundError(f"{path} is not a sae-lens SAE folder (no cfg.json)", "point at a saved SAE")
        return SaeRef("local", str(path.resolve()), path.resolve())
    from atlascli.registry import Registry

    try:
        art = (registry or Registry()).get(ref, "atlas")
    except NotFoundError:
        if ":" in ref:
            return SaeRef("sae-lens-release", ref)
        raise InputError(f"cannot resolve SAE {ref!r}", "give a sae-lens folder, an atlas id or RELEASE:SAE_ID") from None
    return SaeRef("atlas", art.id, art.path / "sae", art)


def load_sae(ref: str, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load an SAE; returns it and a provenance dict.

    ``ref`` is a local sae-lens folder (``cfg.json`` + ``sae_weights.safetensors``), an atlas
    artifact id whose folder holds ``sae/``, or ``RELEASE:SAE_ID`` for a sae-lens pretrained
    release (online, e.g. ``gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical``).
    """
    from sae_lens import SAE

    found = resolve_sae_ref(ref)
    if found.atlas is not None:
        return load_atlas_sae(found.atlas, device), found.provenance
    if found.folder is not None:
        return SAE.load_from_disk(str(found.folder), device=device), found.provenance
    release, sae_id = ref.split(":", 1)
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
    except Exception as exc:
        raise NotFoundError(f"cannot load SAE {sae_id!r} of release {release!r} ({exc.__class__.__name__})",
                            "check the names (sae-lens pretrained_saes.yaml) and the network") from exc
    sae = sae[0] if isinstance(sae, tuple) else sae
    return sae, found.provenance


def load_atlas_sae(artifact: Artifact, device: str = "cpu") -> Any:
    """The SAE stored in an atlas artifact's ``sae/`` folder, its files checked against the manifest first
    (hashes cached by size and times, so a warm load only stats them)."""
    from sae_lens import SAE

    names = artifact.files_under("sae/")
    if not names:
        raise NotFoundError(f"atlas {artifact.id} holds no SAE weights", "it was imported without them; rebuild it")
    artifact.verify_cached(names)
    return SAE.load_from_disk(str(artifact.path / "sae"), device=device)
