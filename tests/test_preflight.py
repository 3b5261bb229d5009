from __future__ import annotations

import time

import pytest

from atlascli.errors import InputError, NotFoundError
from atlascli.preflight import check_disk, check_layers, probe_model


def test_probe_reads_configs_of_local_folders_and_zoo(tiny_models):
    info = probe_model(str(tiny_models["llama"]))
    assert (info.source, info.n_layers, info.hidden, info.mlp) == ("folder", 4, 32, 48)
    assert info.width("mlp") == 48 and info.width("resid") == 32 and info.params_per_layer > 0
    gpt2 = probe_model(str(tiny_models["gpt2"]))
    assert (gpt2.n_layers, gpt2.hidden, gpt2.mlp) == (3, 32, 128)
    gemma = probe_model(str(tiny_models["gemma3"]))
    assert (gemma.n_layers, gemma.mlp) == (4, 56)
    smol = probe_model("smollm2-135m-instruct")  # the zoo's known shape: no weights read
    assert (smol.source, smol.n_layers, smol.hidden, smol.mlp) == ("zoo", 30, 576, 1536)
    with pytest.raises(InputError, match="embedding model"):
        probe_model("minilm-l6")


def test_layer_and_site_checks(tiny_models):
    info = probe_model(str(tiny_models["llama"]))
    check_layers(info, (0, 3), "mlp")
    with pytest.raises(InputError, match=r"valid layers are 0\.\.3"):
        check_layers(info, (1, 4), "mlp")
    with pytest.raises(InputError, match="unknown site 'attn'"):
        check_layers(info, (1,), "attn")


def test_uncached_hub_id_offline_fails_fast_and_says_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(NotFoundError) as exc:
        probe_model("nonexistent/model-xyz")
    assert time.perf_counter() - start < 10
    text = str(exc.value)
    assert "unknown model 'nonexistent/model-xyz'" in text and "offline" in text
    assert "local folder" in text and "cache" in text


def test_folder_without_config_and_bad_hub_ids(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="no config.json"):
        probe_model(str(tmp_path / "empty"))
    with pytest.raises(NotFoundError, match="unknown model"):
        probe_model("not a valid//id")


def test_disk_space_and_writability(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    check_disk(tmp_path / "not" / "yet", 1000)  # nearest existing parent is checked
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(InputError, match="not enough disk space"):
        check_disk(tmp_path, 50 * 10**6)
    check_disk(tmp_path, 10**5)


def test_unreachable_hub_while_online_answers_from_the_cache_without_retries(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    from atlascli import preflight

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(preflight, "hub_reachable", lambda timeout=3.0: False)

    tried: list[str] = []

    def no_network(*a, **k):
        tried.append(a[0])
        raise OSError("network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(NotFoundError, match="cannot be reached"):
        probe_model("nonexistent/model-xyz")
    assert tried == []
