"""`atlas atlas build|import|ls|show` and `atlas concept add|ls`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from atlascli.cli.common import REVISION_HELP, TRUST_HELP, console, emit_artifact, emit_json, err, staged_bars
from atlascli.registry import Artifact

app = typer.Typer(no_args_is_help=True, help="Concept Atlases: a foundation model's SAE with a label per feature.")
concept_app = typer.Typer(no_args_is_help=True, help="Named concept queries.")


@app.command("build")
def build(
    foundation: str = typer.Option("gemma3-270m", help="Foundation model."),
    layer: int = typer.Option(12, min=0, help="Foundation layer."),
    site: str = typer.Option("resid", help="resid | mlp_out | mlp."),
    width: int = typer.Option(4096, min=2, help="SAE features."),
    k: int = typer.Option(32, min=1, help="TopK active features per token."),
    name: str = typer.Option("default", help="Registry name."),
    dataset: str = typer.Option("default", help="Dataset (train split)."),
    train_sentences: int = typer.Option(12000, min=1, help="Sentences whose tokens train the SAE."),
    max_tokens: int = typer.Option(300_000, min=1, help="Training tokens used at most."),
    epochs: int = typer.Option(2, min=1, help="Passes over the training tokens."),
    batch_size: int = typer.Option(1024, min=1, help="Tokens per SAE training step."),
    lr: float = typer.Option(1e-3, min=1e-7, help="Adam learning rate."),
    label_sentences: int = typer.Option(12000, min=1, help="Sentences used to label features (also fit's atlas codes)."),
    top_samples: int = typer.Option(20, min=1, help="Max-activating samples per feature (labels, coherence)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16: the foundation's forward pass (bfloat16 "
                              "is ~2x faster on CPUs with AVX-512 BF16; the SAE trains in float32)."),
    revision: str | None = typer.Option(None, help=REVISION_HELP),
    trust_remote_code: bool = typer.Option(False, help=TRUST_HELP),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check every input, print the plan and its cost, exit."),
) -> None:
    """Train a TopK SAE on the foundation model with sae-lens and label every feature offline."""
    from atlascli.atlas import AtlasBuildConfig, build_atlas

    cfg = AtlasBuildConfig(name=name, foundation=foundation, layer=layer, site=site, width=width, k=k,
                           dataset=dataset, train_sentences=train_sentences, max_tokens=max_tokens, epochs=epochs,
                           batch_size=batch_size, lr=lr, label_sentences=label_sentences, top_samples=top_samples,
                           seed=seed, device=device, dtype=dtype, revision=revision,
                           trust_remote_code=trust_remote_code)
    from atlascli.cli.plan_view import PlanSink

    if dry_run:
        from atlascli.cli.plan_view import dry_run as show_dry_run
        from atlascli.plan_tasks import plan_build

        show_dry_run(lambda: plan_build(cfg), json_out)
        return
    sink = PlanSink()
    with staged_bars(json_out) as progress:
        art = build_atlas(cfg, progress=progress, on_plan=sink)
    if json_out:
        emit_artifact(art, plan=sink.json)
        return
    _summary(art)


def _summary(art: Artifact) -> None:
    p, q = art.provenance, art.meta.get("quality", {})
    table = Table(title=f"atlas {art.id}", show_header=False)
    table.add_row("foundation", f"{p['foundation']} layer {p['layer']} ({p['site']})")
    table.add_row("features", f"{p['width']:,}" + (f" (TopK k={p['k']})" if p.get("k") else ""))
    if q.get("fraction_variance_explained") is not None:
        table.add_row("variance explained", f"{q['fraction_variance_explained']:.3f} (held-out tokens)")
        table.add_row("L0 / dead", f"{q.get('l0', 0):.1f} / {q.get('dead_features', 0)} "
                                   f"({100 * q.get('dead_fraction', 0):.3g}%)")
    if q.get("coherent_fraction") is not None:
        table.add_row("coherent features", f"{q['coherent_features']:,} ({100 * q['coherent_fraction']:.1f}%; "
                                           f"coherence >= {q.get('coherence_threshold')}), "
                                           f"{q.get('wordnet_labelled', 0):,} with a WordNet category")
    table.add_row("labels", str(p.get("labels", "")))
    if p.get("relabelled_from"):
        table.add_row("relabelled from", f"{p['relabelled_from']} (same SAE weights: its alignments stay valid)")
    console.print(table)
    if p.get("source") == "trained" and int(p.get("labels_version", 1)) < 2:
        err.print("[yellow]note:[/] this atlas has the old peak-token labels; `atlas atlas label "
                  f"{art.id}` relabels it (content words, WordNet, coherence) and keeps its SAE and alignments",
                  highlight=False)


@app.command("label")
def label(
    ref: str | None = typer.Argument(None, help="Atlas id or name (latest when omitted)."),
    labeler: str | None = typer.Option(None, help="openai:MODEL to describe every feature with an LLM "
                                                  "(default: offline labels v2 only)."),
    judge_url: str | None = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL (key: $OPENAI_API_KEY)."),
    batch: int = typer.Option(10, min=1, max=100, help="Features per LLM request."),
    trust_remote_code: bool = typer.Option(False, help=TRUST_HELP + " (the foundation's tokenizer)"),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Relabel an atlas (new version, same SAE weights, alignments stay valid): offline labels v2, or LLM
    descriptions from each feature's top samples with the activating token marked. Resumable."""
    from atlascli.atlas import resolve_atlas
    from atlascli.atlas.relabel import ChatLabeler, relabel_atlas
    from atlascli.errors import InputError

    chat = None
    if labeler is not None:
        kind, _, model = labeler.partition(":")
        if kind != "openai" or not model:
            raise InputError(f"unknown labeler {labeler!r}", "use --labeler openai:MODEL --judge-url URL")
        chat = ChatLabeler(model=model, url=judge_url or "https://api.openai.com/v1")
    atlas = resolve_atlas(ref)
    with staged_bars(json_out) as progress:
        art = relabel_atlas(atlas, labeler=chat, batch=batch, progress=progress,
                           trust_remote_code=trust_remote_code)
    if json_out:
        emit_artifact(art)
        return
    _summary(art)
    llm = art.meta.get("llm_labelling") or {}
    if llm:
        console.print(f"LLM descriptions: {llm.get('described', 0):,} features; {llm.get('failed', 0):,} failed and "
                      f"{llm.get('not_reached', 0):,} not reached keep their offline label (marked in labels.json)")


