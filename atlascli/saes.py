"""Sparse autoencoders in sae-lens format: loading by local folder, registry atlas or release."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from atlascli.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from atlascli.registry import Artifact


def load_sae(ref: str, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load an SAE; returns it and a provenance dict.

    ``ref`` is a local sae-lens folder (``cfg.json`` + ``sae_weights.safetensors``), an atlas
    artifact id whose folder holds ``sae/``, or ``RELEASE:SAE_ID`` for a sae-lens pretrained
    release (online, e.g. ``gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical``).
    """
    from sae_lens import SAE

    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "cfg.json").exists():
            raise NotFoundError(f"{path} is not a sae-lens SAE folder (no cfg.json)", "point at a saved SAE")
        return SAE.load_from_disk(str(path), device=device), {"sae": str(path.resolve()), "sae_source": "local"}
    from atlascli.registry import Registry

    reg = Registry()
    if reg.exists(ref, "atlas") or any(a.id.startswith(ref) for a in reg.list("atlas")):
        art = reg.get(ref, "atlas")
        return load_atlas_sae(art, device), {"sae": art.id, "sae_source": "atlas"}
    if ":" in ref:
        release, sae_id = ref.split(":", 1)
        try:
            sae = SAE.from_pretrained(release, sae_id, device=device)
        except Exception as exc:
            raise NotFoundError(f"cannot load SAE {sae_id!r} of release {release!r} ({exc.__class__.__name__})",
                                "check the names (sae-lens pretrained_saes.yaml) and the network") from exc
        sae = sae[0] if isinstance(sae, tuple) else sae
        return sae, {"sae": ref, "sae_source": "sae-lens-release"}
    raise InputError(f"cannot resolve SAE {ref!r}", "give a sae-lens folder, an atlas id or RELEASE:SAE_ID")


def load_atlas_sae(artifact: Artifact, device: str = "cpu") -> Any:
    """The SAE stored in an atlas artifact's ``sae/`` folder, its files checked against the manifest first
    (hashes cached by size and times, so a warm load only stats them)."""
    from sae_lens import SAE

    names = artifact.files_under("sae/")
    if not names:
        raise NotFoundError(f"atlas {artifact.id} holds no SAE weights", "it was imported without them; rebuild it")
    artifact.verify_cached(names)
    return SAE.load_from_disk(str(artifact.path / "sae"), device=device)
