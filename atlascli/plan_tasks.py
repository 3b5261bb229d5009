"""Plans (input checks + cost) of `atlas fit` (max-pooled and word-aligned), `atlas atlas build` and `atlas evaluate`;
see :mod:`atlascli.plan`."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from atlascli.errors import InputError
from atlascli.pinned import hub_revision, one_revision
from atlascli.plan import (
    EFFICIENCY,
    GENERATION_EFFICIENCY,
    Plan,
    Step,
    extract_seconds,
    extract_step,
    fmt_seconds,
    machine_gflops,
    tokens_per_sentence,
)
from atlascli.preflight import ModelInfo, check_disk, check_layers, check_limit, check_runtime, probe_model, split_size
from atlascli.registry import Registry

if TYPE_CHECKING:
    from atlascli.atlas import Atlas
    from atlascli.atlas.build import AtlasBuildConfig
    from atlascli.evaluate.run import EvaluateConfig
    from atlascli.fit import FitConfig
    from atlascli.wordfit import WordFitConfig


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """An atlas build's settings that decide its result: the asked-for revision name and ``trust_remote_code`` are
    left out (the commit a revision resolves to names the atlas; atlases built before these options stored neither)."""
    return {k: v for k, v in config.items() if k not in {"revision", "trust_remote_code"}}


def plan_build(cfg: AtlasBuildConfig, registry: Registry | None = None) -> Plan:
    """Check every input of ``atlas atlas build`` (foundation, layer, site, SAE shape, dataset, disk); its plan."""
    from atlascli.corpus import resolve_dataset

    registry = registry or Registry()  # SAE shape and counts: checked by AtlasBuildConfig itself
    check_runtime(cfg.device, cfg.dtype)
    info = probe_model(cfg.foundation, cfg.revision, cfg.trust_remote_code)
    check_layers(info, (cfg.layer,), cfg.site)
    dataset = resolve_dataset(cfg.dataset, registry)
    n_train = split_size(dataset, "train")
    fp = dataset.provenance["dataset_fingerprint"]
    where = f"{info.name} L{cfg.layer} {cfg.site}"
    from atlascli.atlas import build as build_module

    labels_version = getattr(build_module, "LABELS_VERSION", None)
    for art in reversed(registry.find("atlas", name=cfg.name, foundation=cfg.foundation, layer=cfg.layer, site=cfg.site,
                                      width=cfg.width, dataset_fingerprint=fp)):
        stored = {"dtype": "float32", **(art.meta.get("config") or {})}
        if cfg.revision is not None and art.provenance.get("revision") != cfg.revision:
            continue  # another revision asked for (a branch or tag is not resolved here: planned as a build)
        if _settings(stored) == _settings(asdict(cfg)) and art.provenance.get("labels_version") == labels_version:
            return Plan("atlas build", [Step("reuse", f"reuse {art.id} (same foundation, data and settings)",
                                             artifact=art.id, model=cfg.foundation, layers=[cfg.layer])],
                        smaller="--train-sentences / --label-sentences")
    d_in = info.width(cfg.site)
    tps = tokens_per_sentence(dataset)
    n = min(max(cfg.train_sentences, cfg.label_sentences), n_train)  # one pass keeps every token
    label = min(cfg.label_sentences, n)
    tokens = min(cfg.max_tokens, int(min(cfg.train_sentences, n) * 0.95 * max(tps - 1, 1)))
    s1, basis = extract_seconds(registry, info, n, cfg.layer, cfg.device, dataset, None, dtype=cfg.dtype)
    sae_flops = 3.0 * 4.0 * d_in * cfg.width * tokens * cfg.epochs  # fwd (encode + decode) + bwd
    s2 = sae_flops / (machine_gflops(cfg.device) * EFFICIENCY * 1e9)
    s3 = 2.0 * d_in * cfg.width * n * max(tps - 1, 1) / (machine_gflops(cfg.device) * EFFICIENCY * 1e9)
    s4 = 0.002 * label + 10  # embed the labelling sentences (MiniLM) + WordNet
    steps = [
        Step("extract", f"{n:,} train sentences through {where}, keeping every token (~{fmt_seconds(s1)}, {basis})",
             n, s1, basis, model=cfg.foundation, layers=[cfg.layer]),
        Step("train", f"train a TopK SAE ({d_in}->{cfg.width}, k={cfg.k}) for {cfg.epochs} epochs over ~{tokens:,} "
                      f"tokens (~{fmt_seconds(s2)})", 0, s2, "calibrated matmul rate"),
        Step("encode", f"the {label:,} labelling sentences' codes from the kept tokens, stored for `atlas fit` "
                       f"(~{fmt_seconds(s3)}, no second pass)", 0, s3, "calibrated matmul rate"),
        Step("embed", f"embed {label:,} labelling sentences with {cfg.embedder}, label {cfg.width:,} features "
                      f"(~{fmt_seconds(s4)})", 0, s4, "rough"),
    ]
    disk = 8 * d_in * cfg.width + label * 12 * min(cfg.width, 512) + cfg.width * 4000
    check_disk(registry.root, disk)
    return Plan("atlas build", steps, disk, smaller="--train-sentences / --max-tokens / --label-sentences")


def plan_evaluate(cfg: EvaluateConfig, registry: Registry | None = None) -> Plan:
    """Check every input of ``atlas evaluate`` (atlas, alignments and their compatibility, models, layers, test
    data, judge) and say what it will compute and reuse."""
    from atlascli.activations import find_covering
    from atlascli.atlas import resolve_atlas
    from atlascli.evaluate.run import select_alignments
    from atlascli.judges import parse_judge
    from atlascli.translate import parse_methods

    registry = registry or Registry()
    check_runtime(cfg.device, "float32")
    check_limit(cfg.test_limit, "--test-limit")
    parse_judge(cfg.judge, cfg.judge_url)
    atlas = resolve_atlas(cfg.atlas, registry)
    if cfg.paper_features and "quality" in cfg.kinds:
        from atlascli.concepts import paper_features

        paper_features(atlas)  # the paper's features exist only on its atlas
    subject, table = select_alignments(registry, atlas, cfg.subject, cfg.layers,
                                       parse_methods(cfg.methods) if cfg.methods else None, cfg.site)
    from atlascli.evaluate.retrieval_run import precheck_concept_sets

    precheck_concept_sets(cfg, table)  # a bad --concept-sets file is refused before any extraction
    arts = [a for t in table.values() for a in t.values()]
    layers = sorted(next(iter(table.values())))
    p0 = arts[0].provenance
    info = probe_model(subject, hub_revision(subject, one_revision(arts)), cfg.trust_remote_code)
    check_layers(info, layers, p0["site"])
    weights = atlas.artifact  # a relabelled atlas shares its SAE (and so its alignments) with the original
    if atlas.weights_id != atlas.id and registry.exists(atlas.weights_id, "atlas"):
        weights = registry.get(atlas.weights_id, "atlas")
    for a in arts:
        p = a.provenance
        if int(p["shape"][1]) != atlas.width:
            raise InputError(f"alignment {a.id} maps to {p['shape'][1]} atlas features but {atlas.id} has {atlas.width}",
                             f"refit: atlas fit --atlas {atlas.id} --layers {p['layer']} --method {p['method']}")
        if int(p["shape"][0]) != info.width(p["site"]):
            raise InputError(f"alignment {a.id} reads {p['shape'][0]} subject features but {subject} has "
                             f"{info.width(p['site'])} at {p['site']}", "refit it against this subject")
        if p.get("atlas_kind") == "sae" and p.get("atlas_version") != weights.manifest.get("created"):
            raise InputError(f"alignment {a.id} was fitted to another version of {atlas.id} "
                             f"({p.get('atlas_version')}, the atlas is {weights.manifest.get('created')})",
                             f"refit: atlas fit --atlas {atlas.id} --layers {p['layer']} --method {p['method']}")
    ap = atlas.artifact.provenance
    foundation = probe_model(ap["foundation"], hub_revision(ap["foundation"], ap.get("revision")), cfg.trust_remote_code)
    check_layers(foundation, (int(ap["layer"]),), ap["site"])
    dataset = registry.get(p0["dataset"], "dataset")
    steps: list[Step] = []
    disk = 0
    if "quality" in cfg.kinds or "retrieval" in cfg.kinds:
        n = min(cfg.test_limit, split_size(dataset, "test"))
        fp = dataset.provenance["dataset_fingerprint"]
        missing = []
        for layer in layers:
            art = find_covering(registry, subject, fp, "test", layer, n, site=p0["site"], revision=p0["revision"])
            if art is None:
                missing.append(layer)
            elif art.id not in {s.artifact for s in steps}:
                steps.append(Step("reuse", f"reuse {art.id} (subject test activations)", artifact=art.id,
                                  model=subject, layers=list(art.provenance["layers"])))
        if missing:
            secs, basis = extract_seconds(registry, info, n, max(missing), cfg.device, dataset, None)
            steps.append(Step("extract", f"{n:,} test sentences through {subject} L{','.join(map(str, missing))} "
                                         f"{p0['site']} (~{fmt_seconds(secs)}, {basis})", n, secs, basis,
                              model=subject, layers=missing))
            disk += n * 4 * info.width(p0["site"]) * len(missing)
        codes = find_covering(registry, ap["foundation"], fp, "test", int(ap["layer"]), n, sae=atlas.weights_id)
        if codes is not None:
            steps.append(Step("reuse", f"reuse {codes.id} (atlas test codes)", artifact=codes.id,
                              model=ap["foundation"], layers=[int(ap["layer"])]))
        else:
            from atlascli.atlas.build import atlas_dtype

            secs, basis = extract_seconds(registry, foundation, n, int(ap["layer"]), cfg.device, dataset,
                                          (foundation.width(ap["site"]), atlas.width), dtype=atlas_dtype(ap))
            steps.append(Step("extract", f"{n:,} test sentences through {ap['foundation']} L{ap['layer']} + atlas SAE "
                                         f"(~{fmt_seconds(secs)}, {basis})", n, secs, basis,
                              model=ap["foundation"], layers=[int(ap["layer"])]))
            disk += n * 12 * min(atlas.width, 512)
    if "steering" in cfg.kinds:
        steps.append(_steering_step(cfg, registry, atlas, info, len(table), len(layers)))
    check_disk(registry.root, disk)
    return Plan("evaluate", steps, disk, smaller="--test-limit / --layers / --methods / --lambdas")


def _steering_step(cfg: EvaluateConfig, registry: Registry, atlas: Atlas, info: ModelInfo, n_methods: int,
                   n_layers: int) -> Step:
    from atlascli.evaluate.faithfulness import SEED_PROMPTS
    from atlascli.evaluate.steer_run import default_concepts

    n_concepts = len(cfg.concepts) if cfg.concepts else len(default_concepts(atlas, registry))
    n_prompts = len(cfg.prompts) if cfg.prompts else len(SEED_PROMPTS)
    n_lams = len(set(cfg.lambdas) - {0.0})
    columns = n_layers + (1 if cfg.combined and n_layers > 1 else 0)
    gens = (n_methods + 1) * columns * n_concepts * n_lams * n_prompts + n_concepts * n_prompts
    tokens = gens * cfg.max_new_tokens
    per_token = 2.0 * info.params_per_layer * info.n_layers
    secs = 20.0 + tokens * per_token / (machine_gflops(cfg.device) * GENERATION_EFFICIENCY * 1e9)
    return Step("generate", f"{gens:,} steered generations x {cfg.max_new_tokens} tokens by {info.name} "
                            f"({n_methods + 1} methods x {columns} columns x {n_concepts} concepts x {n_lams} lambdas x "
                            f"{n_prompts} prompts), judged by {cfg.judge} (~{fmt_seconds(secs)}, rough)",
                0, secs, "rough: calibrated matmul rate, generation efficiency assumed", model=info.name)


def plan_fit(cfg: FitConfig, registry: Registry | None = None) -> Plan:
    """Check every input of ``atlas fit`` (both models, layers, site, atlas, dataset, disk) and say what it will do."""
    from atlascli.corpus import resolve_dataset
    from atlascli.fit import resolve_atlas_ref
    from atlascli.translate import parse_methods

    registry = registry or Registry()
    methods = parse_methods(cfg.methods)
    check_runtime(cfg.device, cfg.dtype)
    check_limit(cfg.limit)
    subject = probe_model(cfg.subject, cfg.revision, cfg.trust_remote_code)
    check_layers(subject, cfg.layers, cfg.site)
    dataset = resolve_dataset(cfg.dataset, registry)
    n_train = split_size(dataset, "train")
    n = min(n_train, cfg.limit) if cfg.limit is not None else n_train
    steps: list[Step] = []
    disk = 0
    resolved = resolve_atlas_ref(cfg.atlas, registry)
    if isinstance(resolved, tuple):
        model, layer, site = resolved
        atlas_cfg = cfg.extraction(model, (layer,), site)
        step, disk = extract_step(atlas_cfg, registry, for_fit=True)
        atlas_key = cfg.atlas
        atlas_width = probe_model(model).width(site)
    else:
        art = resolved
        if art.kind == "activations":
            p = art.provenance
            if p["dataset_fingerprint"] != dataset.provenance["dataset_fingerprint"] or p["split"] != "train":
                raise InputError(f"subject and atlas activations come from different datasets ({art.id} holds "
                                 f"{p['dataset_fingerprint'][:12]} [{p['split']}], the fit uses "
                                 f"{dataset.provenance['dataset_fingerprint'][:12]} [train])",
                                 "extract both over the same dataset and split")
            if int(p["n"]) != n:
                raise InputError(f"the atlas activations {art.id} have N={p['n']} sentences but the subject N={n}",
                                 f"use the same --limit for both (--limit {p['n']})")
            step = Step("reuse", f"reuse {art.id} (atlas side, {n:,} sentences)", artifact=art.id,
                        model=p["model"], layers=list(p["layers"]))
            atlas_width = int(next(iter(art.meta["widths"].values())))
            atlas_key = art.id
        elif art.kind == "atlas":
            p = art.provenance
            weights = p.get("weights_id") or art.id  # a relabelled atlas shares its SAE with the original (as fit does)
            if weights != art.id and registry.exists(weights, "atlas"):
                art = registry.get(weights, "atlas")
            atlas_cfg = cfg.codes_extraction(art)
            step, disk = extract_step(atlas_cfg, registry, for_fit=True)
            atlas_width = int(p["width"])
            atlas_key = art.id
        else:
            raise InputError(f"{art.id} is a {art.kind}, not an atlas", "pass an atlas or activations id")
    steps.append(step)
    subj_cfg = cfg.subject_extraction()
    sstep, sdisk = extract_step(subj_cfg, registry, subject, for_fit=True)
    steps.append(sstep)
    if sstep.action == "reuse" and step.action == "reuse" and sstep.artifact:
        from atlascli.fit import _fitted

        sp = registry.get(sstep.artifact, "activations").provenance
        found = [_fitted(registry, cfg, layer, methods, sp, {"atlas": atlas_key}, sstep.artifact, n)
                 for layer in cfg.layers]
        if all(f is not None for f in found):  # a rerun: every (layer, method) is in the registry
            n_found = sum(len(f or []) for f in found)
            steps.append(Step("reuse", f"reuse the {n_found} alignments ({','.join(methods)} at layer(s) "
                                       f"{','.join(map(str, cfg.layers))})", model=cfg.subject,
                              layers=list(cfg.layers)))
            return Plan("fit", steps, disk)
    ds = subject.width(cfg.site)
    flops = 2.0 * n * ds * atlas_width * len(cfg.layers) * (2 if len(methods) > 1 else 1)
    # decompositions, run twice per layer (the held-out health check refits on ~95%): SVD for Procrustes,
    # Cholesky + solve for least squares; LAPACK reaches about a quarter of the matmul rate here
    lo, hi = sorted((ds, atlas_width))
    dec = (4.0 * lo * lo * hi + 8.0 * lo ** 3) * ("procrustes" in methods) \
        + (atlas_width ** 3 / 3 + 2.0 * atlas_width ** 2 * ds) * ("linreg" in methods)
    fit_s = (flops / (machine_gflops(cfg.device) * 0.5 * 1e9)
             + 2 * dec * len(cfg.layers) / (machine_gflops(cfg.device) * 0.25 * 1e9)
             + 0.5 * len(cfg.layers) * len(methods))
    steps.append(Step("fit", f"fit {','.join(methods)} at layer(s) {','.join(map(str, cfg.layers))} on {n:,} pairs "
                             f"({ds}x{atlas_width}, ~{fmt_seconds(fit_s)})", seconds=fit_s, basis="calibrated",
                      model=cfg.subject, layers=list(cfg.layers)))
    disk += sdisk + 4 * ds * atlas_width * len(cfg.layers) * len(methods)
    check_disk(registry.root, disk)
    return Plan("fit", steps, disk)


def plan_word_fit(cfg: WordFitConfig, registry: Registry | None = None) -> Plan:
    """Check every input of ``atlas fit --pooling word`` (subject, layers, site, SAE atlas, dataset, disk) and say what
    it will do: both models over the sentences (once for every layer), one Procrustes per layer."""
    from atlascli.atlas import resolve_atlas
    from atlascli.atlas.build import atlas_dtype
    from atlascli.corpus import resolve_dataset
    from atlascli.sites import is_word_pooled
    from atlascli.wordfit import word_settings

    registry = registry or Registry()
    check_runtime(cfg.device, cfg.dtype)
    subject = probe_model(cfg.subject, cfg.revision, cfg.trust_remote_code)
    check_layers(subject, cfg.layers, cfg.site)
    atlas = resolve_atlas(cfg.atlas, registry)
    if not atlas.artifact.files_under("sae/"):
        raise InputError(f"atlas {atlas.id} has no SAE of its own", "word-aligned fits need an SAE atlas")
    dataset = resolve_dataset(cfg.dataset, registry)
    n = min(split_size(dataset, "train"), cfg.limit)
    if n < 2:
        raise InputError(f"dataset {dataset.id} has {n} training sentence(s)", "prepare a larger one with `atlas data prepare`")
    fitted = [a for a in registry.find("alignment", method="procrustes") if is_word_pooled(a)]
    want = word_settings(cfg, atlas, dataset, n)  # what names a fit, but the subject's revision (resolved on loading)
    done = {int(a.provenance["layer"]) for a in fitted
            if all(a.provenance.get(k, "all" if k == "tokens" else None) == v for k, v in want.items())}
    layers = ",".join(map(str, cfg.layers))
    if all(layer in done for layer in cfg.layers):
        return Plan("fit --pooling word", [Step("reuse", f"reuse the word-aligned alignments at layer(s) {layers}",
                                                model=cfg.subject, layers=list(cfg.layers))])
    ap = atlas.artifact.provenance
    measured = [(a.id, t["sentences_per_second"]) for a in fitted
                if (t := a.meta.get("throughput") or {}).get("sentences_per_second")
                and t.get("device") == cfg.device and a.provenance["subject"] == cfg.subject]
    if measured:  # an earlier word fit here: both models, padding and pairing included
        rate_id, rate = measured[-1]
        passes, basis = 5.0 + n / rate, f"measured {rate:,.1f} sent/s ({rate_id})"
    else:  # from extraction rates, which batch by length and pair nothing: the fit itself ran ~1.8x slower here
        foundation = probe_model(str(ap["foundation"]))
        s_sec, s_basis = extract_seconds(registry, subject, n, max(cfg.layers), cfg.device, dataset, None,
                                         cfg.max_length, cfg.dtype)
        f_sec, f_basis = extract_seconds(registry, foundation, n, int(ap["layer"]), cfg.device, dataset,
                                         (foundation.width(str(ap["site"])), int(ap["width"])), cfg.max_length,
                                         atlas_dtype(ap))
        passes, basis = s_sec + f_sec, f"{s_basis}; {f_basis} (extraction rates: rough for a word fit)"
    ds, dc = subject.width(cfg.site), int(ap["width"])
    fit_s = len(cfg.layers) * (4.0 * ds * ds * dc + 8.0 * ds ** 3) / (machine_gflops(cfg.device) * 0.25 * 1e9)
    pairs = "content-word" if cfg.tokens == "content" else "token"
    steps = [Step("extract", f"{n:,} train sentences through {cfg.subject} L{layers} {cfg.site} and {ap['foundation']} "
                             f"L{ap['layer']} + SAE, paired at shared {pairs} ends (~{fmt_seconds(passes)}; "
                             "resumes from its checkpoint)", sentences=n, seconds=passes, basis=basis,
                  model=cfg.subject, layers=list(cfg.layers)),
             Step("fit", f"Procrustes at layer(s) {layers} ({ds}x{dc})", seconds=fit_s, basis="calibrated",
                  model=cfg.subject, layers=list(cfg.layers))]
    disk = (4 * ds * dc + 4 * dc) * len(cfg.layers)
    check_disk(registry.root, disk)
    return Plan("fit --pooling word", steps, disk)
