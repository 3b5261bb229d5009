"""The only module that touches the network: Hugging Face Hub models, datasets and artifacts.

With ``HF_HUB_OFFLINE=1`` (as in the tests) everything here fails fast with a clear error unless
the files are already in the local Hugging Face cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from atlascli.errors import AtlasError, CorruptArtifactError, InputError, NotFoundError
from atlascli.registry.store import MANIFEST, Artifact, Registry

MODEL_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]


def _offline_hint() -> str:
    return ("use a zoo name (atlas models), a local folder, or go online "
            "(unset HF_HUB_OFFLINE; gated models also need `hf auth login`)")


def snapshot_model(repo_id: str, revision: str | None = None) -> tuple[Path, str]:
    """Download (or find in the HF cache) a model's weights; returns the folder and commit hash."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_PATTERNS))
    except HFValidationError as exc:
        raise NotFoundError(f"unknown model {repo_id!r}: not a zoo name, a local path or a hub id",
                            _offline_hint()) from exc
    except Exception as exc:  # offline, 404, gated, network errors
        raise NotFoundError(f"unknown model {repo_id!r}: not a zoo name, a local path, or a Hugging Face model "
                            f"that can be fetched now ({exc.__class__.__name__})", _offline_hint()) from exc
    if not any(folder.glob("*.safetensors")):
        raise NotFoundError(f"{repo_id} has no safetensors weights", "atlas loads safetensors only (no pickle)")
    return folder, folder.name


def load_hub_dataset(dataset_id: str, split: str) -> Iterator[dict[str, Any]]:
    """Stream the records of a Hugging Face dataset (e.g. ``monology/pile-uncopyrighted``)."""
    try:
        from datasets import load_dataset

        ds = load_dataset(dataset_id, split=split, streaming=True)
        yield from ds
    except Exception as exc:
        raise NotFoundError(f"cannot read dataset {dataset_id!r} ({exc.__class__.__name__}: {exc})",
                            "give a local .txt/.jsonl/.parquet file, or go online") from exc


