"""Speculative sampling: a cheap draft proposes k tokens, the target verifies them in one forward.

Leviathan, Kalman and Matias 2023, *Fast Inference from Transformers via Speculative Decoding*;
Chen et al. 2023, *Accelerating Large Language Model Decoding with Speculative Sampling*.

Rule: the draft samples d_1..d_k from q; one target forward over [last token, d_1..d_k] gives
p_1..p_{k+1}. Accept d_j with probability min(1, p_j(d_j) / q_j(d_j)) until the first rejection; at
a rejection at j, draw from norm(max(0, p_j − q_j)); if all k are accepted, draw a bonus token from
p_{k+1}. The emitted tokens are distributed exactly as plain sampling from p (after temperature /
top-k / top-p / min-p, which both p and q go through). Greedy (temperature 0) is exact match: accept
while d_j = argmax p_j, then emit argmax p at the first mismatch — token for token plain greedy.

Batches: rows accept different numbers of tokens; every cache keeps one shared length and hides a
row's rolled-back positions (`rollback.truncate_rows`), so each row continues exactly as if its
rejected drafts had never been fed. Each row draws only from its own generator, a fixed number of
times per step (k draft samples, one uniform per draft token, one final draw), so a row's output
does not depend on the other rows in its batch.

This file is the paper's rule (`accept_drafts`) and its draft-model proposer; the loop they run in,
shared with every other chain drafter, is `chain.draft_and_verify`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.kernels.sampling import SamplingParams, probs_from_logits, sample, sample_from_logits
from ponder.search.core import Compute, Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.chain import (
    LoopStart,
    check_draft_len,
    check_same_tokenizer,
    draft_and_verify,
    draw_draft,
    fit_vocab,
    require_draft,
    residual,
)
from ponder.search.decoding.outputs import StopFn, prefill_shared
from ponder.search.decoding.rollback import feed_rows, truncate_rows


def _uniforms(counts: Sequence[int], width: int, generators) -> torch.Tensor:
    """[B, width] uniforms; row r draws exactly counts[r] from its own generator (the rest are 1)."""
    out = torch.ones((len(counts), width))
    for row, count in enumerate(counts):
        if count:
            gen = None if generators is None else generators[row]
            out[row, :count] = torch.rand(count, generator=gen)
    return out


def accept_drafts(
    logits: torch.Tensor,
    drafts: Sequence[Sequence[int]],
    draft_probs: torch.Tensor | None,
    sampling: SamplingParams,
    generators,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The speculative-sampling verification rule for one step, every row at once.

    Args:
        logits: target logits [B, W, V] over [last, d_1..d_K] (W ≥ K + 1); row r's drafts are
            drafts[r] (length K_r ≤ K).
        draft_probs: q [B, K, V] the drafts were sampled from, or None for deterministic drafts.
        sampling: the target's sampling settings (p is the processed distribution).
        generators: one per row, or None for the global RNG.
    Returns:
        (num_accepted [B], final [B]): accepted drafts per row and the token drawn after them.
    """
    batch, width, vocab = logits.shape
    lengths = [len(d) for d in drafts]
    longest = max(lengths, default=0)
    rows = torch.arange(batch)
    if longest == 0:
        return torch.zeros(batch, dtype=torch.long), sample_from_logits(logits[:, 0], sampling, generators)
    draft_ids = torch.zeros((batch, longest), dtype=torch.long)  # [B, K]
    for row, tokens in enumerate(drafts):
        draft_ids[row, :len(tokens)] = torch.as_tensor(list(tokens), dtype=torch.long)
    valid = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]  # [B, K]
    logits = logits[:, :longest + 1].cpu()
    if sampling.greedy:
        ok = draft_ids == logits[:, :longest].argmax(-1)  # [B, K]: exact match
        num_accepted = (ok & valid).long().cumprod(1).sum(1)  # [B]
        return num_accepted, logits[rows, num_accepted].argmax(-1)
    p = probs_from_logits(logits.reshape(-1, vocab), sampling).view(batch, longest + 1, vocab)  # [B, K+1, V]
    p_draft = p[:, :longest].gather(2, draft_ids[..., None])[..., 0]  # [B, K]
    if draft_probs is None:
        q_draft = torch.ones_like(p_draft)  # deterministic drafts: q is one-hot
    else:
        draft_probs = draft_probs.cpu()
        q_draft = draft_probs.gather(2, draft_ids[..., None])[..., 0]  # [B, K]
    # q >= p: accept with probability p/q; q < p: always accept (u < 1 <= p/q)
    ok = _uniforms(lengths, longest, generators) * q_draft < p_draft  # [B, K]
    num_accepted = (ok & valid).long().cumprod(1).sum(1)  # [B]
    p_next = p[rows, num_accepted]  # [B, V]
    rejected = num_accepted < torch.tensor(lengths)  # [B]; False: all accepted, bonus from p_{K_r+1}
    at = num_accepted.clamp(max=longest - 1)  # [B]
    if draft_probs is None:
        q_next = torch.zeros_like(p_next).scatter_(1, draft_ids[rows, at][:, None], 1.0)  # [B, V]
    else:
        q_next = draft_probs[rows, at]  # [B, V]
    q_next = q_next * rejected[:, None]  # bonus rows subtract nothing
    return num_accepted, sample(residual(p_next, q_next), generators)


