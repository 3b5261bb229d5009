"""CLI latency: `atlas --help`, `atlas models`, `atlas registry ls`, `atlas concept ls` and a text search, each
as a fresh process (median of 5), against `python -c pass` in the same run. Targets: < 0.5 s for the first
four, <= 3 s for `atlas search "secrets"` and < 3 s for `atlas explain` (with peak tokens) on the demo registry
(skipped when the registry has no alignment).
Writes bench/results/cli.json."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ATLAS = [sys.executable, "-m", "atlascli"]


def timed(cmd: list[str], repeats: int = 5) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "100"})
        times.append(time.perf_counter() - t)
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"{cmd}: {proc.stderr[-500:]}")
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3)}


def main() -> None:
    base = timed([sys.executable, "-c", "pass"])
    rows = {"python -c pass (baseline)": base}
    for name, args in (("atlas --help", ["--help"]), ("atlas models", ["models"]),
                       ("atlas registry ls", ["registry", "ls"]), ("atlas concept ls", ["concept", "ls"])):
        rows[name] = timed(ATLAS + args)
        rows[name]["over_baseline_s"] = round(rows[name]["median_s"] - base["median_s"], 3)
        rows[name]["target_s"] = 0.5
        rows[name]["met"] = rows[name]["median_s"] < 0.5
    from atlascli.registry import Registry

    if Registry().list("alignment"):
        subprocess.run(ATLAS + ["search", "secrets", "--layer", "12"], capture_output=True, cwd=ROOT)  # warm caches
        r = timed(ATLAS + ["search", "secrets", "--layer", "12"], repeats=3)
        r.update(target_s=3.0, met=r["median_s"] <= 3.0, over_baseline_s=round(r["median_s"] - base["median_s"], 3))
        rows['atlas search "secrets" --layer 12 (warm)'] = r
        explain = ["explain", "--layer", "12", "--feature", "100"]  # peak tokens from kept positions + tokenizer
        subprocess.run(ATLAS + explain, capture_output=True, cwd=ROOT)
        r = timed(ATLAS + explain, repeats=3)
        r.update(target_s=3.0, met=r["median_s"] < 3.0, over_baseline_s=round(r["median_s"] - base["median_s"], 3))
        rows["atlas explain --layer 12 --feature 100 (warm)"] = r
    write("cli", {"baseline": "python -c pass", "commands": rows})


if __name__ == "__main__":
    main()
