"""`atlas steer`'s repetition penalty: steered text with and without it, in the same run.

For each concept, the direction `atlas steer` takes (the text query; word-aligned T joined with its words where
fitted) at the default steering site and layers, lambda 35 (norm unit), on `atlas steer`'s prompt and the 6 seed
prompts, greedy, 40 new tokens; once per repetition penalty (1 = none, the paper's decoding). Per penalty: the share of
word trigrams that repeat an earlier one in the same generation (loops), how many generations name the concept (a
word with the Snowball stem of a content word of it), and the mean MiniLM cosine of the generations to the concept;
also the unsteered generations' repeat share and cosine. The concepts default to bench/word_steer.py's UNSEEN and
London (the penalty was chosen on 12 of bench/concepts.py's concepts: secrets, dogs and cats, gardening, eating, video
games, music, sports, birds, fire, death, anger, the ocean and ships).

Writes bench/results/repetition.json. Needs a registry with steering fits (`make demo`, or ATLAS_HOME).
Usage: python bench/repetition.py [--concepts "London;music"] [--penalties 1,1.15]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import steering_setup, write  # noqa: E402
from concepts import PROMPTS  # noqa: E402
from word_steer import STEER_PROMPT, UNSEEN, names  # noqa: E402


def repeated_trigrams(text: str) -> float:
    """Share of the word trigrams of ``text`` that already occurred earlier in it."""
    words = re.findall(r"\w+", text.lower())
    grams = list(zip(words, words[1:], words[2:]))
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def main() -> None:
    import snowballstemmer

    from atlascli.atlas.labels import stop_words
    from atlascli.embed import embed
    from atlascli.search import query_from_text
    from atlascli.steering import GenerationConfig, generate, norm_reference, site_norms, steer_vectors, steering

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", default=";".join([*UNSEEN, "London"]), help="';'-separated concepts")
    ap.add_argument("--penalties", default="1,1.15", help="repetition penalties (1 = none)")
    ap.add_argument("--lambda", dest="lam", type=float, default=35.0)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--out", default="repetition")
    args = ap.parse_args()
    t0 = time.perf_counter()
    reg, atlas, subject, site, lm, layers = steering_setup()
    prompts = [STEER_PROMPT, *PROMPTS]
    norms = site_norms(lm, site, layers, prompts, chat=True)
    mult = {layer: args.lam / norm_reference(site) * norms[layer] for layer in layers}
    stem = snowballstemmer.stemmer("english").stemWord
    stops = stop_words()
    concepts = [c for c in args.concepts.split(";") if c]
    units = {}
    for name in concepts:
        vecs, _, _ = steer_vectors(query_from_text(name, atlas), reg, atlas, subject, layers, "procrustes", site)
        units[name] = {layer: (v / v.norm()).float() for layer, v in vecs.items()}
    rows: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for rp in [float(x) for x in args.penalties.split(",") if x]:
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, chat=True, repetition_penalty=rp)
        unsteered = generate(lm, prompts, cfg)
        unsteered_emb = embed(unsteered)
        reps, named, cos = [], 0, []
        base_cos = []
        for name in concepts:
            concept = embed([name])[0]
            stems = {stem(w) for w in re.findall(r"[a-z]+", name.lower()) if w not in stops}
            with steering(lm.model, site, units[name], mult):
                out = generate(lm, prompts, cfg)
            row = {"named": sum(names(t, stems, stem) for t in out), "cos": round(float((embed(out) @ concept).mean()), 4),
                   "repeated_trigrams": round(sum(map(repeated_trigrams, out)) / len(out), 4), "sample": out[0][:200]}
            rows.setdefault(name, {})[str(rp)] = row
            reps += [repeated_trigrams(t) for t in out]
            named += row["named"]
            cos.append(row["cos"])
            base_cos.append(float((unsteered_emb @ concept).mean()))
            print(f"{rp:5g} {name:24s} named {row['named']} cos {row['cos']:.3f} rep {row['repeated_trigrams']:.3f} "
                  f"| {out[0][:90]!r}", flush=True)
        summary[str(rp)] = {"named": named, "of": len(concepts) * len(prompts),
                            "mean_cos": round(sum(cos) / len(cos), 4),
                            "repeated_trigrams": round(sum(reps) / len(reps), 4),
                            "unsteered_repeated_trigrams": round(sum(map(repeated_trigrams, unsteered)) / len(prompts), 4),
                            "unsteered_mean_cos": round(sum(base_cos) / len(base_cos), 4)}
        print(rp, summary[str(rp)], flush=True)
    write(args.out, {"subject": subject, "site": site, "layers": layers, "lambda": args.lam, "prompts": prompts,
                     "summary": summary, "concepts": rows, "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
