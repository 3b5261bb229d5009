from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from atlascli.corpus import load_split
from atlascli.errors import CorruptArtifactError, InputError
from atlascli.extract import Activations, ExtractConfig, extract, make_batches
from atlascli.models import load_model


def _naive(lm, sentences, layer):
    """Independent reference: one sentence at a time, full forward, hidden_states, max over non-BOS tokens."""
    rows = []
    for s in sentences:
        enc = lm.tokenizer(s, return_tensors="pt", truncation=True, max_length=128)
        with torch.no_grad():
            hs = lm.model(**enc, output_hidden_states=True).hidden_states[layer + 1][0]
        ids = enc["input_ids"][0]
        tk = lm.tokenizer
        special = torch.isin(ids, torch.tensor([tk.bos_token_id, tk.eos_token_id, tk.pad_token_id]))
        rows.append(hs[~special].max(0).values)
    return torch.stack(rows)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_pooled_activations_match_naive_reference(tiny_models, tiny_dataset, arch):
    cfg = ExtractConfig(model=str(tiny_models[arch]), layers=(0, 2), site="resid", dataset="tiny", limit=40,
                        batch_tokens=64, shard_size=16)
    art = extract(cfg)
    acts = Activations(art)
    sentences = load_split(tiny_dataset, "train")[:40]
    lm = load_model(str(tiny_models[arch]))
    for layer in (0, 2):
        torch.testing.assert_close(acts.dense(layer), _naive(lm, sentences, layer), rtol=1e-4, atol=1e-4)
    assert art.provenance["n"] == 40 and art.meta["n_shards"] == 3
    assert art.provenance["dataset_fingerprint"] == tiny_dataset.provenance["dataset_fingerprint"]
    assert art.parents == [tiny_dataset.id]
    assert extract(cfg).id == art.id  # reused


def test_batches_are_sorted_and_within_budget():
    lengths = [5, 30, 7, 12, 30, 2, 9, 18]
    batches = make_batches(lengths, batch_tokens=40, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 40)


def _shard_hashes(art):
    return {n: hashlib.sha256((art.path / n).read_bytes()).hexdigest() for n in art.manifest["files"]
            if n.startswith("shard-")}


