"""Benchmark helpers: this machine's matmul peak, peak RSS of a child process, result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GEMM rate (GFLOP/s) with torch's default threads: the roof for model FLOP/s."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def machine() -> dict[str, Any]:
    """Facts needed to compare results across machines."""
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run_child(code: str, env: dict[str, str] | None = None, timeout: int = 3600) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it must print one JSON line last. Adds peak RSS (MB)."""
    rss = "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024"
    wrapper = code + f"\nimport resource, json as _j\nprint(_j.dumps({{'__rss_mb': {rss}}}))\n"
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    out = json.loads(lines[-2])
    out["peak_rss_mb"] = json.loads(lines[-1])["__rss_mb"]
    return out


def write(name: str, result: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"benchmark": name, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path


def text_embeddings(texts: list[str]) -> Any:
    """MiniLM embeddings of generations, with an empty (or whitespace) generation as the zero vector: it says
    nothing about any concept (MiniLM embeds "" at cosine ~0.25 to many short concept names)."""
    from atlascli.embed import embed

    e = embed(texts).clone()  # a normal tensor (embed returns an inference tensor)
    for i, t in enumerate(texts):
        if not t.strip():
            e[i] = 0
    return e


def demo_alignments(method: str = "procrustes") -> tuple[Any, Any, list[Any]]:
    """The registry, its latest atlas and that atlas's ``method`` alignments (oldest first); exits with the fix when
    there are none (the benchmarks that read the demo registry)."""
    from atlascli.atlas import resolve_atlas
    from atlascli.registry import Registry

    reg = Registry()
    atlas = resolve_atlas(None, reg)
    found = reg.find("alignment", method=method, atlas=atlas.weights_id)
    if not found:
        sys.exit(f"no {method} alignment in the registry: run `make demo` first")
    return reg, atlas, found


def steering_setup() -> tuple[Any, Any, str, str, Any, list[int]]:
    """What `atlas steer` would steer on the registry: registry, latest atlas, subject, steering site, the loaded
    subject and the default steering layers (the benchmarks that steer as `atlas steer` does)."""
    from atlascli.atlas import resolve_atlas
    from atlascli.models import load_model
    from atlascli.registry import Registry
    from atlascli.steer_run import default_layers, fitted_layers

    reg = Registry()
    atlas = resolve_atlas(None, reg)
    subject, site, fitted = fitted_layers(reg, atlas, None, "procrustes")
    lm = load_model(subject)
    return reg, atlas, subject, site, lm, default_layers(fitted, lm.n_layers, site)
