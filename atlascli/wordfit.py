"""Word-aligned translations: T fitted on token pairs instead of max-pooled sentences.

The paper fits T on one max-pooled row per sentence. A steering vector is added at every token, and on the embedded
default it moved the text toward a concept's neighbourhood ("a city") more than toward the concept ("London"). Here the
rows are tokens: the subject's activation and the atlas code of the foundation at each place where both tokenizers end
a token at the same character (word ends, mostly), so T learns what a word is in the subject, not what a sentence
is. Only the tokens that end a content word pair by default (not a stop word, not a number): on the embedded default,
pairs at "the", "of", commas and word pieces were 59% of the rows and spent T's 576 dimensions on what every
sentence shares; without them the steered text names the concept far more often (see :data:`TOKENS`). Same Orthogonal
Procrustes (eq. 2) on row-L2-normalised rows, streamed through
:class:`atlascli.translate.moments.Moments`; the result is an ordinary ``alignment`` artifact with
``pooling: word`` in its provenance, which steering prefers (and evaluate's steering table scores in a row of its
own) and search, explain, read and evaluate's quality and retrieval leave alone (they rank max-pooled sentences).
The mean atlas code of the pairs is kept with it (``word_stats.safetensors``): a query from the words of examples is
their mean code minus it (:func:`word_query`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from atlascli.errors import InputError
from atlascli.extract import _pool_mask
from atlascli.models import DEFAULTS
from atlascli.registry import Artifact, Registry, slug
from atlascli.registry.files import atomic_save_tensors, sha256_json
from atlascli.sites import is_word_pooled

__all__ = ["TOKENS", "WordFitConfig", "content_ends", "fit_words", "is_word_pooled", "mean_word_code", "shared_ends",
           "word_query", "word_settings", "word_tokens"]

ProgressFn = Callable[[str, int, int], None]
"""Progress callback: (stage, done, total)."""

CHECKPOINT = "partial.safetensors"
"""The running sums a word fit keeps in its staging folder (removed before commit): a rerun resumes from them."""
_WORD = re.compile(r"\w+")
TOKENS = ("content", "all")
"""Which shared token ends become rows of a word fit. ``content``: the token that ends a content word (a word that is
not a stop word of :func:`atlascli.atlas.labels.stop_words` and not a number), the default. ``all``: every token where
both tokenizers end one (stop words, punctuation and word pieces too; the first version). On the embedded default
(SmolLM2 residual layers 6 and 9, the first 4,000 training sentences: 20,520 content pairs of 50,350) and 12 design
concepts steered on 7 prompts at lambda 35, ``content`` named the concept in 15 of 84 generations against 5, at mean
MiniLM cosine 0.256 against 0.204 (README, steering section)."""


@dataclass(frozen=True)
class WordFitConfig:
    """What to fit on word-aligned tokens."""

    subject: str = DEFAULTS["subject"]
    """Subject model (zoo name, folder or HF id)."""
    layers: tuple[int, ...] = (6, 9)
    """Subject layers; one alignment per layer."""
    site: str = "resid"
    """Subject site (the steering site; mlp and mlp_out work too)."""
    atlas: str | None = None
    """Atlas id, prefix or name (default: the latest atlas). Needs an SAE atlas: the pairs are its codes."""
    dataset: str = "default"
    """Dataset id or name (its train split is used)."""
    limit: int = 4000
    """Use the first N training sentences (about 12 token pairs each, 5 of them content words)."""
    tokens: str = "content"
    """Which shared token ends pair: ``content`` or ``all`` (:data:`TOKENS`)."""
    batch: int = 32
    """Sentences per forward pass of both models."""
    max_length: int = 64
    """Tokens per sentence (longer ones are truncated)."""
    checkpoint_every: int = 16
    """Batches between checkpoints of the running sums (the unit of resumption)."""
    device: str = "cpu"
    """Device of both models."""
    dtype: str = "float32"
    """Forward dtype of the subject (the foundation runs in the atlas's own dtype, as its codes always do)."""
    revision: str | None = None
    """Hub revision of the subject; the commit it resolves to is recorded."""
    trust_remote_code: bool = False
    """Allow the subject's own model code from the Hub (off unless asked)."""

    def __post_init__(self) -> None:
        if self.limit < 2:
            raise InputError(f"limit must be at least 2 sentences, got {self.limit}", "e.g. --limit 4000")
        if self.tokens not in TOKENS:
            raise InputError(f"unknown token choice {self.tokens!r}", f"use one of {', '.join(TOKENS)}")
        for name in ("batch", "max_length", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}", "use a positive number")
        if any(layer < 0 for layer in self.layers) or not self.layers:
            raise InputError(f"layers must be non-negative, got {list(self.layers)}", "e.g. --layers 6,9")


def shared_ends(a_offsets: list[tuple[int, int]], a_real: list[bool], b_offsets: list[tuple[int, int]],
                b_real: list[bool]) -> list[tuple[int, int]]:
    """Token pairs (index in a, index in b) that end at the same character of the text, real tokens only, the first
    position of either sequence left out (it is the attention sink: massive norms, no meaning)."""
    ends: dict[int, int] = {}
    for j, ((start, end), real) in enumerate(zip(b_offsets, b_real, strict=True)):
        if real and j > 0 and end > start:
            ends[end] = j
    out = []
    for i, ((start, end), real) in enumerate(zip(a_offsets, a_real, strict=True)):
        if real and i > 0 and end > start and end in ends:
            out.append((i, ends[end]))
    return out


def word_tokens(text: str, offsets: list[tuple[int, int]], real: list[bool]) -> list[tuple[str, int]]:
    """Each word of ``text`` (a run of letters or digits) with the index of the token that ends it: the first real
    token whose span reaches the word's end."""
    out = []
    for w in _WORD.finditer(text):
        for j, ((start, end), ok) in enumerate(zip(offsets, real, strict=True)):
            if ok and start < w.end() <= end:
                out.append((w.group(), j))
                break
    return out


def content_ends(text: str, offsets: list[tuple[int, int]], real: list[bool], stops: frozenset[str]) -> set[int]:
    """Indices of the tokens that end a content word of ``text`` (:func:`word_tokens`; not in ``stops``, lower-cased,
    and not all digits)."""
    return {j for w, j in word_tokens(text, offsets, real) if (lw := w.lower()) not in stops and not lw.isdigit()}


def encode(lm: Any, texts: list[str], max_length: int) -> dict[str, Any]:
    """Right-padded batch with character offsets (a fast tokenizer is needed to pair tokens across models)."""
    tok = lm.tokenizer
    if not getattr(tok, "is_fast", False):
        raise InputError(f"the tokenizer of {lm.name} gives no character offsets (not a fast tokenizer)",
                         "word-aligned fits need a fast (Rust) tokenizer; fit the paper's max-pooled T instead")
    tok.padding_side = "right"
    return dict(tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                    return_offsets_mapping=True, return_special_tokens_mask=True))


