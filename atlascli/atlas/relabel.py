"""Relabelling an atlas without touching its SAE: offline labels v2 for atlases built before them, or LLM
auto-interpretation of each feature from its top samples with the activating token marked (the way
Neuronpedia and delphi label SAE features). The result is a new atlas version sharing the SAE weights
(hard-linked), so alignments fitted to the old version stay valid (see :attr:`Atlas.weights_id`)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from atlascli.atlas.store import Atlas
from atlascli.errors import AtlasError, InputError
from atlascli.registry import Artifact, Registry
from atlascli.registry.files import atomic_save_tensors, atomic_write_json, read_json, sha256_json

LABEL_PROMPT = """You are labelling features of a sparse autoencoder trained on a language model.
For each feature you see its top-activating text samples; the token where the feature fires most is marked
<<like this>>. Give each feature a short, specific description of the concept it detects (at most 8 words),
or "unclear" when the samples share nothing. Answer with one JSON object mapping each feature number to its
description, e.g. {"12": "dogs and other canines", "40": "unclear"}. No other text."""


def feature_prompt(index: int, rec: dict[str, Any], n: int = 8) -> str:
    """One feature's block of the labelling prompt: its top samples with the peak token marked."""
    lines = [f"Feature {index}:"]
    for sample, token in list(zip(rec.get("top_samples", []), rec.get("top_tokens", [])))[:n]:
        marked = sample.replace(token, f"<<{token}>>", 1) if token and token in sample else sample
        lines.append(f"- {marked}")
    return "\n".join(lines)


def parse_descriptions(content: str, asked: list[int]) -> dict[int, str]:
    """``{"12": "..."}`` from a model answer (code fences and prose around it tolerated); only asked features."""
    text = content.strip()
    a, b = text.find("{"), text.rfind("}")
    if a < 0 or b <= a:
        return {}
    try:
        data = json.loads(text[a:b + 1])
    except json.JSONDecodeError:
        return {}
    out: dict[int, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            try:
                idx = int(k)
            except (TypeError, ValueError):
                continue
            if idx in asked and isinstance(v, str) and v.strip() and v.strip().lower() != "unclear":
                out[idx] = " ".join(v.split())[:120]
    return out


@dataclass
class ChatLabeler:
    """An OpenAI-compatible chat endpoint that describes features (same URL/key rules as the chat judge)."""

    model: str
    """Model name sent to the endpoint."""
    url: str = "https://api.openai.com/v1"
    """Base URL (``/chat/completions`` is appended)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the key."""
    timeout: float = 60.0
    """Seconds per request."""
    retries: int = 3
    """Attempts per batch."""
    max_consecutive_failures: int = 5
    """Give up (keep what was labelled) after this many failed batches in a row."""
    failures: list[str] = field(default_factory=list)
    """One line per failed attempt."""

    def __post_init__(self) -> None:
        from atlascli.judges import check_judge_url

        check_judge_url(self.url)

    def describe(self, blocks: dict[int, str]) -> dict[int, str]:
        """Descriptions of the features in ``blocks`` (index -> prompt block); missing ones were not given."""
        from atlascli.judges import post_chat, redact_url

        messages = [{"role": "system", "content": LABEL_PROMPT}, {"role": "user", "content": "\n\n".join(blocks.values())}]
        for _ in range(self.retries):
            try:
                payload = post_chat(self.url, self.api_key_env, self.model, 0.0, self.timeout, messages)
                content = payload["choices"][0]["message"]["content"]
                got = parse_descriptions(content, list(blocks))
                if got:
                    return got
                self.failures.append("answer held no descriptions")
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403, 404):
                    raise InputError(f"the labeler at {redact_url(self.url)} answered HTTP {exc.code}",
                                     f"check ${self.api_key_env}, --judge-url and the model name") from None
                self.failures.append(f"HTTP {exc.code}")
            except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
                self.failures.append(f"{exc.__class__.__name__}: {str(exc)[:100]}")
        return {}


def _copy_sae(src: Artifact, dst: Any) -> None:
    """Hard-link (or copy) the SAE files: same bytes, same checksums."""
    for name in src.files_under("sae/"):
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            try:
                os.link(src.path / name, target)
            except OSError:
                shutil.copy2(src.path / name, target)


