"""Query latency of `atlas search` on a full-size translation (ds, dc) = (14336, 16384), as for
Llama-3.1-8B MLP neurons against Gemma Scope 16k: eq. 3 reading only the query's rows from the
memory-mapped safetensors file vs the baseline of loading the whole T and multiplying; plus the text
query path (MiniLM embedding + label match) on 16384 label embeddings.

Writes bench/results/search.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write  # noqa: E402


def best_of(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    import numpy as np
    import torch

    from atlascli.embed import embed, load_embedder
    from atlascli.translate import StoredTranslation, Translation

    ds, dc = 14336, 16384
    tmp = Path(tempfile.mkdtemp(prefix="atlas-bench-search-"))
    path = tmp / "translation.safetensors"
    gen = torch.Generator().manual_seed(0)
    Translation("procrustes", torch.randn(ds, dc, generator=gen)).save(path)
    size_mb = path.stat().st_size / 2**20
    features = [6772, 1089, 12082, 13747]  # the paper's "dogs and cats" query
    weights = [1.0] * 4

    def stored() -> torch.Tensor:
        return StoredTranslation(path).similarity(features, weights)

    def full() -> torch.Tensor:
        from safetensors.torch import load_file

        Tt = load_file(str(path))["Tt"]
        q = torch.zeros(dc)
        q[features] = 1.0
        T = Tt.T
        return (T @ q) / T.norm(dim=1) / q.norm()

    a, b = stored(), full()
    err = float((a - b).abs().max())
    t_stored, t_full = best_of(stored), best_of(full, 3)
    load_embedder("minilm-l6")
    labels = torch.nn.functional.normalize(torch.randn(dc, 384, generator=gen), dim=1)

    def text_query() -> torch.Tensor:
        q = embed(["dogs and cats"])[0]
        top = torch.topk(labels @ q, 5)
        return StoredTranslation(path).similarity(top.indices.tolist(), top.values.tolist())

    t_text = best_of(text_query)
    write("search", {
        "translation_shape": [ds, dc], "translation_file_mb": size_mb,
        "rows_read_bytes": len(features) * ds * 4 + ds * 8,
        "eq3_stored_rows_seconds": t_stored, "baseline_full_load_seconds": t_full,
        "speedup_vs_full_load": t_full / t_stored, "max_abs_diff": err,
        "text_query_end_to_end_seconds": t_text,
        "note": "in-process latency after models are cached; CLI process start (imports) is extra",
        "np": np.__version__,
    })
    path.unlink()


if __name__ == "__main__":
    main()
