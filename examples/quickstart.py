"""The Python API on the embedded default (run `make demo` first; the checkout's registry is found by itself).

    .venv/bin/python examples/quickstart.py [--concept secrets] [--layer 12]
"""

from __future__ import annotations

import argparse

import atlascli as atlas
from atlascli.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concept", default="secrets")
    ap.add_argument("--steer", default="london")
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--subject", default="smollm2-135m-instruct")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    args = ap.parse_args()

    # 1. search: which subject features encode the concept (eq. 3)?
    alignment = atlas.load_alignment(subject=args.subject, layer=args.layer)
    result = alignment.search(args.concept, top=5, samples=1)
    print(f"{args.concept!r} -> atlas features:", ", ".join(f"{m['index']} '{m['label']}'" for m in result.query.matches[:3]))
    for f in result.features:
        example = f.examples[0][1] if f.examples else ""
        print(f"  subject feature {f.index:5d}  s={f.score:+.3f}  {example[:70]}")

    # 2. steer a model you loaded yourself (any transformers causal LM of the aligned subject)
    lm = load_model(args.subject)  # here: the offline SmolLM2 from the zoo; with the Hub: AutoModelForCausalLM
    model, tok = lm.model, lm.tokenizer
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": "Tell me a joke."}], tokenize=False,
                                       add_generation_prompt=True)
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
    else:
        enc = tok("Tell me a joke.", return_tensors="pt")

    def complete() -> str:
        out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    print("\nunsteered:", complete())
    with atlas.steering(model, concept=args.steer, strength=35, tokenizer=tok) as per_layer:
        print(f"steered toward {args.steer!r} at layers {sorted(per_layer)}:", complete())


if __name__ == "__main__":
    main()
