from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

from atlascli.errors import InputError, NotFoundError
from atlascli.extract import Activations, ExtractConfig, extract
from atlascli.fit import FitConfig, fit
from atlascli.translate import StoredTranslation


def test_fit_all_methods_end_to_end(tiny_models, tiny_dataset):
    atlas = f"{tiny_models['gpt2']}@1:resid"
    cfg = FitConfig(subject=str(tiny_models["llama"]), layers=(1, 2), site="mlp", atlas=atlas, methods="all",
                    dataset="tiny", limit=120, k=5)
    arts = fit(cfg)
    assert len(arts) == 10
    by = {(a.provenance["layer"], a.provenance["method"]): a for a in arts}
    proc = by[(2, "procrustes")]
    p = proc.provenance
    assert p["shape"] == [48, 32] and p["n"] == 120 and p["normalisation"] == "row-l2"
    assert p["dataset_fingerprint"] == tiny_dataset.provenance["dataset_fingerprint"]
    assert len(proc.parents) == 2
    # the stored translation equals a one-shot Procrustes on the stored activations
    subj = Activations(extract(ExtractConfig(model=str(tiny_models["llama"]), layers=(1, 2), site="mlp",
                                             dataset="tiny", limit=120))).dense(2).double().numpy()
    atl = Activations(extract(ExtractConfig(model=str(tiny_models["gpt2"]), layers=(1,), site="resid",
                                            dataset="tiny", limit=120))).dense(1).double().numpy()
    m = (subj / np.linalg.norm(subj, axis=1, keepdims=True)).T @ (atl / np.linalg.norm(atl, axis=1, keepdims=True))
    u, _, vt = np.linalg.svd(m, full_matrices=False)
    st = StoredTranslation(proc.file("translation.safetensors"))
    np.testing.assert_allclose(st.load().double().numpy(), u @ vt, atol=1e-4)
    with safe_open(str(proc.file("translation.safetensors")), framework="pt") as f:
        assert f.get_slice("Tt").get_shape() == [32, 48]  # atlas-feature-major for cheap queries
    # running again reuses every artifact
    assert [a.id for a in fit(cfg)] == [a.id for a in arts]


def test_fit_rejects_mismatched_extractions(tiny_models, tiny_dataset):
    other = extract(ExtractConfig(model=str(tiny_models["gpt2"]), layers=(1,), dataset="tiny", limit=50))
    with pytest.raises(InputError, match="N="):
        fit(FitConfig(subject=str(tiny_models["llama"]), layers=(1,), atlas=other.id, dataset="tiny", limit=60))
    test_split = extract(ExtractConfig(model=str(tiny_models["gpt2"]), layers=(1,), dataset="tiny", split="test"))
    with pytest.raises(InputError, match="different datasets"):
        fit(FitConfig(subject=str(tiny_models["llama"]), layers=(1,), atlas=test_split.id, dataset="tiny"))


def test_fit_without_atlas_says_how_to_get_one(tiny_models, tiny_dataset):
    with pytest.raises(NotFoundError, match="atlas build"):
        fit(FitConfig(subject=str(tiny_models["llama"]), layers=(1,), dataset="tiny"))
    with pytest.raises(InputError, match="MODEL@LAYER"):
        fit(FitConfig(subject=str(tiny_models["llama"]), layers=(1,), dataset="tiny", atlas="gpt2@x"))


def test_fit_against_sparse_sae_codes(tiny_models, tiny_dataset, tmp_path):
    from conftest import save_random_topk_sae

    save_random_topk_sae(tmp_path / "sae", 32, 96, 6, seed=1)
    codes = extract(ExtractConfig(model=str(tiny_models["gpt2"]), layers=(1,), dataset="tiny", limit=100,
                                  sae=str(tmp_path / "sae")))
    arts = fit(FitConfig(subject=str(tiny_models["llama"]), layers=(2,), atlas=codes.id, dataset="tiny", limit=100,
                         methods="cov,procrustes"))
    cov_art = next(a for a in arts if a.provenance["method"] == "cov")
    cov = StoredTranslation(cov_art.file("translation.safetensors")).load().double().numpy()
    s = Activations(extract(ExtractConfig(model=str(tiny_models["llama"]), layers=(2,), site="mlp", dataset="tiny",
                                          limit=100))).dense(2).double().numpy()
    c = Activations(codes).dense(1).double().numpy()
    ref = (s - s.mean(0)).T @ (c - c.mean(0)) / (len(s) - 1)
    np.testing.assert_allclose(cov, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("field,value", [("limit", 0), ("limit", -5), ("ridge", -1.0), ("ridge", float("nan")),
                                         ("k", 0), ("layers", (-1,))])
def test_config_bounds(field, value):
    with pytest.raises(InputError, match=field):
        FitConfig(**{field: value})
