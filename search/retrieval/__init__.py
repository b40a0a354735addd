"""Retrieval over a local corpus: reading a user's documents (`corpus`), BM25 (`sparse`) and
mean-pooled model vectors (`dense`), with index folders that record what built them (`index`)."""

from ponder.search.retrieval.corpus import Document, read_corpus, write_corpus
from ponder.search.retrieval.dense import DenseRetriever
from ponder.search.retrieval.index import Hit, load_index
from ponder.search.retrieval.sparse import SparseRetriever

__all__ = ["DenseRetriever", "Document", "Hit", "SparseRetriever", "load_index", "read_corpus", "write_corpus"]
