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

from atlascli.activations import Shard
from atlascli.cli.main import main
from atlascli.errors import InputError
from atlascli.evaluate.data import TestData, check_disjoint
from atlascli.evaluate.quality import sample_features, translation_quality
from atlascli.evaluate.retrieval import chance_retrieval, concept_sets, retrieval
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
    sets = concept_sets(data, 0, n_features=25, set_size=10, seed=0, construction="top")
    assert len(sets.candidates) == 25 and 20 <= len(sets.kept) <= 25
    assert len(sets.kept) + sum(len(v) for v in sets.dropped.values()) == 25  # every drop counted
    # the "top" concept set of subject feature i is the 10 sentences where it is largest
    i = sets.kept[0]
    top = np.argsort(-X[:, i], kind="stable")[:10]
    assert np.allclose(sets.queries[0].numpy(), C[top].mean(0), atol=1e-5)
    good = retrieval(sets, _alignment(reg, R, "planted"))
    bad = retrieval(sets, _alignment(reg, np.random.default_rng(3).standard_normal(R.shape), "random"))
    assert good["validated"].mrr > 0.95 and good["all"].mrr > 0.95 and good["validated"].mpp > bad["validated"].mpp
    assert bad["all"].mrr < 0.5
    assert good["validated"].n_candidates == len(sets.kept) and good["all"].n_candidates == R.shape[0]


def test_retrieval_ranks_among_validated_features() -> None:
    """The validated-candidate MRR/MPP equal eq. 10/11 recomputed by hand on the similarity columns of the kept
    features; the chance levels are H_n/n and 1/n of that same set (the paper's 0.0147 / 0.0022 for n=454)."""
    X, C, R = _planted(n=800, seed=5)
    data = PlantedData(X, C)
    reg = Registry()
    sets = concept_sets(data, 0, n_features=30, set_size=10, seed=1, construction="tail")
    T = np.random.default_rng(7).standard_normal(R.shape)
    res = retrieval(sets, _alignment(reg, T, "noisy"))
    Q = sets.queries.numpy().astype(np.float64)
    sim = (Q @ T.T) / np.linalg.norm(T, axis=1) / np.linalg.norm(Q, axis=1, keepdims=True)
    sub = sim[:, sets.kept]
    n = len(sets.kept)
    rr = [1.0 / (1 + sum(sub[q, k] > sub[q, q] for k in range(n) if k != q)) for q in range(n)]
    z = (sub - sub.mean(1, keepdims=True)) / sub.std(1, keepdims=True)
    pp = [np.exp(z[q, q]) / np.exp(z[q]).sum() for q in range(n)]
    assert res["validated"].mrr == pytest.approx(np.mean(rr), abs=1e-5)
    assert res["validated"].mpp == pytest.approx(np.mean(pp), abs=1e-5)
    ch = chance_retrieval(n)
    assert ch["mrr"] == pytest.approx(sum(1.0 / k for k in range(1, n + 1)) / n) and ch["mpp"] == pytest.approx(1 / n)
    paper = chance_retrieval(454)
    assert round(paper["mrr"], 4) == 0.0147 and round(paper["mpp"], 4) == 0.0022
    # a uniformly random ranking scores H_n/n on average (Monte Carlo)
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((20000, n))
    from atlascli.metrics import reciprocal_ranks

    assert reciprocal_ranks(sims, rng.integers(0, n, 20000)).mean() == pytest.approx(ch["mrr"], rel=0.03)


