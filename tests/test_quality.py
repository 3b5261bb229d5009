"""Integration on the real offline models: a small Concept Atlas on Gemma 3 270M and Procrustes translations of
SmolLM2-135M-Instruct, built once for this module, then the paper's qualitative checks made measurable.

* search: for everyday concepts, the test sentences that `atlas search` ranks highest along s (the concept mapped
  into the subject, eq. 3; the ranking of the paper's 4.3.1) are closer (MiniLM cosine) to the concept than random
  test sentences are, by a margin. (Max-activating sentences of single SmolLM2 MLP neurons are too polysemantic for
  a margin: even neurons picked on the test set by correlation with the concept reach about +0.03.)
* steering: adding lambda * s (eq. 4, lambda relative to each layer's token norm) at layers 3, 12 and 25 makes the
  generations closer to the concept than the unsteered generations and than generations steered along random
  directions of the same norm, on the paper's seed prompts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import offline_env

pytestmark = pytest.mark.slow

CONCEPTS = ["dogs and cats", "food and cooking", "cars and driving", "music", "diseases and medicine"]
STEER_CONCEPTS = ["food and cooking", "music", "computers and software"]
STEER_PROMPTS = ["Once upon a time", "I just started", "Let me tell you a joke", "Would you like to know",
                 "The team struggled", "When you say"]
N = 4000


@pytest.fixture(scope="module")
def offline_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Dataset, atlas (Gemma 3 270M layer 12, 1024 features) and Procrustes fits of SmolLM2 layers 3, 12, 19, 25."""
    from atlascli.atlas import AtlasBuildConfig, build_atlas, resolve_atlas
    from atlascli.corpus import CorpusConfig, default_corpus, prepare_corpus
    from atlascli.fit import FitConfig, fit

    with pytest.MonkeyPatch.context() as mp:
        home = offline_env(mp, tmp_path_factory.mktemp("offline"))
        if default_corpus()[1]:
            pytest.skip("Debian corpus sources not unpacked (run make corpus-src)")
        ds, _ = prepare_corpus(CorpusConfig())
        art = build_atlas(AtlasBuildConfig(name="q", layer=12, width=1024, k=16, train_sentences=N, max_tokens=60_000,
                                           epochs=5, batch_size=1024, lr=1e-3, label_sentences=N, top_samples=8))
        fits = fit(FitConfig(layers=(3, 12, 19, 25), site="mlp", atlas=art.id, limit=N, methods="procrustes"))
        yield {"home": home, "dataset": ds, "atlas_art": art, "atlas": resolve_atlas(art.id),
               "fits": {int(f.provenance["layer"]): f for f in fits}}


@pytest.fixture()
def setup(offline_setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("ATLAS_HOME", str(Path(offline_setup["home"])))
    return offline_setup


def test_search_finds_on_topic_subject_features(setup):
    from atlascli.corpus import load_split
    from atlascli.embed import embed
    from atlascli.registry import Registry
    from atlascli.search import query_from_text
    from atlascli.search_run import run_search

    assert setup["atlas_art"].meta["quality"]["fraction_variance_explained"] > 0.5
    atlas, alignment = setup["atlas"], setup["fits"][19]
    rng = np.random.default_rng(0)
    test = load_split(setup["dataset"], "test")[:3000]
    random_sents = [test[i] for i in rng.choice(len(test), 300, replace=False)]
    wins, rows = 0, []
    rand_emb = embed(random_sents)
    for concept in CONCEPTS:
        q = query_from_text(concept, atlas, top_features=5, threshold=0.0)
        res = run_search(q, alignment, top=5, samples=0, test_limit=3000, registry=Registry(), n_aligned=20)
        found = [t for _, t in res.aligned]
        assert len(found) == 20
        c = embed([concept])[0]
        top_sim = float((embed(found) @ c).mean())
        rand_sim = float((rand_emb @ c).mean())
        rows.append((concept, round(top_sim, 3), round(rand_sim, 3)))
        wins += top_sim > rand_sim + 0.03
    print(rows)
    assert wins >= 4, rows


def test_steering_moves_generations_toward_the_concept(setup):
    from atlascli.embed import embed
    from atlascli.models import load_model
    from atlascli.registry import Registry
    from atlascli.search import query_from_text
    from atlascli.steering import GenerationConfig, concept_vectors, random_like, site_norms, steer_sweep

    atlas, layers = setup["atlas"], [3, 12, 25]
    lm = load_model("smollm2-135m-instruct")
    norms = site_norms(lm, "mlp", layers, STEER_PROMPTS)
    cfg = GenerationConfig(max_new_tokens=40)
    base = steer_sweep(lm, "mlp", {}, [0.0], STEER_PROMPTS, cfg).generations[0.0]
    rows, wins = [], 0
    for concept in STEER_CONCEPTS:
        q = query_from_text(concept, atlas, top_features=5, threshold=0.0)
        vecs, _ = concept_vectors(q, Registry(), atlas, "smollm2-135m-instruct", layers)
        steered = steer_sweep(lm, "mlp", vecs, [1.0], STEER_PROMPTS, cfg, norms).generations[1.0]
        rand = steer_sweep(lm, "mlp", random_like(vecs, 0), [1.0], STEER_PROMPTS, cfg, norms).generations[1.0]
        c = embed([concept])[0]
        sims = {name: (embed(texts) @ c).numpy() for name, texts in
                (("steered", steered), ("unsteered", base), ("random", rand))}
        # per prompt: on how many of the 6 prompts does steering beat both baselines?
        per_prompt = int(((sims["steered"] > sims["unsteered"]) & (sims["steered"] > sims["random"])).sum())
        means = {k: round(float(v.mean()), 3) for k, v in sims.items()}
        rows.append((concept, means, per_prompt, steered[0][:80]))
        wins += means["steered"] > max(means["unsteered"], means["random"]) + 0.02 and per_prompt >= 3
    print(rows)
    assert wins >= 2, rows
