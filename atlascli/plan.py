"""Plans: what a command will do, what it reuses from the registry and roughly how long it takes.

A plan is made before any model is loaded; making it runs every input check of :mod:`atlascli.preflight`,
so a bad input fails here, before the first expensive step and before anything is written. Times come from
the throughput that earlier extractions of the same model measured on this machine (``meta.throughput`` of
activations artifacts), scaled by depth; without one, from a one-off matmul calibration of this machine.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from atlascli.errors import InputError
from atlascli.preflight import (
    ModelInfo,
    check_disk,
    check_layers,
    check_limit,
    check_runtime,
    human_bytes,
    probe_model,
    split_size,
)
from atlascli.registry import Artifact, Registry, slug

if TYPE_CHECKING:
    from atlascli.extract import ExtractConfig

EFFICIENCY = 0.75
"""Fraction of the calibrated matmul rate that a batched, padded, pooled forward pass reaches (CPU). Measured
here: 0.77-0.90 of the matmul peak (bench/extract.py), 0.88 for the demo's first atlas build (Gemma 3 270M, 12k
sentences: 174 s against 438 s estimated with the earlier 0.35); SAE training took 98 s against 3 min estimated."""
GENERATION_EFFICIENCY = 0.06
"""The same for token-by-token generation (steering evaluation): bench/steer.py measures 52.75 tokens/s for SmolLM2
(0.21 GFLOP a token, 11 GFLOP/s) on a machine calibrated at about 186 GFLOP/s. The earlier 0.0875 estimated a
15.7-min steering evaluation (cores shared) at 5 min."""
CHARS_PER_TOKEN = 4.2
"""English prose, for token counts from a dataset's mean sentence length."""
MAX_POOLED_CODES = 512
"""Assumed non-zero max-pooled SAE codes per sentence, for disk estimates."""


@dataclass
class Step:
    """One unit of work of a plan (or one artifact it reuses)."""

    action: str
    """``reuse``, ``extract``, ``resume``, ``fit``, ``train``, ``generate``..."""
    text: str
    """One-line description."""
    sentences: int = 0
    """Sentences still to push through a model (0 when reused)."""
    seconds: float = 0.0
    """Estimated seconds of this step."""
    basis: str = ""
    """Where the estimate comes from."""
    artifact: str | None = None
    """The artifact reused, or resumed."""
    model: str | None = None
    """The model run by this step."""
    layers: list[int] = field(default_factory=list)
    """Its layers."""


@dataclass
class Plan:
    """The checked inputs of a command, its steps and their cost."""

    command: str
    """``extract``, ``fit``, ``atlas build`` or ``evaluate``."""
    steps: list[Step] = field(default_factory=list)
    """In order."""
    disk_bytes: int = 0
    """Rough size of the artifacts to write."""
    smaller: str = "--limit N"
    """The option that makes the work smaller."""

    @property
    def seconds(self) -> float:
        """Estimated total."""
        return sum(s.seconds for s in self.steps)

    @property
    def reused(self) -> list[str]:
        """Artifacts reused as they are."""
        return [s.artifact for s in self.steps if s.action == "reuse" and s.artifact]

    @property
    def work(self) -> list[Step]:
        """Steps that still do something."""
        return [s for s in self.steps if s.action != "reuse"]

    def line(self) -> str:
        """One line: the work, what is reused, time and disk."""
        parts = [s.text for s in self.steps]
        if not self.work:
            return f"plan ({self.command}): nothing to compute; " + "; ".join(parts)
        big = sum(s.sentences for s in self.steps)
        tail = f"about {fmt_seconds(self.seconds)}"
        if self.disk_bytes:
            tail += f" and {human_bytes(self.disk_bytes)} of disk"
        if big and self.smaller:
            tail += f" ({self.smaller} makes it smaller)"
        return f"plan ({self.command}): " + "; ".join(parts) + f"; {tail}"

    def to_json(self) -> dict[str, Any]:
        """For ``--json`` output."""
        return {"command": self.command, "line": self.line(), "seconds": round(self.seconds, 1),
                "disk_bytes": self.disk_bytes, "reused": self.reused, "smaller": self.smaller,
                "steps": [asdict(s) for s in self.steps], "work": [asdict(s) for s in self.work]}


