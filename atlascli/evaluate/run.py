"""`atlas evaluate`: the paper's three evaluations over methods x layers, stored as a ``report`` artifact."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from atlascli.atlas import Atlas, resolve_atlas
from atlascli.errors import InputError
from atlascli.evaluate.data import TestData, load_test_data
from atlascli.preflight import check_subject_depth
from atlascli.registry import Artifact, Registry, slug
from atlascli.registry.files import atomic_write_json, sha256_json
from atlascli.translate import parse_methods

KINDS = ("quality", "retrieval", "steering")
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EvaluateConfig:
    """What to evaluate."""

    kinds: tuple[str, ...] = KINDS
    """Any of quality, retrieval, steering."""
    subject: str | None = None
    """Subject model (default: that of the latest alignment)."""
    layers: tuple[int, ...] | None = None
    """Layers (default: every layer fitted with all requested methods)."""
    methods: str | None = None
    """Comma list or ``all`` (strict: each must be fitted at every layer); default: every fitted method."""
    atlas: str | None = None
    """Atlas (latest by default)."""
    site: str | None = None
    """Fitted site to evaluate (default: MLP neurons when fitted, :data:`atlascli.sites.FEATURE_SITES`)."""
    seed: int = 0
    """Seed of feature sampling, random baselines and generation."""
    test_limit: int = 5000
    """Held-out test sentences used by quality and retrieval."""
    features: tuple[int, ...] | None = None
    """Atlas features of the quality evaluation (default: ``n_features`` sampled)."""
    paper_features: bool = False
    """Use the paper's 100 identification features (A.6.1; Gemma Scope 16k L20 atlas only)."""
    n_features: int = 100
    """Atlas features sampled for quality."""
    retrieval_features: int = 500
    """Subject features sampled for retrieval."""
    set_size: int = 20
    """Sentences per retrieval concept set."""
    candidates: str = "validated"
    """What retrieval ranks each query among: ``validated`` features (the paper) or ``all`` subject features."""
    concept_construction: str = "tail"
    """Offline concept sets: ``tail`` (sampled among ranks 21-200) or ``top`` (the top ``set_size``)."""
    concept_sets: str | None = None
    """JSON/JSONL file of concept sets (subject feature -> sentences); overrides the offline construction."""
    random_draws: int = 3
    """Random directions per feature (quality) and per concept (steering)."""
    chat: bool | None = None
    """Steering prompts: None = raw continuations (the paper), True = chat template, False = raw."""
    concepts: tuple[str, ...] | None = None
    """Steering concepts: names of saved/built-in concepts or text queries."""
    prompts: tuple[str, ...] | None = None
    """Seed prompts (default: the paper's 16)."""
    lambdas: tuple[float, ...] = (-50.0, -10.0, -1.0, 0.0, 1.0, 10.0, 50.0)
    """Steering factors."""
    unit: str = "absolute"
    """Unit of the steering factors: ``absolute`` (the paper's lambda * s_c, its protocol) or ``norm`` (the unit of
    `atlas steer`: along the unit direction of s_c, a share of each layer's median token norm)."""
    combined: bool = True
    """Also steer all layers together (the paper's 'Combined' column)."""
    max_new_tokens: int = 100
    """Tokens per generation."""
    sample: bool = False
    """Sample generations (default greedy)."""
    judge: str = "embedding"
    """``embedding[:EMBEDDER]`` or ``openai:MODEL``."""
    judge_url: str | None = None
    """Base URL of an OpenAI-compatible endpoint."""
    judge_fpr: float = 0.05
    """False-positive rate that calibrates the embedding judge's threshold."""
    judge_retries: int = 4
    """Attempts per chat-judge request."""
    judge_backoff: float = 1.0
    """First retry delay of the chat judge (seconds, doubling)."""
    judge_timeout: float = 60.0
    """Seconds per chat-judge request."""
    device: str = "cpu"
    """Device of extraction and generation."""
    trust_remote_code: bool = False
    """Allow the subject's own model code from the Hub (off unless asked)."""

    def __post_init__(self) -> None:
        from atlascli.evaluate.retrieval import CONSTRUCTIONS
        from atlascli.steering import check_unit

        check_unit(self.unit)
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise InputError(f"unknown evaluation {bad or 'none'}", f"use {', '.join(KINDS)} or all")
        if self.candidates not in ("validated", "all"):
            raise InputError(f"unknown retrieval candidates {self.candidates!r}", "use validated (the paper) or all")
        if self.concept_construction not in CONSTRUCTIONS:
            raise InputError(f"unknown concept-set construction {self.concept_construction!r}",
                             f"use {' or '.join(CONSTRUCTIONS)}")
        for name, value in (("--random-draws", self.random_draws), ("--n-features", self.n_features),
                            ("--retrieval-features", self.retrieval_features), ("--set-size", self.set_size),
                            ("--max-new-tokens", self.max_new_tokens)):
            if value < 1:
                raise InputError(f"{name} must be >= 1, got {value}", f"e.g. {name} 3")


