"""`atlas evaluate quality|retrieval|steering|all`: tables shaped like the paper's Tables 3, 4 and 5."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from atlascli.cli.common import console, emit_json, parse_floats, parse_ints, read_prompts, staged_bars
from atlascli.errors import InputError

NAMES = {"procrustes": "Orthogonal Procrustes", "cov": "Covariance", "corr": "Cross Correlation",
         "linreg": "Linear Regression", "semlens": "Semantic Lens", "random": "Random"}


def _fmt(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def evaluate_cmd(
    what: str = typer.Argument("all", help="quality | retrieval | steering | all (or a comma list)."),
    subject: str | None = typer.Option(None, "--subject", "-s", help="Subject model (default: latest alignment's)."),
    layers: str | None = typer.Option(None, help="Layers (default: all fitted with every method)."),
    methods: str | None = typer.Option(None, help="Methods, comma list or all (default: every fitted method)."),
    atlas: str | None = typer.Option(None, help="Atlas (latest by default)."),
    seed: int = typer.Option(0, help="Seed of sampling, baselines and generation."),
    test_limit: int = typer.Option(5000, help="Held-out test sentences for quality and retrieval."),
    features: str | None = typer.Option(None, help="Atlas features for quality (default: sample --n-features)."),
    n_features: int = typer.Option(100, help="Atlas features sampled for quality."),
    retrieval_features: int = typer.Option(500, help="Subject features sampled for retrieval."),
    set_size: int = typer.Option(20, help="Sentences per retrieval concept set."),
    concepts: str | None = typer.Option(None, help="Steering concepts, ';'-separated names or text queries."),
    prompts: Path | None = typer.Option(None, help="Seed prompts file (default: the paper's 16)."),
    lambdas: str = typer.Option("-50,-10,-1,0,1,10,50", help="Steering factors."),
    relative: bool = typer.Option(False, "--relative-lambda", help="Lambda x each layer's median token norm."),
    combined: bool = typer.Option(True, "--combined/--no-combined", help="Also steer all layers together."),
    max_new_tokens: int = typer.Option(100, help="Tokens per generation."),
    judge: str = typer.Option("embedding", help="embedding[:EMBEDDER] | openai:MODEL."),
    judge_url: str | None = typer.Option(None, help="Base URL of an OpenAI-compatible endpoint."),
    judge_fpr: float = typer.Option(0.05, help="False-positive rate calibrating the embedding judge."),
    judge_retries: int = typer.Option(4, help="Attempts per chat-judge request."),
    judge_backoff: float = typer.Option(1.0, help="First retry delay in seconds (doubles)."),
    judge_timeout: float = typer.Option(60.0, help="Seconds per chat-judge request."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto."),
    plot: Path | None = typer.Option(None, help="Write a matplotlib figure here."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output (every number + configuration)."),
) -> None:
    """Translation quality (AUROC/AP), retrieval (MRR/MPP) and steering faithfulness, methods x layers."""
    from atlascli.evaluate import KINDS, EvaluateConfig, evaluate

    kinds = KINDS if what == "all" else tuple(k.strip() for k in what.split(",") if k.strip())
    plist = tuple(read_prompts(prompts)) if prompts is not None else None
    lams = tuple(parse_floats(lambdas, "lambdas", "-50,-10,0,10,50"))
    cfg = EvaluateConfig(kinds=kinds, subject=subject, layers=parse_ints(layers, "layers") if layers else None,
                         methods=methods, atlas=atlas, seed=seed, test_limit=test_limit,
                         features=parse_ints(features, "features") if features else None, n_features=n_features,
                         retrieval_features=retrieval_features, set_size=set_size,
                         concepts=tuple(c.strip() for c in concepts.split(";") if c.strip()) if concepts else None,
                         prompts=plist, lambdas=lams, relative_lambda=relative, combined=combined,
                         max_new_tokens=max_new_tokens, judge=judge, judge_url=judge_url, judge_fpr=judge_fpr,
                         judge_retries=judge_retries, judge_backoff=judge_backoff, judge_timeout=judge_timeout, device=device)
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib", "pip install matplotlib") from None
    with staged_bars(json_out) as progress:
        report = evaluate(cfg, progress=progress)
    if plot is not None:
        from atlascli.evaluate.plot import plot_report

        plot_report(report, plot)
    if json_out:
        emit_json(asdict(report))
        return
    render(report)
    if plot is not None:
        console.print(f"figure: {plot}")
    console.print(f"report: {report.artifact}")


def render(report: Any) -> None:
    """Rich tables: methods as rows, layers as columns."""
    cols = [str(la) for la in report.layers]
    if report.quality:
        t = Table(title=f"Translation quality (AUROC / AP), {len(report.quality['features'])} atlas features, "
                        f"N={report.data['n_test']} test sentences")
        t.add_column("Method")
        for c in cols:
            t.add_column(f"L{c} AUROC", justify="right")
            t.add_column(f"L{c} AP", justify="right")
        for m in report.methods:
            t.add_row(NAMES.get(m, m), *[v for c in cols for v in (_fmt(report.quality[m][c]["auroc"]),
                                                                     _fmt(report.quality[m][c]["ap"]))])
        base = report.quality["baseline"]
        t.add_row("Random direction", *[v for c in cols for v in (_fmt(base[c]["random_auroc"]),
                                                                  _fmt(base[c]["random_ap"]))], style="dim")
        t.add_row("Positive rate", *[v for c in cols for v in ("", _fmt(base[c]["positive_rate"], 3))], style="dim")
        console.print(t)
    if report.retrieval:
        t = Table(title="Semantic retrieval (MRR / MPP, mean ± std); concept sets = held-out max-activating sentences")
        t.add_column("Method")
        for c in cols:
            k = report.retrieval["kept"][c]
            t.add_column(f"L{c} MRR ({k['kept']}/{k['sampled']})", justify="right")
            t.add_column(f"L{c} MPP", justify="right")
        for m in [*report.methods, "baseline"]:
            cells = [report.retrieval[m][c] for c in cols]
            t.add_row("Random" if m == "baseline" else NAMES.get(m, m),
                      *[f"{r[k]:.3f} ± {r[k + '_std']:.2f}" for r in cells for k in ("mrr", "mpp")],
                      style="dim" if m == "baseline" else None)
        console.print(t)
    if report.steering:
        st = report.steering
        j = st["judge"]
        t = Table(title=f"Steering faithfulness f (%) and Δa; judge {j['judge']}"
                        + (f" (threshold {j['threshold']:.3f}, {j['accuracy_on_paper_examples']:.0%} on the paper's "
                           "examples)" if "threshold" in j else ""))
        t.add_column("Method")
        for c in st["columns"]:
            t.add_column(f"{'L' + c if c != 'combined' else 'Combined'} f", justify="right")
            t.add_column("Δa", justify="right")
        for m, row in st["cells"].items():
            t.add_row(NAMES.get(m, m), *[v for c in st["columns"] for v in (_fmt(row[c]["faithfulness"]),
                                                                           _fmt(row[c]["delta_a"]))],
                      style="dim" if m == "random" else None)
        console.print(t)
        unrated = sum(cell["unrated"] for row in st["cells"].values() for cell in row.values())
        if unrated:
            console.print(f"[yellow]{unrated} generations could not be rated by the judge (excluded, not scored 0)[/]")
