"""Retrieval over a local corpus: BM25 and dense (mean-pooled model vectors), index folders that
round-trip and record what built them."""

from __future__ import annotations

import pytest

import ponder
from ponder.errors import ConfigError, InputError
from ponder.search.retrieval import DenseRetriever, Document, SparseRetriever, load_index

DOCS = [
    Document("acme", "Acme Corporation was founded in Springfield by Ada Byron in 1921."),
    Document("brill", "Brill Industries makes turbines; its headquarters are in Oakdale."),
    Document("cora", "Cora Lind is a painter who lives in Springfield and works for Brill Industries."),
    Document("delta", "The Delta river floods every spring near Oakdale."),
]


def test_bm25_ranks_the_document_with_the_rare_query_words_first_and_round_trips(tmp_path):
    index = SparseRetriever.build(DOCS)
    hits = index.search("who founded Acme Corporation", k=2)
    assert [h.document.id for h in hits][0] == "acme" and hits[0].score > hits[1].score >= 0
    assert [h.rank for h in hits] == [0, 1]
    assert index.search("turbines headquarters", k=1)[0].document.id == "brill"
    assert len(index.search("Springfield", k=10)) == len(DOCS)  # k beyond the corpus gives every document
    again = load_index(index.save(tmp_path / "bm25"))
    assert isinstance(again, SparseRetriever)
    assert [(h.document, h.score) for h in again.search("Cora painter", k=3)] == \
        [(h.document, h.score) for h in index.search("Cora painter", k=3)]
    with pytest.raises(ConfigError, match="k must be"):
        index.search("x", k=0)


@pytest.fixture(scope="module")
def arith():
    return ponder.load("text", "zoo:arith")


def test_dense_retrieval_finds_a_document_by_its_own_text_and_refuses_another_model(arith, tmp_path):
    index = DenseRetriever.build(DOCS, arith)
    for doc in DOCS:
        top = index.search(doc.text, k=1)[0]
        assert top.document.id == doc.id and top.score == pytest.approx(1.0, abs=1e-4)  # cosine with itself
    folder = index.save(tmp_path / "dense")
    again = load_index(folder, arith)
    assert [h.document.id for h in again.search(DOCS[2].text, k=4)] == [h.document.id for h in
                                                                       index.search(DOCS[2].text, k=4)]
    other = ponder.load("text", "zoo:arith-draft")
    with pytest.raises(ConfigError, match="was built by"):
        load_index(folder, other)
    with pytest.raises(InputError, match="not a ponder retrieval index"):
        load_index(tmp_path / "nothing-here")
