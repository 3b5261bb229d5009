from __future__ import annotations

import importlib
import json
import re

import numpy as np
import pytest
import torch

from atlascli.cli.main import main
from atlascli.errors import InputError
from atlascli.hooks import record_sites
from atlascli.models import blocks, load_model
from atlascli.registry import Registry
from atlascli.search import query_from_features
from atlascli.steering import (
    GenerationConfig,
    concept_vectors,
    generate,
    random_like,
    renormalised_add,
    steer_sweep,
    steering,
)


def test_eq4_matches_numpy():
    rng = np.random.default_rng(0)
    a, s = rng.normal(size=(3, 7, 16)), rng.normal(size=16)
    lam = 2.5
    got = renormalised_add(torch.from_numpy(s), lam)(torch.from_numpy(a)).numpy()
    b = a + lam * s
    ref = b * np.linalg.norm(a, axis=-1, keepdims=True) / np.linalg.norm(b, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(a, axis=-1), rtol=1e-12)
    # one lambda per batch row: each row as the numpy reference at its own lambda; lambda 0 leaves a row bit for bit
    lams = np.array([0.0, 2.5, -4.0])
    rows = renormalised_add(torch.from_numpy(s), torch.from_numpy(lams))(torch.from_numpy(a)).numpy()
    b = a + lams[:, None, None] * s
    ref = b * np.linalg.norm(a, axis=-1, keepdims=True) / np.linalg.norm(b, axis=-1, keepdims=True)
    np.testing.assert_allclose(rows, ref, rtol=1e-12)
    assert np.array_equal(rows[0], a[0])
    with pytest.raises(InputError, match="2 per-row lambdas for a batch of 3"):
        renormalised_add(torch.from_numpy(s), torch.tensor([1.0, 2.0]))(torch.from_numpy(a))


@pytest.mark.parametrize("site,width", [("mlp", 48), ("resid", 32)])
def test_steering_edits_exactly_the_site_and_cleans_up(tiny_models, site, width):
    lm = load_model(str(tiny_models["llama"]))
    enc = lm.tokenizer(["The dog barked at the cat."], return_tensors="pt")
    v = torch.randn(width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), record_sites(lm.model, [1], site, stop_after=False) as plain:
        base_logits = lm.model(**enc).logits
    with torch.no_grad(), steering(lm.model, site, {1: v}, {1: 3.0}):
        with record_sites(lm.model, [1], site, stop_after=False) as steered:
            steered_logits = lm.model(**enc).logits
    # hooks run in registration order and pass their replacement on: the recorder sees the steered site,
    # and steering at layer 1 does not change what layer 1 receives, so steered == eq. 4 of the plain site
    torch.testing.assert_close(steered[1], renormalised_add(v, 3.0)(plain[1]))
    assert not torch.allclose(base_logits, steered_logits)
    before = [len(b._forward_hooks) + len(b.mlp.down_proj._forward_pre_hooks) for b in blocks(lm.model)]
    with pytest.raises(RuntimeError):
        with steering(lm.model, site, {0: v, 2: v}, {0: 1.0, 2: 5.0}):
            raise RuntimeError("boom")
    assert [len(b._forward_hooks) + len(b.mlp.down_proj._forward_pre_hooks) for b in blocks(lm.model)] == before
    with torch.no_grad():
        torch.testing.assert_close(lm.model(**enc).logits, base_logits)
    with pytest.raises(InputError, match="no lambda"):
        with steering(lm.model, site, {0: v}, {}):
            pass


def test_zero_lambda_at_a_layer_is_a_no_op(tiny_models):
    lm = load_model(str(tiny_models["llama"]))
    enc = lm.tokenizer(["Music plays loudly."], return_tensors="pt")
    v = torch.randn(48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), steering(lm.model, "mlp", {1: v}, {1: 4.0}):
        one = lm.model(**enc).logits
    with torch.no_grad(), steering(lm.model, "mlp", {1: v, 2: v}, {1: 4.0, 2: 0.0}):
        two = lm.model(**enc).logits
    torch.testing.assert_close(one, two)


def test_random_baseline_keeps_norms():
    g = torch.Generator().manual_seed(1)  # not the global RNG: a test before may leave it freshly seeded with 0,
    vec = {3: torch.randn(20, generator=g), 7: torch.randn(20, generator=g) * 5}  # random_like's own seed below
    r1, r2 = random_like(vec, 0), random_like(vec, 0)
    for layer in vec:
        assert float(r1[layer].norm()) == pytest.approx(float(vec[layer].norm()), rel=1e-5)
        assert torch.equal(r1[layer], r2[layer])
        assert abs(float(torch.nn.functional.cosine_similarity(r1[layer], vec[layer], dim=0))) < 0.9