def test_tail_concept_sets_skip_the_top_sentences() -> None:
    X, C, _ = _planted(n=600, seed=4)
    data = PlantedData(X, C)
    sets = concept_sets(data, 0, n_features=10, set_size=8, seed=0, construction="tail")
    assert "ranked 21-200" in sets.construction
    top = concept_sets(data, 0, n_features=10, set_size=8, seed=0, construction="top")
    assert top.candidates == sets.candidates and "Semantic Lens" in top.construction
    assert sets.kept and len(sets.members) == len(sets.kept)
    for f, members in zip(sets.kept, sets.members):
        order = np.argsort(-X[:, f], kind="stable")
        assert len(set(members)) == 8 and set(members) <= set(order[20:200].tolist())
        assert not set(members) & set(order[:20].tolist())
    for f, members in zip(top.kept, top.members):
        assert set(members) == set(np.argsort(-X[:, f], kind="stable")[:8].tolist())
    with pytest.raises(InputError, match="ranks 21-200"):
        concept_sets(PlantedData(X[:25], C[:25]), 0, n_features=5, set_size=8, seed=0, construction="tail")


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
                 "--set-size", "5", "--concept-construction", "top", "--json"])
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
    q = rep["quality"]
    assert q["dropped"]["count"] == sum(len(v) for v in q["dropped"]["features"].values()) == 8 - q["used"]
    assert q["baseline"]["2"]["random_draws"] == 3 and q["baseline"]["2"]["random_auroc_std"] is not None
    r = rep["retrieval"]
    kept = r["kept"]["2"]
    assert kept["kept"] + kept["dropped"] == kept["sampled"] and r["candidates"] == "validated"
    n = kept["kept"]
    base = r["baseline"]["2"]
    assert base["validated"]["mrr"] == pytest.approx(sum(1 / k for k in range(1, n + 1)) / n)
    assert base["mpp"] == base["validated"]["mpp"] == pytest.approx(1 / n)
    assert base["all"]["mpp"] == pytest.approx(1 / 48) and base["all"]["n_candidates"] == 48
    assert r["procrustes"]["2"]["mrr"] == r["procrustes"]["2"]["validated"]["mrr"]
    assert r["procrustes"]["2"]["validated"]["n_candidates"] == n and "top:" in r["construction"]
    assert rep["data"]["n_test"] == 150
    art = Registry().get(rep["artifact"], "report")
    art.verify()
    assert json.loads(art.file("report.json").read_text())["quality"] == rep["quality"]
    # table + figure
    fig = tmp_path / "eval.png"
    code = main(["evaluate", "quality", "--test-limit", "150", "--n-features", "8", "--plot", str(fig)])
    out = capsys.readouterr()
    assert code == 0, out.err
    narrow = "OP = Orthogonal Procrustes" in out.out and "Pos. rate" in out.out  # < 120 columns: legend
    assert narrow or ("Orthogonal Procrustes" in out.out and "Positive rate" in out.out)
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code = main(["evaluate", "retrieval", "--test-limit", "150", "--retrieval-features", "20", "--set-size", "5",
                 "--concept-construction", "top"])
    out = capsys.readouterr()
    assert code == 0, out.err
    text = " ".join(out.out.split())  # Rich wraps titles
    assert "ranked among the validated features (the paper's protocol)" in text and "Chance (H_n/n, 1/n)" in text
    assert "among all subject features (harder)" in text and "concept sets: top:" in text
    # bad input: one clear line each
    assert main(["evaluate", "quality", "--features", "3,999", "--test-limit", "150"]) == 2
    assert "outside the atlas" in capsys.readouterr().err
    assert main(["evaluate", "quality", "--layers", "1"]) == 2
    assert "atlas fit" in capsys.readouterr().err
    assert main(["evaluate", "quality", "--layers", "2,8"]) == 2  # the tiny Llama has 4: no `atlas fit` to suggest
    assert "layer 8 is out of range" in (err := capsys.readouterr().err) and "atlas fit" not in err
    assert main(["evaluate", "quality", "--methods", "all"]) == 2
    assert "fitted: {'procrustes': [2], 'cov': [2], 'corr': []" in capsys.readouterr().err
    assert main(["evaluate", "speed"]) == 2
    assert "unknown evaluation" in capsys.readouterr().err


def test_evaluate_cli_steering(aligned, capsys, tmp_path, monkeypatch):
    atlas, _ = aligned
    _save_concepts(atlas)
    import importlib

    sr = importlib.import_module("atlascli.steering")  # (the package exports the API's steering() under that name)
    seen: list[dict[int, torch.Tensor]] = []
    rows: list[torch.Tensor] = []
    real = sr.steering

    def spy(model: Any, site: str, vectors: dict[int, torch.Tensor], lambdas: dict[int, Any]) -> Any:
        seen.append({k: v.clone() for k, v in vectors.items()})
        rows.append(torch.as_tensor(lambdas[2]))
        return real(model, site, vectors, lambdas)

    monkeypatch.setattr(sr, "steering", spy)
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
    # default: raw continuations, stated; random = 3 draws, a fresh direction per concept and per draw
    assert st["prompt_format"].startswith("raw continuations") and st["chat_template"] is False
    rnd = st["cells"]["random"]["2"]
    assert rnd["n_draws"] == 3 and len(rnd["draws"]) == 3 and rnd["faithfulness_std"] is not None
    # one batch per concept and cell: (procrustes + 3 random draws) x 2 concepts, both lambdas in each batch
    assert len(seen) == 2 + 2 * 3
    for r in rows:  # a row per (lambda, prompt): -30 for both prompts, then 30; the same direction for both lambdas
        assert len(r) == 4 and float(r[0]) < 0 and torch.allclose(r[:2], -r[2:]) and torch.equal(r[0], r[1])
    random_vecs = [v[2] for v in seen[2:]]  # one per (draw, concept)
    assert len(random_vecs) == 6
    assert all(not torch.allclose(a, b) for i, a in enumerate(random_vecs) for b in random_vecs[i + 1 :])
    from atlascli.cli.cmd_evaluate import render

    render(SimpleNamespace(quality={}, retrieval={}, steering=st, layers=[2], methods=["procrustes"]))
    text = " ".join(capsys.readouterr().out.split())
    assert ("Random (3 draws, mean ± sd)" in text or "Rnd (3x)" in text) and "prompts: raw continuations" in text