def fmt_seconds(s: float) -> str:
    """``45 s``, ``12 min``, ``2.5 h``."""
    if s < 90:
        return f"{max(s, 1):.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


# ----------------------------------------------------------------------------- cost


@functools.lru_cache(maxsize=4)
def machine_gflops(device: str = "cpu", dtype: str = "float32") -> float:
    """Measured matmul rate of this machine in ``dtype`` (about 0.1 s, once per process and dtype)."""
    import torch

    from atlascli.models import resolve_device

    dev = resolve_device(device)
    dt = getattr(torch, dtype)
    a, b = torch.randn(512, 1024, device=dev, dtype=dt), torch.randn(1024, 1024, device=dev, dtype=dt)
    reps = 4
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(3):  # best of three: a busy neighbour or a cold thread pool only ever slows a trial down
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * 512 * 1024 * 1024 * reps / max(best, 1e-6) / 1e9


def _throughputs(registry: Registry, device: str, **match: Any) -> list[tuple[Artifact, dict[str, Any]]]:
    """Activations measured on this device type (``meta.throughput``), newest first."""
    dev = "cuda" if device.startswith("cuda") or device == "auto" and _has_cuda() else "cpu"
    out = []
    for art in reversed(registry.find("activations", **match)):
        t = art.meta.get("throughput")
        if t and t.get("device") == dev and t.get("sentences_per_s") and int(t.get("sentences", 0)) >= 16:
            out.append((art, t))
    return out


def _in_dtype(rate: float, device: str, measured: str, wanted: str) -> float:
    """A rate measured in one dtype, scaled to another by this machine's matmul rates in the two."""
    return rate if measured == wanted else rate * machine_gflops(device, wanted) / machine_gflops(device, measured)


def measured_rate(registry: Registry, model: str, device: str, sae: bool,
                  dtype: str = "float32") -> tuple[float, int, str] | None:
    """(sentences/s, deepest layer, artifact id) of the newest extraction of ``model`` on this device type
    (one in ``dtype`` and with an SAE when ``sae``, if there is one; a rate measured in another dtype is scaled by
    this machine's matmul rates in the two dtypes)."""
    hits = [(float(t["sentences_per_s"]), int(t["deepest_layer"]), art.id, bool(t.get("sae")) == sae,
             str(t.get("dtype") or "float32")) for art, t in _throughputs(registry, device, model=model)]
    if not hits:
        return None
    best = ([h for h in hits if h[3] and h[4] == dtype] or [h for h in hits if h[4] == dtype]
            or [h for h in hits if h[3]] or hits)[0]
    return _in_dtype(best[0], device, best[4], dtype), best[1], best[2]


def machine_rate(registry: Registry, device: str, dtype: str = "float32") -> tuple[float, str] | None:
    """Effective FLOP/s of the newest measured extraction of a zoo or local model here (tokens/s x FLOPs/token)."""
    from pathlib import Path

    from atlascli.errors import AtlasError
    from atlascli.models import ZOO

    for art, t in _throughputs(registry, device)[:8]:
        model, site = art.provenance["model"], art.provenance["site"]
        if not t.get("tokens_per_s") or (model not in ZOO and not Path(model).expanduser().exists()):
            continue
        try:
            info = probe_model(model)
        except AtlasError:
            continue
        per_token = 2.0 * info.params_per_layer * (int(t["deepest_layer"]) + 1)
        if t.get("sae"):
            per_token += 2.0 * info.width(site) * int(next(iter(art.meta["widths"].values())))
        rate = _in_dtype(float(t["tokens_per_s"]) * per_token, device, str(t.get("dtype") or "float32"), dtype)
        return rate, f"scaled from {slug(model)} measured here ({art.id})"
    return None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def tokens_per_sentence(dataset: Artifact, max_length: int = 128) -> float:
    """Mean tokens of a sentence (special tokens included), from the dataset's mean length in characters."""
    chars = float(dataset.meta.get("mean_chars") or 120.0)
    return min(float(max_length), chars / CHARS_PER_TOKEN + 1.5)


