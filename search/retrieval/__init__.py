"""Retrieval over a local corpus: reading a user's documents (`corpus`); retrievers come next."""

from ponder.search.retrieval.corpus import Document, read_corpus

__all__ = ["Document", "read_corpus"]
