"""`atlas steer` as one library call: resolve the concept and the layers, turn lambda into per-layer
multipliers in the chosen unit, generate unsteered and steered (and optionally along a random direction)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from atlascli.errors import InputError
from atlascli.registry import Registry
from atlascli.search import ConceptQuery

DEFAULT_LAMBDA = 35.0
"""Default strength (the paper's number for London): in the ``norm`` unit, a vector as long as a typical token of
each steered layer at MLP neurons, 22% of one on the residual stream (:data:`atlascli.steering.NORM_REFERENCE`)."""
REPETITION_PENALTY = 1.15
"""`atlas steer`'s default repetition penalty. Steering at the default strength otherwise sends SmolLM2 into loops ("The
Last Eel: A.A.A.A.A.A…"). Chosen on 12 concepts x 7 prompts (resid 6, 9, lambda 35, then 17% of the norm): 22% of the
steered word trigrams repeated an earlier one (unsteered 1.7%), 0.4% at 1.15 and 0.2% at 1.3, naming the concept as
often (35, 37, 36 of 84). Held out (`bench/repetition.py`, 25 other concepts): 17% -> 0.2% repeats, named 54 -> 72 of
175, MiniLM cosine to the concept 0.288 -> 0.322. `atlas evaluate` and the other benchmarks keep the paper's plain
greedy decoding."""

DEFAULT_PROMPTS = {"chat": "Tell me a short story.", "raw": "Sure, I always have a joke ready! Here is one:"}
"""The prompt when none is given: an open request for a chat model (the paper's joke prompt, sent as a user turn,
makes SmolLM2-Instruct list letters even unsteered), the paper's joke prompt (A.7) as a raw continuation otherwise."""

STEER_DEPTH = {"mlp": (0.1, 0.85), "mlp_out": (0.15, 0.35), "resid": (0.15, 0.35)}
"""Default steering layers per site: fitted layers between these fractions of the model's depth, at most one per
:data:`STEER_AT` depth. Measured with bench/steer_sweep.py on SmolLM2-135M (30 layers). MLP neurons (lambda 35): layers
3, 12, 19, 25 beat 3, 12, 19 on 30 tuning concepts (atlas wins 77% vs 60%) and on 20 held-out ones (65% vs 60%), at a
small fluency cost (NLL of the text under the unsteered model 1.50 vs 1.38 nats/token); the last layers mostly change
the next-token distribution. The residual stream (the default steering site when fitted, lambda 35 = 17% of the token
norm then; 22% since bench/strength.py): layers 6 and 9 moved 93% of the tuning concepts at NLL 1.55, layer 6 alone 57%
(NLL 1.16); adding layer 3 cost fluency (NLL 2.4 at 23%). Early-middle layers are also where the steering-vector
literature (ActAdd, CAA) finds residual steering works."""

STEER_AT = {"mlp": (0.1, 0.4, 0.63, 0.83), "mlp_out": (0.2, 0.3), "resid": (0.2, 0.3)}
"""The depths (fractions of the model's depth) lambda was calibrated at: SmolLM2-135M's MLP layers 3, 12, 19, 25 and
residual layers 6, 9 (:data:`STEER_DEPTH`). Lambda is per layer, so every further steered layer adds it again: on 30
tuning concepts at lambda 35 (bench/results/steer_sweep_layercount.json), residual layers 6, 9 gave NLL 1.49 and 67%
distinct bigrams, all six of 5-10 NLL 3.48 and 51% ("music" became "to your the (ex. (no note, no sol, no, no"),
6, 9, 12, 15 NLL 2.59. So the default steers the fitted layer nearest to each of these depths, never more layers than
there are depths."""


@dataclass(frozen=True)
class SteerConfig:
    """What to steer and how."""

    lambdas: tuple[float, ...] = ()
    """Strengths to generate with (0 = unsteered, always included); empty = the default for the concept."""
    unit: str = "norm"
    """``norm`` (percent of each layer's median token norm, unit direction) or ``absolute`` (paper)."""
    layers: tuple[int, ...] = ()
    """Layers to steer; empty = the default steering layers among the fitted ones."""
    subject: str | None = None
    """Subject model (default: that of the latest alignment)."""
    method: str = "procrustes"
    """Translation method."""
    site: str | None = None
    """Steered site; None = the steering site among those fitted (:data:`atlascli.sites.STEER_SITES`)."""
    pooling: str = "auto"
    """Which alignments steer (:data:`atlascli.steering.POOLINGS`): by default the word-aligned T at each layer that
    has one (``atlas fit --pooling word``), else the max-pooled one."""
    random: bool = False
    """Also steer along a random direction of the same norm, at the same strengths (baseline)."""
    chat: bool | None = None
    """Wrap prompts in the chat template; None = when the tokenizer has one (instruct models)."""
    max_new_tokens: int = 60
    """Tokens to generate."""
    sample: bool = False
    """Sample instead of greedy decoding."""
    repetition_penalty: float = REPETITION_PENALTY
    """Penalty on tokens already in the text (:class:`atlascli.steering.GenerationConfig`); 1 = none (the paper's
    decoding)."""
    seed: int = 0
    """Seed of sampling and of the random direction."""
    default_prompt: bool = False
    """With no prompts given: use :data:`DEFAULT_PROMPTS` for the chat mode the model ends up in."""
    device: str = "cpu"
    """Device of the subject model (cpu, cuda, auto)."""
    dtype: str = "float32"
    """Weights dtype of the subject model (float32, bfloat16, float16)."""
    trust_remote_code: bool = False
    """Allow the subject's own model code from the Hub (off unless asked)."""

    def __post_init__(self) -> None:
        from atlascli.models import _dtype, check_site, resolve_device
        from atlascli.steering import check_pooling, check_unit
        from atlascli.translate import check_method

        check_pooling(self.pooling)
        check_unit(self.unit)
        check_method(self.method)
        if self.site is not None:
            check_site(self.site)
        resolve_device(self.device)
        _dtype(self.dtype)
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}", "e.g. 60")
        if any(layer < 0 for layer in self.layers):
            raise InputError(f"layers must be >= 0, got {list(self.layers)}", "e.g. --layers 3,12")
        if any(not torch.isfinite(torch.tensor(x)) for x in self.lambdas):
            raise InputError("lambda must be finite", "e.g. --lambda 35")
        self.generation(True)  # checks the repetition penalty

    def generation(self, chat: bool) -> Any:
        """The :class:`atlascli.steering.GenerationConfig` of these settings."""
        from atlascli.steering import GenerationConfig

        return GenerationConfig(max_new_tokens=self.max_new_tokens, sample=self.sample, seed=self.seed, chat=chat,
                                repetition_penalty=self.repetition_penalty)


