"""Few-shot retrieval-augmented prompting with answer reranking.

Paper: Lazaridou et al. 2022, *Internet-augmented language models through few-shot prompting for
open-domain question answering*: retrieve documents for the question, condition the model on each,
sample answers, and rerank them by the model's own probabilities — inference scaling over
documents × samples.

Rule: the retriever returns the `k` documents nearest the prompt; for each document d the model is
prompted with ``template.format(document=d, prompt=prompt)`` and samples `n` answers (candidate j of
document i is seeded (seed, i·n + j), so every candidate re-renders alone). Each answer a is scored
by log p(a | d, q), the log-probability of its tokens under the model given its own document
(``rerank="direct"``), or by log Σ_d p(d | q)·p(a | d, q) over the documents that produced the same
final answer, p(d | q) the softmax of the retrieval scores (``rerank="rag"``, answers compared by the
model's `extract_answer`, else by their text). With a verifier, its score replaces the reranker's.
The best-scored candidate is returned (ties: the lowest index).
"""

from __future__ import annotations

import math
from typing import Any

from ponder.errors import ConfigError, check_int
from ponder.search.core import Candidate, Compute, Result, Verifier
from ponder.search.core.capabilities import AnswerExtractor
from ponder.search.scaling.common import check_n, decode_candidates, finish, score_candidates

DEFAULT_TEMPLATE = "Document: {document}\n{prompt}"
RERANKS = ("direct", "rag")


def _retriever(retriever: Any, model):
    if retriever is None:
        raise ConfigError("strategy 'rag' retrieves documents: pass retriever= (a retriever, or an index folder "
                          "saved by ponder.search.retrieval)")
    if isinstance(retriever, str):
        from ponder.search.retrieval import load_index

        return load_index(retriever, getattr(model, "base", model))
    return retriever


def rag(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0, retriever: Any = None,
        k: int = 4, template: str = DEFAULT_TEMPLATE, rerank: str = "direct", **options) -> Result:
    """Sample `n` answers conditioned on each of the `k` retrieved documents and return the best by
    the reranking rule (see the module docstring). Options: the decoding options of `sample`."""
    check_n(n)
    k = check_int("k", k, what="documents to retrieve")
    if rerank not in RERANKS:
        raise ConfigError(f"rerank must be one of {', '.join(RERANKS)}, got {rerank!r}")
    if not isinstance(template, str) or "{document}" not in template or "{prompt}" not in template:
        raise ConfigError(f"template must hold {{document}} and {{prompt}}, got {template!r}")
    index = _retriever(retriever, model)
    compute = Compute()
    with compute.timed():
        hits = index.search(prompt, k=k)
        candidates: list[Candidate] = []
        config: dict = {}
        for i, hit in enumerate(hits):
            conditioned = template.format(document=hit.document.text, prompt=prompt)
            found, config = decode_candidates(model, conditioned, n=n * len(hits), seed=seed, compute=compute,
                                              indices=range(i * n, (i + 1) * n), **options)
            for c in found:
                c.meta.update(document=hit.document.id, retrieval_score=hit.score, retrieval_rank=hit.rank,
                              conditioned_prompt=conditioned)
            candidates += found
        if verifier is not None:
            score_candidates(verifier, prompt, candidates, compute)
        else:
            _rerank(model, candidates, hits, rerank)
    best = max(candidates, key=lambda c: (c.score, -c.meta["index"])) if candidates else None
    config.update({"strategy": "rag", "prompt": prompt, "n": n, "k": k, "documents": [h.document.id for h in hits],
                   "template": template, "rerank": rerank if verifier is None else "verifier",
                   "retriever": getattr(index, "kind", type(index).__name__),
                   "verifier": None if verifier is None else getattr(verifier, "name", type(verifier).__name__)})
    return finish(best, candidates, compute, config)


def _rerank(model, candidates: list[Candidate], hits, rerank: str) -> None:
    """Score each candidate by the reranking rule (log-probabilities under the model)."""
    if rerank == "direct":
        for c in candidates:
            c.score = c.meta["logprob"]
        return
    top = max(h.score for h in hits)
    weights = {h.document.id: math.exp(h.score - top) for h in hits}
    total = sum(weights.values())
    extract = model.extract_answer if isinstance(model, AnswerExtractor) else (lambda out: str(out).strip())
    mass: dict[Any, dict[str, float]] = {}  # answer -> document -> p(a | d, q) (the best sample's)
    for c in candidates:
        answer = extract(c.output)
        c.meta["answer"] = answer
        per_doc = mass.setdefault(answer, {})
        per_doc[c.meta["document"]] = max(per_doc.get(c.meta["document"], 0.0), math.exp(c.meta["logprob"]))
    for c in candidates:
        p = sum(weights[d] / total * q for d, q in mass[c.meta["answer"]].items())
        c.score = math.log(p) if p > 0 else -math.inf


__all__ = ["DEFAULT_TEMPLATE", "RERANKS", "rag"]
