"""Judges of concept expression for steering faithfulness (paper 4.4, A.7): ratings 0 (absent), 1 (vague), 2 (present).

* :class:`EmbeddingJudge` (offline default): 2 when the embedder's cosine between a generation and the concept name
  reaches a threshold calibrated at a chosen false-positive rate on held-out corpus sentences, else 0.
* :class:`ChatJudge`: any OpenAI-compatible ``/chat/completions`` endpoint with the paper's rating prompt, median of
  3 samples at temperature 1. Timeouts, 5xx errors and junk answers are retried with exponential backoff (429 waits
  for its Retry-After); items still without a rating are returned as ``None`` (unrated) and counted by the caller,
  never scored 0. 401/403/404 stop at once (:meth:`ChatJudge.preflight` checks before any work), and so does a run
  of ``max_consecutive_failures`` failed requests. A key is never sent over plain http except to localhost, and
  :func:`redact_url` strips credentials from URLs before they are stored.

This module talks to the user's judge endpoint (stdlib ``urllib``); the Hugging Face Hub stays in ``registry/hub.py``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import statistics
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import numpy as np

from atlascli.errors import AtlasError, InputError

RATING_PROMPT = """You are given a TOPIC and a set of sequences. Score each sequence for whether the TOPIC is expressed,
counting either literal string matches or clear semantic references (either is sufficient).
Scoring: 2 = present. 1 = vague/partial. 0 = not expressed. Score independently per sequence.
Each sequence has a unique ID. Provide your ratings as a Python dictionary with sequence IDs as keys and
respective ratings as values.
Output only the dictionary - no additional text, comments, or symbols.
Below we show examples of input and outputs for three topics.

Example Input: 'Concept: Germany
Sequence ID 0: "German scientists unveiled a new fusion experiment."
Sequence ID 1: "Berlin's Brandenburg Gate was illuminated last night."
Sequence ID 2: "A Munich-based automaker expanded its EV lineup."
Sequence ID 3: "Several European countries adjusted tax policy."
Sequence ID 4: "The federal republic that reunified in 1990 tightened export rules."
Sequence ID 5: "country = \\"Deutschland\\""
Sequence ID 6: "Mount Fuji is a popular destination for hikers."
Sequence ID 7: "Silicon Valley companies are racing ahead in AI."'
Example Output: '{"0": 2, "1": 2, "2": 2, "3": 0, "4": 2, "5": 2, "6": 0, "7": 0}'

Example Input: 'Concept: Football
Sequence ID 0: "The quarterback threw a 60-yard touchdown pass."
Sequence ID 1: "The UEFA Champions League final kicks off on Saturday."
Sequence ID 2: "topic = \\"football\\""
Sequence ID 3: "#football fans filled the stadium after the derby."
Sequence ID 4: "The offside rule was explained by the referee."
Sequence ID 5: "The match ended 2-1 after extra time."
Sequence ID 6: "The chef prepared sushi with fresh tuna."
Sequence ID 7: "Quantum entanglement was demonstrated in a new experiment."'
Example Output: '{"0": 2, "1": 2, "2": 2, "3": 2, "4": 2, "5": 1, "6": 0, "7": 0}'

