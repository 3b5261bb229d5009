"""Corpus preparation (paper appendix A.2) and the embedded default corpus.

Pipeline: sentence splitting -> drop the bottom and top 5% by length -> drop sentences made only
of digits / special characters -> exact de-duplication -> seeded train/test split. The result is
a ``dataset`` artifact (``train.json``, ``test.json``) whose content fingerprint is recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from atlascli.errors import InputError, NotFoundError
from atlascli.registry import Artifact, Registry
from atlascli.registry.files import atomic_write_json, read_json

SPLITTER_VERSION = "atlas-regex-v1"
_ABBREV = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf", "fig",
    "no", "vol", "inc", "ltd", "co", "mt", "gen", "col", "lt", "sgt", "u.s", "approx", "ca", "al",
}
_BOUNDARY = re.compile(r"([.!?]+[\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")
_ONLY_SPECIAL = re.compile(r"^[\W\d_]+$")

ProgressFn = Callable[[str, int, int | None], None]
"""Progress callback: (stage, done, total or None)."""


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences with a deterministic, dependency-free rule set.

    Splits after ``.``, ``!`` or ``?`` (plus closing quotes/brackets) followed by whitespace and an
    upper-case letter or digit, except after common abbreviations and single initials.
    """
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return []
    out: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.end(1)
        prev = text[start:match.start(1)].rsplit(" ", 1)[-1].lower().rstrip(".")
        if match.group(1).startswith(".") and (prev in _ABBREV or (len(prev) == 1 and prev.isalpha())):
            continue
        piece = text[start:end].strip()
        if piece:
            out.append(piece)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


# ----------------------------------------------------------------------------- sources


Sourced = tuple[str, str]
"""A sentence and where it comes from: ``wordnet:n.02084071:gloss``, ``wordnet:n.02084071:example``,
``fortunes``, ``pydoc``, ``file:NAME`` or ``hub:ID``."""

_MOJIBAKE = re.compile("[\u00c2\u00c3][\u0080-\u00bf]")


def repair_mojibake(text: str) -> tuple[str, bool]:
    """Undo UTF-8 text that was decoded as Latin-1 (once or several times): ``doesnÃ¢Â\x80Â\x99t`` -> ``doesn’t``,
    ``Â£5`` -> ``£5``. Returns the text and whether it changed; text that is not such mojibake is left alone."""
    if not _MOJIBAKE.search(text):
        return text, False
    out = text
    for _ in range(4):
        try:
            fixed = out.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            break
        if fixed == out:
            break
        out = fixed
        if not _MOJIBAKE.search(out):
            break
    return out, out != text


def _wordnet_sentences(folder: Path) -> Iterator[Sourced]:
    """Glosses and example sentences of WordNet 3.0 (Debian ``wordnet-base``), each with its synset
    (``wordnet:<pos>.<offset>:gloss|example``)."""
    templates = {"noun": "{w} is {d}.", "verb": "To {w} is to {d}.", "adj": "{W} means {d}.", "adv": "{W} means {d}."}
    for pos in ("noun", "verb", "adj", "adv"):
        path = folder / f"data.{pos}"
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  ") or " | " not in line:
                    continue
                head, gloss = line.rstrip("\n").split(" | ", 1)
                parts = head.split()
                synset = f"{parts[2]}.{parts[0]}"
                word = parts[4].replace("_", " ")
                examples = re.findall(r'"([^"]{3,})"', gloss)
                definition = re.split(r';\s*"', gloss, maxsplit=1)[0].strip().rstrip(";").strip()
                if definition:
                    cap = word[:1].upper() + word[1:]
                    yield templates[pos].format(w=cap if pos == "noun" else word, W=cap, d=definition), \
                        f"wordnet:{synset}:gloss"
                for ex in examples:
                    ex = ex.strip()
                    yield ex[:1].upper() + ex[1:] + ("" if ex[-1:] in ".!?" else "."), f"wordnet:{synset}:example"


