"""Shared plumbing of the subject -> atlas direction (`atlas explain`, `atlas read`): finding the
alignment of a layer with a helpful error, reading subject rows of T without loading the matrix,
labelling atlas features, and running the subject model on one text with per-token offsets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from atlascli.atlas.store import Atlas
from atlascli.errors import InputError, NotFoundError
from atlascli.registry import Artifact, Registry
from atlascli.translate import StoredTranslation

FILE = "translation.safetensors"


@dataclass(frozen=True)
class ConceptHit:
    """One atlas concept with its weight (explain) or score (read)."""

    index: int
    """Atlas feature index."""
    label: str
    """Its display label (``Atlas.label``); empty for unlabelled atlases."""
    value: float
    """T[k, j] for explain; the mapped activation â_c[j] for read."""
    share: float | None = None
    """explain: T[k, j] / |T[k, :]|, comparable across methods (the row's cosine with e_j)."""
    coherence: float | None = None
    """Label coherence when the atlas records it (higher = more coherent)."""
    coherent: bool | None = None
    """Whether the label was judged coherent, when recorded."""


# ----------------------------------------------------------------------------- alignments


def _fit_hint(subject: str | None, layer: int | str, method: str) -> str:
    subj = f" --subject {subject}" if subject else ""
    return f"`atlas fit{subj} --layer {layer} --method {method}`"


def find_alignments(registry: Registry, layers: list[int] | None, subject: str | None = None,
                    method: str = "procrustes", atlas: str | None = None,
                    alignment: str | None = None, site: str | None = None) -> list[Artifact]:
    """One alignment per requested layer (the most recent match), all of the same subject and site (``site``, else
    the first fitted of :data:`atlascli.sites.FEATURE_SITES`: MLP neurons before the residual stream).

    ``layers=None`` means every fitted layer of that subject and method. A missing layer is a
    :class:`NotFoundError` naming the layers that exist and the ``atlas fit`` command to run.
    """
    if alignment:
        art = registry.get(alignment, "alignment")
        if layers and int(art.provenance["layer"]) not in layers:
            raise InputError(f"alignment {art.id} is of layer {art.provenance['layer']}, not {layers}",
                             "drop --layer or pick another alignment")
        return [art]
    from atlascli.sites import sentence_pooled
    from atlascli.translate import check_method

    cands = sentence_pooled(registry.find("alignment", method=check_method(method)))
    if atlas is not None:
        atlas_id = resolve_atlas_id(atlas, registry)
        cands = [a for a in cands if a.provenance.get("atlas") == atlas_id]
    if subject is None and cands:
        subject = cands[-1].provenance.get("subject")
    cands = [a for a in cands if a.provenance.get("subject") == subject]
    if cands:
        from atlascli.sites import FEATURE_SITES, choose_site

        _, cands = choose_site(cands, site, FEATURE_SITES)
    if not cands:
        from atlascli.sites import fitted_summary

        raise NotFoundError(f"no {method} alignment" + (f" of {subject}" if subject else "") + " in the registry "
                            f"(fitted: {fitted_summary(registry.list('alignment'))})",
                            f"fit one with {_fit_hint(subject, layers[0] if layers else 12, method)}")
    if not layers and atlas is None:  # every fitted layer: those aligned to the most recent atlas
        cands = [a for a in cands if a.provenance.get("atlas") == cands[-1].provenance.get("atlas")]
    by_layer: dict[int, Artifact] = {}
    for a in cands:  # oldest first: the most recent wins
        by_layer[int(a.provenance["layer"])] = a
    if not layers:
        return [by_layer[k] for k in sorted(by_layer)]
    missing = [k for k in layers if k not in by_layer]
    if missing:
        from atlascli.preflight import check_subject_depth

        check_subject_depth(subject, missing)
        raise NotFoundError(f"no {method} alignment of {subject} at layer {', '.join(map(str, missing))} "
                            f"(fitted layers: {', '.join(map(str, sorted(by_layer)))})",
                            f"fit it with {_fit_hint(subject, missing[0], method)}")
    return [by_layer[k] for k in layers]


def resolve_atlas_id(ref: str, registry: Registry) -> str:
    """Atlas id from an id, prefix or name."""
    named = registry.latest("atlas", name=ref)
    art = named or registry.get(ref, "atlas")
    return str(art.provenance.get("weights_id") or art.id)  # alignments name the atlas whose SAE they were fitted to


def alignment_atlas(art: Artifact, registry: Registry) -> Atlas | None:
    """The labelled atlas an alignment was fitted to (None for dense or unlabelled targets)."""
    ref = art.provenance.get("atlas")
    if not ref:
        return None
    relabelled = registry.find("atlas", weights_id=ref)  # the newest labels of the same SAE weights
    if relabelled:
        return Atlas(relabelled[-1])
    if not registry.exists(ref, "atlas"):
        return None
    return Atlas(registry.get(ref, "atlas"))


def hit(atlas: Atlas | None, index: int, value: float, share: float | None = None) -> ConceptHit:
    """A labelled concept; coherence keys are optional in atlas label records."""
    if atlas is None or index >= atlas.width:
        return ConceptHit(index, "", value, share)
    rec = atlas.feature(index)
    coh = rec.get("coherence")
    ok = rec.get("coherent")
    return ConceptHit(index, atlas.label(index), value, share, None if coh is None else float(coh),
                      None if ok is None else bool(ok))


def check_subject_features(features: list[int], tr: StoredTranslation, art: Artifact) -> None:
    """Clear error for subject feature indices outside the translation's width."""
    bad = [k for k in features if not 0 <= k < tr.ds]
    if bad:
        p = art.provenance
        raise InputError(f"subject feature {bad[0]} does not exist: layer {p.get('layer')} ({p.get('site', '?')}) of "
                         f"{p.get('subject')} has features 0..{tr.ds - 1}", "pick --feature in that range")


def subject_rows(tr: StoredTranslation, features: list[int]) -> torch.Tensor:
    """Rows T[k, :] for subject features k as [len(features), dc] float32.

    T is stored transposed (``Tt``, [dc, ds], row-major), so row k of T is column k of ``Tt``: a
    strided slice of dc floats; the matrix itself is never loaded.
    """
    from safetensors import safe_open

    if not features:
        return torch.empty(0, tr.dc)
    with safe_open(str(tr.path), framework="pt") as f:
        sl = f.get_slice("Tt")
        return torch.stack([sl[:, int(k):int(k) + 1][:, 0] for k in features]).float()


def map_to_atlas(tr: StoredTranslation, x: torch.Tensor, block_bytes: int = 1 << 26) -> torch.Tensor:
    """â_c = T^T x for each row x of ``x`` [n, ds] -> [n, dc], streaming ``Tt`` in row blocks of at most
    ``block_bytes`` (float32 throughout; memory ~ one block, never the float64 matrix)."""
    from safetensors import safe_open

    if x.shape[-1] != tr.ds:
        raise InputError(f"subject activations have {x.shape[-1]} features, the translation {tr.ds}",
                         "the alignment belongs to another layer, site or model")
    xt = x.float().T.contiguous()
    out = torch.empty(x.shape[0], tr.dc)
    step = max(1, block_bytes // (4 * tr.ds))
    with safe_open(str(tr.path), framework="pt") as f:
        sl = f.get_slice("Tt")
        for a in range(0, tr.dc, step):
            b = min(tr.dc, a + step)
            out[:, a:b] = (sl[a:b].float() @ xt).T
    return out


# ----------------------------------------------------------------------------- running the subject


@dataclass(frozen=True)
class TokenRun:
    """The subject model's activations on one text."""

    token_ids: list[int]
    """Token ids fed to the model (after truncation)."""
    tokens: list[str]
    """Their surface strings."""
    offsets: list[tuple[int, int]]
    """Character span of each token in the text ((0, 0) for special tokens)."""
    real: torch.Tensor
    """[seq] bool: tokens pooled over (attended, not special), as in extraction."""
    acts: dict[int, torch.Tensor]
    """layer -> [seq, width] float32 activations."""
    n_tokens_full: int
    """Tokens the whole text would have had without truncation."""


def context_length(lm: Any) -> int:
    """The most tokens the subject model takes: the smaller of its position table and the tokenizer's limit."""
    cfg = lm.model.config
    cands = [getattr(cfg, k, None) for k in ("max_position_embeddings", "n_positions")]
    tmax = getattr(lm.tokenizer, "model_max_length", None)
    cands.append(tmax if isinstance(tmax, int) and tmax < 10**7 else None)
    vals = [int(c) for c in cands if isinstance(c, int) and c > 0]
    return min(vals) if vals else 2048


@torch.inference_mode()
def run_text(lm: Any, text: str, sites: dict[str, list[int]], max_length: int) -> TokenRun:
    """Tokenise ``text`` (truncated to ``max_length`` tokens) and record ``site -> layers`` in one pass per site."""
    from atlascli.hooks import record_sites, run_until

    tok = lm.tokenizer
    full = len(tok(text, truncation=False)["input_ids"])
    fast = bool(getattr(tok, "is_fast", False))
    enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt", return_special_tokens_mask=True,
              return_offsets_mapping=fast)
    ids = enc["input_ids"][0]
    real = enc["attention_mask"][0].bool() & ~enc["special_tokens_mask"][0].bool()
    if not real.any():
        real = enc["attention_mask"][0].bool()
    if fast:
        offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"][0].tolist()]
        tokens = [text[a:b] if b > a else tok.convert_ids_to_tokens(int(i)) for (a, b), i in zip(offsets, ids)]
    else:
        tokens = [tok.decode([int(i)]) for i in ids]
        offsets = [(0, 0)] * len(tokens)
    acts: dict[int, torch.Tensor] = {}
    for site, layers in sites.items():
        with record_sites(lm.model, layers, site) as store:
            run_until(lm.model, input_ids=ids[None].to(lm.device), attention_mask=enc["attention_mask"].to(lm.device))
        for layer in layers:
            acts[layer] = store[layer][0].float().cpu()
    return TokenRun(ids.tolist(), tokens, offsets, real, acts, full)
