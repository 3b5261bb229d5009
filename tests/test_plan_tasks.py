"""Plans and early checks of `atlas atlas build` and `atlas evaluate`."""

from __future__ import annotations

import json

import pytest
import test_plan
from test_plan import fails_cleanly, run, snapshot

from atlascli.atlas import AtlasBuildConfig
from atlascli.errors import InputError, NotFoundError
from atlascli.plan_tasks import plan_build
from atlascli.registry import Registry

no_models = test_plan.no_models  # the fixture, shared
TINY_BUILD = dict(name="tiny", layer=1, width=64, k=4, dataset="tiny", train_sentences=150, max_tokens=4000, epochs=4,
                  batch_size=256, lr=3e-3, label_sentences=150, top_samples=5)


def test_plan_build_checks_inputs_before_any_model(tiny_models, tiny_dataset, isolated_home, no_models):
    gpt2 = str(tiny_models["gpt2"])
    before = snapshot(isolated_home)
    with pytest.raises(InputError, match=r"valid layers are 0\.\.2"):
        plan_build(AtlasBuildConfig(**{**TINY_BUILD, "foundation": gpt2, "layer": 5}))
    with pytest.raises(InputError, match="unknown site"):
        plan_build(AtlasBuildConfig(**{**TINY_BUILD, "foundation": gpt2, "site": "attn"}))
    with pytest.raises(InputError, match="bad SAE shape"):
        plan_build(AtlasBuildConfig(**{**TINY_BUILD, "foundation": gpt2, "k": 100}))
    with pytest.raises(NotFoundError, match="no dataset named"):
        plan_build(AtlasBuildConfig(**{**TINY_BUILD, "foundation": gpt2, "dataset": "nope"}))
    with pytest.raises(NotFoundError, match="offline"):
        plan_build(AtlasBuildConfig(**{**TINY_BUILD, "foundation": "nonexistent/model-xyz"}))
    plan = plan_build(AtlasBuildConfig(**{**TINY_BUILD, "foundation": gpt2}))
    assert [s.action for s in plan.steps] == ["extract", "train", "encode", "embed"]
    assert plan.steps[0].sentences == 150 and plan.seconds > 0 and plan.reused == []
    assert "--label-sentences" in plan.line()
    assert no_models == [] and snapshot(isolated_home) == before


def test_atlas_build_cli_dry_run_and_bad_layer(capsys, tiny_models, tiny_dataset, isolated_home, no_models):
    gpt2 = str(tiny_models["gpt2"])
    base = ["atlas", "build", "--foundation", gpt2, "--dataset", "tiny", "--width", "64", "--k", "4"]
    fails_cleanly(capsys, isolated_home, no_models, [*base, "--layer", "7"], "valid layers are 0..2")
    before = snapshot(isolated_home)
    code, out, err = run(capsys, *base, "--layer", "1", "--dry-run", "--json")
    assert code == 0, err
    assert [s["action"] for s in json.loads(out)["plan"]["work"]] == ["extract", "train", "encode", "embed"]
    assert no_models == [] and snapshot(isolated_home) == before


def _copy_alignment(registry: Registry, src, new_id: str, **changes):
    stage = registry.stage("alignment", new_id, parents=src.parents)
    (stage.path / "translation.safetensors").write_bytes(src.file("translation.safetensors").read_bytes())
    return stage.commit({**src.provenance, **changes}, src.meta)


@pytest.fixture()
def sae_aligned(tiny_models, tiny_dataset):
    """An atlas artifact holding a random TopK SAE on tiny GPT-2 layer 1 (no labels: only the checks read it) and a
    Procrustes fit of tiny Llama layer 2 to it."""
    from conftest import save_random_topk_sae

    from atlascli.fit import FitConfig, fit

    reg = Registry()
    stage = reg.stage("atlas", "atlas-rand-gpt2-L1-resid-w64", parents=[tiny_dataset.id])
    save_random_topk_sae(stage.path / "sae", 32, 64, 4, seed=0)
    atlas = stage.commit({"name": "rand", "foundation": str(tiny_models["gpt2"]), "layer": 1, "site": "resid",
                          "width": 64, "dataset": tiny_dataset.id,
                          "dataset_fingerprint": tiny_dataset.provenance["dataset_fingerprint"]})
    fits = fit(FitConfig(subject=str(tiny_models["llama"]), layers=(2,), site="mlp", atlas=atlas.id, dataset="tiny",
                         limit=100, methods="procrustes"))
    return atlas, fits