class _FortuneSource:
    """Sentences of the classic Unix fortune cookie files (Debian ``fortunes``), mojibake repaired."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.repaired = 0
        """Cookies whose text was repaired (double-encoded UTF-8)."""

    def __iter__(self) -> Iterator[Sourced]:
        for path in sorted(self.folder.iterdir()):
            if path.suffix in {".dat", ".u8"} or path.is_dir() or path.is_symlink():
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for item in re.split(r"^%\s*$", text, flags=re.M):
                lines = [ln for ln in item.splitlines() if not ln.strip().startswith("--")]
                joined, fixed = repair_mojibake(" ".join(lines))
                self.repaired += fixed
                for s in split_sentences(joined):
                    yield s, "fortunes"


def _pydoc_sentences() -> Iterator[Sourced]:
    """Prose of Python's own help topics (always present, small)."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if para.startswith("   "):  # code block
                continue
            for s in split_sentences(para):
                yield s, "pydoc"


def _tagged(sentences: Iterable[str], source: str) -> Iterator[Sourced]:
    for s in sentences:
        yield s, source


def corpus_source_dirs() -> list[Path]:
    """Roots searched for the Debian corpus sources: ``$ATLAS_CORPUS_SRC``, the checkout's ``.cache/corpus-src``
    (where ``make`` unpacks them; found from any folder inside the checkout), then ``/``."""
    roots = [Path(p) for p in os.environ.get("ATLAS_CORPUS_SRC", "").split(os.pathsep) if p]
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".cache" / "corpus-src" / ".done").exists():
            roots.append(folder / ".cache" / "corpus-src")
            break
    return [*roots, Path("/")]


def default_corpus() -> tuple[list[tuple[str, Iterable[Sourced]]], list[str]]:
    """The embedded default corpus sources as (name, sentences) and any warnings.

    Uses WordNet glosses/examples and fortunes, looked up under ``$ATLAS_CORPUS_SRC`` (where
    ``make`` unpacks the Debian packages, no root needed) or the system. Without them it falls
    back to Python's help topics, which pip alone provides, and warns that the corpus is small.
    """
    sources: list[tuple[str, Iterable[Sourced]]] = []
    warnings: list[str] = []
    for root in corpus_source_dirs():
        wn = root / "usr/share/wordnet"
        if not any(n == "wordnet" for n, _ in sources) and (wn / "data.noun").exists():
            sources.append(("wordnet", _wordnet_sentences(wn)))
        fo = root / "usr/share/games/fortunes"
        if not any(n == "fortunes" for n, _ in sources) and fo.is_dir():
            sources.append(("fortunes", _FortuneSource(fo)))
    if len(sources) < 2:
        warnings.append(
            "Debian packages wordnet-base/fortunes not found: the default corpus falls back to "
            "Python's help topics and is small (run `make corpus-src` or `apt-get install wordnet-base fortunes`)"
        )
        sources.append(("pydoc", _pydoc_sentences()))
    return sources, warnings


def _file_sentences(path: Path, text_field: str) -> Iterator[str]:
    if not path.exists():
        raise NotFoundError(f"dataset file {path} does not exist", "check the path")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{path}:{n} is not valid JSON", "one JSON object per line") from exc
                    text = rec.get(text_field) if isinstance(rec, dict) else rec
                    if isinstance(text, str):
                        yield from split_sentences(text)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=[text_field])
        for text in table.column(text_field).to_pylist():
            if isinstance(text, str):
                yield from split_sentences(text)
    elif suffix in {".txt", ".md", ""}:
        text = path.read_text(encoding="utf-8", errors="replace")
        for para in re.split(r"\n\s*\n", text):
            yield from split_sentences(para)
    else:
        raise InputError(f"unsupported dataset file type {suffix!r} ({path})", "use .txt, .jsonl or .parquet")


def _hub_sentences(dataset_id: str, split: str, text_field: str, limit: int | None) -> Iterator[str]:
    """Sentences from a Hugging Face dataset (online path), streamed."""
    from atlascli.registry.hub import load_hub_dataset

    for n, rec in enumerate(load_hub_dataset(dataset_id, split)):
        if limit is not None and n >= limit:
            break
        text = rec.get(text_field)
        if isinstance(text, str):
            yield from split_sentences(text)


