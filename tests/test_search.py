from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from atlascli.cli.main import main
from atlascli.concepts import list_concepts, load_concept, save_concept
from atlascli.errors import InputError, NotFoundError
from atlascli.registry import Registry
from atlascli.search import atlas_codes, query_from_examples, query_from_features, resolve_alignment, search
from atlascli.translate import StoredTranslation


def test_fit_reuses_the_atlas_labelling_codes(aligned):
    atlas, fits = aligned
    assert atlas.artifact.meta["label_codes"] in fits[0].parents


def test_search_ranks_by_eq3_and_attaches_test_examples(aligned, tiny_models, monkeypatch):
    atlas, fits = aligned
    reg = Registry()
    proc = resolve_alignment(reg, None, str(tiny_models["llama"]), 2, "procrustes", atlas)
    assert proc.provenance["method"] == "procrustes"
    q = query_from_features("3:1.0,10:0.5", atlas)
    from atlascli.search_run import run_search

    res = run_search(q, proc, top=5, samples=2, test_limit=100, registry=reg)
    T = StoredTranslation(proc.file("translation.safetensors")).load().double().numpy()
    qv = np.zeros(64)
    qv[[3, 10]] = [1.0, 0.5]
    s = (T / np.linalg.norm(T, axis=1, keepdims=True)) @ qv / np.linalg.norm(qv)
    assert [f.index for f in res.features] == list(np.argsort(-s)[:5])
    np.testing.assert_allclose([f.score for f in res.features], np.sort(s)[::-1][:5], rtol=1e-5)
    # examples are the max-activating test sentences of each feature (checked against the stored activations)
    from atlascli.search_run import test_activations

    acts, sentences = test_activations(proc, 100, reg)
    dense = acts.dense(2).numpy()
    for f in res.features:
        top_vals = np.sort(dense[:, f.index])[::-1][:2]
        np.testing.assert_allclose([v for v, _ in f.examples], top_vals, rtol=1e-6)
        for v, t in f.examples:  # each example really has that activation (ties may reorder equal values)
            assert dense[sentences.index(t), f.index] == pytest.approx(v, rel=1e-6)
    # no limit given: the test extraction already there is used as it is, nothing new is extracted
    monkeypatch.setattr("atlascli.search_run.MIN_REUSED_TEST", 50)
    before = {a.id for a in reg.find("activations")}
    again, _ = test_activations(proc, None, reg)
    assert again.artifact.id == acts.artifact.id and {a.id for a in reg.find("activations")} == before


def test_examples_and_contrast_queries(aligned):
    atlas, _ = aligned
    pos = ["The dog and the cat met a dog today.", "The dog barked at the cat."]
    neg = ["The cars drive on the roads today."]
    codes_pos, codes_neg = atlas_codes(pos, atlas), atlas_codes(neg, atlas)
    q = query_from_examples(pos, atlas)
    np.testing.assert_allclose(q.dense(64).numpy(), codes_pos.mean(0).numpy(), atol=1e-6)
    qc = query_from_examples(pos, atlas, contrast=neg)
    np.testing.assert_allclose(qc.dense(64).numpy(), (codes_pos.mean(0) - codes_neg.mean(0)).numpy(), atol=1e-6)
    assert qc.source == "contrast"


def test_concepts_roundtrip(aligned):
    atlas, _ = aligned
    q = query_from_features("1,2:0.5", atlas)
    save_concept("pets", q, atlas)
    got = load_concept("pets", atlas)
    assert got is not None and got.features == [1, 2] and got.weights == [1.0, 0.5]
    assert [r["name"] for r in list_concepts(atlas)] == ["pets"]
    assert load_concept("nothing", atlas) is None


def test_bad_queries(aligned):
    atlas, _ = aligned
    with pytest.raises(InputError, match="does not exist"):
        query_from_features("3,99", atlas)
    with pytest.raises(InputError, match="bad feature spec"):
        query_from_features("3,x", atlas)
    with pytest.raises(NotFoundError, match="no alignment"):
        resolve_alignment(Registry(), None, "other-model", 2, "procrustes", atlas)
    with pytest.raises(NotFoundError, match="no alignment with .*layer=3"):  # in range, not fitted: `atlas fit` helps
        resolve_alignment(Registry(), None, None, 3, "procrustes", atlas)
    with pytest.raises(InputError, match=r"layer 11 is out of range for .* \(4 layers\)"):  # the tiny Llama's depth
        resolve_alignment(Registry(), None, None, 11, "procrustes", atlas)