def extract_seconds(registry: Registry, info: ModelInfo, n: int, deepest: int, device: str, dataset: Artifact,
                    sae_shape: tuple[int, int] | None, max_length: int = 128,
                    dtype: str = "float32") -> tuple[float, str]:
    """Seconds to push ``n`` sentences through ``info`` up to ``deepest`` (and an SAE), and the basis."""
    load = 5.0 if info.ready else 60.0
    if n <= 0:
        return 0.0, "nothing to run"
    hit = measured_rate(registry, info.name, device, sae_shape is not None, dtype)
    if hit is not None:
        rate, old_deepest, art_id = hit
        rate *= (old_deepest + 1) / (deepest + 1)
        return load + n / rate, f"measured {rate:,.0f} sent/s ({art_id})"
    per_token = 2.0 * info.params_per_layer * (deepest + 1)
    if sae_shape is not None:
        per_token += 2.0 * sae_shape[0] * sae_shape[1]
    tokens = n * tokens_per_sentence(dataset, max_length)
    scaled = machine_rate(registry, device, dtype)
    if scaled is not None:
        return load + tokens * per_token / scaled[0], scaled[1]
    gflops = machine_gflops(device, dtype) * EFFICIENCY
    return (load + tokens * 1.15 * per_token / (gflops * 1e9),  # 1.15: padding
            f"rough: no earlier run here, calibrated {gflops:,.0f} GFLOP/s")


# ----------------------------------------------------------------------------- extraction


def _sae_for_plan(cfg: ExtractConfig, info: ModelInfo, registry: Registry) -> tuple[dict[str, Any] | None, int | None]:
    """(provenance as extract would record it, SAE width) of ``cfg.sae``, checked against the model's site."""
    from atlascli.saes import resolve_sae_ref

    if cfg.sae is None:
        return None, None
    if len(cfg.layers) != 1:
        raise InputError("--sae works with exactly one layer", "pass the SAE's layer alone to --layers")
    found = resolve_sae_ref(cfg.sae, registry)
    if found.folder is None:  # a sae-lens release: its shape is known once downloaded
        return found.provenance, None
    path, atlas, prov = found.folder, found.atlas, found.provenance
    if atlas is not None:
        p = atlas.provenance
        if int(p["layer"]) != cfg.layers[0] or p["site"] != cfg.site:
            raise InputError(f"atlas {atlas.id} reads layer {p['layer']} ({p['site']}), not layer {cfg.layers[0]} "
                             f"({cfg.site})", f"pass --layers {p['layer']} --site {p['site']}")
    sae_cfg = json.loads((path / "cfg.json").read_text()) if (path / "cfg.json").exists() else {}
    d_in, d_sae = sae_cfg.get("d_in"), sae_cfg.get("d_sae")
    if d_in is not None and int(d_in) != info.width(cfg.site):
        raise InputError(f"the SAE reads {d_in}-d activations but {info.name} has width {info.width(cfg.site)} at "
                         f"{cfg.site}", "use the SAE's own model, layer and site")
    width = int(d_sae) if d_sae is not None else (int(atlas.provenance["width"]) if atlas else None)
    return prov, width


def _partial_done(registry: Registry, cfg: ExtractConfig, n: int) -> tuple[int, str | None]:
    """Sentences already in a staging folder that ``extract`` would resume."""
    folder = registry.root / "activations"
    layers = "-".join(str(x) for x in cfg.layers)
    kind = "codes" if cfg.sae else cfg.site
    want = json.loads(json.dumps(asdict(cfg)))
    if not folder.exists():
        return 0, None
    for partial in folder.glob(f".partial-act-{slug(cfg.model)}-{kind}-L{layers}-{cfg.split}-*"):
        try:
            stored = json.loads((partial / "plan.json").read_text())
        except (OSError, ValueError):
            continue
        if stored.get("config") == want and int(stored.get("n", -1)) == n:
            shards = len(list(partial.glob("shard-*.safetensors")))
            return min(n, shards * cfg.shard_size), partial.name
    return 0, None


