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

`draft_and_verify` is the loop; a *proposer* supplies the drafts (a draft model here; copying from
the context in `prompt_lookup.py`), so every drafter goes through the same verification rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams, probs_from_logits, sample, sample_from_logits
from ponder.search.core import Compute, Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.outputs import RowOutputs, prefill_and_sample
from ponder.search.decoding.plain import StopFn, prefill_shared
from ponder.search.decoding.rollback import can_hide, feed_rows, truncate_rows


class Proposer(Protocol):
    """Supplies draft tokens for `draft_and_verify`."""

    def propose(self, last: list[int], limits: list[int]) -> tuple[list[list[int]], torch.Tensor | None]:
        """Given each row's last emitted token, return each row's drafts (at most draft_len and
        limits[r] tokens, may be empty) and their draft probabilities q [B, K, V] (K = longest
        draft), or None when the drafts are deterministic (q is then one-hot on each draft token)."""
        ...

    def accepted(self, num_accepted: list[int], final: list[int]) -> None:
        """Row r kept its first num_accepted[r] drafts, then `final[r]` (not yet fed anywhere)."""
        ...

    # optional: `verified(logits [B, W, V])`, called with each verify pass's logits before `accepted`


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p − q)) up to normalisation (sampling normalises): where to draw after a rejection.

    p, q: [B, V]. A row where p ≤ q everywhere (only possible by rounding, since a rejection needs
    p(d) < q(d)) falls back to p."""
    diff = (p - q).clamp(min=0)  # [B, V]
    empty = diff.sum(-1, keepdim=True) <= 0  # [B, 1]
    return torch.where(empty, p, diff)


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


def draft_and_verify(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    make_proposer,
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None,
    stop: StopFn | None,
    stream: StreamCallback | None,
    compute: Compute,
    stats: dict | None = None,
    cache=None,
    accept=None,
) -> Decoded:
    """The draft-then-verify loop shared by every lossless drafter.

    `make_proposer(prompt_ids, compute, vocab)` builds the proposer (it may prefill a draft model;
    vocab is the width of the target's logits). Each
    step feeds [last, drafts...] per row to the target in one forward, applies `accept_drafts`,
    rolls the target cache back per row, and emits the accepted drafts plus the final token.
    `stats`, when given, receives "steps" (verify forwards), "row_steps" (verify steps summed over
    the rows still decoding) and "accepted" (drafts accepted by those rows), for benchmarks.
    `cache`: an empty target cache to decode in (a self-speculative proposer drafts in the target's
    own cache; default: a new one). `accept`: the acceptance rule, with `accept_drafts`' signature
    (default: `accept_drafts`, lossless; a lossy decoder passes its own rule and says so).
    """
    batch = len(prompt_ids)
    out = RowOutputs(batch, eos=model.eos_token_ids, max_new_tokens=max_new_tokens, stop=stop, stream=stream,
                     compute=compute)
    if not out.active or batch == 0:
        return out.decoded()
    tokens, active = out.tokens, out.active
    cache = model.new_cache() if cache is None else cache
    accept = accept_drafts if accept is None else accept
    logits, last = prefill_and_sample(model, prompt_ids, cache, out, sampling, generators)
    if not active:
        return out.decoded()
    proposer = make_proposer(prompt_ids, compute, logits.shape[-1])
    steps = row_steps = accepted_total = 0
    while active:
        row_steps += len(active)
        # never draft past a row's token budget (nor, so, past the context `check_length` allowed)
        # finished rows (EOS, stop) draft nothing: their verify columns would be wasted work
        limits = [max(0, max_new_tokens - len(tokens[r]) - 1) if r in active else 0 for r in range(batch)]
        drafts, draft_probs = proposer.propose(last, limits)
        drafts = [d[:limit] for d, limit in zip(drafts, limits)]
        start = cache.length
        verify_logits = feed_rows(model, cache, [[t] + list(d) for t, d in zip(last, drafts)])  # [B, W, V]
        compute.model_calls += 1
        num_accepted, final = accept(verify_logits, drafts, draft_probs, sampling, generators)
        num_accepted, final = num_accepted.tolist(), final.tolist()
        truncate_rows(cache, start, [1 + n for n in num_accepted])
        verified = getattr(proposer, "verified", None)
        if verified is not None:
            verified(verify_logits)  # Jacobi-style proposers draft from the verify pass itself
        proposer.accepted(num_accepted, final)
        width = max(num_accepted) + 1
        logp = torch.log_softmax(verify_logits[:, :width].float(), -1)  # [B, width, V]
        steps += 1
        for row in sorted(active):
            chosen = list(drafts[row][:num_accepted[row]]) + [final[row]]
            row_logp = logp[row, torch.arange(len(chosen)), torch.tensor(chosen)].tolist()
            accepted_total += num_accepted[row]
            for token, lp in zip(chosen, row_logp):
                out.emit(row, token, lp)
                if row not in active:
                    break
        last = final
    if stats is not None:
        stats["steps"] = stats.get("steps", 0) + steps
        stats["accepted"] = stats.get("accepted", 0) + accepted_total
        stats["row_steps"] = stats.get("row_steps", 0) + row_steps
    return out.decoded()


def _fit_vocab(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """Draft logits [..., V_d] -> [..., vocab]: ids the target lacks are dropped, missing ids get -inf."""
    size = logits.shape[-1]
    if size == vocab:
        return logits
    if size > vocab:
        return logits[..., :vocab]
    pad = logits.new_full((*logits.shape[:-1], vocab - size), float("-inf"))
    return torch.cat([logits, pad], dim=-1)


def draw_draft(logits: torch.Tensor, drafting: list[int], sampling: SamplingParams,
               generators) -> tuple[torch.Tensor, torch.Tensor]:
    """A drafter's next token per row [B] (drawn only for rows in `drafting`, each from its own
    generator) and its distribution q [B, V] from logits [B, V]. Greedy: argmax, and q = softmax
    (q then only feeds confidence rules)."""
    if sampling.greedy:
        return logits.argmax(-1), logits.softmax(-1)
    q = probs_from_logits(logits, sampling)  # [B, V]
    token = q.argmax(-1)  # placeholder for rows that stopped drafting (never used)
    if len(drafting) == len(token):
        return sample(q, generators), q
    gens = None if generators is None else [generators[r] for r in drafting]
    token[drafting] = sample(q[drafting], gens).to(token.device)
    return token, q


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
        return draw_draft(_fit_vocab(logits.float(), self.vocab), drafting, self.sampling, self.generators)

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


def check_draft_len(draft_len) -> int:
    if isinstance(draft_len, bool) or not isinstance(draft_len, int) or draft_len <= 0:
        raise ConfigError(f"draft_len must be a positive integer (tokens drafted per step), got {draft_len!r}")
    return draft_len


def check_same_tokenizer(model, draft) -> None:
    """ConfigError when the draft's tokenizer differs from the target's (their ids would not agree)."""
    tok_t, tok_d = getattr(model, "tokenizer", None), getattr(draft, "tokenizer", None)
    if tok_t is None or tok_d is None or tok_t is tok_d:
        return
    if tok_t.get_vocab() != tok_d.get_vocab():
        raise ConfigError(f"draft {getattr(draft, 'name', 'model')!r} uses a different tokenizer from target "
                          f"{getattr(model, 'name', 'model')!r}; speculative decoding needs the same token ids "
                          "(use a draft trained with the target's tokenizer, or --decoder prompt-lookup)")


def per_row(decoder, model, prompt_ids, *, generators, stream, stop, **kwargs) -> Decoded:
    """Run `decoder` one row at a time (for caches that cannot hide positions per row) and merge."""
    tokens, reasons, logprobs, compute = [], [], [], Compute()
    for row, prompt in enumerate(prompt_ids):
        out = decoder(model, [prompt], generators=None if generators is None else [generators[row]],
                      stream=None if stream is None else (lambda _r, t, row=row: stream(row, t)),
                      stop=None if stop is None else (lambda _r, toks, row=row: stop(row, toks)), **kwargs)
        tokens += out.tokens
        reasons += out.stop_reasons
        logprobs += out.logprobs
        compute.add_work(out.compute)
    return Decoded(tokens, reasons, logprobs, compute)


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
    if draft is None:
        raise ConfigError("decoder 'speculative' needs a draft model (--draft zoo:NAME or a folder)")
    check_same_tokenizer(model, draft)
    if len(prompt_ids) > 1 and not (can_hide(model.new_cache()) and can_hide(draft.new_cache())):
        return per_row(speculative, model, prompt_ids, generators=generators, stream=stream, stop=stop,
                       sampling=sampling, max_new_tokens=max_new_tokens, draft=draft, draft_len=draft_len,
                       stats=stats)
    compute = Compute()
    with compute.timed():
        def make_proposer(prompts, compute, vocab):
            return DraftModelProposer(draft, prompts, compute, sampling=sampling, generators=generators,
                                      draft_len=draft_len, vocab=vocab)

        return draft_and_verify(model, prompt_ids, make_proposer, sampling=sampling,
                                max_new_tokens=max_new_tokens, generators=generators, stop=stop, stream=stream,
                                compute=compute, stats=stats)


__all__ = ["DraftModelProposer", "Proposer", "accept_drafts", "draft_and_verify", "residual", "speculative"]
