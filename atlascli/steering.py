"""Steering along atlas concepts (paper eq. 4): a(mod) = (a + lambda s) * |a| / |a + lambda s|, per token,
at one or many layers at once; hooks always remove themselves."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from atlascli.errors import InputError
from atlascli.hooks import add_to_sites


def renormalised_add(vector: torch.Tensor, lam: float | torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The edit of eq. 4 for one site: add lam * vector, then rescale each token to its original norm. ``lam`` is one
    number, or one per batch row (a [batch] tensor: several strengths in one forward pass; a row with lambda 0 comes
    out unchanged, bit for bit)."""
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
    rows = lam.double() if isinstance(lam, torch.Tensor) else None

    def edit(a: torch.Tensor) -> torch.Tensor:
        key = (a.device, a.dtype)
        lv = cache.get(key)
        if lv is None:  # lam * s once per device/dtype, not once per forward call
            if rows is None:
                scaled = float(lam) * vector.double()
            elif len(rows) != a.shape[0]:
                raise InputError(f"{len(rows)} per-row lambdas for a batch of {a.shape[0]}",
                                 "give one lambda per row of the batch")
            else:
                scaled = rows.reshape(-1, *[1] * (a.dim() - 1)) * vector.double()
            lv = cache[key] = scaled.to(device=a.device, dtype=a.dtype)
        b = a + lv
        scale = torch.linalg.vector_norm(a, dim=-1, keepdim=True) / torch.linalg.vector_norm(
            b, dim=-1, keepdim=True).clamp_min(1e-12)
        return b.mul_(scale)

    return edit


@contextmanager
def steering(model: nn.Module, site: str, vectors: dict[int, torch.Tensor],
             lambdas: dict[int, float] | dict[int, torch.Tensor]) -> Iterator[None]:
    """Steer ``model`` while inside the block: layer -> s_c, with a per-layer lambda (a number, or one per batch
    row)."""
    missing = set(vectors) - set(lambdas)
    if missing:
        raise InputError(f"no lambda for layer(s) {sorted(missing)}", "give one lambda or one per layer")
    with add_to_sites(model, site, {layer: renormalised_add(v, lambdas[layer]) for layer, v in vectors.items()}):
        yield


@torch.inference_mode()
def site_norms(lm: Any, site: str, layers: list[int], prompts: list[str], chat: bool = True) -> dict[int, float]:
    """Median per-token norm of ``site`` at each layer over ``prompts`` (the scale of "relative" lambdas:
    MLP-neuron norms of SmolLM2 grow ~25x from layer 3 to 29, so one absolute lambda cannot fit all layers)."""
    from atlascli.hooks import record_sites, run_until

    tok = lm.tokenizer
    tok.padding_side = "left"
    enc = tok(format_prompts(tok, prompts, chat), return_tensors="pt", padding=True,
              add_special_tokens=not (chat and tok.chat_template))
    mask = enc["attention_mask"].bool()
    with record_sites(lm.model, layers, site) as rec:
        run_until(lm.model, **{k: v.to(lm.device) for k, v in enc.items()})
    return {layer: float(rec[layer][mask.to(rec[layer].device)].float().norm(dim=-1).quantile(0.5)) for layer in layers}


LAMBDA_UNITS = ("norm", "absolute")
"""``norm``: lambda is relative to each steered layer's median token norm, along the unit direction of s, scaled per
site so that lambda = 35 is the calibrated strength (:data:`NORM_REFERENCE`): at MLP neurons a vector as long as a
typical token; it transfers across models, layers and concepts. ``absolute``: the paper's convention, lambda * s as
is (its numbers, 35 and 50, were tuned for Llama-3.1-8B's MLP neurons)."""