def test_prompt_format_defaults_to_the_papers_raw_continuations() -> None:
    from atlascli.evaluate.steer_run import prompt_format

    chat_tok, base_tok = SimpleNamespace(chat_template="{{ x }}"), SimpleNamespace(chat_template=None)
    assert prompt_format(chat_tok, None) == (False, "raw continuations (the paper's default; --chat applies the chat "
                                                    "template)")
    assert prompt_format(chat_tok, True)[0] is True and prompt_format(chat_tok, False)[1] == "raw continuations (--raw)"
    assert prompt_format(base_tok, True) == (False, "raw continuations (--chat asked, but the tokenizer has no chat "
                                                    "template)")


def test_evaluate_steering_chat_judge_that_never_answers_stops_clearly(aligned, capsys, tmp_path, judge_server):
    """A judge that only answers junk is given up after a run of consecutive failures (not hours of retries): one
    clear line, exit 2, no report; no score is ever invented for what it could not rate."""
    atlas, _ = aligned
    _save_concepts(atlas)
    srv = judge_server(["junk"] * 200)
    before = {a.id for a in Registry().list("report")}
    code = main(["evaluate", "steering", "--concepts", "dogs", "--lambdas", "0,30", "--max-new-tokens", "3",
                 "--methods", "procrustes", "--judge", "openai:test-judge", "--judge-url", srv.url, "--judge-retries", "2",
                 "--judge-backoff", "0", "--random-draws", "1", "--json"])
    out = capsys.readouterr()
    assert code == 2 and "requests in a row" in out.err and out.err.count("error:") == 1
    assert {a.id for a in Registry().list("report")} == before
    assert 10 <= len(srv.requests) <= 12  # the preflight, then 10 failed attempts


def test_quality_counts_dropped_features_and_draws_fresh_random_directions() -> None:
    from atlascli.evaluate.randomdirs import random_direction, random_like

    X, C, R = _planted()
    C[:, 7] = 0.0  # atlas feature 7 never fires on the test sentences
    data = PlantedData(X, C)
    good = _alignment(Registry(), R, "planted")
    res, base = translation_quality(data, [good], [3, 7, 11], seed=0, draws=4)
    assert base[0].dropped == {"no positive test sentence": [7]} and res[good.id].used == 2
    assert np.isnan(res[good.id].per_feature[7][0]) and not np.isnan(res[good.id].auroc)
    assert base[0].draws == 4 and base[0].random_auroc_std > 0
    # one direction per (feature, draw, seed): all different, reproducible
    dirs = [random_direction(48, "quality", s, 0, f, d) for s in (0, 1) for f in (3, 11) for d in (0, 1)]
    assert all(not torch.allclose(a, b) for i, a in enumerate(dirs) for b in dirs[i + 1 :])
    assert torch.equal(dirs[0], random_direction(48, "quality", 0, 0, 3, 0))
    v = {2: torch.ones(48), 3: 2 * torch.ones(48)}
    a, b = random_like(v, "steering", 0, 0, "dogs"), random_like(v, "steering", 0, 0, "music")
    c = random_like(v, "steering", 0, 1, "dogs")
    assert not torch.allclose(a[2], b[2]) and not torch.allclose(a[2], c[2]) and not torch.allclose(a[2], a[3] / 2)
    assert float(a[3].norm()) == pytest.approx(float(v[3].norm()), rel=1e-5)


