"""Models as an artifact recorded them: a Hub model at the commit it was fitted on, any other source checked
against its recorded content hash, so an alignment is never applied to weights it was not fitted on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from atlascli.errors import InputError
from atlascli.extract import ExtractConfig, extract
from atlascli.models import ZOO, LoadedModel, load_model, local_revision

LOCAL_REVISIONS = ("gguf-sha256:", "local-")
"""Prefixes of the revisions atlas computes itself (a .gguf file's hash, a model folder's content hash): they name
content, not a Hub commit, so they are checked after loading rather than asked of the Hub."""


def hub_revision(name: str, revision: str | None) -> str | None:
    """The recorded ``revision`` to ask the Hub for: a commit of a Hub model; None for zoo models, local paths and
    revisions atlas computed itself (checked after loading by :func:`load_pinned`)."""
    if not revision or revision.startswith(LOCAL_REVISIONS) or name in ZOO or Path(name).expanduser().exists():
        return None
    return revision


def load_pinned(name: str, revision: str | None, made: str, device: str = "cpu", dtype: str = "float32",
                trust_remote_code: bool = False) -> LoadedModel:
    """``name`` as ``made`` (e.g. ``alignment X``) recorded it at ``revision``; a clear error when the weights have
    changed since (a refit is needed: the translation belongs to the old weights). No revision recorded (an
    imported atlas): the model as it is now."""
    lm = load_model(name, device, dtype, hub_revision(name, revision), trust_remote_code)
    check_revision(name, lm.revision, revision, made)
    return lm


def load_foundation(atlas: Any, device: str = "cpu", trust_remote_code: bool = False,
                    dtype: str = "float32") -> LoadedModel:
    """The foundation model of ``atlas`` (an :class:`atlascli.atlas.Atlas`) at the weights its SAE was trained on."""
    p = atlas.artifact.provenance
    return load_pinned(str(p["foundation"]), p.get("revision"), f"atlas {atlas.id}", device, dtype,
                       trust_remote_code=trust_remote_code)


def check_fitted_on(lm: LoadedModel, alignments: list[Any]) -> None:
    """Every alignment in ``alignments`` was fitted on the loaded weights (one refit layer must not be mixed with
    layers fitted on older weights)."""
    for art in alignments:
        rev = art.provenance.get("revision")
        if rev and rev != lm.revision:
            raise InputError(f"alignment {art.id} (layer {art.provenance.get('layer')}) was fitted on {lm.name} "
                             f"revision {rev[:28]}, not on the loaded {lm.revision[:28]}",
                             f"refit it with `atlas fit --subject {lm.name} --layers {art.provenance.get('layer')}`")


def one_revision(alignments: list[Any]) -> str | None:
    """The subject revision ``alignments`` were all fitted on; a clear error naming the odd one out when a layer was
    refit on other weights (they cannot be used together: one model is loaded, one test extraction made)."""
    first = next((a for a in alignments if a.provenance.get("revision")), None)
    if first is None:
        return None
    rev = first.provenance["revision"]
    for art in alignments:
        other = art.provenance.get("revision")
        if other and other != rev:
            p = art.provenance
            raise InputError(f"alignment {art.id} (layer {p.get('layer')}) was fitted on {p.get('subject')} revision "
                             f"{other[:28]}, alignment {first.id} on {rev[:28]}",
                             f"use layers fitted on one revision, or refit with `atlas fit --subject {p.get('subject')}"
                             f" --layers {p.get('layer')}`")
    return str(rev)


def check_unchanged(name: str, recorded: str | None, made: str) -> None:
    """Before any work: a zoo model, .gguf or local folder still hashes to ``recorded`` (cached file hashes, nothing
    loaded); Hub models are asked for their recorded commit instead (see :func:`hub_revision`)."""
    known = local_revision(name) if recorded else None
    if known is not None:
        check_revision(name, known, recorded, made)


def pinned_models(alignment: Any, atlas: Any, device: str = "cpu",
                  trust_remote_code: bool = False) -> dict[str, LoadedModel]:
    """The subject of ``alignment`` and the foundation of ``atlas``, each at the revision recorded for it
    (``trust_remote_code`` is the user's consent for this command: it applies to both)."""
    p = alignment.provenance
    return {"subject": load_pinned(str(p["subject"]), p.get("revision"), f"alignment {alignment.id}", device,
                                   trust_remote_code=trust_remote_code),
            "foundation": load_foundation(atlas, device, trust_remote_code)}


def extract_pinned(cfg: ExtractConfig, recorded: str | None, made: str, registry: Any,
                   progress: Any | None = None) -> Any:
    """``extract(cfg)`` of a model as ``made`` recorded it at ``recorded``: a Hub model at that commit; a zoo model,
    .gguf or folder checked by content hash before any work (and every result after), so activations of weights an
    alignment was not fitted on are never computed or mixed in."""
    check_unchanged(cfg.model, recorded, made)
    art = extract(replace(cfg, revision=hub_revision(cfg.model, recorded)), registry, progress)
    check_revision(cfg.model, art.provenance.get("revision"), recorded, made)
    return art


def check_revision(name: str, now: str | None, recorded: str | None, made: str) -> None:
    """``name`` found at revision ``now`` is the one ``made`` recorded (nothing recorded: anything goes)."""
    if recorded and now != recorded:
        raise InputError(f"{name} is now at revision {str(now)[:28]}, but {made} was made from {recorded[:28]}",
                         "restore the weights it was made from, or refit on the new ones with `atlas fit`")
