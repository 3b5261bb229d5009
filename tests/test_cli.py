from __future__ import annotations

import json

import pytest

from atlascli.cli.main import main


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unknown_model_is_one_clear_line(capsys, tiny_dataset):
    code, out, err = run(capsys, "extract", "--model", "no-such-model", "--layers", "1", "--dataset", "tiny", "--json")
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: unknown model 'no-such-model'")
    assert "Traceback" not in err


def test_layer_out_of_range_and_bad_list(capsys, tiny_models, tiny_dataset):
    code, _, err = run(capsys, "extract", "--model", str(tiny_models["llama"]), "--layers", "9", "--dataset", "tiny",
                       "--json")
    assert code == 2 and "valid layers are 0..3" in err
    code, _, err = run(capsys, "extract", "--model", str(tiny_models["llama"]), "--layers", "1,x", "--json")
    assert code == 2 and "comma-separated integers" in err


def test_debug_shows_traceback(capsys, tiny_dataset):
    with pytest.raises(Exception, match="unknown model"):
        main(["extract", "--model", "no-such-model", "--layers", "1", "--dataset", "tiny", "--debug"])


def test_data_extract_fit_registry_json(capsys, tiny_models, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"The {w} number {i} is nice today." for i in range(60) for w in ["dog", "car"]))
    code, out, _ = run(capsys, "data", "prepare", str(text), "--name", "t", "--json")
    assert code == 0
    ds = json.loads(out)
    assert ds["provenance"]["n_train"] == 60
    code, out, _ = run(capsys, "extract", "--model", str(tiny_models["llama"]), "--layers", "1,2", "--site", "mlp",
                       "--dataset", "t", "--json")
    assert code == 0
    ex = json.loads(out)
    assert ex["provenance"]["n"] == 60 and ex["meta"]["widths"] == {"1": 48, "2": 48}
    code, out, _ = run(capsys, "fit", "--subject", str(tiny_models["llama"]), "--layer", "2",
                       "--atlas", f"{tiny_models['qwen2']}@1", "--dataset", "t", "--method", "procrustes,cov", "--json")
    assert code == 0
    fits = json.loads(out)
    assert [f["provenance"]["method"] for f in fits["alignments"]] == ["procrustes", "cov"]
    assert fits["plan"]["command"] == "fit" and fits["plan"]["line"].startswith("plan (fit)")
    code, out, _ = run(capsys, "registry", "ls", "--json")
    kinds = sorted(a["kind"] for a in json.loads(out))
    assert kinds.count("alignment") == 2 and kinds.count("activations") == 2 and kinds.count("dataset") == 1
    code, out, _ = run(capsys, "registry", "verify", "--json")
    assert code == 0 and len(json.loads(out)["verified"]) == 5


def test_corrupt_artifact_exits_non_zero(capsys, tiny_models, tiny_dataset):
    code, out, _ = run(capsys, "extract", "--model", str(tiny_models["llama"]), "--layers", "1", "--dataset", "tiny",
                       "--limit", "10", "--json")
    art_id = json.loads(out)["id"]
    from atlascli.registry import Registry

    art = Registry().get(art_id)
    shard = art.path / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    code, _, err = run(capsys, "registry", "verify", art_id)
    assert code == 2 and "does not match its checksum" in err


def test_unknown_method_and_models_listing(capsys):
    code, _, err = run(capsys, "fit", "--method", "ridge", "--atlas", "x@1")
    assert code == 2 and "unknown method" in err
    code, out, _ = run(capsys, "models", "--json")
    names = [r["name"] for r in json.loads(out)["zoo"]]
    assert names == ["gemma3-270m", "smollm2-135m-instruct", "minilm-l6"]


@pytest.mark.parametrize("args", [["extract", "--model", "m", "--layers", "1", "--limit", "-5"],
                                  ["extract", "--model", "m", "--layers", "1", "--limit", "0"],
                                  ["extract", "--model", "m", "--layers", "1", "--shard-size", "0"],
                                  ["extract", "--model", "m", "--layers", "1", "--batch-tokens", "0"],
                                  ["extract", "--model", "m", "--layers", "1", "--max-length", "0"],
                                  ["fit", "--atlas", "x@1", "--ridge", "-1"],
                                  ["fit", "--atlas", "x@1", "--limit", "0"],
                                  ["fit", "--atlas", "x@1", "--k", "0"]])
