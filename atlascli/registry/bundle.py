"""Aligned-atlas bundles on the Hub: choose what to publish, publish it with a model card, pull it back safely.

A bundle is one Hub model repo holding ``README.md`` (the card), ``atlas-bundle.json`` (the index) and one folder
``<kind>/<id>/`` per artifact, exactly as in the registry, each with its ``manifest.json``. It holds the atlas
(SAE, labels, label embeddings), the selected alignments, the datasets they refer to (small JSON: the test
split gives `atlas search` its example sentences), the subject's test-split activations at the aligned layers
when the registry has them (so search needs no extraction), named concepts and evaluation reports. The
alignments' training activations are not shipped: nothing reads them after fitting.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlascli import __version__
from atlascli.errors import CorruptArtifactError, InputError, NotFoundError
from atlascli.paths import atlas_home
from atlascli.registry import hub
from atlascli.registry.files import atomic_write_json, read_json, sha256_file
from atlascli.registry.store import KINDS, MANIFEST, SCHEMA_VERSION, Artifact, Registry
from atlascli.registry.untrusted import BUNDLE_INDEX, RemoteEntry, check_id, check_index, check_manifest, read_json_file

ORDER = {k: i for i, k in enumerate(("dataset", "atlas", "activations", "alignment", "concepts", "report"))}
Progress = Callable[[str, int, int], None]


@dataclass
class BundlePlan:
    """What one publish uploads."""

    subject: str
    """The subject model, as the alignments name it."""
    atlas: Artifact
    """The Concept Atlas the alignments translate into."""
    alignments: list[Artifact]
    """Selected alignments (latest per layer, site and method)."""
    artifacts: list[Artifact] = field(default_factory=list)
    """Everything uploaded, parents first."""
    reports: list[Artifact] = field(default_factory=list)
    """Evaluation reports of the selected alignments."""


def _latest_per_key(arts: list[Artifact]) -> list[Artifact]:
    keep: dict[tuple[Any, ...], Artifact] = {}
    for a in arts:  # oldest first: later ones win
        p = a.provenance
        keep[(p.get("layer"), p.get("site"), p.get("method"))] = a
    return sorted(keep.values(), key=lambda a: (a.provenance.get("layer"), str(a.provenance.get("method"))))


def plan_bundle(registry: Registry, subject: str, layers: tuple[int, ...] | None = None,
                methods: list[str] | None = None, atlas_ref: str | None = None, test_activations: bool = True) -> BundlePlan:
    """Select the alignments of ``subject`` (optionally only some layers / methods / one atlas) and their closure."""
    from atlascli.activations import find_covering

    all_al = registry.list("alignment")
    found = [a for a in all_al if a.provenance.get("subject") == subject]
    if not found:
        have = sorted({str(a.provenance.get("subject")) for a in all_al})
        raise NotFoundError(f"no alignment of subject {subject!r} in the registry",
                            f"fit one with `atlas fit`; subjects with alignments: {have[:6] or 'none'}")
    if layers:
        found = [a for a in found if int(a.provenance["layer"]) in layers]
    if methods:
        found = [a for a in found if a.provenance.get("method") in methods]
    if atlas_ref:
        from atlascli.atlas.store import resolve_atlas

        atlas_id = resolve_atlas(atlas_ref, registry).id
        found = [a for a in found if a.provenance.get("atlas") == atlas_id]
    if not found:
        raise NotFoundError(f"no alignment of {subject} matches the given --layers/--methods/--atlas",
                            "list them with `atlas registry ls alignment`")
    atlases = sorted({str(a.provenance.get("atlas")) for a in found})
    if len(atlases) > 1:
        raise InputError(f"the alignments of {subject} use {len(atlases)} atlases ({', '.join(atlases[:3])})",
                         "pick one with --atlas")
    atlas = registry.get(atlases[0], "atlas")
    aligns = _latest_per_key(found)
    chosen: dict[str, Artifact] = {atlas.id: atlas, **{a.id: a for a in aligns}}
    for ref in [*atlas.parents, *[a.provenance.get("dataset") for a in aligns]]:
        if isinstance(ref, str) and registry.exists(ref, "dataset"):
            chosen.setdefault(ref, registry.get(ref, "dataset"))
    if test_activations:
        for a in aligns:
            p = a.provenance
            ds = chosen.get(p.get("dataset", ""))
            if ds is None:
                continue
            n = min(5000, int(ds.provenance.get("n_test", 0) or 0))
            acts = find_covering(registry, subject, p["dataset_fingerprint"], "test", int(p["layer"]), n,
                                 site=p["site"], revision=p.get("revision"))
            if acts is not None and all(q in chosen for q in acts.parents):
                chosen.setdefault(acts.id, acts)
    for c in registry.list("concepts"):
        if atlas.id in c.parents:
            chosen[c.id] = c
    reports = [r for r in registry.list("report")
               if r.provenance.get("subject") == subject and set(r.parents) <= set(chosen)]
    chosen.update({r.id: r for r in reports})
    arts = sorted(chosen.values(), key=lambda a: (ORDER[a.kind], a.manifest.get("created", ""), a.id))
    return BundlePlan(subject, atlas, aligns, arts, reports)


def bundle_index(plan: BundlePlan, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``atlas-bundle.json`` of a plan (no local paths, no tokens)."""
    from atlascli.modelcard import headline

    ap = plan.atlas.provenance
    datasets = sorted({str(x) for a in plan.artifacts if a.kind == "dataset"
                       for x in (a.provenance.get("inputs") or []) if isinstance(x, str)})
    return {"format": "atlas-bundle", "schema_version": SCHEMA_VERSION, "atlas_version": __version__,
            "subject": plan.subject, "foundation": ap.get("foundation"), "atlas": plan.atlas.id,
            "layers": sorted({int(a.provenance["layer"]) for a in plan.alignments}),
            "methods": sorted({str(a.provenance["method"]) for a in plan.alignments}),
            "site": plan.alignments[0].provenance.get("site"), "datasets": datasets, "headline": headline(reports),
            "artifacts": [{"kind": a.kind, "id": a.id, "bytes": sum(f["bytes"] for f in a.manifest["files"].values())}
                          for a in plan.artifacts]}


