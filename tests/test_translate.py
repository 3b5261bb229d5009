from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
import torch

from atlascli.errors import InputError
from atlascli.translate import (
    CorrelationFitter,
    CovarianceFitter,
    LinRegFitter,
    MultiFitter,
    ProcrustesFitter,
    SemanticLensFitter,
    StoredTranslation,
    parse_methods,
    similarity_dense,
)


def _data(n=300, ds=12, dc=20, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n, dc))
    s = c @ rng.normal(size=(dc, ds)) + 0.5 * rng.normal(size=(n, ds)) + 1.0
    return s, c


def _stream(fitter, s, c, cuts):
    edges = [0, *cuts, len(s)]
    for a, b in zip(edges[:-1], edges[1:]):
        fitter.update(torch.from_numpy(s[a:b]), c[a:b])
    return fitter.result().T.double().numpy()


def _rows_l2(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_procrustes(s, c):
    # scipy's orthogonal_procrustes solves min ||A R - B|| for square R; for ds != dc use the SVD formula
    m = _rows_l2(s).T @ _rows_l2(c)
    u, _, vt = scipy.linalg.svd(m, full_matrices=False)
    return u @ vt


def ref_cov(s, c):
    n = len(s)
    return (s - s.mean(0)).T @ (c - c.mean(0)) / (n - 1)


def ref_corr(s, c):
    full = np.corrcoef(s.T, c.T)
    return full[: s.shape[1], s.shape[1]:]


def ref_linreg(s, c):
    return np.linalg.lstsq(c, s, rcond=None)[0].T


def ref_semlens(s, c, k):
    T = np.zeros((s.shape[1], c.shape[1]))
    for i in range(s.shape[1]):
        top = np.argsort(-s[:, i], kind="stable")[:k]
        T[i] = c[top].mean(0)
    return T


CASES = [
    (lambda: ProcrustesFitter(), ref_procrustes),
    (lambda: CovarianceFitter(), ref_cov),
    (lambda: CorrelationFitter(), ref_corr),
    (lambda: LinRegFitter(), ref_linreg),
    (lambda: SemanticLensFitter(k=7), lambda s, c: ref_semlens(s, c, 7)),
]


@pytest.mark.parametrize("make,ref", CASES)
@pytest.mark.parametrize("cuts", [[], [1, 50, 51, 200], [150]])
def test_streaming_equals_reference(make, ref, cuts):
    s, c = _data()
    got = _stream(make(), s, c, cuts)
    np.testing.assert_allclose(got, ref(s, c), rtol=1e-5, atol=1e-6 * np.abs(ref(s, c)).max())


@pytest.mark.parametrize("make,ref", CASES)
def test_batch_order_does_not_matter(make, ref):
    s, c = _data(seed=1)
    perm = np.random.default_rng(5).permutation(len(s))
    a = _stream(make(), s, c, [100, 200])
    b = _stream(make(), s[perm], c[perm], [70, 140])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make,ref", CASES)
def test_sparse_atlas_equals_dense(make, ref):
    s, c = _data(seed=2)
    c = np.where(np.random.default_rng(3).random(c.shape) < 0.15, np.abs(c), 0.0)
    dense = _stream(make(), s, c, [90, 180])
    f = make()
    for a, b in [(0, 90), (90, 180), (180, 300)]:
        f.update(torch.from_numpy(s[a:b]), sp.csr_matrix(c[a:b]))
    np.testing.assert_allclose(f.result().T.double().numpy(), dense, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ds,dc", [(16, 40), (40, 16)])
def test_procrustes_recovers_a_planted_semi_orthogonal_map(ds, dc):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(max(ds, dc), min(ds, dc))))
    R = q if ds > dc else q.T  # [ds, dc] with orthonormal rows (ds<dc) or columns (ds>dc)
    c = rng.normal(size=(4000, dc))
    s = c @ R.T + 0.01 * rng.normal(size=(4000, ds))
    T = ProcrustesFitter().fit(torch.from_numpy(s), c).T.double().numpy()
    eye = T @ T.T if ds <= dc else T.T @ T
    np.testing.assert_allclose(eye, np.eye(min(ds, dc)), atol=1e-5)
    if ds <= dc:  # every subject feature is recovered
        cos = (T * R).sum(1) / np.linalg.norm(T, axis=1) / np.linalg.norm(R, axis=1)
    else:  # every atlas direction is recovered
        cos = (T * R).sum(0) / np.linalg.norm(T, axis=0) / np.linalg.norm(R, axis=0)
    assert cos.min() > 0.99


