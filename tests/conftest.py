"""Shared fixtures: an isolated ATLAS_HOME per test, offline hub, tiny models built from configs."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def offline_env(mp: pytest.MonkeyPatch, root: Path) -> Path:
    """ATLAS_HOME / HF_HOME under ``root``, hub offline, shared model cache and corpus sources."""
    home = root / "atlas-home"
    mp.setenv("ATLAS_HOME", str(home))
    mp.setenv("HF_HOME", str(root / "hf-home"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    # dequantised .gguf weights are expensive (20-70 s): share them across tests (and runs)
    mp.setenv("ATLAS_MODEL_CACHE", os.environ.get("ATLAS_TEST_MODEL_CACHE", str(REPO / ".cache" / "test-models")))
    mp.setenv("ATLAS_CORPUS_SRC", os.environ.get("ATLAS_CORPUS_SRC", str(REPO / ".cache" / "corpus-src")))
    return home


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ATLAS_HOME / HF_HOME at a temp dir, go offline; keep one model cache for the session."""
    return offline_env(monkeypatch, tmp_path)


def _tiny_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = [
        "The dog barked all night.", "A cat sat on the mat.", "London is a city in England.",
        "Cars drive on roads.", "We ate bread and cheese.", "Music plays loudly.", "Science explains nature.",
    ] * 20
    # the vocabulary is built, not trained: the WordPiece trainer breaks ties differently from one process to the
    # next, so the tiny models' activations (and any borderline test) changed from session to session
    chars = sorted({c for line in text for c in line if not c.isspace()})
    words = sorted({w for line in text for w in re.findall(r"\w+|[^\w\s]", line)} - set(chars))
    vocab = ["[UNK]", "<pad>", "<s>", "</s>", *chars, *(f"##{c}" for c in chars), *words]
    assert len(vocab) <= 200
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="[UNK]")
    fast.save_pretrained(str(folder))


def make_tiny_model(folder: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A randomly initialised tiny causal LM + tokenizer saved as a local transformers folder."""
    from transformers import (
        AutoModelForCausalLM,
        GPT2Config,
        LlamaConfig,
        Qwen2Config,
    )

    torch.manual_seed(seed)
    common = dict(vocab_size=200, bos_token_id=2, eos_token_id=3, pad_token_id=1)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, **common)
    elif arch == "qwen2":
        cfg = Qwen2Config(hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, **common)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=256, **common)
    elif arch == "gemma3":
        from transformers import Gemma3TextConfig

        cfg = Gemma3TextConfig(hidden_size=32, intermediate_size=56, num_hidden_layers=4, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=8, max_position_embeddings=256, sliding_window=16,
                               **common)
    else:
        raise ValueError(arch)
    model = AutoModelForCausalLM.from_config(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    _tiny_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny models of several families, saved once per session."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: make_tiny_model(root / arch, arch) for arch in ("llama", "qwen2", "gpt2", "gemma3")}


@pytest.fixture()
def tiny_dataset(isolated_home: Path, tmp_path: Path):
    """A small prepared dataset artifact from a local text file."""
    from atlascli.corpus import CorpusConfig, prepare_corpus

    words = ["dog", "cat", "London", "cars", "bread", "music", "science", "night", "city", "roads"]
    lines = []
    for i in range(300):
        a, b, c = words[i % 10], words[(i * 3 + 1) % 10], words[(i * 7 + 2) % 10]
        lines.append(f"The {a} and the {b} met a {c} {'again ' * (i % 5)}today number {i}.")
    path = tmp_path / "tiny.txt"
    path.write_text(" ".join(lines))
    art, _ = prepare_corpus(CorpusConfig(name="tiny", inputs=(str(path),), low_pct=0, high_pct=100))
    return art


@pytest.fixture()
def aligned(tiny_models, tiny_dataset):
    """A tiny trained atlas (GPT-2 foundation) and Procrustes + covariance translations of tiny Llama layer 2."""
    from atlascli.atlas import AtlasBuildConfig, build_atlas, resolve_atlas
    from atlascli.fit import FitConfig, fit

    art = build_atlas(AtlasBuildConfig(name="tiny", foundation=str(tiny_models["gpt2"]), layer=1, width=64, k=4,
                                       dataset="tiny", train_sentences=150, max_tokens=4000, epochs=4,
                                       batch_size=256, lr=3e-3, label_sentences=150, top_samples=5))
    fits = fit(FitConfig(subject=str(tiny_models["llama"]), layers=(2,), site="mlp", atlas=art.id, dataset="tiny",
                         limit=150, methods="procrustes,cov"))
    return resolve_atlas(art.id), fits


def save_random_topk_sae(folder: Path, d_in: int, d_sae: int, k: int, seed: int) -> Path:
    """A TopK SAE with random N(0, 0.3) weights saved in sae-lens format (a stand-in for unit tests)."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    sae.save_model(folder)
    return folder


class JudgeServer:
    """A tiny OpenAI-compatible endpoint whose answers are scripted per request."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                answer = server.answers.pop(0) if server.answers else "junk"
                if isinstance(answer, float):  # sleep longer than the client's timeout
                    time.sleep(answer)
                    answer = '{"0": 2}'
                if isinstance(answer, tuple):  # (status, {header: value})
                    self.send_response(answer[0])
                    for name, value in answer[1].items():
                        self.send_header(name, value)
                    self.end_headers()
                    return
                if isinstance(answer, int):  # an HTTP error status, e.g. 500, 401, 429
                    self.send_response(answer)
                    self.end_headers()
                    return
                payload = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def judge_server() -> Iterator[Any]:
    """Start scripted OpenAI-compatible endpoints: ``judge_server(answers)``."""
    made: list[JudgeServer] = []

    def make(answers: list[Any]) -> JudgeServer:
        made.append(JudgeServer(answers))
        return made[-1]

    yield make
    for s in made:
        s.close()
