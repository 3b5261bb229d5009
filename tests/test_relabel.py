"""`atlas atlas label`: offline labels v2 for an existing atlas and LLM descriptions, as a new atlas version
that keeps the SAE weights (its alignments stay valid)."""

from __future__ import annotations

import json

import pytest

from atlascli.atlas.relabel import ChatLabeler, feature_prompt, parse_descriptions, relabel_atlas
from atlascli.cli.main import main
from atlascli.errors import AtlasError, InputError
from atlascli.registry import Registry


def test_parse_descriptions_keeps_only_asked_features_and_drops_unclear():
    text = 'Sure! ```json\n{"3": "dogs and  cats", "4": "unclear", "99": "not asked", "x": "junk"}\n```'
    assert parse_descriptions(text, [3, 4]) == {3: "dogs and cats"}
    assert parse_descriptions("no json here", [3]) == {}


def test_feature_prompt_marks_the_peak_token():
    rec = {"top_samples": ["The dog barked.", "A cat."], "top_tokens": ["dog", "zebra"]}
    block = feature_prompt(7, rec)
    assert "Feature 7:" in block and "The <<dog>> barked." in block and "- A cat." in block


def test_llm_relabel_keeps_the_sae_and_alignments(aligned, judge_server):
    atlas, fits = aligned
    live = [r["index"] for r in atlas.labels if r.get("top_samples")]
    answers = [json.dumps({str(i): f"concept number {i}" for i in live[a:a + 10]}) for a in range(0, len(live), 10)]
    server = judge_server(answers)
    art = relabel_atlas(atlas, labeler=ChatLabeler(model="m", url=server.url), batch=10)
    from atlascli.atlas import resolve_atlas

    new = resolve_atlas(art.id)
    assert new.weights_id == atlas.id and new.id != atlas.id
    assert new.label(live[0]) == f"concept number {live[0]}"
    assert all(new.labels[i]["llm"] == "described" for i in live)
    # same SAE bytes, and the old alignments are found for the new version
    assert {n: e["sha256"] for n, e in new.artifact.manifest["files"].items() if n.startswith("sae/")} == \
        {n: e["sha256"] for n, e in atlas.artifact.manifest["files"].items() if n.startswith("sae/")}
    from atlascli.search import resolve_alignment

    assert resolve_alignment(Registry(), None, None, 2, "procrustes", new).id in {f.id for f in fits}
    # the prompt carried samples with the peak token marked
    assert "<<" in server.requests[0]["messages"][1]["content"]


def test_failing_labeler_marks_features_and_never_invents(aligned, judge_server):
    atlas, _ = aligned
    live = [r["index"] for r in atlas.labels if r.get("top_samples")]
    first = json.dumps({str(i): f"c{i}" for i in live[:5]})
    server = judge_server([first] + ["junk"] * 200)
    art = relabel_atlas(atlas, labeler=ChatLabeler(model="m", url=server.url, retries=1, max_consecutive_failures=2),
                        batch=5)
    recs = json.loads(art.file("labels.json").read_text())
    described = [r for r in recs if r.get("llm") == "described"]
    assert [r["index"] for r in described] == live[:5]
    others = [r for r in recs if r.get("top_samples") and r.get("llm") != "described"]
    assert others and all(r["description"] is None for r in others)
    assert art.meta["llm_labelling"]["described"] == 5


def test_labeler_auth_error_is_one_line(aligned, capsys, monkeypatch):
    import http.server
    import threading

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.send_response(401)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        code = main(["atlas", "label", "--labeler", "openai:m", "--judge-url",
                     f"http://127.0.0.1:{srv.server_address[1]}/v1"])
    finally:
        srv.shutdown()
    assert code == 2 and "401" in capsys.readouterr().err
    with pytest.raises(InputError, match="unknown labeler"):
        main(["atlas", "label", "--labeler", "nope", "--debug"])


def test_offline_relabel_of_an_atlas(aligned):
    atlas, _ = aligned
    art = relabel_atlas(atlas)
    assert art.provenance["labels_version"] == 2 and art.provenance["weights_id"] == atlas.id
    with pytest.raises(AtlasError):
        relabel_atlas(atlas, labeler=ChatLabeler(model="m", url="http://127.0.0.1:9/v1", retries=1,
                                                 max_consecutive_failures=1))


def test_evaluate_plan_after_a_relabel_reuses_the_test_codes(aligned, capsys):
    """A relabelled atlas shares its SAE, so the atlas test codes extracted for the original serve it: the evaluate
    plan says reuse (it looked them up by the new atlas id and planned a needless extraction)."""
    import json

    from atlascli.cli.main import main

    assert main(["evaluate", "quality", "--test-limit", "40", "--json"]) == 0
    capsys.readouterr()
    relabel_atlas(aligned[0])
    assert main(["evaluate", "quality", "--test-limit", "40", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["work"] == [] and any("atlas test codes" in s["text"] for s in plan["steps"])
