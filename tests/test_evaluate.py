"""Evaluations: planted ground truth for quality and retrieval, independent recomputation with scikit-learn,
the overlap refusal, and the CLI end to end on tiny models (offline judge and a scripted chat endpoint)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from atlascli.cli.main import main
from atlascli.errors import InputError
from atlascli.evaluate.data import TestData, check_disjoint
from atlascli.evaluate.quality import sample_features, translation_quality
from atlascli.evaluate.retrieval import concept_sets, random_retrieval, retrieval
from atlascli.extract import Shard
from atlascli.registry import Registry
from atlascli.translate.base import Translation


class PlantedData(TestData):
    """In-memory test data: subject rows X and atlas codes C, served in shards."""

    def __init__(self, X: np.ndarray, C: np.ndarray, shard: int = 64) -> None:
        super().__init__(len(X), {0: None},  # type: ignore[dict-item]
                         SimpleNamespace(widths={0: C.shape[1]}, shards=self._atlas_shards),  # type: ignore[arg-type]
                         0, "planted")
        self.X, self.C, self.shard = torch.tensor(X, dtype=torch.float32), sp.csr_matrix(C), shard

    def _atlas_shards(self, layer: int) -> Iterator[Shard]:
        for a in range(0, self.n, self.shard):
            c = self.C[a : a + self.shard]
            yield Shard(torch.arange(a, a + c.shape[0]), None, (c.indptr, c.indices, c.data), c.shape[1])

    def paired(self, layer: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        for a in range(0, self.n, self.shard):
            b = min(a + self.shard, self.n)
            yield torch.arange(a, b), self.X[a:b], self.C[a:b]


def _planted(n: int = 600, dc: int = 40, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse non-negative atlas codes and a subject that holds them permuted and rescaled, plus noise."""
    rng = np.random.default_rng(seed)
    C = np.zeros((n, dc))
    for i in range(n):
        C[i, rng.choice(dc, k, replace=False)] = rng.uniform(0.5, 3.0, k)
    perm = rng.permutation(dc)
    R = np.zeros((dc, dc))
    R[np.arange(dc), perm] = rng.uniform(0.5, 2.0, dc)  # subject feature i = scaled atlas feature perm[i]
    X = C @ R.T + 0.01 * rng.standard_normal((n, dc))
    return X, C, R


def _alignment(reg: Registry, T: np.ndarray, name: str, layer: int = 0) -> Any:
    stage = reg.stage("alignment", name)
    Translation(name, torch.tensor(T, dtype=torch.float32)).save(stage.path / "translation.safetensors")
    return stage.commit({"method": name, "layer": layer, "subject": "planted", "shape": list(T.shape)})


def test_quality_planted_and_matches_sklearn() -> None:
    X, C, R = _planted()
    data = PlantedData(X, C)
    reg = Registry()
    good = _alignment(reg, R, "planted")
    bad = _alignment(reg, np.random.default_rng(1).standard_normal(R.shape), "random")
    feats = sample_features(data.atlas_positive_counts(), data.n, 10, seed=0)
    assert len(feats) == 10 and feats == sample_features(data.atlas_positive_counts(), data.n, 10, seed=0)
    res, base = translation_quality(data, [good, bad], feats)
    assert res[good.id].auroc > 0.95 and res[good.id].ap > 0.8
    assert abs(res[bad.id].auroc - 0.5) < 0.15 and abs(base[0].random_auroc - 0.5) < 0.1
    assert base[0].positive_rate == pytest.approx((C[:, feats] > 0).mean())
    # independent recomputation of one feature's ranking
    f = feats[3]
    s = R[:, f] / np.linalg.norm(R, axis=1)
    Xc = X - X.mean(0)
    scores = (Xc / np.linalg.norm(Xc, axis=1, keepdims=True)) @ (s / np.linalg.norm(s))
    a, p = res[good.id].per_feature[f]
    assert a == pytest.approx(roc_auc_score(C[:, f] > 0, scores), abs=1e-5)
    assert p == pytest.approx(average_precision_score(C[:, f] > 0, scores), abs=1e-5)
    with pytest.raises(InputError, match="outside the atlas"):
        sample_features(data.atlas_positive_counts(), data.n, 10, 0, given=[3, 99])


def test_retrieval_planted() -> None:
    X, C, R = _planted(n=800, seed=2)
    data = PlantedData(X, C)
    reg = Registry()
    sets = concept_sets(data, 0, n_features=25, set_size=10, seed=0)
    assert len(sets.candidates) == 25 and 20 <= len(sets.kept) <= 25
    # the concept set of subject feature i is the 10 sentences where it is largest
    i = sets.kept[0]
    top = np.argsort(-X[:, i], kind="stable")[:10]
    assert np.allclose(sets.queries[0].numpy(), C[top].mean(0), atol=1e-5)
    good = retrieval(sets, _alignment(reg, R, "planted"))
    bad = retrieval(sets, _alignment(reg, np.random.default_rng(3).standard_normal(R.shape), "random"))
    chance = random_retrieval(len(sets.kept), R.shape[0])
    assert good.mrr > 0.95 and good.mpp > bad.mpp
    assert bad.mrr < 0.5 and chance.mrr < 0.3