def verify_all(arts: list[Artifact], workers: int = 4) -> None:
    """Check every file of every artifact (threads: hashing releases the GIL); raise on the first mismatch."""
    jobs = [(a, n) for a in arts for n in a.manifest["files"]]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for fut in [pool.submit(a.verify, [n]) for a, n in jobs]:
            fut.result()


@dataclass
class PublishResult:
    """What ``atlas publish`` did."""

    repo: str
    """Hub repo id."""
    commit: str
    """The commit made (or the current one when nothing changed)."""
    url: str
    """Commit URL."""
    artifacts: list[dict[str, str]]
    """Kind and id of each artifact in the bundle."""
    bytes: int
    """Total size of the bundle's files."""


def publish(plan: BundlePlan, repo_id: str, private: bool = False, license_id: str = "apache-2.0",
            token: str | None = None) -> PublishResult:
    """Verify every artifact, then upload the bundle and its card in one commit (unchanged files are skipped)."""
    from atlascli.modelcard import render_card

    hub.require_token(token)
    verify_all(plan.artifacts)
    reports = [read_json(r.file("report.json")) for r in plan.reports if "report.json" in r.manifest["files"]]
    index = bundle_index(plan, reports)
    files: dict[str, Path | bytes] = {}
    sha: dict[str, str] = {}
    for a in plan.artifacts:
        for name, meta in a.manifest["files"].items():
            files[f"{a.kind}/{a.id}/{name}"] = a.path / name
            sha[f"{a.kind}/{a.id}/{name}"] = meta["sha256"]
        files[f"{a.kind}/{a.id}/{MANIFEST}"] = a.path / MANIFEST
    files[BUNDLE_INDEX] = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
    files["README.md"] = render_card(repo_id, index, plan.atlas, plan.alignments, reports, license_id).encode()
    owned = (*[f"{k}/" for k in KINDS], BUNDLE_INDEX)
    commit, url = hub.commit_bundle(repo_id, files, sha, private, f"atlas publish: {plan.subject} -> {plan.atlas.id}",
                                    owned, token)
    return PublishResult(repo_id, commit, url, [{"kind": a.kind, "id": a.id} for a in plan.artifacts],
                         sum(m["bytes"] for a in plan.artifacts for m in a.manifest["files"].values()))


