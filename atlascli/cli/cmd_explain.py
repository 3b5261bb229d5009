"""`atlas explain` (a subject feature in atlas concepts) and `atlas read` (a text in atlas concepts)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from atlascli.cli.common import TRUST_HELP, console, emit_json, err, parse_ints
from atlascli.errors import InputError

BAR = "█"
HIGHLIGHT = ("underline", "black on khaki1", "bold black on gold1", "bold white on dark_orange3")


def _concept_line(c: Any, key: str = "value") -> Text:
    """``12 label +0.123`` with dim incoherent labels and the coherence when known."""
    t = Text(f"{c.index:>6} ", style="cyan")
    label = c.label or "(no label)"
    t.append(label, style="dim" if c.coherent is False or not c.label else "")
    val = getattr(c, key)
    t.append(f"  {val:+.3f}", style="green" if val >= 0 else "red")
    if c.coherence is not None:
        t.append(f"  coh {c.coherence:.2f}" + ("" if c.coherent is not False else " ✗"), style="dim")
    return t


def _concepts(cs: list[Any], key: str = "value") -> Text:
    return Text("\n").join([_concept_line(c, key) for c in cs]) if cs else Text("(none)", style="dim")


def _marked(text: str, span: tuple[int, int] | None) -> Text:
    t = Text(text)
    if span and span[1] > span[0]:
        t.stylize("bold reverse", span[0], span[1])
    return t


def _histogram(h: Any, width: int = 24) -> Text:
    if h is None or not h.counts:
        return Text("(no test activations)", style="dim")
    top = max(h.counts) or 1
    lines = [Text(f"n={h.n}  mean={h.mean:.3f}  >0: {100 * h.positive:.0f}%", style="dim")]
    for lo, hi, c in zip(h.edges[:-1], h.edges[1:], h.counts):
        bar = BAR * (round(width * c / top) if c else 0) or ("▏" if c else "")
        lines.append(Text(f"{lo:>9.3g}…{hi:<9.3g}│").append(bar, style="magenta").append(f" {c}", style="dim"))
    return Text("\n").join(lines)


def _examples(f: Any) -> Text:
    if not f.examples:
        return Text("(no examples: --samples 0)", style="dim")
    lines = []
    for e in f.examples:
        line = Text(f"{e.activation:7.3f}  ", style="dim")
        line.append_text(_marked(e.text, e.peak_span))
        if e.peak_token is not None:
            line.append(f"  ← {e.peak_token!r}", style="dim")
        lines.append(line)
    return Text("\n").join(lines)


def explain_cmd(
    feature: int | None = typer.Option(None, "--feature", "-f", help="Subject feature index."),
    features: str | None = typer.Option(None, help="Several subject features side by side: 42,77,103."),
    layer: int | None = typer.Option(None, "--layer", "-l", help="Subject layer (default: latest alignment's)."),
    subject: str | None = typer.Option(None, help="Subject model (default: that of the latest alignment)."),
    method: str = typer.Option("procrustes", "--method", "-M", help="Translation method."),
    site: str | None = typer.Option(None, help="Fitted site: mlp | mlp_out | resid (default: mlp neurons when "
                                               "fitted)."),
    alignment: str | None = typer.Option(None, help="Alignment id (overrides --subject/--layer/--method)."),
    atlas: str | None = typer.Option(None, help="Only alignments to this atlas."),
    top: int = typer.Option(10, min=1, help="Atlas concepts per sign."),
    samples: int = typer.Option(5, min=0, help="Max-activating test sentences (0: none, no histogram)."),
    test_limit: int | None = typer.Option(None, min=1, help="Test sentences scanned (default: those already "
                                                         "extracted, else 5000)."),
    bins: int = typer.Option(12, min=1, help="Histogram bins."),
    peaks: bool = typer.Option(True, "--peaks/--no-peaks", help="Mark each example's peak token (loads the subject)."),
    device: str = typer.Option("cpu", help="Device of the subject model."),
    trust_remote_code: bool = typer.Option(False, help=TRUST_HELP),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Describe subject feature(s) in atlas concepts: row K of T, max-activating sentences, histogram."""
    from atlascli.explain import ExplainConfig, explain

    if feature is not None and features:
        raise InputError("both --feature and --features given", "use --features 42,77 for several")
    ks = ([feature] if feature is not None else []) + (list(parse_ints(features, "features")) if features else [])
    if not ks:
        raise InputError("no subject feature given", "use --feature 42 or --features 42,77")
    cfg = ExplainConfig(tuple(ks), layer, subject, method, atlas, alignment, top, samples, test_limit, bins, peaks,
                        device, site=site, trust_remote_code=trust_remote_code)
    with err.status("explaining", spinner="dots") if not json_out else _null():
        res = explain(cfg)
    for w in res.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    if json_out:
        emit_json(asdict(res))
        return
    console.print(f"[bold]{res.subject}[/] layer {res.layer} ({res.site}) → atlas {res.atlas} "
                  f"[dim]({res.method}, {res.alignment})[/]", highlight=False)
    if len(res.features) == 1:
        f = res.features[0]
        console.print(Text(f"feature {f.feature}  |T[k]| = {f.row_norm:.4g}", style="bold"))
        for title, cs in (("atlas concepts (largest entries of T[k, :])", f.positive),
                          ("negative entries (most negative first)", f.negative)):
            t = Table(title=escape(title), title_justify="left")
            for col in ("atlas feature", "label", "weight", "share", "coherence"):
                t.add_column(col)
            for c in cs:
                coh = "" if c.coherence is None else f"{c.coherence:.2f}" + (" ✗" if c.coherent is False else "")
                t.add_row(str(c.index), Text(c.label or "(no label)", style="dim" if c.coherent is False else ""),
                          f"{c.value:+.4f}", f"{c.share:+.3f}", coh)
            console.print(t if cs else Text(f"{title}: none", style="dim"))
        console.print(Text("max-activating test sentences (peak token reversed)", style="bold"))
        console.print(_examples(f))
        console.print(Text("activation histogram (test split, max-pooled)", style="bold"))
        console.print(_histogram(f.histogram))
        return
    t = Table(show_lines=True)
    t.add_column("")
    for f in res.features:
        t.add_column(escape(f"feature {f.feature}  |T[k]|={f.row_norm:.3g}"), overflow="fold")
    t.add_row("atlas concepts", *[_concepts(f.positive, "share") for f in res.features])
    t.add_row("negative", *[_concepts(f.negative, "share") for f in res.features])
    t.add_row("examples", *[_examples(f) for f in res.features])
    t.add_row("histogram", *[_histogram(f.histogram, 12) for f in res.features])
    console.print(t)


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _highlighted(text: str, spans: list[tuple[int, int]], scores: list[float]) -> Text:
    t = Text(text)
    top = max([s for s in scores if s > 0], default=0.0)
    if top <= 0:
        return t
    for (a, b), s in zip(spans, scores):
        if s > 0 and b > a:
            t.stylize(HIGHLIGHT[min(len(HIGHLIGHT) - 1, int(len(HIGHLIGHT) * s / top))], a, b)
    return t