NORM_REFERENCE = {"mlp": 35.0, "mlp_out": 35.0 / 0.22, "resid": 35.0 / 0.22}
"""Per site, in the ``norm`` unit, the lambda whose added vector equals the layer's median token norm (so lambda = 35
adds 35 / NORM_REFERENCE of it). MLP neurons: chosen so the paper's lambdas keep their strength: on SmolLM2-135M
(layers 3, 12, 19; 8 concepts x 6 prompts, MiniLM cosine to the concept) 35% of the norm moved generations by +0.012
over unsteered, 100-120% by +0.05-0.07. The residual stream is read by every later layer, so a smaller share moves it
as far: lambda = 35 adds 22% of the norm. First 17%, chosen with bench/steer_sweep.py on 30 tuning concepts with the
paper's max-pooled T and plain greedy decoding (17% moved 93% of them at NLL 1.55 nats/token under the unsteered model;
23% moved 97% with less fluent text, NLL 1.92). `atlas steer` now steers the word-aligned T with a repetition penalty
that stops the loops, and bench/strength.py measured it again, steering as `atlas steer` does (layers 6 and 9, 7
prompts): on bench/concepts.py's 30 without London, the generations naming the concept were 93 / 105 / 117 / 112 of 203
at 17 / 19 / 22 / 24% (mean MiniLM cosine 0.294 / 0.334 / 0.342 / 0.362), so 22%, the share that names most; held out
on 24 unseen concepts: 62 -> 97 of 168, cosine 0.314 -> 0.386, wins 24/24 at both, for fluency that costs +0.38 nats
per token of the text alone under Gemma 3 270M (3.11 -> 3.49; unsteered text 3.08). (That sweep steered a word
fit with a BOS before each subject sentence, not shipped; the shipped fit at 17 -> 22% on 21 of the 24: named 57 -> 74
of 147, cosine 0.319 -> 0.386.) ``mlp_out`` (also added to the
residual stream) uses the residual stream's reference, unmeasured."""


def check_unit(unit: str) -> str:
    """``unit`` when it is one of :data:`LAMBDA_UNITS`; else a clear error."""
    if unit not in LAMBDA_UNITS:
        raise InputError(f"unknown lambda unit {unit!r}", f"use one of {', '.join(LAMBDA_UNITS)}")
    return unit


def norm_reference(site: str) -> float:
    """:data:`NORM_REFERENCE` of ``site`` (MLP neurons' for an unknown site)."""
    return NORM_REFERENCE.get(site, NORM_REFERENCE["mlp"])


def absolute_lambdas(vectors: dict[int, torch.Tensor], lam: float, unit: str,
                     norms: dict[int, float] | None = None, site: str = "mlp") -> dict[int, float]:
    """Per-layer multipliers of the raw vectors s_c that realise ``lam`` in ``unit`` at ``site``.

    ``norm``: lam / norm_reference(site) * median token norm of the layer / |s_c| (at MLP neurons lambda = 35 adds a
    vector as long as a typical token of that layer); ``absolute``: lam at every layer.
    """
    check_unit(unit)
    if unit == "absolute":
        return {layer: lam for layer in vectors}
    if norms is None or set(vectors) - set(norms):
        raise InputError("norm-relative lambdas need each layer's token norm", "pass norms from site_norms()")
    ref = norm_reference(site)
    return {layer: lam / ref * norms[layer] / max(float(v.norm()), 1e-12) for layer, v in vectors.items()}


