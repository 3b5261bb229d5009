from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from atlascli.activations import Activations
from atlascli.atlas import AtlasBuildConfig, build_atlas, import_atlas, read_labels_file, resolve_atlas
from atlascli.errors import InputError, NotFoundError
from atlascli.registry import Registry


@pytest.fixture()
def tiny_atlas(tiny_models, tiny_dataset):
    cfg = AtlasBuildConfig(name="tiny", foundation=str(tiny_models["gpt2"]), layer=1, width=64, k=4, dataset="tiny",
                           train_sentences=150, max_tokens=4000, epochs=6, batch_size=256, lr=3e-3,
                           label_sentences=150, top_samples=5)
    return build_atlas(cfg), cfg


def test_build_trains_labels_and_embeds(tiny_atlas, tiny_models):
    art, cfg = tiny_atlas
    atlas = resolve_atlas("tiny")
    assert atlas.id == art.id and atlas.width == 64
    q = art.meta["quality"]
    assert 0.3 < q["fraction_variance_explained"] <= 1.0
    assert q["l0"] == pytest.approx(4.0, abs=1e-6)
    assert len(atlas.labels) == 64
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(atlas.sae_path))
    assert sae.cfg.d_in == 32 and sae.cfg.d_sae == 64
    # top samples are exactly the sentences with the largest pooled codes (recomputed from the stored codes)
    codes_art = Registry().get(art.meta["label_codes"])
    codes = Activations(codes_art).dense(1).numpy()
    from atlascli.corpus import load_split

    sentences = load_split(Registry().get(art.parents[0]), "train")
    live = [f for f in range(64) if codes[:, f].max() > 0]
    assert len(live) >= 16
    for f in live[:10]:
        order = np.argsort(-codes[:, f], kind="stable")[:5]
        expect = [sentences[i] for i in order if codes[i, f] > 0]
        assert atlas.feature(f)["top_samples"] == expect
        assert atlas.feature(f)["label"] != "(dead)"
    # label embedding = normalised mean MiniLM embedding of the top samples
    from sentence_transformers import SentenceTransformer

    from atlascli.embed import load_embedder

    st: SentenceTransformer = load_embedder("minilm-l6")
    f = live[0]
    e = st.encode(atlas.feature(f)["top_samples"], normalize_embeddings=True).mean(0)
    np.testing.assert_allclose(atlas.label_embeddings[f].numpy(), e / np.linalg.norm(e), atol=1e-5)
    dead = [f for f in range(64) if codes[:, f].max() == 0]
    assert q["dead_features"] == len(dead)
    assert all(atlas.label_embeddings[f].abs().sum() == 0 for f in dead)
    # same config -> reused
    assert build_atlas(cfg).id == art.id


def test_atlas_feature_errors(tiny_atlas):
    atlas = resolve_atlas(None)
    with pytest.raises(InputError, match="does not exist"):
        atlas.feature(64)


def test_no_atlas_is_a_clear_error():
    with pytest.raises(NotFoundError, match="atlas build"):
        resolve_atlas(None)


def test_label_files(tmp_path):
    csv_path = tmp_path / "l.csv"
    csv_path.write_text("index,description\n0,dogs and puppies\n2,cars on a road\n")
    assert read_labels_file(csv_path) == {0: "dogs and puppies", 2: "cars on a road"}
    np_path = tmp_path / "np.json"
    np_path.write_text(json.dumps([{"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "7",
                                    "description": "London landmarks"},
                                   {"index": "7", "description": "second explanation is ignored"}]))
    assert read_labels_file(np_path) == {7: "London landmarks"}
    gz = tmp_path / "e.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(json.dumps({"index": 1, "description": "music"}) + "\n")
    assert read_labels_file(gz) == {1: "music"}
    with pytest.raises(InputError, match="outside"):
        read_labels_file(csv_path, width=2)
    bad = tmp_path / "b.csv"
    bad.write_text("feature,text\n1,x\n")
    with pytest.raises(InputError, match="columns"):
        read_labels_file(bad)


def test_import_local_sae_with_labels_and_text_match(tmp_path):
    from sae_lens import TopKSAE, TopKSAEConfig

    from atlascli.search import query_from_text

    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=8, k=2))
    sae.save_model(tmp_path / "sae")
    labels = tmp_path / "labels.csv"
    labels.write_text("index,description\n0,cooking food in the kitchen\n3,dogs and cats as pets\n"
                      "5,London and the United Kingdom\n6,car engines and driving\n")
    art = import_atlas(str(tmp_path / "sae"), labels, foundation="some/model", layer=3, name="imp")
    atlas = resolve_atlas("imp")
    assert atlas.id == art.id and atlas.label(3) == "dogs and cats as pets" and atlas.label(1) == ""
    q = query_from_text("puppies and kittens", atlas, top_features=1)
    assert q.features == [3]
    q = query_from_text("a trip to Britain's capital", atlas, top_features=1)
    assert q.features == [5]
    with pytest.raises(InputError, match="closest"):
        query_from_text("quantum chromodynamics lattice", atlas, threshold=0.9)


