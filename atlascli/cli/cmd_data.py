"""`atlas data prepare|show`."""

from __future__ import annotations

import typer
from rich.table import Table

from atlascli.cli.common import console, emit_artifact, err
from atlascli.registry import Artifact

app = typer.Typer(no_args_is_help=True, help="Prepare corpora (paper appendix A.2).")


@app.command("prepare")
def prepare(
    inputs: list[str] = typer.Argument(None, help=".txt/.jsonl/.parquet files or HF dataset ids; none = embedded default"),
    name: str = typer.Option("default", help="Registry name of the dataset."),
    text_field: str = typer.Option("text", help="Field with the text in .jsonl/.parquet/hub records."),
    hub_split: str = typer.Option("train", help="Split of a Hugging Face dataset."),
    hub_limit: int = typer.Option(200_000, help="Read at most this many hub records."),
    test_fraction: float = typer.Option(0.5, min=0.0, max=0.95, help="Fraction in the test split."),
    seed: int = typer.Option(0, help="Seed of the train/test shuffle."),
    max_sentences: int | None = typer.Option(None, help="Keep only this many sentences."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Split, filter, de-duplicate and split train/test; stores a fingerprinted dataset artifact."""
    from atlascli.corpus import CorpusConfig, prepare_corpus

    cfg = CorpusConfig(name=name, inputs=tuple(inputs or ()), text_field=text_field, hub_split=hub_split,
                       hub_limit=hub_limit, test_fraction=test_fraction, seed=seed, max_sentences=max_sentences)
    with err.status("preparing corpus"):
        art, warnings = prepare_corpus(cfg)
    for w in warnings:
        err.print(f"[yellow]warning:[/] {w}")
    if json_out:
        emit_artifact(art)
        return
    _show(art)


def _show(art: Artifact) -> None:
    p, stats = art.provenance, art.meta.get("stats", {})
    table = Table(title=f"dataset {art.id}", show_header=False)
    table.add_row("fingerprint", p["dataset_fingerprint"])
    table.add_row("sources", ", ".join(f"{k} ({v:,})" for k, v in stats.get("per_source", {}).items()))
    for key in ("raw", "after_length", "after_special", "after_dedup"):
        table.add_row(key.replace("_", " "), f"{stats.get(key, 0):,}")
    table.add_row("train / test", f"{p['n_train']:,} / {p['n_test']:,}")
    table.add_row("mean length", f"{art.meta.get('mean_chars', 0):.1f} chars")
    console.print(table)


@app.command("show")
def show(ref: str = typer.Argument("default", help="Dataset id or name."),
         json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show a prepared dataset."""
    from atlascli.corpus import resolve_dataset

    art = resolve_dataset(ref)
    if json_out:
        emit_artifact(art)
    else:
        _show(art)
