"""Atlas presets up to the network boundary: Neuronpedia's export served by a bounded 127.0.0.1 server (recorded
records), the sae-lens download replaced by a local SAE of the same width; offline refusals say what is missing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from atlascli.errors import InputError, NotFoundError

# recorded shape of https://www.neuronpedia.org/api/explanation/export?modelId=gemma-2-2b&saeId=20-gemmascope-res-16k
RECORDED = [
    {"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "5218", "description": " references to London",
     "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair"},
    {"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "12614", "description": "British capital city",
     "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair"},
    {"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "6772", "description": "dogs and puppies",
     "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair"},
]


@pytest.fixture()
def export_server() -> Iterator[Any]:
    """Serves RECORDED for at most 20 requests, then stops; records the request paths."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            paths.append(self.path)
            data = json.dumps(RECORDED).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.timeout = 5

    def serve() -> None:
        for _ in range(20):
            httpd.handle_request()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/api/explanation/export", paths
    httpd.server_close()


def test_fetch_explanations_caches_and_refuses_offline(export_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from atlascli.atlas.store import read_labels_file
    from atlascli.registry.neuronpedia import cache_path, export_url, fetch_explanations

    url, paths = export_server
    assert export_url("gemma-2-2b", "20-gemmascope-res-16k").startswith(
        "https://www.neuronpedia.org/api/explanation/export?modelId=gemma-2-2b&saeId=20-gemmascope-res-16k")
    with pytest.raises(NotFoundError, match=r"offline.*not cached.*") as exc:
        fetch_explanations("gemma-2-2b", "20-gemmascope-res-16k", url)
    assert "--labels" in str(exc.value) and "saeId=20-gemmascope-res-16k" in str(exc.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    path = fetch_explanations("gemma-2-2b", "20-gemmascope-res-16k", url)
    assert path == cache_path("gemma-2-2b", "20-gemmascope-res-16k")
    assert paths == ["/api/explanation/export?modelId=gemma-2-2b&saeId=20-gemmascope-res-16k"]
    assert read_labels_file(path) == {5218: "references to London", 12614: "British capital city", 6772: "dogs and puppies"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch_explanations("gemma-2-2b", "20-gemmascope-res-16k", url) == path and len(paths) == 1  # cache
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("ATLAS_NEURONPEDIA_URL", url)  # the URL is configurable by environment too
    fetch_explanations("gemma-2-2b", "20-gemmascope-res-65k")
    assert paths[-1].endswith("saeId=20-gemmascope-res-65k")


def test_unreachable_endpoint_says_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    from atlascli.registry.neuronpedia import fetch_explanations

    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(NotFoundError, match=r"cannot reach http://127\.0\.0\.1:9/x\?modelId=m&saeId=s"):
        fetch_explanations("m", "s", "http://127.0.0.1:9/x", timeout=2)


def _fake_release_sae(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fail: bool = False) -> list[str]:
    """Replace the sae-lens download by a local random SAE of the preset's width (16k, tiny d_in)."""
    from conftest import save_random_topk_sae
    from sae_lens import SAE

    import atlascli.saes

    calls: list[str] = []
    folder = save_random_topk_sae(tmp_path / "sae16k", d_in=8, d_sae=16384, k=4, seed=0)

    def load(ref: str, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
        calls.append(ref)
        if fail:
            raise NotFoundError(f"cannot load SAE of release {ref!r} (LocalEntryNotFoundError)", "check the network")
        return SAE.load_from_disk(str(folder)), {"sae": ref, "sae_source": "sae-lens-release"}

    monkeypatch.setattr(atlascli.saes, "load_sae", load)
    return calls


def test_import_preset_and_paper_content(export_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from atlascli.atlas import resolve_atlas
    from atlascli.atlas.presets import import_preset
    from atlascli.concepts import builtin_concepts, builtin_lambda, is_paper_atlas, paper_concept, paper_features

    url, _ = export_server
    calls = _fake_release_sae(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    art = import_preset("gemma-scope-2b-16k-l20", neuronpedia_url=url)
    assert calls == ["gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical"]
    p = art.provenance
    assert (p["foundation"], p["layer"], p["site"], p["width"]) == ("google/gemma-2-2b", 20, "resid", 16384)
    atlas = resolve_atlas("gemma-scope-2b-16k-l20")
    assert atlas.id == art.id and atlas.label(5218) == "references to London" and is_paper_atlas(atlas)
    assert builtin_lambda("london", atlas) == 35.0 and builtin_lambda("Dogs and Cats", atlas) == 50.0
    assert builtin_lambda("reddit comments", atlas) == 50.0 and builtin_lambda("gardening", atlas) is None
    assert paper_concept("paper:london", atlas).features == [5218, 12614]
    assert builtin_concepts(atlas)["dogs and cats"] == [6772, 1089, 12082, 13747] and len(builtin_concepts(atlas)) == 11
    feats = paper_features(atlas)
    assert len(feats) == 100 and feats[:3] == [464, 470, 496] and feats[-1] == 14694
    with pytest.raises(InputError, match="unknown atlas preset 'gemma-scope-9b'.*gemma-scope-2b-16k-l20"):
        import_preset("gemma-scope-9b")


def test_paper_content_refused_on_other_atlases(aligned: Any) -> None:
    from atlascli.concepts import builtin_lambda, load_concept, paper_concept, paper_features

    atlas, _ = aligned
    assert builtin_lambda("london", atlas) is None
    for call in (lambda: paper_features(atlas), lambda: paper_concept("london", atlas),
                 lambda: load_concept("paper:dogs and cats", atlas)):
        with pytest.raises(InputError) as exc:
            call()
        msg = str(exc.value)
        assert "Gemma Scope 16k layer-20" in msg and "gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical" in msg
        assert "atlas atlas import-preset gemma-scope-2b-16k-l20" in msg and atlas.id in msg
    assert load_concept("london", atlas) is None  # a plain name stays a text query elsewhere


def test_preset_offline_names_the_missing_sae(export_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from atlascli.atlas.presets import import_preset
    from atlascli.registry.neuronpedia import fetch_explanations

    url, _ = export_server
    monkeypatch.delenv("HF_HUB_OFFLINE")
    cached = fetch_explanations("gemma-2-2b", "20-gemmascope-res-16k", url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_release_sae(monkeypatch, tmp_path, fail=True)
    with pytest.raises(NotFoundError) as exc:
        import_preset("gemma-scope-2b-16k-l20", neuronpedia_url=url)
    msg = str(exc.value)
    assert "offline" in msg and "'gemma-scope-2b-pt-res-canonical', id 'layer_20/width_16k/canonical'" in msg
    assert "google/gemma-scope-2b-pt-res" in msg and str(cached) in msg