def test_search_cli_json_and_errors(aligned, tiny_models, capsys):
    code = main(["search", "--features", "3,7", "--top", "4", "--samples", "1", "--test-limit", "60", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out)
    assert len(data["features"]) == 4 and all(len(f["examples"]) == 1 for f in data["features"])
    assert [m["index"] for m in data["query"]["matches"]] == [3, 7]
    code = main(["search", "--features", "500"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code = main(["search", "unknown-concept-xyz", "--threshold", "0.99"])
    assert code == 2 and "labelling sentences are similar to" in capsys.readouterr().err
    code = main(["concept", "add", "two", "--features", "3,7", "--json"])
    assert code == 0
    capsys.readouterr()
    code = main(["search", "two", "--top", "3", "--samples", "0", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["query"]["matches"][0]["index"] == 3
    assert main(["atlas", "show", "--feature", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["index"] == 3


def test_similarity_is_negated_for_negative_search(aligned, tiny_models):
    atlas, _ = aligned
    proc = resolve_alignment(Registry(), None, None, 2, "procrustes", atlas)
    q = query_from_features("3", atlas)
    hi = search(q, proc, top=3)
    lo = search(q, proc, top=3, negative=True)
    assert hi.features[0].score >= lo.features[0].score
    assert torch.equal(hi.similarity, lo.similarity)


def test_text_via_examples_is_the_mean_normalised_code_of_the_retrieved_sentences_minus_the_corpus_mean(aligned):
    from atlascli.embed import embed
    from atlascli.search import query_from_text

    atlas, _ = aligned
    ex = atlas.examples
    text = "the dog and the cat"
    q = query_from_text(text, atlas, route="examples", n_examples=10, threshold=-1.0)
    assert q.source == "text (examples)" and q.examples
    # independent reference: dense codes from the stored CSR, numpy mean, cosine retrieval
    indptr, indices, values = (ex[k].numpy() for k in ("indptr", "indices", "values"))
    n = len(indptr) - 1
    dense = np.zeros((n, atlas.width))
    for r in range(n):
        dense[r, indices[indptr[r]:indptr[r + 1]]] = values[indptr[r]:indptr[r + 1]].astype(np.float64)
    dense /= np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)  # Procrustes' row-normalised space
    sims = ex["embeddings"].float().numpy() @ embed([text])[0].numpy()
    top = np.argsort(-sims, kind="stable")[:10]
    want = dense[top].mean(0) - dense.mean(0)
    np.testing.assert_allclose(q.dense(atlas.width).numpy(), want, atol=1e-4)
    assert want[q.matches[0]["index"]] > 0 and q.features[0] == int(np.argmax(want))
    # a dense feature (active on most sentences) stays in q but is not shown as what the text matched
    first = q.matches[0]["index"]
    atlas.__dict__["frequency"] = torch.where(torch.arange(atlas.width) == first, 0.9, 0.01)
    again = query_from_text(text, atlas, route="examples", n_examples=10, threshold=-1.0)
    assert first not in [m["index"] for m in again.matches] and first in again.features
    np.testing.assert_allclose(again.dense(atlas.width).numpy(), want, atol=1e-4)
    # shown: coherent features ranked by raise x lift^2 x coherence weight^2 (numpy reference, planted coherences
    # that reorder the list); q is unchanged
    atlas.__dict__["frequency"] = torch.full((atlas.width,), 0.01)  # none dense (the tiny corpus makes most so)
    rng = np.random.default_rng(3)
    planted = rng.uniform(0.0, 0.3, atlas.width)
    atlas.__dict__["coherence"] = torch.tensor(planted, dtype=torch.float32)
    later = query_from_text(text, atlas, route="examples", n_examples=10, threshold=-1.0)
    mean_ex, mean_all = dense[top].mean(0), dense.mean(0)
    lift = np.log(np.maximum((mean_ex + 1e-3) / (mean_all + 1e-3), 1.0))
    weight = 0.5 + 0.5 * np.clip(planted / np.quantile(planted, 0.75), 0, 1)
    usable = atlas.coherent.numpy() & ~(atlas.frequency.nan_to_num(0.0).numpy() >= 0.25)
    raised = np.maximum(want, 0) * lift ** 2 * usable
    expected = [int(i) for i in np.argsort(-raised * weight ** 2, kind="stable")[:5] if raised[i] > 0]
    unweighted = [int(i) for i in np.argsort(-raised, kind="stable")[:5] if raised[i] > 0]
    assert expected != unweighted  # the plant reorders: the test tells the weighting from none
    assert [m["index"] for m in later.matches] == expected
    np.testing.assert_allclose(later.dense(atlas.width).numpy(), want, atol=1e-4)
    del atlas.__dict__["coherence"], atlas.__dict__["frequency"]


def test_text_via_labels_skips_incoherent_features_and_says_so(aligned):
    from atlascli.search import query_from_text

    atlas, _ = aligned
    q = query_from_text("dog", atlas, route="labels", threshold=-1.0, top_features=3)
    assert q.source == "text (labels)" and len(q.features) == 3
    assert all(bool(atlas.coherent[i]) for i in q.features)
    zebra = query_from_text("zebras", atlas, route="labels", threshold=-1.0, top_features=3)  # no label says it
    assert zebra.note is not None and zebra.note.startswith("no atlas feature is labelled 'zebras'")
    with pytest.raises(InputError, match="matches only incoherent|no atlas label matches"):
        query_from_text("dog", atlas, route="labels", threshold=0.99)
    with pytest.raises(InputError, match="unknown text route"):
        query_from_text("dog", atlas, route="magic")


def test_duplicate_features_are_merged_not_rescaled(aligned):
    atlas, fits = aligned
    q = query_from_features("5,5,7:2", atlas)
    assert q.features == [5, 7] and q.weights == [2.0, 2.0]
    from atlascli.search import subject_similarity

    once = subject_similarity(query_from_features("5:2,7:2", atlas), fits[0])
    torch.testing.assert_close(subject_similarity(q, fits[0]), once)


def test_old_atlas_loads_and_routes_text_through_labels(aligned):
    """An atlas built before labels v2 (no coherence, no stored examples) still answers text queries."""
    from atlascli.atlas.store import Atlas
    from atlascli.registry import Artifact
    from atlascli.search import query_from_text

    atlas, _ = aligned
    m = json.loads(json.dumps(atlas.artifact.manifest))
    m["provenance"].pop("labels_version")
    m["files"].pop("examples.safetensors")
    old = Atlas(Artifact(atlas.id, "atlas", atlas.artifact.path, m))
    assert old.labels_version == 1 and not old.has_examples
    q = query_from_text("dog", old, threshold=-1.0)
    assert q.source == "text (labels)"


def test_coverage_note_names_query_words_no_coherent_feature_is_labelled_with():
    from types import SimpleNamespace

    from atlascli.search import coverage_note

    labels = ["city (noun.location): city, town", "british / queen", "syntax: london / the", "dog / dogs / puppy",
              "norway (noun.location): norway, volcanic, port", "credit / bank / money", "hidden / secretly"]
    atlas = SimpleNamespace(coherent=torch.tensor([True, True, False, True, True, True, True]), label=lambda i: labels[i])
    note = coverage_note("London", atlas, labels[:2])
    # "london" labels only an incoherent feature: not a concept the atlas carries
    assert note is not None and "'london'" in note and "city, british / queen" in note
    assert coverage_note("the dogs", atlas, labels[3:]) is None  # plural of a labelled word, stop word ignored
    assert coverage_note("cities and the towns", atlas, labels[:1]) is None  # -ies -> -y
    assert coverage_note("the of and", atlas, labels) is None  # nothing but stop words
    # forms of a labelled word (Snowball stems, a stem of 5+ letters starting another) are covered
    for query in ("volcanoes", "money and banking", "secrets", "the banks"):
        assert coverage_note(query, atlas, labels) is None, query
    note = coverage_note("volcanoes and penguins", atlas, labels[4:5])
    assert note is not None and "'penguins'" in note and "volcanoes" not in note.split(":")[0]
    assert coverage_note("ports", atlas, labels) is None and coverage_note("portraits", atlas, labels) is not None
    # with the labelling sentences: a word none of them contains is named as such, not as "leaning on" concepts
    corpus = [f"He lived in London for {n} years." for n in range(4)] + ["Penguins and a Pirate ship.",
                                                                         "The city of Oslo."]
    note = coverage_note("London", atlas, labels[:2], corpus)
    assert note is not None and "leans on related concepts" in note  # in 4 sentences, just not a feature
    for query in ("xyzzy", "xyzzy city"):  # 'xyzzy' stems to 'xyzzi': both forms are looked for
        note = coverage_note(query, atlas, labels[:2], corpus)
        assert note is not None and note.startswith("'xyzzy' occurs in none of the atlas's 6 labelling"), note
    note = coverage_note("pirates", atlas, labels[:2], corpus) or ""  # stem 'pirat': one sentence
    assert note.startswith("'pirates' occurs in only 1 of the atlas's 6 labelling sentences") and "city" in note
    assert "occurs in only" in (coverage_note("London", atlas, labels[:2], corpus[3:]) or "")  # 1 London sentence
    assert coverage_note("city", atlas, labels[:2], corpus) is None


def test_text_via_examples_never_shows_a_feature_the_examples_do_not_raise(aligned, monkeypatch):
    """With no coherent feature raised (all marked incoherent here), the shown matches are the raised features,
    not whatever an all-zero ranking puts first."""
    from atlascli.atlas.store import Atlas
    from atlascli.search import query_from_text

    atlas, _ = aligned
    monkeypatch.setattr(Atlas, "coherent", property(lambda self: torch.zeros(self.width, dtype=torch.bool)))
    q = query_from_text("the dog and the cat", atlas, route="examples", n_examples=10, threshold=-1.0)
    assert q.matches and all(m["weight"] > 0 for m in q.matches)
    w = dict(zip(q.features, q.weights))
    assert [m["index"] for m in q.matches] == [f for f in q.features if w[f] > 0][:len(q.matches)]