def random_like(vectors: dict[int, torch.Tensor], seed: int = 0) -> dict[int, torch.Tensor]:
    """Random directions with the same norms (the paper's random-steering baseline)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer, v in vectors.items():
        r = torch.randn(v.shape, generator=gen)
        out[layer] = r * (v.norm() / r.norm())
    return out


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate."""

    max_new_tokens: int = 60
    """Tokens generated per prompt."""
    sample: bool = False
    """Sample (with ``temperature``/``top_p``) instead of greedy decoding."""
    temperature: float = 0.8
    """Sampling temperature."""
    top_p: float = 0.95
    """Nucleus sampling."""
    seed: int = 0
    """Seed of sampling."""
    chat: bool = True
    """Wrap prompts in the chat template when the tokenizer has one."""
    repetition_penalty: float = 1.0
    """CTRL's repetition penalty on tokens already in the text (transformers' ``repetition_penalty``); 1 = none, the
    paper's plain decoding."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise InputError(f"repetition penalty must be a positive number, got {self.repetition_penalty}",
                             "e.g. --repetition-penalty 1.15 (1 = none)")


def format_prompts(tokenizer: Any, prompts: list[str], chat: bool) -> list[str]:
    """Apply the chat template (user turn + generation prompt) when there is one and ``chat`` is on."""
    if chat and getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True) for p in prompts]
    return prompts


@torch.inference_mode()
def generate(lm: Any, prompts: list[str], cfg: GenerationConfig) -> list[str]:
    """Continuations of ``prompts`` (batched, left-padded), without the prompt text."""
    if not prompts or any(not p for p in prompts):  # " " is allowed: it is one of the paper's seed prompts
        raise InputError("empty prompt", "give non-empty prompts")
    tok = lm.tokenizer
    tok.padding_side = "left"
    texts = format_prompts(tok, prompts, cfg.chat)
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not (cfg.chat and tok.chat_template))
    enc = {k: v.to(lm.device) for k, v in enc.items()}
    torch.manual_seed(cfg.seed)
    kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "pad_token_id": tok.pad_token_id,
                              "do_sample": cfg.sample}
    if cfg.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = cfg.repetition_penalty
    if cfg.sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    out = lm.model.generate(**enc, **kwargs)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


@dataclass(frozen=True)
class SteerResult:
    """Generations per lambda (0 = unsteered)."""

    prompts: list[str]
    """The prompts."""
    generations: dict[float, list[str]]
    """lambda -> one continuation per prompt."""
    layers: list[int]
    """Steered layers."""
    vector_norms: dict[int, float] = field(default_factory=dict)
    """|s_c| per layer."""
    random: bool = False
    """Whether a random direction of the same norm was used."""


SWEEP_ROWS = 64
"""Most generations batched together by :func:`steer_sweep` (lambdas x prompts)."""


def steer_sweep(lm: Any, site: str, vectors: dict[int, torch.Tensor], lambdas: list[float], prompts: list[str],
                cfg: GenerationConfig, layer_scale: dict[int, float] | None = None) -> SteerResult:
    """Generate for every lambda of a sweep: one batch holds a row per lambda and prompt (up to :data:`SWEEP_ROWS`),
    each row steered at its own lambda (lambda 0: unchanged). Decoding is bound by reading the weights, so a pass
    over several rows costs far less than a pass per row (bench/steer_batch.py: 3.9x for 5 lambdas, 1.2x for the
    unsteered and steered columns of `atlas steer`), and greedy texts are the same either way."""
    out: dict[float, list[str]] = {}
    lams = list(dict.fromkeys(lambdas))
    group = max(1, SWEEP_ROWS // max(len(prompts), 1))
    for i in range(0, len(lams), group):
        chunk = lams[i:i + group]
        rows = torch.tensor([lam for lam in chunk for _ in prompts], dtype=torch.float64)
        texts = [p for _ in chunk for p in prompts]
        if not rows.any():
            gens = generate(lm, texts, cfg)
        else:
            per_layer = {layer: rows * (layer_scale or {}).get(layer, 1.0) for layer in vectors}
            with steering(lm.model, site, vectors, per_layer):
                gens = generate(lm, texts, cfg)
        for j, lam in enumerate(chunk):
            out[lam] = gens[j * len(prompts):(j + 1) * len(prompts)]
    return SteerResult(prompts, out, sorted(vectors), {k: float(v.norm()) for k, v in vectors.items()})


POOLINGS = ("auto", "word", "max")
"""Which alignments steer: ``word`` the word-aligned ones (:mod:`atlascli.wordfit`), ``max`` the paper's max-pooled
ones, ``auto`` the word-aligned one at each layer that has it, else the max-pooled one."""


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is one of :data:`POOLINGS`."""
    if pooling not in POOLINGS:
        raise InputError(f"unknown pooling {pooling!r}", f"use one of {', '.join(POOLINGS)}")
    return pooling


def by_pooling(alignments: list[Any], pooling: str) -> list[Any]:
    """``alignments`` (oldest first) restricted to ``pooling``; for ``auto``, the max-pooled ones first, so that where a
    layer has both, the word-aligned one comes last (and the newest per layer is what steers)."""
    from atlascli.sites import is_word_pooled

    word = [a for a in alignments if is_word_pooled(a)]
    sentence = [a for a in alignments if not is_word_pooled(a)]
    return {"word": word, "max": sentence}.get(check_pooling(pooling), sentence + word)


