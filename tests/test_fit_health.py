"""The alignment health check of `atlas fit`: a planted alignment passes, a fit on misaligned sentence pairs is
flagged; the streamed numbers equal a direct recomputation and the stored translations are those of the full data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from atlascli.fit_health import HoldoutHealth, explained_share, health_meta, holdout_size
from atlascli.translate import MultiFitter

METHODS = ["procrustes", "cov", "corr", "linreg", "semlens"]


def _planted(n: int = 1200, dc: int = 48, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    C = np.zeros((n, dc))
    for i in range(n):
        C[i, rng.choice(dc, k, replace=False)] = rng.uniform(0.5, 3.0, k)
    M = rng.standard_normal((dc, 40))  # the subject holds the atlas codes linearly mixed, plus noise
    X = C @ M + 0.05 * rng.standard_normal((n, 40))
    return X, C


def _run(X: np.ndarray, C: np.ndarray, batch: int = 100) -> tuple[HoldoutHealth, MultiFitter]:
    health, fitter = HoldoutHealth(len(X)), MultiFitter(METHODS)
    for a in range(0, len(X), batch):
        health.feed(fitter, torch.tensor(X[a : a + batch], dtype=torch.float32), sp.csr_matrix(C[a : a + batch]))
    return health, fitter


def test_planted_fit_passes_and_shuffled_pairs_are_flagged() -> None:
    X, C = _planted()
    good = _run(X, C)[0].report()
    assert isinstance(good, dict) and set(good) == set(METHODS)
    assert not good["procrustes"].flagged and good["procrustes"].explained > 0.2
    assert good["procrustes"].explained > 5 * good["procrustes"].random
    assert good["procrustes"].holdout == holdout_size(len(X)) == 240
    shuffled = C[np.random.default_rng(1).permutation(len(C))]  # rows misaligned on purpose
    bad = _run(X, shuffled)[0].report()
    assert isinstance(bad, dict)
    for m in METHODS:
        assert bad[m].flagged, (m, bad[m])
        assert "near random" in bad[m].message
    assert health_meta(bad, "procrustes")["flagged"] is True


def test_streamed_check_matches_direct_recomputation_and_keeps_the_full_fit() -> None:
    X, C = _planted(n=900, seed=3)
    health, fitter = _run(X, C, batch=77)
    b = health.boundary
    assert b == 900 - 180  # a fifth of the data when 5% is under 256 sentences
    head = MultiFitter(["procrustes"]).update(torch.tensor(X[:b], dtype=torch.float32), sp.csr_matrix(C[:b]))
    T = head.results()["procrustes"].T.double().numpy()
    That = T / np.linalg.norm(T, axis=1, keepdims=True)
    probe = health._probe
    assert probe is not None
    Xc = X[b:] - X[:b].mean(0)
    Z = (Xc / np.linalg.norm(Xc, axis=1, keepdims=True)) @ That[:, probe]
    ref = explained_share(Z, C[b:][:, probe])
    rep = health.report()
    assert isinstance(rep, dict)
    assert rep["procrustes"].explained == pytest.approx(ref, rel=1e-4)
    # the stored translations are those of all rows, held-out ones included
    full = MultiFitter(METHODS).update(torch.tensor(X, dtype=torch.float32), sp.csr_matrix(C)).results()
    for m, tr in fitter.results().items():
        assert torch.allclose(tr.T, full[m].T, atol=1e-5), m
    # one batch holding every row (the boundary inside it): the fitter sees exactly the plain pass, bit for bit
    one, plain = HoldoutHealth(900), MultiFitter(METHODS)
    one_fitter = MultiFitter(METHODS)
    one.feed(one_fitter, torch.tensor(X, dtype=torch.float32), sp.csr_matrix(C))
    plain.update(torch.tensor(X, dtype=torch.float32), sp.csr_matrix(C))
    got, want = one_fitter.results(), plain.results()
    assert all(torch.equal(got[m].T, want[m].T) for m in METHODS)
    rep1 = one.report()
    assert isinstance(rep1, dict) and rep1["procrustes"].explained == pytest.approx(ref, rel=1e-4)


def test_explained_share_reference() -> None:
    rng = np.random.default_rng(0)
    c = rng.standard_normal((500, 3))
    z = np.c_[2 * c[:, 0] + 1, rng.standard_normal(500), -c[:, 2]]
    c[:, 1] *= 3  # weights by variance
    r2 = [1.0, np.corrcoef(z[:, 1], c[:, 1])[0, 1] ** 2, 1.0]
    var = c.var(0)
    assert explained_share(z, c) == pytest.approx(float((np.array(r2) * var).sum() / var.sum()), rel=1e-9)


def test_too_little_data_is_skipped_not_invented() -> None:
    X, C = _planted(n=30)
    health, _ = _run(X, C)
    assert health.report() == "fewer than 40 fit sentences"
    assert health_meta(health.report(), "cov") == {"skipped": "fewer than 40 fit sentences"}


def test_fit_stores_the_check_and_the_cli_warns(aligned, tiny_models, capsys, monkeypatch):
    import atlascli.fit_health as fh
    from atlascli.cli.main import main

    atlas, fits = aligned
    h = fits[0].meta["health"]
    assert set(h) >= {"explained", "random", "flagged", "holdout", "message"} and h["holdout"] == 30  # 150 // 5
    monkeypatch.setattr(fh, "FLAG_RATIO", 1e9)  # force "near random" to see the warning path
    code = main(["fit", "--subject", str(tiny_models["llama"]), "--layer", "2", "--site", "mlp", "--atlas", atlas.id,
                 "--dataset", "tiny", "--limit", "140", "--method", "procrustes"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "held-out R²" in out.out and "warning:" in out.err and "near random" in " ".join(out.err.split())
