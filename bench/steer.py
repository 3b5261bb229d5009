"""Generation throughput with steering at 5 layers (eq. 4 hooks on the MLP-neuron site) vs without,
same prompts, same length (min_new_tokens = max_new_tokens), SmolLM2-135M-Instruct, greedy.
Writes bench/results/steer.json. Target: steered >= 95% of unsteered tokens/s."""

from __future__ import annotations

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
    from atlascli.steering import format_prompts, steering

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
    for _ in range(3):  # interleaved so drift hits both equally
        plain.append(run())
        with steering(lm.model, "mlp", vectors, {layer: 10.0 for layer in layers}):
            steered.append(run())
    tokens = new * len(PROMPTS)
    tp, ts = tokens / min(plain), tokens / min(steered)
    write("steer", {"model": "smollm2-135m-instruct", "layers": layers, "site": "mlp", "batch": len(PROMPTS),
                    "new_tokens_per_prompt": new, "unsteered_tokens_per_s": tp, "steered_tokens_per_s": ts,
                    "steered_fraction_of_unsteered": ts / tp, "runs_seconds": {"unsteered": plain, "steered": steered}})


if __name__ == "__main__":
    main()
