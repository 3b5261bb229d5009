"""Fault injection for the registry and the model cache: SIGKILL writers at seeded random points.

Each trial copies a template ATLAS_HOME (tiny models + a tiny dataset), starts one writer (``extract``,
``fit``, ``atlas build`` or the model-cache first load ``cache``) as a child process (forked from this one, which has
imported torch and transformers but never computes with them), SIGKILLs it after a seeded random delay,
then checks that (a) everything published is complete, verifies and equals an uninterrupted reference
run byte for byte (manifests without ``created`` and the measured ``meta.throughput``), (b) the registry reports no
problems, and (c) rerunning the same command publishes exactly the reference. Two concurrent writers
of the same artifact are checked the same way.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/fault_inject.py --kills 30 --seed 0

Prints one line per trial and a final ``kills=N corrupted=C wrong=W`` summary; exits 1 unless C = W = 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OPS = ("extract", "fit", "build", "cache")
SLOW = 0.04
"""Seconds each write is slowed by in the killed writer, so kills land between and inside the steps."""


# ----------------------------------------------------------------------------- the writer


def env_for(home: Path) -> dict[str, str]:
    """Environment of a writer using ``home`` (offline, one thread, its own model cache)."""
    return {"ATLAS_HOME": str(home), "ATLAS_MODEL_CACHE": str(home / "model-cache"), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_op(op: str, models: Path) -> list[str]:
    """Run one writer in this process (ATLAS_HOME etc. already set); returns what it published."""
    if op == "extract":
        from atlascli.extract import ExtractConfig, extract

        art = extract(ExtractConfig(model=str(models / "llama"), layers=(1, 2), site="mlp", dataset="tiny",
                                    limit=120, shard_size=10))
        return [art.id]
    if op == "fit":
        from atlascli.fit import FitConfig, fit

        arts = fit(FitConfig(subject=str(models / "llama"), layers=(2,), site="mlp", atlas=f"{models / 'qwen2'}@1",
                             dataset="tiny", limit=120, methods="procrustes,cov"))
        return [a.id for a in arts]
    if op == "build":
        from atlascli.atlas import AtlasBuildConfig, build_atlas

        art = build_atlas(AtlasBuildConfig(name="tiny", foundation=str(models / "qwen2"), layer=1, width=64, k=4,
                                           dataset="tiny", train_sentences=150, max_tokens=4000, epochs=2,
                                           batch_size=256, lr=3e-3, label_sentences=150, top_samples=5))
        return [art.id, str(art.meta["label_codes"])]
    if op == "cache":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from atlascli.modelcache import build_cache_dir, cache_dir_valid
        from atlascli.models import write_model_cache
        from atlascli.paths import model_cache_dir

        cache = model_cache_dir() / "tiny-llama-cache"

        def build(tmp: Path) -> dict[str, Any]:
            tok = AutoTokenizer.from_pretrained(str(models / "llama"))
            model = AutoModelForCausalLM.from_pretrained(str(models / "llama"))
            write_model_cache(tmp, model, tok)
            return {"source": "tiny-llama", "padding_side": tok.padding_side}

        build_cache_dir(cache, build)
        assert cache_dir_valid(cache)
        AutoModelForCausalLM.from_pretrained(str(cache))
        return [cache.name]
    raise SystemExit(f"unknown op {op}")


def _slow_down() -> None:
    """Stretch the writer's steps (file writes, checksums, renames) so random kills hit all of them."""
    import atlascli.atlas.build
    import atlascli.extract
    import atlascli.models
    import atlascli.registry.store
    import atlascli.translate.base

    def slow(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            time.sleep(SLOW)
            out = fn(*args, **kwargs)
            time.sleep(SLOW)
            return out
        return wrapper

    atlascli.extract.atomic_save_tensors = slow(atlascli.extract.atomic_save_tensors)
    atlascli.translate.base.atomic_save_tensors = slow(atlascli.translate.base.atomic_save_tensors)
    atlascli.atlas.build.atomic_save_tensors = slow(atlascli.atlas.build.atomic_save_tensors)
    atlascli.atlas.build.atomic_write_json = slow(atlascli.atlas.build.atomic_write_json)
    atlascli.registry.store.sha256_file = slow(atlascli.registry.store.sha256_file)
    atlascli.registry.store.atomic_write_json = slow(atlascli.registry.store.atomic_write_json)
    atlascli.models.write_model_cache = slow(atlascli.models.write_model_cache)
    import atlascli.modelcache

    atlascli.modelcache.sha256_file = slow(atlascli.modelcache.sha256_file)


def spawn(op: str, home: Path, models: Path, slow: bool = True) -> int:
    """Fork a writer child running ``op`` on ``home``; returns its pid. It writes its published ids to
    ``<home>.ids-<pid>.json`` and its output to ``<home>.log``."""
    import atlascli.atlas.build  # noqa: F401 - imported before forking, so the child starts instantly
    import atlascli.extract  # noqa: F401
    import atlascli.fit  # noqa: F401
    import atlascli.modelcache  # noqa: F401
    import atlascli.models  # noqa: F401

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        log = os.open(f"{home}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.update(env_for(home))
        if slow:
            _slow_down()
        ids = run_op(op, models)
        Path(f"{home}.ids-{os.getpid()}.json").write_text(json.dumps(ids))
        code = 0
    except BaseException:  # noqa: BLE001 - report and exit the child, never return into the harness
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def finish(pid: int, home: Path) -> list[str]:
    """Wait for a writer child; its published ids (raises with the end of its log on failure)."""
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        log = Path(f"{home}.log").read_text() if Path(f"{home}.log").exists() else ""
        raise RuntimeError(f"writer {pid} failed: {log.strip().splitlines()[-3:]}")
    return list(json.loads(Path(f"{home}.ids-{pid}.json").read_text()))


def kill(pid: int) -> bool:
    """SIGKILL a writer child; whether it was still running (a real kill)."""
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


# ----------------------------------------------------------------------------- checks


def snapshot(home: Path) -> dict[str, bytes]:
    """Published state: every file of every committed artifact (manifests without ``created``) and of
    every published model-cache entry. Temp files inside published folders are included (they must not exist)."""
    out: dict[str, bytes] = {}
    arts = home / "artifacts"
    for folder in sorted(arts.glob("*/*")) if arts.exists() else []:
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                data = path.read_bytes()
                if path.name == "manifest.json" and path.parent == folder:
                    try:
                        manifest = json.loads(data)
                        manifest.pop("created", None)  # wall-clock facts differ between runs by design
                        if isinstance(manifest.get("meta"), dict):
                            manifest["meta"].pop("throughput", None)
                        data = json.dumps(manifest, sort_keys=True).encode()
                    except ValueError:
                        pass
                out[path.relative_to(home).as_posix()] = data
    cache = home / "model-cache"
    for folder in sorted(cache.iterdir()) if cache.exists() else []:
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out[path.relative_to(home).as_posix()] = path.read_bytes()
    return out


def check_home(home: Path, reference: dict[str, bytes], complete: bool) -> tuple[int, int, list[str]]:
    """(corrupted, wrongly published, notes) for a home after a kill (``complete``: after the rerun)."""
    from atlascli.errors import AtlasError
    from atlascli.modelcache import cache_dir_valid
    from atlascli.registry import Registry

    notes: list[str] = []
    corrupted = wrong = 0
    reg = Registry(home / "artifacts")
    for problem in reg.problems():
        corrupted += 1
        notes.append(f"problem {problem.id}: {problem.message}")
    for art in reg.list():
        try:
            art.verify()
        except AtlasError as exc:
            corrupted += 1
            notes.append(f"verify {art.id}: {exc}")
    cache = home / "model-cache"
    for folder in cache.iterdir() if cache.exists() else []:
        if not folder.name.startswith(".") and folder.is_dir() and not cache_dir_valid(folder):
            corrupted += 1
            notes.append(f"invalid cache entry {folder.name}")
    snap = snapshot(home)
    published = {k.split("/")[2] if k.startswith("artifacts/") else k.split("/")[1] for k in snap}
    for name in sorted(published):
        mine = {k: v for k, v in snap.items() if f"/{name}/" in k}
        ref = {k: v for k, v in reference.items() if f"/{name}/" in k}
        if mine != ref:
            wrong += 1
            diff = sorted(set(mine) ^ set(ref)) or [k for k in mine if mine[k] != ref.get(k)]
            notes.append(f"published {name} differs from the reference ({diff[:3]}{_tensor_diff(mine, ref)})")
    if complete and snap != reference:
        wrong += 1
        notes.append(f"rerun is not the reference: missing {sorted(set(reference) - set(snap))[:3]}")
    return corrupted, wrong, notes


def _tensor_diff(mine: dict[str, bytes], ref: dict[str, bytes]) -> str:
    """For differing safetensors files with the same keys: the largest absolute difference (rounding or real?)."""
    from safetensors.torch import load as load_bytes

    worst = 0.0
    for key in mine:
        if key.endswith(".safetensors") and key in ref and mine[key] != ref[key]:
            try:
                a, b = load_bytes(mine[key]), load_bytes(ref[key])
                worst = max([worst] + [float((a[k].double() - b[k].double()).abs().max()) for k in a])
            except Exception:  # noqa: BLE001 - unreadable or different keys: a real difference
                return "; tensors not comparable"
    return f"; max |difference| of tensors {worst:.3g}"


# ----------------------------------------------------------------------------- harness


def _fresh(template: Path, work: Path, name: str) -> Path:
    home = work / f"{name}-{time.monotonic_ns()}"
    shutil.copytree(template, home, symlinks=True)
    return home


def _cleanup(home: Path) -> None:
    shutil.rmtree(home, ignore_errors=True)
    for extra in home.parent.glob(f"{home.name}.*"):
        extra.unlink(missing_ok=True)


def kill_trial(op: str, template: Path, work: Path, models: Path, reference: dict[str, bytes],
               delay: float, when: str | None = None) -> dict[str, Any]:
    """One kill: copy the template, start the writer, SIGKILL it after ``delay`` s (or, with ``when``, as soon as
    a path matching that glob under the home exists, ``delay`` s at most), check, rerun, check. The result also
    holds the sha256 of every file the rerun left published (``sha256``)."""
    home = _fresh(template, work, op)
    pid = spawn(op, home, models)
    deadline = time.perf_counter() + delay
    if when is None:
        time.sleep(delay)
    while when is not None and time.perf_counter() < deadline and next(home.glob(when), None) is None:
        time.sleep(0.002)
    killed = kill(pid)
    c1, w1, notes1 = check_home(home, reference, complete=False)
    finish(spawn(op, home, models, slow=False), home)
    c2, w2, notes2 = check_home(home, reference, complete=True)
    digests = {key: hashlib.sha256(data).hexdigest() for key, data in snapshot(home).items()}
    _cleanup(home)
    return {"op": op, "delay": round(delay, 3), "when": when, "killed": killed, "corrupted": c1 + c2,
            "wrong": w1 + w2, "notes": notes1 + notes2, "sha256": digests}


def concurrent_trial(op: str, template: Path, work: Path, models: Path, reference: dict[str, bytes]) -> dict[str, Any]:
    """Two writers of the same artifact at once: both succeed with the same ids; the home equals the reference."""
    home = _fresh(template, work, f"{op}-pair")
    a, b = spawn(op, home, models), spawn(op, home, models)
    ids_a, ids_b = finish(a, home), finish(b, home)
    c, w, notes = check_home(home, reference, complete=True)
    if ids_a != ids_b:
        w += 1
        notes.append(f"writers returned different ids: {ids_a} vs {ids_b}")
    _cleanup(home)
    return {"op": f"{op} x2", "delay": None, "killed": False, "corrupted": c, "wrong": w, "notes": notes}


def reference_for(op: str, template: Path, work: Path, models: Path) -> tuple[dict[str, bytes], float]:
    """Snapshot of an uninterrupted (slowed) run and how long it took."""
    home = _fresh(template, work, f"{op}-reference")
    t0 = time.perf_counter()
    finish(spawn(op, home, models), home)
    span = time.perf_counter() - t0
    snap = snapshot(home)
    _cleanup(home)
    return snap, span


def make_template(root: Path) -> tuple[Path, Path]:
    """Tiny models and a template ATLAS_HOME holding the tiny dataset (made in a subprocess, so this
    process never computes with torch before forking writers)."""
    models, template = root / "models", root / "template"
    if (template / "artifacts" / "dataset").is_dir() and (models / "qwen2" / "config.json").exists():
        return template, models
    words = ["dog", "cat", "London", "cars", "bread", "music", "science", "night", "city", "roads"]
    lines = [f"The {words[i % 10]} and the {words[(i * 3 + 1) % 10]} met a {words[(i * 7 + 2) % 10]} "
             f"{'again ' * (i % 5)}today number {i}." for i in range(300)]
    (root / "tiny.txt").write_text(" ".join(lines))
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from pathlib import Path; "
            "from conftest import make_tiny_model; "
            f"[make_tiny_model(Path({str(models)!r}) / a, a) for a in ('llama', 'qwen2')]; "
            "from atlascli.corpus import CorpusConfig, prepare_corpus; "
            f"prepare_corpus(CorpusConfig(name='tiny', inputs=({str(root / 'tiny.txt')!r},), low_pct=0, high_pct=100))")
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **env_for(template)}, check=True)
    return template, models