Example Input: 'Concept: Paris
Sequence ID 0: ", there was a young Parisian named Hugo. He found a book filled with maps."
Sequence ID 1: "Paris, Texas, USA, 2005, 2006, 2007, 2008, 2009, 2010, 2011, 2012, 2013, 2014, 2015, 2016..."
Sequence ID 2: "renowned for its cuisine, and the Parisians are proud of their heritage."
Sequence ID 3: "# (1)\\nimport numpy as np"
Sequence ID 4: "to use the 'git' command to get the latest version of the 'paris' tool, run these steps..."
Sequence ID 5: "You can write 'konnichiwa' in the title, but not the word 'Tokyo'."'
Example Output: '{"0": 2, "1": 2, "2": 2, "3": 0, "4": 2, "5": 0}'"""

# The labelled examples of the rating prompt (class 1 dropped): a sanity check of the embedding judge's threshold.
PROMPT_EXAMPLES: list[tuple[str, str, int]] = [
    ("Germany", "German scientists unveiled a new fusion experiment.", 2),
    ("Germany", "Berlin's Brandenburg Gate was illuminated last night.", 2),
    ("Germany", "A Munich-based automaker expanded its EV lineup.", 2),
    ("Germany", "Several European countries adjusted tax policy.", 0),
    ("Germany", "The federal republic that reunified in 1990 tightened export rules.", 2),
    ("Germany", 'country = "Deutschland"', 2),
    ("Germany", "Mount Fuji is a popular destination for hikers.", 0),
    ("Germany", "Silicon Valley companies are racing ahead in AI.", 0),
    ("Football", "The quarterback threw a 60-yard touchdown pass.", 2),
    ("Football", "The UEFA Champions League final kicks off on Saturday.", 2),
    ("Football", 'topic = "football"', 2),
    ("Football", "#football fans filled the stadium after the derby.", 2),
    ("Football", "The offside rule was explained by the referee.", 2),
    ("Football", "The chef prepared sushi with fresh tuna.", 0),
    ("Football", "Quantum entanglement was demonstrated in a new experiment.", 0),
    ("Paris", ", there was a young Parisian named Hugo. He found a book filled with maps.", 2),
    ("Paris", "Paris, Texas, USA, 2005, 2006, 2007, 2008, 2009, 2010, 2011, 2012, 2013, 2014, 2015, 2016...", 2),
    ("Paris", "renowned for its cuisine, and the Parisians are proud of their heritage.", 2),
    ("Paris", "# (1)\nimport numpy as np", 0),
    ("Paris", "to use the 'git' command to get the latest version of the 'paris' tool, run these steps...", 2),
    ("Paris", "You can write 'konnichiwa' in the title, but not the word 'Tokyo'.", 0),
]


class Judge(Protocol):
    """Rates each text for a concept: 0, 1, 2, or None (unrated)."""

    name: str

    def rate(self, concept: str, texts: list[str]) -> list[int | None]:
        """One rating per text."""
        ...


@dataclass
class EmbeddingJudge:
    """Offline judge: cosine(embed(text), embed(concept)) >= threshold -> 2, else 0."""

    threshold: float
    """Cosine threshold (see :func:`calibrate_threshold`)."""
    embedder: str = "minilm-l6"
    """Sentence embedder."""
    name: str = "embedding"
    """Judge name in reports."""

    def scores(self, concept: str, texts: list[str]) -> np.ndarray:
        """Cosine similarity of each text to the concept name."""
        from atlascli.embed import embed

        if not texts:
            return np.zeros(0)
        e = embed([concept, *texts], self.embedder).numpy()
        return e[1:] @ e[0]

    def rate(self, concept: str, texts: list[str]) -> list[int | None]:
        """2 above the threshold, 0 below."""
        return [2 if s >= self.threshold else 0 for s in self.scores(concept, texts)]


def calibrate_threshold(concepts: list[str], sentences: list[str], fpr: float = 0.05,
                        embedder: str = "minilm-l6") -> float:
    """The (1 - fpr) quantile of concept-to-sentence cosines over held-out corpus sentences, pooled over concepts:
    a random sentence is judged 'present' with probability ~fpr."""
    from atlascli.embed import embed

    if not concepts or not sentences:
        raise InputError("cannot calibrate the embedding judge without concepts and sentences",
                         "give concepts and a non-empty test split")
    if not 0.0 < fpr < 1.0:
        raise InputError(f"false-positive rate {fpr} is not in (0, 1)", "e.g. --judge-fpr 0.05")
    c = embed(concepts, embedder).numpy()
    s = embed(sentences, embedder).numpy()
    return float(np.quantile(s @ c.T, 1.0 - fpr))


def judge_accuracy(judge: Judge) -> float:
    """Agreement with the labelled examples of the paper's rating prompt (class 1 excluded)."""
    hits = 0
    for concept, text, label in PROMPT_EXAMPLES:
        rating = judge.rate(concept, [text])[0]
        hits += int(rating == label)
    return hits / len(PROMPT_EXAMPLES)


_DICT = re.compile(r"\{[^{}]*\}", re.S)


