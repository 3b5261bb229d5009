"""Concept benchmark: atlas search and steering against the supervised alternative, over 30+ concepts.

For each concept, the labelling sentences most similar to it (MiniLM) are its examples. In the same run:
- **atlas**: the concept as a text query (the route `atlas search` takes by default), s = T_hat q / |q| per layer;
- **supervised** (what a steering-vectors / repeng user builds from the same examples, without an atlas): the
  mean subject activation of the examples minus the mean over all fit sentences, per layer.
Per concept it reports the matched atlas features; the **search gain** (mean MiniLM cosine to the concept of the
20 test sentences most aligned with the direction, ranked as `atlas search` ranks them, minus that of
random test sentences) for both; the gain of the top-5 subject features' own max-activating test sentences; and
**steering** on 6 of the paper's seed prompts (MiniLM cosine of unsteered, atlas-steered, random-direction and
supervised-steered generations to the concept), all at the same strength in the same unit. Search runs on the fits
`atlas search` uses (MLP neurons when fitted), steering on those `atlas steer` uses (the residual stream when fitted),
with the supervised direction built at the same site and layers. The **atlas** steering direction is the one `atlas
steer` takes (`steering.steer_vectors`, ``--pooling auto``: the word-aligned T along the text query joined with its
words where word-aligned fits exist); where that is not the paper's max-pooled T, **atlas_max** (s = T_hat q / |q| with
the max-pooled T) is steered too, so the two are compared in the same run.

Writes bench/results/concepts.json. Needs a registry with an atlas and Procrustes fits of the subject
(`make demo`, or ATLAS_HOME=...). Usage: python bench/concepts.py [--layers 12,19] [--no-steer] [--concepts a;b]
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

from common import demo_alignments, text_embeddings, write  # noqa: E402

CONCEPTS = [
    # the user's examples and the paper's Table 6 / Table 8 concepts
    "secrets", "London", "dogs and cats", "reddit comments", "dreams and imagination", "gardening",
    "science fiction and fantasy", "eating", "smart devices", "driving and cars", "video games",
    "health and well-being",
    # everyday concepts
    "food and cooking", "music", "computers and software", "weather and rain", "sports", "money and banking",
    "medicine and disease", "love and romance", "war and soldiers", "religion and god", "the ocean and ships",
    "birds", "trees and plants", "mathematics", "law and crime", "fire", "death", "anger",
]
PROMPTS = ["Once upon a time", "I just started", "The candidate", "Let me tell you a joke", "French cuisine",
           "When you say"]


def _gain(idx: list[int], sims: Any, base: float) -> float:
    return float(sims[idx].mean()) - base if idx else float("nan")


def main() -> None:
    import torch

    from atlascli.corpus import load_split
    from atlascli.embed import embed
    from atlascli.extract import Activations, find_covering
    from atlascli.models import load_model
    from atlascli.samples import alignment_scores
    from atlascli.search import query_from_text, subject_similarity
    from atlascli.search_run import test_activations
    from atlascli.sites import FEATURE_SITES, STEER_SITES, choose_site, is_word_pooled
    from atlascli.steering import GenerationConfig, generate, norm_reference, site_norms, steer_vectors, steering

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="", help="search layers (default: every fitted layer)")
    ap.add_argument("--steer-layers", default="", help="steering layers (default: atlas steer's default)")
    ap.add_argument("--lambda", dest="lam", type=float, default=35.0, help="norm units (35 = a typical token's norm)")
    ap.add_argument("--concepts", default="", help="';'-separated concepts (default: the built-in 40)")
    ap.add_argument("--examples", type=int, default=50, help="examples per concept (supervised baseline)")
    ap.add_argument("--route", default="auto")
    ap.add_argument("--site", default="", help="site of the search fits (default: atlas search's)")
    ap.add_argument("--steer-site", default="", help="site of the steering fits (default: atlas steer's)")
    ap.add_argument("--no-steer", action="store_true")
    ap.add_argument("--pooling", default="auto", choices=["auto", "word", "max"],
                    help="which fits steer, as `atlas steer --pooling` (auto: word-aligned where fitted)")
    ap.add_argument("--ranking", default="standardised", choices=["standardised", "centred"],
                    help="how test sentences are ranked along a direction (as `atlas search --aligned-metric`)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--test-limit", type=int, default=5000)
    ap.add_argument("--out", default="concepts")
    args = ap.parse_args()
    t0 = time.perf_counter()
    reg, atlas, procrustes = demo_alignments()
    _, found = choose_site(procrustes, args.site or None, FEATURE_SITES)
    fits = {int(a.provenance["layer"]): a for a in found}
    steer_site, found = choose_site(procrustes, args.steer_site or None, STEER_SITES)
    steer_fits = {int(a.provenance["layer"]): a for a in found if not is_word_pooled(a)}  # the paper's T
    layers = [int(x) for x in args.layers.split(",") if x] or sorted(fits)
    subject = fits[layers[0]].provenance["subject"]
    concepts = [c for c in args.concepts.split(";") if c] or CONCEPTS
    ex = atlas.examples
    dataset = reg.get(atlas.artifact.provenance["dataset"], "dataset")
    train = load_split(dataset, "train")
    n_label = ex["embeddings"].shape[0]
    label_emb = ex["embeddings"].float()
    # subject activations of the fit sentences (train split; the supervised baseline) and of held-out test sentences
    p0 = fits[layers[0]].provenance

    def fit_activations(layer: int, site: str) -> Any:
        art = find_covering(reg, subject, p0["dataset_fingerprint"], "train", layer, n_label, site=site)
        return Activations(art).dense(layer)[:n_label] if art is not None else None

    fit_acts = {layer: fit_activations(layer, p0["site"]) for layer in layers}
    test = {}
    for layer in layers:
        acts, sentences = test_activations(fits[layer], args.test_limit, reg)
        test[layer] = acts.dense(layer)
    # the ranking `atlas search` shows (samples.aligned_sentences: standardised; --ranking centred for the paper's)
    moments = {layer: (x.double().mean(0), x.double().std(0, unbiased=False) if args.ranking == "standardised"
                       else None) for layer, x in test.items()}
    n_test = next(iter(test.values())).shape[0]
    test_sents = sentences[:n_test]
    test_emb = embed(test_sents)
    concept_emb = embed(concepts)
    rows: list[dict[str, Any]] = []
    lm = None if args.no_steer else load_model(subject)
    gen_cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, chat=True)
    if lm is not None:
        from atlascli.steer_run import default_layers

        steer_layers = ([int(x) for x in args.steer_layers.split(",") if x]
                        or default_layers(sorted(steer_fits), lm.n_layers, steer_site))
        steer_acts = {layer: fit_activations(layer, steer_site) for layer in steer_layers}
        if any(v is None for v in steer_acts.values()):  # e.g. the demo fits resid on fewer sentences: the baseline
            from atlascli.extract import ExtractConfig, extract  # needs the same examples, so extract them all

            fitted_on = reg.get(steer_fits[steer_layers[0]].parents[0], "activations").provenance  # subject side
            more = Activations(extract(ExtractConfig(model=subject, layers=tuple(steer_layers), site=steer_site,
                                                     dataset=dataset.id, limit=n_label, dtype=fitted_on["dtype"]),
                                       reg))
            steer_acts = {layer: more.dense(layer) for layer in steer_layers}
        norms = site_norms(lm, steer_site, steer_layers, PROMPTS, chat=True)
        unsteered = generate(lm, PROMPTS, gen_cfg)
        unsteered_emb = text_embeddings(unsteered)
    for ci, concept in enumerate(concepts):
        c_emb = concept_emb[ci]
        sims_test = test_emb @ c_emb
        base = float(sims_test.mean())
        ex_idx = torch.topk(label_emb @ c_emb, args.examples).indices
        row: dict[str, Any] = {"concept": concept, "examples": [train[int(i)] for i in ex_idx[:3]]}
        try:
            q = query_from_text(concept, atlas, route=args.route)
        except Exception as exc:  # noqa: BLE001 - a concept the atlas cannot resolve is a result too
            row.update(error=str(exc))
            rows.append(row)
            print(f"{concept:28s} no query: {exc}", flush=True)
            continue
        row["route"] = q.source
        row["matched"] = [f"{m['index']} {m['label']}" for m in q.matches[:5]]
        dirs: dict[str, dict[int, Any]] = {"atlas": {}, "supervised": {}, "supervised_norm": {}}
        row["search"] = {}
        for layer in layers:
            dirs["atlas"][layer] = subject_similarity(q, fits[layer])
            if fit_acts.get(layer) is not None:
                fa = fit_acts[layer]
                dirs["supervised"][layer] = (fa[ex_idx].double().mean(0) - fa.double().mean(0)).float()
                fn = torch.nn.functional.normalize(fa, dim=1)  # a second supervised variant: row-normalised
                dirs["supervised_norm"][layer] = fn[ex_idx].mean(0) - fn.mean(0)
            if layer not in test:
                continue
            mean, sd = moments[layer]
            res = {}
            for name, d in ((k, v.get(layer)) for k, v in dirs.items()):
                if d is None:
                    continue
                top = torch.topk(alignment_scores(test[layer], d, mean, sd), 20).indices.tolist()
                feats = torch.topk(d, 5).indices
                own = torch.topk(test[layer][:, feats], 3, dim=0).indices.flatten().unique().tolist()
                res[name] = {"gain": round(_gain(top, sims_test, base), 4),
                             "feature_gain": round(_gain(own, sims_test, base), 4)}
            row["search"][str(layer)] = res
        if lm is not None:
            gens: dict[str, list[str]] = {"unsteered": unsteered}
            gen = torch.Generator().manual_seed(1000 + ci)
            sdirs: dict[str, dict[int, Any]] = {"atlas_max": {}, "supervised": {}}
            sdirs["atlas"], used, row["word_hits"] = steer_vectors(q, reg, atlas, subject, steer_layers, "procrustes",
                                                                   steer_site, args.pooling)
            row["steer_pooling"] = {str(a.provenance["layer"]): "word" if is_word_pooled(a) else "max" for a in used}
            word_steered = any(is_word_pooled(a) for a in used)  # then also the paper's T, in the same run
            for layer in steer_layers:
                if word_steered:
                    sdirs["atlas_max"][layer] = subject_similarity(q, steer_fits[layer])
                if steer_acts.get(layer) is not None:
                    fa = steer_acts[layer]
                    sdirs["supervised"][layer] = (fa[ex_idx].double().mean(0) - fa.double().mean(0)).float()
            for name in ("atlas", "random", "supervised", "atlas_max"):
                src = sdirs["atlas" if name == "random" else name]
                if not src or any(layer not in src for layer in steer_layers):
                    continue
                vecs = {}
                for layer in steer_layers:
                    d = src[layer]
                    if name == "random":
                        d = torch.randn(d.shape, generator=gen)
                    vecs[layer] = d / d.norm()
                lam = {layer: args.lam / norm_reference(steer_site) * norms[layer] for layer in steer_layers}
                with steering(lm.model, steer_site, vecs, lam):
                    gens[name] = generate(lm, PROMPTS, gen_cfg)
            cos = {name: [float(v) for v in (unsteered_emb if name == "unsteered" else text_embeddings(g)) @ c_emb]
                   for name, g in gens.items()}
            row["steer"] = {name: round(statistics.mean(v), 4) for name, v in cos.items()}
            if "atlas" in cos:
                row["steer_prompts_won"] = sum(a > max(u, r) for a, u, r in
                                               zip(cos["atlas"], cos["unsteered"], cos.get("random", cos["unsteered"])))
            row["steer_sample"] = {name: g[0][:160] for name, g in gens.items()}
        rows.append(row)
        srch = row["search"].get(str(layers[-1]), {})
        print(f"{concept:28s} {q.source:16s} search atlas {srch.get('atlas', {}).get('gain', float('nan')):+.3f} "
              f"sup {srch.get('supervised', {}).get('gain', float('nan')):+.3f}  steer "
              + " ".join(f"{k}={v:.3f}" for k, v in row.get("steer", {}).items())
              + f"  | {'; '.join(row['matched'][:3])}", flush=True)
    write(args.out, {"atlas": atlas.id, "subject": subject, "layers": layers, "route": args.route, "ranking": args.ranking,
                     "site": p0["site"], "steer_site": steer_site,
                     "steer_layers": None if lm is None else steer_layers, "lambda_norm_units": args.lam,
                     "steer_pooling": args.pooling,
                     "n_examples": args.examples, "n_test": n_test, "concepts": rows,
                     "summary": summarise(rows, layers), "seconds": round(time.perf_counter() - t0, 1)})


def summarise(rows: list[dict[str, Any]], layers: list[int]) -> dict[str, Any]:
    """Means over concepts and the issue's target checks."""
    out: dict[str, Any] = {"n_concepts": len(rows), "unresolved": [r["concept"] for r in rows if "error" in r]}
    for layer in layers:
        key = str(layer)
        a = [r["search"][key]["atlas"]["gain"] for r in rows if key in r.get("search", {}) and "atlas" in r["search"][key]]
        s = [r["search"][key]["supervised"]["gain"] for r in rows
             if key in r.get("search", {}) and "supervised" in r["search"][key]]
        fa = [r["search"][key]["atlas"]["feature_gain"] for r in rows
              if key in r.get("search", {}) and "atlas" in r["search"][key]]
        fs = [r["search"][key]["supervised"]["feature_gain"] for r in rows
              if key in r.get("search", {}) and "supervised" in r["search"][key]]
        sn = [r["search"][key]["supervised_norm"]["gain"] for r in rows
              if key in r.get("search", {}) and "supervised_norm" in r["search"][key]]
        if sn and s and statistics.mean(sn) > statistics.mean(s):
            s = sn  # compare against the stronger supervised variant
        if a:
            out[f"search_L{layer}"] = {
                "atlas_gain_mean": round(statistics.mean(a), 4),
                "supervised_gain_mean": round(statistics.mean(s), 4) if s else None,
                "atlas_over_supervised": round(statistics.mean(a) / statistics.mean(s), 3) if s else None,
                "share_atlas_gain_ge_0.05": round(sum(g >= 0.05 for g in a) / len(rows), 3),
                "feature_gain_atlas": round(statistics.mean(fa), 4) if fa else None,
                "feature_gain_supervised": round(statistics.mean(fs), 4) if fs else None}
    st = [r["steer"] for r in rows if "steer" in r]
    if st:
        def wins(name: str) -> int:
            return sum(1 for x in st if name in x and x[name] >= x["unsteered"] + 0.02
                       and x[name] >= x.get("random", -1) + 0.02)
        out["steer"] = {name: round(statistics.mean(x[name] for x in st if name in x), 4)
                        for name in ("unsteered", "atlas", "random", "supervised", "atlas_max")
                        if any(name in x for x in st)}
        out["steer"]["atlas_beats_both_by_0.02"] = wins("atlas")
        if "atlas_max" in out["steer"]:
            out["steer"]["atlas_max_beats_both_by_0.02"] = wins("atlas_max")
        out["steer"]["supervised_beats_both_by_0.02"] = wins("supervised")
        out["steer"]["share_atlas"] = round(wins("atlas") / len(rows), 3)
        out["steer"]["atlas_over_supervised_wins"] = round(wins("atlas") / max(wins("supervised"), 1), 3)
    return out


if __name__ == "__main__":
    main()
