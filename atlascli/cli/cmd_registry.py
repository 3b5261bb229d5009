"""`atlas registry ls|show|verify|rm|push|pull` and `atlas models`."""

from __future__ import annotations

import typer
from rich.table import Table

from atlascli.cli.common import console, emit_json

app = typer.Typer(no_args_is_help=True, help="Artifacts on disk (safetensors + JSON) and on the Hugging Face Hub.")


@app.command("ls")
def ls(kind: str | None = typer.Argument(None, help="Only this kind."),
       json_out: bool = typer.Option(False, "--json")) -> None:
    """List artifacts, oldest first."""
    from atlascli.registry import Registry

    arts = Registry().list(kind)
    if json_out:
        emit_json([{"id": a.id, "kind": a.kind, "created": a.manifest["created"], "provenance": a.provenance}
                   for a in arts])
        return
    table = Table(title=f"{len(arts)} artifacts")
    for col in ("kind", "id", "created", "N"):
        table.add_column(col)
    for a in arts:
        p = a.provenance
        table.add_row(a.kind, a.id, a.manifest["created"], str(p.get("n", p.get("n_train", ""))))
    console.print(table)


@app.command("show")
def show(ref: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """Show an artifact's manifest."""
    from atlascli.registry import Registry

    art = Registry().get(ref)
    if json_out:
        emit_json(art.manifest)
    else:
        console.print_json(data={k: v for k, v in art.manifest.items() if k != "files"})
        console.print(f"{len(art.manifest['files'])} files in {art.path}")


@app.command("verify")
def verify(ref: str | None = typer.Argument(None, help="One artifact; all when omitted."),
           json_out: bool = typer.Option(False, "--json")) -> None:
    """Check every file's sha256 against the manifest."""
    from atlascli.registry import Registry

    reg = Registry()
    arts = [reg.get(ref)] if ref else reg.list()
    for a in arts:
        a.verify()
    if json_out:
        emit_json({"verified": [a.id for a in arts]})
    else:
        console.print(f"[green]ok[/]: {len(arts)} artifact(s) match their checksums")


@app.command("rm")
def rm(ref: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """Delete an artifact."""
    from atlascli.registry import Registry

    art = Registry().remove(ref)
    if json_out:
        emit_json({"removed": art.id})
    else:
        console.print(f"removed {art.kind} {art.id}")


@app.command("push")
def push(ref: str, repo: str = typer.Option(..., help="Hub repo id, e.g. you/atlas-artifacts."),
         public: bool = typer.Option(False, help="Create the repo public."),
         json_out: bool = typer.Option(False, "--json")) -> None:
    """Upload an artifact to the Hugging Face Hub (verified first)."""
    from atlascli.registry import Registry
    from atlascli.registry.hub import push_artifact

    url = push_artifact(Registry().get(ref), repo, private=not public)
    emit_json({"url": url}) if json_out else console.print(f"pushed to {url}")


@app.command("pull")
def pull(repo: str, artifact_id: str, revision: str | None = None,
         json_out: bool = typer.Option(False, "--json")) -> None:
    """Download an artifact from the Hub, verify its checksums and add it to the registry."""
    from atlascli.registry.hub import pull_artifact

    art = pull_artifact(repo, artifact_id, revision=revision)
    emit_json({"id": art.id, "kind": art.kind}) if json_out else console.print(f"pulled {art.kind} {art.id}")


def models(json_out: bool = typer.Option(False, "--json")) -> None:
    """List the offline model zoo (any HF id or local folder works too)."""
    from atlascli.models import DEFAULTS, zoo_table

    rows = zoo_table()
    if json_out:
        emit_json({"zoo": rows, "defaults": DEFAULTS})
        return
    table = Table(title="model zoo (offline, from PyPI packages)")
    for col in ("name", "role", "installed", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["role"], r["installed"], r["description"])
    console.print(table)