@dataclass
class Report:
    """Every number of one evaluation run, with its configuration."""

    config: dict[str, Any]
    """The :class:`EvaluateConfig` as a dict."""
    subject: str
    """Subject model."""
    atlas: str
    """Atlas id."""
    methods: list[str]
    """Rows."""
    layers: list[int]
    """Columns."""
    alignments: dict[str, dict[str, str]] = field(default_factory=dict)
    """method -> layer -> alignment id."""
    quality: dict[str, Any] = field(default_factory=dict)
    """method -> layer -> {auroc, ap, ...}; plus ``baseline`` and ``features``."""
    retrieval: dict[str, Any] = field(default_factory=dict)
    """method -> layer -> {mrr, mpp, ...}; plus ``baseline`` and per-layer ``kept``."""
    steering: dict[str, Any] = field(default_factory=dict)
    """method (and ``random``) -> layers label -> {faithfulness, delta_a, unrated, concepts}; plus ``judge``."""
    data: dict[str, Any] = field(default_factory=dict)
    """Test data used (fingerprint, N)."""
    artifact: str | None = None
    """Report artifact id once stored."""


def select_alignments(registry: Registry, atlas: Atlas, subject: str | None, layers: tuple[int, ...] | None,
                      methods: list[str] | None, site: str | None = None) -> tuple[str, dict[str, dict[int, Artifact]]]:
    """method -> layer -> newest alignment at one site (``site``, else the first fitted of
    :data:`atlascli.sites.FEATURE_SITES`). Explicit methods must all be fitted at every layer (the error names what is
    missing and how to fit it); by default, the layers fitted with the most methods and the methods fitted there."""
    from atlascli.sites import FEATURE_SITES, choose_site, sentence_pooled
    from atlascli.translate.base import METHODS

    found = [a for a in sentence_pooled(registry.find("alignment", atlas=atlas.weights_id))
             if subject is None or a.provenance["subject"] == subject]
    if not found:
        raise InputError(f"no alignment to atlas {atlas.id}" + (f" for {subject}" if subject else ""),
                         "fit some with `atlas fit --layers 3,12,19 --method all`")
    subject = subject or found[-1].provenance["subject"]
    _, found = choose_site([a for a in found if a.provenance["subject"] == subject], site, FEATURE_SITES)
    check_subject_depth(subject, sorted(layers or ()))
    table: dict[str, dict[int, Artifact]] = {m: {} for m in (methods or METHODS)}
    for a in found:
        p = a.provenance
        if p["subject"] == subject and p["method"] in table:
            table[p["method"]][int(p["layer"])] = a
    if methods is None:
        per_layer = {la: sum(la in t for t in table.values()) for t in table.values() for la in t}
        wanted = sorted(layers) if layers else sorted(la for la, c in per_layer.items() if c == max(per_layer.values()))
        table = {m: t for m, t in table.items() if all(la in t for la in wanted)}
        if not table:
            raise InputError(f"no method of {subject} is fitted at every layer {wanted}",
                             f"run `atlas fit --subject {subject} --layers {','.join(map(str, wanted))} --method all`")
    else:
        wanted = sorted(layers) if layers else sorted(set.intersection(*(set(t) for t in table.values())))
        if not wanted:
            have = {m: sorted(t) for m, t in table.items()}
            raise InputError(f"no layer of {subject} is fitted with every method {methods} (fitted: {have})",
                             "fit them with `atlas fit --layers ... --method all`, or pass fewer --methods")
    missing = {m: [la for la in wanted if la not in t] for m, t in table.items()}
    missing = {m: v for m, v in missing.items() if v}
    if missing:
        first = next(iter(missing.items()))
        raise InputError(f"missing translations of {subject}: {missing}",
                         f"run `atlas fit --subject {subject} --layers {','.join(map(str, first[1]))} --method {first[0]}`")
    return subject, {m: {la: t[la] for la in wanted} for m, t in table.items()}


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def evaluate(cfg: EvaluateConfig, registry: Registry | None = None, progress: Progress | None = None,
             on_plan: Callable[[Any], None] | None = None) -> Report:
    """Run the requested evaluations and store the report artifact.

    Every input is checked first (:func:`atlascli.plan_tasks.plan_evaluate`); ``on_plan`` gets the plan
    before any model is loaded."""
    from atlascli.plan_tasks import plan_evaluate

    registry = registry or Registry()
    atlas = resolve_atlas(cfg.atlas, registry)
    plan = plan_evaluate(cfg, registry)  # every input checked (EvaluateConfig itself checks the static ones)
    if on_plan:
        on_plan(plan)
    subject, table = select_alignments(registry, atlas, cfg.subject, cfg.layers,
                                       parse_methods(cfg.methods) if cfg.methods else None, cfg.site)
    methods = list(table)
    layers = sorted(next(iter(table.values())))
    from atlascli.judges import redact_url

    stored_cfg = {**asdict(cfg), "judge_url": redact_url(cfg.judge_url) if cfg.judge_url else None}
    report = Report(stored_cfg, subject, atlas.id, methods, layers,
                    {m: {str(la): a.id for la, a in t.items()} for m, t in table.items()})
    all_arts = [a for t in table.values() for a in t.values()]
    data: TestData | None = None
    if "quality" in cfg.kinds or "retrieval" in cfg.kinds:
        stage_cb = (lambda stage: (lambda d, t, _tok: progress(stage, d, t))) if progress else None
        data = load_test_data(all_arts, atlas, cfg.test_limit, registry, stage_cb, cfg.device,
                              trust_remote_code=cfg.trust_remote_code)
        report.data = {"dataset_fingerprint": data.dataset_fingerprint, "n_test": data.n, "split": "test"}
    if "quality" in cfg.kinds:
        assert data is not None
        from atlascli.evaluate.quality import sample_features, translation_quality

        given = list(cfg.features) if cfg.features else None
        if cfg.paper_features:
            from atlascli.concepts import paper_features

            given = paper_features(atlas)
        feats = sample_features(data.atlas_positive_counts(), data.n, cfg.n_features, cfg.seed, given)
        for i, layer in enumerate(layers):
            res, base = translation_quality(data, [table[m][layer] for m in methods], feats, cfg.seed, cfg.random_draws)
            for m in methods:
                r = res[table[m][layer].id]
                report.quality.setdefault(m, {})[str(layer)] = {
                    "auroc": _finite(r.auroc), "ap": _finite(r.ap), "auroc_std": _finite(r.auroc_std),
                    "ap_std": _finite(r.ap_std), "used": r.used}
            b = base[layer]
            report.quality.setdefault("baseline", {})[str(layer)] = {
                "positive_rate": _finite(b.positive_rate), "random_auroc": _finite(b.random_auroc),
                "random_ap": _finite(b.random_ap), "random_auroc_std": _finite(b.random_auroc_std),
                "random_ap_std": _finite(b.random_ap_std), "random_draws": b.draws}
            report.quality["dropped"] = {"count": sum(len(v) for v in b.dropped.values()),
                                         "features": b.dropped}  # labels are atlas codes: the same at every layer
            if progress:
                progress("quality", i + 1, len(layers))
        report.quality["features"] = feats
        report.quality["feature_source"] = ("paper A.6.1 (100 identification features)" if cfg.paper_features
                                            else "given" if given else f"sampled (seed {cfg.seed})")
        report.quality["used"] = len(feats) - report.quality["dropped"]["count"]
    if "retrieval" in cfg.kinds:
        assert data is not None
        from atlascli.evaluate.retrieval_run import run_retrieval

        report.retrieval = run_retrieval(cfg, data, atlas, subject, table, progress)
    if "steering" in cfg.kinds:
        from atlascli.evaluate.steer_run import run_steering

        report.steering = run_steering(cfg, registry, atlas, subject, table, progress)
    return store_report(report, registry, all_arts)


def id_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of an evaluation config that names its report: consent to run a model's own code
    (``trust_remote_code``) changes no number, so it is left out and report ids stay as they were."""
    return {k: v for k, v in config.items() if k != "trust_remote_code"}


def store_report(report: Report, registry: Registry, parents: list[Artifact]) -> Report:
    """Write ``report.json`` as a ``report`` artifact (parents: the alignments and the atlas)."""
    key = sha256_json({"config": id_config(report.config), "alignments": report.alignments, "data": report.data})
    art_id = f"report-{slug(report.subject)}-{'-'.join(report.config['kinds'])}-{key[:10]}"
    if registry.exists(art_id, "report"):
        registry.remove(art_id)
    stage = registry.stage("report", art_id, parents=[report.atlas, *[a.id for a in parents]])
    report.artifact = art_id
    atomic_write_json(stage.path / "report.json", asdict(report))
    stage.commit({"subject": report.subject, "atlas": report.atlas, "kinds": list(report.config["kinds"]),
                  "methods": report.methods, "layers": report.layers, "seed": report.config["seed"], **report.data})
    return report
