"""Fail fast and say the cost: every bad input fails before any model is loaded or run, leaving the
registry as it was; plans list what is reused and the work left."""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import pytest

import atlascli
from atlascli.cli.main import main
from atlascli.extract import ExtractConfig, extract
from atlascli.plan import plan_extract
from atlascli.plan_tasks import plan_fit
from atlascli.registry import Registry


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(home: Path) -> list[str]:
    """Every file and folder of the registry (partial folders included)."""
    root = home / "artifacts"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture()
def no_models(monkeypatch):
    """Record (and refuse) every model load and every forward hook."""
    calls: list[str] = []
    # every atlascli module imported first: one imported while the patch is on would keep the fake `load_model` it
    # bound by `from atlascli.models import load_model` after the patch is undone (seen when test_plan runs before
    # test_cli's first atlas build)
    for info in pkgutil.walk_packages(atlascli.__path__, "atlascli."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)

    def loader(*args, **kwargs):
        calls.append(f"load_model{args[:1]}")
        raise AssertionError("a model was loaded")

    def hooks(*args, **kwargs):
        calls.append("record_sites")
        raise AssertionError("a forward hook ran")

    for name, mod in list(sys.modules.items()):
        if name.startswith("atlascli") and mod is not None:
            if hasattr(mod, "load_model"):
                monkeypatch.setattr(mod, "load_model", loader)
            if hasattr(mod, "record_sites"):
                monkeypatch.setattr(mod, "record_sites", hooks)
    return calls


def fails_cleanly(capsys, home, calls, args, expected):
    before = snapshot(home)
    code, out, err = run(capsys, *args)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], err
    assert "Traceback" not in err and out == ""
    assert calls == [] and snapshot(home) == before
    return lines[0]


def test_extract_bad_inputs_fail_before_any_model(capsys, tiny_models, tiny_dataset, isolated_home, no_models, tmp_path):
    from conftest import save_random_topk_sae

    llama = str(tiny_models["llama"])
    base = ["extract", "--model", llama, "--dataset", "tiny", "--json"]
    fails_cleanly(capsys, isolated_home, no_models, [*base, "--layers", "9"], "valid layers are 0..3")
    fails_cleanly(capsys, isolated_home, no_models, [*base, "--layers", "1", "--site", "attn"], "unknown site 'attn'")
    fails_cleanly(capsys, isolated_home, no_models, ["extract", "--model", llama, "--layers", "1", "--dataset", "nope"],
                  "no dataset named 'nope'")
    fails_cleanly(capsys, isolated_home, no_models, [*base, "--layers", "1", "--split", "dev"], "unknown split")
    fails_cleanly(capsys, isolated_home, no_models, [*base, "--layers", "1", "--dtype", "int8"], "unknown dtype")
    line = fails_cleanly(capsys, isolated_home, no_models,
                         ["extract", "--model", "nonexistent/model-xyz", "--layers", "1", "--dataset", "tiny"], "offline")
    assert "unknown model 'nonexistent/model-xyz'" in line
    save_random_topk_sae(tmp_path / "sae16", 16, 64, 4, seed=0)
    fails_cleanly(capsys, isolated_home, no_models, [*base, "--layers", "1", "--sae", str(tmp_path / "sae16")],
                  "the SAE reads 16-d activations")
    fails_cleanly(capsys, isolated_home, no_models, [*base, "--layers", "1,2", "--sae", str(tmp_path / "sae16")],
                  "exactly one layer")


def test_extract_refuses_when_the_disk_is_too_small(capsys, tiny_models, tiny_dataset, isolated_home, no_models,
                                                    monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**6, 10**6 - 1000, 1000))
    fails_cleanly(capsys, isolated_home, no_models,
                  ["extract", "--model", str(tiny_models["llama"]), "--layers", "1,2", "--dataset", "tiny"],
                  "not enough disk space")


def test_fit_bad_inputs_fail_before_the_atlas_side_is_extracted(capsys, tiny_models, tiny_dataset, isolated_home,
                                                                no_models):
    llama, gpt2 = str(tiny_models["llama"]), str(tiny_models["gpt2"])
    base = ["fit", "--dataset", "tiny", "--limit", "50"]
    fails_cleanly(capsys, isolated_home, no_models, [*base, "--subject", llama, "--layer", "99", "--atlas", f"{gpt2}@1"],
                  "layer 99 is out of range")
    line = fails_cleanly(capsys, isolated_home, no_models,
                         [*base, "--subject", "nonexistent/model-xyz", "--layer", "19", "--atlas", f"{gpt2}@1"], "offline")
    assert "nonexistent/model-xyz" in line
    fails_cleanly(capsys, isolated_home, no_models, [*base, "--subject", llama, "--layer", "1", "--atlas", f"{gpt2}@7"],
                  "valid layers are 0..2")
    fails_cleanly(capsys, isolated_home, no_models, [*base, "--subject", llama, "--layer", "1", "--site", "attn",
                                                     "--atlas", f"{gpt2}@1"], "unknown site")
    fails_cleanly(capsys, isolated_home, no_models, [*base, "--subject", llama, "--layer", "1", "--atlas", "gpt2@x"],
                  "MODEL@LAYER")
    fails_cleanly(capsys, isolated_home, no_models, [*base, "--subject", llama, "--layer", "1", "--atlas", "atlas-nope"],
                  "no artifact named 'atlas-nope'")
    fails_cleanly(capsys, isolated_home, no_models, [*base, "--subject", llama, "--layer", "1"], "no Concept Atlas")
    fails_cleanly(capsys, isolated_home, no_models, ["fit", "--dataset", "nope", "--subject", llama, "--layer", "1",
                                                     "--atlas", f"{gpt2}@1"], "no dataset named")


