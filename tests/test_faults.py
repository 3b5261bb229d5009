"""Fault injection (quick subset): SIGKILLed writers, two writers of one artifact, bad manifests.

The writers are children forked from the test process (``scripts/fault_inject.py``), killed at seeded
random points; afterwards nothing corrupt or different from an uninterrupted run may be published, the
registry must report no problems, and a rerun must publish exactly the uninterrupted result. The full
campaign (30+ kills over extract, fit, atlas build and the model-cache first load) is ``scripts/fault_inject.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from atlascli.cli.main import main
from atlascli.registry import Registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


@pytest.fixture()
def template(tiny_models, tiny_dataset, isolated_home: Path) -> tuple[Path, Path]:
    """(template ATLAS_HOME holding the tiny dataset, folder of the tiny models)."""
    return isolated_home, tiny_models["llama"].parent


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _isolated(body: str, **args: object) -> dict:
    """Run a fault scenario in a fresh interpreter: writers are forked, and forking a process whose torch thread
    pools are already running (this test process, after other tests) can hang or crash the child."""
    import os
    import subprocess

    head = f"import json, random, sys\nfrom pathlib import Path\nsys.path.insert(0, {str(SCRIPTS)!r})\n" \
           "import fault_inject as fi\n" + "".join(f"{k} = {v!r}\n" for k, v in args.items())
    proc = subprocess.run([sys.executable, "-c", head + body], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("op,seed", [("extract", 1), ("cache", 2), ("fit", 3), ("build", 4)])
def test_sigkill_at_a_seeded_point_publishes_nothing_wrong(template, tmp_path, op, seed):
    home, models = template
    res = _isolated("""
reference, span = fi.reference_for(op, Path(home), Path(tmp), Path(models))
assert reference  # the uninterrupted run published something to compare with
res = fi.kill_trial(op, Path(home), Path(tmp), Path(models), reference, random.Random(seed).uniform(0.05, 0.8) * span)
print(json.dumps({"corrupted": res["corrupted"], "wrong": res["wrong"], "notes": res["notes"]}, default=str))
""", op=op, seed=seed, home=str(home), tmp=str(tmp_path), models=str(models))
    assert res["corrupted"] == 0 and res["wrong"] == 0, res["notes"]


FIT_KILL_POINTS = {
    "atlas extraction staged": "artifacts/activations/.partial-*/plan.json",
    "first extraction published": "artifacts/activations/act-*/manifest.json",
    "translation written, not committed": "artifacts/alignment/.partial-*/translation.safetensors",
    "first alignment published": "artifacts/alignment/align-*/manifest.json",
}


def test_fit_killed_at_each_step_reruns_to_byte_identical_translations(template, tmp_path):
    """SIGKILL `atlas fit` at each of its steps: the rerun publishes translations whose sha256 is that of a clean fit
    (and everything else byte for byte too). safetensors wrote the translation's metadata in a random order, so
    before ``atomic_save_tensors`` sorted it a rerun's translation differed in its header alone."""
    home, models = template
    res = _isolated("""
import hashlib
reference, span = fi.reference_for("fit", Path(home), Path(tmp), Path(models))
clean = {k: hashlib.sha256(v).hexdigest() for k, v in reference.items() if k.endswith("translation.safetensors")}
out = {"clean": clean, "trials": {}}
for name, when in points.items():
    r = fi.kill_trial("fit", Path(home), Path(tmp), Path(models), reference, 3 * span, when=when)
    out["trials"][name] = {"killed": r["killed"], "corrupted": r["corrupted"], "wrong": r["wrong"], "notes": r["notes"],
                           "translations": {k: v for k, v in r["sha256"].items() if k in clean}}
print(json.dumps(out, default=str))
""", points=FIT_KILL_POINTS, home=str(home), tmp=str(tmp_path), models=str(models))
    assert len(res["clean"]) == 2  # procrustes and cov
    for name, trial in res["trials"].items():
        assert trial["killed"], name  # the kill landed before the fit finished
        assert trial["corrupted"] == 0 and trial["wrong"] == 0, (name, trial["notes"])
        assert trial["translations"] == res["clean"], name


