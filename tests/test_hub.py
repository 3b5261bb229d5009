"""atlas publish / pull / hub ls against a local Hub-compatible server (tests/hubserver.py), real huggingface_hub client."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from atlascli.cli.main import main
from atlascli.errors import CorruptArtifactError, InputError
from atlascli.registry import Registry
from atlascli.registry.files import atomic_save_tensors, atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hubserver import HubServer  # noqa: E402

TOKEN = "hf_test_write_token"
SUBJECT = "org/subject-model"


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """A local Hub; huggingface_hub online and pointed at it, Xet off, a write token in HF_TOKEN."""
    from huggingface_hub import constants

    server = HubServer(tmp_path / "hub-data")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    yield server
    server.close()


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _commit(reg, kind, art_id, files, prov, parents=()):
    stage = reg.stage(kind, art_id, parents=list(parents))
    for name, value in files.items():
        if isinstance(value, torch.Tensor):
            atomic_save_tensors(stage.path / name, {"x": value})
        else:
            atomic_write_json(stage.path / name, value)
    return stage.commit(prov)


def synthetic_registry(reg: Registry) -> dict[str, str]:
    """Dataset, atlas, alignment and report artifacts with small made-up content (no models)."""
    ds = _commit(reg, "dataset", "dataset-tiny-1", {"train.json": ["a b"], "test.json": ["c d", "e f"]},
                 {"name": "tiny", "n_test": 2, "dataset_fingerprint": "fp1"})
    at = _commit(reg, "atlas", "atlas-tiny-1", {"labels.json": [{"index": 0, "label": "dogs"}],
                                                "sae/sae_weights.safetensors": torch.arange(64.0)},
                 {"name": "tiny", "foundation": "org/foundation", "layer": 1, "site": "resid", "width": 1}, [ds.id])
    al = _commit(reg, "alignment", "align-tiny-1", {"translation.safetensors": torch.ones(8, 8)},
                 {"method": "procrustes", "subject": SUBJECT, "revision": "r1", "layer": 2, "site": "mlp",
                  "atlas": at.id, "dataset": ds.id, "dataset_fingerprint": "fp1", "n": 10}, ["act-train-missing"])
    rep = _commit(reg, "report", "report-tiny-1", {"report.json": {"quality": {"procrustes": {"r2": 0.5}}}},
                  {"subject": SUBJECT, "atlas": at.id}, [at.id, al.id])
    return {"dataset": ds.id, "atlas": at.id, "alignment": al.id, "report": rep.id}


def _publish_synthetic(tmp_path, monkeypatch, repo="me/tiny-atlas"):
    from atlascli.registry.bundle import plan_bundle, publish

    monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "publisher"))
    ids = synthetic_registry(Registry())
    res = publish(plan_bundle(Registry(), SUBJECT), repo)
    monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "puller"))
    return ids, res


def _registry_empty() -> bool:
    return Registry().list() == [] and not any(p.name.startswith(".incoming") for p in Registry().root.glob("*"))


def test_publish_then_pull_synthetic_bundle(hub, tmp_path, monkeypatch, capsys):
    ids, res = _publish_synthetic(tmp_path, monkeypatch)
    files = hub.files("me/tiny-atlas")
    assert {"README.md", "atlas-bundle.json", f"atlas/{ids['atlas']}/manifest.json",
            f"alignment/{ids['alignment']}/translation.safetensors", f"report/{ids['report']}/report.json"} <= set(files)
    card = files["README.md"].decode()
    assert "library_name: atlascli" in card and "atlas-alignment" in card and f"base_model: {SUBJECT}" in card
    assert "atlas pull me/tiny-atlas" in card and "r2" in card
    assert all(TOKEN.encode() not in data for data in files.values())
    from atlascli.registry import bundle

    hashed: list[str] = []
    real = bundle.sha256_file
    monkeypatch.setattr(bundle, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    code, out, err = run(capsys, "pull", "me/tiny-atlas", "--json")
    assert code == 0, err
    assert hashed and not any(n.endswith(".safetensors") for n in hashed)  # LFS files were hashed as they arrived
    got = json.loads(out)
    assert got["commit"] == res.commit and {a["id"] for a in got["added"]} == set(ids.values())
    reg = Registry()
    for art in reg.list():
        art.verify()
    pulls = json.loads((tmp_path / "puller" / "hub" / "pulls.json").read_text())
    assert pulls[-1]["commit"] == res.commit and TOKEN not in json.dumps(pulls)
    # pulling again: everything already there, nothing changes
    code, out, _ = run(capsys, "pull", "me/tiny-atlas", "--json")
    assert code == 0 and json.loads(out)["added"] == []


def test_republish_uploads_only_changes_and_hub_ls_reads_the_card(hub, tmp_path, monkeypatch, capsys):
    from atlascli.registry.bundle import plan_bundle, publish

    _, first = _publish_synthetic(tmp_path, monkeypatch)
    monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "publisher"))
    puts = sum(1 for m, _ in hub.log if m == "PUT")
    again = publish(plan_bundle(Registry(), SUBJECT), "me/tiny-atlas")
    assert sum(1 for m, _ in hub.log if m == "PUT") == puts  # no LFS object uploaded twice
    assert again.commit == first.commit  # nothing changed: no new commit
    _commit(Registry(), "concepts", "concept-dogs-1", {"concept.json": {"features": [0]}}, {"name": "dogs"},
            ["atlas-tiny-1"])
    third = publish(plan_bundle(Registry(), SUBJECT), "me/tiny-atlas")
    assert third.commit != first.commit and "concept/" not in str(hub.files("me/tiny-atlas"))
    assert "concepts/concept-dogs-1/manifest.json" in hub.files("me/tiny-atlas")
    code, out, err = run(capsys, "hub", "ls", "--subject", SUBJECT, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["repo"] for r in rows] == ["me/tiny-atlas"]
    assert rows[0]["layers"] == [2] and rows[0]["methods"] == ["procrustes"] and rows[0]["atlas"] == "atlas-tiny-1"
    assert rows[0]["metrics"] == {"procrustes.r2": 0.5} and rows[0]["foundation"] == "org/foundation"
    code, out, _ = run(capsys, "hub", "ls", "--subject", "someone/else", "--json")
    assert json.loads(out) == []


def test_tampered_file_is_refused_and_removed(hub, tmp_path, monkeypatch, capsys):
    from atlascli.registry.bundle import pull

    ids, _ = _publish_synthetic(tmp_path, monkeypatch)
    name = f"alignment/{ids['alignment']}/translation.safetensors"
    data = bytearray(hub.files("me/tiny-atlas")[name])
    data[-1] ^= 0xFF
    hub.put_file("me/tiny-atlas", name, bytes(data))
    with pytest.raises(CorruptArtifactError, match="checksum"):
        pull("me/tiny-atlas")
    assert _registry_empty()
    cache = tmp_path / "hf-home" / "hub"
    assert not [p for p in cache.rglob("translation.safetensors")]  # the bad download was removed
    code, _, err = run(capsys, "pull", "me/tiny-atlas")
    assert code == 2 and "checksum" in err and len(err.strip().splitlines()) <= 2
    hub.put_file("me/tiny-atlas", name, bytes(data[:-5]))  # size differs from the manifest
    with pytest.raises(CorruptArtifactError, match="bytes on the Hub"):
        pull("me/tiny-atlas")
    assert _registry_empty()


@pytest.mark.parametrize("evil", ["traversal", "absolute", "unknown_kind", "bad_id", "kind_mismatch", "schema"])
def test_malicious_manifest_or_index_is_refused(hub, tmp_path, monkeypatch, evil):
    from atlascli.registry.bundle import pull

    ids, _ = _publish_synthetic(tmp_path, monkeypatch)
    files = hub.files("me/tiny-atlas")
    mpath = f"atlas/{ids['atlas']}/manifest.json"
    manifest = json.loads(files[mpath])
    index = json.loads(files["atlas-bundle.json"])
    entry = next(iter(manifest["files"].values()))
    if evil == "traversal":
        manifest["files"]["../../../evil.json"] = entry
    elif evil == "absolute":
        manifest["files"]["/tmp/evil.json"] = entry
    elif evil == "unknown_kind":
        index["artifacts"].append({"kind": "pickle", "id": "x"})
    elif evil == "bad_id":
        index["artifacts"].append({"kind": "atlas", "id": "../../escape"})
    elif evil == "kind_mismatch":
        manifest["kind"] = "dataset"
    elif evil == "schema":
        manifest["schema_version"] = 99
    hub.put_file("me/tiny-atlas", mpath, json.dumps(manifest).encode())
    hub.put_file("me/tiny-atlas", "atlas-bundle.json", json.dumps(index).encode())
    with pytest.raises(CorruptArtifactError):
        pull("me/tiny-atlas")
    assert _registry_empty()
    assert not (tmp_path / "evil.json").exists() and not Path("/tmp/evil.json").exists()


def test_extra_files_are_ignored(hub, tmp_path, monkeypatch):
    from atlascli.registry.bundle import pull

    ids, _ = _publish_synthetic(tmp_path, monkeypatch)
    hub.put_file("me/tiny-atlas", f"atlas/{ids['atlas']}/payload.pkl", b"\x80\x04not a pickle you want")
    pull("me/tiny-atlas")
    art = Registry().get(ids["atlas"])
    assert not (art.path / "payload.pkl").exists()
    assert not any(p for _, p in hub.log if p.endswith("payload.pkl"))


def test_cut_download_resumes_and_http_500_is_retried(hub, tmp_path, monkeypatch):
    from atlascli.registry.bundle import pull

    ids, res = _publish_synthetic(tmp_path, monkeypatch)
    hub.cut("translation.safetensors")
    hub.fail("GET", "/api/models/me/tiny-atlas", 500)
    hub.fail("HEAD", "labels.json", 500)
    got = pull("me/tiny-atlas")
    assert got.commit == res.commit and len(got.added) == 4
    Registry().get(ids["alignment"]).verify()
    gets = [p for m, p in hub.log if m == "GET" and p.endswith("translation.safetensors")]
    assert len(gets) >= 2  # cut, then resumed


def test_no_token_repo_not_found_and_bad_revision(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "publisher"))
    synthetic_registry(Registry())
    monkeypatch.delenv("HF_TOKEN")
    code, _, err = run(capsys, "publish", "--subject", SUBJECT, "--repo", "me/x")
    assert code == 2 and "no Hugging Face token" in err and "hf auth login" in err
    assert "me/x" not in hub.repos
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token")
    code, _, err = run(capsys, "publish", "--subject", SUBJECT, "--repo", "me/x")
    assert code == 2 and "HTTP 401" in err and "hf_wrong_token" not in err
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, _, err = run(capsys, "pull", "nobody/nothing")
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) <= 2
    assert run(capsys, "publish", "--subject", SUBJECT, "--repo", "me/x")[0] == 0
    monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "puller"))
    code, _, err = run(capsys, "pull", "me/x", "--revision", "v9")
    assert code == 2 and "no revision" in err
    assert _registry_empty()
    code, _, err = run(capsys, "publish", "--subject", "nobody/model", "--repo", "me/x")
    assert code == 2 and "no alignment" in err


def test_pull_conflict_keeps_local_artifact(hub, tmp_path, monkeypatch):
    from atlascli.registry.bundle import pull

    ids, _ = _publish_synthetic(tmp_path, monkeypatch)
    _commit(Registry(), "dataset", ids["dataset"], {"train.json": ["other"]}, {"name": "other"})
    with pytest.raises(InputError, match="different content"):
        pull("me/tiny-atlas")
    assert [a.id for a in Registry().list()] == [ids["dataset"]]


def test_untrusted_names_and_local_links(tmp_path, capsys):
    from atlascli.registry.hub import import_folder
    from atlascli.registry.untrusted import check_name

    for bad in ["../x", "/abs", "a/../b", "a\\b", "", ".hidden", "a//b", "manifest.json"]:
        with pytest.raises(CorruptArtifactError):
            check_name(bad, "t")
    assert check_name("sae/sae_weights.safetensors", "t") == "sae/sae_weights.safetensors"
    src = Registry(tmp_path / "src")
    art = _commit(src, "dataset", "dataset-x", {"train.json": ["a"]}, {})
    outside = tmp_path / "secret.json"
    outside.write_text('["secret"]')
    (art.path / "train.json").unlink()
    (art.path / "train.json").symlink_to(outside)
    with pytest.raises(CorruptArtifactError, match="link"):
        import_folder(art.path, Registry(tmp_path / "dst"))
    # a registry entry that is a link to a folder outside the registry: `registry show` refuses it
    reg = Registry()
    elsewhere = tmp_path / "elsewhere"
    good = _commit(Registry(tmp_path / "other"), "dataset", "dataset-y", {"train.json": ["b"]}, {})
    good.path.rename(elsewhere)
    (reg.kind_dir("dataset") / "dataset-y").symlink_to(elsewhere)
    code, _, err = run(capsys, "registry", "show", "dataset-y")
    assert code == 2 and "outside" in err


@pytest.fixture()
def imported_aligned(tiny_models, tiny_dataset, tmp_path):
    """A real (tiny) alignment: an imported random TopK SAE on tiny GPT-2 as atlas, tiny Llama layer 2 fitted to it."""
    from conftest import save_random_topk_sae

    from atlascli.atlas import import_atlas, resolve_atlas
    from atlascli.fit import FitConfig, fit

    sae = save_random_topk_sae(tmp_path / "sae", d_in=32, d_sae=64, k=4, seed=0)
    labels = tmp_path / "labels.csv"
    labels.write_text("index,description\n" + "".join(f"{i},concept number {i}\n" for i in range(64)))
    art = import_atlas(str(sae), labels, foundation=str(tiny_models["gpt2"]), layer=1, site="resid", name="tiny")
    fits = fit(FitConfig(subject=str(tiny_models["llama"]), layers=(2,), site="mlp", atlas=art.id, dataset="tiny",
                         limit=150, methods="procrustes"))
    return resolve_atlas(art.id), fits


def test_publish_pull_then_search_with_real_alignment(hub, imported_aligned, tmp_path, monkeypatch, capsys, tiny_models):
    atlas, fits = imported_aligned
    subject = str(tiny_models["llama"])
    code, out, err = run(capsys, "publish", "--subject", subject, "--repo", "me/llama-atlas", "--json")
    assert code == 0, err
    published = json.loads(out)
    kinds = {a["kind"] for a in published["artifacts"]}
    assert {"atlas", "alignment", "dataset"} <= kinds
    card = hub.files("me/llama-atlas")["README.md"].decode()
    assert "library_name: atlascli" in card and "base_model" not in card  # a local path is not a Hub id
    assert hub.repos["me/llama-atlas"]["private"] is False  # a publication is public unless --private
    fit_id = fits[0].id
    assert run(capsys, "registry", "push", fit_id, "--repo", "me/one-fit")[0] == 0  # one artifact: private by default
    assert run(capsys, "registry", "push", fit_id, "--repo", "me/shared-fit", "--public")[0] == 0
    assert hub.repos["me/one-fit"]["private"] is True and hub.repos["me/shared-fit"]["private"] is False
    capsys.readouterr()
    monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "empty-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # for the models; the hub client was patched online
    code, out, err = run(capsys, "pull", "me/llama-atlas", "--json")
    assert code == 0, err
    assert json.loads(out)["commit"] == published["commit"]
    hub.close()  # search must not need the server
    code, out, err = run(capsys, "search", "--features", "0,1", "--subject", subject, "--layer", "2",
                         "--samples", "0", "--aligned", "0", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["atlas"] == atlas.id and res["alignment"] in {f.id for f in fits} and len(res["features"]) > 0
    assert Registry().find("activations") == [] or all(a.provenance.get("split") == "test"
                                                        for a in Registry().list("activations"))


def test_an_unresolvable_hub_host_fails_at_once_not_after_backoff(monkeypatch):
    """No network: one clear error from the name lookup, before huggingface_hub's retries; skipped offline and behind
    a proxy."""
    import socket

    from atlascli.errors import NotFoundError
    from atlascli.registry import hub

    calls = []

    def no_dns(host, port, *a, **k):
        calls.append((host, port))
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(NotFoundError, match="huggingface.co does not resolve"):
        hub.list_bundles("atlas-alignment")
    assert calls == [("huggingface.co", 443)]
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.internal:8080")
    with pytest.raises(NotFoundError, match="hub.internal does not resolve"):
        hub.check_resolvable()
    assert calls[-1] == ("hub.internal", 8080)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    hub.check_resolvable()  # the proxy resolves names
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.check_resolvable()  # huggingface_hub refuses by itself, with its own message
    assert len(calls) == 2
    monkeypatch.delenv("HF_HUB_OFFLINE")
    from atlascli.errors import InputError

    monkeypatch.setenv("HF_ENDPOINT", "http://hub.internal:port")
    with pytest.raises(InputError, match="is not a URL"):
        hub.check_resolvable()
