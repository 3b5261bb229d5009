"""examples/: the offline ones run on tiny data; the online one's commands parse (every option it uses exists)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from atlascli.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_paper_llama_commands_parse(capsys):
    lines = [ln.strip() for ln in (EXAMPLES / "paper_llama.sh").read_text().splitlines()]
    commands = [ln for ln in lines if ln.startswith(("$atlas ", "[ \"${DRY:-0}\" = 1 ] || $atlas"))]
    assert len(commands) >= 5
    for line in commands:
        rest = line.split("$atlas", 1)[1].split()
        sub = [w for w in rest[:2] if re.fullmatch(r"[a-z][a-z-]*", w)]
        sub = sub[:2] if sub[:1] in (["atlas"], ["data"]) else sub[:1]
        assert main([*sub, "--help"]) == 0, sub
        help_text = capsys.readouterr().out
        start = lines.index(line)
        block = line
        while block.endswith("\\"):  # continuation lines
            start += 1
            block = block[:-1] + " " + lines[start]
        for opt in re.findall(r"(--[a-z][a-z-]+)", block.split("#")[0]):
            assert opt in help_text, f"atlas {' '.join(sub)} has no option {opt}"
        if '"${dry[@]}"' in block:
            assert "--dry-run" in help_text, f"atlas {' '.join(sub)} has no --dry-run"


def test_own_corpus_script_on_tiny_models(tiny_models, tmp_path):
    text = tmp_path / "mine.txt"
    words = ["dog", "cat", "London", "cars", "bread", "music", "science", "night", "city", "roads"]
    text.write_text("\n\n".join(f"The {words[i % 10]} and the {words[(i * 3 + 1) % 10]} met a {words[(i * 7 + 2) % 10]} "
                                f"today number {i}." for i in range(400)))
    env = {**os.environ, "ATLAS_OWN_FOUNDATION": str(tiny_models["gpt2"]), "ATLAS_OWN_ATLAS_LAYER": "1",
           "ATLAS_OWN_SUBJECT": str(tiny_models["llama"]), "ATLAS_OWN_LAYER": "2", "ATLAS_OWN_WIDTH": "64",
           "ATLAS_OWN_K": "4", "ATLAS_OWN_SENTENCES": "150", "ATLAS_OWN_QUERY": "dog",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "COLUMNS": "400"}
    proc = subprocess.run(["bash", str(EXAMPLES / "own_corpus.sh"), str(text), "mine"], capture_output=True, text=True,
                          env={**env, "ATLAS": f"{sys.executable} -m atlascli"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    flat = " ".join(proc.stdout.split())  # table titles wrap at the terminal width
    assert re.search(r"top features by\s*s", flat) or "top features" in flat, proc.stdout[-1500:]


def test_quickstart_on_tiny_models(aligned, tiny_models):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py"), "--subject", str(tiny_models["llama"]),
                           "--layer", "2", "--concept", "dog", "--steer", "dog", "--max-new-tokens", "4"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "subject feature" in proc.stdout and "steered toward 'dog'" in proc.stdout