def test_translation_file_bytes_do_not_depend_on_the_run(tmp_path):
    """The same translation saved again gives the same bytes (safetensors serialises its metadata from a Rust
    HashMap, in a different order from call to call)."""
    import hashlib

    import torch

    from atlascli.translate import Translation

    tr = Translation("procrustes", torch.arange(12.0).reshape(3, 4))
    digests = set()
    for i in range(30):
        tr.save(tmp_path / f"t{i}.safetensors")
        digests.add(hashlib.sha256((tmp_path / f"t{i}.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    from atlascli.translate import StoredTranslation

    stored = StoredTranslation(tmp_path / "t0.safetensors")
    assert (stored.method, stored.ds, stored.dc) == ("procrustes", 3, 4)
    assert torch.equal(stored.load(), tr.T)


def test_two_writers_of_one_artifact(template, tmp_path):
    home, models = template
    res = _isolated("""
reference, _ = fi.reference_for("extract", Path(home), Path(tmp), Path(models))
res = fi.concurrent_trial("extract", Path(home), Path(tmp), Path(models), reference)
print(json.dumps({"corrupted": res["corrupted"], "wrong": res["wrong"], "notes": res["notes"]}, default=str))
""", home=str(home), tmp=str(tmp_path), models=str(models))
    assert res["corrupted"] == 0 and res["wrong"] == 0, res["notes"]


def test_check_home_catches_a_wrongly_published_artifact(template, tmp_path):
    """The checker itself can fail: a published shard that differs from the reference is counted."""
    home, models = template
    res = _isolated("""
reference, _ = fi.reference_for("extract", Path(home), Path(tmp), Path(models))
home = Path(home)
shard = next(k for k in reference if k.endswith("shard-00003.safetensors"))
(home / shard).parent.mkdir(parents=True)
for key, data in reference.items():
    if key.startswith(str(Path(shard).parent)) and not key.endswith("manifest.json"):
        (home / key).write_bytes(data)
(home / shard).write_bytes(reference[shard][:-4] + b"\\0\\0\\0\\0")
corrupted, wrong, _ = fi.check_home(home, reference, complete=False)
print(json.dumps({"corrupted": corrupted, "wrong": wrong}))
""", home=str(home), tmp=str(tmp_path), models=str(models))
    corrupted, wrong = res["corrupted"], res["wrong"]
    assert wrong == 1 and corrupted == 1  # no manifest: a problem, and not the reference


def test_bad_manifests_are_listed_removed_and_leave_the_rest(capsys, tmp_path):
    reg = Registry()
    stage = reg.stage("dataset", "dataset-good")
    (stage.path / "data.json").write_text("[]")
    good = stage.commit({"name": "good"})
    bad = {"dataset-future": json.dumps(dict(good.manifest, id="dataset-future", schema_version=2)),
           "dataset-truncated": '{"kind": "data', "dataset-empty": "", "dataset-wrong-id": json.dumps(good.manifest)}
    for name, text in bad.items():
        (reg.kind_dir("dataset") / name).mkdir()
        (reg.kind_dir("dataset") / name / "manifest.json").write_text(text)
    (reg.kind_dir("dataset") / "dataset-no-manifest").mkdir()
    assert main(["registry", "verify", "--json"]) == 1
    problems = {p["id"]: p for p in json.loads(capsys.readouterr().out)["problems"]}
    assert set(problems) == set(bad) | {"dataset-no-manifest"}
    assert all(f"atlas registry rm {i}" in p["fix"] for i, p in problems.items() if i != "dataset-future")
    assert main(["registry", "ls", "--json"]) == 0
    assert [a["id"] for a in json.loads(capsys.readouterr().out)] == ["dataset-good"]
    for name in problems:
        assert main(["registry", "rm", name]) == 0
    capsys.readouterr()
    assert main(["registry", "verify"]) == 0 and [a.id for a in reg.list()] == ["dataset-good"]
    good.verify()
