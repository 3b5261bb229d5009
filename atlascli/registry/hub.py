"""The only module that touches the network: Hugging Face Hub models, datasets and artifacts.

With ``HF_HUB_OFFLINE=1`` (as in the tests) everything here fails fast with a clear error unless
the files are already in the local Hugging Face cache.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from atlascli.errors import CorruptArtifactError, NotFoundError
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
    """Upload an artifact folder to ``repo_id/<artifact id>/`` on the Hub; returns its URL."""
    from huggingface_hub import HfApi

    artifact.verify()
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(artifact.path), path_in_repo=artifact.id, repo_id=repo_id,
                          commit_message=f"atlas: add {artifact.kind} {artifact.id}")
    except Exception as exc:
        raise NotFoundError(f"cannot push to {repo_id} ({exc.__class__.__name__}: {exc})",
                            "check the network and `hf auth login`") from exc
    return f"https://huggingface.co/{repo_id}/tree/main/{artifact.id}"


def pull_artifact(repo_id: str, artifact_id: str, registry: Registry | None = None,
                  revision: str | None = None) -> Artifact:
    """Download ``repo_id/<artifact_id>/``, verify every checksum, then add it to the registry."""
    from huggingface_hub import snapshot_download

    registry = registry or Registry()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            snapshot_download(repo_id, revision=revision, allow_patterns=[f"{artifact_id}/*"], local_dir=tmp)
        except Exception as exc:
            raise NotFoundError(f"cannot pull {artifact_id} from {repo_id} ({exc.__class__.__name__})",
                                "check the repo id, the network and `hf auth login`") from exc
        src = Path(tmp) / artifact_id
        if not (src / MANIFEST).exists():
            raise NotFoundError(f"{repo_id} has no artifact {artifact_id}", "list the repo's folders on the Hub")
        return import_folder(src, registry)


def import_folder(src: Path, registry: Registry) -> Artifact:
    """Copy an artifact folder into the registry after checking its manifest and checksums."""
    from atlascli.registry.files import read_json

    manifest = read_json(src / MANIFEST)
    probe = Artifact(manifest["id"], manifest["kind"], src, manifest)
    probe.verify()
    stage = registry.stage(probe.kind, probe.id)
    shutil.rmtree(stage.path)
    shutil.copytree(src, stage.path)
    final = registry.kind_dir(probe.kind) / probe.id
    if final.exists():
        shutil.rmtree(stage.path)
    else:
        stage.path.rename(final)
    art = registry.get(probe.id, probe.kind)
    if art.manifest != manifest:
        raise CorruptArtifactError(f"{probe.id} changed while importing", "pull it again")
    return art
