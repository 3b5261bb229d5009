"""`atlas read`: each method's input transform against numpy, planted subjects (the atlas features active on
the input come back, P@5 >= 0.9), the tiny model end to end against an independent extraction, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from atlascli.cli.main import main
from atlascli.errors import InputError, NotFoundError
from atlascli.read import METHOD_TRANSFORM, InputTransform, ReadConfig, read_text, transform_for
from atlascli.readout import map_to_atlas
from atlascli.registry import Registry
from atlascli.translate import METHODS, MultiFitter, StoredTranslation, Translation


def planted(n: int, dc: int, k: int, seed: int, noise: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse atlas codes C (k active per row) and a subject X = C R^T + noise: a permuted, rescaled copy."""
    rng = np.random.default_rng(seed)
    C = np.zeros((n, dc))
    for i in range(n):
        C[i, rng.choice(dc, k, replace=False)] = rng.uniform(0.5, 3.0, k)
    R = np.zeros((dc, dc))
    R[np.arange(dc), rng.permutation(dc)] = rng.uniform(0.5, 2.0, dc)
    return C @ R.T + noise * rng.standard_normal((n, dc)), C, R


def p_at_k(scores: np.ndarray, truth: np.ndarray, k: int = 5) -> float:
    """Mean over rows of |top-k(scores) ∩ support(truth)| / k."""
    return float(np.mean([len(set(np.argsort(-s)[:k].tolist()) & set(np.flatnonzero(t > 0).tolist())) / k
                          for s, t in zip(scores, truth)]))


def store(reg: Registry, T: Any, method: str, layer: int, subject: str, site: str = "mlp") -> Any:
    stage = reg.stage("alignment", f"align-{method}-L{layer}")
    tr = Translation(method, torch.tensor(np.asarray(T), dtype=torch.float32))
    tr.save(stage.path / "translation.safetensors")
    return stage.commit({"method": method, "layer": layer, "subject": subject, "site": site, "shape": list(tr.shape)})


def test_input_transforms_match_numpy() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 4))
    X[2] = 0
    mu, sd = rng.standard_normal(4), np.array([1.0, 2.0, 0.0, 0.5])
    got = {k: InputTransform(k, torch.tensor(mu), torch.tensor(sd))(torch.tensor(X)).numpy()
           for k in ("row-l2", "centre", "standardise", "none")}
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(got["row-l2"], np.where(norms > 0, X / np.where(norms > 0, norms, 1), 0), rtol=1e-6)
    np.testing.assert_allclose(got["centre"], X - mu, rtol=1e-6)
    z = (X - mu) / np.where(sd > 0, sd, 1)
    z[:, sd == 0] = 0
    np.testing.assert_allclose(got["standardise"], z, rtol=1e-6)
    np.testing.assert_allclose(got["none"], X, rtol=1e-6)
    assert METHOD_TRANSFORM == {"procrustes": "row-l2", "cov": "centre", "corr": "standardise", "linreg": "none",
                                "semlens": "none"}
    with pytest.raises(InputError, match="unknown input transform"):
        InputTransform("zscore")(torch.tensor(X))


@pytest.mark.parametrize("method", METHODS)
def test_read_planted_gives_back_the_active_atlas_features(method: str, tmp_path: Path) -> None:
    """Fit on planted train rows, map held-out subject rows into the atlas: the active features come back."""
    X, C, _ = planted(3000, 60, 5, seed=0)
    Xt, Ct, Xe, Ce = X[:2000], C[:2000], X[2000:], C[2000:]
    tr = MultiFitter([method]).update(Xt, Ct).results()[method]
    tr.save(tmp_path / "t.safetensors")
    st = StoredTranslation(tmp_path / "t.safetensors")
    tf = InputTransform(METHOD_TRANSFORM[method], torch.tensor(Xt.mean(0)), torch.tensor(Xt.std(0, ddof=1)))
    scores = map_to_atlas(st, tf(torch.tensor(Xe))).numpy()
    assert p_at_k(scores, Ce) >= 0.9
    rand = np.random.default_rng(1).standard_normal((60, 60))
    assert p_at_k(tf(torch.tensor(Xe)).numpy() @ rand, Ce) < 0.3  # the check can fail


