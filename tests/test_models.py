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


def test_gguf_cache_reproduces_the_gguf_model_exactly(tmp_path, monkeypatch):
    """The dequantised cache (tied weights stored once) gives the same logits and tokens as the .gguf."""
    import torch
    from transformers import AutoTokenizer

    from atlascli.models import fast_tokenizer, model_cache_dir

    monkeypatch.setenv("ATLAS_MODEL_CACHE", str(tmp_path / "fresh-cache"))
    first = load_model("smollm2-135m-instruct")  # straight from the .gguf, writes the cache
    second = load_model("smollm2-135m-instruct")  # from the cache
    sents = ["The dog barked all night.", "Hello world 12345 東京"]
    a = first.tokenizer(sents, padding=True, return_tensors="pt")
    b = second.tokenizer(sents, padding=True, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(first.model(**a).logits, second.model(**b).logits, rtol=0, atol=0)
    folder = next(p for p in model_cache_dir().iterdir() if p.name.startswith("smollm2"))
    ref = AutoTokenizer.from_pretrained(str(folder))
    fast = fast_tokenizer(folder)
    msgs = [{"role": "user", "content": "Tell me a joke"}]
    assert ref.apply_chat_template(msgs, tokenize=False) == fast.apply_chat_template(msgs, tokenize=False)
    assert (ref.bos_token, ref.eos_token, ref.pad_token, ref.padding_side) == (
        fast.bos_token, fast.eos_token, fast.pad_token, fast.padding_side)
