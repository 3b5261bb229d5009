"""`atlas steer`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from atlascli.cli.common import TRUST_HELP, console, emit_json, err, parse_floats, parse_ints, read_prompts
from atlascli.errors import InputError

POOLING_TEXT = {"word": ", word-aligned", "mixed": ", word-aligned where fitted"}
"""How the header names the alignments that steered (nothing for the paper's max-pooled ones)."""


def steer_cmd(
    concept: str | None = typer.Option(None, "--concept", "-c", help="Named concept or text query."),
    features: str | None = typer.Option(None, help="Atlas features instead of a concept: 5218,12614:0.5."),
    lam: str | None = typer.Option(None, "--lambda", help="Strength (default 35, or the paper's for its concepts). "
                                                           "--unit norm: 35 is the calibrated strength of the site."),
    unit: str = typer.Option("norm", help="norm (lambda relative to each layer's median token norm, along the unit "
                                          "direction of s, calibrated per site so 35 is a good strength) or "
                                          "absolute (the paper's lambda * s)."),
    prompt: str | None = typer.Option(None, help="Prompt (default: \"Tell me a short story.\" for chat models, "
                                                 "the paper's joke prompt as a raw continuation otherwise)."),
    prompts: Path | None = typer.Option(None, help="File with one prompt per line."),
    layers: str | None = typer.Option(None, help="Layers to steer (default: the fitted early/middle layers)."),
    subject: str | None = typer.Option(None, help="Subject model (default: that of the latest alignment)."),
    atlas: str | None = typer.Option(None, help="Atlas (latest by default)."),
    method: str = typer.Option("procrustes", help="Translation method."),
    site: str | None = typer.Option(None, help="Fitted site to steer: mlp | mlp_out | resid (default: the residual "
                                               "stream when fitted, else MLP neurons)."),
    pooling: str = typer.Option("auto", help="Alignments to steer with: auto (word-aligned where `atlas fit --pooling "
                                             "word` made one, else max-pooled), word, or max (the paper's)."),
    max_new_tokens: int = typer.Option(60, min=1, max=4096, help="Tokens to generate."),
    sweep: str | None = typer.Option(None, help="Several lambdas, e.g. -50,-10,0,10,50 (one column each)."),
    random_dir: bool = typer.Option(False, "--random", help="Also steer along a random direction of the same norm."),
    seed: int = typer.Option(0, help="Seed of sampling and of --random."),
    sample: bool = typer.Option(False, "--sample/--greedy", help="Sample or decode greedily."),
    repetition_penalty: float | None = typer.Option(None, help="Penalty on tokens already in the text (CTRL's; "
                                                    "default 1.15; 1 = none, the paper's decoding): steered text "
                                                    "otherwise often loops."),
    chat: bool | None = typer.Option(None, "--chat/--raw", help="Apply the chat template (default: when the model "
                                                                 "has one) or continue the raw prompt."),
    route: str = typer.Option("auto", help="How a text concept becomes a query: auto, examples, labels."),
    top_features: int = typer.Option(5, min=1, help="Atlas features a text concept resolves to (labels route)."),
    threshold: float | None = typer.Option(None, min=-1.0, max=1.0,
                                           help="Minimum similarity of the text to labels (0.25) / examples (0.2)."),
    device: str = typer.Option("cpu", help="Device of the subject model: cpu, cuda or auto."),
    dtype: str = typer.Option("float32", help="Subject weights dtype: float32, bfloat16 or float16."),
    trust_remote_code: bool = typer.Option(False, help=TRUST_HELP),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Generate with and without steering along an atlas concept (eq. 4), side by side."""
    from atlascli.atlas import resolve_atlas
    from atlascli.cli.cmd_search import build_query, render_query
    from atlascli.registry import Registry
    from atlascli.steer_run import SteerConfig, check_steer, run_steer

    plist = read_prompts(prompts) if prompts is not None else [prompt] if prompt else []
    if concept is None and features is None:
        raise InputError("no concept given", "use --concept london or --features 5218,12614")
    if concept is not None and features is not None:
        raise InputError("both --concept and --features given", "steer one concept: drop one of them")
    lams: list[float] = []
    if lam is not None:
        lams = parse_floats(lam, "lambda", "35")
        if len(lams) != 1:
            raise InputError(f"--lambda takes one number, got {lam!r}", "use --sweep 0,10,35 for several")
    if sweep:
        lams += parse_floats(sweep, "sweep", "0,10,35")
    if (lam is not None or sweep) and not lams:
        raise InputError("no lambda given", "e.g. --lambda 35")
    cfg = SteerConfig(lambdas=tuple(lams), unit=unit, layers=parse_ints(layers, "layers") if layers else (),
                      subject=subject, method=method, site=site, pooling=pooling, random=random_dir, chat=chat,
                      max_new_tokens=max_new_tokens,
                      **({} if repetition_penalty is None else {"repetition_penalty": repetition_penalty}),
                      sample=sample, seed=seed, default_prompt=prompts is None and not prompt, device=device,
                      dtype=dtype, trust_remote_code=trust_remote_code)
    reg = Registry()
    at = resolve_atlas(atlas, reg)
    check_steer(cfg, at, reg)  # subject, site, method and layers before the concept is resolved or a model loads
    query = build_query(at, concept if features is None else None, features, None, None, top_features, threshold,
                        route)
    if not json_out:
        render_query(query, at)
    with err.status("steering"):
        res = run_steer(query, plist, cfg, at, reg, concept_name=concept)
    if json_out:
        emit_json({"subject": res.subject, "site": res.site, "layers": res.layers, "layers_default": res.layers_default,
                   "pooling": res.pooling, "word_hits": res.word_hits,
                   "fitted_not_steered": res.not_steered,
                   "method": method, "unit": res.unit, "lambda_source": res.lambda_source, "chat": res.chat,
                   "sample": sample, "repetition_penalty": cfg.repetition_penalty,
                   "query": {"source": query.source, "matches": query.matches, "examples": query.examples,
                             "note": query.note},
                   "multipliers": {str(k): v for k, v in res.multipliers.items()},
                   "vector_norms": res.vector_norms, "site_norms": res.site_norms, "prompts": res.prompts,
                   "generations": {str(k): v for k, v in res.generations.items()},
                   "random_generations": {str(k): v for k, v in res.random_generations.items()}
                   if random_dir else None, "note": res.note})
        return
    from atlascli.steering import norm_reference

    unit_text = (f" norm units (35 = {35 / norm_reference(res.site):.0%} of a typical {res.site} token's norm at each "
                 "layer)" if res.unit == "norm" else " absolute units (the paper's convention)")
    default = ""
    if res.layers_default:
        default = " (default steering layers" + (
            f"; also fitted: {', '.join(map(str, res.not_steered))}, left out: lambda adds up over layers;"
            " --layers picks them" if res.not_steered else "") + ")"
    console.print(f"steering {res.subject} layers {res.layers}{default}"
                  + f" at {res.site} ({method}{POOLING_TEXT.get(res.pooling, '')}); lambda in{unit_text}"
                  + (f"; lambda from {res.lambda_source}" if res.lambda_source != "given" else "")
                  + ("; chat template" if res.chat else "; raw prompt")
                  + ("; sampled" if sample else "; greedy")
                  + (f", repetition penalty {cfg.repetition_penalty:g}" if cfg.repetition_penalty != 1 else ""),
                  highlight=False)
    if res.word_hits is not None:
        text = f"'{res.query.text}'" if res.query.text else "the query"
        found = (f"{text} where it occurs in them ({res.word_hits} words)" if res.word_hits
                 else f"every word of them ({text} occurs in none)")
        console.print(f"[dim]word-aligned layers steer along the examples' codes joined with the codes of {found}[/]",
                      highlight=False)
    if res.note:
        console.print(f"[dim]note: {res.note}[/]", highlight=False)
    for i, pr in enumerate(res.prompts):
        table = Table(title=f"prompt: {pr}", show_lines=True)
        cols = []
        for lam_v in res.generations:
            table.add_column("unsteered" if lam_v == 0 else f"λ = {lam_v:g}", overflow="fold", ratio=1)
            cols.append(res.generations[lam_v][i])
        for lam_v, gens in res.random_generations.items():
            table.add_column(f"random λ = {lam_v:g}", overflow="fold", ratio=1)
            cols.append(gens[i])
        table.add_row(*cols)
        console.print(table)