def push_artifact(artifact: Artifact, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload an artifact folder to ``repo_id/<artifact id>/`` on the Hub (verified first); returns its URL."""
    artifact.verify()
    api = hub_api(require_token(token))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(artifact.path), path_in_repo=artifact.id, repo_id=repo_id,
                          commit_message=f"atlas: add {artifact.kind} {artifact.id}")
    except Exception as exc:
        raise hub_error(exc, repo_id, "push to") from exc
    return f"{api.endpoint}/{repo_id}/tree/main/{artifact.id}"


def pull_artifact(repo_id: str, artifact_id: str, registry: Registry | None = None,
                  revision: str | None = None) -> Artifact:
    """Download ``repo_id/<artifact_id>/``, verify every checksum, then add it to the registry."""
    from huggingface_hub import snapshot_download

    from atlascli.registry.untrusted import check_id

    check_id(artifact_id, "artifact id")
    registry = registry or Registry()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            snapshot_download(repo_id, revision=revision, allow_patterns=[f"{artifact_id}/*"], local_dir=tmp,
                              endpoint=endpoint(), cache_dir=cache_dir())
        except Exception as exc:
            raise NotFoundError(f"cannot pull {artifact_id} from {repo_id} ({exc.__class__.__name__})",
                                "check the repo id, the network and `hf auth login`") from exc
        src = Path(tmp) / artifact_id
        if not (src / MANIFEST).exists():
            raise NotFoundError(f"{repo_id} has no artifact {artifact_id}", "list the repo's folders on the Hub")
        return import_folder(src, registry)


def import_folder(src: Path, registry: Registry) -> Artifact:
    """Copy an artifact folder into the registry after checking its manifest and checksums."""
    from atlascli.registry.untrusted import RemoteEntry, check_id, check_kind, check_manifest, no_symlinks, read_json_file

    no_symlinks(src, src)
    manifest = read_json_file(src / MANIFEST, f"{src.name}/{MANIFEST}")
    if not isinstance(manifest, dict):
        raise CorruptArtifactError(f"{src}/{MANIFEST} is not a manifest", "the folder is not an artifact")
    entry = RemoteEntry(check_kind(manifest.get("kind"), str(src)), check_id(manifest.get("id"), str(src)))
    check_manifest(manifest, entry)
    probe = Artifact(entry.id, entry.kind, src, manifest)
    probe.verify()
    stage = registry.stage(probe.kind, probe.id)
    try:
        shutil.rmtree(stage.path)
        shutil.copytree(src, stage.path)
        final = registry.kind_dir(probe.kind) / probe.id
        if final.exists():
            shutil.rmtree(stage.path)
        else:
            stage.path.rename(final)
    finally:
        stage.release()
    art = registry.get(probe.id, probe.kind)
    if art.manifest != manifest:
        raise CorruptArtifactError(f"{probe.id} changed while importing", "pull it again")
    return art


# ----------------------------------------------------------------------------- bundles (atlas publish / pull / hub ls)

TRANSIENT_TRIES = 4
"""Attempts for one Hub call that fails with a 5xx, a timeout or a cut connection (downloads resume)."""


def endpoint() -> str | None:
    """``$HF_ENDPOINT`` read now (huggingface_hub reads it once at import); None means the public Hub."""
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None


def cache_dir() -> str | None:
    """The Hugging Face cache folder from the environment as it is now (``HF_HUB_CACHE`` or ``HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None


def token_or_none(token: str | None = None) -> str | None:
    """The token to use: the argument, ``$HF_TOKEN``, or the one saved by ``hf auth login``."""
    from huggingface_hub import get_token

    return token or os.environ.get("HF_TOKEN") or get_token()


def require_token(token: str | None = None) -> str:
    """A token, or a clear error saying how to get one (publishing needs write access)."""
    found = token_or_none(token)
    if not found:
        raise InputError("no Hugging Face token: publishing needs a token with write access",
                         "run `hf auth login` or set HF_TOKEN")
    return found


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for offline mode (huggingface_hub's truthy values)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_resolvable() -> None:
    """Fail in milliseconds, not after huggingface_hub's ~25 s of backoff, when the Hub's host name does not resolve
    (no network). Skipped in offline mode (huggingface_hub says so itself) and behind a proxy (which resolves)."""
    import socket
    from urllib.parse import urlparse
    from urllib.request import getproxies, proxy_bypass

    if hub_offline():
        return
    url = endpoint() or "https://huggingface.co"
    try:
        parsed = urlparse(url if "://" in url else f"https://{url}")
        host, port = parsed.hostname, parsed.port
    except ValueError as exc:
        raise InputError(f"HF_ENDPOINT {url!r} is not a URL ({exc})",
                         "e.g. HF_ENDPOINT=https://hub.example.org") from exc
    if not host:
        raise InputError(f"HF_ENDPOINT {url!r} names no host", "e.g. HF_ENDPOINT=https://hub.example.org")
    proxies = getproxies()
    if (proxies.get("https") or proxies.get("http") or proxies.get("all")) and not proxy_bypass(host):
        return  # the proxy resolves names
    try:
        socket.getaddrinfo(host, port or (443 if parsed.scheme == "https" else 80))
    except (OSError, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise NotFoundError(f"cannot reach the Hugging Face Hub: {host} does not resolve ({why})",
                            "check the network (or HF_ENDPOINT); what is already in the registry works offline"
                            ) from exc


def hub_api(token: str | None = None) -> Any:
    """An ``HfApi`` on the endpoint configured now (huggingface_hub's own tqdm bars off: the CLI shows progress).
    Refuses at once when the Hub's host does not resolve (:func:`check_resolvable`)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import disable_progress_bars

    check_resolvable()
    disable_progress_bars()

    return HfApi(endpoint=endpoint(), token=token_or_none(token), library_name="atlascli")


def hub_error(exc: BaseException, repo_id: str, action: str, revision: str | None = None) -> AtlasError:
    """One clear AtlasError for a failed Hub call (never the token, never a traceback)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, AtlasError):
        return exc
    if isinstance(exc, RevisionNotFoundError):
        return NotFoundError(f"{repo_id} has no revision {revision!r}", "give a branch, tag or commit of the repo")
    if isinstance(exc, RepositoryNotFoundError):
        return NotFoundError(f"Hub repo {repo_id} not found (or it is private and your token cannot read it)",
                             "check the name with `atlas hub ls`; private repos need `hf auth login`")
    if isinstance(exc, EntryNotFoundError):
        return CorruptArtifactError(f"{repo_id}: a file its bundle lists is missing", "ask the publisher to republish")
    if isinstance(exc, OfflineModeIsEnabled):
        return NotFoundError(f"cannot {action} {repo_id}: Hugging Face is set offline", "unset HF_HUB_OFFLINE")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return InputError(f"the Hub refused to {action} {repo_id} (HTTP {status})",
                          "use a token with write access to that namespace: `hf auth login` or HF_TOKEN")
    what = f"HTTP {status}" if status else exc.__class__.__name__
    return NotFoundError(f"cannot {action} {repo_id} ({what})", "check the network and the repo id, then retry")


def _transient(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError):
        return status is not None and status >= 500
    name = exc.__class__.__name__
    return name in ("ConnectError", "ReadTimeout", "ConnectTimeout", "RemoteProtocolError", "ReadError") or (
        isinstance(exc, OSError) and "Consistency check failed" in str(exc))


def with_retries(call: Callable[[], Any], tries: int = TRANSIENT_TRIES) -> Any:
    """Run a Hub call, retrying (bounded, with backoff) on 5xx / cut connections; partial downloads resume."""
    for attempt in range(tries):
        try:
            return call()
        except Exception as exc:
            if attempt == tries - 1 or not _transient(exc):
                raise
            time.sleep(min(0.2 * 2**attempt, 2.0))
    raise AssertionError("unreachable")


def resolve_commit(repo_id: str, revision: str | None) -> tuple[str, dict[str, int]]:
    """The commit a revision points at, and the size of every file in that commit."""
    from huggingface_hub.hf_api import RepoFile

    api = hub_api()
    try:
        info = with_retries(lambda: api.model_info(repo_id, revision=revision))
        commit = str(info.sha)
        tree = with_retries(lambda: list(api.list_repo_tree(repo_id, revision=commit, recursive=True)))
    except Exception as exc:
        raise hub_error(exc, repo_id, "read", revision) from exc
    return commit, {f.path: int(f.size) for f in tree if isinstance(f, RepoFile)}


def download_files(repo_id: str, commit: str, names: list[str], on_file: Callable[[str, Path, str | None], None],
                   workers: int = 8, expect: dict[str, tuple[str, int]] | None = None) -> None:
    """Download files of one commit through the HF cache (resumable, token handled by huggingface_hub) and
    hand each one to ``on_file(name, path, sha256)`` as soon as it is there, so checking overlaps downloading.
    ``expect`` (name -> sha256, bytes) hashes those files while they download (:class:`TailHasher`); ``sha256`` is
    that digest, or None where it could not be proven to be the final file's (the caller then hashes it)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.utils import disable_progress_bars

    from atlascli.registry.tailhash import TailHasher

    disable_progress_bars()
    blobs = Path(cache_dir() or HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "blobs"

    def one(name: str) -> None:
        tail = TailHasher(blobs, *expect[name]).start() if expect and name in expect else None
        path: Path | None = None
        try:
            path = Path(with_retries(lambda: hf_hub_download(repo_id, name, revision=commit, endpoint=endpoint(),
                                                             cache_dir=cache_dir(), token=token_or_none())))
        except Exception as exc:
            raise hub_error(exc, repo_id, "download from") from exc
        finally:
            digest = tail.finish(path) if tail else None
        on_file(name, path, digest)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(names)))) as pool:
        for fut in [pool.submit(one, n) for n in names]:
            fut.result()


def drop_cached(path: Path) -> None:
    """Remove a downloaded file from the HF cache (the snapshot link and the blob it points to)."""
    real = path.resolve()
    for p in (path, real):
        try:
            p.unlink()
        except OSError:
            pass


def commit_bundle(repo_id: str, files: dict[str, Path | bytes], sha256: dict[str, str], private: bool,
                  message: str, owned_prefixes: tuple[str, ...], token: str | None = None) -> tuple[str, str]:
    """Create the repo if needed and make one commit holding ``files`` (path in repo -> local file or bytes);
    files under ``owned_prefixes`` that are no longer part of the bundle are deleted. Unchanged files are not
    uploaded again (huggingface_hub compares with the remote object ids). Returns (commit oid, commit url)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = hub_api(require_token(token))
    try:
        with_retries(lambda: api.create_repo(repo_id, private=private, exist_ok=True))
        existing = with_retries(lambda: api.list_repo_files(repo_id))
        ops: list[Any] = []
        for name, src in files.items():
            op = CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(src) if isinstance(src, Path) else src)
            if name in sha256 and not op.upload_info.is_hashed:
                op.upload_info.sha256 = bytes.fromhex(sha256[name])  # verified just before: no second hashing pass
            ops.append(op)
        ops += [CommitOperationDelete(path_in_repo=f) for f in existing
                if f not in files and f.startswith(owned_prefixes)]
        info = api.create_commit(repo_id, ops, commit_message=message)
    except Exception as exc:
        raise hub_error(exc, repo_id, "publish to") from exc
    return str(info.oid), str(info.commit_url)


def list_bundles(tag: str, limit: int = 200) -> list[dict[str, Any]]:
    """Repos carrying ``tag`` (Hub model search), each as id, sha, last_modified and card metadata."""
    api = hub_api()
    try:
        models = with_retries(lambda: list(api.list_models(filter=tag, cardData=True, limit=limit)))
    except Exception as exc:
        raise hub_error(exc, f"models tagged {tag}", "search") from exc
    out = []
    for m in models:
        card = m.card_data.to_dict() if m.card_data is not None and hasattr(m.card_data, "to_dict") else {}
        out.append({"id": m.id, "sha": m.sha, "last_modified": str(m.last_modified or ""), "card": card,
                    "tags": list(m.tags or [])})
    return out