def test_concept_set_file_is_validated(tmp_path) -> None:
    from atlascli.evaluate.concept_file import read_concept_sets, sets_for_layer

    good = [f"sentence {i} about dogs" for i in range(6)]
    path = tmp_path / "sets.json"
    path.write_text(json.dumps({"3": good, "60": good, "7": good[:2], "9": good[:4]}))
    sets = read_concept_sets(path)
    with pytest.raises(InputError) as exc:
        sets_for_layer(sets, 2, 48, path)
    msg = str(exc.value)
    assert "[60] outside the subject layer's 0..47" in msg and "7 (2), 9 (4)" in msg and "fewer than 5" in msg
    jl = tmp_path / "sets.jsonl"
    jl.write_text("\n".join(json.dumps({"feature": f, "sentences": good, "layer": 2}) for f in (1, 4)))
    assert sets_for_layer(read_concept_sets(jl), 2, 48, jl) == {1: good, 4: good}
    with pytest.raises(InputError, match="no concept set for layer 5"):
        sets_for_layer(read_concept_sets(jl), 5, 48, jl)
    jl.write_text('{"feature": "x", "sentences": []}\n{"feature": 1, "sentences": "not a list"}')
    with pytest.raises(InputError, match="2 malformed entries: entry 0: feature 'x'.*feature 1: 'sentences' must be"):
        read_concept_sets(jl)


