"""Multi-process runs on torch.distributed, launched by ``torchrun`` or ``accelerate launch``.

The launcher describes the run in environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); :func:`world` reads them and, in a run of more
than one process, joins the process group once (gloo on CPU, NCCL on CUDA, each rank on GPU ``LOCAL_RANK``).
Without them everything is one process and nothing here touches torch.distributed.

The helpers are what the library needs and no more: :func:`barrier`, :func:`all_reduce_sum_f64`,
:func:`broadcast_object`, :func:`all_gather_object`, :func:`check_agreement` (every rank runs the same job)
and :func:`on_main` (rank 0 does a step alone, e.g. holds an artifact's lock and commits it; the others get
its result, or its error as :class:`~atlascli.errors.PeerError`, so that only rank 0 prints it).
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from atlascli.errors import AtlasError, InputError, PeerError

T = TypeVar("T")

LAUNCH_HINT = "launch with `torchrun --nproc-per-node N -m atlascli ...` or `accelerate launch -m atlascli ...`"
TIMEOUT_ENV = "ATLAS_DIST_TIMEOUT"
"""Seconds a rank waits in a collective (e.g. for rank 0 to commit) before giving up; default 3 hours."""


@dataclass(frozen=True)
class World:
    """Where this process sits in a (possibly one-process) run."""

    rank: int
    """Global rank, 0..size-1 (0 in a one-process run)."""
    size: int
    """Number of processes (1 without a launcher)."""
    local_rank: int
    """Rank on this node (the GPU index a CUDA rank uses)."""
    local_size: int
    """Processes on this node."""
    backend: str | None
    """``gloo`` or ``nccl`` once the process group is joined; None in a one-process run."""

    @property
    def main(self) -> bool:
        """Whether this is rank 0 (the rank that takes locks, commits and prints)."""
        return self.rank == 0


SINGLE = World(0, 1, 0, 1, None)
"""A run without a launcher."""

_WORLD: World | None = None
_JOINED = False
"""Whether this process joined a process group (then :func:`finish` ends it without the interpreter's teardown)."""


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{name}={value!r} is not an integer", LAUNCH_HINT) from None


def launch_env(env: Mapping[str, str] | None = None) -> World:
    """The run described by the launcher's environment variables (nothing is joined); one clear error when
    they are incomplete or inconsistent."""
    env = os.environ if env is None else env
    size, rank = _int(env, "WORLD_SIZE"), _int(env, "RANK")
    if size is None:
        if rank not in (None, 0):
            raise InputError(f"RANK={rank} is set but WORLD_SIZE is not", LAUNCH_HINT)
        return SINGLE
    if size < 1:
        raise InputError(f"WORLD_SIZE must be at least 1, got {size}", LAUNCH_HINT)
    if size == 1:
        return SINGLE
    if rank is None:
        raise InputError(f"WORLD_SIZE={size} is set but RANK is not", LAUNCH_HINT)
    if not 0 <= rank < size:
        raise InputError(f"RANK={rank} is out of range for WORLD_SIZE={size}", LAUNCH_HINT)
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name, "").strip()]
    if missing:
        raise InputError(f"WORLD_SIZE={size} is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                         "not (no rendezvous to join)", LAUNCH_HINT)
    local_rank = _int(env, "LOCAL_RANK")
    local_size = _int(env, "LOCAL_WORLD_SIZE")
    return World(rank, size, rank if local_rank is None else local_rank,
                 size if local_size is None else local_size, None)


def _wants_cuda(device: str) -> bool:
    import torch

    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def world(device: str = "cpu") -> World:
    """This process's place in the run, joining the process group on the first call of a multi-process run
    (NCCL when ``device`` is CUDA, else gloo). A group someone else initialised (accelerate, user code) is used
    as it is."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        local = launch_env() if os.environ.get("WORLD_SIZE") else SINGLE
        _WORLD = World(dist.get_rank(), dist.get_world_size(), local.local_rank, local.local_size,
                       str(dist.get_backend()))
        return _WORLD
    found = launch_env()
    if found.size == 1:  # not cached: nothing was joined
        return found
    if not dist.is_available():
        raise InputError("this torch build has no torch.distributed", "install a standard torch wheel")
    import torch

    backend = "gloo"
    if _wants_cuda(device):
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but no CUDA GPU is available", "use --device cpu or auto")
        torch.cuda.set_device(found.local_rank % torch.cuda.device_count())
        backend = "nccl"
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 3 * 3600)))
    dist.init_process_group(backend=backend, init_method="env://", rank=found.rank, world_size=found.size,
                            timeout=timeout)
    atexit.register(_leave)
    global _JOINED
    _JOINED = True
    _WORLD = World(found.rank, found.size, found.local_rank, found.local_size, backend)
    return _WORLD


def _leave(together: bool = False) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if together and dist.get_backend() == "gloo":
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - a peer that failed has left already and says why itself; this rank's
            pass  # work is done, so it leaves too
    dist.destroy_process_group()


def reset(together: bool = False) -> None:
    """Forget the cached world and leave the process group (tests; a library user ending a run).

    ``together``: first wait at a barrier for every rank to get here, as a run that ended well should. A gloo rank
    that tore its group down while a peer still worked (rank 0 committing) aborted at interpreter exit now and then
    (std::terminate after finalisation: 4 two-rank fits in 34 here, none in 64 with the barrier). Not after an
    error: a rank that failed may be out of step with its peers' collectives, so it leaves alone (the atexit
    fallback does too)."""
    global _WORLD
    _WORLD = None
    _leave(together)


def finish(code: int = 0) -> None:
    """End a multi-process run's process: leave together (:func:`reset`), flush, and exit with ``code`` at once,
    without the interpreter's teardown. That teardown is where a gloo rank could still abort after its work was done
    and the group left (std::terminate, "terminate called without an active exception", exit status -6): twice more
    in two-rank tests after the barrier of :func:`reset` (one full `make test` run alone, one under CPU contention).
    Every artifact is committed by then (atomic renames), so nothing of the run's is lost. Returns (does nothing) in
    a process that never joined a group, e.g. a one-process run or a test calling the CLI in-process."""
    if not _JOINED:
        return
    import logging
    import sys

    reset(together=True)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe: nothing left to say
            pass
    os._exit(code)


def barrier() -> None:
    """Wait for every rank (a no-op in a one-process run)."""
    if world().size > 1:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum_f64(tensor: Any) -> Any:
    """The element-wise sum over ranks of ``tensor`` (torch tensor or numpy array), computed in float64;
    returned as a float64 CPU tensor, or a numpy array for numpy input. One process: a float64 copy."""
    import numpy as np
    import torch

    was_numpy = isinstance(tensor, np.ndarray)
    t = torch.from_numpy(np.asarray(tensor, dtype=np.float64)) if was_numpy else tensor.detach().to(torch.float64)
    w = world()
    if w.size > 1:
        import torch.distributed as dist

        on = torch.device("cuda", torch.cuda.current_device()) if w.backend == "nccl" else torch.device("cpu")
        buf = t.to(on).contiguous()
        if buf.data_ptr() == t.data_ptr():
            buf = buf.clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        t = buf.cpu()
    elif not was_numpy:
        t = t.clone()
    return t.numpy() if was_numpy else t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank."""
    if world().size == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    w = world()
    if w.size == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def check_agreement(facts: Mapping[str, str], what: str = "the job") -> None:
    """Raise unless every rank passes the same ``facts`` (name -> value, e.g. config fields, dataset fingerprint):
    rank 0 raises one line naming the first rank and fact that differ, the others a quiet :class:`PeerError`."""
    w = world()
    if w.size == 1:
        return
    every = all_gather_object(dict(facts))
    for rank, theirs in enumerate(every[1:], start=1):
        for name in sorted(set(every[0]) | set(theirs)):
            mine, other = every[0].get(name), theirs.get(name)
            if mine != other:
                message = f"ranks disagree on {what}: rank {rank} has {name} {_short(other)}, rank 0 has {_short(mine)}"
                hint = "start every rank with the same command, registry and dataset"
                raise InputError(message, hint) if w.main else PeerError(message, hint)


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text[:80]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 alone and return its result on every rank (picklable); when it raises, rank 0 re-raises
    and the other ranks raise :class:`PeerError` with the same message."""
    w = world()
    if w.size == 1:
        return fn()
    outcome: tuple[str, Any, Any]
    error: BaseException | None = None
    if w.main:
        try:
            outcome = ("ok", fn(), None)
        except AtlasError as exc:
            outcome, error = ("error", exc.message, exc.hint), exc
        except Exception as exc:  # still tell the other ranks, then fail here with the traceback
            outcome, error = ("error", f"rank 0 failed: {exc.__class__.__name__}: {exc}", None), exc
    else:
        outcome = ("", None, None)
    outcome = broadcast_object(outcome)
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise PeerError(outcome[1], outcome[2])
    return outcome[1]  # type: ignore[no-any-return]


def raise_any(error: AtlasError | None) -> None:
    """After a step every rank ran on its own share: raise on every rank when any rank failed (rank 0 with the
    first failing rank's message, the others quietly)."""
    w = world()
    if w.size == 1:
        if error is not None:
            raise error
        return
    every = all_gather_object(None if error is None else (error.message, error.hint))
    failed = [(rank, e) for rank, e in enumerate(every) if e is not None]
    if not failed:
        return
    if w.main and error is not None:
        raise error
    rank, (message, hint) = failed[0]
    if w.main:
        raise AtlasError(f"rank {rank}: {message}", hint)
    raise PeerError(message, hint) from error
