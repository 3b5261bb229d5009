"""Judges: rating parsing, the OpenAI-compatible judge against a local HTTP server (good, junk, slow answers),
and the embedding judge's calibration against an independent computation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from atlascli.errors import InputError
from atlascli.judges import RATING_PROMPT, ChatJudge, EmbeddingJudge, calibrate_threshold, parse_judge, parse_ratings


def test_parse_ratings_formats() -> None:
    assert parse_ratings('{"0": 2, "1": 0}', 2) == {0: 2, 1: 0}
    assert parse_ratings("```python\n{0: 2, 1: 1}\n```", 2) == {0: 2, 1: 1}
    assert parse_ratings("Sure! {'0': 2, '5': 2, '1': 7}", 2) == {0: 2}  # out-of-range id and rating dropped
    with pytest.raises(ValueError):
        parse_ratings("I cannot rate these.", 2)
    with pytest.raises(ValueError):
        parse_ratings("{not a dict at all}", 2)


def _judge(url: str, **kw: Any) -> ChatJudge:
    sleeps: list[float] = []
    j = ChatJudge(model="judge-model", url=url, sleep=sleeps.append, **kw)
    j.sleeps = sleeps  # type: ignore[attr-defined]
    return j


def test_chat_judge_median_of_three(judge_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    srv = judge_server(['{"0": 2, "1": 0, "2": 1}', '{"0": 2, "1": 2, "2": 0}', '{"0": 0, "1": 0, "2": 1}'])
    j = _judge(srv.url)
    assert j.rate("dogs", ["a dog", "a car", "a pet?"]) == [2, 0, 1]
    assert len(srv.requests) == 3 and j.failures == []
    req = srv.requests[0]
    assert req["model"] == "judge-model" and req["temperature"] == 1.0
    assert req["messages"][0]["content"] == RATING_PROMPT
    assert req["messages"][1]["content"] == 'Concept: dogs\nSequence ID 0: "a dog"\nSequence ID 1: "a car"\nSequence ID 2: "a pet?"'
    assert srv.headers[0]["Authorization"] == "Bearer sk-test"


def test_chat_judge_retries_junk_and_errors(judge_server: Any) -> None:
    srv = judge_server(["no idea", 500, '{"0": 2, "1": 0}', '{"0": 2, "1": 0}', '{"0": 0, "1": 0}'])
    j = _judge(srv.url, backoff=0.5)
    assert j.rate("dogs", ["a dog", "a car"]) == [2, 0]
    assert len(j.failures) == 2 and "ValueError" in j.failures[0] and "HTTPError" in j.failures[1]
    assert j.sleeps == [0.5, 1.0]  # exponential backoff


def test_chat_judge_marks_unrated_never_zero(judge_server: Any) -> None:
    srv = judge_server(["junk"] * 20)
    j = _judge(srv.url, retries=2, samples=3)
    assert j.rate("dogs", ["a dog", "a car"]) == [None, None]
    assert len(srv.requests) == 6 and len(j.failures) == 6
    # partial answers: rated items keep their median, the missing one stays unrated
    srv2 = judge_server(['{"0": 2}'] * 9)
    j2 = _judge(srv2.url, retries=1)
    assert j2.rate("dogs", ["a dog", "a car"]) == [2, None]


def test_chat_judge_timeout(judge_server: Any) -> None:
    srv = judge_server([1.5, '{"0": 2}', '{"0": 2}', '{"0": 2}'])
    j = _judge(srv.url, timeout=0.3, samples=3)
    assert j.rate("dogs", ["a dog"]) == [2]
    assert any("timed out" in f or "Timeout" in f for f in j.failures)


def test_parse_judge() -> None:
    assert isinstance(parse_judge("embedding", None), EmbeddingJudge)
    j = parse_judge("openai:gpt-4o-mini", "http://localhost:1/v1")
    assert isinstance(j, ChatJudge) and j.model == "gpt-4o-mini"
    with pytest.raises(InputError, match="model name"):
        parse_judge("openai", None)
    with pytest.raises(InputError, match="unknown judge"):
        parse_judge("gpt4", None)


def test_embedding_judge_calibration_matches_independent_quantile() -> None:
    from sentence_transformers import SentenceTransformer

    from atlascli.embed import load_embedder

    concepts = ["dogs and cats", "music"]
    sentences = ["The dog chased the cat.", "Stocks fell sharply today.", "She played the violin.",
                 "Rain is expected tomorrow.", "The kitten slept.", "Parliament passed the bill.",
                 "He cooked pasta.", "A loud guitar solo."]
    thr = calibrate_threshold(concepts, sentences, fpr=0.25)
    model: SentenceTransformer = load_embedder("minilm-l6")
    c = model.encode(concepts, normalize_embeddings=True)
    s = model.encode(sentences, normalize_embeddings=True)
    assert thr == pytest.approx(float(np.quantile(s @ c.T, 0.75)), abs=1e-5)
    judge = EmbeddingJudge(threshold=thr)
    assert judge.rate("dogs and cats", ["The dog chased the cat.", "Parliament passed the bill."]) == [2, 0]
    with pytest.raises(InputError, match="false-positive"):
        calibrate_threshold(concepts, sentences, fpr=1.5)


@pytest.mark.parametrize("status", [401, 403, 404])
def test_chat_judge_fails_fast_on_auth_and_not_found(judge_server: Any, status: int) -> None:
    from atlascli.errors import AtlasError

    srv = judge_server([status] * 10)
    j = _judge(srv.url, retries=4, samples=3)
    with pytest.raises(AtlasError, match=f"\\({status}\\)"):
        j.preflight()
    assert len(srv.requests) == 1
    with pytest.raises(AtlasError, match=f"\\({status}\\)"):
        j.rate("dogs", ["a dog"])
    assert len(srv.requests) == 2 and j.sleeps == []  # one request, no retries


def test_chat_judge_preflight_passes_transient_errors(judge_server: Any) -> None:
    j = _judge(judge_server([500, "junk"]).url)
    j.preflight()
    j.preflight()
    from atlascli.errors import AtlasError

    with pytest.raises(AtlasError, match="cannot reach"):
        _judge("http://127.0.0.1:9/v1").preflight()  # nothing listens on the discard port


def test_chat_judge_honours_retry_after(judge_server: Any) -> None:
    srv = judge_server([(429, {"Retry-After": "7"}), 429, '{"0": 2}', '{"0": 2}', '{"0": 2}'])
    j = _judge(srv.url, backoff=0.5)
    assert j.rate("dogs", ["a dog"]) == [2]
    assert j.sleeps == [7.0, 1.0]  # Retry-After, then the backoff (doubled after the first wait)
    assert "429" in j.failures[0]


def test_chat_judge_stops_after_consecutive_failures(judge_server: Any) -> None:
    from atlascli.errors import AtlasError

    srv = judge_server([500] * 50)
    j = _judge(srv.url, retries=4, samples=3, max_consecutive_failures=5)
    with pytest.raises(AtlasError, match="failed 5 requests in a row"):
        j.rate("dogs", ["a dog"])
    assert len(srv.requests) == 5
    # a success resets the run
    srv2 = judge_server([500, 500, '{"0": 2}', 500, 500, '{"0": 1}', '{"0": 1}'])
    j2 = _judge(srv2.url, retries=4, samples=3, max_consecutive_failures=3)
    assert j2.rate("dogs", ["a dog"]) == [1]


def test_chat_judge_never_sends_key_over_plain_http(judge_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    j = ChatJudge(model="m", url="http://judge.example.com/v1")
    with pytest.raises(InputError, match="plain http"):
        j.preflight()
    with pytest.raises(InputError, match="plain http"):
        j.rate("dogs", ["a dog"])
    srv = judge_server(['{"0": 2}'])  # localhost over http is fine
    assert _judge(srv.url, samples=1).rate("dogs", ["a dog"]) == [2]
    assert srv.headers[0]["Authorization"] == "Bearer sk-secret"
    monkeypatch.delenv("OPENAI_API_KEY")
    ChatJudge(model="m", url="http://judge.example.com/v1")._headers()  # no key: nothing to protect
    with pytest.raises(InputError, match="not an http"):
        ChatJudge(model="m", url="ftp://judge.example.com/v1")


def test_redact_url() -> None:
    from atlascli.judges import redact_url

    assert redact_url("https://user:pw@host.example/v1?api_key=sk-1&model=x") == \
        "https://REDACTED@host.example/v1?api_key=REDACTED&model=x"
    assert redact_url("https://host.example/v1?token=abc&sig=z") == "https://host.example/v1?token=REDACTED&sig=REDACTED"
    assert redact_url("http://localhost:8000/v1") == "http://localhost:8000/v1"
    assert "sk-1" not in redact_url("https://h/v1?X-Api-Key=sk-1")