@dataclass(frozen=True)
class SteerOutcome:
    """Generations per strength, and how they were made."""

    query: ConceptQuery
    """The resolved concept."""
    subject: str
    """Subject model."""
    site: str
    """Steered site."""
    layers: list[int]
    """Steered layers."""
    layers_default: bool
    """Whether the layers were chosen by default (say so)."""
    unit: str
    """Unit of the lambdas."""
    lambda_source: str
    """Where the default lambda came from (``default``, ``paper Table 6``) or ``given``."""
    chat: bool
    """Whether the chat template was applied."""
    prompts: list[str]
    """The prompts."""
    generations: dict[float, list[str]]
    """lambda -> one continuation per prompt (0 = unsteered)."""
    multipliers: dict[float, dict[int, float]] = field(default_factory=dict)
    """lambda -> the absolute multiplier of s_c applied at each layer."""
    vector_norms: dict[int, float] = field(default_factory=dict)
    """|s_c| per layer."""
    site_norms: dict[int, float] = field(default_factory=dict)
    """Median token norm per layer on the prompts."""
    random_generations: dict[float, list[str]] = field(default_factory=dict)
    """With ``random``: lambda -> continuations steered along a random direction of the same norm."""
    note: str | None = None
    """Advice shown with the result (e.g. how to fit the residual stream when only neurons are fitted)."""
    not_steered: list[int] = field(default_factory=list)
    """With default layers: the layers fitted at the site that the default left out (see :data:`STEER_AT`)."""
    pooling: str = "max"
    """What the steered layers' alignments were fitted on: ``word``, ``max`` or ``mixed``."""
    word_hits: int | None = None
    """At word-aligned layers with a text query: how many words of the examples matched the text (0: the query
    joined every word of the examples instead); None otherwise."""


