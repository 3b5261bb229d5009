"""Shared CLI helpers: consoles, JSON output, progress bars with throughput, list parsing."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from atlascli.errors import InputError

console = Console()
err = Console(stderr=True)


TRUST_HELP = "Run the model's own code from its Hub repository (read it first; off unless asked)."
REVISION_HELP = "Hub branch, tag or commit of the model (main by default); the commit it resolves to is recorded."


def launch_rank() -> int:
    """This process's rank in a torchrun / accelerate launch (0 without one, or when the variables are malformed:
    the library then says what is wrong)."""
    try:
        return int(os.environ.get("RANK", "0") or 0) if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else 0
    except ValueError:
        return 0


def quiet_other_ranks() -> int:
    """In a multi-process launch only rank 0 prints (tables, progress, JSON); returns this rank."""
    rank = launch_rank()
    if rank > 0:
        console.quiet = err.quiet = True
    return rank


def emit_json(obj: Any) -> None:
    """Print machine-readable output on stdout (rank 0 only in a multi-process launch)."""
    if launch_rank() > 0:
        return
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """``"3,12,19"`` -> (3, 12, 19) with a clear error on junk."""
    try:
        values = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {text!r}", f"e.g. --{what} 3,12,19") from None
    if not values:
        raise InputError(f"no {what} given", f"e.g. --{what} 3,12,19")
    return values


def parse_floats(text: str, what: str, example: str) -> list[float]:
    """``"-10,0,10"`` -> [-10.0, 0.0, 10.0] with a clear error on junk."""
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"{what} must be numbers, got {text!r}", f"e.g. --{what} {example}") from None


@contextmanager
def throughput_bar(description: str, total: int, unit: str = "sent",
                   quiet: bool = False) -> Iterator[Callable[..., None]]:
    """A Rich progress bar on stderr; yields ``update(done, total, tokens=None)``."""
    if quiet:
        yield lambda *a, **k: None
        return
    start = time.perf_counter()
    rate = TextColumn("{task.fields[rate]}")
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), rate,
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False)
    with progress:
        task = progress.add_task(description, total=total, rate="")

        def update(done: int, tot: int | None = None, tokens: int | None = None) -> None:
            dt = max(time.perf_counter() - start, 1e-9)
            text = f"{done / dt:,.0f} {unit}/s"
            if tokens is not None:
                text += f"  {tokens / dt:,.0f} tok/s"
            progress.update(task, completed=done, total=tot or total, rate=text)

        yield update


@contextmanager
def staged_bars(quiet: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """One throughput bar per stage; yields ``progress(stage, done, total)``."""
    import contextlib

    with contextlib.ExitStack() as stack:
        bars: dict[str, Callable[..., None]] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if quiet:
                return
            if stage not in bars:
                bars[stage] = stack.enter_context(throughput_bar(stage, total, "item"))
            bars[stage](done, total)

        yield progress


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; empty lines are skipped, a line of spaces is kept (" " is one of the paper's prompts)."""
    if not path.exists():
        raise InputError(f"{path} does not exist", "give a file with one prompt per line")
    prompts = [ln.rstrip("\r") for ln in path.read_text(encoding="utf-8").split("\n") if ln.rstrip("\r")]
    if not prompts:
        raise InputError(f"{path} has no prompts", "one prompt per line")
    return prompts


def emit_artifact(art: Any, **extra: Any) -> None:
    """Print an artifact's id, provenance and metadata (plus ``extra``) as JSON on stdout."""
    emit_json({"id": art.id, "kind": art.kind, "provenance": art.provenance, "meta": art.meta, **extra})
