from __future__ import annotations

import pytest
import torch

from atlascli.hooks import add_to_sites, record_sites, run_until
from atlascli.models import blocks, load_model


def test_resid_capture_matches_hidden_states_and_stops_early(tiny_models):
    lm = load_model(str(tiny_models["llama"]))
    enc = lm.tokenizer(["The dog barked all night."], return_tensors="pt")
    with torch.no_grad():
        ref = lm.model(**enc, output_hidden_states=True).hidden_states
    before = [len(b._forward_hooks) for b in blocks(lm.model)]
    calls = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(blocks(lm.model))]
    try:
        with torch.no_grad(), record_sites(lm.model, [0, 1], "resid") as store:
            run_until(lm.model, **enc)
    finally:
        for h in handles:
            h.remove()
    # hidden_states[i + 1] is the residual stream after block i
    torch.testing.assert_close(store[1], ref[2])
    torch.testing.assert_close(store[0], ref[1])
    assert calls == [0, 1]  # blocks 2 and 3 never ran
    assert [len(b._forward_hooks) for b in blocks(lm.model)] == before


def test_mlp_site_is_the_down_projection_input(tiny_models):
    lm = load_model(str(tiny_models["llama"]))
    enc = lm.tokenizer(["A cat sat."], return_tensors="pt")
    mlp = blocks(lm.model)[2].mlp
    seen = {}
    h = mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].clone()))
    with torch.no_grad():
        lm.model(**enc)
    h.remove()
    with torch.no_grad(), record_sites(lm.model, [2], "mlp") as store:
        run_until(lm.model, **enc)
    torch.testing.assert_close(store[2], seen["x"])
    assert store[2].shape[-1] == 48


def test_edit_hooks_are_removed_even_on_error(tiny_models):
    lm = load_model(str(tiny_models["gpt2"]))
    enc = lm.tokenizer(["Music plays."], return_tensors="pt")
    with torch.no_grad():
        base = lm.model(**enc).logits
    before = [len(b._forward_hooks) for b in blocks(lm.model)]
    with pytest.raises(RuntimeError):
        with add_to_sites(lm.model, "resid", {1: lambda a: a + 1.0}):
            with torch.no_grad():
                edited = lm.model(**enc).logits
            assert not torch.allclose(base, edited)
            raise RuntimeError("boom")
    assert [len(b._forward_hooks) for b in blocks(lm.model)] == before
    with torch.no_grad():
        torch.testing.assert_close(lm.model(**enc).logits, base)