def test_numeric_options_are_bounded(capsys, args):
    code, _, err = run(capsys, *args)
    assert code == 2 and "Invalid value" in err and "Traceback" not in err


def test_one_broken_artifact_breaks_only_commands_naming_it(capsys, aligned):
    from atlascli.registry import Registry

    reg = Registry()
    search = ["search", "--features", "3,7", "--top", "3", "--samples", "0", "--json"]
    code, before_search, err = run(capsys, *search)
    assert code == 0, err
    _, before_ls, _ = run(capsys, "registry", "ls", "--json")
    stored = {p: p.read_bytes() for p in reg.root.rglob("*") if p.is_file() and "/." not in str(p)}
    atlas_art = reg.list("atlas")[0]
    future = reg.kind_dir("atlas") / "atlas-from-the-future"
    future.mkdir()
    (future / "manifest.json").write_text(json.dumps(dict(atlas_art.manifest, id=future.name, schema_version=2)))
    garbled = reg.kind_dir("alignment") / "align-garbled"
    garbled.mkdir()
    (garbled / "manifest.json").write_text('{"kind": "alig')

    assert run(capsys, *search)[:2] == (0, before_search)  # default atlas and alignment resolution skip them
    code, out, err = run(capsys, "registry", "ls", "--json")
    assert code == 0 and out == before_ls and "2 unreadable" in err
    assert run(capsys, "registry", "show", atlas_art.id, "--json")[0] == 0
    code, out, err = run(capsys, "registry", "verify", "--json")
    problems = {p["id"]: p for p in json.loads(out)["problems"]}
    assert code == 1 and set(problems) == {"atlas-from-the-future", "align-garbled"}
    assert "schema version 2" in problems["atlas-from-the-future"]["message"]
    assert "atlas registry rm align-garbled" in problems["align-garbled"]["fix"]
    code, _, err = run(capsys, "registry", "show", "atlas-from-the-future")
    assert code == 2 and "schema version 2" in err and "Traceback" not in err
    code, _, err = run(capsys, "registry", "rm", "../../outside")
    assert code == 2 and "refusing" in err
    code, _, err = run(capsys, "registry", "rm", "align-")  # a prefix of 3 folders: asks, stdin says nothing
    assert code != 0 and garbled.exists()
    for name in ("atlas-from-the-future", "align-garbled"):
        code, out, _ = run(capsys, "registry", "rm", name, "--json")
        assert code == 0 and json.loads(out) == {"removed": [name]}
    assert run(capsys, "registry", "verify")[0] == 0
    after = {p: p.read_bytes() for p in reg.root.rglob("*") if p.is_file() and "/." not in str(p)}
    assert {p: b for p, b in after.items() if p in stored} == stored  # nothing already stored changed


@pytest.mark.parametrize("args", [("search", "foo", "--top", "0"), ("search", "foo", "--threshold", "2"),
                                  ("search", "--bogus-flag"), ("bogus",), ("atlas", "show", "--feature", "abc")])
