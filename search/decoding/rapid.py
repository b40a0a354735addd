"""RAPID: speculative decoding whose draft reads a retrieved short context instead of the long prompt.

Paper: Chen et al. 2025, *Long-Context Inference with Retrieval-Augmented Speculative Decoding*
(RAPID). Rule (lossless mode): the target reads the whole long prompt; the draft reads only the
prompt's chunks most relevant to its end, in their original order, then the prompt's last `tail`
tokens — a context a fraction as long, so each draft step is cheap however long the prompt. The
draft proposes `draft_len` tokens and the target verifies them by speculative sampling's rule
(`speculative.accept_drafts`), so the output is distributed exactly as the target's own sampling
(greedy: token for token). Retrieval: the prompt before its tail is cut into `chunk`-token chunks,
scored by BM25 (`ponder.search.retrieval.sparse`) against the tail's text, and the best `k` are
kept (the first token — a BOS — always; when no chunk shares a term with the tail, the `k` chunks
just before it). The paper's retrieval-augmented *target* distribution
(a lossy option) is not built.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ponder.errors import check_int
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.core.capabilities import display_name
from ponder.search.decoding.chain import require_draft
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.speculative import speculative
from ponder.search.guides.streams import GuidedModel


def short_context(draft, ids: Sequence[int], *, chunk: int, k: int, tail: int) -> list[int]:
    """The draft's prompt for a long prompt `ids`: its first token, its `k` chunks nearest the tail
    (BM25 over the decoded chunks, original order kept), then its last `tail` tokens."""
    from ponder.search.retrieval import Document, SparseRetriever

    ids = list(ids)
    if len(ids) <= 1 + k * chunk + tail:
        return ids  # already short: the draft reads it all
    head, body, end = ids[:1], ids[1:len(ids) - tail], ids[len(ids) - tail:]
    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)]
    docs = [Document(str(i), str(draft.decode(c))) for i, c in enumerate(chunks)]
    query = str(draft.decode(end))
    nearest = list(range(max(0, len(chunks) - k), len(chunks)))  # with nothing to score: the chunks before the tail
    try:
        with np.errstate(invalid="ignore", divide="ignore"):  # chunks without a single word score NaN
            hits = SparseRetriever.build(docs).search(query, k=k)
    except Exception:  # no words to index at all
        hits = []
    scored = [h for h in hits if h.score == h.score and h.score > 0]  # NaN or 0: BM25 found no shared term
    kept = sorted(int(h.document.id) for h in scored) if scored else nearest
    return head + [t for i in kept for t in chunks[i]] + end


class RetrievedContextDraft(GuidedModel):
    """`draft` seen through RAPID's short context: its prefill reads `short_context` of each prompt;
    everything else is the draft's own (its tokenizer, its cache, its forwards over the drafted tokens)."""

    def __init__(self, draft, *, chunk: int, k: int, tail: int):
        super().__init__(draft, f"rapid-draft({display_name(draft)})")
        self.chunk, self.k, self.tail = chunk, k, tail
        self.prompt_lengths: list[int] = []  # the short prompts' lengths (the bench reports them)

    def prefill(self, prompt_ids, cache) -> torch.Tensor:
        short = [short_context(self.base, ids, chunk=self.chunk, k=self.k, tail=self.tail) for ids in prompt_ids]
        self.prompt_lengths = [len(s) for s in short]
        return self.base.prefill(short, cache)


def rapid(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    draft_len: int = 4,
    chunk: int = 64,
    k: int = 4,
    tail: int = 128,
    stats: dict | None = None,
) -> Decoded:
    """Lossless speculative sampling with a draft that reads a retrieved short context (RAPID).

    Options: draft_len (tokens drafted a step), chunk (tokens a retrieved chunk holds), k (chunks
    kept), tail (the prompt's last tokens the draft always reads); `stats` receives speculative
    decoding's counts plus "draft_prompt_tokens".
    """
    require_draft("rapid", draft)
    chunk, k, tail = check_int("chunk", chunk), check_int("k", k), check_int("tail", tail)
    short = RetrievedContextDraft(draft, chunk=chunk, k=k, tail=tail)
    decoded = speculative(model, prompt_ids, sampling=sampling, max_new_tokens=max_new_tokens, generators=generators,
                          stop=stop, stream=stream, draft=short, draft_len=draft_len, stats=stats)
    if stats is not None:
        stats["draft_prompt_tokens"] = short.prompt_lengths
    return decoded


__all__ = ["RetrievedContextDraft", "rapid", "short_context"]