def relabel_atlas(atlas: Atlas, registry: Registry | None = None, labeler: ChatLabeler | None = None,
                  batch: int = 10, progress: Callable[[str, int, int], None] | None = None,
                  trust_remote_code: bool = False) -> Artifact:
    """A new atlas version with offline labels v2 (and LLM descriptions when ``labeler`` is given).
    ``trust_remote_code``: the foundation's own model code may run (its tokenizer decodes the stored codes' tokens).

    Resumable: LLM answers are kept in the staging folder after every batch. Features the labeler could not
    describe keep their offline label and are marked ``"description": null, "llm": "failed"``."""
    from atlascli.atlas.build import LABELS_VERSION

    registry = registry or Registry()
    p = atlas.artifact.provenance
    if p.get("source") == "imported" and labeler is None:
        raise InputError(f"atlas {atlas.id} was imported with its own labels", "relabel it with --labeler openai:MODEL")
    key = sha256_json({"atlas": atlas.id, "labeler": None if labeler is None else labeler.model,
                       "labels": LABELS_VERSION})
    stem = atlas.id.rsplit("-", 1)[0].removesuffix("-relabel")
    art_id = f"{stem}-relabel-{key[:8]}"
    if registry.exists(art_id, "atlas"):
        return registry.get(art_id, "atlas")
    stage = registry.stage("atlas", art_id, parents=[atlas.id])
    if (published := stage.published) is not None:
        stage.release()
        return published
    try:
        return _relabel(atlas, stage, registry, labeler, batch, progress, trust_remote_code)
    finally:
        stage.release()  # after a failure the staging folder (and the LLM answers so far) stays, to resume


def _relabel(atlas: Atlas, stage: Any, registry: Registry, labeler: ChatLabeler | None, batch: int,
             progress: Callable[[str, int, int], None] | None, trust_remote_code: bool = False) -> Artifact:
    from atlascli.atlas.build import LABELS_VERSION, relabel_offline

    p = atlas.artifact.provenance
    _copy_sae(atlas.artifact, stage.path)
    if p.get("source") == "imported":
        stats: dict[str, Any] = {}
        records, emb = list(atlas.labels), atlas.label_embeddings
        for name in ("label_embeddings.safetensors", "examples.safetensors"):
            if name in atlas.artifact.manifest["files"]:
                shutil.copy2(atlas.artifact.file(name), stage.path / name)
    else:
        records, emb, stats = relabel_offline(atlas, stage.path, registry, progress, trust_remote_code)
    llm: dict[str, Any] = {}
    if labeler is not None:
        records, llm = _llm_pass(records, labeler, stage.path, batch, progress)
        from atlascli.embed import embed

        described = [r["index"] for r in records if r.get("description")]
        if described:
            vecs = embed([records[i]["description"] for i in described], p.get("embedder", "minilm-l6"))
            emb = emb.clone()
            emb[described] = vecs
            atomic_save_tensors(stage.path / "label_embeddings.safetensors", {"embeddings": emb})
    atomic_write_json(stage.path / "labels.json", records)
    if not (stage.path / "label_embeddings.safetensors").exists():
        atomic_save_tensors(stage.path / "label_embeddings.safetensors", {"embeddings": emb})
    prov = {**p, "relabelled_from": atlas.id, "weights_id": atlas.weights_id, "labels_version": LABELS_VERSION,
            "labeler": None if labeler is None else {"model": labeler.model, "url": _redacted(labeler.url)},
            "labels": "offline v2" + ("" if labeler is None else f" + LLM descriptions ({labeler.model})")}
    quality = {**atlas.artifact.meta.get("quality", {}), **stats}
    return stage.commit(prov, {**atlas.artifact.meta, "quality": quality, "llm_labelling": llm})


def _redacted(url: str) -> str:
    from atlascli.judges import redact_url

    return redact_url(url)


def _llm_pass(records: list[dict[str, Any]], labeler: ChatLabeler, folder: Any, batch: int,
              progress: Callable[[str, int, int], None] | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    partial = folder / "llm_answers.partial.json"
    done: dict[str, Any] = read_json(partial) if partial.exists() else {}
    todo = [r["index"] for r in records if r.get("top_samples") and str(r["index"]) not in done]
    consecutive = 0
    for a in range(0, len(todo), max(batch, 1)):
        chunk = todo[a:a + batch]
        got = labeler.describe({i: feature_prompt(i, records[i]) for i in chunk})
        for i in chunk:
            done[str(i)] = got.get(i)
        consecutive = 0 if got else consecutive + 1
        atomic_write_json(partial, done)
        if progress:
            progress("LLM labels", min(a + batch, len(todo)), len(todo))
        if consecutive >= labeler.max_consecutive_failures:
            break
    out = []
    for r in records:
        r = dict(r)
        if r.get("top_samples"):
            desc = done.get(str(r["index"]))
            r["description"] = desc
            r["llm"] = "described" if desc else ("failed" if str(r["index"]) in done else "not reached")
        out.append(r)
    n_ok = sum(1 for r in out if r.get("llm") == "described")
    if n_ok == 0 and todo:
        raise AtlasError(f"the labeler described no feature ({len(labeler.failures)} failed attempts; last: "
                         f"{labeler.failures[-1] if labeler.failures else 'none'})",
                         "check the endpoint; answers so far are kept, rerun to resume")
    partial.unlink(missing_ok=True)
    return out, {"described": n_ok, "failed": sum(1 for r in out if r.get("llm") == "failed"),
                 "not_reached": sum(1 for r in out if r.get("llm") == "not reached"),
                 "failures": labeler.failures[-20:]}
