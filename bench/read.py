"""Read quality: do the top atlas concepts `atlas read` gives a sentence describe it?

For held-out test sentences (their stored max-pooled subject activations, what `atlas read` computes for the whole
text), per fitted layer: z-scored concept scores T^T f(a) as `atlas read` ranks them, the top-k coherent concepts, and
the mean MiniLM cosine of their labels to the sentence, minus that of all coherent labels (the baseline: labels drawn
at random). Compared in the same run: raw scores (`--no-standardise`), each layer alone, the mean z over the layers
(`atlas read`'s combined column) and the atlas's own codes of the same sentences (what the foundation model + SAE
say, without any translation).

Writes bench/results/read.json (`--out NAME`). Needs the demo registry (`make demo`).
Usage: python bench/read.py [--sentences 400] [--top 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import demo_alignments, write  # noqa: E402


def main() -> None:
    import torch

    from atlascli.embed import embed
    from atlascli.extract import Activations
    from atlascli.read import score_scale, transform_for
    from atlascli.readout import map_to_atlas
    from atlascli.search_run import test_activations
    from atlascli.sites import FEATURE_SITES, choose_site
    from atlascli.translate import StoredTranslation

    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=400)
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--out", default="read")
    args = ap.parse_args()
    t0 = time.perf_counter()
    reg, atlas, found = demo_alignments()
    site, found = choose_site(found, None, FEATURE_SITES)
    fits = {int(a.provenance["layer"]): a for a in found}
    labels = torch.nn.functional.normalize(atlas.label_embeddings.float(), dim=1)
    keep = atlas.coherent & (labels.norm(dim=1) > 0)
    z: dict[str, torch.Tensor] = {}
    sentences: list[str] = []
    n = args.sentences
    fingerprints = set()
    for layer, art in sorted(fits.items()):
        acts, split = test_activations(art, None, reg)
        if sentences and split[:n] != sentences[:n]:
            sys.exit("the layers' test activations are of different sentences")
        sentences = split
        fingerprints.add(acts.artifact.provenance.get("dataset_fingerprint"))
        x = acts.dense(layer)[:n].float()
        n = x.shape[0]
        tr = StoredTranslation.from_artifact(art)
        transform = transform_for(art, reg, False)
        scores = map_to_atlas(tr, transform(x)).float()
        scale = score_scale(art, tr, transform, reg)
        if scale is None:
            sys.exit(f"the fit activations of {art.id} are not in the registry")
        mean, std = scale
        live = std > 1e-6 * float(std.max())
        z[f"layer {layer} raw"] = scores
        z[f"layer {layer} z"] = torch.where(live, (scores - mean) / std.clamp_min(1e-12), torch.zeros_like(scores))
    layers = sorted(fits)
    z["mean z over layers " + ",".join(map(str, layers))] = torch.stack([z[f"layer {la} z"][:n] for la in layers]).mean(0)
    codes = next((a for a in reg.list("activations") if a.provenance.get("split") == "test"
                  and (a.provenance.get("sae") or {}).get("sae") == atlas.weights_id
                  and a.provenance.get("dataset_fingerprint") in fingerprints and int(a.provenance.get("n", 0)) >= n),
                 None)  # the same test sentences, in the same order, at least as many
    if codes is not None:
        c = Activations(codes).dense(int(codes.provenance["layers"][0]))[:n].float()
        z["atlas codes of the sentence (z), no translation"] = (c - c.mean(0)) / c.std(0).clamp_min(1e-6)
    sims = torch.nn.functional.normalize(embed(sentences[:n]).float(), dim=1) @ labels.T
    base = float(sims[:, keep].mean())
    out = {}
    for name, s in z.items():
        s = s[:n].clone()
        s[:, ~keep] = float("-inf")
        top = torch.topk(s, args.top, dim=1).indices
        out[name] = round(float(torch.gather(sims, 1, top).mean()) - base, 4)
        print(f"{name:48s} top-{args.top} label gain {out[name]:+.4f}", flush=True)
    write(args.out, {"atlas": atlas.id, "site": site, "layers": layers, "sentences": n, "top": args.top,
                     "baseline": "mean MiniLM cosine of all coherent labels to the sentence", "baseline_value":
                     round(base, 4), "label_gain": out, "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
