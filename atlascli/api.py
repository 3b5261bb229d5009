"""The Python API: atlas from a notebook or script, on a model you already loaded.

    import atlascli as atlas

    alignment = atlas.load_alignment(subject="smollm2-135m-instruct", layer=12)
    result = alignment.search("secrets")                  # subject features that encode the concept
    for f in result.features[:5]:
        print(f.index, round(f.score, 3))

    with atlas.steering(model, concept="london", strength=35, tokenizer=tokenizer):
        out = model.generate(**tokenizer("Tell me a joke", return_tensors="pt"), max_new_tokens=40)

Errors are the CLI's: :class:`atlascli.errors.AtlasError` subclasses with a ``hint``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from atlascli.errors import InputError


@dataclass(frozen=True)
class Alignment:
    """A fitted translation between one subject layer and a Concept Atlas."""

    artifact: Any
    """The ``alignment`` artifact (manifest, provenance, files)."""
    atlas: Any
    """The :class:`atlascli.atlas.Atlas` it translates into."""

    @property
    def subject(self) -> str:
        """Subject model."""
        return str(self.artifact.provenance["subject"])

    @property
    def layer(self) -> int:
        """Subject layer."""
        return int(self.artifact.provenance["layer"])

    @property
    def site(self) -> str:
        """Subject site (``mlp``, ``mlp_out``, ``resid``)."""
        return str(self.artifact.provenance["site"])

    def query(self, concept: str | None = None, *, features: str | None = None,
              examples: list[str] | None = None, contrast: list[str] | None = None, route: str = "auto",
              trust_remote_code: bool = False) -> Any:
        """A :class:`atlascli.search.ConceptQuery` from a text / saved concept, atlas features (``"17,901:0.5"``)
        or example sentences (mean code, minus the contrast sentences' mean; the atlas's foundation encodes them,
        running its own model code only with ``trust_remote_code``)."""
        from atlascli.concepts import load_concept
        from atlascli.search import query_from_examples, query_from_features, query_from_text

        if sum(x is not None for x in (concept, features, examples)) != 1:
            raise InputError("give exactly one of concept, features or examples", 'e.g. alignment.search("secrets")')
        if features is not None:
            return query_from_features(features, self.atlas)
        if examples is not None:
            return query_from_examples(examples, self.atlas, contrast, trust_remote_code=trust_remote_code)
        assert concept is not None
        return load_concept(concept, self.atlas) or query_from_text(concept, self.atlas, route=route)

    def direction(self, concept: str | None = None, **kwargs: Any) -> Any:
        """s = T_hat q / |q| (eq. 3): the concept as a vector over this layer's subject features [ds]."""
        from atlascli.search import subject_similarity

        return subject_similarity(self.query(concept, **kwargs), self.artifact)

    def search(self, concept: str | None = None, *, top: int = 10, samples: int = 0, aligned: int = 0,
               test_limit: int | None = None, aligned_metric: str = "standardised", **kwargs: Any) -> Any:
        """Top subject features for a concept (:class:`atlascli.search.SearchResult`); ``samples`` > 0 attaches
        each feature's max-activating test sentences and ``aligned`` > 0 the test sentences most aligned with s
        (ranked by ``aligned_metric``, :data:`atlascli.samples.ALIGNMENT_METRICS`), extracting test activations once
        when missing."""
        from atlascli.registry import Registry
        from atlascli.search_run import run_search

        return run_search(self.query(concept, **kwargs), self.artifact, top, samples, test_limit, Registry(), aligned,
                          aligned_metric)


def load_alignment(subject: str | None = None, layer: int | None = None, method: str = "procrustes",
                   atlas: str | None = None, alignment: str | None = None, site: str | None = None) -> Alignment:
    """The newest matching alignment in the registry (``$ATLAS_HOME`` or the checkout's ``make demo`` registry), at
    ``site`` (default: MLP neurons when fitted, see :data:`atlascli.sites.FEATURE_SITES`).

    >>> a = load_alignment(subject="smollm2-135m-instruct", layer=12)  # doctest: +SKIP
    """
    from atlascli.atlas import resolve_atlas
    from atlascli.registry import Registry
    from atlascli.search import resolve_alignment

    reg = Registry()
    at = resolve_atlas(atlas, reg)
    return Alignment(resolve_alignment(reg, alignment, subject, layer, method, at, site), at)


@contextmanager
def steering(model: Any, concept: str | None = None, *, features: str | None = None, strength: float = 35.0,
             unit: str = "norm", layers: list[int] | None = None, subject: str | None = None,
             atlas: str | None = None, method: str = "procrustes", tokenizer: Any | None = None,
             site: str | None = None) -> Iterator[dict[int, float]]:
    """Steer any loaded Hugging Face causal LM along an atlas concept while inside the block (eq. 4, hooks
    removed on exit, also on errors). Yields the multiplier applied at each layer.

    ``strength`` is in ``unit``: ``norm`` = `atlas steer`'s unit, relative to each layer's median token norm
    (measured once on a few calibration sentences with ``tokenizer``, or the model's own tokenizer; 35, the
    default, adds :data:`atlascli.steering.NORM_REFERENCE`'s share of it: the whole norm at MLP neurons, 22% on the
    residual stream), ``absolute`` = the paper's lambda.
    ``subject`` picks the alignments (default: the newest subject whose width matches the model); ``site`` the
    fitted site to steer (default: the residual stream when fitted, see :data:`atlascli.sites.STEER_SITES`).

    >>> with steering(model, concept="london", strength=35, tokenizer=tok):  # doctest: +SKIP
    ...     model.generate(**tok("Tell me a joke", return_tensors="pt"), max_new_tokens=40)
    """
    from atlascli.atlas import resolve_atlas
    from atlascli.models import LoadedModel
    from atlascli.registry import Registry
    from atlascli.search import query_from_features, query_from_text
    from atlascli.steer_run import default_layers, fitted_layers
    from atlascli.steering import absolute_lambdas, site_norms, steer_vectors
    from atlascli.steering import steering as steer_ctx

    reg = Registry()
    at = resolve_atlas(atlas, reg)
    if (concept is None) == (features is None):
        raise InputError("give exactly one of concept or features", 'e.g. steering(model, concept="london")')
    if features is not None:
        query = query_from_features(features, at)
    else:
        from atlascli.concepts import load_concept

        query = load_concept(concept, at, reg) or query_from_text(concept, at)  # type: ignore[arg-type]
    subject, site, fitted = fitted_layers(reg, at, subject, method, site)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path)
    param = next(model.parameters())
    lm = LoadedModel(subject, model, tokenizer, "in-memory", param.device, param.dtype)
    chosen = list(layers) if layers else default_layers(fitted, lm.n_layers, site)
    vectors, _, _ = steer_vectors(query, reg, at, subject, chosen, method, site, device=str(param.device))
    for layer, v in vectors.items():
        width = lm.width(site, layer)
        if width != v.shape[0]:
            raise InputError(f"the model's {site} width at layer {layer} is {width}, the alignment's {v.shape[0]}",
                             f"this model is not {subject}; pass subject= for the alignment that fits it")
    norms = site_norms(lm, site, sorted(vectors), _CALIBRATION, chat=False) if unit == "norm" else None
    mult = absolute_lambdas(vectors, float(strength), unit, norms, site)
    with steer_ctx(model, site, vectors, mult):
        yield mult


_CALIBRATION = ["The weather was fine and we walked to the market.", "Tell me a story about a dragon.",
                "The committee approved the budget on Monday.", "She plays the violin every evening."]