def test_release_import_fails_cleanly_offline(tmp_path):
    labels = tmp_path / "l.csv"
    labels.write_text("index,description\n0,x\n")
    with pytest.raises(NotFoundError, match="cannot load SAE"):
        import_atlas("gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical", labels, "google/gemma-2-2b", 20)


def test_builtin_paper_concepts_only_for_gemma_scope():
    from atlascli.atlas.store import Atlas
    from atlascli.concepts import builtin_concepts
    from atlascli.registry import Artifact

    fake = Artifact("atlas-gs", "atlas", torch.__path__ and __import__("pathlib").Path("."),
                    {"provenance": {"sae": "gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical",
                                    "width": 16384}})
    concepts = builtin_concepts(Atlas(fake))
    assert concepts["dogs and cats"] == [6772, 1089, 12082, 13747]
    assert len(concepts) == 11  # Table 8 plus Table 6's london
    other = Artifact("atlas-x", "atlas", __import__("pathlib").Path("."), {"provenance": {"width": 64}})
    assert builtin_concepts(Atlas(other)) == {}


def test_bfloat16_atlas_is_its_own_artifact_and_fit_reuses_its_codes(tiny_models, tiny_dataset, monkeypatch):
    """A bfloat16 build records its dtype, stores its labelling codes in bfloat16, and `atlas fit` over the same
    sentences reuses those codes (the atlas side runs in the atlas's dtype, whatever the subject's --dtype)."""
    from atlascli.atlas.build import atlas_dtype, identity
    from atlascli.fit import FitConfig, fit

    common = dict(name="tiny", foundation=str(tiny_models["gpt2"]), layer=1, width=64, k=4, dataset="tiny",
                  train_sentences=120, max_tokens=3000, epochs=2, batch_size=256, lr=3e-3, label_sentences=120,
                  top_samples=5)
    f32 = AtlasBuildConfig(**common)
    bf16 = AtlasBuildConfig(**common, dtype="bfloat16")
    assert "dtype" not in identity(f32) and identity(bf16)["dtype"] == "bfloat16"  # float32 ids stay as they were
    art = build_atlas(bf16)
    assert atlas_dtype(art.provenance) == "bfloat16" and atlas_dtype({}) == "float32"
    reg = Registry()
    codes = reg.get(art.meta["label_codes"])
    assert codes.provenance["dtype"] == "bfloat16" and codes.meta["throughput"]["dtype"] == "bfloat16"
    before = {a.id for a in reg.find("activations")}
    fit(FitConfig(subject=str(tiny_models["llama"]), layers=(1,), site="mlp", atlas=art.id, dataset="tiny",
                  limit=120, methods="procrustes"))
    added = [reg.get(i) for i in {a.id for a in reg.find("activations")} - before]
    assert [a.provenance["model"] for a in added] == [str(tiny_models["llama"])]  # only the subject was extracted
    assert build_atlas(f32).id != art.id
    with pytest.raises(InputError, match="dtype"):
        AtlasBuildConfig(**common, dtype="float8")


def test_plan_scales_a_rate_measured_in_another_dtype(monkeypatch):
    """measured_rate prefers a run in the asked dtype; otherwise it scales by this machine's matmul rates."""
    from types import SimpleNamespace

    from atlascli import plan

    runs = [(SimpleNamespace(id="a-f32"), {"sentences_per_s": 10.0, "deepest_layer": 5, "dtype": "float32"})]
    monkeypatch.setattr(plan, "_throughputs", lambda *a, **k: list(runs))
    monkeypatch.setattr(plan, "machine_gflops", lambda device="cpu", dtype="float32": {"float32": 100.0,
                                                                                      "bfloat16": 250.0}[dtype])
    assert plan.measured_rate(Registry(), "m", "cpu", False, "float32") == (10.0, 5, "a-f32")
    assert plan.measured_rate(Registry(), "m", "cpu", False, "bfloat16") == (25.0, 5, "a-f32")
    runs.insert(0, (SimpleNamespace(id="b-bf16"), {"sentences_per_s": 30.0, "deepest_layer": 5, "dtype": "bfloat16"}))
    assert plan.measured_rate(Registry(), "m", "cpu", False, "bfloat16") == (30.0, 5, "b-bf16")
    assert plan.measured_rate(Registry(), "m", "cpu", False, "float32") == (10.0, 5, "a-f32")