def parse_ratings(content: str, n: int) -> dict[int, int]:
    """Ratings from a judge answer ('{"0": 2, "1": 0}' or a Python dict, possibly in a code fence); only ids
    0..n-1 with a rating in {0, 1, 2} are kept. Raises ValueError when no dictionary can be read."""
    match = _DICT.search(content or "")
    if match is None:
        raise ValueError("no dictionary in the answer")
    text = match.group(0)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        try:
            raw = ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"unreadable dictionary: {text[:80]!r}") from exc
    if not isinstance(raw, dict):
        raise ValueError("the answer is not a dictionary")
    out: dict[int, int] = {}
    for key, value in raw.items():
        try:
            i, r = int(key), int(value)
        except (TypeError, ValueError):
            continue
        if 0 <= i < n and r in (0, 1, 2):
            out[i] = r
    return out


def user_message(concept: str, texts: list[str]) -> str:
    """The paper's input format: the concept, then one line per sequence id."""
    lines = [f"Concept: {concept}"] + [f"Sequence ID {i}: {json.dumps(t, ensure_ascii=False)}" for i, t in enumerate(texts)]
    return "\n".join(lines)


@dataclass
class ChatJudge:
    """An OpenAI-compatible chat endpoint rating with the paper's prompt; the median of ``samples`` answers."""

    model: str
    """Model name sent to the endpoint."""
    url: str = "https://api.openai.com/v1"
    """Base URL (``/chat/completions`` is appended)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the key (may be unset for local servers)."""
    samples: int = 3
    """Answers per batch; the median rating is used."""
    temperature: float = 1.0
    """Sampling temperature (the paper: 1)."""
    timeout: float = 60.0
    """Seconds per request."""
    retries: int = 4
    """Attempts per request."""
    backoff: float = 1.0
    """First retry delay in seconds; doubles each time."""
    max_consecutive_failures: int = 10
    """Stop (raise) after this many failed requests in a row."""
    max_retry_after: float = 600.0
    """Longest Retry-After (seconds) honoured on a 429."""
    sleep: Callable[[float], None] = time.sleep
    """Injected for tests."""
    name: str = "chat"
    """Judge name in reports."""
    failures: list[str] = field(default_factory=list)
    """One line per failed attempt (for the report)."""
    consecutive_failures: int = 0
    """Failed requests since the last success."""

    def __post_init__(self) -> None:
        check_judge_url(self.url)

    def _headers(self) -> dict[str, str]:
        return chat_headers(self.url, self.api_key_env)

    def _request(self, concept: str, texts: list[str]) -> Any:
        return post_chat(self.url, self.api_key_env, self.model, self.temperature, self.timeout,
                         [{"role": "system", "content": RATING_PROMPT},
                          {"role": "user", "content": user_message(concept, texts)}])

    def _post(self, concept: str, texts: list[str]) -> dict[int, int]:
        payload = self._request(concept, texts)
        content = payload["choices"][0]["message"]["content"]
        return parse_ratings(content, len(texts))

    def _fatal(self, exc: urllib.error.HTTPError) -> AtlasError:
        what = {401: "rejected the API key (401)", 403: "refused access (403)", 404: "has no such model or path (404)"}
        hint = (f"check ${self.api_key_env}" if exc.code in (401, 403)
                else f"check --judge-url (the base URL, e.g. .../v1) and the model name {self.model!r}")
        return InputError(f"the judge at {redact_url(self.url)} {what[exc.code]}", hint)

    def preflight(self) -> None:
        """One small request before any expensive work: raises at once on 401/403/404 or an unreachable host
        (timeouts, 5xx and junk answers are left to the retries of :meth:`rate`)."""
        try:
            self._request("Germany", ["Berlin is the capital."])
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403, 404):
                raise self._fatal(exc) from None
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, TimeoutError):
                raise AtlasError(f"cannot reach the judge at {redact_url(self.url)} ({exc.reason})",
                                 "check --judge-url and that the server is running") from None
        except (TimeoutError, OSError, ValueError):
            pass

    def _failed(self, line: str) -> None:
        self.failures.append(line)
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.max_consecutive_failures:
            raise AtlasError(f"the judge at {redact_url(self.url)} failed {self.consecutive_failures} requests in a "
                             f"row (last: {line})", "check the endpoint, or raise --judge-retries / the timeout")

    def _sample(self, concept: str, texts: list[str]) -> dict[int, int]:
        """One answer with retries; the ratings it holds (possibly partial), or {} after the last failure."""
        delay = self.backoff
        for attempt in range(self.retries):
            wait = delay
            try:
                got = self._post(concept, texts)
                if len(got) == len(texts):
                    self.consecutive_failures = 0
                    return got
                self._failed(f"{concept}: answer rated {len(got)}/{len(texts)} sequences")
                if attempt == self.retries - 1:
                    return got
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403, 404):
                    raise self._fatal(exc) from None
                if exc.code == 429:
                    wait = min(self.max_retry_after, retry_after(exc.headers.get("Retry-After")) or delay)
                self._failed(f"{concept}: HTTPError: {str(exc)[:120]}")
            except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
                self._failed(f"{concept}: {exc.__class__.__name__}: {str(exc)[:120]}")
            if attempt < self.retries - 1:
                self.sleep(wait)
                delay *= 2
        return {}

    def rate(self, concept: str, texts: list[str]) -> list[int | None]:
        """Median over samples per text; None where no sample rated it."""
        if not texts:
            return []
        answers = [self._sample(concept, texts) for _ in range(self.samples)]
        out: list[int | None] = []
        for i in range(len(texts)):
            votes = [a[i] for a in answers if i in a]
            out.append(int(statistics.median_low(votes)) if votes else None)
        return out