def test_overlapping_test_data_is_refused(aligned, tiny_dataset, tmp_path):
    atlas, fits = aligned
    reg = Registry()
    with pytest.raises(InputError, match=r"is the data alignment .* was fitted on \(train split of [0-9a-f]{12}\)"):
        check_disjoint(fits, tiny_dataset, "train", 150, reg)
    check_disjoint(fits, tiny_dataset, "test", 150, reg)  # the held-out split is fine
    from atlascli.corpus import CorpusConfig, load_split, prepare_corpus

    other = tmp_path / "other.txt"
    other.write_text(" ".join(load_split(tiny_dataset, "train")[:40]))
    art, _ = prepare_corpus(CorpusConfig(name="other", inputs=(str(other),), low_pct=0, high_pct=100, test_fraction=0.5))
    with pytest.raises(InputError, match=r"test sentences .* were used to fit"):
        check_disjoint(fits, art, "test", 20, reg)


def _save_concepts(atlas: Any) -> None:
    from atlascli.concepts import save_concept
    from atlascli.search import query_from_features

    save_concept("dogs", query_from_features("3,7", atlas), atlas)
    save_concept("music", query_from_features("5,9,11", atlas), atlas)


def test_evaluate_cli_quality_retrieval(aligned, capsys, tmp_path):
    code = main(["evaluate", "quality,retrieval", "--test-limit", "150", "--n-features", "8", "--retrieval-features", "20",
                 "--set-size", "5", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    rep = json.loads(out.out)
    assert rep["methods"] == ["procrustes", "cov"] and rep["layers"] == [2]
    for m in ("procrustes", "cov"):
        q = rep["quality"][m]["2"]
        assert 0 <= q["auroc"] <= 1 and 0 <= q["ap"] <= 1
        r = rep["retrieval"][m]["2"]
        assert 0 < r["mrr"] <= 1 and 0 < r["mpp"] <= 1
    assert len(rep["quality"]["features"]) == 8 and rep["retrieval"]["kept"]["2"]["sampled"] == 20
    assert rep["data"]["n_test"] == 150
    art = Registry().get(rep["artifact"], "report")
    art.verify()
    assert json.loads(art.file("report.json").read_text())["quality"] == rep["quality"]
    # table + figure
    fig = tmp_path / "eval.png"
    code = main(["evaluate", "quality", "--test-limit", "150", "--n-features", "8", "--plot", str(fig)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "Orthogonal Procrustes" in out.out and "Positive rate" in out.out
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # bad input: one clear line each
    assert main(["evaluate", "quality", "--features", "3,999", "--test-limit", "150"]) == 2
    assert "outside the atlas" in capsys.readouterr().err
    assert main(["evaluate", "quality", "--layers", "1"]) == 2
    assert "atlas fit" in capsys.readouterr().err
    assert main(["evaluate", "quality", "--methods", "all"]) == 2
    assert "fitted: {'procrustes': [2], 'cov': [2], 'corr': []" in capsys.readouterr().err
    assert main(["evaluate", "speed"]) == 2
    assert "unknown evaluation" in capsys.readouterr().err


def test_evaluate_cli_steering(aligned, capsys, tmp_path):
    atlas, _ = aligned
    _save_concepts(atlas)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The dog\nA cat sat on\n")
    args = ["evaluate", "steering", "--concepts", "dogs;music", "--prompts", str(prompts), "--lambdas", "-30,0,30",
            "--max-new-tokens", "4", "--methods", "procrustes", "--json"]
    code = main(args)
    out = capsys.readouterr()
    assert code == 0, out.err
    st = json.loads(out.out)["steering"]
    assert st["columns"] == ["2"] and set(st["cells"]) == {"procrustes", "random"}
    assert st["lambdas"] == [-30.0, 0.0, 30.0] and st["judge"]["judge"] == "embedding"
    assert -1 < st["judge"]["threshold"] < 1 and 0 <= st["judge"]["accuracy_on_paper_examples"] <= 1
    cell = st["cells"]["procrustes"]["2"]
    assert set(cell["concepts"]) == {"dogs", "music"} and cell["unrated"] == 0
    for c in cell["concepts"].values():
        assert set(c["rates"]) == {"-30.0", "0.0", "30.0"}
    assert len(st["unsteered"]["dogs"]) == 2


def test_evaluate_steering_chat_judge_unrated(aligned, capsys, tmp_path, judge_server):
    atlas, _ = aligned
    _save_concepts(atlas)
    srv = judge_server(["junk"] * 200)
    code = main(["evaluate", "steering", "--concepts", "dogs", "--lambdas", "0,30", "--max-new-tokens", "3",
                 "--methods", "procrustes", "--judge", "openai:test-judge", "--judge-url", srv.url, "--judge-retries", "2",
                 "--judge-backoff", "0", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    st = json.loads(out.out)["steering"]
    cell = st["cells"]["procrustes"]["2"]
    # nothing could be rated: all 16 seed prompts x 2 lambdas are unrated and no score is invented
    assert cell["unrated"] == 32 and cell["faithfulness"] is None
    assert cell["concepts"]["dogs"]["rates"] == {"0.0": None, "30.0": None}
    assert st["judge"]["failed_attempts"] > 0 and srv.requests