@pytest.mark.parametrize("method", METHODS)
def test_read_planted_with_baselines_needs_centre(method: str, tmp_path: Path) -> None:
    """Subject features with large baselines (like max-pooled neurons): with --centre every method reads back
    the active atlas features; without it only the methods whose fit centres (cov, corr) do."""
    X, C, _ = planted(3000, 60, 5, seed=0)
    X = X + np.random.default_rng(5).uniform(0, 20, 60)
    Xt, Ct, Xe, Ce = X[:2000], C[:2000], X[2000:], C[2000:]
    tr = MultiFitter([method]).update(Xt, Ct).results()[method]
    tr.save(tmp_path / "t.safetensors")
    st = StoredTranslation(tmp_path / "t.safetensors")
    plain = InputTransform(METHOD_TRANSFORM[method], torch.tensor(Xt.mean(0)), torch.tensor(Xt.std(0, ddof=1)))
    centred = InputTransform(plain.kind, plain.mean, plain.std, plain(torch.tensor(Xt)).double().mean(0))
    assert p_at_k(map_to_atlas(st, centred(torch.tensor(Xe))).numpy(), Ce) >= 0.9
    p_plain = p_at_k(map_to_atlas(st, plain(torch.tensor(Xe))).numpy(), Ce)
    assert p_plain >= 0.9 if method in ("cov", "corr") else p_plain < 0.7


