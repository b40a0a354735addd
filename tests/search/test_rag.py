"""Retrieval-augmented prompting with answer reranking (strategy `rag`): k documents x n samples,
each conditioned on its document, reranked by the model's own probabilities (or a verifier)."""

from __future__ import annotations

import math

import pytest

import ponder
from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.retrieval import Document, SparseRetriever
from ponder.search.scaling import sample

DOCS = [Document("a", "Q: 12+7*3\n7*3=21\n12+21=33\nA: 33"), Document("b", "Q: 9*9-40\n9*9=81\n81-40=41\nA: 41"),
        Document("c", "Q: 5+5\n5+5=10\nA: 10")]
TEMPLATE = "{document}\n{prompt}"


@pytest.fixture(scope="module")
def arith():
    return ponder.load("text", "zoo:arith")


def _run(arith, **kw):
    return ponder.generate(arith, "Q: 12+7*3\n", strategy="rag", n=2, retriever=SparseRetriever.build(DOCS), k=2,
                           template=TEMPLATE, max_new_tokens=40, temperature=0.8, seed=5, **kw)


def test_each_document_conditions_its_own_seeded_samples_and_direct_reranking_picks_the_likeliest(arith):
    result = _run(arith)
    cands = result.candidates
    assert [c.meta["index"] for c in cands] == [0, 1, 2, 3]
    assert [c.meta["document"] for c in cands][:2] == ["a", "a"] and result.config["documents"][0] == "a"
    assert cands[0].meta["conditioned_prompt"] == DOCS[0].text + "\nQ: 12+7*3\n"
    assert all(c.score == c.meta["logprob"] for c in cands)
    assert result.best is max(cands, key=lambda c: (c.score, -c.meta["index"]))
    assert result.compute.model_calls > 0 and result.config["rerank"] == "direct"
    # a candidate re-renders alone from its seed, index and conditioned prompt
    c = cands[3]
    again = sample(arith, c.meta["conditioned_prompt"], None, n=4, seed=5, indices=[3],
                   sampling=SamplingParams(temperature=0.8), max_new_tokens=40)
    assert again.candidates[0].output == c.output


def test_rag_reranking_sums_over_documents_by_retrieval_weight(arith):
    result = _run(arith, rerank="rag")
    hits = {h.document.id: h.score for h in SparseRetriever.build(DOCS).search("Q: 12+7*3\n", k=2)}
    top = max(hits.values())
    weight = {d: math.exp(s - top) / sum(math.exp(v - top) for v in hits.values()) for d, s in hits.items()}
    for c in result.candidates:
        same = [o for o in result.candidates if o.meta["answer"] == c.meta["answer"]]
        per_doc = {}
        for o in same:
            per_doc[o.meta["document"]] = max(per_doc.get(o.meta["document"], 0.0), math.exp(o.meta["logprob"]))
        assert c.score == pytest.approx(math.log(sum(weight[d] * p for d, p in per_doc.items())))


def test_a_verifier_replaces_the_reranker_and_an_index_folder_serves_as_retriever(arith, tmp_path):
    folder = SparseRetriever.build(DOCS).save(tmp_path / "index")
    result = ponder.generate(arith, "Q: 12+7*3\n", strategy="rag", n=2, retriever=str(folder), k=1,
                             template=TEMPLATE, verifier="exact", max_new_tokens=40, temperature=0.8)
    assert result.config["rerank"] == "verifier" and {c.score for c in result.candidates} <= {0.0, 1.0}
    assert result.config["documents"] == ["a"]


def test_bad_rag_options_are_one_clear_error(arith):
    with pytest.raises(ConfigError, match="pass retriever="):
        ponder.generate(arith, "Q: 1\n", strategy="rag", n=1)
    with pytest.raises(ConfigError, match="rerank must be one of direct, rag"):
        _run(arith, rerank="vote")
    with pytest.raises(ConfigError, match="template must hold"):
        ponder.generate(arith, "Q: 1\n", strategy="rag", n=1, retriever=SparseRetriever.build(DOCS), template="x")
