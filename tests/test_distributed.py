"""Multi-process runs (torch.distributed, gloo, 2 ranks, one thread each) on tiny models: extraction byte-identical
to one process, fits equal within 1e-10, a killed rank then a rerun under another world size, bad launches, and
big-model placement (device_map) reported and hooked."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from atlascli.distributed import SINGLE, launch_env
from atlascli.errors import InputError
from atlascli.extract import Activations, ExtractConfig, extract
from atlascli.registry import Registry

LIMIT, SHARD = 90, 16  # 6 shards: 5 of 16 sentences and one of 10


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """The ranks run with one thread each; the one-process reference must too (GEMM results depend on threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ranks(script: Path, n: int, *args: str) -> list[subprocess.Popen[str]]:
    """Start ``n`` ranks of ``script`` with the variables torchrun sets."""
    port = str(_free_port())
    procs = []
    for rank in range(n):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(n), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
               "ATLAS_DIST_TIMEOUT": "120"}
        procs.append(subprocess.Popen([sys.executable, str(script), *args], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def _finish(procs: list[subprocess.Popen[str]], timeout: float = 150) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


HEAD = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from atlascli.extract import Activations, ExtractConfig, extract
"""

EXTRACT = HEAD + """
model, kill_after = sys.argv[1], int(sys.argv[2])
rank = int(os.environ.get("RANK", "0"))
def progress(done, total, tokens):
    if rank == 1 and kill_after and done >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)  # this rank dies mid-shard; its earlier shards are on disk
art = extract(ExtractConfig(model=model, layers=(1, 2), site="mlp", dataset="tiny", limit=90, shard_size=16,
                            batch_tokens=48), progress=progress)
print(json.dumps({"id": art.id}))
from atlascli.distributed import finish as end_run
end_run()  # how a library user ends a multi-process run
"""

FIT = HEAD + """
import numpy as np
from atlascli.distributed import world
from atlascli.errors import AtlasError
from atlascli.fit import FitConfig, fit
from atlascli.fit_dist import feed_ranks
from atlascli.translate import METHODS, MultiFitter
llama, gpt2, out = sys.argv[1], sys.argv[2], sys.argv[3]
w = world()
try:  # rank 1 asks for other sentences: refused at the start, on both ranks
    extract(ExtractConfig(model=gpt2, layers=(1,), dataset="varied", limit=60 + w.rank))
    said = None
except AtlasError as exc:
    said = [type(exc).__name__, exc.message]
cfg = FitConfig(subject=llama, layers=(2,), site="mlp", atlas=f"{gpt2}@1:resid", methods="all", dataset="varied",
                limit=120, k=5, shard_size=20)
arts = fit(cfg)
subject = Activations(extract(cfg.extraction(llama, (2,), "mlp")))
atlas = Activations(extract(cfg.extraction(gpt2, (1,), "resid")))
fitter = MultiFitter(list(METHODS), k=5)
finish = feed_ranks(fitter, subject, atlas, 2, 1, w)  # what fit() ran, kept here in float64
if w.main:
    report = finish()
    np.savez(out, **{m: f._compute() if m != "semlens" else f.result().T.double().numpy()
                     for m, f in fitter.fitters.items()})
print(json.dumps({"said": said, "alignments": [a.id for a in arts], "subject": subject.artifact.id,
                  "atlas": atlas.artifact.id}))
from atlascli.distributed import finish as end_run
end_run()  # how a library user ends a multi-process run
"""


@pytest.fixture()
def varied_dataset(isolated_home: Path, tmp_path: Path):
    """Random sentences over the tiny tokenizer's words: pooled activations of full rank, so that every method's
    solution is unique and can be compared to 1e-10 (the templated ``tiny`` corpus pools to rank ~10)."""
    from atlascli.corpus import CorpusConfig, prepare_corpus

    words = ("dog barked all night cat sat on the mat London is a city in England cars drive roads we ate bread "
             "and cheese music plays loudly science explains nature").split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, size=int(rng.integers(5, 13)))).capitalize() + "." for _ in range(400)]
    path = tmp_path / "varied.txt"
    path.write_text(" ".join(lines))
    return prepare_corpus(CorpusConfig(name="varied", inputs=(str(path),), low_pct=0, high_pct=100))[0]


def _write(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


def _reference_registry(dataset, root: Path) -> Registry:
    from atlascli.registry.hub import import_folder

    reg = Registry(root)
    import_folder(dataset.path, reg)
    return reg


def _hashes(art) -> dict[str, str]:
    """sha256 of every committed file (shards and plan.json; the manifest's times and throughput are not files)."""
    return {n: hashlib.sha256((art.path / n).read_bytes()).hexdigest() for n in art.manifest["files"]}


def _extract_cfg(model: str) -> ExtractConfig:
    return ExtractConfig(model=model, layers=(1, 2), site="mlp", dataset="tiny", limit=LIMIT, shard_size=SHARD,
                         batch_tokens=48)


def test_launch_environment_is_checked():
    assert launch_env({}) == SINGLE and launch_env({"WORLD_SIZE": "1", "RANK": "0"}) == SINGLE
    bad = [({"WORLD_SIZE": "2"}, "RANK is not"), ({"RANK": "1"}, "WORLD_SIZE is not"),
           ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR and MASTER_PORT are not"),
           ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "out of range"),
           ({"WORLD_SIZE": "two"}, "not an integer")]
    for env, message in bad:
        with pytest.raises(InputError, match=message) as info:
            launch_env(env)
        assert "torchrun" in (info.value.hint or "")
    w = launch_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                    "MASTER_ADDR": "node0", "MASTER_PORT": "29500"})
    assert (w.rank, w.size, w.local_rank, w.local_size, w.main) == (3, 4, 1, 2, False)


