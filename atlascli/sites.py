"""Which fitted site a command uses when a subject has alignments at several (``mlp`` neurons, ``mlp_out``,
``resid``): inspecting features prefers neurons, steering prefers the residual stream, and an explicit ``--site``
always wins."""

from __future__ import annotations

from typing import Any

from atlascli.errors import InputError
from atlascli.models import check_site

FEATURE_SITES = ("mlp", "mlp_out", "resid")
"""Preference of search, explain, read and evaluate: MLP neurons are the subject features the paper inspects (one
unit, one max-activating sample list); the residual stream has no privileged basis."""

STEER_SITES = ("resid", "mlp_out", "mlp")
"""Preference of steer: the residual stream, what every later layer reads. Measured with bench/steer_sweep.py on
SmolLM2-135M (30 tuning concepts, atlas direction vs unsteered and random, MiniLM cosine to the concept): resid layers
6, 9 at their default strength moved 93% of the concepts (mean cosine 0.24) at NLL 1.55 nats/token under the unsteered
model; the MLP neurons of layers 3, 12, 19, 25 at theirs 77% (0.16) at NLL 1.50. MLP-neuron directions, even
supervised ones from the corpus sentences naming London, did not make the model name it in 6 prompts x 5 layer sets;
a residual direction from the same sentences did."""


def is_word_pooled(alignment: Any) -> bool:
    """Whether an alignment was fitted on word-aligned tokens (:mod:`atlascli.wordfit`, ``pooling: word``) rather than
    on the paper's max-pooled sentences."""
    return str(alignment.provenance.get("pooling", "max")) == "word"


def sentence_pooled(alignments: list[Any]) -> list[Any]:
    """The alignments fitted on max-pooled sentences: what search, explain, read and evaluate rank sentences with
    (a word-aligned T is for steering; it is used there only when named with ``--alignment``)."""
    return [a for a in alignments if not is_word_pooled(a)]


def choose_site(alignments: list[Any], site: str | None, prefer: tuple[str, ...]) -> tuple[str, list[Any]]:
    """The site to use among ``alignments`` (``site`` when given, else the first of ``prefer`` that is fitted) and the
    alignments at that site, oldest first as given."""
    fitted = sorted({str(a.provenance.get("site", "mlp")) for a in alignments})
    if site is not None:
        check_site(site)
        if fitted and site not in fitted:
            subject = alignments[-1].provenance.get("subject", "")
            raise InputError(f"no alignment of {subject} at site {site} (fitted sites: {', '.join(fitted)})",
                             f"fit one with `atlas fit --subject {subject} --site {site} --layers ...`, "
                             f"or pass --site {fitted[0]}")
    else:
        site = next((s for s in prefer if s in fitted), fitted[0] if fitted else prefer[0])
    return site, [a for a in alignments if str(a.provenance.get("site", "mlp")) == site]


def fitted_summary(alignments: list[Any], limit: int = 4) -> str:
    """What is fitted, for error messages: ``subject site layers a,b (methods)``, one entry per subject and site."""
    groups: dict[tuple[str, str], tuple[set[int], set[str]]] = {}
    for a in alignments:
        p = a.provenance
        layers, methods = groups.setdefault((str(p.get("subject")), str(p.get("site", "mlp"))), (set(), set()))
        layers.add(int(p.get("layer", -1)))
        methods.add(str(p.get("method")))
    if not groups:
        return "none"
    parts = [f"{subject} {site} layers {','.join(map(str, sorted(layers)))} ({', '.join(sorted(methods))})"
             for (subject, site), (layers, methods) in sorted(groups.items())]
    return "; ".join(parts[:limit]) + (f"; and {len(parts) - limit} more" if len(parts) > limit else "")
