"""Hub transfer: `atlas publish` + `atlas pull` of a translation bundle vs raw huggingface_hub `upload_folder` /
`snapshot_download` of the same files, same run, against the local Hub-compatible server of the tests
(tests/hubserver.py, 127.0.0.1; Xet off, LFS basic transfer). Each round uses fresh servers and caches (the server
deduplicates blobs) and alternates which side goes first. Writes bench/results/hub.json.

    python bench/hub.py --mb 900 --rounds 2      # full size (about 4 x 900 MB on disk while running)
    python bench/hub.py --mb 20 --rounds 1       # quick check

Targets: publish and pull each >= 0.9x raw throughput; verification adds <= 10%. What verification adds is
bounded above by everything the atlas pull spends beyond the raw download (it also places files and reads
manifests): (atlas pull - raw pull) / raw pull. A pull hashes each LFS file while it downloads
(atlascli/registry/tailhash.py), so only the hashing the download does not hide shows; the time of a separate
sha256 pass over the same files is reported beside it (``hash_pass_seconds``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["HF_HUB_DISABLE_XET"] = "1"  # before huggingface_hub is imported: the local server speaks LFS only
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.pop("HF_HUB_OFFLINE", None)

from common import write  # noqa: E402

TOKEN = "hf_bench_token"
SUBJECT = "bench/subject-model"


def build_registry(home: Path, mb: int) -> None:
    """A translation bundle: dataset JSON, a small atlas, one alignment whose translation is ``mb`` MB."""
    import torch

    from atlascli.registry import Registry
    from atlascli.registry.files import atomic_save_tensors, atomic_write_json

    os.environ["ATLAS_HOME"] = str(home)
    reg = Registry()

    def commit(kind: str, art_id: str, files: dict, prov: dict, parents: list[str]) -> str:
        stage = reg.stage(kind, art_id, parents=parents)
        for name, value in files.items():
            if isinstance(value, torch.Tensor):
                atomic_save_tensors(stage.path / name, {"x": value})
            else:
                atomic_write_json(stage.path / name, value)
        return stage.commit(prov).id

    gen = torch.Generator().manual_seed(0)
    ds = commit("dataset", "dataset-bench", {"train.json": ["a"] * 100, "test.json": ["b"] * 100},
                {"name": "bench", "n_test": 100, "dataset_fingerprint": "fp"}, [])
    width = 4096
    at = commit("atlas", "atlas-bench", {"labels.json": [{"index": i, "label": f"f{i}"} for i in range(width)],
                                         "label_embeddings.safetensors": torch.randn(width, 64, generator=gen),
                                         "sae/sae_weights.safetensors": torch.randn(2, width, 256, generator=gen)},
                {"name": "bench", "foundation": "bench/foundation", "layer": 1, "site": "resid", "width": width}, [ds])
    rows = max(1, (mb << 20) // (4 * width))
    commit("alignment", "align-bench", {"translation.safetensors": torch.randn(rows, width, generator=gen)},
           {"method": "procrustes", "subject": SUBJECT, "revision": "r", "layer": 2, "site": "mlp", "atlas": at,
            "dataset": ds, "dataset_fingerprint": "fp", "n": 100}, ["act-not-shipped"])


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def one_round(work: Path, atlas_first: bool) -> dict[str, float]:
    from hubserver import HubServer
    from huggingface_hub import HfApi, snapshot_download

    from atlascli.registry import Registry
    from atlascli.registry import bundle as bundle_mod
    from atlascli.registry.bundle import plan_bundle, publish, pull

    src_home = work / "src-home"
    servers = {"atlas": HubServer(work / "srv-atlas", (TOKEN,)), "raw": HubServer(work / "srv-raw", (TOKEN,))}
    t: dict[str, float] = {}
    try:
        def atlas_publish() -> None:
            os.environ.update(HF_ENDPOINT=servers["atlas"].url, ATLAS_HOME=str(src_home))
            s = time.perf_counter()
            publish(plan_bundle(Registry(), SUBJECT), "bench/atlas")
            t["atlas_publish_s"] = time.perf_counter() - s

        def raw_publish() -> None:
            api = HfApi(endpoint=servers["raw"].url, token=TOKEN)
            s = time.perf_counter()
            api.create_repo("bench/raw", exist_ok=True)
            api.upload_folder(repo_id="bench/raw", folder_path=str(src_home / "artifacts"), commit_message="raw")
            t["raw_publish_s"] = time.perf_counter() - s

        def atlas_pull() -> None:
            os.environ.update(HF_ENDPOINT=servers["atlas"].url, ATLAS_HOME=str(work / "dst-home"),
                              HF_HUB_CACHE=str(work / "cache-atlas"))
            s = time.perf_counter()
            pull("bench/atlas")
            t["atlas_pull_s"] = time.perf_counter() - s

        def raw_pull() -> None:
            s = time.perf_counter()
            snapshot_download("bench/raw", endpoint=servers["raw"].url, cache_dir=str(work / "cache-raw"), token=TOKEN)
            t["raw_pull_s"] = time.perf_counter() - s

        for pair in ((atlas_publish, raw_publish), (atlas_pull, raw_pull)):
            for fn in (pair if atlas_first else pair[::-1]):
                fn()
        # a separate sha256 pass over what was pulled (same files, warm page cache): what hashing after the
        # download would cost
        s = time.perf_counter()
        bundle_mod.verify_all(Registry().list())
        t["verify_s"] = time.perf_counter() - s
    finally:
        for srv in servers.values():
            srv.close()
        os.environ.pop("HF_HUB_CACHE", None)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=900, help="size of the translation file (MB)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, alternating which side goes first")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    base = Path(args.workdir or tempfile.mkdtemp(prefix="atlas-bench-hub-"))
    os.environ["HF_TOKEN"] = TOKEN
    os.environ["HF_HOME"] = str(base / "hf-home")
    build_registry(base / "seed" / "src-home", args.mb)
    total = folder_bytes(base / "seed" / "src-home" / "artifacts")
    rounds = []
    try:
        for i in range(args.rounds):
            work = base / f"round-{i}"
            shutil.copytree(base / "seed", work)
            rounds.append(one_round(work, atlas_first=i % 2 == 0))
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    mbs = total / 1e6
    write("hub", {
        "bundle_bytes": total, "rounds": args.rounds, "server": "tests/hubserver.py on 127.0.0.1 (LFS basic, no Xet)",
        "baseline": "huggingface_hub upload_folder / snapshot_download of the same files, same server code",
        "atlas_publish_MBps": mbs / med["atlas_publish_s"], "raw_publish_MBps": mbs / med["raw_publish_s"],
        "atlas_pull_MBps": mbs / med["atlas_pull_s"], "raw_pull_MBps": mbs / med["raw_pull_s"],
        "publish_ratio_atlas_over_raw": med["raw_publish_s"] / med["atlas_publish_s"],
        "pull_ratio_atlas_over_raw": med["raw_pull_s"] / med["atlas_pull_s"],
        "hash_pass_seconds": med["verify_s"],
        "hash_pass_of_raw_pull": med["verify_s"] / med["raw_pull_s"],
        "verification_overhead_of_raw_pull": max(0.0, (med["atlas_pull_s"] - med["raw_pull_s"]) / med["raw_pull_s"]),
        "verification_overhead_definition": "upper bound: (atlas pull - raw pull) / raw pull; atlas hashes every "
                                            "file (LFS files while they download) and places them in the registry",
        "targets": {"publish_ratio": ">= 0.9", "pull_ratio": ">= 0.9", "verification_overhead": "<= 0.10"},
        "rounds_seconds": rounds})


if __name__ == "__main__":
    main()