def test_semantic_lens_rows_out_of_order_with_global_indices():
    from atlascli.translate import SemanticLensFitter

    gen = torch.Generator().manual_seed(0)
    s, c = torch.randn(50, 6, generator=gen).round(decimals=1), torch.rand(50, 4, generator=gen)  # ties included
    ordered = SemanticLensFitter(k=5).update(s[:30], c[:30]).update(s[30:], c[30:])
    shuffled = SemanticLensFitter(k=5).update(s[30:], c[30:], start=30).update(s[:30], c[:30], start=0)
    assert np.array_equal(ordered.top_ids, shuffled.top_ids)
    assert torch.equal(ordered.result().T, shuffled.result().T)


def test_reduce_merges_uneven_shares_including_an_empty_rank():
    """MultiFitter.reduce with the collectives played by threads: three ranks, one of them without any batch."""
    import threading

    import scipy.sparse as sp

    from atlascli.translate import METHODS, MultiFitter

    gen = np.random.default_rng(1)
    s = gen.normal(size=(90, 12))
    c = sp.random(90, 20, density=0.3, random_state=2, format="csr")
    batches = [(0, 30), (30, 55), (55, 90)]
    shares = {0: [batches[0], batches[2]], 1: [batches[1]], 2: []}
    slots: list = [None] * 3
    barrier = threading.Barrier(3)

    def gather(rank: int, obj):
        slots[rank] = obj
        barrier.wait()
        out = list(slots)
        barrier.wait()
        return out

    fitters = {r: MultiFitter(list(METHODS), k=4) for r in range(3)}

    def rank_main(rank: int) -> None:
        for lo, hi in shares[rank]:
            fitters[rank].update(s[lo:hi], c[lo:hi], start=lo)
        fitters[rank].reduce(lambda a: np.sum(gather(rank, np.asarray(a, dtype=np.float64)), axis=0),
                             lambda obj: gather(rank, obj), 12, 20)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    single = MultiFitter(list(METHODS), k=4)
    for lo, hi in batches:
        single.update(s[lo:hi], c[lo:hi])
    for rank in range(3):  # every rank holds the totals
        got, want = fitters[rank].results(), single.results()
        for method in METHODS:
            assert torch.allclose(got[method].T.double(), want[method].T.double(), rtol=0, atol=1e-6), method
        assert fitters[rank].fitters["semlens"].n == 90
    a, b = fitters[2].fitters["procrustes"].moments, single.fitters["procrustes"].moments
    assert a.n == b.n == 90 and np.abs(a.cross_n - b.cross_n).max() <= 1e-12 * np.abs(b.cross_n).max()
    assert np.array_equal(fitters[2].fitters["semlens"].top_ids, single.fitters["semlens"].top_ids)


