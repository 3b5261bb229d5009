from __future__ import annotations

import time

import pytest

from atlascli.errors import InputError, NotFoundError
from atlascli.models import SITES, blocks, check_layer, load_model, site_width


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma3"])
def test_sites_of_each_family(tiny_models, arch):
    lm = load_model(str(tiny_models[arch]))
    n = len(blocks(lm.model))
    assert lm.n_layers == n >= 3
    hidden = lm.model.config.hidden_size
    assert site_width(lm.model, "resid") == hidden
    assert site_width(lm.model, "mlp_out") == hidden
    mlp = getattr(lm.model.config, "intermediate_size", None) or 4 * hidden
    assert site_width(lm.model, "mlp") == mlp
    with pytest.raises(InputError, match=f"valid layers are 0..{n - 1}"):
        check_layer(lm.model, n, "resid")
    with pytest.raises(InputError, match="unknown site"):
        check_layer(lm.model, 0, "attn")
    assert lm.revision.startswith("local-")


def test_unknown_model_and_bad_options(tmp_path):
    with pytest.raises(NotFoundError, match="unknown model"):
        load_model("definitely-not-a-model")
    with pytest.raises(NotFoundError, match="config.json"):
        load_model(str(tmp_path))
    with pytest.raises(InputError, match="dtype"):
        load_model("x", dtype="float8")
    with pytest.raises(InputError, match="device"):
        load_model("x", device="tpu")


def test_zoo_embedder_is_not_a_causal_lm():
    with pytest.raises(InputError, match="embedding model"):
        load_model("minilm-l6")


@pytest.mark.parametrize("name,layers,hidden,mlp", [("smollm2-135m-instruct", 30, 576, 1536),
                                                     ("gemma3-270m", 18, 640, 2048)])
def test_offline_zoo_models_load_and_cache(name, layers, hidden, mlp):
    lm = load_model(name)  # first load may dequantise (cached across tests)
    assert lm.n_layers == layers
    assert SITES and site_width(lm.model, "resid") == hidden and site_width(lm.model, "mlp") == mlp
    assert lm.revision.startswith("gguf-sha256:")
    start = time.perf_counter()
    again = load_model(name)
    assert again.revision == lm.revision
    assert time.perf_counter() - start < 60  # sanity only; the 5 s target is measured by bench/extract.py
    ids = again.tokenizer("The dog barked.")["input_ids"]
    assert len(ids) >= 3