# ----------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class CorpusConfig:
    """How to build a dataset artifact."""

    name: str = "default"
    """Registry name of the dataset (``default`` is the embedded corpus)."""
    inputs: tuple[str, ...] = ()
    """Local .txt/.jsonl/.parquet files or Hugging Face dataset ids; empty = embedded default."""
    text_field: str = "text"
    """Field holding the text in .jsonl/.parquet/hub records."""
    hub_split: str = "train"
    """Split of a Hugging Face dataset to read."""
    hub_limit: int | None = 200_000
    """At most this many hub records are read (the online corpora are huge)."""
    low_pct: float = 5.0
    """Sentences shorter than this length percentile are dropped."""
    high_pct: float = 95.0
    """Sentences longer than this length percentile are dropped."""
    test_fraction: float = 0.5
    """Fraction of sentences in the test split (the paper uses 50/50)."""
    seed: int = 0
    """Seed of the train/test shuffle."""
    max_sentences: int | None = None
    """Keep only this many sentences after shuffling (for quick runs)."""


@dataclass(frozen=True)
class CorpusStats:
    """Counts at each stage of the pipeline."""

    raw: int
    """Sentences after splitting."""
    after_length: int
    """After the length-percentile filter."""
    after_special: int
    """After dropping digit/special-only sentences."""
    after_dedup: int
    """After exact de-duplication."""
    per_source: dict[str, int] = field(default_factory=dict)
    """Raw sentences per source."""


def filter_indices(sentences: list[str], low_pct: float, high_pct: float) -> tuple[list[int], CorpusStats]:
    """Apply the A.2 filters in the paper's order; returns the kept positions and stage counts
    (sentences are compared stripped; de-duplication keeps the first occurrence)."""
    stripped = [s.strip() for s in sentences]
    idx = [i for i, s in enumerate(stripped) if s]
    raw = len(idx)
    if not idx:
        return [], CorpusStats(0, 0, 0, 0)
    lengths = np.fromiter((len(stripped[i]) for i in idx), dtype=np.int64, count=raw)
    lo, hi = np.percentile(lengths, [low_pct, high_pct])
    idx = [i for i, n in zip(idx, lengths) if lo <= n <= hi]
    after_length = len(idx)
    idx = [i for i in idx if not _ONLY_SPECIAL.match(stripped[i])]
    after_special = len(idx)
    first: dict[str, int] = {}
    for i in idx:
        first.setdefault(stripped[i], i)
    idx = list(first.values())
    return idx, CorpusStats(raw, after_length, after_special, len(idx))


def filter_sentences(sentences: list[str], low_pct: float, high_pct: float) -> tuple[list[str], CorpusStats]:
    """Apply the A.2 filters in the paper's order; returns kept sentences and stage counts."""
    idx, stats = filter_indices(sentences, low_pct, high_pct)
    return [sentences[i].strip() for i in idx], stats


def fingerprint(train: list[str], test: list[str]) -> str:
    """Content fingerprint of a prepared dataset: sha256 over both splits, order included."""
    digest = hashlib.sha256()
    for name, part in (("train", train), ("test", test)):
        digest.update(f"[{name}:{len(part)}]\n".encode())
        for s in part:
            digest.update(s.encode("utf-8") + b"\n")
    return digest.hexdigest()


