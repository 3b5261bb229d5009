"""`atlas extract`."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from atlascli.cli.common import REVISION_HELP, TRUST_HELP, console, emit_artifact, parse_ints, throughput_bar


def extract_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Zoo name, local folder/.gguf or HF id."),
    layers: str = typer.Option(..., "--layers", "--layer", "-l", help="Comma-separated block indices, e.g. 3,12,19."),
    site: str | None = typer.Option(None, help="mlp (MLP neurons) | mlp_out | resid. Default: mlp, what `atlas fit` "
                                                "reads, so a fit reuses this extraction; with --sae, the SAE's site."),
    dataset: str = typer.Option("default", "--dataset", "-d", help="Dataset id or name."),
    split: str = typer.Option("train", help="train or test."),
    sae: str | None = typer.Option(None, help="SAE (folder, atlas id or RELEASE:ID): store sparse codes."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N sentences."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto (CUDA; a model too big for one GPU is spread over "
                                            "this node's GPUs with accelerate's device_map)."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16."),
    batch_tokens: int = typer.Option(2048, min=1, help="Token budget per batch."),
    shard_size: int = typer.Option(2048, min=1, help="Sentences per shard (unit of resumption)."),
    max_length: int = typer.Option(128, min=1, help="Truncate sentences to this many tokens."),
    revision: str | None = typer.Option(None, help=REVISION_HELP),
    trust_remote_code: bool = typer.Option(False, help=TRUST_HELP),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check every input, print the plan and its cost, exit."),
) -> None:
    """Stream a dataset through a model and store max-pooled activations (resumable)."""
    from atlascli.cli.plan_view import PlanSink
    from atlascli.cli.plan_view import dry_run as show_dry_run
    from atlascli.extract import ExtractConfig, extract

    cfg = ExtractConfig(model=model, layers=parse_ints(layers, "layers"), site=site or "",
                        dataset=dataset, split=split,
                        sae=sae, limit=limit, device=device, dtype=dtype, batch_tokens=batch_tokens,
                        shard_size=shard_size, max_length=max_length, revision=revision,
                        trust_remote_code=trust_remote_code)
    from atlascli.plan import plan_extract

    if dry_run:
        show_dry_run(lambda: plan_extract(cfg), json_out)
        return
    start = time.perf_counter()
    sink = PlanSink()
    sink(plan_extract(cfg))  # every input checked before the progress bar opens
    total = sum(s.sentences for s in sink.plans[0].work) or 1
    with throughput_bar(f"extract {model}", total=total, quiet=json_out) as update:
        art = extract(cfg, progress=lambda d, t, tok: update(d, t, tok))
    secs = time.perf_counter() - start
    if json_out:
        emit_artifact(art, seconds=secs, plan=sink.json)
        return
    table = Table(title=f"activations {art.id}", show_header=False)
    p = art.provenance
    table.add_row("model", f"{p['model']} ({p['revision'][:24]})")
    table.add_row("layers / site", f"{p['layers']} / {p['site']}" + (" (SAE codes, sparse)" if p["sparse"] else ""))
    table.add_row("dataset", f"{p['dataset']} [{p['split']}], N = {p['n']:,}")
    table.add_row("widths", str(art.meta["widths"]))
    table.add_row("tokens", f"{art.meta['tokens']:,}")
    if placement := art.meta.get("model_card", {}).get("placement"):
        table.add_row("placement", placement)
    if (processes := art.meta.get("throughput", {}).get("processes")) is not None:
        table.add_row("processes", str(processes))
    console.print(table)