def test_evaluate_cli_concept_file_tail_and_paper_refusals(aligned, tiny_models, capsys, tmp_path):
    atlas, _ = aligned
    from atlascli.corpus import load_split
    from atlascli.extract import ExtractConfig, extract_shard
    from atlascli.models import load_model
    from atlascli.registry import Registry as Reg

    # "LLM-written" sets stand-in: training sentences (never test ones) that activate each subject feature most
    train = load_split(Reg().get(Reg().latest("dataset").id, "dataset"), "train")
    lm = load_model(str(tiny_models["llama"]))
    acts = extract_shard(lm, train, ExtractConfig(model=str(tiny_models["llama"]), layers=(2,), site="mlp"), None)["L2"]
    sets = {str(f): [train[i] for i in acts[:, f].argsort(descending=True)[:6].tolist()] for f in range(0, 48, 3)}
    path = tmp_path / "sets.json"
    path.write_text(json.dumps(sets))
    code = main(["evaluate", "retrieval", "--test-limit", "150", "--concept-sets", str(path), "--candidates", "all",
                 "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    r = json.loads(out.out)["retrieval"]
    assert r["construction"].startswith(f"file {path}") and r["candidates"] == "all"
    kept = r["kept"]["2"]
    assert kept["sampled"] == 16 and kept["kept"] + kept["dropped"] == 16
    assert kept["kept"] > 0
    assert r["procrustes"]["2"]["mrr"] == r["procrustes"]["2"]["all"]["mrr"]
    assert r["baseline"]["2"]["mpp"] == pytest.approx(1 / 48)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"3": train[:6], "99": train[:6], "5": train[:3]}))
    assert main(["evaluate", "retrieval", "--test-limit", "150", "--concept-sets", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "[99] outside the subject layer's 0..47" in err and "5 (3)" in err
    assert main(["evaluate", "quality", "--features", "paper", "--test-limit", "150"]) == 2
    err = capsys.readouterr().err
    assert "Gemma Scope 16k layer-20" in err and "atlas atlas import-preset gemma-scope-2b-16k-l20" in err
    assert main(["evaluate", "steering", "--concepts", "paper:london", "--lambdas", "0,30", "--max-new-tokens", "2"]) == 2
    assert "atlas atlas import-preset gemma-scope-2b-16k-l20" in capsys.readouterr().err


def test_evaluate_subjects_assembles_table7(aligned, tiny_models, capsys, tmp_path):
    from atlascli.fit import FitConfig, fit

    atlas, _ = aligned
    fit(FitConfig(subject=str(tiny_models["qwen2"]), layers=(1,), site="mlp", atlas=atlas.id, dataset="tiny", limit=150,
                  methods="procrustes,cov"))
    llama, qwen = str(tiny_models["llama"]), str(tiny_models["qwen2"])
    fig = tmp_path / "t7.png"
    code = main(["evaluate", "quality", "--subjects", f"{llama},{qwen}", "--test-limit", "150", "--n-features", "6",
                 "--atlas", atlas.id, "--plot", str(fig), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    rep = json.loads(out.out)
    assert rep["subjects"] == [llama, qwen] and rep["methods"] == ["procrustes", "cov"]
    t = rep["table"]["quality"]
    assert set(t[llama]) == {"2"} and set(t[qwen]) == {"1"}
    for subject, layer in ((llama, "2"), (qwen, "1")):
        own = rep["reports"][subject]["quality"]
        assert t[subject][layer]["procrustes"]["auroc"] == own["procrustes"][layer]["auroc"]
        assert t[subject][layer]["random"]["auroc"] == own["baseline"][layer]["random_auroc"]
    # the same atlas features for every subject (same seed and test data)
    assert rep["reports"][llama]["quality"]["features"] == rep["reports"][qwen]["quality"]["features"]
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    Registry().get(rep["artifact"], "report").verify()
    code = main(["evaluate", "quality", "--subjects", f"{llama},{qwen}", "--test-limit", "150", "--n-features", "6",
                 "--atlas", atlas.id])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "quality: AUROC / AP, 2 subjects" in out.out and "L1" in out.out and "L2" in out.out


def test_evaluate_steering_in_the_norm_unit_of_atlas_steer(aligned, capsys, tmp_path, monkeypatch):
    """--unit norm: the added vector at each layer is lambda / NORM_REFERENCE[site] of that layer's median token norm,
    as `atlas steer` adds it, for the concept and for its random directions alike."""
    atlas, _ = aligned
    _save_concepts(atlas)
    import importlib

    from atlascli.steering import norm_reference

    sr = importlib.import_module("atlascli.steering")  # (the package exports the API's steering() under that name)

    added: list[tuple[int, float]] = []
    real_steering, real_norms = sr.steering, sr.site_norms
    norms: dict[int, float] = {}

    def spy(model: Any, site: str, vectors: dict[int, torch.Tensor], lambdas: dict[int, Any]) -> Any:
        for layer, v in vectors.items():  # one row: lambda 30, the one prompt
            (row,) = torch.as_tensor(lambdas[layer]).tolist()
            added.append((layer, row * float(v.norm())))
        return real_steering(model, site, vectors, lambdas)

    def spy_norms(*args: Any, **kwargs: Any) -> dict[int, float]:
        norms.update(real_norms(*args, **kwargs))
        return norms

    monkeypatch.setattr(sr, "steering", spy)
    monkeypatch.setattr(sr, "site_norms", spy_norms)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The dog\n")
    args = ["evaluate", "steering", "--concepts", "dogs", "--prompts", str(prompts), "--lambdas", "0,30",
            "--max-new-tokens", "2", "--methods", "procrustes", "--random-draws", "1", "--unit", "norm", "--json"]
    assert main(args) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["steering"]["unit"] == "norm"
    assert len(added) == 2 and set(norms) == {2}  # the concept and one random direction, layer 2
    for layer, size in added:
        assert size == pytest.approx(30 / norm_reference("mlp") * norms[layer], rel=1e-5)
    assert main([*args[:-3], "--unit", "percent", "--json"]) == 2
    assert "unknown lambda unit 'percent'" in capsys.readouterr().err


def test_evaluate_steering_adds_a_row_for_word_aligned_fits(aligned, tiny_models, capsys, tmp_path, monkeypatch):
    """Where word-aligned Procrustes fits cover the evaluated layers, they are a row of their own, steered along the
    query `atlas steer` uses with them (the text query joined with its words in the examples)."""
    import importlib

    from atlascli.search import query_from_text
    from atlascli.translate import StoredTranslation
    from atlascli.wordfit import WordFitConfig, fit_words, hybrid_query

    atlas, _ = aligned
    [word] = fit_words(WordFitConfig(subject=str(tiny_models["llama"]), layers=(2,), site="mlp", atlas=atlas.id,
                                     dataset="tiny", limit=30))
    sr = importlib.import_module("atlascli.steering")
    seen: list[dict[int, torch.Tensor]] = []
    real = sr.steering

    def spy(model: Any, site: str, vectors: dict[int, torch.Tensor], lambdas: dict[int, Any]) -> Any:
        seen.append({k: v.clone() for k, v in vectors.items()})
        return real(model, site, vectors, lambdas)

    monkeypatch.setattr(sr, "steering", spy)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The dog\n")
    args = ["evaluate", "steering", "--concepts", "the dogs", "--prompts", str(prompts), "--lambdas", "0,30",
            "--max-new-tokens", "2", "--methods", "procrustes", "--random-draws", "1", "--json"]
    assert main(args) == 0, capsys.readouterr().err
    st = json.loads(capsys.readouterr().out)["steering"]
    assert list(st["cells"]) == ["procrustes", "procrustes-word", "random"] and st["word_alignments"] == {"2": word.id}
    q = query_from_text("the dogs", atlas, top_features=5)
    joined = hybrid_query(q, atlas, [word])
    assert joined is not None  # the query has text and examples: the word row steers along the joined query
    want = StoredTranslation.from_artifact(word).similarity_dense(joined[0])
    torch.testing.assert_close(seen[1][2], want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(seen[0][2], want, atol=1e-3)  # the max-pooled row is another direction
    assert main([*args[:-5], "--methods", "cov", "--random-draws", "1", "--json"]) == 0
    assert "procrustes-word" not in json.loads(capsys.readouterr().out)["steering"]["cells"]
