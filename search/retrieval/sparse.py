"""Sparse retrieval: BM25 over a local corpus, through the bm25s library.

Paper: Robertson & Zaragoza 2009, *The Probabilistic Relevance Framework: BM25 and Beyond*. Rule: a
document's score for a query is Σ over the query's terms of idf(term) · tf·(k1 + 1) / (tf + k1·(1 −
b + b·|d| / avg|d|)); the k highest-scoring documents are returned. Terms are bm25s's: lower-cased
words of two or more characters, English stop words removed.
"""

from __future__ import annotations

from pathlib import Path

from ponder.errors import InputError
from ponder.search.retrieval.corpus import Document
from ponder.search.retrieval.index import Hit, check_k, read_meta, write_meta


class SparseRetriever:
    kind = "bm25"

    def __init__(self, documents: list[Document], index, *, k1: float, b: float):
        self.documents, self._index, self.k1, self.b = documents, index, k1, b

    @classmethod
    def build(cls, documents: list[Document], *, k1: float = 1.5, b: float = 0.75) -> SparseRetriever:
        import bm25s

        if not documents:
            raise InputError("a BM25 index needs at least one document")
        index = bm25s.BM25(k1=k1, b=b)
        index.index(bm25s.tokenize([d.text for d in documents], stopwords="en", show_progress=False),
                    show_progress=False)
        return cls(documents, index, k1=k1, b=b)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The `k` best documents for `query` (fewer when the corpus is smaller), best first."""
        import bm25s

        k = min(check_k(k), len(self.documents))
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        found, scores = self._index.retrieve(tokens, k=k, show_progress=False)
        return [Hit(rank, float(score), self.documents[int(i)])
                for rank, (i, score) in enumerate(zip(found[0], scores[0]))]

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        write_meta(folder, self.documents, {"kind": self.kind, "k1": self.k1, "b": self.b})
        self._index.save(folder / "bm25", show_progress=False)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SparseRetriever:
        import bm25s

        folder, meta, documents = read_meta(folder)
        index = bm25s.BM25.load(folder / "bm25", show_progress=False)
        return cls(documents, index, k1=meta.get("k1", 1.5), b=meta.get("b", 0.75))


__all__ = ["SparseRetriever"]