def test_evaluate_plan_reuse_and_compatibility(capsys, sae_aligned, tiny_models, isolated_home, monkeypatch):
    atlas, fits = sae_aligned
    import atlascli.extract as ex

    loads: list[str] = []
    monkeypatch.setattr(ex, "load_model", lambda *a, **k: loads.append(a[0]))
    before = snapshot(isolated_home)
    code, out, err = run(capsys, "evaluate", "quality", "--dry-run", "--json", "--test-limit", "50")
    assert code == 0, err
    plan = json.loads(out)["plan"]
    work = [(s["action"], s["model"], s["sentences"]) for s in plan["work"]]
    assert work == [("extract", str(tiny_models["llama"]), 50), ("extract", str(tiny_models["gpt2"]), 50)]
    assert err.strip().startswith("plan (evaluate):")
    fails_cleanly(capsys, isolated_home, loads, ["evaluate", "quality", "--judge", "bogus"], "unknown judge")
    fails_cleanly(capsys, isolated_home, loads, ["evaluate", "quality", "--layers", "3"], "fitted at every layer [3]")
    assert snapshot(isolated_home) == before
    reg = Registry()
    proc = next(a for a in fits if a.provenance["method"] == "procrustes")
    bad = _copy_alignment(reg, proc, "align-copy-wide", shape=[48, 999])
    fails_cleanly(capsys, isolated_home, loads, ["evaluate", "quality", "--methods", "procrustes"],
                  "maps to 999 atlas features")
    reg.remove(bad.id)
    _copy_alignment(reg, proc, "align-copy-old", atlas_version="2000-01-01T00:00:00+00:00")
    fails_cleanly(capsys, isolated_home, loads, ["evaluate", "quality", "--methods", "procrustes"],
                  "another version")
    assert loads == []


def test_plan_build_reuses_an_identical_atlas_and_fit_reuses_its_extractions(aligned, tiny_models, no_models):
    from atlascli.fit import FitConfig
    from atlascli.plan_tasks import plan_fit

    atlas, fits = aligned
    build = plan_build(AtlasBuildConfig(**{**TINY_BUILD, "foundation": str(tiny_models["gpt2"])}))
    assert build.reused == [atlas.id] and build.work == [] and "nothing to compute" in build.line()
    # an atlas built before --revision / --trust-remote-code existed stored neither in its config: still the same
    manifest = atlas.artifact.path / "manifest.json"
    data = json.loads(manifest.read_text())
    for key in ("revision", "trust_remote_code"):
        data["meta"]["config"].pop(key)
    manifest.write_text(json.dumps(data))
    build = plan_build(AtlasBuildConfig(**{**TINY_BUILD, "foundation": str(tiny_models["gpt2"])}))
    assert build.reused == [atlas.id] and build.work == []
    other = plan_build(AtlasBuildConfig(**{**TINY_BUILD, "foundation": str(tiny_models["gpt2"]), "revision": "v2"}))
    assert other.reused == [] and other.work  # another revision asked for: not this atlas
    plan = plan_fit(FitConfig(subject=str(tiny_models["llama"]), layers=(2,), site="mlp", atlas=atlas.id,
                              dataset="tiny", limit=150, methods="procrustes,cov"))
    # every alignment asked for is already there: the plan says so and has no work left (a rerun)
    assert sorted(plan.reused) == sorted(fits[0].parents) and plan.work == []
    assert "reuse the 2 alignments" in plan.line() and "nothing to compute" in plan.line()
    # one method more: both extractions are reused, the fit runs
    more = plan_fit(FitConfig(subject=str(tiny_models["llama"]), layers=(2,), site="mlp", atlas=atlas.id,
                              dataset="tiny", limit=150, methods="procrustes,cov,linreg"))
    assert sorted(more.reused) == sorted(fits[0].parents) and [s.action for s in more.work] == ["fit"]
    assert no_models == []
