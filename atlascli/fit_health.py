"""Alignment health check at `atlas fit` time: how much held-out atlas-code variance each translation explains,
against random translations of the same shape.

The last ~5% of the fit sentences are held out *inside the same streaming pass*: when the stream reaches them, every
method is solved on the rows seen so far (T_95; on a copy of the fitter when the boundary falls inside a batch), then
the held-out rows are scored and still added, batch by batch as before, so the stored translations are bit-for-bit
those of the plain pass. Each translated atlas direction s_f = T_hat[:, f] scores a
held-out sentence as in the evaluation (cosine with the centred activation); the score is the share of the probed atlas
features' code variance that a per-feature linear read-out of that score explains (variance-weighted mean R^2).
A translation near its random-T baseline means a wrong layer or site, or subject and atlas rows that do not match."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from atlascli.errors import AtlasError

HOLDOUT_FRACTION = 0.05
"""Share of the fit sentences held out (the last ones)."""
MIN_HOLDOUT = 256
"""At least this many (but never more than a fifth of the data)."""
MIN_SENTENCES = 40
"""No check below this many fit sentences."""
PROBE_FEATURES = 1024
"""Atlas features probed (sampled; all when the atlas is narrower)."""
RANDOM_DRAWS = 3
"""Random translations of the baseline."""
FLAG_RATIO = 2.0
"""Flag when the explained share is below ``FLAG_RATIO`` x the random one ..."""
FLAG_MARGIN = 0.01
"""... or below random + ``FLAG_MARGIN``."""


@dataclass(frozen=True)
class Health:
    """The check of one alignment."""

    explained: float
    """Held-out atlas-code variance explained through the translation (0..1)."""
    random: float
    """The same for random translations (mean over draws)."""
    random_std: float
    """Its spread over draws."""
    flagged: bool
    """True when the translation is near the random baseline."""
    holdout: int
    """Held-out sentences."""
    probe_features: int
    """Atlas features probed (with non-zero held-out variance)."""
    message: str
    """One line for humans."""


def holdout_size(n: int) -> int:
    """Sentences held out of ``n`` (0: too few for a check)."""
    if n < MIN_SENTENCES:
        return 0
    return max(int(round(HOLDOUT_FRACTION * n)), min(MIN_HOLDOUT, n // 5))


def explained_share(z: np.ndarray, c: np.ndarray) -> float:
    """Variance-weighted mean over columns of corr(z_j, c_j)^2 (columns of c without variance are ignored)."""
    zc, cc = z - z.mean(0), c - c.mean(0)
    vz, vc = (zc**2).sum(0), (cc**2).sum(0)
    ok = (vc > 0) & (vz > 0)
    if not ok.any():
        return 0.0
    r2 = (zc[:, ok] * cc[:, ok]).sum(0) ** 2 / (vz[ok] * vc[ok])
    return float((r2 * vc[ok]).sum() / vc.sum())


class HoldoutHealth:
    """Feeds a fitter shard by shard, holding out the last rows for the check (see the module doc)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.boundary = n - holdout_size(n)
        self.seed = seed
        self.seen = 0
        self._sum: torch.Tensor | None = None
        self._dirs: dict[str, torch.Tensor] = {}
        self._probe: np.ndarray | None = None
        self._names: list[str] = []
        self._stats: dict[str, Any] = {}
        self.skipped: str | None = None if self.boundary < n else f"fewer than {MIN_SENTENCES} fit sentences"

    def feed(self, fitter: Any, subject: Any, atlas: Any) -> None:
        """Add one whole paired batch to ``fitter`` (never split, so the stored fit is bit-for-bit that of the plain
        pass); rows past the boundary are first scored by T fitted on the rows before it."""
        m, start = subject.shape[0], self.seen
        if self.skipped is None and not self._dirs and start < self.boundary < start + m \
                and self.n - start <= max(self.n - self.boundary, self.n // 5):
            self.boundary = start  # hold out from this batch's start: whole batches, no copy of the fitter
        cut = min(max(self.boundary - start, 0), m)
        if cut:
            part = subject[:cut].double().sum(0)
            self._sum = part if self._sum is None else self._sum + part
        if cut < m and self.skipped is None:
            if not self._dirs:
                if cut == 0:
                    self._start(fitter, atlas.shape[1])
                else:  # the boundary falls inside a large batch: solve on a copy that holds the rows before it
                    head = copy.deepcopy(fitter).update(subject[:cut], atlas[:cut])
                    self._start(head, atlas.shape[1])
                    del head
            if self.skipped is None:
                self._score(subject[cut:], atlas[cut:])
        fitter.update(subject, atlas)
        self.seen += m

    def resume(self, seen: int, head_sum: torch.Tensor | None) -> None:
        """Go on from row ``seen`` (at or before the boundary) of a stream whose first rows were fed to the fitter
        elsewhere, e.g. by the ranks of a distributed fit; ``head_sum`` is the float64 sum of their subject rows."""
        if seen > self.boundary:
            raise ValueError(f"cannot resume at row {seen}: past the held-out boundary {self.boundary}")
        self.seen, self._sum = seen, head_sum

    def _start(self, fitter: Any, dc: int) -> None:
        try:
            translations = fitter.results()
        except AtlasError as exc:  # e.g. a subject feature still all zero before the held-out rows
            self.skipped = f"cannot solve on the first {self.boundary} sentences ({exc.message})"
            return
        rng = np.random.default_rng(self.seed)
        self._probe = np.sort(rng.choice(dc, size=min(PROBE_FEATURES, dc), replace=False))
        cols = torch.from_numpy(self._probe)
        ds = next(iter(translations.values())).T.shape[0]
        for method, tr in translations.items():
            T = tr.T.double()
            self._dirs[method] = (T[:, cols] / T.norm(dim=1, keepdim=True).clamp_min(1e-30)).float()
        gen = torch.Generator().manual_seed(self.seed + 1)
        for d in range(RANDOM_DRAWS):
            self._dirs[f"random:{d}"] = torch.randn(ds, len(cols), generator=gen)

    def _score(self, subject: torch.Tensor, atlas: Any) -> None:
        """Streaming moments of (score, code) per probed feature and direction set (memory: O(probe x sets))."""
        assert self._sum is not None and self._probe is not None
        x = torch.nn.functional.normalize(subject.double() - self._sum / self.boundary, dim=1).float()
        c = atlas[:, self._probe]
        c = np.asarray(c.toarray() if hasattr(c, "toarray") else c, dtype=np.float64)
        if not self._names:
            self._names = list(self._dirs)
            P = len(self._probe)
            self._stats = {"n": 0, "c": np.zeros(P), "cc": np.zeros(P), "z": np.zeros((len(self._names), P)),
                           "zz": np.zeros((len(self._names), P)), "zc": np.zeros((len(self._names), P))}
        st = self._stats
        st["n"] += c.shape[0]
        st["c"] += c.sum(0)
        st["cc"] += (c * c).sum(0)
        for i, name in enumerate(self._names):
            z = (x @ self._dirs[name]).double().numpy()
            st["z"][i] += z.sum(0)
            st["zz"][i] += (z * z).sum(0)
            st["zc"][i] += (z * c).sum(0)

    def report(self) -> dict[str, Health] | str:
        """Method -> :class:`Health`, or why the check was skipped."""
        if self.skipped is not None or not self._stats:
            return self.skipped or "no held-out rows"
        st = self._stats
        n = st["n"]
        vc = st["cc"] - st["c"] ** 2 / n
        shares = {}
        for i, name in enumerate(self._names):
            vz = st["zz"][i] - st["z"][i] ** 2 / n
            cov = st["zc"][i] - st["z"][i] * st["c"] / n
            live = vc > 1e-12 * max(float(vc.max()), 1e-300)
            ok = live & (vz > 1e-12 * max(float(vz.max()), 1e-300))
            r2 = np.where(ok, cov**2 / np.where(ok, vz * vc, 1.0), 0.0)
            shares[name] = float((r2 * np.where(ok, vc, 0.0)).sum() / vc[live].sum()) if ok.any() else 0.0
        rand = np.array([v for k, v in shares.items() if k.startswith("random:")])
        r_mean, r_std = float(rand.mean()), float(rand.std())
        probed = int((vc > 1e-12 * max(float(vc.max()), 1e-300)).sum())
        out: dict[str, Health] = {}
        for name, share in shares.items():
            if name.startswith("random:"):
                continue
            flagged = share < max(FLAG_RATIO * r_mean, r_mean + FLAG_MARGIN)
            msg = (f"explains {100 * share:.1f}% of held-out atlas-code variance vs {100 * r_mean:.1f}% for random "
                   f"translations ({n} held-out sentences, {probed} atlas features)")
            if flagged:
                msg += ": near random; wrong layer or hook point, or subject and atlas rows that do not match?"
            out[name] = Health(share, r_mean, r_std, flagged, n, probed, msg)
        return out


def health_meta(report: dict[str, Health] | str, method: str) -> dict[str, Any]:
    """What an alignment's metadata stores under ``health``."""
    if isinstance(report, str):
        return {"skipped": report}
    return asdict(report[method])
