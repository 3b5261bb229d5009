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


def test_local_revision_covers_every_weight_file_and_is_cached(tmp_path, monkeypatch):
    import shutil

    import atlascli.registry.hashcache as hc
    from atlascli.modelcache import folder_revision

    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    for i in (1, 2):
        (folder / f"model-0000{i}-of-00002.safetensors").write_bytes(bytes([i]) * 64)
    rev = folder_revision(folder)
    calls = []
    real = hc.sha256_file
    monkeypatch.setattr(hc, "sha256_file", lambda p: calls.append(p) or real(p))
    assert folder_revision(folder) == rev and calls == []  # cached by path, size and times
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(bytes([9]) * 64)  # same size, other content: the old code's size-only hash missed this
    assert folder_revision(folder) != rev and len(calls) == 1
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert folder_revision(copy) == folder_revision(folder)  # content-addressed, not path-addressed


def _tiny_cache_builder(tiny_models, built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from atlascli.models import write_model_cache

    def build(tmp):
        built.append(tmp)
        tok = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
        write_model_cache(tmp, AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"])), tok)
        return {"padding_side": tok.padding_side}

    return build


def test_model_cache_is_rebuilt_when_damaged_and_never_half_published(tiny_models, tmp_path):
    from atlascli.modelcache import MARKER, build_cache_dir, cache_dir_valid

    built: list = []
    cache = tmp_path / "cache" / "tiny"
    build = _tiny_cache_builder(tiny_models, built)
    assert build_cache_dir(cache, build) and cache_dir_valid(cache)
    assert not build_cache_dir(cache, build) and len(built) == 1  # warm: nothing rebuilt
    weights = cache / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # a damaged entry (e.g. an old killed first load)
    assert not cache_dir_valid(cache)
    assert build_cache_dir(cache, build) and weights.read_bytes() == good
    # a builder that dies half way leaves the old entry or none, never a partial one, and no temp folder
    (cache / MARKER).unlink()

    def dies(tmp):
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache_dir(cache, dies)
    assert sorted(p.name for p in cache.parent.iterdir() if not p.name.startswith(".locks")) == ["tiny"]
    assert not cache_dir_valid(cache)
    assert build_cache_dir(cache, build) and cache_dir_valid(cache)


def test_assembled_file_is_checked_before_publishing(tmp_path):
    import hashlib

    from atlascli.errors import CorruptArtifactError
    from atlascli.modelcache import build_cache_file

    target = tmp_path / "gguf" / "m.gguf"
    data = b"GGUF" + bytes(range(200))
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(CorruptArtifactError, match="sha256"):
        build_cache_file(target, lambda p: p.write_bytes(data[:-1]), sha)
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == [".locks"]
    assert build_cache_file(target, lambda p: p.write_bytes(data), sha) == sha and target.read_bytes() == data
    target.write_bytes(data[:-1])  # damaged later: rebuilt on next use
    assert build_cache_file(target, lambda p: p.write_bytes(data), sha) == sha and target.read_bytes() == data


def test_gguf_is_parsed_once_inside_the_dequantise_block(monkeypatch, tmp_path):
    """transformers builds a GGUFReader for the tokenizer, the config and the weights: inside the block the reader of
    one file is built once and shared; outside, gguf.GGUFReader is the original again."""
    import gguf

    from atlascli.models import _gguf_parsed_once

    built: list[str] = []

    class Reader:
        def __init__(self, path, mode="r"):
            built.append(str(path))

    monkeypatch.setattr(gguf, "GGUFReader", Reader)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    with _gguf_parsed_once():
        from gguf import GGUFReader  # the way transformers imports it, inside its function

        first, again, other = GGUFReader(a), GGUFReader(str(a)), GGUFReader(b)
    assert first is again and other is not first and built == [str(a), str(b)]
    assert gguf.GGUFReader is Reader