def pooling_of(alignments: list[Any]) -> str:
    """``word``, ``max`` or ``mixed``: what the steered alignments were fitted on."""
    from atlascli.sites import is_word_pooled

    kinds = {"word" if is_word_pooled(a) else "max" for a in alignments}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def resid_advice(subject: str, site: str, n_layers: int) -> str | None:
    """When steering fell back to a site other than the residual stream: the fit that would steer better."""
    if site == "resid":
        return None
    layers = sorted({max(1, round(depth * n_layers)) for depth in STEER_AT["resid"]})  # what the default steers
    return (f"steering at {site}: the residual stream of {subject} is not fitted (on SmolLM2 it moved 93% of 30 "
            f"concepts against 77% for MLP neurons, at the same fluency); `atlas fit --subject {subject} --site resid "
            f"--layers {','.join(map(str, layers))}` makes it the default")


def many_layers_note(n_steered: int, site: str) -> str | None:
    """When more layers are steered than the default's :data:`STEER_AT` depths: lambda adds up over layers."""
    calibrated = len(STEER_AT.get(site, STEER_AT["mlp"]))
    if n_steered <= calibrated:
        return None
    return (f"{n_steered} layers steered, each with the whole lambda (it is per layer and adds up); the default steers "
            f"{calibrated} at {site} (on 30 tuning concepts, six residual layers at lambda 35 raised the steered text's "
            "NLL from 1.49 to 3.48 nats/token): if the text breaks, lower --lambda or steer fewer layers")


def default_layers(fitted: list[int], n_layers: int, site: str = "mlp") -> list[int]:
    """The fitted layers inside the site's :data:`STEER_DEPTH` of the model, one per :data:`STEER_AT` depth (the one
    nearest to it, earlier on a tie); when none is inside, the fitted layer nearest to that window."""
    lo, hi = STEER_DEPTH.get(site, STEER_DEPTH["mlp"])
    inside = [layer for layer in fitted if lo * n_layers <= layer <= hi * n_layers]
    if not fitted:
        return []
    if not inside:
        mid = (lo + hi) / 2 * n_layers
        return [min(fitted, key=lambda layer: (abs(layer - mid), layer))]
    chosen: list[int] = []
    for depth in STEER_AT.get(site, STEER_AT["mlp"]):
        left = [layer for layer in inside if layer not in chosen]
        if left:
            chosen.append(min(left, key=lambda layer: (abs(layer - depth * n_layers), layer)))
    return sorted(chosen)


def fitted_layers(registry: Registry, atlas: Any, subject: str | None, method: str,
                  site: str | None = None, pooling: str = "auto") -> tuple[str, str, list[int]]:
    """The subject (given or latest), the steering site (given, else the first of
    :data:`atlascli.sites.STEER_SITES` that is fitted) and the layers with a ``method`` alignment to ``atlas`` there."""
    from atlascli.steering import steering_alignments

    subject, site, found = steering_alignments(registry, atlas, subject, method, site, pooling)
    return subject, site, sorted({int(a.provenance["layer"]) for a in found})


def check_steer(cfg: SteerConfig, atlas: Any, registry: Registry) -> tuple[str, str, list[int]]:
    """What can be checked before any model loads: the subject, site and method have alignments to ``atlas`` and the
    asked layers are fitted. Returns the subject, site and fitted layers."""
    subject, site, fitted = fitted_layers(registry, atlas, cfg.subject, cfg.method, cfg.site, cfg.pooling)
    missing = [layer for layer in cfg.layers if layer not in fitted]
    if missing:
        from atlascli.preflight import check_subject_depth

        check_subject_depth(subject, missing)
        raise InputError(f"layer(s) {missing} of {subject} have no {cfg.method} alignment at {site} "
                         f"(fitted layers: {', '.join(map(str, fitted))})",
                         f"steer fitted layers, or run `atlas fit --subject {subject} --site {site} "
                         f"--layers {','.join(map(str, missing))} --method {cfg.method} --atlas {atlas.id}`")
    return subject, site, fitted