def test_generation_and_sweep(tiny_models, monkeypatch):
    lm = load_model(str(tiny_models["llama"]))
    cfg = GenerationConfig(max_new_tokens=6)
    a = generate(lm, ["The dog", "A cat sat on"], cfg)
    assert a == generate(lm, ["The dog", "A cat sat on"], cfg) and len(a) == 2
    v = torch.randn(48, generator=torch.Generator().manual_seed(0))
    res = steer_sweep(lm, "mlp", {1: v, 2: v}, [0.0, 50.0], ["The dog"], cfg)
    assert res.generations[0.0] == generate(lm, ["The dog"], cfg)
    assert set(res.generations) == {0.0, 50.0} and res.layers == [1, 2]
    # the sweep batches lambdas x prompts (and chunks past SWEEP_ROWS): each row as if generated on its own
    prompts, lams = ["The dog", "A cat sat on"], [0.0, -30.0, 50.0]
    alone = {0.0: generate(lm, prompts, cfg)}
    for lam in lams[1:]:
        with steering(lm.model, "mlp", {1: v, 2: v}, {1: lam, 2: lam}):
            alone[lam] = generate(lm, prompts, cfg)
    assert alone[50.0] != alone[0.0]  # steering changes the text: the comparison can fail
    assert steer_sweep(lm, "mlp", {1: v, 2: v}, lams, prompts, cfg).generations == alone
    module = importlib.import_module("atlascli.steering")  # (the package's `steering` is the API function)
    monkeypatch.setattr(module, "SWEEP_ROWS", 3)  # one lambda per batch
    assert steer_sweep(lm, "mlp", {1: v, 2: v}, lams, prompts, cfg).generations == alone
    with pytest.raises(InputError, match="empty prompt"):
        generate(lm, [""], cfg)


def test_repetition_penalty_is_transformers_own(tiny_models):
    """generate() with a penalty equals transformers' generate with ``repetition_penalty`` (the reference, called
    here by hand), differs from plain greedy decoding (so the comparison can fail), and 1 passes nothing."""
    lm = load_model(str(tiny_models["llama"]))
    prompts = ["The dog", "A cat sat on"]
    tok = lm.tokenizer
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)

    def reference(**extra):
        out = lm.model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id,
                                temperature=None, top_p=None, top_k=None, **extra)
        return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    plain = generate(lm, prompts, GenerationConfig(max_new_tokens=12, chat=False))
    penalised = generate(lm, prompts, GenerationConfig(max_new_tokens=12, chat=False, repetition_penalty=3.0))
    assert plain == reference() and penalised == reference(repetition_penalty=3.0)
    assert penalised != plain
    assert generate(lm, prompts, GenerationConfig(max_new_tokens=12, chat=False, repetition_penalty=1.0)) == plain
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="repetition penalty must be a positive number"):
            GenerationConfig(repetition_penalty=bad)


def test_concept_vectors_and_missing_layers(aligned):
    atlas, fits = aligned
    q = query_from_features("3,7", atlas)
    vecs, arts = concept_vectors(q, Registry(), atlas, None, None)
    assert list(vecs) == [2] and vecs[2].shape == (48,)
    with pytest.raises(InputError, match=r"layer\(s\) \[1\].*fitted: \[2\].*atlas fit"):
        concept_vectors(q, Registry(), atlas, None, [1, 2])