def test_torchrun_cli_resumes_a_one_process_crash_with_two_ranks(tiny_models, tiny_dataset, tmp_path, isolated_home):
    model = str(tiny_models["llama"])
    crash = _write(tmp_path, "crash.py", EXTRACT.replace('rank == 1 and ', ''))
    proc = subprocess.run([sys.executable, str(crash), model, "40"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    stage = next((isolated_home / "artifacts" / "activations").glob(".partial-*"))
    assert sorted(p.name for p in stage.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "atlascli", "extract", "--model", model, "--layers", "1,2", "--site", "mlp",
                          "--dataset", "tiny", "--limit", str(LIMIT), "--shard-size", str(SHARD), "--batch-tokens", "48",
                          "--json"], capture_output=True, text=True, timeout=150, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    printed = json.loads(run.stdout)  # one JSON document: only rank 0 prints
    art = Registry().get(printed["id"], "activations")
    assert art.meta["throughput"]["processes"] == 2 and art.meta["throughput"]["sentences"] == LIMIT - 2 * SHARD
    with one_thread():
        clean = extract(_extract_cfg(model), registry=_reference_registry(tiny_dataset, tmp_path / "ref"))
    assert art.id == clean.id and _hashes(art) == _hashes(clean) and len(_hashes(art)) == 7  # 6 shards + plan.json
    assert art.meta["tokens"] == clean.meta["tokens"] and art.provenance == clean.provenance


def test_two_rank_fit_equals_one_process(tiny_models, varied_dataset, tmp_path):
    from atlascli.fit import FitConfig, fit
    from atlascli.fit_health import HoldoutHealth
    from atlascli.translate import METHODS, MultiFitter, StoredTranslation

    llama, gpt2 = str(tiny_models["llama"]), str(tiny_models["gpt2"])
    script = _write(tmp_path, "fit.py", FIT)
    results = _finish(_ranks(script, 2, llama, gpt2, str(tmp_path / "stats.npz")))
    for rank, (rc, _, stderr) in enumerate(results):
        assert rc == 0, f"rank {rank}: {stderr[-3000:]}"
    said = [json.loads(out.splitlines()[-1]) for _, out, _ in results]
    assert said[0]["said"] == ["InputError", "ranks disagree on the extraction: rank 1 has --limit 61, rank 0 has 60"]
    assert said[1]["said"][0] == "PeerError"  # rank 1 stays quiet: rank 0 says it
    assert said[0] == {**said[1], "said": said[0]["said"]}  # every rank returns the same artifacts

    ref = _reference_registry(varied_dataset, tmp_path / "ref")
    cfg = FitConfig(subject=llama, layers=(2,), site="mlp", atlas=f"{gpt2}@1:resid", methods="all", dataset="varied",
                    limit=120, k=5, shard_size=20)
    with one_thread():
        clean = fit(cfg, registry=ref)
        subject = Activations(extract(cfg.extraction(llama, (2,), "mlp"), registry=ref))
        atlas = Activations(extract(cfg.extraction(gpt2, (1,), "resid"), registry=ref))
        fitter, health = MultiFitter(list(METHODS), k=5), HoldoutHealth(subject.n)
        for s, c in zip(subject.shards(2), atlas.shards(1)):
            health.feed(fitter, s.dense, c.dense)
    here = Registry()
    for side, reference in (("subject", subject.artifact), ("atlas", atlas.artifact)):
        assert _hashes(here.get(said[0][side], "activations")) == _hashes(reference)  # byte-identical extractions
    assert said[0]["alignments"] == [a.id for a in clean]  # same provenance, same ids
    stats = np.load(tmp_path / "stats.npz")
    for method, f in fitter.fitters.items():  # the float64 solutions: within 1e-10 relative
        single = f._compute() if method != "semlens" else f.result().T.double().numpy()
        assert np.abs(stats[method] - single).max() <= 1e-10 * np.abs(single).max(), method
    for a, b in zip((here.get(i, "alignment") for i in said[0]["alignments"]), clean):
        t_dist = StoredTranslation.from_artifact(a).load().double()
        t_one = StoredTranslation.from_artifact(b).load().double()
        assert (t_dist - t_one).abs().max() <= 1e-6 * t_one.abs().max()  # stored in float32
        h_dist, h_one = a.meta["health"], b.meta["health"]
        assert h_dist["holdout"] == h_one["holdout"] and abs(h_dist["explained"] - h_one["explained"]) < 1e-9


def test_killed_rank_then_one_process_rerun(tiny_models, tiny_dataset, tmp_path, isolated_home):
    model = str(tiny_models["llama"])
    script = _write(tmp_path, "extract.py", EXTRACT)
    procs = _ranks(script, 2, model, str(SHARD + 4))  # rank 1 dies inside its second shard
    assert procs[1].wait(timeout=150) == -signal.SIGKILL
    try:  # the survivor fails in its next collective (or torchrun would stop it): stop it the same way
        procs[0].wait(timeout=30)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        procs[0].wait()
    assert procs[0].returncode != 0
    stage = next((isolated_home / "artifacts" / "activations").glob(".partial-*"))
    left = sorted(p.name for p in stage.glob("shard-*"))
    assert "shard-00001.safetensors" in left and len(left) < 6 and Registry().list("activations") == []
    with one_thread():
        resumed = extract(_extract_cfg(model))  # world size 2 -> 1: the same staging folder resumes
        clean = extract(_extract_cfg(model), registry=_reference_registry(tiny_dataset, tmp_path / "ref"))
    assert _hashes(resumed) == _hashes(clean) and len(_hashes(resumed)) == 7
    assert resumed.meta["throughput"]["sentences"] == LIMIT - SHARD * len(left)


def test_big_model_placement_and_hooks(tiny_models, tiny_dataset, tmp_path):
    from atlascli.corpus import load_split
    from atlascli.extract import extract_shard
    from atlascli.models import load_model, model_card
    from atlascli.placement import describe_placement, placement

    path = str(tiny_models["llama"])
    plain = load_model(path, device="auto")  # no GPU here: everything on the CPU, no device map
    assert placement(plain.model) == {"cpu": [0, 1, 2, 3]} and "placement" not in model_card(plain)
    split = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
             "model.layers.2": "disk", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    mapped = load_model(path, device_map=split)  # accelerate dispatch: layers 2-3 offloaded, streamed when run
    assert placement(mapped.model) == {"cpu": [0, 1], "disk": [2, 3]}
    assert model_card(mapped)["placement"] == describe_placement(placement(mapped.model)) == "layers 0-1 on cpu, 2-3 on disk"
    cfg = ExtractConfig(model=path, layers=(1, 3), site="mlp", dataset="tiny", limit=12)
    sentences = load_split(tiny_dataset, "train")[:12]
    a, b = extract_shard(mapped, sentences, cfg, None), extract_shard(plain, sentences, cfg, None)
    for layer in (1, 3):  # hooks capture the offloaded layers as usual
        torch.testing.assert_close(a[f"L{layer}"], b[f"L{layer}"])


def test_leaving_together_survives_a_peer_that_left_already(monkeypatch):
    """A rank whose work is done waits at a barrier before leaving; a peer that failed has left already, so the
    barrier raises: this rank still leaves its process group, without an error of its own."""
    import torch.distributed as dist

    from atlascli import distributed

    calls: list[str] = []

    def closed() -> None:
        calls.append("barrier")
        raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    monkeypatch.setattr(dist, "barrier", closed)
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a: calls.append("destroy"))
    distributed.reset(together=True)
    assert calls == ["barrier", "destroy"]
    calls.clear()
    distributed.reset()  # after an error: no barrier
    assert calls == ["destroy"]


def test_finish_exits_a_rank_at_once_and_leaves_a_single_process_alone(monkeypatch):
    """A rank that joined a group leaves together, flushes and exits with its code without the interpreter's teardown
    (where gloo could still abort); a process that never joined (one-process run, in-process CLI tests) goes on."""
    from atlascli import distributed

    calls: list[object] = []
    monkeypatch.setattr(distributed, "reset", lambda together=False: calls.append(("reset", together)))
    monkeypatch.setattr(distributed.os, "_exit", lambda code: calls.append(("exit", code)))
    distributed.finish(3)
    assert calls == []  # never joined: nothing happens, the caller goes on
    monkeypatch.setattr(distributed, "_JOINED", True)
    distributed.finish(3)
    assert calls == [("reset", True), ("exit", 3)]