def run_steer(query: ConceptQuery, prompts: list[str], cfg: SteerConfig, atlas: Any,
              registry: Registry | None = None, lm: Any | None = None, concept_name: str | None = None) -> SteerOutcome:
    """Generate unsteered and steered continuations of ``prompts`` along ``query``."""
    from atlascli.pinned import check_fitted_on, load_pinned, one_revision
    from atlascli.steering import (
        absolute_lambdas,
        random_like,
        site_norms,
        steer_sweep,
        steer_vectors,
        steering_alignments,
    )

    registry = registry or Registry()
    if not prompts and not cfg.default_prompt:
        raise InputError("no prompts", "give --prompt or --prompts FILE")
    subject, site, fitted = check_steer(cfg, atlas, registry)
    lams, lam_source = list(cfg.lambdas), "given"
    if not lams:
        paper = None
        if concept_name:
            from atlascli.concepts import builtin_lambda

            paper = builtin_lambda(concept_name, atlas)
        lams, lam_source = ([paper], "paper Table 6") if paper is not None else ([DEFAULT_LAMBDA], "default")
    if lm is None:  # the subject at the revision the alignments it will steer were fitted on
        found = steering_alignments(registry, atlas, subject, cfg.method, site, cfg.pooling)[2]
        newest = {int(a.provenance["layer"]): a for a in found}  # (what concept_vectors takes per layer)
        steered = [newest[layer] for layer in cfg.layers if layer in newest] or [found[-1]]
        lm = load_pinned(subject, one_revision(steered), f"alignment {steered[-1].id}", cfg.device, cfg.dtype,
                         cfg.trust_remote_code)
    n_layers = int(lm.n_layers)
    layers = list(cfg.layers) or default_layers(fitted, n_layers, site)
    vectors, arts, word_hits = steer_vectors(query, registry, atlas, subject, layers, cfg.method, site, cfg.pooling,
                                             str(lm.device))
    check_fitted_on(lm, arts)
    chat = bool(getattr(lm.tokenizer, "chat_template", None)) if cfg.chat is None else cfg.chat
    prompts = list(prompts) or [DEFAULT_PROMPTS["chat" if chat else "raw"]]
    norms = site_norms(lm, site, sorted(vectors), prompts, chat=chat) if cfg.unit == "norm" else {}
    per_unit = absolute_lambdas(vectors, 1.0, cfg.unit, norms, site)  # the multiplier of s_c per unit of lambda
    sweep = sorted({0.0, *lams}, key=lambda x: (x != 0, x))
    gen = cfg.generation(chat)
    out = steer_sweep(lm, site, vectors, sweep, prompts, gen, per_unit).generations
    rnd: dict[float, list[str]] = {}
    if cfg.random:  # same norms as s_c, so the same multipliers give the same added norm
        rnd = steer_sweep(lm, site, random_like(vectors, cfg.seed), [x for x in sweep if x], prompts, gen,
                          per_unit).generations
    mult = {lam: {layer: lam * m for layer, m in per_unit.items()} for lam in sweep if lam}
    notes = [resid_advice(subject, site, n_layers) if cfg.site is None else None, many_layers_note(len(vectors), site)]
    left_out = [layer for layer in fitted if layer not in vectors] if not cfg.layers else []
    return SteerOutcome(query, subject, site, sorted(vectors), not cfg.layers, cfg.unit, lam_source, chat, prompts,
                        out, mult, {k: float(v.norm()) for k, v in vectors.items()}, norms, rnd,
                        " ".join(n for n in notes if n) or None, left_out, pooling_of(arts), word_hits)
