"""Where the registry is: $ATLAS_HOME, else the checkout's own registry (make demo), else ~/.cache/atlas."""

from __future__ import annotations

from pathlib import Path

import pytest

from atlascli.paths import atlas_home, atlas_home_source, project_registry


def test_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "h"))
    assert atlas_home() == tmp_path / "h" and atlas_home_source()[1] == "$ATLAS_HOME"


def test_the_checkout_registry_is_found_from_a_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATLAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    sub = tmp_path / "repo" / "examples" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert project_registry() is None
    assert atlas_home() == tmp_path / "home" / ".cache" / "atlas"
    (tmp_path / "repo" / ".cache" / "atlas-home" / "artifacts").mkdir(parents=True)
    assert atlas_home() == (tmp_path / "repo" / ".cache" / "atlas-home").resolve()
    assert "checkout" in atlas_home_source()[1]
