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
    assert [f["provenance"]["method"] for f in fits] == ["procrustes", "cov"]
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
