"""Steering calibration: which strength, layers and query make `atlas steer` move generations to the concept
without breaking them, measured on tuning concepts and checked on held-out concepts never used for tuning.

Per configuration (lambda in norm units x steered layers x query variant) and concept: greedy continuations of 6
seed prompts, steered along the atlas direction and along a random direction of the same strength, and the
unsteered ones. Reports MiniLM cosine to the concept (as bench/concepts.py), the share of concepts where atlas beats
both unsteered and random by 0.02, and fluency: the mean per-token negative log-likelihood of the continuation under
the *unsteered* model (lower = more fluent; unsteered text is the reference) and the share of distinct bigrams.

Steers the fits at `atlas steer`'s site (the residual stream when fitted; `--site mlp` for the neurons).
Writes bench/results/steer_sweep.json (`--out NAME`). Needs the demo registry (`make demo`).
Usage: python bench/steer_sweep.py [--lambdas 35,50] [--layer-sets 6/6,9] [--variants full,top32] [--site mlp]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import text_embeddings, write  # noqa: E402
from concepts import CONCEPTS, PROMPTS  # noqa: E402

HELD_OUT = [
    # never used to choose the default strength, layers or query: the check that the defaults transfer
    "space and stars", "horses", "coffee and tea", "painting and art", "school and students",
    "politics and elections", "fishing", "trains and railways", "chess", "fashion and clothes", "dinosaurs",
    "the moon", "volcanoes", "pirates", "ice and snow", "wine", "babies", "poetry", "insects", "magic and wizards",
]

FRESH = [
    # a second held-out set, added after the first had been looked at: the check of the choices made with it
    "mountains and hiking", "baking and bread", "robots", "deserts", "football", "airplanes", "jazz", "hospitals",
    "kings and queens", "rivers", "farming", "the internet", "snakes", "cheese", "ghosts", "weddings", "bicycles",
    "Paris", "Japan", "gold and jewels", "friendship", "fear", "happiness", "history", "physics", "photography",
    "movies", "beer", "fruit", "the police", "taxes", "Christmas", "spiders", "whales", "forests", "weapons", "dance",
    "theatre", "languages", "New York",
]


def sparsify(q: Any, k: int) -> Any:
    """The query restricted to its k largest positive entries (the concept's own features, no contrast tail)."""
    import torch

    from atlascli.query import ConceptQuery

    w = torch.tensor(q.weights, dtype=torch.float64)
    idx = torch.topk(w, min(k, len(w))).indices
    keep = [i for i in idx.tolist() if w[i] > 0]
    return ConceptQuery([q.features[i] for i in keep], [float(w[i]) for i in keep], q.source, q.matches)


def distinct2(texts: list[str]) -> float:
    """Share of distinct word bigrams over all bigrams (1 = no repetition)."""
    grams = [tuple(t.split()[i:i + 2]) for t in texts for i in range(max(len(t.split()) - 1, 0))]
    return len(set(grams)) / max(len(grams), 1)


def nll(lm: Any, prompts: list[str], texts: list[str]) -> float:
    """Mean per-token NLL of ``texts`` after the chat-formatted ``prompts`` under the unsteered model."""
    import torch

    from atlascli.steering import format_prompts

    tok = lm.tokenizer
    heads = format_prompts(tok, prompts, True)
    total, count = 0.0, 0
    with torch.inference_mode():
        for head, text in zip(heads, texts):
            h = tok(head, return_tensors="pt", add_special_tokens=False)["input_ids"]
            t = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            if t.shape[1] == 0:
                continue
            ids = torch.cat([h, t], 1)
            logits = lm.model(input_ids=ids).logits[0, h.shape[1] - 1:-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, t[0], reduction="sum"))
            count += t.shape[1]
    return total / max(count, 1)


