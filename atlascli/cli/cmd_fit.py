"""`atlas fit`."""

from __future__ import annotations

import typer
from rich.table import Table

from atlascli.cli.common import REVISION_HELP, TRUST_HELP, console, emit_json, err, parse_ints, staged_bars
from atlascli.errors import InputError


def fit_cmd(
    subject: str = typer.Option("smollm2-135m-instruct", "--subject", "-s", help="Subject model."),
    layer: str = typer.Option("12", "--layer", "--layers", "-l", help="Subject layer(s), e.g. 19 or 3,12,19."),
    site: str = typer.Option("mlp", help="mlp (neurons) | mlp_out | resid."),
    atlas: str | None = typer.Option(None, help="Atlas id, activations id, or MODEL@LAYER[:SITE]; default: latest atlas."),
    method: str = typer.Option("procrustes", "--method", "-M", help="procrustes|cov|corr|linreg|semlens|all or a list."),
    dataset: str = typer.Option("default", help="Dataset id or name (train split)."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N training sentences."),
    ridge: float = typer.Option(0.0, min=0.0, help="Ridge term for linreg."),
    k: int = typer.Option(20, min=1, help="Top-k samples per feature for semlens."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto (CUDA; a model too big for one GPU is spread over "
                                            "this node's GPUs with accelerate's device_map)."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16 (extraction dtype; the fit is float64)."),
    shard_size: int = typer.Option(2048, min=1, help="Sentences per extraction shard (unit of resumption and of "
                                                     "the work split across torchrun ranks)."),
    batch_tokens: int = typer.Option(2048, min=1, help="Token budget per extraction batch (raise it on a GPU)."),
    revision: str | None = typer.Option(None, help=REVISION_HELP),
    trust_remote_code: bool = typer.Option(False, help=TRUST_HELP),
    pooling: str = typer.Option("max", help="max: the paper's max-pooled sentences; word: token pairs where both "
                                            "tokenizers end a word (steering prefers these; procrustes only; "
                                            "--limit defaults to 4000 sentences)."),
    tokens: str | None = typer.Option(None, help="With --pooling word, which tokens pair: content (those ending a word "
                                                 "that is not a stop word or a number; the default) | all."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check every input, print the plan and its cost, exit."),
) -> None:
    """Fit translations subject -> atlas (runs or reuses the extractions it needs)."""
    from atlascli.cli.plan_view import PlanSink
    from atlascli.cli.plan_view import dry_run as show_dry_run
    from atlascli.fit import FitConfig, fit

    if pooling == "word":
        _fit_words(subject, parse_ints(layer, "layers"), site, atlas, method, dataset, limit, device, dtype, revision,
                   trust_remote_code, json_out, dry_run, tokens or "content")
        return
    if pooling != "max":
        raise InputError(f"unknown pooling {pooling!r}", "use --pooling max (the paper's) or --pooling word")
    if tokens is not None:
        raise InputError("--tokens chooses the token pairs of a word-aligned fit", "add --pooling word, or drop --tokens")
    cfg = FitConfig(subject=subject, layers=parse_ints(layer, "layers"), site=site, atlas=atlas, methods=method,
                    dataset=dataset, limit=limit, ridge=ridge, k=k, device=device, dtype=dtype, shard_size=shard_size,
                    batch_tokens=batch_tokens, revision=revision, trust_remote_code=trust_remote_code)
    if dry_run:
        from atlascli.plan_tasks import plan_fit

        show_dry_run(lambda: plan_fit(cfg), json_out)
        return
    sink = PlanSink()
    with staged_bars(json_out) as progress:
        arts = fit(cfg, progress=progress, on_plan=sink)
    for a in arts:  # the alignment health check (atlascli/fit_health.py), on stderr in both modes
        h = a.meta.get("health", {})
        if h.get("flagged"):
            err.print(f"[bold red]warning:[/] {a.id} {h['message']}", highlight=False)
    if json_out:
        emit_json({"alignments": [{"id": a.id, "provenance": a.provenance, "meta": a.meta} for a in arts],
                   "plan": sink.json})
        return
    table = Table(title="alignments")
    for col in ("id", "method", "layer", "shape", "N", "held-out R² (random)"):
        table.add_column(col)
    for a in arts:
        p, h = a.provenance, a.meta.get("health", {})
        check = f"{h['explained']:.3f} ({h['random']:.3f})" if "explained" in h else h.get("skipped", "-")
        table.add_row(a.id, p["method"], str(p["layer"]), "x".join(map(str, p["shape"])), f"{p['n']:,}",
                      f"[bold red]{check}[/]" if h.get("flagged") else check)
    console.print(table)


def _fit_words(subject: str, layers: tuple[int, ...], site: str, atlas: str | None, method: str, dataset: str,
               limit: int | None, device: str, dtype: str, revision: str | None, trust_remote_code: bool,
               json_out: bool, dry_run: bool, tokens: str) -> None:
    """`atlas fit --pooling word`: one word-aligned Procrustes T per layer (atlascli/wordfit.py)."""
    from atlascli.wordfit import WordFitConfig, fit_words

    if method != "procrustes":
        raise InputError(f"--pooling word fits procrustes only, not {method!r}", "drop --method, or use --pooling max")
    cfg = WordFitConfig(subject=subject, layers=layers, site=site, atlas=atlas, dataset=dataset,
                        limit=limit or WordFitConfig.limit, device=device, dtype=dtype, revision=revision,
                        trust_remote_code=trust_remote_code, tokens=tokens)
    if dry_run:
        from atlascli.cli.plan_view import dry_run as show_dry_run
        from atlascli.plan_tasks import plan_word_fit

        show_dry_run(lambda: plan_word_fit(cfg), json_out)
        return
    with staged_bars(json_out) as progress:
        arts = fit_words(cfg, progress=progress)
    if json_out:
        emit_json({"alignments": [{"id": a.id, "provenance": a.provenance, "meta": a.meta} for a in arts]})
        return
    table = Table(title="word-aligned alignments (steering uses them at these layers)")
    for col in ("id", "method", "layer", "shape", "sentences", "token pairs"):
        table.add_column(col)
    for a in arts:
        p = a.provenance
        table.add_row(a.id, p["method"], str(p["layer"]), "x".join(map(str, p["shape"])), f"{p['n']:,}",
                      f"{p['pairs']:,} ({p.get('tokens', 'all')})")
    console.print(table)
