"""`atlas steer`'s generations: one batch for all lambdas (steer_sweep, a row per lambda and prompt, each row
steered at its own lambda) against the baseline of one generate() call per lambda (what steer_sweep did before),
SmolLM2-135M-Instruct, residual stream at layers 6 and 9 (the default steering layers), a random unit direction at
lambda 35 in the norm unit, greedy, 60 new tokens. Cases: the default command (lambda 0 and 35, one prompt), a
five-lambda --sweep with one prompt, and lambda 0/35 over 6 prompts. Interleaved ABBA pairs, medians; the texts of
both ways are compared (they must be identical). Decoding is memory-bound at these batch sizes, so no fraction of the
matmul peak applies. Writes bench/results/steer_batch.json."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write  # noqa: E402
from concepts import PROMPTS  # noqa: E402


def main() -> None:
    import torch

    from atlascli.models import load_model
    from atlascli.steering import GenerationConfig, absolute_lambdas, generate, site_norms, steer_sweep, steering

    lm = load_model("smollm2-135m-instruct")
    layers = [6, 9]
    gen = torch.Generator().manual_seed(0)
    vectors = {layer: torch.nn.functional.normalize(torch.randn(lm.width("resid", layer), generator=gen), dim=0)
               for layer in layers}
    cfg = GenerationConfig(max_new_tokens=60, chat=True)
    cases = {"default (lambda 0, 35; 1 prompt)": ([0.0, 35.0], ["Tell me a short story."]),
             "--sweep -50,-10,0,10,50 (1 prompt)": ([-50.0, -10.0, 0.0, 10.0, 50.0], ["Tell me a short story."]),
             "lambda 0, 35 over 6 prompts": ([0.0, 35.0], PROMPTS)}
    results: dict[str, Any] = {}
    for name, (lams, prompts) in cases.items():
        norms = site_norms(lm, "resid", layers, prompts)
        per_unit = absolute_lambdas(vectors, 1.0, "norm", norms, "resid")  # `atlas steer`'s unit, as it computes it

        def batched(lams: list[float] = lams, prompts: list[str] = prompts,
                    per_unit: dict[int, float] = per_unit) -> dict[float, list[str]]:
            return steer_sweep(lm, "resid", vectors, lams, prompts, cfg, per_unit).generations

        def per_lambda(lams: list[float] = lams, prompts: list[str] = prompts,
                       per_unit: dict[int, float] = per_unit) -> dict[float, list[str]]:
            out = {}
            for lam in lams:
                if lam == 0:
                    out[lam] = generate(lm, prompts, cfg)
                    continue
                with steering(lm.model, "resid", vectors, {layer: lam * per_unit[layer] for layer in layers}):
                    out[lam] = generate(lm, prompts, cfg)
            return out

        same = batched() == per_lambda()  # also the warm-up
        times: dict[str, list[float]] = {"batched": [], "per_lambda": []}
        for i in range(4):
            for way in (("batched", "per_lambda") if i % 2 == 0 else ("per_lambda", "batched")):
                t = time.perf_counter()
                batched() if way == "batched" else per_lambda()
                times[way].append(time.perf_counter() - t)
        b, p = statistics.median(times["batched"]), statistics.median(times["per_lambda"])
        results[name] = {"lambdas": lams, "prompts": len(prompts), "identical_texts": same,
                         "batched_seconds": b, "per_lambda_seconds": p, "speedup": p / b, "runs_seconds": times}
        print(f"{name}: batched {b:.2f} s, per lambda {p:.2f} s, x{p / b:.2f}, identical {same}", flush=True)
    write("steer_batch", {"model": "smollm2-135m-instruct", "site": "resid", "layers": layers,
                          "new_tokens": cfg.max_new_tokens, "baseline": "one generate() call per lambda",
                          "cases": results})


if __name__ == "__main__":
    main()
