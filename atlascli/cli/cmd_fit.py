"""`atlas fit`."""

from __future__ import annotations

import typer
from rich.table import Table

from atlascli.cli.common import console, emit_json, parse_ints, staged_bars


def fit_cmd(
    subject: str = typer.Option("smollm2-135m-instruct", "--subject", "-s", help="Subject model."),
    layer: str = typer.Option("12", "--layer", "--layers", "-l", help="Subject layer(s), e.g. 19 or 3,12,19."),
    site: str = typer.Option("mlp", help="mlp (neurons) | mlp_out | resid."),
    atlas: str | None = typer.Option(None, help="Atlas id, activations id, or MODEL@LAYER[:SITE]; default: latest atlas."),
    method: str = typer.Option("procrustes", "--method", "-M", help="procrustes|cov|corr|linreg|semlens|all or a list."),
    dataset: str = typer.Option("default", help="Dataset id or name (train split)."),
    limit: int | None = typer.Option(None, help="Only the first N training sentences."),
    ridge: float = typer.Option(0.0, help="Ridge term for linreg."),
    k: int = typer.Option(20, help="Top-k samples per feature for semlens."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Fit translations subject -> atlas (runs or reuses the extractions it needs)."""
    from atlascli.fit import FitConfig, fit

    cfg = FitConfig(subject=subject, layers=parse_ints(layer, "layers"), site=site, atlas=atlas, methods=method,
                    dataset=dataset, limit=limit, ridge=ridge, k=k, device=device)
    with staged_bars(json_out) as progress:
        arts = fit(cfg, progress=progress)
    if json_out:
        emit_json([{"id": a.id, "provenance": a.provenance, "meta": a.meta} for a in arts])
        return
    table = Table(title="alignments")
    for col in ("id", "method", "layer", "shape", "N"):
        table.add_column(col)
    for a in arts:
        p = a.provenance
        table.add_row(a.id, p["method"], str(p["layer"]), "x".join(map(str, p["shape"])), f"{p['n']:,}")
    console.print(table)