def test_read_text_on_tiny_model_matches_independent_extraction(tiny_models) -> None:
    """T = a scaled permutation of the tiny Llama's MLP neurons: reading must return the permuted top neurons
    of the max-pooled activation (computed by the extraction code path), per token too."""
    from atlascli.extract import ExtractConfig, extract_shard
    from atlascli.hooks import record_sites, run_until
    from atlascli.models import load_model

    path = str(tiny_models["llama"])
    rng = np.random.default_rng(0)
    Ts = {}
    for layer in (1, 2):
        T = np.zeros((48, 48))
        T[np.arange(48), rng.permutation(48)] = rng.uniform(0.5, 2.0, 48)
        Ts[layer] = T
        store(Registry(), T, "procrustes", layer, path)
    lm = load_model(path)
    text = "The dog and the cat met a London night today."
    res = read_text(ReadConfig(text, layers=(2, 1), top=5, per_token=True, token_top=2), lm=lm)
    assert [lr.layer for lr in res.layers] == [2, 1] and not res.truncated and not res.warnings
    pooled = extract_shard(lm, [text], ExtractConfig(model=path, layers=(1, 2), site="mlp"), None)
    enc = lm.tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)
    real = ~enc["special_tokens_mask"][0].bool()
    with torch.inference_mode(), record_sites(lm.model, [1, 2], "mlp") as rec:
        run_until(lm.model, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    assert res.tokens == [text[a:b] for a, b in res.spans] and len(res.tokens) == int(real.sum())
    for lr in res.layers:
        a = pooled[f"L{lr.layer}"][0].double().numpy()
        ref = Ts[lr.layer].T @ (a / np.linalg.norm(a))
        assert [c.index for c in lr.concepts] == list(np.argsort(-ref)[:5])
        np.testing.assert_allclose([c.value for c in lr.concepts], np.sort(ref)[::-1][:5], rtol=1e-4)
        assert lr.concepts[0].index == int(np.argmax(Ts[lr.layer][int(np.argmax(a * Ts[lr.layer].max(1)))]))
        tok = rec[lr.layer][0][real].double().numpy()
        per = (tok / np.linalg.norm(tok, axis=1, keepdims=True)) @ Ts[lr.layer]
        for j, t in enumerate(lr.tokens):
            assert [c.index for c in t.concepts] == list(np.argsort(-per[j])[:2])
        top = lr.concepts[0].index
        np.testing.assert_allclose(lr.highlight[top], per[:, top], rtol=1e-4, atol=1e-6)


def test_read_bad_input_and_truncation(tiny_models, capsys) -> None:
    path = str(tiny_models["llama"])
    store(Registry(), np.eye(48), "procrustes", 2, path)
    with pytest.raises(InputError, match="empty"):
        read_text(ReadConfig("   "))
    with pytest.raises(NotFoundError, match=r"layer 3 \(fitted layers: 2\)") as exc:
        read_text(ReadConfig("The dog.", layers=(3,)))
    assert "atlas fit" in str(exc.value.hint)
    with pytest.raises(InputError, match=r"layer 7 is out of range for .* \(4 layers\)") as exc:
        read_text(ReadConfig("The dog.", layers=(7,)))  # not an `atlas fit` that cannot succeed
    assert exc.value.hint == "valid layers are 0..3"
    long = "The dog and the cat met today. " * 60  # > 256 tokens: the tiny model's context
    res = read_text(ReadConfig(long, layers=(2,)))
    assert res.truncated and res.n_tokens == 256 and "only the first 256" in res.warnings[0]
    res = read_text(ReadConfig("The dog and the cat met today.", max_tokens=4))
    assert res.truncated and res.n_tokens == 4 and "--max-tokens" in res.warnings[0]
    # the CLI: one clear line, non-zero exit where nothing can be shown; a warning (exit 0) on truncation
    for args, needle in ((["read", ""], "empty"), (["read", "x", "--layer", "3"], "atlas fit"),
                         (["read"], "exactly one of TEXT or --file"), (["read", "--file", "/nonexistent"], "does not exist")):
        assert main(args) == 2
        e = capsys.readouterr().err
        assert needle in e and "Traceback" not in e and len(e.strip().splitlines()) == 1, e
    assert main(["read", long, "--json"]) == 0
    out = capsys.readouterr()
    assert "warning" in out.err and "only the first 256" in out.err and json.loads(out.out)["truncated"] is True


def test_read_cli_on_tiny_atlas(aligned, tmp_path, capsys) -> None:
    atlas, fits = aligned
    reg = Registry()
    cov = next(a for a in fits if a.provenance["method"] == "cov")
    tf = transform_for(cov, reg)  # the fit's subject mean, from the alignment's parent activations
    from atlascli.activations import Activations

    parent = next(Activations(reg.get(p)) for p in cov.parents if reg.get(p).provenance.get("model") == cov.provenance["subject"])
    X = parent.dense(2).double().numpy()
    assert tf.kind == "centre"
    np.testing.assert_allclose(tf.mean.numpy(), X.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(tf.std.numpy(), X.std(0, ddof=1), rtol=1e-6, atol=1e-9)
    proc = next(a for a in fits if a.provenance["method"] == "procrustes")
    tp = transform_for(proc, reg, centre=True)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    assert tp.kind == "row-l2" and transform_for(proc, reg).offset is None
    auto = transform_for(proc, reg, centre=None)  # the CLI default: centre when the fit's data is in the registry
    np.testing.assert_allclose(auto.offset.numpy(), Xn.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(tp.offset.numpy(), Xn.mean(0), rtol=1e-6, atol=1e-9)
    assert transform_for(cov, reg, centre=True).offset is None  # cov centres already
    f = tmp_path / "t.txt"
    f.write_text("The dog and the cat met a London night today.")
    for method in ("procrustes", "cov"):
        code = main(["read", "--file", str(f), "--layers", "2", "--method", method, "--top", "4", "--json"])
        out = capsys.readouterr()
        assert code == 0, out.err
        data = json.loads(out.out)
        lr = data["layers"][0]
        assert data["atlas"] == atlas.id and lr["method"] == method and len(lr["concepts"]) == 4
        assert [c["label"] for c in lr["concepts"]] == [atlas.label(c["index"]) for c in lr["concepts"]]
    assert main(["read", "--file", str(f), "--centre", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["transform"] == "row-l2+centre+z"
    assert main(["read", "--file", str(f), "--centre", "--no-standardise", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["transform"] == "row-l2+centre"
    assert main(["read", "--file", str(f), "--no-standardise", "--json"]) == 0  # default: centred raw scores
    assert json.loads(capsys.readouterr().out)["layers"][0]["transform"] == "row-l2+centre"
    assert main(["read", "--file", str(f), "--json"]) == 0  # z-scores: centring would be a shift, so skipped
    assert json.loads(capsys.readouterr().out)["layers"][0]["transform"] == "row-l2+z"
    assert main(["read", "The dog and the cat met a London night today.", "--per-token", "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "per token" in text and "where the top concepts are active" in text and "'dog'" in text


def test_read_standardised_scores_are_z_scores_over_the_fit_sentences(aligned) -> None:
    """--standardise: each concept's score minus its mean over the fit's sentences, over their standard deviation
    (numpy reference from the parent activations and the stored T); the scale is cached and reused."""
    from atlascli.activations import Activations
    from atlascli.paths import atlas_home
    from atlascli.translate import StoredTranslation

    atlas, fits = aligned
    reg = Registry()
    proc = next(a for a in fits if a.provenance["method"] == "procrustes")
    parent = next(Activations(reg.get(p)) for p in proc.parents
                  if reg.get(p).provenance.get("model") == proc.provenance["subject"])
    X = parent.dense(2).double().numpy()
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    tr = StoredTranslation.from_artifact(proc)
    T = tr.rows(list(range(tr.dc))).double().numpy().T  # [ds, dc]
    S = (Xn - Xn.mean(0)) @ T
    mean, std = S.mean(0), S.std(0, ddof=1)
    text = "The dog and the cat met a London night today."
    width = atlas.width
    raw = read_text(ReadConfig(text, layers=(2,), centre=True, top=width))
    z = read_text(ReadConfig(text, layers=(2,), centre=True, top=width, standardise=True))
    assert z.layers[0].transform == "row-l2+centre+z" and raw.layers[0].transform == "row-l2+centre"
    r = np.zeros(width)
    for c in raw.layers[0].concepts:
        r[c.index] = c.value
    live = std > 1e-6 * std.max()  # constant concepts (zero columns of T) score 0
    want = np.where(live, (r - mean) / np.where(live, std, 1), 0.0)
    got = np.zeros(width)
    for c in z.layers[0].concepts:
        got[c.index] = c.value
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert list(np.argsort(-want, kind="stable")[:3]) == [c.index for c in z.layers[0].concepts[:3]]
    cached = list((atlas_home() / "cache" / "read-scale").glob(f"{proc.id}-*.safetensors"))
    assert len(cached) == 1
    again = read_text(ReadConfig(text, layers=(2,), centre=True, top=5, standardise=True))
    assert [c.index for c in again.layers[0].concepts] == [c.index for c in z.layers[0].concepts[:5]]


def test_read_combines_layers_by_their_mean_z_score(aligned, tiny_models) -> None:
    """With two standardised layers the combined column is the top of the mean of the per-layer z-scores (each
    checked alone with every concept listed); a single layer or raw scores give no combined column."""
    from atlascli.fit import FitConfig, fit

    atlas, fits = aligned
    p = fits[0].provenance
    fit(FitConfig(subject=p["subject"], layers=(1,), methods="procrustes", atlas=atlas.id, site=p["site"],
                  dataset="tiny", limit=150), Registry())
    text = "The dog and the cat met a London night today."
    width = atlas.width
    per = {}
    for layer in (1, 2):
        alone = read_text(ReadConfig(text, layers=(layer,), top=width, standardise=True))
        assert alone.combined == [] and alone.layers[0].transform.endswith("+z")
        v = np.zeros(width)
        for c in alone.layers[0].concepts:
            v[c.index] = c.value
        per[layer] = v
    both = read_text(ReadConfig(text, layers=(1, 2), top=5, standardise=True))
    want = (per[1] + per[2]) / 2
    assert [c.index for c in both.combined] == list(np.argsort(-want, kind="stable")[:5])
    np.testing.assert_allclose([c.value for c in both.combined], np.sort(want)[::-1][:5], rtol=1e-4, atol=1e-5)
    assert read_text(ReadConfig(text, layers=(1, 2), top=5, standardise=False)).combined == []
    assert read_text(ReadConfig(text, layers=(2, 2), top=5, standardise=True)).combined == []  # one layer twice
