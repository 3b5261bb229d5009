"""`atlas search`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from atlascli.cli.common import TRUST_HELP, console, emit_json
from atlascli.errors import InputError


def _lines(path: Path) -> list[str]:
    if not path.exists():
        raise InputError(f"{path} does not exist", "give a file with one sentence per line")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"{path} is empty", "give a file with one sentence per line")
    return lines


def build_query(atlas, text, features, examples, contrast, top_features, threshold,  # type: ignore[no-untyped-def]
                route="auto", include_incoherent=False, text_name="QUERY", example='atlas search "dogs"',
                trust_remote_code=False):
    """One concept query from whichever of the options was given (``text_name``/``example``: how the calling
    command spells the text option, for the error)."""
    from atlascli.concepts import load_concept
    from atlascli.search import query_from_examples, query_from_features, query_from_text

    given = [x is not None for x in (text, features, examples)]
    if sum(given) != 1:
        raise InputError(f"give exactly one of {text_name}, --features or --examples", f"e.g. {example}")
    if features is not None:
        return query_from_features(features, atlas)
    if examples is not None:
        return query_from_examples(_lines(examples), atlas, _lines(contrast) if contrast else None,
                                   trust_remote_code=trust_remote_code)
    named = load_concept(text, atlas)
    if named is not None:
        return named
    return query_from_text(text, atlas, top_features, threshold, route=route, include_incoherent=include_incoherent)


def render_query(q, at) -> None:  # type: ignore[no-untyped-def]
    """The resolved query: route, matched atlas features (label, coherence, weight), examples found."""
    qt = Table(title=f"concept query: {q.source} over {at.id}", title_justify="left")
    for col, kw in (("atlas feature", {"no_wrap": True}), ("label", {"ratio": 1}), ("coherence", {}),
                    ("weight", {})):
        qt.add_column(col, **kw)
    for m in q.matches[:10]:
        coh = m.get("coherence")
        qt.add_row(str(m["index"]), m["label"], "-" if coh is None else f"{coh:.2f}", f"{m['weight']:.3f}")
    console.print(qt)
    if q.examples:
        console.print("[dim]examples found for the query:[/] " + " | ".join(q.examples[:3]), highlight=False)
    if q.note:
        console.print(f"[yellow]note:[/] {q.note}", highlight=False)


def search_cmd(
    query: str | None = typer.Argument(None, help="Text, or the name of a saved/built-in concept."),
    features: str | None = typer.Option(None, help="Atlas features: 5218,12614 or 5218:1.0,12614:0.5."),
    examples: Path | None = typer.Option(None, help="Example sentences (one per line): their mean atlas code."),
    contrast: Path | None = typer.Option(None, help="Contrast sentences: subtracted from the examples' mean."),
    subject: str | None = typer.Option(None, help="Subject model (with --layer) to pick the alignment."),
    layer: int | None = typer.Option(None, help="Subject layer."),
    alignment: str | None = typer.Option(None, help="Alignment id (most recent matching one by default)."),
    atlas: str | None = typer.Option(None, help="Atlas (latest by default)."),
    method: str = typer.Option("procrustes", help="Translation method."),
    site: str | None = typer.Option(None, help="Fitted site: mlp | mlp_out | resid (default: mlp neurons when "
                                               "fitted, the subject features one inspects)."),
    top: int = typer.Option(10, min=1, help="Subject features to show."),
    route: str = typer.Option("auto", help="Text queries: examples (similar labelling sentences' mean code minus "
                                           "the corpus mean), labels (feature labels), auto (examples if stored)."),
    top_features: int = typer.Option(5, min=1, help="Atlas features a text query resolves to (labels route)."),
    threshold: float | None = typer.Option(None, min=-1.0, max=1.0,
                                           help="Minimum similarity of the text to labels (0.25) / examples (0.2)."),
    include_incoherent: bool = typer.Option(False, help="Let text match incoherent (syntax) features too."),
    examples_per_feature: int = typer.Option(2, "--samples", min=0, help="Max-activating test sentences per feature."),
    test_limit: int | None = typer.Option(None, min=1, help="Test sentences scanned for max-activating examples "
                                                         "(default: those already extracted, else 5000)."),
    aligned: int = typer.Option(5, min=0, help="Test sentences most aligned with s to show (0 = none)."),
    aligned_metric: str = typer.Option("standardised", help="How they are ranked: standardised (cosine with each "
                                                            "subject dimension in units of its spread) or centred "
                                                            "(the paper's 4.3.1 ranking)."),
    device: str = typer.Option("cpu", help="Device of the subject when its test activations must be extracted "
                                           "(once): cpu, cuda or auto."),
    trust_remote_code: bool = typer.Option(False, help=TRUST_HELP),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Find the subject features that encode a concept (eq. 3) and show what activates them."""
    from atlascli.atlas import resolve_atlas
    from atlascli.models import resolve_device
    from atlascli.registry import Registry
    from atlascli.search import resolve_alignment
    from atlascli.search_run import run_search

    resolve_device(device)  # before the query is embedded or anything extracted
    reg = Registry()
    at = resolve_atlas(atlas, reg)
    q = build_query(at, query, features, examples, contrast, top_features, threshold, route, include_incoherent,
                    trust_remote_code=trust_remote_code)
    al = resolve_alignment(reg, alignment, subject, layer, method, at, site)
    res = run_search(q, al, top, examples_per_feature, test_limit, reg, aligned, aligned_metric, device,
                     trust_remote_code)
    if json_out:
        emit_json({"alignment": res.alignment, "atlas": at.id,
                   "query": {"source": q.source, "matches": q.matches, "examples": q.examples,
                             "note": q.note},
                   "features": [{"index": f.index, "score": f.score,
                                 "examples": [{"activation": v, "text": t} for v, t in f.examples]}
                                for f in res.features],
                   "aligned_sentences": [{"similarity": v, "text": t} for v, t in res.aligned],
                   "aligned_metric": aligned_metric})
        return
    render_query(q, at)
    p = al.provenance
    st = Table(title=f"{p['subject']} layer {p['layer']} ({p['site']}, {p['method']}): top features by s = T̂q/|q|")
    for col in ("feature", "score", "max-activating test sentences"):
        st.add_column(col)
    for f in res.features:
        st.add_row(str(f.index), f"{f.score:.3f}", "\n".join(f"[dim]{v:.2f}[/] {t}" for v, t in f.examples))
    console.print(st)
    if res.aligned:
        at_ = Table(title=f"test sentences whose subject activations are most aligned with s (cosine, {aligned_metric})")
        at_.add_column("cos")
        at_.add_column("sentence")
        for v, t in res.aligned:
            at_.add_row(f"{v:.3f}", t)
        console.print(at_)
