"""Prompt lookup decoding: draft by copying what followed the latest earlier match of the context's tail.

Saxena 2023, *Prompt Lookup Decoding* (github.com/apoorvumang/prompt-lookup-decoding); the same
train-free copy drafter as CopySpec (Dumitru et al. 2025, *CopySpec: Accelerating LLMs with
Speculative Copy-and-Paste Without Compromising Quality*), which searches the prompt and the
generated history alike.

Rule: for n = max_ngram down to 1, find the latest earlier occurrence of the row's last n tokens
(prompt + everything emitted so far) and propose the up to `draft_len` tokens that followed it; no
match proposes nothing (a plain step). The drafts are deterministic (q is one-hot), so the
speculative-sampling rule of `speculative.py` verifies them losslessly: accept d with probability
p(d), on rejection draw from p with d removed (renormalised); greedy is exact match.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.chain import LoopStart, check_count, check_draft_len, draft_and_verify, refuse_draft
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.speculative import accept_drafts


def lookup_draft(history: Sequence[int], draft_len: int, max_ngram: int) -> list[int]:
    """Up to `draft_len` tokens that followed the latest earlier match of history's last n tokens
    (longest n ≤ max_ngram first); [] when nothing matches."""
    size = len(history)
    for n in range(min(max_ngram, size - 1), 0, -1):
        tail = list(history[size - n:])
        for start in range(size - n - 1, -1, -1):  # latest earlier occurrence first
            if list(history[start:start + n]) == tail:
                return list(history[start + n:start + n + draft_len])
    return []


class LookupProposer:
    """Keeps each row's full token history and drafts from it by `lookup_draft`."""

    def __init__(self, prompt_ids: Sequence[Sequence[int]], *, draft_len: int, max_ngram: int):
        self.history = [list(p) for p in prompt_ids]
        self.draft_len, self.max_ngram = draft_len, max_ngram

    def propose(self, last: list[int], limits: list[int]) -> tuple[list[list[int]], None]:
        for row, token in enumerate(last):
            self.history[row].append(token)
        self.drafts = [lookup_draft(h, min(self.draft_len, limit), self.max_ngram) if limit else []
                       for h, limit in zip(self.history, limits)]
        return self.drafts, None

    def accepted(self, num_accepted: list[int], final: list[int]) -> None:
        for row, n in enumerate(num_accepted):
            self.history[row] += self.drafts[row][:n]  # `final` arrives as next step's `last`


def prompt_lookup(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    draft_len: int = 8,
    max_ngram: int = 3,
    stats: dict | None = None,
) -> Decoded:
    """Lossless decoding from `model` with drafts copied from the prompt and history (no draft model).

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`.
        draft: must be None (this decoder's drafter is the context itself).
        draft_len: most tokens copied per step, a positive integer.
        max_ngram: longest tail n-gram looked up (then shorter ones), a positive integer.
        stats: optional dict that receives "steps" and "accepted".
    Returns:
        `Decoded`, distributed exactly as plain sampling from `model` (greedy: identical tokens).
    """
    draft_len = check_draft_len(draft_len)
    max_ngram = check_count("max_ngram", max_ngram, "longest tail n-gram looked up")
    refuse_draft("prompt-lookup", draft, "by copying from the context")

    def make_proposer(start: LoopStart) -> LookupProposer:
        return LookupProposer(start.prompt_ids, draft_len=draft_len, max_ngram=max_ngram)

    return draft_and_verify(model, prompt_ids, make_proposer, accept=accept_drafts, sampling=sampling,
                            max_new_tokens=max_new_tokens, generators=generators, stop=stop, stream=stream,
                            stats=stats)


__all__ = ["LookupProposer", "lookup_draft", "prompt_lookup"]