def test_linreg_ridge_matches_closed_form():
    s, c = _data(seed=4)
    lam = 3.0
    T = LinRegFitter(ridge=lam).fit(torch.from_numpy(s), c).T.double().numpy()
    ref = np.linalg.solve(c.T @ c + lam * np.eye(c.shape[1]), c.T @ s).T
    np.testing.assert_allclose(T, ref, rtol=1e-5)


def test_multifitter_shares_statistics_and_matches_single_fitters():
    s, c = _data(seed=6)
    multi = MultiFitter(parse_methods("all"), k=5)
    for a, b in [(0, 120), (120, 300)]:
        multi.update(torch.from_numpy(s[a:b]), c[a:b])
    res = multi.results()
    assert set(res) == {"procrustes", "cov", "corr", "linreg", "semlens"}
    np.testing.assert_allclose(res["cov"].T.double().numpy(), ref_cov(s, c), rtol=1e-5)
    np.testing.assert_allclose(res["procrustes"].T.double().numpy(), ref_procrustes(s, c), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res["semlens"].T.double().numpy(), ref_semlens(s, c, 5), rtol=1e-5)


def test_eq3_similarity_and_stored_rows(tmp_path):
    s, c = _data(seed=7)
    tr = CovarianceFitter().fit(torch.from_numpy(s), c)
    q = torch.zeros(c.shape[1])
    q[[3, 9]] = torch.tensor([1.0, 0.5])
    T = tr.T.double().numpy()
    ref = (T / np.linalg.norm(T, axis=1, keepdims=True)) @ q.double().numpy() / np.linalg.norm(q.numpy())
    np.testing.assert_allclose(similarity_dense(tr.T, q).numpy(), ref, rtol=1e-5)
    tr.save(tmp_path / "t.safetensors")
    st = StoredTranslation(tmp_path / "t.safetensors")
    assert (st.ds, st.dc) == (12, 20)
    np.testing.assert_allclose(st.similarity([3, 9], [1.0, 0.5]).numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(st.similarity_dense(q).numpy(), ref, rtol=1e-5)
    torch.testing.assert_close(st.load(), tr.T)
    with pytest.raises(InputError, match="out of range"):
        st.similarity([25], [1.0])
    with pytest.raises(InputError, match="all zeros"):
        st.similarity([1], [0.0])


def test_bad_inputs():
    s, c = _data()
    bad = s.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        CovarianceFitter().update(torch.from_numpy(bad), c)
    with pytest.raises(InputError, match="rows"):
        CovarianceFitter().update(torch.from_numpy(s[:10]), c[:11])
    f = CovarianceFitter().update(torch.from_numpy(s[:10]), c[:10])
    with pytest.raises(InputError, match="differ"):
        f.update(torch.from_numpy(s[:10, :5]), c[:10])
    zero = s.copy()
    zero[:, 4] = 0
    with pytest.raises(InputError, match="all zero"):
        ProcrustesFitter().fit(torch.from_numpy(zero), c)
    with pytest.raises(InputError, match="unknown method"):
        parse_methods("procrustes,ridge")
    with pytest.raises(InputError, match="at least"):
        CovarianceFitter().fit(torch.from_numpy(s[:1]), c[:1])


def test_dead_atlas_features_are_reported_not_fatal():
    s, c = _data()
    c[:, 5] = 0.0
    tr = CorrelationFitter().fit(torch.from_numpy(s), c)
    assert tr.info["dead_atlas_features"] == 1
    assert torch.all(tr.T[:, 5] == 0) and torch.isfinite(tr.T).all()


@pytest.mark.parametrize("case", ["full", "dead", "collinear", "collinear_dead"])
def test_min_norm_solve_equals_numpy_lstsq(case: str) -> None:
    """linreg's solver gives numpy's minimum-norm least-squares solution (dead and collinear atlas features
    included: the first solves the live block by Cholesky, the second falls back to its eigendecomposition)."""
    from atlascli.translate.moments import min_norm_solve

    rng = np.random.default_rng(3)
    a = rng.standard_normal((600, 80)) * (rng.random((600, 80)) < 0.2)
    if case in ("dead", "collinear_dead"):
        a[:, [4, 9]] = 0
    if case in ("collinear", "collinear_dead"):
        a[:, 7] = 2 * a[:, 8]
        a[:, 20] = a[:, 21] - a[:, 22]
    g, b = a.T @ a, a.T @ rng.standard_normal((600, 30))
    np.testing.assert_allclose(min_norm_solve(g, b), np.linalg.lstsq(g, b, rcond=None)[0], rtol=1e-8, atol=1e-10)
