"""Entry point of `atlas`: builds the Typer app and turns AtlasErrors into one clear line."""

from __future__ import annotations

import os
import sys

import typer

from atlascli.errors import AtlasError

app = typer.Typer(name="atlas", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Align an unknown language model to a labeled Concept Atlas: extract, fit, search, steer, evaluate.")


def _register() -> None:
    from atlascli.cli import cmd_atlas, cmd_data, cmd_evaluate, cmd_extract, cmd_fit, cmd_registry, cmd_search, cmd_steer

    app.add_typer(cmd_data.app, name="data")
    app.add_typer(cmd_atlas.app, name="atlas")
    app.add_typer(cmd_atlas.concept_app, name="concept")
    app.command("search")(cmd_search.search_cmd)
    from atlascli.cli import cmd_explain

    app.command("explain")(cmd_explain.explain_cmd)
    app.command("read")(cmd_explain.read_cmd)
    app.command("steer")(cmd_steer.steer_cmd)
    app.command("evaluate")(cmd_evaluate.evaluate_cmd)
    app.add_typer(cmd_registry.app, name="registry")
    app.command("models")(cmd_registry.models)
    app.command("doctor")(cmd_registry.doctor)
    app.command("extract")(cmd_extract.extract_cmd)
    app.command("fit")(cmd_fit.fit_cmd)
    from atlascli.cli import cmd_hub

    app.command("publish")(cmd_hub.publish_cmd)
    app.command("pull")(cmd_hub.pull_cmd)
    app.add_typer(cmd_hub.app, name="hub")


_register()


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """``click.exceptions.<name>`` plus typer's own copy (typer >= 0.16 vendors click as ``typer._click``)."""
    import importlib

    found = []
    for module in ("click.exceptions", "typer.exceptions", "typer._click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


_EXITS = _click_classes("Exit")
_USAGE_ERRORS = _click_classes("ClickException")
_ABORTS = _click_classes("Abort")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; ``--debug`` anywhere shows tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("ATLAS_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    from rich.markup import escape

    from atlascli.cli.common import err, quiet_other_ranks
    from atlascli.errors import PeerError

    rank = quiet_other_ranks()  # torchrun / accelerate launch: rank 0 speaks for the run
    try:
        result = app(args=args, prog_name="atlas", standalone_mode=False)
    except PeerError:  # rank 0 prints why
        return 2
    except AtlasError as exc:
        if debug:
            raise
        err.quiet = False
        err.print((f"[bold]rank {rank}:[/] " if rank else "") + f"[bold red]error:[/] {escape(exc.message)}"
                  + (f" [dim]({escape(exc.hint)})[/]" if exc.hint else ""), highlight=False, soft_wrap=True)
        return 2
    except _EXITS as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except _USAGE_ERRORS as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" or debug:  # `atlas search` alone: the help is the answer
            exc.show()  # type: ignore[attr-defined]
            return int(getattr(exc, "exit_code", 2))
        ctx = getattr(exc, "ctx", None)
        where = f"`{ctx.command_path} --help`" if ctx is not None else "`atlas --help`"
        err.quiet = False
        err.print(f"[bold red]error:[/] {escape(exc.format_message())} [dim](see {where})[/]",  # type: ignore[attr-defined]
                  highlight=False, soft_wrap=True)
        return int(getattr(exc, "exit_code", 2))
    except _ABORTS:
        err.print("aborted")
        return 130
    except KeyboardInterrupt:
        err.print("interrupted: complete shards are kept; run the same command again to resume")
        return 130
    except Exception as exc:  # a bug: say so in one line
        if debug:
            raise
        err.quiet = False
        err.print((f"[bold]rank {rank}:[/] " if rank else "") + f"[bold red]internal error:[/] "
                  f"{exc.__class__.__name__}: {escape(str(exc))} [dim](rerun with --debug for the traceback)[/]",
                  highlight=False, soft_wrap=True)
        return 1
    # without standalone mode, `raise typer.Exit(code)` comes back as the return value
    code = result if isinstance(result, int) and not isinstance(result, bool) else 0
    if code == 0 and "torch.distributed" in sys.modules:  # a multi-process run that ended well: leave together
        from atlascli.distributed import reset

        reset(together=True)
    return code


def entry() -> None:
    """The `atlas` command and `python -m atlascli`: :func:`main`, then exit with its code; a torchrun / accelerate
    rank exits at once, without the interpreter's teardown (:func:`atlascli.distributed.finish`)."""
    code = main()
    if "torch.distributed" in sys.modules:
        from atlascli.distributed import finish

        finish(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
