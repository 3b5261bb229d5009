"""`atlas steer`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from atlascli.cli.common import console, emit_json, err, parse_floats, parse_ints, read_prompts
from atlascli.errors import InputError

DEFAULT_PROMPT = "Sure, I always have a joke ready! Here is one:"


def steer_cmd(
    concept: str | None = typer.Option(None, "--concept", "-c", help="Named concept or text query."),
    features: str | None = typer.Option(None, help="Atlas features instead of a concept: 5218,12614:0.5."),
    lam: str = typer.Option("35", "--lambda", help="Steering strength, or one per layer (comma list)."),
    prompt: str | None = typer.Option(None, help="Prompt (default: the paper's joke prompt)."),
    prompts: Path | None = typer.Option(None, help="File with one prompt per line."),
    layers: str | None = typer.Option(None, help="Layers to steer (default: every fitted layer)."),
    subject: str | None = typer.Option(None, help="Subject model (default: that of the latest alignment)."),
    atlas: str | None = typer.Option(None, help="Atlas (latest by default)."),
    method: str = typer.Option("procrustes", help="Translation method."),
    max_new_tokens: int = typer.Option(60, help="Tokens to generate."),
    sweep: str | None = typer.Option(None, help="Several lambdas, e.g. -50,-10,0,10,50 (one column each)."),
    random_dir: bool = typer.Option(False, "--random", help="Steer along a random direction of the same norm."),
    relative: bool = typer.Option(False, "--relative", help="Lambda x each layer's median token norm on the prompts."),
    seed: int = typer.Option(0, help="Seed of sampling and of --random."),
    sample: bool = typer.Option(False, "--sample/--greedy", help="Sample or decode greedily."),
    raw: bool = typer.Option(False, help="Do not apply the chat template."),
    top_features: int = typer.Option(5, help="Atlas features a text concept resolves to."),
    threshold: float = typer.Option(0.35, help="Minimum label similarity for text concepts."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Generate with and without steering along an atlas concept (eq. 4), side by side."""
    from atlascli.atlas import resolve_atlas
    from atlascli.cli.cmd_search import build_query
    from atlascli.models import load_model
    from atlascli.registry import Registry
    from atlascli.steering import GenerationConfig, concept_vectors, random_like, site_norms, steer_sweep

    if prompts is not None:
        plist = read_prompts(prompts)
    else:
        plist = [prompt or DEFAULT_PROMPT]
    lams = parse_floats(lam, "lambda", "35 or --sweep -10,0,10")
    reg = Registry()
    at = resolve_atlas(atlas, reg)
    if concept is None and features is None:
        raise InputError("no concept given", "use --concept london or --features 5218,12614")
    query = build_query(at, concept if features is None else None, features, None, None, top_features, threshold)
    vectors, arts = concept_vectors(query, reg, at, subject, list(parse_ints(layers, "layers")) if layers else None,
                                    method)
    if random_dir:
        vectors = random_like(vectors, seed)
    layer_list = sorted(vectors)
    if len(lams) not in (1, len(layer_list)):
        raise InputError(f"{len(lams)} lambdas for {len(layer_list)} layers", "give one lambda or one per layer")
    scale = {layer: (lams[i] / lams[0] if lams[0] else 0.0) if len(lams) > 1 else 1.0
             for i, layer in enumerate(layer_list)}
    sweep_vals = parse_floats(sweep, "sweep", "-10,0,10") if sweep else [0.0, lams[0]]
    if 0.0 not in sweep_vals:
        sweep_vals = [0.0, *sweep_vals]
    p = arts[0].provenance
    with err.status(f"loading {p['subject']}"):
        lm = load_model(p["subject"])
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, sample=sample, seed=seed, chat=not raw)
    if relative:
        norms = site_norms(lm, p["site"], layer_list, plist, chat=not raw)
        scale = {layer: scale[layer] * norms[layer] for layer in layer_list}
    with err.status("generating"):
        res = steer_sweep(lm, p["site"], vectors, sweep_vals, plist, cfg, scale)
    if json_out:
        emit_json({"subject": p["subject"], "site": p["site"], "layers": layer_list, "method": method,
                   "random": random_dir, "relative": relative, "layer_lambda_scale": scale,
                   "query": {"source": query.source, "matches": query.matches},
                   "vector_norms": res.vector_norms, "prompts": plist,
                   "generations": {str(k): v for k, v in res.generations.items()}})
        return
    console.print(f"[bold]{query.source}[/] query → atlas features "
                  + ", ".join(f"{m['index']} '{m['label']}'" for m in query.matches[:5]))
    console.print(f"steering {p['subject']} layers {layer_list} ({p['site']}, {method})"
                  + (" along a RANDOM direction" if random_dir else ""))
    for i, pr in enumerate(plist):
        table = Table(title=f"prompt: {pr}", show_lines=True)
        for lam_v in res.generations:
            table.add_column("unsteered" if lam_v == 0 else f"λ = {lam_v:g}", overflow="fold")
        table.add_row(*[res.generations[lam_v][i] for lam_v in res.generations])
        console.print(table)
