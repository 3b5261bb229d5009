"""`atlas publish`, `atlas pull` and `atlas hub ls`: aligned atlases on the Hugging Face Hub."""

from __future__ import annotations

import typer
from rich.table import Table

from atlascli.cli.common import console, emit_json, parse_ints, staged_bars

app = typer.Typer(no_args_is_help=True, help="Published aligned atlases on the Hugging Face Hub.")


def publish_cmd(
    subject: str = typer.Option(..., help="Subject model whose alignments to publish (as given to `atlas fit`)."),
    repo: str = typer.Option(..., help="Hub model repo, e.g. you/smollm2-atlas."),
    layers: str | None = typer.Option(None, help="Only these layers, e.g. 3,12,19 (all by default)."),
    methods: str | None = typer.Option(None, help="Only these methods, e.g. procrustes,cov (all by default)."),
    atlas: str | None = typer.Option(None, help="The atlas (needed when the alignments use several)."),
    private: bool = typer.Option(False, "--private/--public",
                                 help="Create a new repo public (the default: a publication is for sharing) or private."),
    license_id: str = typer.Option("apache-2.0", "--license", help="License in the model card."),
    test_activations: bool = typer.Option(True, help="Include the subject's test activations (search needs no extraction)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Publish the atlas, the selected alignments, their datasets, concepts and reports, with a model card."""
    from atlascli.registry import Registry
    from atlascli.registry.bundle import plan_bundle, publish

    plan = plan_bundle(Registry(), subject, parse_ints(layers, "layers") if layers else None,
                       [m.strip() for m in methods.split(",") if m.strip()] if methods else None, atlas, test_activations)
    res = publish(plan, repo, private=private, license_id=license_id)
    if json_out:
        emit_json({"repo": res.repo, "commit": res.commit, "url": res.url, "artifacts": res.artifacts, "bytes": res.bytes})
        return
    console.print(f"published {len(res.artifacts)} artifacts ({res.bytes / 1e6:,.1f} MB) to {res.repo} "
                  f"at commit {res.commit[:12]}\n{res.url}")


def pull_cmd(
    repo: str = typer.Argument(..., help="Hub repo of a published aligned atlas."),
    revision: str | None = typer.Option(None, help="Branch, tag or commit (main by default)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Download a published aligned atlas, verify everything, then add it to the registry in one step."""
    from atlascli.registry.bundle import pull

    with staged_bars(quiet or json_out) as progress:
        res = pull(repo, revision, progress=progress)
    if json_out:
        emit_json({"repo": res.repo, "commit": res.commit, "subject": res.subject, "atlas": res.atlas,
                   "added": res.added, "present": res.present, "bytes": res.bytes})
        return
    console.print(f"pulled {res.repo} at commit {res.commit[:12]}: {len(res.added)} artifacts added, "
                  f"{len(res.present)} already present ({res.bytes / 1e6:,.1f} MB verified)")
    console.print(f"next: atlas search --atlas {res.atlas} --subject {res.subject} \"your concept\"")


@app.command("ls")
def hub_ls(
    subject: str | None = typer.Option(None, help="Only atlases aligned to this subject model."),
    foundation: str | None = typer.Option(None, help="Only atlases of this foundation model."),
    limit: int = typer.Option(200, help="Most repos to read."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List published aligned atlases (Hub model search by the atlas-alignment tag)."""
    from atlascli.registry.bundle import find_published

    rows = find_published(subject, foundation, limit)
    if json_out:
        emit_json(rows)
        return
    table = Table(title=f"{len(rows)} published aligned atlases")
    for col in ("repo", "subject", "foundation", "layers", "methods", "atlas", "metrics"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["repo"], str(r["subject"]), str(r["foundation"]), ",".join(map(str, r["layers"])),
                      ",".join(r["methods"]), str(r["atlas"]),
                      " ".join(f"{k}={v:.3g}" for k, v in r["metrics"].items() if isinstance(v, (int, float))))
    console.print(table)
