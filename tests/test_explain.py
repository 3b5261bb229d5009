"""`atlas explain`: rows of T read from storage (checked against numpy), planted subjects whose features
are known mixtures of atlas features, peak tokens against the stored activations, bad input, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from atlascli.cli.main import main
from atlascli.errors import InputError, NotFoundError
from atlascli.explain import ExplainConfig, explain
from atlascli.readout import map_to_atlas, subject_rows
from atlascli.registry import Registry
from atlascli.translate import METHODS, MultiFitter, StoredTranslation, Translation


def planted(n: int, dc: int, k: int, seed: int, mix: int = 1, ds: int | None = None,
            noise: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse non-negative atlas codes C [n, dc] (k active per row) and subject rows X = C M^T + noise, where
    each subject feature is a positive mixture of ``mix`` atlas features (mix=1: a permuted, rescaled copy)."""
    rng = np.random.default_rng(seed)
    ds = ds or dc
    C = np.zeros((n, dc))
    for i in range(n):
        C[i, rng.choice(dc, k, replace=False)] = rng.uniform(0.5, 3.0, k)
    M = np.zeros((ds, dc))
    if mix == 1:
        M[np.arange(ds), rng.permutation(dc)[:ds]] = rng.uniform(0.5, 2.0, ds)
    else:
        for i in range(ds):
            M[i, rng.choice(dc, mix, replace=False)] = rng.uniform(0.5, 2.0, mix)
    return C @ M.T + noise * rng.standard_normal((n, ds)), C, M


def store_alignment(reg: Registry, T: Any, method: str, layer: int = 0, subject: str = "planted",
                    name: str | None = None) -> Any:
    """Commit a translation as an alignment artifact (no atlas, no parents)."""
    stage = reg.stage("alignment", name or f"align-{method}-L{layer}")
    tr = T if isinstance(T, Translation) else Translation(method, torch.tensor(np.asarray(T), dtype=torch.float32))
    tr.save(stage.path / "translation.safetensors")
    return stage.commit({"method": method, "layer": layer, "subject": subject, "site": "mlp",
                         "shape": list(tr.shape)})


def precision_at(pred: list[int], truth: np.ndarray) -> float:
    """|pred ∩ support(truth)| / min(len(pred), |support|)."""
    pos = set(np.flatnonzero(truth > 0).tolist())
    k = min(len(pred), len(pos))
    return len(set(pred[:k]) & pos) / k


def test_subject_rows_and_mapping_match_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    T = rng.standard_normal((7, 11))
    Translation("x", torch.tensor(T, dtype=torch.float32)).save(tmp_path / "t.safetensors")
    tr = StoredTranslation(tmp_path / "t.safetensors")
    np.testing.assert_allclose(subject_rows(tr, [3, 0, 6]).numpy(), T[[3, 0, 6]], rtol=1e-6)
    assert subject_rows(tr, []).shape == (0, 11)
    X = rng.standard_normal((4, 7))
    for block in (4 * 7 * 3, 1 << 20):  # 3 atlas rows per block, and all at once
        np.testing.assert_allclose(map_to_atlas(tr, torch.tensor(X), block).numpy(), X @ T, rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="7"):
        map_to_atlas(tr, torch.zeros(2, 5))


def test_explain_planted_permutation_gives_back_the_planted_feature() -> None:
    X, C, M = planted(2000, 40, 4, seed=0)
    reg = Registry()
    for method, tr in MultiFitter(["procrustes", "linreg"]).update(X, C).results().items():
        store_alignment(reg, tr, method)
        res = explain(ExplainConfig(features=tuple(range(40)), method=method, samples=0, top=5))
        assert res.layer == 0 and res.method == method and len(res.features) == 40
        T = tr.T.double().numpy()
        for f in res.features:
            assert f.positive[0].index == int(np.argmax(M[f.feature]))  # the planted atlas feature
            assert [c.index for c in f.positive] == list(np.argsort(-T[f.feature])[: len(f.positive)])
            np.testing.assert_allclose([c.value for c in f.positive], T[f.feature, [c.index for c in f.positive]],
                                       rtol=1e-5)
            assert f.row_norm == pytest.approx(np.linalg.norm(T[f.feature]), rel=1e-5)
            np.testing.assert_allclose([c.share for c in f.positive], [c.value / f.row_norm for c in f.positive])
            negs = [c.value for c in f.negative]
            assert all(v < 0 for v in negs) and negs == sorted(negs)
            assert f.examples == [] and f.histogram is None