def test_steer_cli(aligned, capsys, tmp_path):
    code = main(["steer", "--features", "3,7", "--lambda", "20", "--prompt", "The dog", "--max-new-tokens", "5",
                 "--sweep", "-20,20", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out)
    assert set(data["generations"]) == {"0.0", "-20.0", "20.0"} and data["layers"] == [2]
    code = main(["steer", "--features", "3", "--lambda", "big"])
    assert code == 2 and "must be numbers" in capsys.readouterr().err
    empty = tmp_path / "p.txt"
    empty.write_text("\n\n")
    code = main(["steer", "--features", "3", "--prompts", str(empty)])
    assert code == 2 and "no prompts" in capsys.readouterr().err
    code = main(["steer", "--features", "3", "--layers", "1"])
    assert code == 2 and "atlas fit" in capsys.readouterr().err
    code = main(["steer", "--features", "3", "--random", "--prompt", "Hi", "--max-new-tokens", "3", "--json"])
    assert code == 0 and list(json.loads(capsys.readouterr().out)["random_generations"]) == ["35.0"]
    code = main(["steer", "--features", "3", "--unit", "absolute", "--lambda", "0.5", "--prompt", "Hi",
                 "--max-new-tokens", "3", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["unit"] == "absolute" and data["multipliers"]["0.5"]["2"] == 0.5


def test_site_norms_match_a_hand_hook(tiny_models):
    from atlascli.models import load_model
    from atlascli.steering import format_prompts, site_norms

    lm = load_model(str(tiny_models["llama"]))
    prompts = ["The dog", "A cat sat on the mat today"]
    got = site_norms(lm, "mlp", [1, 2], prompts, chat=False)
    seen = {}
    handles = [lm.model.model.layers[i].mlp.down_proj.register_forward_pre_hook(
        lambda _m, args, i=i: seen.__setitem__(i, args[0])) for i in (1, 2)]
    lm.tokenizer.padding_side = "left"
    enc = lm.tokenizer(format_prompts(lm.tokenizer, prompts, False), return_tensors="pt", padding=True)
    with torch.no_grad():
        lm.model(**enc)
    for h in handles:
        h.remove()
    mask = enc["attention_mask"].bool()
    for i in (1, 2):
        expected = float(np.median(seen[i][mask].norm(dim=-1).numpy()))
        assert got[i] == pytest.approx(expected, rel=1e-5)


def test_norm_unit_lambdas_give_a_fixed_share_of_the_token_norm():
    from atlascli.steering import absolute_lambdas

    vecs = {3: torch.ones(4) * 2.0, 7: torch.tensor([3.0, 4.0, 0.0, 0.0])}
    mult = absolute_lambdas(vecs, 35.0, "norm", {3: 10.0, 7: 2.0})
    for layer, v in vecs.items():  # at MLP neurons lambda 35: |mult * s| = the layer's median token norm
        assert float((mult[layer] * v).norm()) == pytest.approx({3: 10.0, 7: 2.0}[layer])
    half = absolute_lambdas(vecs, 17.5, "norm", {3: 10.0, 7: 2.0})
    assert float((half[3] * vecs[3]).norm()) == pytest.approx(5.0)
    assert absolute_lambdas(vecs, 35.0, "absolute") == {3: 35.0, 7: 35.0}
    with pytest.raises(InputError):
        absolute_lambdas(vecs, 35.0, "percent")


def test_steer_cli_defaults_state_unit_layers_and_template(aligned, tiny_models, capsys):
    code = main(["steer", "--features", "3", "--prompt", "Hi", "--max-new-tokens", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["unit"] == "norm" and out["lambda_source"] == "default"
    # only neurons are fitted: the output says how to fit the residual stream (tiny Llama: 4 layers -> layer 1)
    assert out["site"] == "mlp" and f"atlas fit --subject {tiny_models['llama']} --site resid --layers 1" in out["note"]
    assert main(["steer", "--features", "3", "--prompt", "Hi", "--max-new-tokens", "2", "--site", "mlp", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["note"] is None  # asked for explicitly: no advice
    assert out["layers_default"] is True and out["layers"] == [2]
    assert set(out["generations"]) == {"0.0", "35.0"}
    from atlascli.steer_run import DEFAULT_PROMPTS

    for flag, mode in (("--chat", "chat"), ("--raw", "raw")):  # no prompt: the default for the chat mode used
        assert main(["steer", "--features", "3", "--max-new-tokens", "2", flag, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["prompts"] == [DEFAULT_PROMPTS[mode]]
    for bad in (["--lambda", ""], ["--lambda", "0,10"], ["--lambda", "x"]):
        assert main(["steer", "--features", "3", "--prompt", "Hi", *bad]) == 2
    # decoding: greedy with atlas steer's repetition penalty unless told otherwise; --repetition-penalty 1 is plain
    from atlascli.steer_run import REPETITION_PENALTY

    assert out["repetition_penalty"] == REPETITION_PENALTY and out["sample"] is False
    assert main(["steer", "--features", "3", "--prompt", "Hi", "--max-new-tokens", "3", "--repetition-penalty", "1",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["repetition_penalty"] == 1.0
    assert main(["steer", "--features", "3", "--prompt", "Hi", "--max-new-tokens", "3"]) == 0
    assert f"greedy, repetition penalty {REPETITION_PENALTY:g}" in capsys.readouterr().out


def test_steer_prefers_the_residual_stream_and_search_the_neurons(aligned, tiny_models, capsys):
    """With fits at two sites, steer uses resid (its default layers and its own lambda reference), search / evaluate
    keep MLP neurons, and --site picks either explicitly."""
    from atlascli.fit import FitConfig, fit
    from atlascli.search import resolve_alignment
    from atlascli.steering import norm_reference

    atlas, _ = aligned
    fit(FitConfig(subject=str(tiny_models["llama"]), layers=(1, 2, 3), site="resid", atlas=atlas.id, dataset="tiny",
                  limit=150, methods="procrustes"))
    code = main(["steer", "--features", "3", "--prompt", "Hi", "--max-new-tokens", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["site"] == "resid" and out["layers"] == [1] and out["layers_default"]
    assert out["fitted_not_steered"] == [2, 3]  # fitted, outside the default depth: said, not steered
    assert out["note"] is None
    assert out["multipliers"]["35.0"]["1"] * out["vector_norms"]["1"] == pytest.approx(
        35.0 / norm_reference("resid") * out["site_norms"]["1"], rel=1e-5)
    assert main(["steer", "--features", "3", "--prompt", "Hi", "--max-new-tokens", "2"]) == 0
    assert "also fitted: 2, 3, left out: lambda adds up" in " ".join(capsys.readouterr().out.split())
    # asked for more layers than the default's depths: steered, with a note that lambda adds up over them
    assert main(["steer", "--features", "3", "--prompt", "Hi", "--max-new-tokens", "2", "--layers", "1,2,3",
                 "--json"]) == 0
    out3 = json.loads(capsys.readouterr().out)
    assert out3["layers"] == [1, 2, 3] and out3["fitted_not_steered"] == []
    assert out3["note"].startswith("3 layers steered, each with the whole lambda")
    code = main(["steer", "--features", "3", "--prompt", "Hi", "--max-new-tokens", "3", "--site", "mlp", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["site"] == "mlp" and out["layers"] == [2]
    assert main(["steer", "--features", "3", "--prompt", "Hi", "--site", "mlp_out"]) == 2
    assert "fitted sites: mlp, resid" in capsys.readouterr().err
    assert resolve_alignment(Registry(), atlas=atlas).provenance["site"] == "mlp"
    assert resolve_alignment(Registry(), atlas=atlas, site="resid").provenance["site"] == "resid"


def test_default_layers_steer_one_fitted_layer_per_calibrated_depth():
    """Lambda is per layer, so the default never steers more layers than it was calibrated with: on a 30-layer model,
    residual fits at 5-10 steer 6 and 9 (not all six), neuron fits at every layer steer 3, 12, 19, 25; fewer fits
    than depths steer them all; none in the window steers the nearest one."""
    from atlascli.steer_run import default_layers, many_layers_note

    assert default_layers(list(range(5, 11)), 30, "resid") == [6, 9]
    assert default_layers(list(range(30)), 30, "resid") == [6, 9]
    assert default_layers(list(range(30)), 30, "mlp") == [3, 12, 19, 25]
    assert default_layers([3, 6, 9, 12, 15, 18], 30, "resid") == [6, 9]  # what the demo's fits give
    assert default_layers([3, 12, 19, 25], 30, "mlp") == [3, 12, 19, 25]
    assert default_layers([8, 9, 10], 30, "resid") == [8, 9]
    assert default_layers([7], 30, "resid") == [7]
    assert default_layers([20, 25], 30, "resid") == [20]  # none inside: the nearest to the window
    assert default_layers([], 30, "resid") == []
    assert default_layers(list(range(24)), 24, "mlp") == [3, 10, 15, 20]  # same depths, 24 layers (2 < 10% of 24)
    assert many_layers_note(2, "resid") is None and many_layers_note(4, "mlp") is None
    note = many_layers_note(6, "resid")
    assert note is not None and note.startswith("6 layers steered") and "the default steers 2 at resid" in note


def test_norm_unit_is_calibrated_per_site():
    from atlascli.steering import absolute_lambdas, norm_reference

    vecs = {3: torch.ones(4) * 2.0}
    resid = absolute_lambdas(vecs, 35.0, "norm", {3: 10.0}, site="resid")
    assert float((resid[3] * vecs[3]).norm()) == pytest.approx(10.0 * 35.0 / norm_reference("resid"))
    assert norm_reference("resid") > norm_reference("mlp")  # the residual stream moves more per unit of norm
    assert norm_reference("unknown") == norm_reference("mlp")


def test_steer_refuses_bad_input_before_any_model_loads(aligned, capsys, monkeypatch):
    """Unit, site, method, layers, subject, device and --concept with --features: one line, exit 2, no model load
    and no concept table first."""
    import atlascli.models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(atlascli.models, "load_model", no_load)
    cases = {("--unit", "bogus"): "unknown lambda unit 'bogus'", ("--site", "bogus"): "unknown site 'bogus'",
             ("--method", "bogus"): "unknown method 'bogus'", ("--layers", "3"): r"fitted layers: 2",
             ("--layers", "2,9"): r"layer 9 is out of range for .* \(4 layers\)",
             ("--subject", "nosuch"): "fitted subjects: ", ("--device", "tpu"): "unknown device 'tpu'",
             ("--concept", "dogs"): "both --concept and --features",
             ("--repetition-penalty", "0"): "repetition penalty must be a positive number"}
    for args, message in cases.items():
        code = main(["steer", "--features", "3", *args])
        out = capsys.readouterr()
        lines = [ln for ln in out.err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (args, out.err)
        assert re.search(message, lines[0]) and out.out == "", (args, out)