def test_resume_after_sigkill_is_bit_identical(tiny_models, tiny_dataset, tmp_path, isolated_home):
    model = str(tiny_models["llama"])
    script = textwrap.dedent(f"""
        import os, signal
        from atlascli.extract import ExtractConfig, extract
        count = 0
        def progress(done, total, tokens):
            global count
            count += 1
            if done >= 45:  # mid-way through the third shard
                os.kill(os.getpid(), signal.SIGKILL)
        extract(ExtractConfig(model={model!r}, layers=(1,), site="mlp", dataset="tiny", limit=80,
                              batch_tokens=48, shard_size=20), progress=progress)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=os.environ.copy(), capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    partial = next((isolated_home / "artifacts" / "activations").glob(".partial-*"))
    assert len(list(partial.glob("shard-*.safetensors"))) == 2
    resumed = extract(ExtractConfig(model=model, layers=(1,), site="mlp", dataset="tiny", limit=80,
                                    batch_tokens=48, shard_size=20))
    # an uninterrupted run in a second registry
    from atlascli.registry import Registry

    fresh = extract(ExtractConfig(model=model, layers=(1,), site="mlp", dataset="tiny", limit=80, batch_tokens=48,
                                  shard_size=20), registry=_copy_dataset(tiny_dataset, tmp_path / "reg2", Registry))
    assert _shard_hashes(resumed) == _shard_hashes(fresh)
    assert len(_shard_hashes(resumed)) == 4


def _copy_dataset(dataset, root, Registry):
    from atlascli.registry.hub import import_folder

    reg = Registry(root)
    import_folder(dataset.path, reg)
    return reg


def test_corrupted_shard_is_detected_on_read(tiny_models, tiny_dataset):
    art = extract(ExtractConfig(model=str(tiny_models["llama"]), layers=(1,), dataset="tiny", limit=20, shard_size=10))
    shard = art.path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x55
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="shard-00001"):
        Activations(art).dense(1)


def test_bad_layers_and_splits(tiny_models, tiny_dataset):
    with pytest.raises(InputError, match="valid layers are 0..3"):
        extract(ExtractConfig(model=str(tiny_models["llama"]), layers=(4,), dataset="tiny"))
    with pytest.raises(InputError, match="unknown split"):
        extract(ExtractConfig(model=str(tiny_models["llama"]), layers=(1,), dataset="tiny", split="dev"))


def test_sae_codes_are_stored_sparsely_and_match_dense_encoding(tiny_models, tiny_dataset, tmp_path):
    from conftest import save_random_topk_sae
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(save_random_topk_sae(tmp_path / "sae", 32, 64, 4, seed=0)))
    model = str(tiny_models["llama"])
    art = extract(ExtractConfig(model=model, layers=(2,), site="resid", dataset="tiny", limit=30, sae=str(tmp_path / "sae"),
                                shard_size=16, batch_tokens=64))
    acts = Activations(art)
    assert acts.sparse and acts.widths[2] == 64
    codes = acts.dense(2)
    assert (codes >= 0).all()
    dense = extract(ExtractConfig(model=model, layers=(2,), site="resid", dataset="tiny", limit=30, shard_size=16))
    lm = load_model(model)
    sentences = load_split(tiny_dataset, "train")[:30]
    ref = []
    for s in sentences:  # reference: encode each token, drop BOS, max-pool
        enc = lm.tokenizer(s, return_tensors="pt")
        with torch.no_grad():
            hs = lm.model(**enc, output_hidden_states=True).hidden_states[3][0][1:]
            ref.append(sae.encode(hs).clamp_min(0).max(0).values)
    torch.testing.assert_close(codes, torch.stack(ref), rtol=1e-4, atol=1e-4)
    assert (codes > 0).sum(1).max() <= 64
    nnz_file = sum((art.path / n).stat().st_size for n in art.manifest["files"] if n.startswith("shard"))
    assert dense.id != art.id and nnz_file > 0


@pytest.mark.parametrize("field,value", [("limit", 0), ("limit", -5), ("shard_size", 0), ("batch_tokens", 0),
                                         ("max_batch", 0), ("max_length", -1), ("layers", (1, -2))])
def test_config_bounds(field, value):
    kwargs = {"model": "m", "layers": (1,), field: value}
    with pytest.raises(InputError, match=field):
        ExtractConfig(**kwargs)


def test_commit_checks_shard_count_and_coverage(tiny_models, tiny_dataset, monkeypatch):
    import atlascli.extract as ex

    cfg = ExtractConfig(model=str(tiny_models["llama"]), layers=(1,), dataset="tiny", limit=30, shard_size=10)
    real = ex.atomic_save_tensors
    calls = []

    def lose_second_shard(path, tensors, *a, **k):  # a writer whose second shard silently vanished
        calls.append(path.name)
        if path.name != "shard-00001.safetensors":
            real(path, tensors, *a, **k)

    monkeypatch.setattr(ex, "atomic_save_tensors", lose_second_shard)
    with pytest.raises(CorruptArtifactError, match="2 shards, expected 3"):
        extract(cfg)
    from atlascli.registry import Registry

    assert Registry().list("activations") == []  # nothing published
    monkeypatch.setattr(ex, "atomic_save_tensors", real)
    art = extract(cfg)  # the rerun redoes only the missing shard
    assert art.meta["n_shards"] == 3 and Activations(art).dense(1).shape[0] == 30
    stage = Registry().kind_dir("activations") / f".partial-{art.id}"
    assert not stage.exists()
    with pytest.raises(CorruptArtifactError, match="cover"):
        ex.check_coverage(art.path, 3, 31)