@pytest.mark.parametrize("method", METHODS)
def test_explain_planted_mixtures_precision_at_5(method: str) -> None:
    """Each subject feature is a positive mixture of 5 atlas features: explain must name them (P@5 >= 0.9)."""
    X, C, M = planted(2000, 60, 5, seed=0, mix=5, ds=30)
    tr = MultiFitter([method], k=100).update(X, C).results()[method]
    store_alignment(Registry(), tr, method)
    res = explain(ExplainConfig(features=tuple(range(30)), method=method, samples=0, top=5))
    p5 = np.mean([precision_at([c.index for c in f.positive], M[f.feature]) for f in res.features])
    assert p5 >= 0.9, (method, p5)
    # a random translation of the same shape does not pass: the test can fail
    store_alignment(Registry(), np.random.default_rng(1).standard_normal((30, 60)), method, layer=1)
    bad = explain(ExplainConfig(features=tuple(range(30)), layer=1, method=method, samples=0, top=5))
    assert np.mean([precision_at([c.index for c in f.positive], M[f.feature]) for f in bad.features]) < 0.5


def test_explain_bad_input() -> None:
    reg = Registry()
    store_alignment(reg, np.eye(6, 8), "procrustes", layer=3)
    with pytest.raises(InputError, match=r"subject feature 6 does not exist.*features 0\.\.5"):
        explain(ExplainConfig(features=(1, 6), samples=0))
    with pytest.raises(InputError, match="subject feature -1"):
        explain(ExplainConfig(features=(-1,), samples=0))
    with pytest.raises(NotFoundError, match=r"at layer 5 \(fitted layers: 3\)") as exc:
        explain(ExplainConfig(features=(1,), layer=5, samples=0))
    assert "atlas fit --subject planted --layer 5 --method procrustes" in str(exc.value.hint)
    with pytest.raises(NotFoundError, match="no cov alignment"):
        explain(ExplainConfig(features=(1,), method="cov", samples=0))
    with pytest.raises(InputError, match="no subject feature"):
        explain(ExplainConfig(features=(), samples=0))