def _fake_atlas(registry: Registry, foundation: str, d_in: int, width: int, dataset_id: str) -> str:
    """An atlas artifact whose SAE reads ``d_in``-d activations (only its config matters to the checks)."""
    stage = registry.stage("atlas", "atlas-fake-L1-resid", parents=[dataset_id])
    (stage.path / "sae").mkdir()
    (stage.path / "sae" / "cfg.json").write_text(json.dumps({"d_in": d_in, "d_sae": width}))
    art = stage.commit({"name": "fake", "foundation": foundation, "layer": 1, "site": "resid", "width": width})
    return art.id


def test_fit_checks_atlas_compatibility_and_mismatched_activations(capsys, tiny_models, tiny_dataset, isolated_home,
                                                                   no_models):
    llama, gpt2 = str(tiny_models["llama"]), str(tiny_models["gpt2"])
    atlas_id = _fake_atlas(Registry(), gpt2, 16, 64, tiny_dataset.id)
    fails_cleanly(capsys, isolated_home, no_models, ["fit", "--subject", llama, "--layer", "1", "--atlas", atlas_id,
                                                     "--dataset", "tiny"], "the SAE reads 16-d activations")


def test_fit_mismatched_atlas_activations_fail_before_the_subject_runs(capsys, tiny_models, tiny_dataset,
                                                                       isolated_home, monkeypatch):
    other = extract(ExtractConfig(model=str(tiny_models["gpt2"]), layers=(1,), dataset="tiny", limit=50))
    test_split = extract(ExtractConfig(model=str(tiny_models["gpt2"]), layers=(1,), dataset="tiny", split="test"))
    import atlascli.extract as ex

    loads: list[str] = []
    monkeypatch.setattr(ex, "load_model", lambda *a, **k: loads.append(a[0]))
    base = ["fit", "--subject", str(tiny_models["llama"]), "--layer", "1", "--dataset", "tiny"]
    fails_cleanly(capsys, isolated_home, loads, [*base, "--atlas", other.id, "--limit", "60"], "N=50")
    fails_cleanly(capsys, isolated_home, loads, [*base, "--atlas", test_split.id], "different datasets")


def test_dry_runs_list_reused_artifacts_and_the_work_left(capsys, tiny_models, tiny_dataset, isolated_home, monkeypatch):
    llama, gpt2 = str(tiny_models["llama"]), str(tiny_models["gpt2"])
    subj = extract(ExtractConfig(model=llama, layers=(1, 2), site="mlp", dataset="tiny", split="train", limit=60))
    thr = subj.meta["throughput"]
    assert thr["sentences"] == 60 and thr["sentences_per_s"] > 0 and thr["deepest_layer"] == 2
    import atlascli.extract as ex

    loads: list[str] = []
    monkeypatch.setattr(ex, "load_model", lambda *a, **k: loads.append(a[0]))
    before = snapshot(isolated_home)
    code, out, err = run(capsys, "fit", "--subject", llama, "--layer", "2", "--atlas", f"{gpt2}@1", "--dataset", "tiny",
                         "--limit", "60", "--dry-run")
    assert code == 0, err
    assert f"reused: {subj.id}" in out
    work = out.split("work left:")[1]
    assert "60 train sentences through" in work and gpt2 in work and "fit procrustes at layer(s) 2" in work
    assert err.strip().startswith("plan (fit):") and "--limit N makes it smaller" in err
    code, out, _ = run(capsys, "fit", "--subject", llama, "--layer", "2", "--atlas", f"{gpt2}@1", "--dataset", "tiny",
                       "--limit", "60", "--dry-run", "--json")
    plan = json.loads(out)["plan"]
    assert plan["reused"] == [subj.id] and [s["action"] for s in plan["work"]] == ["extract", "fit"]
    assert plan["work"][0]["sentences"] == 60 and plan["seconds"] > 0 and plan["disk_bytes"] > 0
    # another model is estimated from the FLOP rate the llama extraction reached on this machine
    assert plan["work"][0]["basis"].startswith("scaled from llama measured here")
    # the subject's own measured throughput serves a new layer set of the same model
    code, out, _ = run(capsys, "extract", "--model", llama, "--layers", "3", "--dataset", "tiny", "--dry-run", "--json")
    step = json.loads(out)["plan"]["work"][0]
    assert step["basis"].startswith("measured") and subj.id in step["basis"]
    assert loads == [] and snapshot(isolated_home) == before


def test_plans_then_runs_and_reports_the_plan(capsys, tiny_models, tiny_dataset, isolated_home):
    llama = str(tiny_models["llama"])
    code, out, err = run(capsys, "extract", "--model", llama, "--layers", "1", "--dataset", "tiny", "--limit", "40",
                         "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["plan"]["work"][0]["sentences"] == 40 and "plan (extract): 40 train sentences" in err
    plan = plan_extract(ExtractConfig(model=llama, layers=(1,), dataset="tiny", limit=40))
    assert plan.reused == [res["id"]] and plan.work == [] and "nothing to compute" in plan.line()


def test_plan_fit_time_estimate_uses_both_models(tiny_models, tiny_dataset):
    from atlascli.fit import FitConfig

    plan = plan_fit(FitConfig(subject=str(tiny_models["llama"]), layers=(1, 2), site="mlp",
                              atlas=f"{tiny_models['gpt2']}@1", dataset="tiny", limit=100))
    extracts = [s for s in plan.steps if s.action == "extract"]
    assert [s.model for s in extracts] == [str(tiny_models["gpt2"]), str(tiny_models["llama"])]
    assert all(s.sentences == 100 and s.seconds > 0 for s in extracts)
    assert plan.seconds >= sum(s.seconds for s in extracts)
