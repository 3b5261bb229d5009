"""The Python API: load_alignment / search / steering on a model the user loaded with transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import atlascli as atlas
from atlascli.errors import AtlasError, InputError


def test_import_is_light():
    code = "import sys, atlascli; atlascli.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_search_matches_the_library(aligned, tiny_models):
    at, fits = aligned
    a = atlas.load_alignment(subject=str(tiny_models["llama"]), layer=2)
    assert a.layer == 2 and a.site == "mlp"
    res = a.search(features="3,7", top=4)
    from atlascli.search import query_from_features, subject_similarity

    s = subject_similarity(query_from_features("3,7", at), a.artifact)
    assert [f.index for f in res.features] == torch.argsort(s, descending=True)[:4].tolist()
    torch.testing.assert_close(a.direction(features="3,7"), s)
    with pytest.raises(InputError):
        a.search()


def test_steering_context_manager_on_a_user_loaded_model(aligned, tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]))
    tok = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
    enc = tok(["The dog and the cat"], return_tensors="pt")
    with torch.no_grad():
        base = model(**enc).logits
        with atlas.steering(model, features="3,7", strength=50, tokenizer=tok) as mult:
            steered = model(**enc).logits
        after = model(**enc).logits
    assert set(mult) == {2} and mult[2] > 0
    assert not torch.allclose(base, steered)
    torch.testing.assert_close(base, after)  # hooks removed
    with pytest.raises(AtlasError):
        with atlas.steering(model, concept=None, tokenizer=tok):
            pass
