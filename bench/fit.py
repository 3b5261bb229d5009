"""Fit time and peak RSS: streaming Procrustes vs the in-memory baseline a user would write (load both
full matrices, normalise, numpy products, numpy.linalg.svd), N = 20k and 200k, (ds, dc) = (1536, 4096)
and (2048, 16384), 1%-dense atlas codes; plus the sparse vs dense cross-product on one batch.

Each measurement runs in its own process so peak RSS is its own. Writes bench/results/fit.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import matmul_peak_gflops, run_child, write  # noqa: E402

GEN = r'''
import numpy as np, scipy.sparse as sp
def batches(n, ds, dc, density=0.01, batch=10000, seed=0):
    """Deterministic structured data: 1%-dense non-negative codes C, subject S = C W + noise."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(dc, ds)).astype(np.float32) / np.sqrt(dc * density)
    for k, a in enumerate(range(0, n, batch)):
        b = min(batch, n - a)
        r = np.random.default_rng([seed, k])
        c = sp.random(b, dc, density=density, format="csr", random_state=r, dtype=np.float32,
                       data_rvs=lambda m: r.exponential(size=m).astype(np.float32))
        s = np.asarray(c @ W) + 0.1 * r.normal(size=(b, ds)).astype(np.float32)
        yield s.astype(np.float32), c
'''

STREAM = GEN + r'''
import time, json, torch
from atlascli.translate import ProcrustesFitter
f = ProcrustesFitter(); spent = 0.0
for s, c in batches({n}, {ds}, {dc}):
    t = time.perf_counter(); f.update(torch.from_numpy(s), c); spent += time.perf_counter() - t
t = time.perf_counter(); tr = f.result(); spent += time.perf_counter() - t
print(json.dumps({{"seconds": spent, "shape": list(tr.shape)}}))
'''

BASELINE = GEN + r'''
import time, json
parts = list(batches({n}, {ds}, {dc}))
S = np.concatenate([p[0] for p in parts]); C = sp.vstack([p[1] for p in parts]).toarray(); del parts
t = time.perf_counter()
Sn = S / np.linalg.norm(S, axis=1, keepdims=True)
Cn = C / np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-30)
M = Sn.T @ Cn
U, _, Vt = np.linalg.svd(M, full_matrices=False)
T = U @ Vt
print(json.dumps({{"seconds": time.perf_counter() - t, "shape": list(T.shape)}}))
'''

CROSS = GEN + r'''
import time, json
from atlascli.translate.moments import sparse_cross
s, c = next(batches({n}, {ds}, {dc}, batch={n}))
s64 = s.astype(np.float64)
t = time.perf_counter(); a = sparse_cross(s64, c); sparse_s = time.perf_counter() - t
cd = c.toarray().astype(np.float64)
t = time.perf_counter(); b = s64.T @ cd; dense64 = time.perf_counter() - t
cd32 = cd.astype(np.float32)
t = time.perf_counter(); s.T @ cd32; dense32 = time.perf_counter() - t
err = float(np.abs(a - b).max() / np.abs(b).max())
print(json.dumps({{"sparse_seconds": sparse_s, "dense_float64_seconds": dense64, "dense_float32_seconds": dense32,
                  "max_rel_error_vs_float64": err}}))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20000,200000")
    ap.add_argument("--shapes", default="1536x4096,2048x16384")
    ap.add_argument("--baseline-max-gb", type=float, default=16.0)
    args = ap.parse_args()
    peak = matmul_peak_gflops()
    cases = []
    for shape in args.shapes.split(","):
        ds, dc = (int(x) for x in shape.split("x"))
        for n in (int(x) for x in args.sizes.split(",")):
            row: dict[str, object] = {"n": n, "ds": ds, "dc": dc, "density": 0.01}
            row["streaming"] = run_child(STREAM.format(n=n, ds=ds, dc=dc))
            need_gb = n * (ds + dc) * 4 * 2 / 1e9
            if need_gb <= args.baseline_max_gb:
                row["in_memory_baseline"] = run_child(BASELINE.format(n=n, ds=ds, dc=dc))
                b, s = row["in_memory_baseline"], row["streaming"]
                row["speedup_vs_baseline"] = b["seconds"] / s["seconds"]
                row["rss_ratio_baseline_to_streaming"] = b["peak_rss_mb"] / s["peak_rss_mb"]
                row["baseline_gflops_fraction_of_peak"] = 2 * n * ds * dc / b["seconds"] / 1e9 / peak
            else:
                row["in_memory_baseline"] = {"skipped": f"needs about {need_gb:.0f} GB of dense matrices on a "
                                                        f"24 GB machine"}
            print(json.dumps(row), flush=True)
            cases.append(row)
    cross = {}
    for shape in args.shapes.split(","):
        ds, dc = (int(x) for x in shape.split("x"))
        r = run_child(CROSS.format(n=20000, ds=ds, dc=dc))
        r["speedup_vs_dense_float64"] = r["dense_float64_seconds"] / r["sparse_seconds"]
        r["speedup_vs_dense_float32"] = r["dense_float32_seconds"] / r["sparse_seconds"]
        cross[shape] = r
    by_shape: dict[str, dict[str, float]] = {}
    for row in cases:
        by_shape.setdefault(f"{row['ds']}x{row['dc']}", {})[str(row["n"])] = row["streaming"]["peak_rss_mb"]
    write("fit", {"matmul_peak_gflops": peak, "cases": cases, "sparse_cross_product_n20000": cross,
                  "streaming_peak_rss_mb": by_shape, "method": "procrustes"})


if __name__ == "__main__":
    main()