class DraftModelProposer:
    """Drafts by sampling a small model autoregressively, over its own cache with per-row rollback.

    The draft cache holds the same context as the target's. After a step in which row r accepted
    all its drafts, the last draft was never fed to the draft model, so it is fed together with the
    new last token at the start of the next step (two tokens instead of one, no extra draft call).

    stop_above: None drafts `draft_len` tokens per row. A number h in (0, 1) stops a row's draft
    once its predicted probability of at least one rejection, 1 − Π q_j(d_j) (the draft's own
    confidence in its tokens), exceeds h — SpecDec++'s stopping rule with the draft's confidence as
    the predictor; `draft_len` is then the most tokens drafted.

    stop_before: None, or a rule q [B, V] -> [B] bool that stops a row *before* the token just drawn
    from q (it is not drafted; the target supplies that position): BiLD's fallback when the draft's
    top probability is low, Entropy Adaptive Decoding's switch when its entropy is high.
    """

    def __init__(self, draft: SequenceModel, prompt_ids, compute: Compute, *, sampling: SamplingParams,
                 generators, draft_len: int, vocab: int, stop_above: float | None = None,
                 stop_before=None):
        self.draft, self.sampling, self.generators = draft, sampling, generators
        self.draft_len, self.vocab, self.compute, self.stop_above = draft_len, vocab, compute, stop_above
        self.stop_before = stop_before
        self.cache = draft.new_cache()
        prefill_shared(draft, prompt_ids, self.cache)
        compute.draft_calls += 1
        self.pending: list[list[int]] = [[] for _ in prompt_ids]  # fed to the draft before `last`

    def _next(self, logits: torch.Tensor, drafting: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return draw_draft(fit_vocab(logits.float(), self.vocab), drafting, self.sampling, self.generators)

    def propose(self, last: list[int], limits: list[int]) -> tuple[list[list[int]], torch.Tensor | None]:
        batch = len(last)
        rows = [pending + [token] for pending, token in zip(self.pending, last)]
        self.start = self.cache.length
        self.width = max(len(r) for r in rows)
        logits = feed_rows(self.draft, self.cache, rows)  # [B, W, V]
        self.compute.draft_calls += 1
        ends = torch.tensor([len(r) - 1 for r in rows], device=logits.device)
        logits = logits[torch.arange(batch, device=logits.device), ends]  # [B, V]
        drafting = [r for r in range(batch) if limits[r] > 0]
        lengths = [0] * batch
        confidence = torch.ones(batch)
        drafts, probs = [], []
        while drafting:
            token, q = self._next(logits, drafting)  # [B], [B, V]
            if self.stop_before is not None:
                halt = self.stop_before(q).tolist()  # [B]
                drafting = [r for r in drafting if not halt[r]]
                if not drafting:
                    break
            drafts.append(token)
            probs.append(q)
            for row in drafting:
                lengths[row] += 1
            if self.stop_above is not None:
                confidence *= q.gather(1, token[:, None].to(q.device))[:, 0].cpu()
                drafting = [r for r in drafting if 1 - float(confidence[r]) <= self.stop_above]
            drafting = [r for r in drafting if lengths[r] < limits[r]]
            if not drafting or len(drafts) == self.draft_len:
                break
            logits = self.draft.forward(token[:, None].to(logits.device), self.cache)[:, -1]  # [B, V]
            self.compute.draft_calls += 1
        self.steps_drafted = len(drafts)
        if not drafts:
            self.drafts = [[] for _ in range(batch)]
            return self.drafts, None
        table = torch.stack(drafts, 1).tolist()  # [B, m]
        self.drafts = [row[:n] for row, n in zip(table, lengths)]
        return self.drafts, None if self.sampling.greedy else torch.stack(probs, 1)  # [B, m, V]

    def accepted(self, num_accepted: list[int], final: list[int]) -> None:
        m = self.steps_drafted
        # the cache holds [pending, last] then d_1..d_{m-1}; row r keeps d_1..d_min(n_r, m-1)
        truncate_rows(self.cache, self.start, [self.width + max(0, min(n, m - 1)) for n in num_accepted])
        self.pending = [[d[-1]] if m and n == m else [] for d, n in zip(self.drafts, num_accepted)]


def speculative(
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
    stats: dict | None = None,
) -> Decoded:
    """Lossless speculative sampling from `model` with a draft model (Leviathan et al.; Chen et al.).

    Args:
        model: the target `SequenceModel`; outputs are distributed exactly as plain sampling from it.
        prompt_ids: B prompts as token id lists (lengths may differ).
        sampling: temperature / top-k / top-p / min-p, applied to target and draft alike; 0 = greedy.
        max_new_tokens: most tokens emitted per row.
        generators: one generator per row; a row's output does not depend on the others.
        stop, stream: as in `plain`.
        draft: the draft `SequenceModel` (same tokenizer as `model`); required.
        draft_len: tokens drafted per step (k), a positive integer.
        stats: optional dict that receives "steps" and "accepted" (draft tokens accepted, all rows).
    Returns:
        `Decoded`; `compute.draft_calls` counts draft forwards, `model_calls` target forwards.
    """
    draft_len = check_draft_len(draft_len)
    require_draft("speculative", draft)
    check_same_tokenizer(model, draft)

    def make_proposer(start: LoopStart) -> DraftModelProposer:
        return DraftModelProposer(draft, start.prompt_ids, start.compute, sampling=sampling,
                                  generators=start.generators, draft_len=draft_len, vocab=start.vocab)

    return draft_and_verify(model, prompt_ids, make_proposer, accept=accept_drafts, sampling=sampling,
                            max_new_tokens=max_new_tokens, generators=generators, stop=stop, stream=stream,
                            stats=stats, draft=draft)


__all__ = ["DraftModelProposer", "accept_drafts", "speculative"]
