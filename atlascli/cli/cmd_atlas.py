"""`atlas atlas build|import|ls|show` and `atlas concept add|ls`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from atlascli.cli.common import console, emit_artifact, emit_json, err, staged_bars
from atlascli.registry import Artifact

app = typer.Typer(no_args_is_help=True, help="Concept Atlases: a foundation model's SAE with a label per feature.")
concept_app = typer.Typer(no_args_is_help=True, help="Named concept queries.")


@app.command("build")
def build(
    foundation: str = typer.Option("gemma3-270m", help="Foundation model."),
    layer: int = typer.Option(12, help="Foundation layer."),
    site: str = typer.Option("resid", help="resid | mlp_out | mlp."),
    width: int = typer.Option(4096, help="SAE features."),
    k: int = typer.Option(32, help="TopK active features per token."),
    name: str = typer.Option("default", help="Registry name."),
    dataset: str = typer.Option("default", help="Dataset (train split)."),
    train_sentences: int = typer.Option(16000, help="Sentences whose tokens train the SAE."),
    max_tokens: int = typer.Option(300_000, help="Training tokens kept in memory."),
    epochs: int = typer.Option(4, help="Passes over the training tokens."),
    label_sentences: int = typer.Option(20000, help="Sentences used to label features."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Train a TopK SAE on the foundation model with sae-lens and label every feature offline."""
    from atlascli.atlas import AtlasBuildConfig, build_atlas

    cfg = AtlasBuildConfig(name=name, foundation=foundation, layer=layer, site=site, width=width, k=k,
                           dataset=dataset, train_sentences=train_sentences, max_tokens=max_tokens, epochs=epochs,
                           label_sentences=label_sentences, seed=seed, device=device)
    with staged_bars(json_out) as progress:
        art = build_atlas(cfg, progress=progress)
    if json_out:
        emit_artifact(art)
        return
    _summary(art)


def _summary(art: Artifact) -> None:
    p, q = art.provenance, art.meta.get("quality", {})
    table = Table(title=f"atlas {art.id}", show_header=False)
    table.add_row("foundation", f"{p['foundation']} layer {p['layer']} ({p['site']})")
    table.add_row("features", f"{p['width']:,}" + (f" (TopK k={p['k']})" if p.get("k") else ""))
    if q:
        table.add_row("variance explained", f"{q.get('fraction_variance_explained', float('nan')):.3f} (held-out tokens)")
        table.add_row("L0 / dead", f"{q.get('l0', 0):.1f} / {q.get('dead_features', 0)} "
                                   f"({100 * q.get('dead_fraction', 0):.1f}%)")
    console.print(table)


@app.command("import")
def import_cmd(
    sae: str = typer.Option(..., help="sae-lens folder or RELEASE:SAE_ID (online)."),
    labels: Path = typer.Option(..., help="Neuronpedia explanations export (.json/.jsonl[.gz]) or CSV index,description."),
    foundation: str = typer.Option(..., help="Foundation model the SAE reads."),
    layer: int = typer.Option(..., help="Its layer."),
    site: str = typer.Option("resid"),
    name: str | None = typer.Option(None),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Store an existing SAE with its labels as an atlas."""
    from atlascli.atlas import import_atlas

    with err.status("importing atlas"):
        art = import_atlas(sae, labels, foundation, layer, site, name)
    emit_artifact(art) if json_out else _summary(art)


@app.command("ls")
def ls(json_out: bool = typer.Option(False, "--json")) -> None:
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
         json_out: bool = typer.Option(False, "--json")) -> None:
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
    console.print(f"[bold]feature {feature}[/]: {atlas.label(feature)}  (frequency {rec.get('frequency')})")
    for v, s in zip(rec.get("top_values", []), rec.get("top_samples", [])):
        console.print(f"  {v:8.3f}  {s}", highlight=False)


@concept_app.command("add")
def concept_add(
    name: str,
    query: str | None = typer.Option(None, help="Text matched to feature labels."),
    features: str | None = typer.Option(None, help="5218,12614 or 5218:1.0,12614:0.5."),
    examples: Path | None = typer.Option(None, help="File of example sentences (mean)."),
    contrast: Path | None = typer.Option(None, help="File of contrast sentences (mean subtracted)."),
    atlas: str | None = typer.Option(None, help="Atlas (latest when omitted)."),
    top_features: int = typer.Option(5, help="Features kept for text queries."),
    threshold: float = typer.Option(0.35, help="Minimum label similarity for text queries."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Save a concept query under a name."""
    from atlascli.atlas import resolve_atlas
    from atlascli.cli.cmd_search import build_query
    from atlascli.concepts import save_concept

    at = resolve_atlas(atlas)
    q = build_query(at, query, features, examples, contrast, top_features, threshold)
    art = save_concept(name, q, at)
    if json_out:
        emit_json({"id": art.id, "name": name, "features": q.features, "weights": q.weights})
    else:
        console.print(f"saved concept [bold]{name}[/] ({len(q.features)} atlas features) as {art.id}")


@concept_app.command("ls")
def concept_ls(atlas: str | None = typer.Option(None), json_out: bool = typer.Option(False, "--json")) -> None:
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
