"""Models loaded as their artifacts recorded them: Hub commits, changed local weights, custom model code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from atlascli.cli.main import main
from atlascli.errors import InputError
from atlascli.models import load_model
from atlascli.pinned import check_fitted_on, hub_revision, load_pinned


def custom_code_model(src: Path, dst: Path) -> Path:
    """A copy of a tiny Llama whose config names its own model code (``auto_map``), as a Hub repo with custom code."""
    shutil.copytree(src, dst)
    (dst / "configuration_tiny.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass TinyCustomConfig(LlamaConfig):\n    model_type = 'tiny-custom'\n")
    (dst / "modeling_tiny.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_tiny import TinyCustomConfig\n\n\n"
        "class TinyCustomForCausalLM(LlamaForCausalLM):\n    config_class = TinyCustomConfig\n")
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(model_type="tiny-custom", architectures=["TinyCustomForCausalLM"],
               auto_map={"AutoConfig": "configuration_tiny.TinyCustomConfig",
                         "AutoModelForCausalLM": "modeling_tiny.TinyCustomForCausalLM"})
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_hub_models_are_asked_at_their_recorded_commit(tiny_models, monkeypatch):
    import atlascli.registry.hub as hub

    asked = []

    def snapshot(repo_id, revision=None):
        asked.append((repo_id, revision))
        return Path(tiny_models["llama"]), revision or "main-commit"

    monkeypatch.setattr(hub, "snapshot_model", snapshot)
    commit = "0123456789abcdef0123456789abcdef01234567"
    load_pinned("org/tiny", commit, "alignment A")
    assert asked == [("org/tiny", commit)]
    # a Hub that answers with another commit (e.g. the recorded one was deleted): refused, not silently used
    monkeypatch.setattr(hub, "snapshot_model", lambda repo_id, revision=None: (Path(tiny_models["llama"]),
                                                                                 "main-commit"))
    with pytest.raises(InputError, match="now at revision main-commit, but alignment A was made from 0123"):
        load_pinned("org/tiny", commit, "alignment A")
    # revisions atlas computes itself name content, not commits: never sent to the Hub
    assert hub_revision("org/tiny", "gguf-sha256:abc") is None and hub_revision("org/tiny", "local-abc") is None
    assert hub_revision(str(tiny_models["llama"]), commit) is None and hub_revision("smollm2-135m-instruct", commit) is None
    assert hub_revision("org/tiny", None) is None and hub_revision("org/tiny", commit) == commit


def test_changed_local_weights_are_refused_until_refit(tiny_models, tmp_path):
    folder = shutil.copytree(tiny_models["llama"], tmp_path / "m")
    before = load_model(str(folder)).revision
    assert load_pinned(str(folder), before, "alignment A").revision == before
    assert load_pinned(str(folder), None, "an imported atlas").revision == before  # nothing recorded: as it is now
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": True}))  # any file of the folder
    with pytest.raises(InputError, match=r"now at revision local-.*but alignment A was made from") as exc:
        load_pinned(str(folder), before, "alignment A")
    assert "atlas fit" in exc.value.hint
    lm = load_model(str(folder))
    stale = SimpleNamespace(id="align-old", provenance={"revision": before, "layer": 2})
    fresh = SimpleNamespace(id="align-new", provenance={"revision": lm.revision, "layer": 1})
    check_fitted_on(lm, [fresh])
    with pytest.raises(InputError, match="alignment align-old .layer 2. was fitted on") as exc:
        check_fitted_on(lm, [fresh, stale])
    assert "--layers 2" in exc.value.hint


def test_custom_model_code_runs_only_when_asked(tiny_models, tiny_dataset, tmp_path, capsys):
    model = custom_code_model(tiny_models["llama"], tmp_path / "custom")
    with pytest.raises(InputError, match="needs its own model code") as exc:
        load_model(str(model))
    assert "--trust-remote-code" in exc.value.hint
    args = ["fit", "--subject", str(model), "--layer", "1", "--atlas", f"{tiny_models['gpt2']}@1", "--dataset", "tiny",
            "--limit", "120", "--json"]
    assert main(args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "needs its own model code" in err[0] and "--trust-remote-code" in err[0]
    assert main([*args, "--trust-remote-code"]) == 0
    out = json.loads(capsys.readouterr().out)
    prov = out["alignments"][0]["provenance"]
    assert prov["subject"] == str(model) and prov["revision"] == load_model(str(model), trust_remote_code=True).revision


def test_extractions_for_an_alignment_use_its_weights(tiny_models, tiny_dataset, tmp_path, monkeypatch):
    import atlascli.preflight as preflight
    import atlascli.registry.hub as hub
    from atlascli.extract import ExtractConfig
    from atlascli.pinned import extract_pinned
    from atlascli.registry import Registry

    reg = Registry()
    folder = shutil.copytree(tiny_models["llama"], tmp_path / "m")
    recorded = load_model(str(folder)).revision
    cfg = ExtractConfig(model=str(folder), layers=(1,), site="mlp", dataset="tiny", split="test", limit=20)
    art = extract_pinned(cfg, recorded, "alignment A", reg)
    assert art.provenance["revision"] == recorded
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": True}))
    before = {a.id for a in reg.list("activations")}
    with pytest.raises(InputError, match="now at revision local-.*but alignment A was made from"):
        extract_pinned(ExtractConfig(model=str(folder), layers=(2,), site="mlp", dataset="tiny", split="test",
                                     limit=20), recorded, "alignment A", reg)
    assert {a.id for a in reg.list("activations")} == before  # refused before any work, nothing written
    asked = []

    def snapshot(repo_id, revision=None):
        asked.append(revision)
        return Path(tiny_models["llama"]), revision or "main-commit"

    def hub_config(name, revision, trust_remote_code):  # the plan reads the config at the same commit
        from transformers import AutoConfig

        asked.append(revision)
        return AutoConfig.from_pretrained(str(tiny_models["llama"]))

    monkeypatch.setattr(hub, "snapshot_model", snapshot)
    monkeypatch.setattr(preflight, "_hub_config", hub_config)
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    art = extract_pinned(ExtractConfig(model="org/tiny", layers=(1,), site="mlp", dataset="tiny", split="test",
                                       limit=20), commit, "alignment B", reg)
    assert asked == [commit, commit] and art.provenance["revision"] == commit  # the Hub is asked for the fitted commit


def test_commands_refuse_a_subject_changed_since_its_fit(tiny_models, tiny_dataset, tmp_path, capsys):
    """The user's path: fit a local subject, change its folder, then read / steer / search: one clear line naming
    the refit, never a translation applied to other weights (search: before its test activations are extracted)."""
    from atlascli.atlas import AtlasBuildConfig, build_atlas
    from atlascli.fit import FitConfig, fit

    subject = shutil.copytree(tiny_models["llama"], tmp_path / "subject")
    art = build_atlas(AtlasBuildConfig(name="tiny", foundation=str(tiny_models["gpt2"]), layer=1, width=64, k=4,
                                       dataset="tiny", train_sentences=150, max_tokens=4000, epochs=2,
                                       batch_size=256, lr=3e-3, label_sentences=150, top_samples=5))
    fit(FitConfig(subject=str(subject), layers=(2,), site="mlp", atlas=art.id, dataset="tiny", limit=150))
    read = ["read", "The dog met a cat", "--json"]
    steer = ["steer", "--features", "3", "--lambda", "20", "--prompt", "The dog", "--max-new-tokens", "3", "--json"]
    assert main(read) == 0 and main(steer) == 0
    capsys.readouterr()
    (subject / "generation_config.json").write_text(json.dumps({"do_sample": True}))
    search = ["search", "--features", "3", "--json"]
    for args in (read, steer, search):
        assert main(args) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and "is now at revision local-" in err[0] and "atlas fit" in err[0], (args, err)


def test_alignments_of_two_revisions_are_not_used_together(tiny_models, tmp_path):
    from atlascli.pinned import check_unchanged, one_revision

    def align(i, rev):
        return SimpleNamespace(id=f"align-{i}", provenance={"revision": rev, "layer": i, "subject": "org/m"})

    assert one_revision([align(1, "c1"), align(2, "c1"), align(3, None)]) == "c1"
    assert one_revision([align(3, None)]) is None
    with pytest.raises(InputError, match="alignment align-2 .layer 2. was fitted on org/m revision c2, alignment "
                                         "align-1 on c1") as exc:
        one_revision([align(1, "c1"), align(2, "c2")])
    assert "--layers 2" in exc.value.hint
    folder = shutil.copytree(tiny_models["gpt2"], tmp_path / "f")
    rev = load_model(str(folder)).revision
    check_unchanged(str(folder), rev, "atlas A")
    check_unchanged("org/not-local", "c1", "atlas A")  # a Hub model: asked for its commit instead, nothing to hash
    (folder / "extra.json").write_text("{}")
    with pytest.raises(InputError, match="but atlas A was made from"):
        check_unchanged(str(folder), rev, "atlas A")


def test_fit_refuses_an_atlas_whose_foundation_changed_before_extracting(tiny_models, tiny_dataset, tmp_path):
    from atlascli.atlas import AtlasBuildConfig, build_atlas
    from atlascli.fit import FitConfig, fit
    from atlascli.registry import Registry

    foundation = shutil.copytree(tiny_models["gpt2"], tmp_path / "foundation")
    art = build_atlas(AtlasBuildConfig(name="tiny", foundation=str(foundation), layer=1, width=64, k=4,
                                       dataset="tiny", train_sentences=150, max_tokens=4000, epochs=2,
                                       batch_size=256, lr=3e-3, label_sentences=100, top_samples=5))
    (foundation / "extra.json").write_text("{}")
    before = {a.id for a in Registry().list("activations")}
    with pytest.raises(InputError, match=f"but atlas {art.id} was made from"):
        fit(FitConfig(subject=str(tiny_models["llama"]), layers=(2,), site="mlp", atlas=art.id, dataset="tiny",
                      limit=150))
    assert {a.id for a in Registry().list("activations")} == before  # refused before any extraction


def test_relabelling_an_atlas_on_custom_code_needs_the_flag(tiny_models, tiny_dataset, tmp_path, capsys):
    foundation = custom_code_model(tiny_models["llama"], tmp_path / "custom")
    args = ["atlas", "build", "--name", "c", "--foundation", str(foundation), "--layer", "1", "--width", "32",
            "--k", "4", "--dataset", "tiny", "--train-sentences", "100", "--max-tokens", "2000", "--epochs", "2",
            "--label-sentences", "100", "--json"]
    assert main([*args, "--trust-remote-code"]) == 0, capsys.readouterr().err
    atlas_id = json.loads(capsys.readouterr().out)["id"]
    assert main(["atlas", "label", atlas_id, "--json"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "needs its own model code" in err[0] and "--trust-remote-code" in err[0]
    assert main(["atlas", "label", atlas_id, "--trust-remote-code", "--json"]) == 0
    relabelled = json.loads(capsys.readouterr().out)
    assert relabelled["id"] != atlas_id and relabelled["kind"] == "atlas"
    # the Python API's query from examples encodes them with the same foundation, under the same consent
    from atlascli.api import Alignment
    from atlascli.atlas import resolve_atlas

    api = Alignment(artifact=None, atlas=resolve_atlas(atlas_id))
    with pytest.raises(InputError, match="needs its own model code"):
        api.query(examples=["The dog and the cat met a city today."])
    assert api.query(examples=["The dog and the cat met a city today."], trust_remote_code=True).features
