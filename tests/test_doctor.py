"""`atlas doctor` reports a broken registry and missing models instead of crashing."""

from __future__ import annotations

import json
from pathlib import Path

from atlascli.cli.main import main
from atlascli.doctor import diagnose


def test_doctor_on_a_clean_and_a_broken_registry(isolated_home: Path, capsys, monkeypatch):
    rep = diagnose()
    assert not [f for f in rep.findings if f.status == "error"], rep.findings
    bad = isolated_home / "artifacts" / "atlas" / "zzz-bad"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text(json.dumps({"kind": "atlas", "schema_version": 99, "id": "zzz-bad", "files": {}}))
    (isolated_home / "artifacts" / "activations" / ".partial-act-x").mkdir(parents=True)
    import atlascli.zoo as zoo

    monkeypatch.setitem(zoo.ZOO, "ghost", zoo.ZooEntry("no_such_pkg_xyz", None, "subject", "missing", "no-such-pkg"))
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert code == 1
    assert "zzz-bad" in out and "registry rm" in out          # the broken artifact, with its fix
    assert ".partial-act-x" in out and "resume" in out       # a crashed job
    assert "ghost" in out and "pip install --no-deps no-such-pkg" in out
    assert main(["doctor", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["problems"] >= 3 and data["facts"]["registry"]["chosen_by"] == "$ATLAS_HOME"


def test_a_crashing_check_is_reported(monkeypatch):
    import atlascli.doctor as doctor

    def boom(rep):
        raise RuntimeError("kaput")

    monkeypatch.setattr(doctor, "CHECKS", [("disk", boom)])
    rep = doctor.diagnose()
    assert rep.findings[0].status == "error" and "kaput" in rep.findings[0].message


def test_doctor_warns_when_online_mode_cannot_reach_the_hub(monkeypatch):
    import socket

    from atlascli.doctor import Report, _network

    def no_dns(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    rep = Report()
    _network(rep)
    (finding,) = rep.findings
    assert finding.status == "warn" and "does not resolve" in finding.message and "HF_HUB_OFFLINE=1" in finding.fix
    assert rep.facts["hub_host_resolves"] is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rep = Report()
    _network(rep)
    assert rep.findings[0].status == "ok" and "hub_host_resolves" not in rep.facts
