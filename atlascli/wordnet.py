"""What WordNet knows about the synsets behind WordNet-gloss sentences of the default corpus.

Read with nltk's ``WordNetCorpusReader`` over the Debian ``wordnet-base`` files that ``make`` unpacks
(no download). Debian ships no ``lexnames`` file, so the reader gets WordNet 3.0's fixed list of 45
lexicographer files (lexnames(5WN)) from here.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object noun.person "
    "noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession verb.social "
    "verb.stative verb.weather adj.ppl"
).split()
"""WordNet 3.0 lexicographer file names, by number."""


def _lexnames_text() -> str:
    cat = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
    return "".join(f"{i:02d}\t{name}\t{cat[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def wordnet_folder() -> Path | None:
    """The folder holding WordNet 3.0's ``data.noun`` etc. (``$ATLAS_CORPUS_SRC`` first), or None."""
    from atlascli.corpus import corpus_source_dirs

    for root in corpus_source_dirs():
        folder = root / "usr/share/wordnet"
        if (folder / "data.noun").exists() and (folder / "index.noun").exists():
            return folder
    return None


@lru_cache(maxsize=1)
def wordnet_reader() -> Any | None:
    """An nltk ``WordNetCorpusReader`` over the Debian files, or None when they (or nltk) are missing."""
    folder = wordnet_folder()
    if folder is None:
        return None
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        return None
    if str(folder) not in nltk.data.path:  # nltk >= 3.9 only reads from registered roots
        nltk.data.path.append(str(folder))

    root: Path = folder

    class _Reader(WordNetCorpusReader):  # type: ignore[misc]
        def open(self, fileid: str) -> Any:
            if fileid == "lexnames" and not (root / "lexnames").exists():
                return io.StringIO(_lexnames_text())
            return super().open(fileid)

        def map_wn(self, version: str = "wordnet") -> None:  # these files are WordNet 3.0 itself: nothing to map
            return None

    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "multilingual functions are not available": we need none
            return _Reader(str(folder), None)
    except (OSError, ValueError, PermissionError):
        return None


@dataclass(frozen=True)
class SynsetFacts:
    """What a group of synsets has in common."""

    lexname: str | None
    """The lexicographer file most of them share (``noun.food``), when a majority does."""
    hypernym: str | None
    """The first lemma of the most specific hypernym that covers most of them (``canine``)."""
    lemmas: list[str]
    """Their most frequent lemmas."""
    n: int
    """How many synsets were looked up."""


def synset_keys(sources: list[str | None]) -> list[str]:
    """``wordnet:n.02084071:gloss`` -> ``n.02084071`` (others skipped)."""
    out = []
    for src in sources:
        if src and src.startswith("wordnet:"):
            out.append(src.split(":")[1])
    return out


def shared_facts(keys: list[str], majority: float = 0.5) -> SynsetFacts | None:
    """Lexicographer file, shared hypernym and lemmas of synsets given as ``pos.offset`` keys."""
    reader = wordnet_reader()
    if reader is None or not keys:
        return None
    synsets = []
    for key in keys:
        pos, _, offset = key.partition(".")
        try:
            synsets.append(reader.synset_from_pos_and_offset(pos, int(offset)))
        except Exception:  # noqa: BLE001 - a key nltk cannot read is simply skipped
            continue
    if not synsets:
        return None
    n = len(synsets)
    lex, lex_n = Counter(s.lexname() for s in synsets).most_common(1)[0]
    ancestors: Counter[Any] = Counter()
    for s in synsets:
        ancestors.update({h for path in s.hypernym_paths() for h in path[:-1]} | {s})
    covering = [(h.min_depth(), c, h) for h, c in ancestors.items() if c >= max(2, majority * n)]
    hypernym = None
    if covering and n >= 2:
        _, _, best = max(covering, key=lambda t: (t[0], t[1], t[2].name()))  # deterministic on ties
        if best.min_depth() >= 6:  # 'entity', 'organism', 'artifact', 'person' say little
            hypernym = best.lemma_names()[0].replace("_", " ")
    lemmas = [w for w, _ in Counter(s.lemma_names()[0].replace("_", " ") for s in synsets).most_common(3)]
    informative = lex_n >= majority * n and lex not in UNINFORMATIVE_LEXNAMES
    return SynsetFacts(lex if informative else None, hypernym, lemmas, n)


UNINFORMATIVE_LEXNAMES = frozenset({"adj.all", "adj.pert", "adv.all", "adj.ppl", "noun.Tops"})
"""Lexicographer files that name a part of speech rather than a topic."""
