from __future__ import annotations

import json

import pytest
import torch

from atlascli.errors import CorruptArtifactError, InputError, NotFoundError
from atlascli.registry import Registry
from atlascli.registry.files import atomic_save_tensors, atomic_write_json, load_tensors, read_json
from atlascli.registry.hub import import_folder


def _make(reg: Registry, art_id: str = "act-test-1"):
    stage = reg.stage("activations", art_id, parents=["dataset-x"])
    atomic_save_tensors(stage.path / "shard-00000.safetensors", {"x": torch.arange(6.0).reshape(2, 3)})
    atomic_write_json(stage.path / "info.json", {"a": 1})
    return stage.commit({"model": "m", "n": 2}, {"widths": {"0": 3}})


def test_commit_writes_manifest_with_checksums_and_publishes_atomically():
    reg = Registry()
    art = _make(reg)
    manifest = json.loads((art.path / "manifest.json").read_text())
    assert manifest["kind"] == "activations" and manifest["schema_version"] == 1
    assert set(manifest["files"]) == {"shard-00000.safetensors", "info.json"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert manifest["parents"] == ["dataset-x"] and manifest["provenance"]["n"] == 2
    assert not any(p.name.startswith(".partial") for p in art.path.parent.iterdir())
    art.verify()
    assert reg.get("act-te").id == "act-test-1"  # unique prefix
    assert [a.id for a in reg.list("activations")] == ["act-test-1"]
    assert reg.latest("activations", model="m").id == "act-test-1"
    assert reg.latest("activations", model="other") is None


def test_corruption_and_truncation_are_detected():
    reg = Registry()
    art = _make(reg)
    shard = art.path / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="checksum"):
        art.verify()
    shard.write_bytes(bytes(data[:20]))
    with pytest.raises(CorruptArtifactError):
        load_tensors(shard)
    (art.path / "info.json").write_text('{"a": ')
    with pytest.raises(CorruptArtifactError, match="not valid JSON"):
        read_json(art.path / "info.json")


def test_missing_and_ambiguous_ids():
    reg = Registry()
    with pytest.raises(NotFoundError, match="registry ls"):
        reg.get("nothing")
    _make(reg, "act-a1")
    _make(reg, "act-a2")
    with pytest.raises(InputError, match="matches 2"):
        reg.get("act-a")
    with pytest.raises(InputError):
        reg.stage("activations", "../escape")
    with pytest.raises(InputError):
        reg.kind_dir("pickle")


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"v": 1})

    class Boom(Exception):
        pass

    def explode(*a, **k):
        raise Boom

    monkeypatch.setattr("atlascli.registry.files.os.replace", explode)
    with pytest.raises(Boom):
        atomic_write_json(path, {"v": 2})
    assert read_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind


def test_import_folder_verifies_before_registering(tmp_path):
    src_reg = Registry(tmp_path / "src")
    art = _make(src_reg)
    dst = Registry(tmp_path / "dst")
    got = import_folder(art.path, dst)
    assert got.id == art.id and got.manifest == art.manifest
    (art.path / "info.json").write_text('{"a": 2}')
    with pytest.raises(CorruptArtifactError):
        import_folder(art.path, Registry(tmp_path / "dst2"))
    assert Registry(tmp_path / "dst2").list() == []


def test_hub_is_offline_in_tests():
    from atlascli.registry.hub import pull_artifact, snapshot_model

    with pytest.raises(NotFoundError, match="unknown model"):
        snapshot_model("someone/does-not-exist-model")
    with pytest.raises(NotFoundError, match="cannot pull"):
        pull_artifact("someone/atlas-artifacts", "act-x")
