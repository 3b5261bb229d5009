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


def _break(reg: Registry, kind: str, art_id: str, manifest: object | None) -> None:
    """A folder in the registry whose manifest is ``manifest`` (None: no manifest; str: raw text)."""
    folder = reg.kind_dir(kind) / art_id
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"x" * 10)
    if isinstance(manifest, str):
        (folder / "manifest.json").write_text(manifest)
    elif manifest is not None:
        (folder / "manifest.json").write_text(json.dumps(manifest))


def test_unreadable_artifacts_are_isolated_and_reported():
    reg = Registry()
    good = _make(reg, "act-good")
    future = dict(good.manifest, id="act-future", schema_version=2)
    _break(reg, "activations", "act-future", future)
    _break(reg, "activations", "act-truncated", '{"kind": "activ')
    _break(reg, "activations", "act-nomanifest", None)
    _break(reg, "activations", "act-list", [1, 2])
    _break(reg, "atlas", "act-misplaced", dict(good.manifest, id="act-misplaced"))  # kind says activations
    assert [a.id for a in reg.list()] == ["act-good"]
    assert reg.latest("activations").id == "act-good"
    assert reg.get("act-g").id == "act-good"
    problems = {p.id: p for p in reg.problems()}
    assert set(problems) == {"act-future", "act-truncated", "act-nomanifest", "act-list", "act-misplaced"}
    assert "schema version 2" in problems["act-future"].message
    assert all("atlas registry rm" in p.fix or "upgrade" in p.fix for p in problems.values())
    with pytest.raises(CorruptArtifactError, match="schema version 2"):
        reg.get("act-future")  # naming it fails with the fix
    with pytest.raises(CorruptArtifactError, match="schema version"):
        reg.get("act-fut")  # a prefix of only a broken one says why
    # rm by exact id works without parsing; nothing else changes
    before = {p: p.read_bytes() for p in good.path.rglob("*") if p.is_file()}
    for art_id in problems:
        assert [p.name for p in reg.remove(art_id)] == [art_id]
    assert reg.problems() == [] and [a.id for a in reg.list()] == ["act-good"]
    assert {p: p.read_bytes() for p in good.path.rglob("*") if p.is_file()} == before
    good.verify()


def test_remove_refuses_outside_and_ambiguous_prefixes(tmp_path):
    reg = Registry()
    _make(reg, "act-a1")
    _make(reg, "act-a2")
    outside = tmp_path / "precious"
    outside.mkdir()
    for ref in ("../precious", str(outside), "..", "/", str(reg.root / "activations"), ".partial-act-a1"):
        with pytest.raises(InputError):
            reg.remove(ref)
    assert outside.exists()
    with pytest.raises(InputError, match="prefix of 2"):
        reg.remove("act-a")
    with pytest.raises(NotFoundError):
        reg.remove("zzz")
    targets, exact = reg.removal_targets("act-a")
    assert [p.name for p in targets] == ["act-a1", "act-a2"] and not exact
    assert [p.name for p in reg.remove(str(reg.root / "activations" / "act-a1"))] == ["act-a1"]  # a path inside
    assert [p.name for p in reg.remove("act-a")] == ["act-a2"]  # now a unique prefix
    assert reg.list() == [] and not any(p.name.startswith(".trash") for p in reg.kind_dir("activations").iterdir())


def test_latest_is_local_commit_order_not_claimed_date(tmp_path):
    src = Registry(tmp_path / "src")
    old = _make(src, "act-claims-future")
    manifest = dict(old.manifest, created="2099-01-01T00:00:00+00:00")
    atomic_write_json(old.path / "manifest.json", manifest)
    reg = Registry()
    import_folder(old.path, reg)  # committed here first, claims to be from 2099
    _make(reg, "act-made-later")
    assert [a.id for a in reg.list()] == ["act-claims-future", "act-made-later"]
    assert reg.latest("activations").id == "act-made-later"


def test_commit_drops_temp_files_and_checks_required():
    reg = Registry()
    stage = reg.stage("activations", "act-tmp")
    atomic_save_tensors(stage.path / "shard-00000.safetensors", {"x": torch.zeros(2)})
    (stage.path / ".shard-00001.safetensors.abc.tmp").write_bytes(b"half a shard")
    with pytest.raises(CorruptArtifactError, match="incomplete"):
        stage.commit({}, required=["shard-00000.safetensors", "shard-00001.safetensors"])
    assert not reg.exists("act-tmp") and stage.path.exists()  # nothing published, work kept
    art = reg.stage("activations", "act-tmp").commit({}, required=["shard-00000.safetensors"])
    assert sorted(p.name for p in art.path.iterdir()) == ["manifest.json", "shard-00000.safetensors"]


def test_stage_reports_what_another_writer_published():
    reg = Registry()
    first = reg.stage("activations", "act-shared")
    assert first.published is None
    atomic_save_tensors(first.path / "a.safetensors", {"x": torch.ones(1)})
    art = first.commit({})
    second = reg.stage("activations", "act-shared")  # the lock is free again after commit
    assert second.published is not None and second.published.id == art.id
    second.release()


def test_verify_cached_hashes_once_and_catches_changes(monkeypatch):
    import atlascli.registry.hashcache as hc

    reg = Registry()
    art = _make(reg, "act-cached")
    calls = []
    real = hc.sha256_file
    monkeypatch.setattr(hc, "sha256_file", lambda p: calls.append(p) or real(p))
    art.verify_cached(["shard-00000.safetensors"])
    art.verify_cached(["shard-00000.safetensors"])
    hc.reset_memory()  # a new process reads the on-disk cache
    art.verify_cached(["shard-00000.safetensors"])
    assert len(calls) == 1
    shard = art.path / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, new content (and mtime)
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="checksum"):
        art.verify_cached(["shard-00000.safetensors"])
    with pytest.raises(CorruptArtifactError, match="missing"):
        art.verify_cached(["nope.safetensors"])


def test_second_writer_waits_for_the_lock_then_reuses_the_result():
    import os
    import time

    reg = Registry()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the first writer: holds the lock for a while, then commits
        code = 1
        try:
            first = reg.stage("activations", "act-race")
            os.write(ready_w, b"x")
            time.sleep(0.6)
            atomic_save_tensors(first.path / "a.safetensors", {"x": torch.ones(1)})
            first.commit({})
            code = 0
        finally:
            os._exit(code)
    os.read(ready_r, 1)
    t0 = time.monotonic()
    second = reg.stage("activations", "act-race")
    waited = time.monotonic() - t0
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert waited >= 0.4 and second.published is not None  # it waited, then found the first's artifact
    second.release()
    assert [a.id for a in reg.list()] == ["act-race"]
