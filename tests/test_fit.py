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


def test_a_shorter_fit_reads_the_first_rows_of_a_longer_extraction(tiny_models, tiny_dataset):
    """`fit --limit 120` after `--limit 150` extracts nothing: both sides read the first 120 rows of the stored
    extractions (cut inside a shard), and the translation is Procrustes on exactly those rows."""
    from atlascli.plan_tasks import plan_fit
    from atlascli.registry import Registry

    subject, atlas = str(tiny_models["llama"]), f"{tiny_models['gpt2']}@1:resid"
    long_cfg = FitConfig(subject=subject, layers=(2,), site="mlp", atlas=atlas, dataset="tiny", limit=150,
                         shard_size=32)
    fit(long_cfg)
    before = {a.id for a in Registry().list("activations")}
    short = FitConfig(subject=subject, layers=(2,), site="mlp", atlas=atlas, dataset="tiny", limit=120, shard_size=32)
    plan = plan_fit(short, Registry())
    assert [s.action for s in plan.steps[:2]] == ["reuse", "reuse"] and "the first 120 of" in plan.steps[1].text
    (proc,) = fit(short)
    assert {a.id for a in Registry().list("activations")} == before and proc.provenance["n"] == 120
    subj = Activations(extract(ExtractConfig(model=subject, layers=(2,), site="mlp", dataset="tiny", limit=150,
                                             shard_size=32))).dense(2).double().numpy()[:120]
    atl = Activations(extract(ExtractConfig(model=str(tiny_models["gpt2"]), layers=(1,), site="resid",
                                            dataset="tiny", limit=150, shard_size=32))).dense(1).double().numpy()[:120]
    m = (subj / np.linalg.norm(subj, axis=1, keepdims=True)).T @ (atl / np.linalg.norm(atl, axis=1, keepdims=True))
    best = np.linalg.svd(m, compute_uv=False).sum()  # max of tr(T^T m) over orthonormal T (these repeated tiny
    t = StoredTranslation(proc.file("translation.safetensors")).load().double().numpy()  # sentences leave the
    np.testing.assert_allclose(t.T @ t, np.eye(32), atol=1e-5)  # maximiser non-unique: compare the objective)
    assert np.trace(t.T @ m) == pytest.approx(best, rel=1e-6)
    (longer,) = [a for a in fit(long_cfg) if a.provenance["method"] == "procrustes"]
    t_long = StoredTranslation(longer.file("translation.safetensors")).load().double().numpy()
    assert np.trace(t_long.T @ m) < best * (1 - 5e-6)  # the check tells the row sets apart (gap 2e-5 here)
    assert [a.id for a in fit(short)] == [proc.id]  # and a rerun reuses the alignment
    with pytest.raises(InputError, match="holds 150 sentences"):
        Activations(Registry().get(proc.parents[0], "activations"), 151)


def test_prefix_view_of_sparse_codes(aligned):
    """The first rows of an atlas-code extraction, cut inside a shard, equal the same rows of the full read."""
    from atlascli.registry import Registry

    codes = [a for a in Registry().list("activations") if a.provenance.get("sparse")][-1]
    layer = int(codes.provenance["layers"][0])
    full = Activations(codes).dense(layer)
    for n in (1, 37, full.shape[0]):
        head = Activations(codes, n)
        assert head.n == n and torch_equal(head.dense(layer), full[:n])


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