@app.command("import")
def import_cmd(
    sae: str = typer.Option(..., help="sae-lens folder or RELEASE:SAE_ID (online)."),
    labels: Path = typer.Option(..., help="Neuronpedia explanations export (.json/.jsonl[.gz]) or CSV index,description."),
    foundation: str = typer.Option(..., help="Foundation model the SAE reads."),
    layer: int = typer.Option(..., help="Its layer."),
    site: str = typer.Option("resid"),
    name: str | None = typer.Option(None),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Store an existing SAE with its labels as an atlas."""
    from atlascli.atlas import import_atlas

    with err.status("importing atlas"):
        art = import_atlas(sae, labels, foundation, layer, site, name)
    emit_artifact(art) if json_out else _summary(art)


@app.command("ls")
def ls(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List atlases."""
    from atlascli.registry import Registry

    arts = Registry().list("atlas")
    if json_out:
        emit_json([{"id": a.id, "provenance": a.provenance, "quality": a.meta.get("quality")} for a in arts])
        return
    table = Table(title=f"{len(arts)} atlases")
    for col in ("id", "foundation", "layer", "features", "FVE", "source"):
        table.add_column(col)
    for a in arts:
        p, q = a.provenance, a.meta.get("quality", {})
        fve = q.get("fraction_variance_explained")
        table.add_row(a.id, p["foundation"], str(p["layer"]), str(p["width"]),
                      f"{fve:.3f}" if fve is not None else "-", p.get("source", ""))
    console.print(table)


@app.command("show")
def show(ref: str | None = typer.Argument(None, help="Atlas id or name (latest when omitted)."),
         feature: int | None = typer.Option(None, "--feature", "-f", help="Show one feature."),
         json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show an atlas, or one feature's label and max-activating samples."""
    from atlascli.atlas import resolve_atlas

    atlas = resolve_atlas(ref)
    if feature is None:
        if json_out:
            emit_artifact(atlas.artifact)
        else:
            _summary(atlas.artifact)
        return
    rec = atlas.feature(feature)
    if json_out:
        emit_json(rec)
        return
    coh = rec.get("coherence")
    console.print(f"[bold]feature {feature}[/]: {atlas.label(feature)}  (frequency {rec.get('frequency')}, coherence "
                  f"{'-' if coh is None else f'{coh:.3f}'}{'' if rec.get('coherent', True) else ', incoherent'})",
                  highlight=False)
    if rec.get("words"):
        console.print("  distinctive words: " + ", ".join(f"{w} (z={float(z):.2f})" for w, z in rec["words"]),
                      highlight=False)
    if rec.get("wordnet"):
        wn = rec["wordnet"] if isinstance(rec["wordnet"], dict) else {}
        parts = [wn.get("lexname") or "", f"lemmas {', '.join(wn.get('lemmas') or [])}" if wn.get("lemmas") else "",
                 f"shared hypernym {wn['hypernym']}" if wn.get("hypernym") else "",
                 f"{wn['synsets']} synsets among the top samples" if wn.get("synsets") else ""]
        if any(parts):
            console.print("  WordNet: " + "; ".join(p for p in parts if p), highlight=False)
    for v, s in zip(rec.get("top_values", []), rec.get("top_samples", [])):
        console.print(f"  {v:8.3f}  {s}", highlight=False)


@concept_app.command("add")
def concept_add(
    name: str,
    query: str | None = typer.Option(None, help="Text query, resolved as `atlas search` resolves it (through "
                                                "similar labelling sentences when the atlas stores them)."),
    features: str | None = typer.Option(None, help="5218,12614 or 5218:1.0,12614:0.5."),
    examples: Path | None = typer.Option(None, help="File of example sentences (mean)."),
    contrast: Path | None = typer.Option(None, help="File of contrast sentences (mean subtracted)."),
    atlas: str | None = typer.Option(None, help="Atlas (latest when omitted)."),
    top_features: int = typer.Option(5, min=1, help="Features kept for text queries (labels route)."),
    threshold: float | None = typer.Option(None, min=-1.0, max=1.0,
                                           help="Minimum similarity of the text to labels (0.25) / examples (0.2)."),
    trust_remote_code: bool = typer.Option(False, help=TRUST_HELP + " (the foundation, for --examples)"),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Save a concept query under a name."""
    from atlascli.atlas import resolve_atlas
    from atlascli.cli.cmd_search import build_query
    from atlascli.concepts import save_concept

    at = resolve_atlas(atlas)
    q = build_query(at, query, features, examples, contrast, top_features, threshold, text_name="--query",
                    example=f'atlas concept add {name} --query "dogs and cats"', trust_remote_code=trust_remote_code)
    art = save_concept(name, q, at)
    if json_out:
        emit_json({"id": art.id, "name": name, "features": q.features, "weights": q.weights})
    else:
        console.print(f"saved concept [bold]{name}[/] ({len(q.features)} atlas features) as {art.id}")


@concept_app.command("ls")
def concept_ls(atlas: str | None = typer.Option(None, help="Atlas (latest when omitted)."),
               json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List named concepts for an atlas (saved and built-in)."""
    from atlascli.atlas import resolve_atlas
    from atlascli.concepts import list_concepts

    rows = list_concepts(resolve_atlas(atlas))
    if json_out:
        emit_json(rows)
        return
    table = Table(title="concepts")
    for col in ("name", "features", "source"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], str(r["n_features"]), r["source"])
    console.print(table)


@app.command("import-preset")
def import_preset_cmd(
    preset: str = typer.Argument(..., help="gemma-scope-2b-16k-l20 (the paper's atlas) | gemma-scope-2b-65k-l20."),
    labels: Path | None = typer.Option(None, help="Use this explanations file instead of fetching Neuronpedia's export."),
    neuronpedia_url: str | None = typer.Option(None, help="Export endpoint (default $ATLAS_NEURONPEDIA_URL or "
                                               "https://www.neuronpedia.org/api/explanation/export)."),
    refresh: bool = typer.Option(False, "--refresh", help="Fetch the explanations again even when cached."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Import one of the paper's Gemma Scope atlases: SAE from sae-lens's release, labels from Neuronpedia (cached)."""
    from atlascli.atlas.presets import import_preset

    with err.status(f"importing atlas preset {preset}"):
        art = import_preset(preset, labels, neuronpedia_url, refresh)
    if json_out:
        emit_artifact(art)
        return
    _summary(art)
    console.print(f"use it with --atlas {art.provenance.get('name', preset)}", highlight=False)
