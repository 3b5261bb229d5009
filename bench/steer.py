"""Generation throughput with steering at 5 layers (eq. 4 hooks on the MLP-neuron site) vs without,
same prompts, same length (min_new_tokens = max_new_tokens), SmolLM2-135M-Instruct, greedy; 6 interleaved ABBA pairs,
medians. The hook's own cost is also timed in isolation (this shared 2-core machine drifts ±10% run to run).
Writes bench/results/steer.json. Target: steered >= 95% of unsteered tokens/s."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write  # noqa: E402

PROMPTS = ["Once upon a time", "I just started", "The candidate", "The capital of", "Let me tell you a joke",
           "French cuisine", "Would you like to know", "The team struggled"]


def main() -> None:
    import torch

    from atlascli.models import load_model
    from atlascli.steering import format_prompts, renormalised_add, steering

    lm = load_model("smollm2-135m-instruct")
    tok = lm.tokenizer
    tok.padding_side = "left"
    enc = tok(format_prompts(tok, PROMPTS, True), return_tensors="pt", padding=True, add_special_tokens=False)
    new = 64
    layers = [3, 12, 19, 25, 29]
    gen = torch.Generator().manual_seed(0)
    vectors = {layer: torch.randn(lm.width("mlp", layer), generator=gen) for layer in layers}

    def run() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            out = lm.model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                    pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
        assert out.shape[1] - enc["input_ids"].shape[1] == new
        return time.perf_counter() - t

    run()  # warm-up
    plain, steered = [], []
    lambdas = {layer: 10.0 for layer in layers}
    for i in range(6):  # interleaved, order alternating (ABBA), so drift and noise hit both equally
        for steer_now in ((False, True) if i % 2 == 0 else (True, False)):
            if steer_now:
                with steering(lm.model, "mlp", vectors, lambdas):
                    steered.append(run())
            else:
                plain.append(run())
    tokens = new * len(PROMPTS)
    tp, ts = tokens / statistics.median(plain), tokens / statistics.median(steered)

    # The hook's own cost, isolated: eq. 4 on one decoding step's MLP activations, times the calls of one run.
    edit = renormalised_add(vectors[layers[0]], 10.0)
    a = torch.randn(len(PROMPTS), 1, lm.width("mlp", layers[0]))
    edit(a.clone())
    reps = 2000
    t0 = time.perf_counter()
    for _ in range(reps):
        edit(a.clone())
    per_call = (time.perf_counter() - t0) / reps
    hook_seconds = per_call * len(layers) * new
    write("steer", {"model": "smollm2-135m-instruct", "layers": layers, "site": "mlp", "batch": len(PROMPTS),
                    "new_tokens_per_prompt": new, "baseline": "the same generate() call without hooks",
                    "unsteered_tokens_per_s": tp, "steered_tokens_per_s": ts,
                    "steered_fraction_of_unsteered": ts / tp,
                    "steered_fraction_of_unsteered_best_runs": min(plain) / min(steered),
                    "run_to_run_spread_unsteered": (max(plain) - min(plain)) / statistics.median(plain),
                    "hook_seconds_per_call": per_call, "hook_seconds_per_run": hook_seconds,
                    "hook_fraction_of_unsteered_run": hook_seconds / statistics.median(plain),
                    "runs_seconds": {"unsteered": plain, "steered": steered}})

if __name__ == "__main__":
    main()
