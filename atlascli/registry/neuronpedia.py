"""Neuronpedia's public explanations export (one JSON list of ``{index, description, ...}`` records per model/SAE),
fetched once and cached under ``$ATLAS_HOME/cache/neuronpedia``. Next to ``hub.py``: the only other place that touches
the network. Offline (``HF_HUB_OFFLINE=1`` or ``ATLAS_OFFLINE=1``) only the cache is read."""

from __future__ import annotations

import gzip
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from atlascli.errors import InputError, NotFoundError
from atlascli.paths import atlas_home
from atlascli.registry.files import atomic_write_bytes

DEFAULT_URL = "https://www.neuronpedia.org/api/explanation/export"
"""Export endpoint (``?modelId=...&saeId=...`` is appended)."""
URL_ENV = "ATLAS_NEURONPEDIA_URL"
"""Environment variable overriding :data:`DEFAULT_URL`."""


def offline() -> bool:
    """Whether the network must not be used."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "ATLAS_OFFLINE"))


def export_url(model_id: str, sae_id: str, base_url: str | None = None) -> str:
    """The export URL of one SAE, e.g. ``...?modelId=gemma-2-2b&saeId=20-gemmascope-res-16k``."""
    base = base_url or os.environ.get(URL_ENV) or DEFAULT_URL
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}{urllib.parse.urlencode({'modelId': model_id, 'saeId': sae_id})}"


def cache_path(model_id: str, sae_id: str) -> Path:
    """Where the export of one SAE is cached."""
    safe = f"{model_id}__{sae_id}".replace("/", "_")
    return atlas_home() / "cache" / "neuronpedia" / f"{safe}.json"


def _check_records(data: bytes, url: str) -> bytes:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        records = json.loads(data)
    except json.JSONDecodeError as exc:
        raise InputError(f"{url} did not return JSON ({exc.msg})", "check --neuronpedia-url") from None
    if isinstance(records, dict):
        records = records.get("explanations", [])
    if not isinstance(records, list) or not any(isinstance(r, dict) and "index" in r and r.get("description")
                                                for r in records):
        raise InputError(f"{url} returned no explanation records (index + description)",
                         "check the model and SAE ids, or --neuronpedia-url")
    return json.dumps(records).encode("utf-8")


def fetch_explanations(model_id: str, sae_id: str, base_url: str | None = None, refresh: bool = False,
                       timeout: float = 300.0) -> Path:
    """The cached export of one SAE's explanations, downloading it first when needed."""
    path = cache_path(model_id, sae_id)
    if path.exists() and not refresh:
        return path
    url = export_url(model_id, sae_id, base_url)
    if offline():
        raise NotFoundError(f"offline, and the Neuronpedia explanations of {model_id}/{sae_id} are not cached at {path}",
                            f"go online once (unset HF_HUB_OFFLINE) to fetch {url}, or download that JSON yourself and "
                            "pass --labels FILE")
    req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "atlascli"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - configurable public endpoint
            data = resp.read()
    except urllib.error.HTTPError as exc:
        raise NotFoundError(f"Neuronpedia answered HTTP {exc.code} for {url}",
                            "check the model / SAE ids or --neuronpedia-url; or pass --labels FILE") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise NotFoundError(f"cannot reach {url} ({exc.__class__.__name__}: {getattr(exc, 'reason', exc)})",
                            "check the network or --neuronpedia-url; or download the export and pass --labels FILE") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _check_records(data, url))
    return path
