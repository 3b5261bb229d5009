"""Word-aligned translations: pairing by character ends, the fit against a numpy Procrustes on the same pairs, resume,
and which commands use them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from atlascli.cli.main import main
from atlascli.errors import InputError
from atlascli.registry import Registry
from atlascli.wordfit import CHECKPOINT, WordFitConfig, content_ends, fit_words, is_word_pooled, shared_ends, word_tokens


def test_shared_ends_pairs_tokens_that_end_at_the_same_character():
    # "London is big": a = [<s>] Lon|don| is| big ; b = [<s>] London| is| b|ig
    a = [(0, 0), (0, 3), (3, 6), (6, 9), (9, 13)]
    b = [(0, 0), (0, 6), (6, 9), (9, 11), (11, 13)]
    real = [False, True, True, True, True]
    assert shared_ends(a, real, b, real) == [(2, 1), (3, 2), (4, 4)]
    # the first position of either side is left out even when it is a real token (the attention sink)
    assert shared_ends(a[1:], real[1:], b[1:], real[1:]) == [(2, 1), (3, 3)]
    # padding / special tokens never pair; empty spans never pair
    assert shared_ends(a, [False, True, True, False, True], b + [(13, 13)], real + [True]) == [(2, 1), (4, 4)]


def test_word_tokens_finds_the_token_that_ends_each_word():
    text = "Big London, small town"
    offsets = [(0, 0), (0, 3), (4, 7), (7, 10), (10, 11), (12, 17), (18, 22)]
    real = [False] + [True] * 6
    assert [j for w, j in word_tokens(text, offsets, real) if w == "London"] == [3]
    assert [j for _, j in word_tokens(text, offsets, real)] == [1, 3, 5, 6]
    assert content_ends(text, offsets, real, frozenset({"big", "small"})) == {3, 6}  # stop words lower-cased
    assert content_ends("Town 42", [(0, 0), (0, 4), (4, 7)], [False, True, True], frozenset()) == {1}  # no numbers


def _reference(atlas, subject: str, layers: tuple[int, ...], sentences: list[str], content: bool = True):
    """The pairs gathered one sentence at a time (no padding; both tiny models share one tokenizer, so every real
    token after the first pairs with itself; with ``content``, only the token that ends each word that is neither a
    stop word nor a number) and numpy's Procrustes of their row-normalised rows."""
    import re

    from atlascli.atlas.labels import stop_words
    from atlascli.hooks import record_sites, run_until
    from atlascli.models import load_model
    from atlascli.saes import load_atlas_sae

    p = atlas.artifact.provenance
    lm, flm = load_model(subject), load_model(p["foundation"])
    sae = load_atlas_sae(atlas.artifact)
    xs: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    cs = []
    stops = stop_words()
    for s in sentences:
        enc = lm.tokenizer(s, return_tensors="pt", return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping")[0].tolist()
        keep: slice | list[int] = slice(1, None)  # position 0 is <s>
        if content:
            keep = sorted({next(j for j, (a, b) in enumerate(offsets) if j > 0 and a < m.end() <= b)
                           for m in re.finditer(r"\w+", s)
                           if m.group().lower() not in stops and not m.group().isdigit()})
        with torch.inference_mode(), record_sites(lm.model, list(layers), "resid") as st:
            run_until(lm.model, **enc)
            for layer in layers:
                xs[layer].append(st[layer][0, keep].double().numpy())
        with torch.inference_mode(), record_sites(flm.model, [int(p["layer"])], p["site"]) as st:
            run_until(flm.model, **enc)
            cs.append(sae.encode(st[int(p["layer"])][0, keep].float()).clamp_min(0).double().numpy())
    c = np.concatenate(cs)

    def unit(m: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(m, axis=1, keepdims=True)
        return np.where(n > 0, m / np.maximum(n, 1e-300), 0.0)

    out = {}
    for layer in layers:
        u, _, vt = np.linalg.svd(unit(np.concatenate(xs[layer])).T @ unit(c), full_matrices=False)
        out[layer] = u @ vt
    return out, c.mean(0), len(c)


def test_fit_words_matches_numpy_procrustes_and_resumes(aligned, tiny_models, monkeypatch):
    from atlascli.corpus import load_split, resolve_dataset
    from atlascli.translate import StoredTranslation
    from atlascli.wordfit import mean_word_code

    atlas, _ = aligned
    subject = str(tiny_models["llama"])
    cfg = WordFitConfig(subject=subject, layers=(1, 2), site="resid", atlas=atlas.id, dataset="tiny", limit=40,
                        batch=7, checkpoint_every=2)
    stop = {"at": 28}

    def killed(stage: str, done: int, total: int) -> None:
        if done >= stop["at"]:
            raise KeyboardInterrupt  # the user's Ctrl-C after the checkpoint at 28 sentences

    with pytest.raises(KeyboardInterrupt):
        fit_words(cfg, progress=killed)
    reg = Registry()
    partial = [p for p in (reg.root / "alignment").glob(".partial-*") if (p / CHECKPOINT).exists()]
    assert len(partial) == 2 and not reg.find("alignment", pooling="word")
    seen: list[int] = []
    arts = fit_words(cfg, progress=lambda s, d, t: seen.append(d))
    assert seen[0] == 35  # resumed after the checkpoint at 28: only 35 and 40 were done again
    sentences = load_split(resolve_dataset("tiny", reg), "train")[:40]
    ref, mean_code, pairs = _reference(atlas, subject, (1, 2), sentences)
    assert [a.provenance["layer"] for a in arts] == [1, 2]
    for a in arts:
        assert is_word_pooled(a) and a.provenance["pairs"] == pairs and a.provenance["n"] == 40
        assert CHECKPOINT not in a.manifest["files"]
        T = StoredTranslation.from_artifact(a).load().double().numpy()
        np.testing.assert_allclose(T, ref[int(a.provenance["layer"])], atol=2e-4)
        np.testing.assert_allclose(mean_word_code(a).double().numpy(), mean_code, rtol=1e-4, atol=1e-6)
    assert [a.id for a in fit_words(cfg)] == [a.id for a in arts]  # a rerun reuses them
    # every shared token end (the first version): more pairs, another T
    [every] = fit_words(WordFitConfig(**{**cfg.__dict__, "layers": (2,), "tokens": "all"}))
    ref_all, mean_all, pairs_all = _reference(atlas, subject, (2,), sentences, content=False)
    assert every.provenance["tokens"] == "all" and every.provenance["pairs"] == pairs_all > pairs
    np.testing.assert_allclose(StoredTranslation.from_artifact(every).load().double().numpy(), ref_all[2], atol=2e-4)
    np.testing.assert_allclose(mean_word_code(every).double().numpy(), mean_all, rtol=1e-4, atol=1e-6)
    assert every.id not in [a.id for a in arts]


def test_steering_prefers_word_alignments_and_search_ignores_them(aligned, tiny_models, capsys):
    from atlascli.search import query_from_features, resolve_alignment
    from atlascli.steering import concept_vectors

    atlas, fits = aligned
    words = fit_words(WordFitConfig(subject=str(tiny_models["llama"]), layers=(2,), site="mlp", atlas=atlas.id,
                                    dataset="tiny", limit=30))
    q = query_from_features("3,7", atlas)
    reg = Registry()
    _, arts = concept_vectors(q, reg, atlas, None, None)
    assert [a.id for a in arts] == [words[0].id]
    _, arts = concept_vectors(q, reg, atlas, None, None, pooling="max")
    assert [a.id for a in arts] == [fits[0].id]
    assert not is_word_pooled(resolve_alignment(reg, None, None, 2, atlas=atlas))  # search ranks max-pooled rows
    code = main(["steer", "--features", "3,7", "--lambda", "20", "--prompt", "The dog", "--max-new-tokens", "3",
                 "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["pooling"] == "word"
    code = main(["steer", "--features", "3,7", "--lambda", "20", "--prompt", "The dog", "--max-new-tokens", "3",
                 "--site", "resid", "--pooling", "word"])
    err = capsys.readouterr().err
    assert code != 0 and "no alignment" in err and "Traceback" not in err


def test_fit_cli_word_pooling(aligned, tiny_models, capsys):
    atlas, _ = aligned
    common = ["fit", "--subject", str(tiny_models["llama"]), "--atlas", atlas.id, "--dataset", "tiny", "--site",
              "resid", "--pooling", "word", "--limit", "20"]
    base = [*common, "--layers", "1"]
    code = main([*base, "--dry-run", "--json"])  # checked and planned, nothing written
    out = capsys.readouterr()
    assert code == 0, out.err
    plan = json.loads(out.out)["plan"]
    assert [s["action"] for s in plan["steps"]] == ["extract", "fit"] and plan["steps"][0]["sentences"] == 20
    assert not Registry().find("alignment", pooling="word")
    code = main([*base, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    [row] = json.loads(out.out)["alignments"]
    assert row["provenance"]["pooling"] == "word" and row["provenance"]["n"] == 20
    assert row["provenance"]["tokens"] == "content"
    code = main([*base, "--dry-run", "--json"])
    out = capsys.readouterr()
    assert code == 0 and [s["action"] for s in json.loads(out.out)["plan"]["steps"]] == ["reuse"]
    assert row["meta"]["throughput"]["sentences"] == 20 and row["meta"]["throughput"]["sentences_per_second"] > 0
    code = main([*base, "--dry-run", "--tokens", "all", "--json"])  # another fit: work to do, timed by the first
    step = json.loads(capsys.readouterr().out)["plan"]["steps"][0]
    assert code == 0 and step["action"] == "extract" and step["basis"].startswith("measured") and row["id"] in step["basis"]
    for extra, message in ((["--method", "cov"], "procrustes only"), (["--tokens", "some"], "unknown token choice"),
                           (["--layers", "9", "--dry-run"], "out of range")):
        code = main([*base, *extra])
        err = capsys.readouterr().err
        assert code != 0 and message in err and "Traceback" not in err
    code = main([*common, "--layers", "9"])
    err = capsys.readouterr().err
    assert code != 0 and "out of range" in err
    code = main(["fit", "--subject", str(tiny_models["llama"]), "--atlas", atlas.id, "--dataset", "tiny", "--layers",
                 "1", "--tokens", "all"])
    err = capsys.readouterr().err
    assert code != 0 and "add --pooling word" in err and "Traceback" not in err
    with pytest.raises(InputError, match="limit must be at least 2"):
        WordFitConfig(limit=1)


def test_hybrid_query_joins_the_text_query_with_its_words_in_the_examples(aligned, tiny_models, capsys):
    import re

    from atlascli.hooks import record_sites, run_until
    from atlascli.models import load_model
    from atlascli.saes import load_atlas_sae
    from atlascli.search import query_from_features, query_from_text
    from atlascli.wordfit import hybrid_query, mean_word_code

    atlas, fits = aligned
    [word] = fit_words(WordFitConfig(subject=str(tiny_models["llama"]), layers=(2,), site="mlp", atlas=atlas.id,
                                     dataset="tiny", limit=30))
    q = query_from_text("the dogs", atlas, route="examples", n_examples=10, threshold=-1.0)
    assert q.text == "the dogs" and q.examples
    # independent reference: each example alone through the foundation + SAE; the token ending each word "dog"
    # (Snowball: dogs -> dog; "the" is a stop word)
    p = atlas.artifact.provenance
    flm, sae = load_model(p["foundation"]), load_atlas_sae(atlas.artifact)
    hits = []
    for s in q.examples:
        enc = flm.tokenizer(s, return_tensors="pt", return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping")[0].tolist()
        with torch.inference_mode(), record_sites(flm.model, [int(p["layer"])], p["site"]) as st:
            run_until(flm.model, **enc)
            codes = sae.encode(st[int(p["layer"])][0].float()).clamp_min(0)
        for m in re.finditer(r"\w+", s):
            if m.group().lower() in {"dog", "dogs"}:
                hits.append(codes[next(j for j, (a, b) in enumerate(offsets) if j > 0 and a < m.end() <= b)])
    assert hits
    q_word = torch.stack(hits).mean(0) - mean_word_code(word)
    want = (torch.nn.functional.normalize(q.dense(atlas.width), dim=0)
            + torch.nn.functional.normalize(q_word, dim=0))
    got, n = hybrid_query(q, atlas, [fits[0], word])  # type: ignore[misc]
    assert n == len(hits)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    assert hybrid_query(q, atlas, [fits[0]]) is None  # no word-aligned layer
    assert hybrid_query(query_from_features("3,7", atlas), atlas, [word]) is None  # no text
    code = main(["steer", "--concept", "the dogs", "--lambda", "20", "--prompt", "The dog", "--max-new-tokens", "3",
                 "--threshold", "-1", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out)
    assert data["pooling"] == "word" and isinstance(data["word_hits"], int) and data["word_hits"] > 0
