"""Fitting one layer across the ranks of a torchrun / accelerate run (called by :func:`atlascli.fit.fit`).

Every statistic the methods need is a sum over sentences (Semantic Lens: a top-k, merged exactly), so each rank
feeds a disjoint share of the paired shards to its own fitter; the sums are then all_reduced in float64 and rank 0
alone runs the decomposition and commits the alignments. The held-out health check (:mod:`atlascli.fit_health`)
needs a translation solved on the rows before its boundary, so the ranks share the shards that lie wholly before
it, and rank 0 then streams the rest (the shard the boundary falls in and the held-out ~5%) in order, exactly as a
one-process fit does. The result equals the one-process fit up to the order of the float64 additions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from atlascli.distributed import World, all_gather_object, all_reduce_sum_f64, on_main, raise_any
from atlascli.errors import AtlasError, InputError
from atlascli.fit_health import Health, HoldoutHealth
from atlascli.registry import Artifact, Registry

if TYPE_CHECKING:
    from atlascli.activations import Activations
    from atlascli.translate import MultiFitter

ShardSpan = tuple[str, int, int]
"""(shard file name, first sentence, end sentence)."""


def shard_spans(subject: Activations, atlas: Activations) -> list[ShardSpan]:
    """The paired shards of two activations over the same sentences, with the sentences each covers."""
    sizes = {int(a.artifact.provenance["shard_size"]) for a in (subject, atlas)}
    if len(sizes) != 1 or subject.shard_names != atlas.shard_names:
        raise InputError("subject and atlas activations are cut into different shards",
                         "extract both with the same --shard-size")
    size, n = sizes.pop(), subject.n
    return [(name, k * size, min(n, (k + 1) * size)) for k, name in enumerate(subject.shard_names)]


def _only(acts: Activations, names: list[str]) -> Activations:
    """A reader of ``acts`` that streams only the shards ``names``."""
    part = copy.copy(acts)
    part.shard_names = list(names)
    return part


def feed_ranks(fitter: MultiFitter, subject: Activations, atlas: Activations, layer: int, atlas_layer: int,
               w: World, progress: Callable[[int, int], None] | None = None) -> Callable[[], dict[str, Health] | str]:
    """Feed this rank's share of the shards before the held-out boundary and sum the statistics of every rank into
    ``fitter``. Returns what rank 0 then calls (alone) to stream the rest and get the health report."""
    spans = shard_spans(subject, atlas)
    health = HoldoutHealth(subject.n)
    head = [s for s in spans if s[2] <= health.boundary]
    tail = spans[len(head):]
    mine = head[w.rank::w.size]
    ds, dc = subject.widths[layer], atlas.widths[atlas_layer]
    head_sum = torch.zeros(ds, dtype=torch.float64)
    total = sum(hi - lo for _, lo, hi in mine) + (sum(hi - lo for _, lo, hi in tail) if w.main else 0)
    done = 0
    error: AtlasError | None = None

    def pairs(part: list[ShardSpan]) -> Any:
        names = [name for name, _, _ in part]
        return zip(part, _only(subject, names).shards(layer), _only(atlas, names).shards(atlas_layer), strict=True)

    try:
        for (_, lo, hi), s_shard, c_shard in pairs(mine):
            _check_pair(s_shard.index, c_shard.index, lo, hi)
            fitter.update(s_shard.dense, c_shard.to_scipy() if atlas.sparse else c_shard.dense, start=lo)
            head_sum += s_shard.dense.double().sum(0)
            done += hi - lo
            if progress:
                progress(done, total)
    except AtlasError as exc:  # every rank learns it; rank 0 says it in one line
        error = exc
    raise_any(error)
    fitter.reduce(all_reduce_sum_f64, all_gather_object, ds, dc)
    head_sum = all_reduce_sum_f64(head_sum)

    def finish() -> dict[str, Health] | str:
        nonlocal done
        health.resume(head[-1][2] if head else 0, head_sum if head else None)
        for (_, lo, hi), s_shard, c_shard in pairs(tail):
            _check_pair(s_shard.index, c_shard.index, lo, hi)
            health.feed(fitter, s_shard.dense, c_shard.to_scipy() if atlas.sparse else c_shard.dense)
            done += hi - lo
            if progress:
                progress(done, total)
        return health.report()

    return finish


def _check_pair(s_index: torch.Tensor, c_index: torch.Tensor, lo: int, hi: int) -> None:
    expected = torch.arange(lo, hi, dtype=torch.int64)
    if not (torch.equal(s_index, expected) and torch.equal(c_index, expected)):
        raise InputError("subject and atlas shards hold different sentences", "extract both with the same --shard-size")


def fit_layer_ranks(w: World, registry: Registry, fitter: MultiFitter, subject: Activations, atlas: Activations,
                    layer: int, atlas_layer: int, fitted: Callable[[], list[Artifact] | None],
                    commit: Callable[[MultiFitter, dict[str, Health] | str], list[Artifact]],
                    progress: Callable[[int, int], None] | None = None) -> list[Artifact]:
    """One layer of a distributed fit; the alignments on every rank. ``fitted`` (the alignments already there, or
    None) and ``commit`` (solve and store) run on rank 0 only."""

    def existing() -> list[str] | None:
        found = fitted()
        return None if found is None else [a.id for a in found]

    ids = on_main(existing)
    if ids is None:
        finish = feed_ranks(fitter, subject, atlas, layer, atlas_layer, w, progress)
        ids = on_main(lambda: [a.id for a in commit(fitter, finish())])
    return [registry.get(i, "alignment") for i in ids]