# ----------------------------------------------------------------------------- pull


@dataclass
class PullResult:
    """What ``atlas pull`` did."""

    repo: str
    """Hub repo id."""
    commit: str
    """The exact commit pulled."""
    subject: str
    """Subject model of the bundle."""
    atlas: str
    """Atlas id."""
    added: list[dict[str, str]]
    """Artifacts added to the registry."""
    present: list[dict[str, str]]
    """Artifacts that were already there, identical."""
    bytes: int
    """Bytes downloaded and checked."""


def _required_refs(manifest: dict[str, Any]) -> list[str]:
    """Ids an artifact cannot be used without (an alignment's training activations are optional)."""
    prov = manifest.get("provenance", {})
    if manifest["kind"] == "alignment":
        return [str(prov[k]) for k in ("atlas", "dataset") if isinstance(prov.get(k), str)]
    return [str(p) for p in manifest.get("parents", [])]


def _place(src: Path, dest: Path) -> None:
    """Hard-link a downloaded blob into the staging folder (no copy), or copy it across filesystems."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    real = src.resolve()
    if not real.is_file():
        raise CorruptArtifactError(f"{dest.name}: the download is not a regular file", "pull again")
    try:
        os.link(real, dest)
    except OSError:
        shutil.copyfile(real, dest)


def pull(repo_id: str, revision: str | None = None, registry: Registry | None = None,
         progress: Progress | None = None) -> PullResult:
    """Download a bundle, check every id, name, size, checksum and schema version, and only then add all of its
    artifacts to the registry at once. On any failure the registry is unchanged and bad downloads are removed."""
    registry = registry or Registry()
    commit, sizes = hub.resolve_commit(repo_id, revision)
    if BUNDLE_INDEX not in sizes:
        raise NotFoundError(f"{repo_id} is not an atlas bundle (it has no {BUNDLE_INDEX})",
                            "a single artifact pushed with `atlas registry push` is pulled with `atlas registry pull REPO ID`")
    got: dict[str, Path] = {}
    hub.download_files(repo_id, commit, [BUNDLE_INDEX], lambda n, p, _: got.__setitem__(n, p))
    index, entries = check_index(read_json_file(got[BUNDLE_INDEX], BUNDLE_INDEX))
    names = [f"{e.folder}/{MANIFEST}" for e in entries]
    missing = [n for n in names if n not in sizes]
    if missing:
        raise CorruptArtifactError(f"{repo_id}: the bundle lists {missing[0]} but the repo has no such file",
                                   "ask the publisher to republish")
    hub.download_files(repo_id, commit, names, lambda n, p, _: got.__setitem__(n, p))
    manifests = {e.id: check_manifest(read_json_file(got[f"{e.folder}/{MANIFEST}"], e.folder), e) for e in entries}
    todo: list[RemoteEntry] = []
    present: list[dict[str, str]] = []
    for e in entries:
        if registry.exists(e.id, e.kind):
            if registry.get(e.id, e.kind).manifest != manifests[e.id]:
                raise InputError(f"{e.kind} {e.id} is already in the registry with different content",
                                 f"remove the local one with `atlas registry rm {e.id}` to take the published one")
            present.append({"kind": e.kind, "id": e.id})
        else:
            todo.append(e)
        for name, meta in manifests[e.id]["files"].items():
            remote = sizes.get(f"{e.folder}/{name}")
            if remote is None or remote != meta["bytes"]:
                raise CorruptArtifactError(f"{repo_id}: {e.folder}/{name} is {remote} bytes on the Hub, its manifest "
                                           f"says {meta['bytes']}", "the bundle was tampered with or is incomplete")
    known = {e.id for e in entries}
    for e in entries:
        for ref in _required_refs(manifests[e.id]):
            check_id(ref, e.folder)
            if ref not in known and not registry.exists(ref):
                raise CorruptArtifactError(f"{repo_id}: {e.id} needs {ref}, which is neither in the bundle nor in the "
                                           "registry", "ask the publisher to republish the whole bundle")
    jobs = {f"{e.folder}/{n}": (e, n, m) for e in todo for n, m in manifests[e.id]["files"].items()}
    total = sum(m["bytes"] for _, _, m in jobs.values())
    incoming = registry.root / f".incoming-{uuid.uuid4().hex[:12]}"
    done = [0]
    lock = threading.Lock()

    def check(name: str, path: Path, streamed: str | None) -> None:
        e, rel, meta = jobs[name]
        dest = incoming / e.kind / e.id / rel
        _place(path, dest)
        if dest.stat().st_size != meta["bytes"] or (streamed != meta["sha256"] and sha256_file(dest) != meta["sha256"]):
            hub.drop_cached(path)
            raise CorruptArtifactError(f"{repo_id}: {name} does not match its checksum (tampered or corrupted); "
                                       "the download was removed and the registry left unchanged", "pull again later, "
                                       "or ask the publisher to republish")
        with lock:
            done[0] += meta["bytes"]
            if progress:
                progress("download + verify", done[0], total)

    moved: list[Path] = []
    try:
        # LFS blobs are cached under their sha256, so the digest each file should have names its download
        hub.download_files(repo_id, commit, list(jobs), check,
                           expect={name: (m["sha256"], m["bytes"]) for name, (_, _, m) in jobs.items()})
        for e in todo:
            folder = incoming / e.kind / e.id
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(got[f"{e.folder}/{MANIFEST}"].resolve(), folder / MANIFEST)
        for e in sorted(todo, key=lambda x: ORDER[x.kind]):  # parents first; all checked already
            final = registry.kind_dir(e.kind) / e.id
            if not final.exists():
                (incoming / e.kind / e.id).rename(final)
                moved.append(final)
    except BaseException:
        for path in moved:
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    _record(repo_id, revision, commit, entries)
    return PullResult(repo_id, commit, str(index.get("subject")), str(index.get("atlas")),
                      [{"kind": e.kind, "id": e.id} for e in todo], present, total)


def _record(repo_id: str, revision: str | None, commit: str, entries: list[RemoteEntry]) -> None:
    """Remember where pulled artifacts came from: ``$ATLAS_HOME/hub/pulls.json`` (repo, commit, ids; no token)."""
    path = atlas_home() / "hub" / "pulls.json"
    records = read_json(path) if path.exists() else []
    records.append({"repo": repo_id, "revision": revision, "commit": commit, "endpoint": hub.endpoint(),
                    "pulled": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "artifacts": [{"kind": e.kind, "id": e.id} for e in entries]})
    atomic_write_json(path, records)


def pulled_from(artifact_id: str) -> dict[str, Any] | None:
    """The latest pull record that brought ``artifact_id``, or None."""
    path = atlas_home() / "hub" / "pulls.json"
    for rec in reversed(read_json(path) if path.exists() else []):
        if any(a.get("id") == artifact_id for a in rec.get("artifacts", [])):
            return dict(rec)
    return None


def find_published(subject: str | None = None, foundation: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Published aligned atlases (Hub model search by the ``atlas-alignment`` tag), read from their cards."""
    from atlascli.modelcard import TAGS

    rows = []
    for m in hub.list_bundles(TAGS[0], limit):
        block = m["card"].get("atlas_alignment") or {}
        subj, found = block.get("subject") or m["card"].get("base_model"), block.get("foundation")
        if (subject and subj != subject) or (foundation and found != foundation):
            continue
        rows.append({"repo": m["id"], "subject": subj, "foundation": found, "atlas": block.get("atlas"),
                     "layers": block.get("layers") or [], "methods": block.get("methods") or [],
                     "metrics": block.get("headline") or {}, "commit": m["sha"], "last_modified": m["last_modified"]})
    return rows