def read_cmd(
    text: str | None = typer.Argument(None, help="The text to read."),
    file: Path | None = typer.Option(None, "--file", help="Read the text from a file (one sequence)."),
    layers: str | None = typer.Option(None, "--layer", "--layers", "-l", help="Layer(s): 12 or 3,12 (default: all fitted)."),
    subject: str | None = typer.Option(None, help="Subject model (default: that of the latest alignment)."),
    method: str = typer.Option("procrustes", "--method", "-M", help="Translation method."),
    site: str | None = typer.Option(None, help="Fitted site: mlp | mlp_out | resid (default: mlp neurons when "
                                               "fitted)."),
    atlas: str | None = typer.Option(None, help="Only alignments to this atlas."),
    top: int = typer.Option(10, help="Concepts for the whole text."),
    per_token: bool = typer.Option(False, "--per-token", help="Also show concepts per token, with highlighted spans."),
    token_top: int = typer.Option(3, help="Concepts per token."),
    centre: bool | None = typer.Option(None, "--centre/--no-centre",
                                       help="Subtract the fit's average subject row: what is specific to this text "
                                            "(default: with --no-standardise, when the fit's activations are in the "
                                            "registry; z-scores are centred already)."),
    include_incoherent: bool = typer.Option(False, help="Also list incoherent (syntax) atlas features."),
    standardise: bool = typer.Option(True, "--standardise/--no-standardise",
                                     help="Rank concepts by z-score against the fit's sentences (what is unusual "
                                          "for this text), or by raw score."),
    max_tokens: int | None = typer.Option(None, help="Truncate to this many tokens (default: the model's context)."),
    device: str = typer.Option("cpu", help="Device of the subject model."),
    trust_remote_code: bool = typer.Option(False, help=TRUST_HELP),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Read a text in atlas concepts: map its subject activations through T (one column per layer)."""
    from atlascli.read import ReadConfig, read_text

    if (text is None) == (file is None):
        raise InputError("give exactly one of TEXT or --file", 'e.g. atlas read "The dog barked at the cat"')
    if file is not None:
        if not file.exists():
            raise InputError(f"{file} does not exist", "give a text file")
        text = file.read_text(encoding="utf-8")
    assert text is not None
    cfg = ReadConfig(text, parse_ints(layers, "layers") if layers else None, subject, method, atlas, top, per_token,
                     centre, token_top, max_tokens, device, coherent_only=not include_incoherent,
                     standardise=standardise, site=site, trust_remote_code=trust_remote_code)
    with err.status("reading", spinner="dots") if not json_out else _null():
        res = read_text(cfg)
    for w in res.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    if json_out:
        emit_json(asdict(res))
        return
    console.print(f"[bold]{res.subject}[/] → atlas {res.atlas}: {res.n_tokens} tokens"
                  + (" [yellow](truncated)[/]" if res.truncated else ""), highlight=False)
    t = Table(title="atlas concepts of the whole text (max-pooled over tokens)", title_justify="left")
    t.add_column("#")
    cols = [lr.concepts for lr in res.layers]
    if res.combined:  # the mean z over the layers: the best single reading, shown first
        t.add_column(f"layers {','.join(str(lr.layer) for lr in res.layers)} (mean z)", overflow="fold")
        cols.insert(0, res.combined)
    for lr in res.layers:
        t.add_column(f"layer {lr.layer} ({lr.method}, {lr.transform})", overflow="fold")
    for i in range(top):
        t.add_row(str(i + 1), *[_concept_line(c[i]) if i < len(c) else "" for c in cols])
    console.print(t)
    if not per_token:
        return
    for lr in res.layers:
        console.print(Text(f"layer {lr.layer}: where the top concepts are active", style="bold"))
        for c in lr.concepts[:5]:
            head = Text(f"{c.index:>6} ", style="cyan").append(c.label or "(no label)").append(": ")
            console.print(head.append_text(_highlighted(res.text, res.spans, lr.highlight[c.index])))
    tt = Table(title="per token", title_justify="left")
    tt.add_column("token")
    for lr in res.layers:
        tt.add_column(f"layer {lr.layer}", overflow="fold")
    for j, tok in enumerate(res.tokens):
        tt.add_row(repr(tok), *[_concepts(lr.tokens[j].concepts) for lr in res.layers])
    console.print(tt)
