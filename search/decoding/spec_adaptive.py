"""Speculative sampling with an adaptive draft length: stop drafting when a rejection gets likely.

Huang, Parthasarathi, Li and Li 2024, *SpecDec++: Boosting Speculative Decoding via Adaptive
Candidate Lengths*. Rule: draft token by token and stop once the predicted probability that at
least one drafted token will be rejected, 1 − Π_j a_j, exceeds a threshold h; a_j, the predicted
acceptance of draft token j, is here the draft's own probability of it, q_j(d_j) (SpecDec++ trains
a small acceptance head instead — not built yet). Each row of a batch stops on its own. The drafts
then go through the unchanged verification rule of `speculative.py`, so the output distribution is
exactly plain sampling's (the draft length may depend on anything the draft has seen).

Two more draft-length policies share the decoder (`policy=`): "heuristic", the schedule HF's
assisted generation uses (a baseline: a row's length grows by 2 after a step where every draft was
accepted and shrinks by 1 otherwise, never below 1), and "goodput", SmartSpec's batch-aware choice
(`smartspec.py`), the lever for large batches. Both decide a step's length from past steps only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.chain import (
    LoopStart,
    check_draft_len,
    check_same_tokenizer,
    draft_and_verify,
    require_draft,
)
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.smartspec import GoodputSchedule
from ponder.search.decoding.speculative import DraftModelProposer, accept_drafts

POLICIES = ("confidence", "heuristic", "goodput")


class HeuristicSchedule:
    """HF assisted generation's schedule, per row: +2 after a fully accepted draft, −1 otherwise (≥ 1)."""

    def __init__(self, start: int, batch: int, most: int):
        self.k = [start] * batch
        self.most = most

    def lengths(self, limits: list[int]) -> list[int]:
        return list(self.k)

    def update(self, drafted, accepted, *timings) -> None:
        for row, (d, n) in enumerate(zip(drafted, accepted)):
            if d:
                self.k[row] = min(self.most, self.k[row] + 2) if n >= d else max(1, self.k[row] - 1)


class ScheduledProposer(DraftModelProposer):
    """A draft model whose per-row lengths come from a schedule, timed for cost-aware schedules.

    When every row's length is 0 the draft model is not run at all: the rows' new tokens wait in
    `pending` and reach the draft cache with the next step that drafts."""

    def __init__(self, *args, schedule, **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule = schedule

    def propose(self, last: list[int], limits: list[int]) -> tuple[list[list[int]], torch.Tensor | None]:
        if isinstance(self.schedule, GoodputSchedule):
            k = self.schedule.choose([r for r, limit in enumerate(limits) if limit > 0])
            wanted = [k] * len(last)
        else:
            wanted = self.schedule.lengths(limits)
        asked = [min(limit, k) for limit, k in zip(limits, wanted)]
        self.skipped = not any(asked)
        calls, start = self.compute.draft_calls, time.perf_counter()
        if self.skipped:
            self.pending = [pending + [token] for pending, token in zip(self.pending, last)]
            self.drafts, out = [[] for _ in last], ([[] for _ in last], None)
        else:
            out = super().propose(last, asked)
        self.draft_seconds = time.perf_counter() - start
        self.draft_forwards = self.compute.draft_calls - calls
        self.verify_start = time.perf_counter()
        return out

    def accepted(self, num_accepted: list[int], final: list[int]) -> None:
        verify_seconds = time.perf_counter() - self.verify_start
        drafted = [len(d) for d in self.drafts]
        if not self.skipped:
            super().accepted(num_accepted, final)
        self.schedule.update(drafted, num_accepted, self.draft_seconds, self.draft_forwards, verify_seconds,
                             1 + max(drafted, default=0))


def spec_adaptive(
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
    threshold: float = 0.5,
    policy: str = "confidence",
    costs: Sequence[float] | None = None,
    stats: dict | None = None,
) -> Decoded:
    """Lossless speculative sampling whose per-row draft length follows the draft's confidence.

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream, draft, stats: as in
            `speculative`.
        draft_len: the most tokens drafted per step ("heuristic": the starting length; it may grow
            to 2 × draft_len).
        threshold: h in (0, 1); a row stops drafting once 1 − Π q(d) > h (lower: shorter drafts).
        policy: "confidence" (SpecDec++ stop rule, above), "heuristic" (HF's +2 / −1 schedule,
            per row) or "goodput" (SmartSpec: one k in 0..draft_len per step for the batch).
        costs: "goodput" only: fixed (t_draft, a, b) seconds for cost(k) = k·t_draft + a + b·(k+1)
            instead of timing the forwards (reproducible lengths).
    Returns:
        `Decoded`, distributed exactly as plain sampling from `model`; greedy equals plain greedy.
    """
    draft_len = check_draft_len(draft_len)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ConfigError(f"threshold must be in (0, 1) (stop once P(any rejection) exceeds it), got {threshold!r}")
    if policy not in POLICIES:
        raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if costs is not None and (policy != "goodput" or isinstance(costs, (str, bytes)) or len(costs) != 3
                              or not all(isinstance(c, (int, float)) and c >= 0 for c in costs)):
        raise ConfigError(f"costs takes policy 'goodput' and three non-negative seconds (t_draft, a, b), got {costs!r}")
    require_draft("spec-adaptive", draft)
    check_same_tokenizer(model, draft)

    def make_proposer(start: LoopStart) -> DraftModelProposer:
        common = dict(sampling=sampling, generators=start.generators, vocab=start.vocab)
        if policy == "confidence":
            return DraftModelProposer(draft, start.prompt_ids, start.compute, draft_len=draft_len,
                                      stop_above=float(threshold), **common)
        rows = len(start.prompt_ids)
        schedule = (HeuristicSchedule(draft_len, rows, 2 * draft_len) if policy == "heuristic"
                    else GoodputSchedule(draft_len, rows, costs))
        return ScheduledProposer(draft, start.prompt_ids, start.compute, draft_len=2 * draft_len, schedule=schedule,
                                 **common)

    return draft_and_verify(model, prompt_ids, make_proposer, accept=accept_drafts, sampling=sampling,
                            max_new_tokens=max_new_tokens, generators=generators, stop=stop, stream=stream,
                            stats=stats, draft=draft)


__all__ = ["HeuristicSchedule", "POLICIES", "ScheduledProposer", "spec_adaptive"]
