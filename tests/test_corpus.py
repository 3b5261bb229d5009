from __future__ import annotations

import json

import numpy as np
import pytest

from atlascli.corpus import (
    CorpusConfig,
    default_corpus,
    filter_sentences,
    fingerprint,
    load_split,
    prepare_corpus,
    split_sentences,
)
from atlascli.errors import InputError


def test_split_sentences_rules():
    text = "Dr. Smith went to Washington. He met Mr. J. Doe there! Was it 3 p.m.? Yes.  It was."
    assert split_sentences(text) == ["Dr. Smith went to Washington.", "He met Mr. J. Doe there!",
                                     "Was it 3 p.m.?", "Yes.", "It was."]
    assert split_sentences("  ") == []
    assert split_sentences('He said "Stop." Then left.') == ['He said "Stop."', "Then left."]


def test_filters_match_an_independent_reference():
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta"]
    sents = [" ".join(rng.choice(words, size=rng.integers(1, 30))) for _ in range(500)]
    sents += ["1234 5678", "$$$ --- !!!", sents[3], sents[10]]  # junk and duplicates
    kept, stats = filter_sentences(sents, 5, 95)
    lengths = np.array([len(s) for s in sents])
    lo, hi = np.percentile(lengths, [5, 95])
    ref = []
    for s in sents:
        if lo <= len(s) <= hi and any(ch.isalpha() for ch in s) and s not in ref:
            ref.append(s)
    assert kept == ref
    assert stats.raw == len(sents) and stats.after_dedup == len(ref)
    assert "1234 5678" not in kept and stats.after_special < stats.after_length


def _write_inputs(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("The cat sleeps. The dog runs fast! Birds sing in the morning.\n\nFish swim. 12345.")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"Sentence number {w} is here."}) for w in
                               ["one", "two", "three", "four", "five"]))
    return txt, jsonl


def test_prepare_is_deterministic_and_splits_are_disjoint(tmp_path):
    txt, jsonl = _write_inputs(tmp_path)
    cfg = CorpusConfig(name="t", inputs=(str(txt), str(jsonl)), low_pct=0, high_pct=100, seed=3)
    art, _ = prepare_corpus(cfg)
    train, test = load_split(art, "train"), load_split(art, "test")
    assert not set(train) & set(test)
    assert "12345." not in train + test
    assert len(train) + len(test) == 9
    assert art.provenance["dataset_fingerprint"] == fingerprint(train, test)
    again, _ = prepare_corpus(cfg)
    assert again.id == art.id  # reused, same fingerprint
    other, _ = prepare_corpus(CorpusConfig(name="t", inputs=(str(txt), str(jsonl)), low_pct=0, high_pct=100, seed=4))
    assert other.provenance["dataset_fingerprint"] != art.provenance["dataset_fingerprint"]


def test_parquet_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["Apples are red. Bananas are yellow.", "Cherries are small."]}), path)
    art, _ = prepare_corpus(CorpusConfig(name="pq", inputs=(str(path),), text_field="body", low_pct=0, high_pct=100))
    assert sorted(load_split(art, "train") + load_split(art, "test")) == [
        "Apples are red.", "Bananas are yellow.", "Cherries are small."]


def test_empty_and_missing_inputs_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("123 456\n\n!!!")
    with pytest.raises(InputError, match="empty"):
        prepare_corpus(CorpusConfig(name="e", inputs=(str(empty),)))
    with pytest.raises(Exception, match="does not exist"):
        prepare_corpus(CorpusConfig(name="e", inputs=(str(tmp_path / "nope.txt"),)))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(InputError, match="unsupported"):
        prepare_corpus(CorpusConfig(name="e", inputs=(str(tmp_path / "x.csv"),)))


def test_embedded_default_corpus_is_large_varied_and_deterministic():
    sources, warnings = default_corpus()
    if warnings:
        pytest.skip("Debian corpus sources not unpacked (run make corpus-src)")
    art, _ = prepare_corpus(CorpusConfig())
    n = art.provenance["n_train"] + art.provenance["n_test"]
    assert n >= 100_000
    text = " ".join(load_split(art, "train")[:60000]).lower()
    for topic in ["dog", "cat", "london", "bread", "chess", "car", "disease", "physics", "novel", "computer"]:
        assert f" {topic}" in text, topic
    # same inputs -> same fingerprint (the registry reuses the artifact)
    again, _ = prepare_corpus(CorpusConfig())
    assert again.id == art.id