def main() -> None:
    import torch

    from atlascli.atlas import resolve_atlas
    from atlascli.embed import embed
    from atlascli.models import load_model
    from atlascli.registry import Registry
    from atlascli.search import query_from_text, subject_similarity
    from atlascli.steering import GenerationConfig, generate, norm_reference, site_norms, steering

    ap = argparse.ArgumentParser()
    ap.add_argument("--lambdas", default="35")
    ap.add_argument("--layer-sets", default="3,12,19", help="'/'-separated layer lists")
    ap.add_argument("--variants", default="full", help="full (the whole query) or topK (its K largest entries)")
    ap.add_argument("--methods", default="procrustes", help="translation methods to steer with")
    ap.add_argument("--n-examples", default="50", help="examples retrieved per text query (query_from_text)")
    ap.add_argument("--concepts", default="", help="';'-separated, or tuning / held_out / fresh / all "
                    "(default: tuning 30 + held-out 20)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--prompts", default="", help="'|'-separated prompts (default: bench/concepts.py's 6)")
    ap.add_argument("--site", default="", help="steer the fits at this site (default: the steering site)")
    ap.add_argument("--out", default="steer_sweep")
    args = ap.parse_args()
    prompts = [p for p in args.prompts.split("|") if p] or PROMPTS
    t0 = time.perf_counter()
    reg = Registry()
    atlas = resolve_atlas(None, reg)
    methods = args.methods.split(",")
    from atlascli.sites import STEER_SITES, choose_site

    fits_by = {m: {int(a.provenance["layer"]): a for a in choose_site(
        reg.find("alignment", method=m, atlas=atlas.weights_id), args.site or None, STEER_SITES)[1]} for m in methods}
    fits = fits_by[methods[0]]
    if not all(fits_by.values()):
        sys.exit("no Procrustes alignment in the registry: run `make demo` first")
    site = next(iter(fits.values())).provenance["site"]
    subject = next(iter(fits.values())).provenance["subject"]
    sets = {"tuning": CONCEPTS, "held_out": HELD_OUT, "fresh": FRESH, "all": CONCEPTS + HELD_OUT + FRESH}
    concepts = sets.get(args.concepts) or [c for c in args.concepts.split(";") if c] or CONCEPTS + HELD_OUT
    part_of = {**{c: "tuning" for c in CONCEPTS}, **{c: "held_out" for c in HELD_OUT},
               **{c: "fresh" for c in FRESH}}
    lm = load_model(subject)
    gen_cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, chat=True)
    all_layers = sorted({int(x) for s in args.layer_sets.split("/") for x in s.split(",")})
    norms = site_norms(lm, site, all_layers, prompts, chat=True)
    unsteered = generate(lm, prompts, gen_cfg)
    c_emb = embed(concepts)
    u_cos = text_embeddings(unsteered) @ c_emb.T  # prompts x concepts
    ref = {"nll": nll(lm, prompts, unsteered), "distinct2": distinct2(unsteered)}
    n_ex = [int(x) for x in args.n_examples.split(",")]
    queries = {(c, n): query_from_text(c, atlas, n_examples=n) for c in concepts for n in n_ex}
    configs = []
    for lam in [float(x) for x in args.lambdas.split(",")]:
        for ls in args.layer_sets.split("/"):
            for variant in args.variants.split(","):
                for method in methods:
                    for n in n_ex:
                        configs.append((lam, [int(x) for x in ls.split(",")], variant, method, n))
    results = []
    n_p = len(prompts)
    for lam, layers, variant, method, n in configs:
        # every concept x prompt is one row of one batch: per-row steering vectors of shape (rows, 1, d)
        stacks: dict[str, dict[int, Any]] = {"atlas": {}, "random": {}}
        for layer in layers:
            a_rows, r_rows = [], []
            for ci, concept in enumerate(concepts):
                q = queries[(concept, n)]
                if variant.startswith("top"):
                    q = sparsify(q, int(variant[3:]))
                v = subject_similarity(q, fits_by[method][layer])
                gen = torch.Generator().manual_seed(1000 + 7919 * ci + layer)
                r = torch.randn(v.shape, generator=gen)
                a_rows += [v / v.norm()] * n_p
                r_rows += [r / r.norm()] * n_p
            stacks["atlas"][layer] = torch.stack(a_rows)[:, None, :]
            stacks["random"][layer] = torch.stack(r_rows)[:, None, :]
        lam_l = {layer: lam / norm_reference(site) * norms[layer] for layer in layers}
        gens: dict[str, list[str]] = {}
        for name, d in stacks.items():
            with steering(lm.model, site, d, lam_l):
                gens[name] = generate(lm, prompts * len(concepts), gen_cfg)
        embs = {name: text_embeddings(g) for name, g in gens.items()}
        rows = []
        for ci, concept in enumerate(concepts):
            sl = slice(ci * n_p, (ci + 1) * n_p)
            cos = {name: float((e[sl] @ c_emb[ci]).mean()) for name, e in embs.items()}
            cos["unsteered"] = float(u_cos[:, ci].mean())
            texts = gens["atlas"][sl]
            rows.append({"concept": concept, "set": part_of.get(concept, "other"),
                         "held_out": part_of.get(concept) != "tuning", **{k: round(v, 4) for k, v in cos.items()},
                         "win": cos["atlas"] >= max(cos["unsteered"], cos["random"]) + 0.02,
                         "nll": round(nll(lm, prompts, texts), 3), "distinct2": round(distinct2(texts), 3),
                         "sample": texts[0][:120]})
        summary = {}
        for part in ("tuning", "held_out", "fresh", "other"):
            sel = [r for r in rows if r["set"] == part]
            if sel:
                summary[part] = {
                    "n": len(sel), "win_share": round(sum(r["win"] for r in sel) / len(sel), 3),
                    **{k: round(statistics.mean(r[k] for r in sel), 4)
                       for k in ("atlas", "random", "unsteered", "nll", "distinct2")}}
        results.append({"lambda": lam, "layers": layers, "variant": variant, "method": method, "n_examples": n,
                        "summary": summary, "concepts": rows})
        print(f"lambda {lam:g} layers {layers} {variant} {method} n={n}: " + "  ".join(
            f"{p}: win {s['win_share']:.2f} atlas {s['atlas']:.3f} rnd {s['random']:.3f} unst {s['unsteered']:.3f} "
            f"nll {s['nll']:.2f} d2 {s['distinct2']:.2f}" for p, s in summary.items()), flush=True)
    write(args.out, {"atlas": atlas.id, "subject": subject, "site": site, "prompts": prompts,
                     "unsteered_reference": ref, "configs": results, "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