def prepare_corpus(config: CorpusConfig, registry: Registry | None = None,
                   progress: ProgressFn | None = None) -> tuple[Artifact, list[str]]:
    """Build (or reuse, when the fingerprint matches) a dataset artifact; returns it and warnings."""
    registry = registry or Registry()
    warnings: list[str] = []
    if config.inputs:
        sources: list[tuple[str, Iterable[Sourced]]] = []
        for item in config.inputs:
            path = Path(item).expanduser()
            if path.exists() or path.suffix in {".txt", ".jsonl", ".parquet"} or item.startswith((".", "/")):
                sources.append((str(path), _tagged(_file_sentences(path, config.text_field), f"file:{path.name}")))
            else:
                sources.append((item, _tagged(_hub_sentences(item, config.hub_split, config.text_field,
                                                             config.hub_limit), f"hub:{item}")))
    else:
        sources, warnings = default_corpus()
    sentences: list[str] = []
    tags: list[str] = []
    per_source: dict[str, int] = {}
    for name, it in sources:
        before = len(sentences)
        for text, tag in it:
            sentences.append(text)
            tags.append(tag)
            if progress and len(sentences) % 20000 == 0:
                progress("reading", len(sentences), None)
        per_source[name] = len(sentences) - before
    repaired = sum(int(getattr(it, "repaired", 0)) for _, it in sources)
    idx, stats = filter_indices(sentences, config.low_pct, config.high_pct)
    stats = CorpusStats(stats.raw, stats.after_length, stats.after_special, stats.after_dedup, per_source)
    if not idx:
        raise InputError("the dataset is empty after filtering", "give files with English prose (.txt/.jsonl/.parquet)")
    order = np.random.default_rng(config.seed).permutation(len(idx))
    shuffled = [sentences[idx[i]].strip() for i in order]
    shuffled_tags = [tags[idx[i]] for i in order]
    if config.max_sentences is not None:
        shuffled = shuffled[: config.max_sentences]
        shuffled_tags = shuffled_tags[: config.max_sentences]
    n_test = int(round(len(shuffled) * config.test_fraction))
    if len(shuffled) >= 2:
        n_test = min(max(n_test, 1), len(shuffled) - 1)
    test, train = shuffled[:n_test], shuffled[n_test:]
    test_tags, train_tags = shuffled_tags[:n_test], shuffled_tags[n_test:]
    fp = fingerprint(train, test)
    art_id = f"dataset-{config.name}-{fp[:12]}"
    if registry.exists(art_id, "dataset"):
        return registry.get(art_id, "dataset"), warnings
    stage = registry.stage("dataset", art_id)
    atomic_write_json(stage.path / "train.json", train)
    atomic_write_json(stage.path / "test.json", test)
    atomic_write_json(stage.path / "train_sources.json", train_tags)
    atomic_write_json(stage.path / "test_sources.json", test_tags)
    provenance = {
        "name": config.name,
        "dataset_fingerprint": fp,
        "sources": sorted(per_source),
        "config": asdict(config),
        "splitter": SPLITTER_VERSION,
        "seed": config.seed,
        "n_train": len(train),
        "n_test": len(test),
    }
    meta = {"stats": asdict(stats), "warnings": warnings, "mojibake_repaired": repaired,
            "mean_chars": float(np.mean([len(s) for s in shuffled]))}
    return stage.commit(provenance, meta), warnings


def load_sources(dataset: Artifact, split: str) -> list[str] | None:
    """Where each sentence of a split comes from (see :data:`Sourced`), or None for datasets
    prepared before sources were recorded."""
    name = f"{split}_sources.json"
    if name not in dataset.manifest["files"]:
        return None
    dataset.verify([name])
    return list(read_json(dataset.file(name)))


def resolve_dataset(ref: str, registry: Registry | None = None) -> Artifact:
    """A dataset artifact by id/prefix or by name (latest of that name)."""
    registry = registry or Registry()
    named = registry.latest("dataset", name=ref)
    if named is not None:
        return named
    try:
        return registry.get(ref, "dataset")
    except NotFoundError:
        raise NotFoundError(
            f"no dataset named {ref!r}",
            "prepare one with `atlas data prepare` (embedded default) or `atlas data prepare FILES --name NAME`",
        ) from None


def load_split(dataset: Artifact, split: str) -> list[str]:
    """The sentences of one split (``train`` or ``test``), checksum-verified."""
    if split not in {"train", "test"}:
        raise InputError(f"unknown split {split!r}", "use train or test")
    dataset.verify([f"{split}.json"])
    data = read_json(dataset.file(f"{split}.json"))
    if not data:
        raise InputError(f"split {split!r} of dataset {dataset.id} is empty", "prepare a larger dataset")
    return list(data)