def run_all(kills: int, seed: int, root: Path, log: Any = print) -> tuple[int, int, int, list[dict[str, Any]]]:
    """The full campaign in ``root``: references, two concurrent pairs, then ``kills`` seeded SIGKILLs
    cycling over extract, fit, atlas build and cache. Returns (kills, corrupted, wrong, per-trial results)."""
    os.environ.update({k: v for k, v in env_for(root / "harness-home").items() if k != "ATLAS_MODEL_CACHE"})
    rng = random.Random(seed)
    template, models = make_template(root)
    refs = {op: reference_for(op, template, root, models) for op in OPS}
    results = [concurrent_trial(op, template, root, models, refs[op][0]) for op in ("extract", "build", "cache")]
    for r in results:
        log(json.dumps(r))
    done = attempts = 0
    while done < kills and attempts < 3 * kills:
        op = OPS[attempts % len(OPS)]
        attempts += 1
        snap, span = refs[op]
        res = kill_trial(op, template, root, models, snap, rng.uniform(0.0, span))
        done += int(res["killed"])
        results.append(res)
        log(json.dumps({k: v for k, v in res.items() if k != "sha256"}))
    return done, sum(r["corrupted"] for r in results), sum(r["wrong"] for r in results), results


def main() -> int:
    """Command line: run the campaign and print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30,
                        help="SIGKILLs in total (cycling over extract, fit, build, cache).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temp folder).")
    args = parser.parse_args()
    import tempfile

    root = args.work or Path(tempfile.mkdtemp(prefix="atlas-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    kills, corrupted, wrong, results = run_all(args.kills, args.seed, root, lambda line: print(line, flush=True))
    print(f"kills={kills} trials={len(results)} corrupted={corrupted} wrong={wrong}", flush=True)
    if args.work is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if corrupted == wrong == 0 and kills >= args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
