"""ADED: drafts from an adaptive tri-gram table of the context and of what the model emits.

Liu, Lei, Zhang and Xu 2024, *Adaptive Draft-Verification for Efficient Large Language Model
Decoding* (ADED): a tri-gram matrix stands in for the LLM as the drafter, and it keeps adapting to
the model's own outputs as decoding goes, so drafts need no draft model and no training.

Rule (the drafter here; ADED's MCTS tree search is not built, one chain is drafted): every tri-gram
(a, b) -> c of the prompt and of each emitted token updates the table: the weights already held
under (a, b) are multiplied by `decay` (≤ 1), then c gains 1 — frequent continuations win, and among
equally frequent ones the latest. A draft follows the heaviest continuation of the last two tokens
(backing off to the last token's bi-gram when the pair is unseen) for up to `draft_len` tokens,
stopping where neither is known. The drafts are deterministic, so `draft_and_verify` verifies them
losslessly (q one-hot: accept d with probability p(d), else draw from p without d; greedy: exact
match).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.chain import LoopStart, check_draft_len, draft_and_verify, refuse_draft
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.speculative import accept_drafts


class TrigramTable:
    """Decayed tri-gram (and bi-gram back-off) continuation weights over one token stream.

    `trigram[(a, b)][c]` and `bigram[b][c]` are the weights of c following (a, b) and b. Feed the
    stream token by token with `push`; `draft` reads the heaviest continuation chain.
    """

    def __init__(self, decay: float = 0.5):
        self.decay = decay
        self.trigram: dict[tuple[int, int], dict[int, float]] = {}
        self.bigram: dict[int, dict[int, float]] = {}
        self.tail: list[int] = []  # the last two tokens pushed

    @staticmethod
    def _add(weights: dict[int, float], token: int, decay: float) -> None:
        for key in weights:  # older evidence fades, so the table follows the model as it goes
            weights[key] *= decay
        weights[token] = weights.get(token, 0.0) + 1.0

    def push(self, tokens: Iterable[int]) -> None:
        """Append tokens to the stream, updating the weights of every tri-gram / bi-gram they end."""
        for token in tokens:
            token = int(token)
            if self.tail:
                self._add(self.bigram.setdefault(self.tail[-1], {}), token, self.decay)
            if len(self.tail) == 2:
                self._add(self.trigram.setdefault((self.tail[0], self.tail[1]), {}), token, self.decay)
            self.tail = (self.tail + [token])[-2:]

    def next_token(self, prev2: int | None, prev1: int) -> int | None:
        """Heaviest continuation of (prev2, prev1), else of prev1 alone; None when neither is known.
        Ties go to the smaller id (deterministic)."""
        weights = self.trigram.get((prev2, prev1)) if prev2 is not None else None
        if not weights:
            weights = self.bigram.get(prev1)
        if not weights:
            return None
        return min(weights, key=lambda t: (-weights[t], t))

    def draft(self, length: int) -> list[int]:
        """Up to `length` tokens following the stream's last two tokens, by the heaviest chain."""
        if not self.tail:
            return []
        context = list(self.tail)
        out: list[int] = []
        while len(out) < length:
            token = self.next_token(context[-2] if len(context) > 1 else None, context[-1])
            if token is None:
                break
            out.append(token)
            context = [context[-1], token]
        return out


class TrigramProposer:
    """One `TrigramTable` per row, built from the row's prompt and grown with every emitted token."""

    def __init__(self, prompt_ids: Sequence[Sequence[int]], *, draft_len: int, decay: float):
        self.tables = [TrigramTable(decay) for _ in prompt_ids]
        for table, prompt in zip(self.tables, prompt_ids):
            table.push(prompt)
        self.draft_len = draft_len

    def propose(self, last: list[int], limits: list[int]) -> tuple[list[list[int]], None]:
        for table, token in zip(self.tables, last):
            table.push([token])
        self.drafts = [table.draft(min(self.draft_len, limit)) for table, limit in zip(self.tables, limits)]
        return self.drafts, None

    def accepted(self, num_accepted: list[int], final: list[int]) -> None:
        for table, drafts, n in zip(self.tables, self.drafts, num_accepted):
            table.push(drafts[:n])  # `final` arrives as next step's `last`


def check_decay(decay) -> float:
    """`decay` as a float, or a ConfigError unless it is a number in (0, 1]."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay <= 1.0:
        raise ConfigError(f"decay must be a number in (0, 1] (weight kept by older tri-gram evidence), got {decay!r}")
    return float(decay)


def aded(
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
    decay: float = 0.5,
    stats: dict | None = None,
) -> Decoded:
    """Lossless decoding from `model` with drafts from an adaptive tri-gram table (ADED; no draft model).

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`.
        draft: must be None (the drafter is the tri-gram table of the context).
        draft_len: most tokens drafted per step, a positive integer.
        decay: weight older evidence keeps at each new observation of the same (a, b), in (0, 1];
            1 counts plainly, small values favour the latest continuation.
        stats: optional dict that receives "steps", "row_steps" and "accepted".
    Returns:
        `Decoded`, distributed exactly as plain sampling from `model` (greedy: identical tokens).
    """
    draft_len = check_draft_len(draft_len)
    decay = check_decay(decay)
    refuse_draft("aded", draft, "from a tri-gram table of the context")

    def make_proposer(start: LoopStart) -> TrigramProposer:
        return TrigramProposer(start.prompt_ids, draft_len=draft_len, decay=decay)

    return draft_and_verify(model, prompt_ids, make_proposer, accept=accept_drafts, sampling=sampling,
                            max_new_tokens=max_new_tokens, generators=generators, stop=stop, stream=stream,
                            stats=stats)


__all__ = ["TrigramProposer", "TrigramTable", "aded"]