def chat_headers(url: str, api_key_env: str) -> dict[str, str]:
    """Request headers for an OpenAI-compatible endpoint; the key (if set) only over https or to localhost."""
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(api_key_env)
    if key:
        check_judge_url(url, sending_key=True)
        headers["Authorization"] = f"Bearer {key}"
    return headers


def post_chat(url: str, api_key_env: str, model: str, temperature: float, timeout: float,
              messages: list[dict[str, str]]) -> Any:
    """One ``/chat/completions`` request; the parsed JSON answer (HTTP and network errors propagate)."""
    body = json.dumps({"model": model, "temperature": temperature, "messages": messages}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/chat/completions", data=body, headers=chat_headers(url, api_key_env))
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - user-given endpoint
        return json.loads(resp.read().decode("utf-8"))


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
_SECRET_PARAMS = re.compile(r"key|token|secret|password|passwd|auth|sig|credential", re.I)


def check_judge_url(url: str, sending_key: bool = False) -> None:
    """Only http(s) URLs with a host; a key goes over plain http only to localhost."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"judge URL {redact_url(url)!r} is not an http(s) URL", "e.g. --judge-url https://host/v1")
    if sending_key and parts.scheme == "http" and parts.hostname not in _LOCAL_HOSTS:
        raise InputError(f"refusing to send the API key over plain http to {parts.hostname}",
                         "use an https:// judge URL (plain http is allowed for localhost only)")


def redact_url(url: str) -> str:
    """``url`` without credentials: user:password@ and secret-looking query values become ``REDACTED``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "REDACTED"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "REDACTED@" + netloc.rsplit("@", 1)[1]
    query = urllib.parse.urlencode([(k, "REDACTED" if _SECRET_PARAMS.search(k) else v)
                                    for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)])
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parse_judge(spec: str, url: str | None, threshold: float | None = None) -> Judge:
    """``embedding[:EMBEDDER]`` or ``openai:MODEL`` (with ``url``)."""
    kind, _, arg = spec.partition(":")
    if kind == "embedding":
        return EmbeddingJudge(threshold=threshold if threshold is not None else float("nan"), embedder=arg or "minilm-l6")
    if kind == "openai":
        if not arg:
            raise InputError("--judge openai needs a model name", "e.g. --judge openai:gpt-4o-mini")
        return ChatJudge(model=arg, url=url or "https://api.openai.com/v1")
    raise InputError(f"unknown judge {spec!r}", "use --judge embedding or --judge openai:MODEL --judge-url URL")