def steering_alignments(registry: Any, atlas: Any, subject: str | None, method: str,
                        site: str | None = None, pooling: str = "auto") -> tuple[str, str, list[Any]]:
    """The subject (given or latest), the steering site (given, else the first of
    :data:`atlascli.sites.STEER_SITES` that is fitted) and its ``method`` alignments to ``atlas`` there with ``pooling``
    (:func:`by_pooling`), oldest first."""
    from atlascli.sites import STEER_SITES, choose_site

    found = [a for a in registry.find("alignment", method=method, atlas=atlas.weights_id)
             if subject is None or a.provenance["subject"] == subject]
    if not found:
        what = f"of {subject} " if subject else ""
        others = sorted({a.provenance["subject"] for a in registry.find("alignment", atlas=atlas.weights_id)})
        fitted = f" (fitted subjects: {', '.join(others)})" if others else ""
        raise InputError(f"no {method} alignment {what}to atlas {atlas.id}{fitted}",
                         f"fit one with `atlas fit --subject {subject or 'MODEL'} --method {method} --layers ...`")
    subject = subject or found[-1].provenance["subject"]
    site, found = choose_site([a for a in found if a.provenance["subject"] == subject], site, STEER_SITES)
    chosen = by_pooling(found, pooling)
    if not chosen:
        raise InputError(f"no {pooling}-pooled {method} alignment of {subject} at {site} to atlas {atlas.id}",
                         f"fit one with `atlas fit --subject {subject} --site {site} --pooling {pooling} --layers ...`"
                         " or pass --pooling auto")
    return subject, site, chosen


def steer_vectors(query: Any, registry: Any, atlas: Any, subject: str | None, layers: list[int] | None,
                  method: str = "procrustes", site: str | None = None, pooling: str = "auto",
                  device: str = "cpu") -> tuple[dict[int, torch.Tensor], list[Any], int | None]:
    """:func:`concept_vectors`, where a word-aligned layer steers along the text query joined with its words in the
    examples (:func:`atlascli.wordfit.hybrid_query`). Returns the vectors, the alignments and how many example words
    matched the text (None when no layer is word-aligned or the query has no text and examples)."""
    from atlascli.sites import is_word_pooled
    from atlascli.translate import StoredTranslation
    from atlascli.wordfit import hybrid_query

    vectors, arts = concept_vectors(query, registry, atlas, subject, layers, method, site, pooling)
    joined = hybrid_query(query, atlas, arts, device)
    if joined is None:
        return vectors, arts, None
    q, hits = joined
    for a in arts:
        if is_word_pooled(a):
            vectors[int(a.provenance["layer"])] = StoredTranslation.from_artifact(a).similarity_dense(q)
    return vectors, arts, hits


def concept_vectors(query: Any, registry: Any, atlas: Any, subject: str | None, layers: list[int] | None,
                    method: str = "procrustes", site: str | None = None,
                    pooling: str = "auto") -> tuple[dict[int, torch.Tensor], list[Any]]:
    """s_c = T_hat q / |q| at each layer, from that layer's alignment (all fitted layers by default) at ``site``
    (default: the steering site among those fitted, :data:`atlascli.sites.STEER_SITES`) with ``pooling``."""
    from atlascli.search import subject_similarity

    subject, site, found = steering_alignments(registry, atlas, subject, method, site, pooling)
    by_layer: dict[int, Any] = {}
    for a in found:
        by_layer[int(a.provenance["layer"])] = a  # the newest wins
    wanted = layers or sorted(by_layer)
    missing = [layer for layer in wanted if layer not in by_layer]
    if missing:
        raise InputError(f"no {method} translation for layer(s) {missing} of {subject} at {site} "
                         f"(fitted: {sorted(by_layer)})",
                         f"run `atlas fit --subject {subject} --site {site} --layers {','.join(map(str, missing))} "
                         f"--method {method}`")
    arts = [by_layer[layer] for layer in wanted]
    return {layer: subject_similarity(query, by_layer[layer]) for layer in wanted}, arts