def _offsets(enc: dict[str, Any], row: int) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in enc["offset_mapping"][row].tolist()]


def run_sites(lm: Any, enc: dict[str, Any], layers: list[int], site: str) -> dict[int, torch.Tensor]:
    """Per-token activations [batch, tokens, d] of ``site`` at ``layers`` (the forward stops after the last)."""
    from atlascli.hooks import record_sites, run_until

    with torch.inference_mode(), record_sites(lm.model, layers, site) as store:
        run_until(lm.model, input_ids=enc["input_ids"].to(lm.device),
                  attention_mask=enc["attention_mask"].to(lm.device))
        return {layer: store[layer].float().cpu() for layer in layers}


def atlas_token_codes(flm: Any, sae: Any, enc: dict[str, Any], layer: int, site: str) -> torch.Tensor:
    """Per-token atlas codes [batch, tokens, width] (the SAE's encoding of the foundation at its layer)."""
    acts = run_sites(flm, enc, [layer], site)[layer]
    with torch.inference_mode():
        return sae.encode(acts.to(sae.W_enc.device, sae.W_enc.dtype)).clamp_min(0).float().cpu()


def pair_rows(texts: list[str], s_enc: dict[str, Any], s_acts: dict[int, torch.Tensor], f_enc: dict[str, Any],
              codes: torch.Tensor, stops: frozenset[str] | None = None) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """The paired rows of one batch: subject activations per layer [P, ds] and atlas codes [P, dc]; with ``stops``,
    only the pairs at the end of a content word (:func:`content_ends`)."""
    s_real, f_real = _pool_mask(s_enc).tolist(), _pool_mask(f_enc).tolist()
    s_idx: list[tuple[int, int]] = []
    f_idx: list[tuple[int, int]] = []
    for r, text in enumerate(texts):
        s_off = _offsets(s_enc, r)
        keep = content_ends(text, s_off, s_real[r], stops) if stops is not None else None
        for i, j in shared_ends(s_off, s_real[r], _offsets(f_enc, r), f_real[r]):
            if keep is not None and i not in keep:
                continue
            s_idx.append((r, i))
            f_idx.append((r, j))
    if not s_idx:
        return {layer: a.new_zeros(0, a.shape[-1]) for layer, a in s_acts.items()}, codes.new_zeros(0, codes.shape[-1])
    sr, si = torch.tensor(s_idx).T
    fr, fi = torch.tensor(f_idx).T
    return {layer: a[sr, si] for layer, a in s_acts.items()}, codes[fr, fi]


