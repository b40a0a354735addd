"""What every retriever shares: its hits, and an index folder that records what built it.

An index folder holds ``index.json`` (the retriever's kind, the model that built it for a dense
index, the options), ``documents.jsonl`` (the corpus, as `read_corpus` reads it) and the retriever's
own files. `load_index(folder, model)` opens either kind; a dense index refuses a model other than
the one that built it (its vectors would mean nothing to another).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ponder.errors import InputError
from ponder.search.retrieval.corpus import Document, read_corpus, write_corpus

META = "index.json"
DOCUMENTS = "documents.jsonl"


@dataclass(frozen=True)
class Hit:
    """One retrieved document: its rank (0 first), its score (higher is closer) and the document."""

    rank: int
    score: float
    document: Document


def write_meta(folder: Path, documents: list[Document], meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_corpus(documents, folder / DOCUMENTS)
    (folder / META).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(folder: str | Path) -> tuple[Path, dict, list[Document]]:
    folder = Path(folder).expanduser()
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{str(folder)!r} is not a ponder retrieval index (no readable {META}): {err}") from None
    return folder, meta, read_corpus(folder / DOCUMENTS)


def load_index(folder: str | Path, model=None):
    """The retriever saved in `folder` (BM25, or dense with the `model` that built it)."""
    from ponder.search.retrieval.dense import DenseRetriever
    from ponder.search.retrieval.sparse import SparseRetriever

    _, meta, _ = read_meta(folder)
    kinds = {SparseRetriever.kind: SparseRetriever, DenseRetriever.kind: DenseRetriever}
    if meta.get("kind") not in kinds:
        raise InputError(f"index {str(folder)!r} is of unknown kind {meta.get('kind')!r}; known: {', '.join(kinds)}")
    return kinds[meta["kind"]].load(folder, model) if meta["kind"] == DenseRetriever.kind else \
        kinds[meta["kind"]].load(folder)


def check_k(k) -> int:
    from ponder.errors import check_int

    return check_int("k", k, what="documents to retrieve")


__all__ = ["Hit", "check_k", "load_index", "read_meta", "write_meta"]
