"""SAE loading from the registry: the weights are checked against the manifest (cached by size and times)."""

from __future__ import annotations

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
