"""SAE loading from the registry: the weights are checked against the manifest (cached by size and times)."""

from __future__ import annotations

import json

import pytest

from atlascli.errors import CorruptArtifactError
from atlascli.registry import Registry
from atlascli.saes import load_atlas_sae, load_sae


def _atlas_with_sae(tmp_path):
    from conftest import save_random_topk_sae

    reg = Registry()
    stage = reg.stage("atlas", "atlas-test-sae")
    save_random_topk_sae(stage.path / "sae", d_in=8, d_sae=16, k=2, seed=0)
    return stage.commit({"name": "t", "width": 16})


def test_atlas_sae_is_verified_before_use(tmp_path, monkeypatch):
    import atlascli.registry.hashcache as hc

    art = _atlas_with_sae(tmp_path)
    sae, prov = load_sae(art.id)
    assert prov == {"sae": art.id, "sae_source": "atlas"} and int(sae.cfg.d_sae) == 16
    calls = []
    real = hc.sha256_file
    monkeypatch.setattr(hc, "sha256_file", lambda p: calls.append(p) or real(p))
    load_atlas_sae(art)
    assert calls == []  # warm: only stats
    weights = next(p for p in (art.path / "sae").iterdir() if p.suffix == ".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="checksum"):
        load_sae(art.id)


def test_translation_from_artifact_is_verified(tmp_path):
    import torch

    from atlascli.translate import StoredTranslation
    from atlascli.translate.base import Translation

    reg = Registry()
    stage = reg.stage("alignment", "align-test")
    Translation("cov", torch.randn(5, 7)).save(stage.path / "translation.safetensors")
    art = stage.commit({})
    assert StoredTranslation.from_artifact(art).load().shape == (5, 7)
    path = art.path / "translation.safetensors"
    path.write_bytes(path.read_bytes()[:-8] + bytes(8))
    with pytest.raises(CorruptArtifactError, match="checksum"):
        StoredTranslation.from_artifact(art)


def test_one_sae_resolution_order_for_every_caller(tmp_path, monkeypatch):
    """A local folder, else an atlas of the registry (id or prefix), else RELEASE:SAE_ID: load_sae, the extraction
    plan and the default site resolve a reference the same way (a folder named like an atlas id is the folder)."""
    from conftest import save_random_topk_sae

    from atlascli.errors import InputError, NotFoundError
    from atlascli.extract import default_site
    from atlascli.saes import resolve_sae_ref

    art = _atlas_with_sae(tmp_path)
    found = resolve_sae_ref(art.id[:12])
    assert (found.source, found.name, found.atlas.id) == ("atlas", art.id, art.id)
    assert found.folder == art.path / "sae" and found.provenance == {"sae": art.id, "sae_source": "atlas"}
    release = resolve_sae_ref("gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical")
    assert release.source == "sae-lens-release" and release.folder is None and release.atlas is None
    with pytest.raises(InputError, match="cannot resolve SAE 'nothing'"):
        resolve_sae_ref("nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="no cfg.json"):
        resolve_sae_ref(str(tmp_path / "empty"))
    # a folder in the working directory named like the atlas (whose SAE would say 'resid' by default): the folder
    monkeypatch.chdir(tmp_path)
    save_random_topk_sae(tmp_path / art.id, d_in=8, d_sae=16, k=2, seed=1)
    cfg = tmp_path / art.id / "cfg.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "hook_name": "blocks.0.hook_mlp_out"}))
    local = resolve_sae_ref(art.id)
    assert local.source == "local" and local.folder == (tmp_path / art.id).resolve()
    assert load_sae(art.id)[1] == {"sae": str((tmp_path / art.id).resolve()), "sae_source": "local"}
    assert default_site(art.id) == "mlp_out"  # the folder's hook; the atlas (no site recorded) would say 'resid'