def extract_step(cfg: ExtractConfig, registry: Registry, info: ModelInfo | None = None,
                 for_fit: bool = False) -> tuple[Step, int]:
    """Check an extraction's inputs; its step (reuse, resume or extract) and the bytes it will write. ``for_fit``: the
    fit reads the first ``--limit`` rows of a longer extraction too (:func:`atlascli.fit.open_extraction`)."""
    from atlascli.corpus import resolve_dataset
    from atlascli.extract import stored_prefix

    check_runtime(cfg.device, cfg.dtype)
    check_limit(cfg.limit)
    if cfg.split not in {"train", "test"}:
        raise InputError(f"unknown split {cfg.split!r}", "use train or test")
    info = info or probe_model(cfg.model, cfg.revision, cfg.trust_remote_code)
    check_layers(info, cfg.layers, cfg.site)
    dataset = resolve_dataset(cfg.dataset, registry)
    n_split = split_size(dataset, cfg.split)
    n = min(n_split, cfg.limit) if cfg.limit is not None else n_split
    sae_prov, sae_width = _sae_for_plan(cfg, info, registry)
    fp = dataset.provenance["dataset_fingerprint"]
    where = f"{info.name} L{','.join(map(str, cfg.layers))} {cfg.site}"
    if cfg.sae:
        where += f" + SAE {sae_prov['sae'] if sae_prov else cfg.sae}"
    step = Step("extract", "", model=cfg.model, layers=list(cfg.layers))
    match = dict(model=cfg.model, site=cfg.site, dataset_fingerprint=fp, split=cfg.split, limit=cfg.limit,
                 max_length=cfg.max_length, shard_size=cfg.shard_size, sae=sae_prov, dtype=cfg.dtype)
    for art in reversed(registry.find("activations", **match)):
        if set(cfg.layers) <= set(art.provenance["layers"]):
            step.action, step.artifact = "reuse", art.id
            step.text = f"reuse {art.id} ({where}, {n:,} {cfg.split} sentences)"
            return step, 0
    if for_fit and (longer := stored_prefix(cfg, registry)) is not None:
        step.action, step.artifact = "reuse", longer.id
        step.text = f"reuse the first {n:,} of {longer.id} ({where}, {int(longer.provenance['n']):,} {cfg.split} sentences)"
        return step, 0
    done, partial = _partial_done(registry, cfg, n)
    left = n - done
    sae_shape = (info.width(cfg.site), sae_width or 4096) if cfg.sae else None
    step.seconds, step.basis = extract_seconds(registry, info, left, max(cfg.layers), cfg.device, dataset, sae_shape,
                                               cfg.max_length, cfg.dtype)
    step.sentences = left
    if partial:
        step.action, step.artifact = "resume", partial
        step.text = f"resume {partial} ({done:,} of {n:,} done): {left:,} {cfg.split} sentences through {where}"
    else:
        step.text = f"{n:,} {cfg.split} sentences through {where}"
    step.text += f" (~{fmt_seconds(step.seconds)}, {step.basis})"
    if cfg.sae:
        per_row = 12 * min(sae_width or MAX_POOLED_CODES, MAX_POOLED_CODES)
    else:
        per_row = 4 * info.width(cfg.site) * len(cfg.layers)
    return step, left * (per_row + 12)


def plan_extract(cfg: ExtractConfig, registry: Registry | None = None) -> Plan:
    """Check every input of ``atlas extract`` and say what it will do."""
    registry = registry or Registry()
    step, disk = extract_step(cfg, registry)
    check_disk(registry.root, disk)
    return Plan("extract", [step], disk)