def test_usage_errors_are_one_line_naming_the_help(capsys, args):
    code, _, err = run(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "--help`" in lines[0], err


def test_bad_names_are_refused_with_the_valid_ones(capsys, aligned):
    code, _, err = run(capsys, "registry", "ls", "bogus")
    assert code == 2 and "unknown artifact kind 'bogus'" in err and "alignment" in err
    code, _, err = run(capsys, "search", "--features", "3", "--method", "bogus")
    assert code == 2 and "unknown method 'bogus'" in err and "procrustes" in err
    code, _, err = run(capsys, "search", "--features", "3", "--layer", "3")  # in range (4 layers), not fitted
    assert code == 2 and "fitted to atlas" in err and "layers 2" in err and "[(" not in err
    code, _, err = run(capsys, "explain", "--feature", "1", "--features", "2,3")
    assert code == 2 and "both --feature and --features" in err
    code, _, err = run(capsys, "explain", "--feature", "1", "--method", "bogus")
    assert code == 2 and "unknown method 'bogus'" in err
    code, _, err = run(capsys, "concept", "add", "foo")
    assert code == 2 and "--query" in err and "QUERY" not in err


@pytest.mark.parametrize("args, message", [
    (("--candidates", "bogus"), "unknown retrieval candidates"),
    (("--concept-construction", "bogus"), "unknown concept-set construction"),
    (("--n-features", "0"), "--n-features must be >= 1"),
    (("--concept-sets", "/nonexistent/sets.json"), "does not exist"),
])
def test_evaluate_dry_run_checks_what_the_run_checks(capsys, aligned, args, message):
    code, out, err = run(capsys, "evaluate", "quality,retrieval", "--dry-run", *args)
    assert code == 2 and message in err and "every input checked" not in out, (out, err)


def test_error_text_is_printed_as_given_not_as_markup(capsys):
    """A value that looks like rich markup (e.g. a layer list 'x[/]') is echoed verbatim, in one line."""
    code, _, err = run(capsys, "extract", "--model", "m", "--layers", "x[/]")
    assert code == 2 and "x[/]" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "registry", "ls", "[bold]kind")  # an AtlasError quoting the value
    assert code == 2 and "'[bold]kind'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "[bold]cmd")  # a usage error quoting it
    assert code == 2 and "[bold]cmd" in err and len(err.strip().splitlines()) == 1


def test_extract_then_fit_reuses_the_extraction_without_naming_a_site(capsys, tiny_models, tiny_dataset):
    """`atlas extract` reads what `atlas fit` reads by default (MLP neurons), so the fit extracts nothing again."""
    llama = str(tiny_models["llama"])
    code, out, err = run(capsys, "extract", "--model", llama, "--layers", "2", "--dataset", "tiny", "--limit", "60",
                         "--json")
    assert code == 0, err
    ex = json.loads(out)
    assert ex["provenance"]["site"] == "mlp"
    code, out, err = run(capsys, "fit", "--subject", llama, "--layer", "2", "--atlas", f"{tiny_models['qwen2']}@1",
                         "--dataset", "tiny", "--limit", "60", "--json")
    assert code == 0, err
    assert ex["id"] in json.loads(out)["plan"]["reused"]
    code, out, _ = run(capsys, "registry", "ls", "--json")
    assert sum(a["kind"] == "activations" for a in json.loads(out)) == 2  # the subject's, once, and the foundation's


def test_extract_with_an_atlas_reads_the_atlas_site(capsys, tiny_models, tiny_dataset, tmp_path):
    from atlascli.atlas import AtlasBuildConfig, build_atlas
    from atlascli.extract import default_site

    art = build_atlas(AtlasBuildConfig(name="m", foundation=str(tiny_models["gpt2"]), layer=1, site="mlp", width=32,
                                       k=4, dataset="tiny", train_sentences=100, max_tokens=2000, epochs=2,
                                       batch_size=256, lr=3e-3, label_sentences=100, top_samples=3))
    code, out, err = run(capsys, "extract", "--model", str(tiny_models["gpt2"]), "--layers", "1", "--sae", art.id,
                         "--dataset", "tiny", "--limit", "20", "--json")
    assert code == 0, err
    assert json.loads(out)["provenance"]["site"] == "mlp" and json.loads(out)["provenance"]["sparse"]
    # a sae-lens folder says where it reads in cfg.json's hook_name; without one, the residual stream
    for hook, site in [("blocks.1.hook_mlp_out", "mlp_out"), ("blocks.1.mlp.hook_post", "mlp"),
                       ("blocks.1.hook_resid_post", "resid"), (None, "resid")]:
        folder = tmp_path / str(hook)
        folder.mkdir()
        (folder / "cfg.json").write_text(json.dumps({"hook_name": hook, "d_in": 8}))
        assert default_site(str(folder)) == site
    assert default_site(None) == "mlp"
