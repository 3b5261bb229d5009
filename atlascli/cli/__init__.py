"""The `atlas` command line (Typer + Rich). Nothing else in atlas imports this package."""
