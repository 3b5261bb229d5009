"""Does steering make the subject *name* the concept? Atlas against the supervised ceiling, by strength.

`bench/concepts.py` measures whether steered text moves toward a concept (MiniLM cosine). This asks the stricter
question a user asks of `atlas steer --concept london`: how many generations contain the concept's word. For each
concept (``name:keyword``) and strength lambda (norm unit, the `atlas steer` default), three directions at the
default steering site and layers: **atlas** (what `atlas steer` does: s = T_hat q / |q| for the text query it builds;
at word-aligned layers, the text query joined with its words in the examples, `steering.steer_vectors`), **supervised**
(the mean subject activation of the concept's examples, the labelling sentences most similar to it by MiniLM, minus
that of random labelling sentences: the direction a steering-vectors / repeng user builds from labelled data, an
upper reference for what any direction at this site can do) and **random**; plus the unsteered generations. Each
count is over the 6 seed prompts of bench/concepts.py, greedy, 40 new tokens.

Writes bench/results/mentions.json. Needs a registry with an atlas and Procrustes fits (`make demo`, or ATLAS_HOME).
Usage: python bench/mentions.py [--concepts "London:london;chess:chess"] [--lambdas 35,60,100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import steering_setup, write  # noqa: E402
from concepts import PROMPTS  # noqa: E402

CONCEPTS = "London:london;Paris:paris;dogs and cats:dog;the ocean and ships:ocean;chess:chess;volcanoes:volcan;" \
           "music:music;coffee:coffee"


def pooled(lm: Any, sentences: list[str], layers: list[int], site: str) -> dict[int, Any]:
    """Max-pooled subject activations [n, width] per layer (what the fits were made of)."""
    import torch

    from atlascli.extract import _pool_mask
    from atlascli.hooks import record_sites, run_until

    tok = lm.tokenizer
    tok.padding_side = "right"
    out: dict[int, list[Any]] = {layer: [] for layer in layers}
    for i in range(0, len(sentences), 32):
        enc = tok(sentences[i:i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt",
                  return_special_tokens_mask=True)
        mask = _pool_mask(enc)
        with torch.inference_mode(), record_sites(lm.model, layers, site) as rec:
            run_until(lm.model, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            for layer in layers:
                out[layer].append(rec[layer].float().masked_fill(~mask[..., None], float("-inf")).max(1).values)
    return {layer: torch.cat(v) for layer, v in out.items()}


def main() -> None:
    import torch

    from atlascli.corpus import load_split
    from atlascli.embed import embed
    from atlascli.search import query_from_text
    from atlascli.steering import (
        GenerationConfig,
        generate,
        norm_reference,
        site_norms,
        steer_vectors,
        steering,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", default=CONCEPTS, help="name:keyword;... (a generation counts when it contains "
                                                        "the keyword, case-insensitive)")
    ap.add_argument("--lambdas", default="35,60,100", help="strengths in the norm unit (35 = the default)")
    ap.add_argument("--examples", type=int, default=50, help="examples per concept (supervised direction)")
    ap.add_argument("--random-sentences", type=int, default=300, help="random labelling sentences (its baseline)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--out", default="mentions")
    args = ap.parse_args()
    t0 = time.perf_counter()
    reg, atlas, subject, site, lm, layers = steering_setup()
    train = load_split(reg.get(atlas.artifact.provenance["dataset"], "dataset"), "train")
    label_emb = atlas.examples["embeddings"].float()
    gen = torch.Generator().manual_seed(0)
    rnd_idx = torch.randperm(label_emb.shape[0], generator=gen)[:args.random_sentences].tolist()
    rnd_acts = pooled(lm, [train[i] for i in rnd_idx], layers, site)
    norms = site_norms(lm, site, layers, PROMPTS, chat=True)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, chat=True)
    lams = [float(x) for x in args.lambdas.split(",") if x]
    unsteered = generate(lm, PROMPTS, cfg)
    rows = []
    for spec in [c for c in args.concepts.split(";") if c]:
        name, key = spec.rsplit(":", 1)
        ex_idx = torch.topk(label_emb @ embed([name])[0], args.examples).indices.tolist()
        ex_acts = pooled(lm, [train[i] for i in ex_idx], layers, site)
        atlas_vecs, used, hits = steer_vectors(query_from_text(name, atlas), reg, atlas, subject, layers, "procrustes",
                                               site)
        dirs = {"atlas": atlas_vecs,
                "supervised": {layer: ex_acts[layer].double().mean(0) - rnd_acts[layer].double().mean(0)
                               for layer in layers},
                "random": {layer: torch.randn(v.shape, generator=gen) for layer, v in atlas_vecs.items()}}
        row: dict[str, Any] = {"concept": name, "keyword": key, "examples_with_keyword":
                               sum(key in train[i].lower() for i in ex_idx),
                               "unsteered": sum(key in g.lower() for g in unsteered), "by_lambda": {},
                               "pooling": {str(a.provenance["layer"]): a.provenance.get("pooling", "max") for a in used},
                               "word_hits": hits}
        for lam in lams:
            cell: dict[str, Any] = {}
            for dname, vecs in dirs.items():
                unit = {layer: (v / v.norm()).float() for layer, v in vecs.items()}
                mult = {layer: lam / norm_reference(site) * norms[layer] for layer in layers}
                with steering(lm.model, site, unit, mult):
                    out = generate(lm, PROMPTS, cfg)
                cell[dname] = sum(key in g.lower() for g in out)
                cell[f"{dname}_sample"] = out[0][:120]
            row["by_lambda"][str(int(lam) if lam.is_integer() else lam)] = cell
            print(f"{name:22s} lambda {lam:5g}: atlas {cell['atlas']}/6  supervised {cell['supervised']}/6  "
                  f"random {cell['random']}/6  (unsteered {row['unsteered']}/6)", flush=True)
        rows.append(row)
    summary: dict[str, dict[str, Any]] = {}
    for lam in rows[0]["by_lambda"] if rows else []:
        tot = {d: sum(r["by_lambda"][lam][d] for r in rows) for d in ("atlas", "supervised", "random")}
        summary[lam] = {**tot, "of": len(rows) * len(PROMPTS),
                        "atlas_over_supervised": round(tot["atlas"] / tot["supervised"], 3) if tot["supervised"]
                        else None}
    write(args.out, {"atlas": atlas.id, "subject": subject, "site": site, "layers": layers, "unit": "norm",
                     "prompts": PROMPTS, "n_prompts": len(PROMPTS), "concepts": rows,
                     "summary_generations_naming_the_concept": summary,
                     "unsteered_total": sum(r["unsteered"] for r in rows),
                     "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