def _batches(n: int, size: int, start: int) -> Iterator[tuple[int, int]]:
    for lo in range(start, n, size):
        yield lo, min(n, lo + size)


def word_settings(cfg: WordFitConfig, atlas: Any, dataset: Artifact, n: int) -> dict[str, Any]:
    """The provenance of a word fit of ``n`` sentences, all but the subject's resolved revision and the layer (with
    them, it names the fit; `--dry-run` compares it to say what would be reused)."""
    return {"method": "procrustes", "pooling": "word", "subject": cfg.subject, "site": cfg.site,
            "atlas": atlas.weights_id, "atlas_version": atlas.artifact.manifest["created"], "atlas_kind": "sae",
            "dataset": dataset.id, "dataset_fingerprint": dataset.provenance["dataset_fingerprint"], "n": n,
            "normalisation": "row-l2", "max_length": cfg.max_length, "dtype": cfg.dtype, "tokens": cfg.tokens}


def fit_words(cfg: WordFitConfig, registry: Registry | None = None, progress: ProgressFn | None = None) -> list[Artifact]:
    """Fit one word-aligned Procrustes T per layer (resumable; reused when identical); returns the alignments."""
    from atlascli.atlas import resolve_atlas
    from atlascli.atlas.build import atlas_dtype
    from atlascli.atlas.labels import stop_words
    from atlascli.corpus import load_split, resolve_dataset
    from atlascli.models import load_model
    from atlascli.pinned import load_foundation
    from atlascli.preflight import check_subject_depth
    from atlascli.saes import load_atlas_sae
    from atlascli.translate.moments import Moments

    registry = registry or Registry()
    atlas = resolve_atlas(cfg.atlas, registry)
    if not atlas.artifact.files_under("sae/"):
        raise InputError(f"atlas {atlas.id} has no SAE of its own", "word-aligned fits need an SAE atlas")
    check_subject_depth(cfg.subject, list(cfg.layers))
    dataset = resolve_dataset(cfg.dataset, registry)
    sentences = load_split(dataset, "train")[:cfg.limit]
    if len(sentences) < 2:
        raise InputError(f"dataset {dataset.id} has {len(sentences)} training sentence(s)",
                         "prepare a larger one with `atlas data prepare`")
    lm = load_model(cfg.subject, cfg.device, cfg.dtype, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    bad = [layer for layer in cfg.layers if layer >= int(lm.n_layers)]
    if bad:  # a model whose depth could not be read before loading it
        raise InputError(f"layer {bad[0]} is out of range for {cfg.subject} ({lm.n_layers} layers)",
                         f"valid layers are 0..{int(lm.n_layers) - 1}")
    ap = atlas.artifact.provenance
    prov_base = {**word_settings(cfg, atlas, dataset, len(sentences)), "revision": lm.revision}
    ids = {layer: f"align-{slug(cfg.subject)}-L{layer}-{cfg.site}-procrustes-word-"
                  f"{sha256_json({**prov_base, 'layer': layer})[:10]}" for layer in cfg.layers}
    if all(registry.exists(i, "alignment") for i in ids.values()):
        return [registry.get(i, "alignment") for i in ids.values()]
    flm = load_foundation(atlas, cfg.device, dtype=atlas_dtype(ap))
    sae = load_atlas_sae(atlas.artifact, str(flm.device))
    stops = stop_words() if cfg.tokens == "content" else None
    stages = {layer: registry.stage("alignment", ids[layer], parents=[dataset.id, atlas.weights_id])
              for layer in cfg.layers}
    try:
        moments = {layer: Moments(normalised=True, raw=False) for layer in cfg.layers}
        state = _resume(stages, moments)
        done, code_sum = state if state is not None else (0, None)
        start, t0 = done, time.perf_counter()
        n_batches = 0
        for lo, hi in _batches(len(sentences), cfg.batch, done):
            texts = sentences[lo:hi]
            s_enc, f_enc = encode(lm, texts, cfg.max_length), encode(flm, texts, cfg.max_length)
            s_acts = run_sites(lm, s_enc, list(cfg.layers), cfg.site)
            codes = atlas_token_codes(flm, sae, f_enc, int(ap["layer"]), str(ap["site"]))
            rows, c = pair_rows(texts, s_enc, s_acts, f_enc, codes, stops)
            if len(c):
                for layer in cfg.layers:
                    moments[layer].update(rows[layer], c)
                sums = c.double().sum(0)
                code_sum = sums if code_sum is None else code_sum + sums
            done, n_batches = hi, n_batches + 1
            if n_batches % cfg.checkpoint_every == 0 and code_sum is not None:
                _checkpoint(stages, moments, done, code_sum)
            if progress:
                progress("word-aligned fit", done, len(sentences))
        if code_sum is None or moments[cfg.layers[0]].n < 2:
            raise InputError("no token of the two models ends at the same character",
                             "check that both tokenizers give character offsets for this dataset")
        out = []
        for layer in cfg.layers:
            out.append(_commit(stages[layer], moments[layer], code_sum, {**prov_base, "layer": layer},
                               _throughput(done - start, time.perf_counter() - t0, cfg.device)))
        return out
    finally:
        for st in stages.values():
            st.release()  # a no-op after commit; keeps the folder (and its checkpoint) for a rerun


def _checkpoint(stages: dict[int, Any], moments: dict[int, Any], done: int, code_sum: torch.Tensor) -> None:
    for layer, st in stages.items():
        m = moments[layer]
        atomic_save_tensors(st.path / CHECKPOINT, {
            "cross_n": torch.from_numpy(m.cross_n), "sum_s": torch.from_numpy(m.sum_s),
            "sum_c": torch.from_numpy(m.sum_c), "sq_s": torch.from_numpy(m.sq_s), "sq_c": torch.from_numpy(m.sq_c),
            "code_sum": code_sum, "n": torch.tensor([m.n]), "done": torch.tensor([done])})


def _resume(stages: dict[int, Any], moments: dict[int, Any]) -> tuple[int, torch.Tensor] | None:
    """Load every layer's checkpoint when all are there and agree on where they stopped, else start over."""
    from safetensors.torch import load_file

    try:
        saved = {layer: load_file(str(st.path / CHECKPOINT)) for layer, st in stages.items()}
    except Exception:  # missing or torn: start over (the sums are cheap to redo from the start)
        return None
    dones = {int(s["done"][0]) for s in saved.values()}
    if len(dones) != 1:
        return None
    for layer, s in saved.items():
        m = moments[layer]
        m._init(int(s["sum_s"].shape[0]), int(s["sum_c"].shape[0]))
        m.n = int(s["n"][0])
        m.cross_n, m.sum_s, m.sum_c = s["cross_n"].numpy().copy(), s["sum_s"].numpy().copy(), s["sum_c"].numpy().copy()
        m.sq_s, m.sq_c = s["sq_s"].numpy().copy(), s["sq_c"].numpy().copy()
    first = next(iter(saved.values()))
    return dones.pop(), first["code_sum"]


def _throughput(sentences: int, seconds: float, device: str) -> dict[str, Any]:
    """Both models' passes and the pairing, as measured by this run (what `--dry-run` plans the next word fit from)."""
    rate = sentences / seconds if sentences and seconds > 0 else None
    return {"sentences": sentences, "seconds": round(seconds, 2), "device": device,
            "sentences_per_second": None if rate is None else round(rate, 2)}


def _commit(stage: Any, moments: Any, code_sum: torch.Tensor, prov: dict[str, Any],
            throughput: dict[str, Any]) -> Artifact:
    from atlascli.translate.moments import ProcrustesFitter

    tr = ProcrustesFitter(moments).result()
    tr.save(stage.path / "translation.safetensors")
    atomic_save_tensors(stage.path / "word_stats.safetensors",
                        {"mean_code": (code_sum / moments.n).float().contiguous()})
    (stage.path / CHECKPOINT).unlink(missing_ok=True)
    return stage.commit({**prov, "pairs": int(moments.n), "shape": list(tr.shape)},
                        {"info": {**tr.info, "pairs": int(moments.n)}, "config": {"pooling": "word"},
                         "throughput": throughput})


def mean_word_code(alignment: Artifact) -> torch.Tensor:
    """The mean atlas code over the pairs a word-aligned alignment was fitted on."""
    from safetensors.torch import load_file

    alignment.verify_cached(["word_stats.safetensors"])
    return load_file(str(alignment.file("word_stats.safetensors")))["mean_code"]


def word_query(text: str, examples: list[str], atlas: Any, mean_code: torch.Tensor, flm: Any,
               max_length: int = 64) -> tuple[torch.Tensor, int]:
    """A query from the words of ``examples``: the mean atlas code at the tokens that end a word of ``text`` (same
    Snowball stem, stop words left out) minus ``mean_code``; when no example contains such a word, the mean code of
    every word they hold. Returns the dense query and how many words matched."""
    import snowballstemmer

    from atlascli.atlas.labels import stop_words
    from atlascli.saes import load_atlas_sae

    if not examples:
        raise InputError("no example sentences for a word query", "give --examples or a text concept")
    stem = snowballstemmer.stemmer("english").stemWord
    stops = stop_words()
    wanted = {stem(w) for w in _WORD.findall(text.lower()) if w not in stops}
    sae = load_atlas_sae(atlas.artifact, str(flm.device))
    p = atlas.artifact.provenance
    hits: list[torch.Tensor] = []
    every: list[torch.Tensor] = []
    for lo, hi in _batches(len(examples), 32, 0):
        texts = examples[lo:hi]
        enc = encode(flm, texts, max_length)
        codes = atlas_token_codes(flm, sae, enc, int(p["layer"]), str(p["site"]))
        real = _pool_mask(enc).tolist()
        for r, t in enumerate(texts):
            for word, j in word_tokens(t, _offsets(enc, r), real[r]):
                every.append(codes[r, j])
                if stem(word.lower()) in wanted:
                    hits.append(codes[r, j])
    src = hits or every
    if not src:
        raise InputError("the examples hold no word", "give example sentences with words")
    return torch.stack(src).mean(0) - mean_code.float(), len(hits)


def hybrid_query(query: Any, atlas: Any, alignments: list[Any], device: str = "cpu",
                 flm: Any | None = None) -> tuple[torch.Tensor, int] | None:
    """The query a word-aligned T steers along: the unit text query (its examples' pooled codes) plus the unit
    :func:`word_query` of its words in those examples, or None when no alignment is word-aligned or the query is not
    text resolved through examples. On 36 concepts at SmolLM2's residual layers 6 and 9 (lambda 35, 7 prompts) it named
    the concept in more generations than either alone and moved the text closer to it (see the README's steering
    section). Loads the atlas's foundation when ``flm`` is None."""
    import torch.nn.functional as F

    word = [a for a in alignments if is_word_pooled(a)]
    if not word or not query.examples or not query.text:
        return None
    if flm is None:
        from atlascli.atlas.build import atlas_dtype
        from atlascli.pinned import load_foundation

        flm = load_foundation(atlas, device, dtype=atlas_dtype(atlas.artifact.provenance))
    q_word, hits = word_query(query.text, query.examples, atlas, mean_word_code(word[-1]), flm)
    q = query.dense(atlas.width)
    return F.normalize(q, dim=0) + F.normalize(q_word, dim=0), hits
