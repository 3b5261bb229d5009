"""`atlas registry ls|show|verify|rm|push|pull` and `atlas models`."""

from __future__ import annotations

import typer
from rich.table import Table

from atlascli.cli.common import console, emit_json, err

app = typer.Typer(no_args_is_help=True, help="Artifacts on disk (safetensors + JSON) and on the Hugging Face Hub.")


@app.command("ls")
def ls(kind: str | None = typer.Argument(None, help="Only this kind."),
       json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List artifacts, oldest first."""
    from atlascli.registry import Registry

    reg = Registry()
    arts, problems = reg.list(kind), reg.problems(kind)
    if problems:
        err.print(f"[yellow]warning:[/] {len(problems)} unreadable artifact(s) skipped "
                  f"({', '.join(p.id for p in problems[:3])}); see `atlas registry verify`", highlight=False)
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
def show(ref: str, json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show an artifact's manifest."""
    from atlascli.registry import Registry
    from atlascli.registry.untrusted import no_symlinks

    reg = Registry()
    art = reg.get(ref)
    no_symlinks(art.path, reg.root)  # never show what resolves outside the registry
    if json_out:
        emit_json(art.manifest)
    else:
        console.print_json(data={k: v for k, v in art.manifest.items() if k != "files"})
        console.print(f"{len(art.manifest['files'])} files in {art.path}")


@app.command("verify")
def verify(ref: str | None = typer.Argument(None, help="One artifact; all when omitted."),
           json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Check every file's sha256 against the manifest; list unreadable artifacts with the fix."""
    from atlascli.errors import AtlasError
    from atlascli.registry import Problem, Registry

    reg = Registry()
    if ref:
        art = reg.get(ref)
        art.verify()
        arts, problems = [art], []
    else:
        arts, problems = [], reg.problems()
        for a in reg.list():
            try:
                a.verify()
                arts.append(a)
            except AtlasError as exc:
                problems.append(Problem(a.kind, a.id, a.path, exc.message, exc.hint or f"atlas registry rm {a.id}"))
    if json_out:
        emit_json({"verified": [a.id for a in arts],
                   "problems": [{"id": p.id, "kind": p.kind, "path": str(p.path), "message": p.message, "fix": p.fix}
                                for p in problems]})
    else:
        console.print(f"[green]ok[/]: {len(arts)} artifact(s) match their checksums")
        for p in problems:
            err.print(f"[bold red]problem:[/] {p.kind} {p.id}: {p.message} [dim](fix: {p.fix})[/]",
                      highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)


@app.command("rm")
def rm(ref: str = typer.Argument(..., help="Artifact id (exact, even if unreadable), or an id prefix."),
       yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before deleting by prefix."),
       json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Delete an artifact folder (exact id: no questions; prefix: asks first)."""
    from atlascli.registry import Registry

    reg = Registry()
    targets, exact = reg.removal_targets(ref)
    if not exact and not yes:
        names = ", ".join(f"{p.parent.name}/{p.name}" for p in targets)
        if not typer.confirm(f"{ref!r} is a prefix: delete {len(targets)} artifact(s) ({names})?", err=True):
            raise typer.Exit(1)
    for path in targets:
        reg.remove_folder(path)
    if json_out:
        emit_json({"removed": [p.name for p in targets]})
    else:
        for p in targets:
            console.print(f"removed {p.parent.name} {p.name}")


@app.command("push")
def push(ref: str, repo: str = typer.Option(..., help="Hub repo id, e.g. you/atlas-artifacts."),
         private: bool = typer.Option(True, "--private/--public",
                                      help="Create a new repo private (the default for one artifact) or public."),
         json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Upload an artifact to the Hugging Face Hub (verified first)."""
    from atlascli.registry import Registry
    from atlascli.registry.hub import push_artifact

    url = push_artifact(Registry().get(ref), repo, private=private)
    emit_json({"url": url}) if json_out else console.print(f"pushed to {url}")


@app.command("pull")
def pull(repo: str, artifact_id: str | None = typer.Argument(None, help="One artifact; the whole bundle when omitted."),
         revision: str | None = None, json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Download an artifact (without ID: a published bundle, as `atlas pull`), verify it, add it to the registry."""
    from atlascli.registry.hub import pull_artifact

    if artifact_id is None:
        from atlascli.cli.cmd_hub import pull_cmd

        pull_cmd(repo, revision, quiet=False, json_out=json_out)
        return
    art = pull_artifact(repo, artifact_id, revision=revision)
    emit_json({"id": art.id, "kind": art.kind}) if json_out else console.print(f"pulled {art.kind} {art.id}")


def models(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the offline model zoo (any HF id or local folder works too)."""
    from atlascli.zoo import DEFAULTS, zoo_table

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


def doctor(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Versions, online/offline, models installed and cached, registry health, device, disk: one line per problem
    with the command that fixes it. Exits 1 when something needs fixing."""
    from atlascli.doctor import diagnose

    rep = diagnose()
    if json_out:
        emit_json({"facts": rep.facts, "findings": [f.__dict__ for f in rep.findings],
                   "problems": len(rep.problems)})
    else:
        colour = {"ok": "green", "warn": "yellow", "error": "red"}
        for f in rep.findings:
            console.print(f"[{colour[f.status]}]{f.status:5s}[/] {f.area:8s} {f.message}"
                          + (f"  [dim]→ {f.fix}[/]" if f.fix else ""), highlight=False, soft_wrap=True)
    if any(f.status == "error" for f in rep.findings):
        raise typer.Exit(1)