def test_explain_cli_bad_input_one_line(capsys) -> None:
    store_alignment(Registry(), np.eye(6, 8), "procrustes", layer=3)
    for args, needle in ((["--feature", "9"], "does not exist"), (["--feature", "1", "--layer", "4"], "atlas fit"),
                         ([], "no subject feature"), (["--features", "1,x"], "comma-separated")):
        assert main(["explain", *args, "--samples", "0"]) == 2
        e = capsys.readouterr().err
        assert needle in e and "Traceback" not in e and len(e.strip().splitlines()) == 1, e
    assert main(["explain", "--features", "1,2", "--samples", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [f["feature"] for f in data["features"]] == [1, 2] and data["features"][0]["positive"][0]["index"] == 1


def test_explain_on_tiny_models_examples_peaks_histogram(aligned, tiny_models, capsys, monkeypatch) -> None:
    from atlascli.models import load_model
    from atlascli.samples import top_examples
    from atlascli.search_run import test_activations

    atlas, fits = aligned
    proc = next(a for a in fits if a.provenance["method"] == "procrustes")
    code = main(["explain", "--layer", "2", "--feature", "5", "--samples", "3", "--test-limit", "100", "--top", "4",
                 "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out)
    assert data["alignment"] == proc.id and data["atlas"] == atlas.id and data["layer"] == 2
    f = data["features"][0]
    T = StoredTranslation(proc.file("translation.safetensors")).load().double().numpy()
    assert [c["index"] for c in f["positive"]] == list(np.argsort(-T[5])[:4])
    assert [c["label"] for c in f["positive"]] == [atlas.label(c["index"]) for c in f["positive"]]
    # examples: the max-activating test sentences; peak token: where the re-run activation is largest
    acts, sentences = test_activations(proc, 100, Registry())
    ref = top_examples(acts, 2, [5], sentences, 3)[5]
    assert [(e["activation"], e["text"]) for e in f["examples"]] == ref
    for e in f["examples"]:
        assert e["peak_activation"] == pytest.approx(e["activation"], rel=1e-3, abs=1e-5)
        a, b = e["peak_span"]
        assert e["text"][a:b] == e["peak_token"]
    col = acts.dense(2)[:, 5].numpy()
    h = f["histogram"]
    assert sum(h["counts"]) == h["n"] == len(col) and h["mean"] == pytest.approx(col.mean(), rel=1e-5)
    np.testing.assert_array_equal(h["counts"], np.histogram(col, bins=12)[0])
    # the CLI took the peak positions kept at extraction (tokenizer only); re-running the model agrees
    lm = load_model(str(tiny_models["llama"]))
    res = explain(ExplainConfig(features=(5, 7), layer=2, samples=3, test_limit=100), lm=lm)
    rerun = [(e.text, e.peak_token, e.peak_span) for e in res.features[0].examples]
    assert rerun == [(e["text"], e["peak_token"], tuple(e["peak_span"])) for e in f["examples"]]
    with monkeypatch.context() as m:  # no model load, no forward pass
        m.setattr("atlascli.models.load_model", lambda *a, **k: pytest.fail("explain loaded the model"))
        stored = explain(ExplainConfig(features=(5, 7), layer=2, samples=3, test_limit=100))
    for a_, b_ in zip(stored.features, res.features):
        assert [(e.peak_token, e.peak_span) for e in a_.examples] == [(e.peak_token, e.peak_span) for e in b_.examples]
        assert [e.peak_activation for e in a_.examples] == pytest.approx([e.peak_activation for e in b_.examples],
                                                                         rel=1e-3, abs=1e-5)
    # side by side, in the terminal
    assert main(["explain", "--layer", "2", "--features", "5,7", "--samples", "2", "--test-limit", "100"]) == 0
    text = capsys.readouterr().out
    assert "feature 5" in text and "feature 7" in text and "histogram" in text
    assert main(["explain", "--layer", "2", "-f", "5", "--samples", "2", "--test-limit", "100", "--no-peaks"]) == 0
    assert "atlas concepts" in capsys.readouterr().out


def test_explain_labels_with_and_without_coherence(capsys) -> None:
    """Label records may carry ``coherence`` / ``coherent`` (new atlases) or not (old ones)."""
    from atlascli.registry.files import atomic_write_json

    reg = Registry()
    stage = reg.stage("atlas", "atlas-fake")
    labels = [{"index": i, "label": f"concept {i}", "description": f"concept {i}"} for i in range(8)]
    labels[2].update(coherence=0.9, coherent=True)
    labels[5].update(coherence=0.1, coherent=False)
    atomic_write_json(stage.path / "labels.json", labels)
    atlas_art = stage.commit({"name": "fake", "width": 8})
    T = np.zeros((3, 8))
    T[0, [2, 5, 7]] = [3.0, 2.0, 1.0]
    T[0, 1] = -1.0
    stage = reg.stage("alignment", "align-fake")
    Translation("procrustes", torch.tensor(T, dtype=torch.float32)).save(stage.path / "translation.safetensors")
    stage.commit({"method": "procrustes", "layer": 0, "subject": "planted", "site": "mlp", "atlas": atlas_art.id})
    res = explain(ExplainConfig(features=(0,), samples=0, top=3))
    assert res.atlas == atlas_art.id
    got = [(c.index, c.label, c.coherence, c.coherent) for c in res.features[0].positive]
    assert got == [(2, "concept 2", 0.9, True), (5, "concept 5", 0.1, False), (7, "concept 7", None, None)]
    assert [(c.index, c.value) for c in res.features[0].negative] == [(1, -1.0)]
    assert main(["explain", "-f", "0", "--samples", "0", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "concept 2" in out and "0.90" in out and "0.10 ✗" in out
