"""`atlas evaluate quality|retrieval|steering|all`: tables shaped like the paper's Tables 3, 4 and 5."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from atlascli.cli.common import TRUST_HELP, console, emit_json, parse_floats, parse_ints, read_prompts, staged_bars
from atlascli.errors import InputError

NAMES = {"procrustes": "Orthogonal Procrustes", "cov": "Covariance", "corr": "Cross Correlation",
         "linreg": "Linear Regression", "semlens": "Semantic Lens", "random": "Random",
         "procrustes-word": "Orthogonal Procrustes, word-aligned"}


SHORT = {"procrustes": "OP", "cov": "Cov", "corr": "CC", "linreg": "LR", "semlens": "SL", "random": "Rnd",
         "procrustes-word": "OPw"}
LEGEND = ("OP = Orthogonal Procrustes, Cov = Covariance, CC = Cross Correlation, LR = Linear Regression, "
          "SL = Semantic Lens, Rnd = random direction, OPw = Procrustes fitted on word-aligned tokens (what `atlas steer` "
          "uses where fitted)")


def _name(m: str) -> str:
    """The method's name, abbreviated in a narrow terminal (a legend is printed under the tables)."""
    return SHORT.get(m, m) if console.width < 120 else NAMES.get(m, m)


def _fmt(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def evaluate_cmd(
    what: str = typer.Argument("all", help="quality | retrieval | steering | all (or a comma list)."),
    subject: str | None = typer.Option(None, "--subject", "-s", help="Subject model (default: latest alignment's)."),
    layers: str | None = typer.Option(None, help="Layers (default: all fitted with every method)."),
    methods: str | None = typer.Option(None, help="Methods, comma list or all (default: every fitted method)."),
    atlas: str | None = typer.Option(None, help="Atlas (latest by default)."),
    site: str | None = typer.Option(None, help="Fitted site: mlp | mlp_out | resid (default: mlp neurons when "
                                               "fitted, the subject features one inspects)."),
    seed: int = typer.Option(0, help="Seed of sampling, baselines and generation."),
    test_limit: int = typer.Option(5000, help="Held-out test sentences for quality and retrieval."),
    features: str | None = typer.Option(None, help="Atlas features for quality, or 'paper' for the paper's 100 (A.6.1, "
                                        "Gemma Scope 16k L20 atlas); default: sample --n-features."),
    n_features: int = typer.Option(100, help="Atlas features sampled for quality."),
    retrieval_features: int = typer.Option(500, help="Subject features sampled for retrieval."),
    set_size: int = typer.Option(20, help="Sentences per retrieval concept set."),
    candidates: str = typer.Option("validated", help="Retrieval ranks each query among the 'validated' features (the "
                                   "paper; chance H_n/n, 1/n) or 'all' subject features (harder). Both are reported."),
    concept_construction: str = typer.Option("tail", help="Offline concept sets: 'tail' (sampled among ranks 21-200, "
                                             "no method's statistic) or 'top' (top --set-size; favours Semantic Lens)."),
    concept_sets: Path | None = typer.Option(None, help="Concept sets file (JSON/JSONL: subject feature -> sentences), "
                                             "as the paper's LLM-written sets; overrides --concept-construction."),
    random_draws: int = typer.Option(3, help="Random directions per feature (quality) and per concept (steering)."),
    chat: bool | None = typer.Option(None, "--chat/--raw", help="Steering prompts with the chat template, or raw "
                                     "continuations (default: raw, as the paper's seed prompts)."),
    subjects: str | None = typer.Option(None, help="Several subjects A,B,C: one Table-7-style report and figure."),
    concepts: str | None = typer.Option(None, help="Steering concepts, ';'-separated names or text queries."),
    prompts: Path | None = typer.Option(None, help="Seed prompts file (default: the paper's 16)."),
    lambdas: str = typer.Option("-50,-10,-1,0,1,10,50", help="Steering factors."),
    unit: str = typer.Option("absolute", help="Unit of the steering factors: absolute (the paper's lambda * s) or "
                                              "norm (`atlas steer`'s: a share of each layer's median token norm)."),
    combined: bool = typer.Option(True, "--combined/--no-combined", help="Also steer all layers together."),
    max_new_tokens: int = typer.Option(100, help="Tokens per generation."),
    judge: str = typer.Option("embedding", help="embedding[:EMBEDDER] | openai:MODEL."),
    judge_url: str | None = typer.Option(None, help="Base URL of an OpenAI-compatible endpoint."),
    judge_fpr: float = typer.Option(0.05, help="False-positive rate calibrating the embedding judge."),
    judge_retries: int = typer.Option(4, help="Attempts per chat-judge request."),
    judge_backoff: float = typer.Option(1.0, help="First retry delay in seconds (doubles)."),
    judge_timeout: float = typer.Option(60.0, help="Seconds per chat-judge request."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto."),
    trust_remote_code: bool = typer.Option(False, help=TRUST_HELP),
    plot: Path | None = typer.Option(None, help="Write a matplotlib figure here."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output (every number + configuration)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check every input, print the plan and its cost, exit."),
) -> None:
    """Translation quality (AUROC/AP), retrieval (MRR/MPP) and steering faithfulness, methods x layers."""
    from atlascli.cli.plan_view import PlanSink
    from atlascli.cli.plan_view import dry_run as show_dry_run
    from atlascli.evaluate import KINDS, EvaluateConfig, evaluate

    kinds = KINDS if what == "all" else tuple(k.strip() for k in what.split(",") if k.strip())
    plist = tuple(read_prompts(prompts)) if prompts is not None else None
    lams = tuple(parse_floats(lambdas, "lambdas", "-50,-10,0,10,50"))
    cfg = EvaluateConfig(kinds=kinds, subject=subject, layers=parse_ints(layers, "layers") if layers else None,
                         methods=methods, atlas=atlas, site=site, seed=seed, test_limit=test_limit,
                         features=parse_ints(features, "features") if features and features != "paper" else None,
                         paper_features=features == "paper", n_features=n_features,
                         retrieval_features=retrieval_features, set_size=set_size, candidates=candidates,
                         concept_construction=concept_construction,
                         concept_sets=str(concept_sets) if concept_sets else None, random_draws=random_draws, chat=chat,
                         concepts=tuple(c.strip() for c in concepts.split(";") if c.strip()) if concepts else None,
                         prompts=plist, lambdas=lams, unit=unit, combined=combined,
                         max_new_tokens=max_new_tokens, judge=judge, judge_url=judge_url, judge_fpr=judge_fpr,
                         judge_retries=judge_retries, judge_backoff=judge_backoff, judge_timeout=judge_timeout, device=device,
                         trust_remote_code=trust_remote_code)
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib", "pip install matplotlib") from None
    if dry_run:
        from atlascli.plan_tasks import plan_evaluate

        show_dry_run(lambda: plan_evaluate(cfg), json_out)
        return
    if subjects:
        _multi(cfg, subjects, plot, json_out)
        return
    sink = PlanSink()
    with staged_bars(json_out) as progress:
        report = evaluate(cfg, progress=progress, on_plan=sink)
    if plot is not None:
        from atlascli.evaluate.plot import plot_report

        plot_report(report, plot)
    if json_out:
        emit_json({**asdict(report), "plan": sink.json})
        return
    render(report)
    if plot is not None:
        console.print(f"figure: {plot}")
    console.print(f"report: {report.artifact}")


def _multi(cfg: Any, subjects: str, plot: Path | None, json_out: bool) -> None:
    from atlascli.evaluate.multi import evaluate_subjects, parse_subjects

    with staged_bars(json_out) as progress:
        multi = evaluate_subjects(cfg, parse_subjects(subjects), progress=progress)
    if plot is not None:
        from atlascli.evaluate.plot import plot_multi

        plot_multi(multi, plot)
    if json_out:
        from atlascli.evaluate.multi import _jsonable

        emit_json(_jsonable(asdict(multi)))
        return
    render_multi(multi)
    if plot is not None:
        console.print(f"figure: {plot}")
    console.print(f"report: {multi.artifact} (per subject: {', '.join(str(r.artifact) for r in multi.reports.values())})")


def render_multi(multi: Any) -> None:
    """Table 7: subjects x layers as rows, methods (and random) as columns, one table per evaluation."""
    heads = {"quality": ("AUROC", "AP", "auroc", "ap"), "retrieval": ("MRR", "MPP", "mrr", "mpp"),
             "steering": ("f", "Δa", "faithfulness", "delta_a")}
    for kind, by_subject in multi.table.items():
        h1, h2, k1, k2 = heads[kind]
        cols = [*multi.methods, "random"]
        t = Table(title=f"{kind}: {h1} / {h2}, {len(multi.subjects)} subjects -> {multi.atlas}")
        t.add_column("Subject")
        t.add_column("Layer")
        for m in cols:
            t.add_column(f"{NAMES.get(m, m)} {h1}", justify="right")
            t.add_column(h2, justify="right")
        for subject, by_layer in by_subject.items():
            for n, (layer, row) in enumerate(by_layer.items()):
                cells = [v for m in cols for v in (_fmt(row.get(m, {}).get(k1)), _fmt(row.get(m, {}).get(k2)))]
                t.add_row(subject if n == 0 else "", layer if layer == "combined" else f"L{layer}", *cells)
        console.print(t)


def _pm(x: Any, sd: Any, digits: int = 2) -> str:
    return _fmt(x, digits) + (f" ± {sd:.{digits}f}" if sd is not None and x is not None else "")


Row = tuple[str, dict[str, dict[str, str]], str]
"""A table row: label, layer -> metric -> cell text, Rich style."""


def _grid(title: str, metrics: list[str], cols: list[str], rows: list[Row],
          headers: dict[str, str] | None = None) -> None:
    """Methods as rows, layer x metric as columns; below 120 columns one table per metric (layers as columns), so
    that no number is ever cut, whatever the number of layers."""
    headers = headers or {}
    groups = [metrics] if console.width >= 120 or len(cols) * len(metrics) <= 4 else [[m] for m in metrics]
    for group in groups:
        t = Table(title=title if len(groups) == 1 else f"{title}: {group[0]}")
        t.add_column("Method", no_wrap=True)
        for c in cols:
            for m in group:
                t.add_column(f"L{c} {headers.get(c + m, m)}" if len(group) > 1 else f"L{c}" + headers.get(c + m, ""),
                             justify="right")
        for label, cells, style in rows:
            if not any(cells.get(c, {}).get(m) for c in cols for m in group):
                continue  # e.g. the positive rate under AUROC
            t.add_row(label, *[cells.get(c, {}).get(m, "") for c in cols for m in group], style=style)
        console.print(t)


def render(report: Any) -> None:
    """Rich tables: methods as rows, layers as columns (names abbreviated, with a legend, in narrow terminals)."""
    _render(report)
    if console.width < 120:
        console.print(f"[dim]{LEGEND}[/]", highlight=False)


def _render(report: Any) -> None:
    cols = [str(la) for la in report.layers]
    narrow = console.width < 120
    if report.quality:
        q = report.quality
        dropped = q.get("dropped", {"count": 0, "features": {}})
        why = "; ".join(f"{len(v)} {k}" for k, v in dropped["features"].items())
        title = (f"Translation quality (AUROC / AP), {q.get('used', len(q['features']))} of {len(q['features'])} "
                 f"atlas features ({q.get('feature_source', 'sampled')}"
                 + (f"; dropped: {why}" if dropped["count"] else "; none dropped")
                 + f"), N={report.data['n_test']} test sentences")
        rows: list[Row] = [(_name(m), {c: {"AUROC": _fmt(q[m][c]["auroc"]), "AP": _fmt(q[m][c]["ap"])}
                                       for c in cols}, "") for m in report.methods]
        base = q["baseline"]
        draws = base[cols[0]].get("random_draws", 1)
        rows.append((_name("random") + f" ({draws}x)" if narrow else
                     f"Random direction ({draws} draw{'s' if draws != 1 else ''}, mean ± sd)",
                     {c: {"AUROC": _pm(base[c]["random_auroc"], base[c].get("random_auroc_std")),
                          "AP": _pm(base[c]["random_ap"], base[c].get("random_ap_std"))} for c in cols}, "dim"))
        rows.append(("Pos. rate" if narrow else "Positive rate",
                     {c: {"AP": _fmt(base[c]["positive_rate"], 3)} for c in cols}, "dim"))
        _grid(title, ["AUROC", "AP"], cols, rows)
    if report.retrieval:
        _render_retrieval(report, cols)
    if report.steering:
        _render_steering(report)


def _render_retrieval(report: Any, cols: list[str]) -> None:
    r = report.retrieval
    chosen = r.get("candidates", "validated")
    console.print(f"concept sets: {r.get('construction', 'top')}", highlight=False)
    for cand in (chosen, *[c for c in ("validated", "all") if c != chosen]):
        what = ("among the validated features (the paper's protocol)" if cand == "validated"
                else "among all subject features (harder)")
        ns = {c: r["baseline"][c][cand]["n_candidates"] for c in cols}
        rows: list[Row] = []
        for m in report.methods:
            cells = {c: r[m][c].get(cand, r[m][c]) for c in cols}
            rows.append((_name(m), {c: {k.upper(): f"{x[k]:.3f} ± {x[k + '_std']:.2f}" for k in ("mrr", "mpp")}
                                    for c, x in cells.items()}, ""))
        rows.append(("Chance (H_n/n, 1/n)",
                     {c: {k.upper(): f"{r['baseline'][c][cand][k]:.4f}" for k in ("mrr", "mpp")} for c in cols}, "dim"))
        _grid(f"Semantic retrieval (MRR / MPP, mean ± std), each query ranked {what}", ["MRR", "MPP"], cols, rows,
              headers={c + "MRR": f" (n={n})" for c, n in ns.items()})
    for c in cols:
        k = r["kept"][c]
        why = "; ".join(f"{n} {reason}" for reason, n in k.get("dropped_by_reason", {}).items())
        console.print(f"L{c}: {k['kept']} validated of {k['sampled']} concept sets" + (f" (dropped: {why})" if why else ""))


def _render_steering(report: Any) -> None:
    st = report.steering
    j = st["judge"]
    t = Table(title=f"Steering faithfulness f (%) and Δa; judge {j['judge']}"
                    + (f" (threshold {j['threshold']:.3f}, {j['accuracy_on_paper_examples']:.0%} on the paper's "
                       "examples)" if "threshold" in j else ""))
    t.add_column("Method", no_wrap=True)
    for c in st["columns"]:
        t.add_column(f"{'L' + c if c != 'combined' else 'Combined'} f", justify="right")
        t.add_column("Δa", justify="right")
    for m, row in st["cells"].items():
        name = _name(m) + ((f" ({st.get('random_draws', 1)}x)" if console.width < 120 else
                            f" ({st.get('random_draws', 1)} draws, mean ± sd)") if m == "random" else "")
        t.add_row(name, *[v for c in st["columns"] for v in (_pm(row[c]["faithfulness"], row[c].get("faithfulness_std")),
                                                             _pm(row[c]["delta_a"], row[c].get("delta_a_std")))],
                  style="dim" if m == "random" else None)
    console.print(t)
    if "prompt_format" in st:
        console.print(f"prompts: {st['prompt_format']}", highlight=False)
    unrated = sum(cell["unrated"] for row in st["cells"].values() for cell in row.values())
    if unrated:
        console.print(f"[yellow]{unrated} generations could not be rated by the judge (excluded, not scored 0)[/]")
