"""The draft-then-verify chain loop every chain drafter shares, and the pieces its decoders share.

The loop (`draft_and_verify`), per step: a *proposer* drafts up to k tokens per row (never past the
row's token budget); one target forward over [last, d_1..d_k] per row scores them (`feed_rows`); an
acceptance rule says how many drafts each row keeps and draws the token after them (lossless:
`speculative.accept_drafts`, the speculative-sampling rule of Leviathan et al. 2023 / Chen et al.
2023; a lossy decoder passes its own rule and says so); the target cache rolls back per row
(`truncate_rows`) and the kept tokens are emitted through `RowOutputs` (EOS / stop / length).

Caches that cannot hide rows (not a `RowRollbackCache`, the target's or the draft model's) can only
run rows that always keep the same number of tokens, so the loop runs such a batch one row at a time
(`one_row_at_a_time`) with every option, the proposer included, exactly as given: each row's output
is what it would be in a batch. A decoder therefore reads: check its options (the shared checks are
here), say how to build its proposer, run the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams, probs_from_logits, sample
from ponder.search.core import Compute, Decoded, SequenceCache, SequenceModel, StreamCallback
from ponder.search.core.capabilities import TokenizedModel, VerifiedHook, Vocabulary, display_name
from ponder.search.decoding.outputs import RowOutputs, StopFn, prefill_and_sample
from ponder.search.decoding.rollback import can_hide, feed_rows, truncate_rows


class Proposer(Protocol):
    """Supplies draft tokens for `draft_and_verify` (a `VerifiedHook` also reads every verify pass)."""

    def propose(self, last: list[int], limits: list[int]) -> tuple[list[list[int]], torch.Tensor | None]:
        """Given each row's last emitted token, return each row's drafts (at most draft_len and
        limits[r] tokens, may be empty) and their draft probabilities q [B, K, V] (K = longest
        draft), or None when the drafts are deterministic (q is then one-hot on each draft token)."""
        ...

    def accepted(self, num_accepted: list[int], final: list[int]) -> None:
        """Row r kept its first num_accepted[r] drafts, then `final[r]` (not yet fed anywhere)."""
        ...


@dataclass
class LoopStart:
    """What a draft loop hands `make_proposer` once the prompts are prefilled.

    `prompt_ids` and `generators` are the rows this run of the loop decodes: the whole batch, or a
    single row when the loop runs rows one at a time.
    """

    prompt_ids: Sequence[Sequence[int]]
    generators: list[torch.Generator] | None  # one per row of prompt_ids, or None (global RNG)
    compute: Compute  # where the proposer counts its draft calls
    vocab: int  # width of the target's logits
    cache: SequenceCache  # the target's cache, prefilled (a self-speculative proposer drafts in it)


MakeProposer = Callable[[LoopStart], object]
# (logits [B, W, V], drafts per row, q [B, K, V] or None, sampling, generators) -> (num_accepted [B], final [B])
ChainRule = Callable[[torch.Tensor, Sequence[Sequence[int]], "torch.Tensor | None", SamplingParams, object],
                     "tuple[torch.Tensor, torch.Tensor]"]
RunRows = Callable[[Sequence[Sequence[int]], "list[torch.Generator] | None", "StopFn | None",
                    "StreamCallback | None"], Decoded]


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p − q)) up to normalisation (sampling normalises): where to draw after a rejection.

    p, q: [B, V]. A row where p ≤ q everywhere (only possible by rounding, since a rejection needs
    p(d) < q(d)) falls back to p."""
    diff = (p - q).clamp(min=0)  # [B, V]
    empty = diff.sum(-1, keepdim=True) <= 0  # [B, 1]
    return torch.where(empty, p, diff)


# ---- rows one at a time, for caches without row rollback ----------------------------------------------


def rows_roll_back(*models: SequenceModel | None) -> bool:
    """Whether every given model's cache can hide rows (`RowRollbackCache`); None entries are skipped."""
    return all(can_hide(model.new_cache()) for model in models if model is not None)


def one_row_at_a_time(run: RunRows, prompt_ids: Sequence[Sequence[int]], *, generators, stop: StopFn | None,
                      stream: StreamCallback | None, compute: Compute) -> Decoded:
    """`run(prompts, generators, stop, stream)` on each row alone, merged into one `Decoded`.

    Row r runs with generators[r], and its stop / stream callbacks are called with row index r, so
    the merged output is the batch's. Every run counts into `compute` (the merged result's)."""
    tokens, reasons, logprobs = [], [], []
    for row, prompt in enumerate(prompt_ids):
        out = run([prompt], None if generators is None else [generators[row]],
                  None if stop is None else (lambda _r, toks, row=row: stop(row, toks)),
                  None if stream is None else (lambda _r, token, row=row: stream(row, token)))
        tokens += out.tokens
        reasons += out.stop_reasons
        logprobs += out.logprobs
    return Decoded(tokens, reasons, logprobs, compute)


def add_stats(stats: dict | None, **counts: int) -> None:
    """Add a loop's counts to `stats` (when given): benchmarks read steps / row_steps / accepted / ..."""
    if stats is not None:
        for key, value in counts.items():
            stats[key] = stats.get(key, 0) + value


# ---- the loop ---------------------------------------------------------------------------------------------


def draft_and_verify(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    make_proposer: MakeProposer,
    *,
    accept: ChainRule,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    stats: dict | None = None,
    draft: SequenceModel | None = None,
) -> Decoded:
    """The draft-then-verify loop shared by every chain drafter (see the module docstring).

    Args:
        model: the target; prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`.
        make_proposer: `LoopStart` -> a `Proposer`, called once per run of the loop after the prefill
            (once per row when the rows run one at a time).
        accept: the acceptance rule, `speculative.accept_drafts`' signature.
        stats: optional dict receiving "steps" (verify forwards), "row_steps" (verify steps summed over
            the rows still decoding) and "accepted" (drafts accepted by those rows).
        draft: a draft model whose own cache must also hide rows (None: only the target's is checked).
    Returns:
        `Decoded`; `compute.model_calls` counts target forwards, `draft_calls` what the proposer counted.
    """
    compute = Compute()
    with compute.timed():
        def run(prompts, gens, stop, stream):
            return _chain(model, prompts, make_proposer, accept=accept, sampling=sampling,
                          max_new_tokens=max_new_tokens, generators=gens, stop=stop, stream=stream, stats=stats,
                          compute=compute)

        if len(prompt_ids) > 1 and not rows_roll_back(model, draft):
            return one_row_at_a_time(run, prompt_ids, generators=generators, stop=stop, stream=stream,
                                     compute=compute)
        return run(prompt_ids, generators, stop, stream)


def open_loop(model: SequenceModel, prompt_ids, make_proposer: MakeProposer, *, sampling: SamplingParams,
              max_new_tokens: int, generators, stop, stream, compute: Compute):
    """What every draft-and-verify loop starts with: the rows' outputs, the prefill and its first sample,
    and the proposer built after it. Returns (out, cache, last tokens, proposer, its verified hook or None),
    or (out, None, None, None, None) when every row already finished (EOS / stop / length)."""
    out = RowOutputs(len(prompt_ids), eos=model.eos_token_ids, max_new_tokens=max_new_tokens, stop=stop,
                     stream=stream, compute=compute)
    if not out.active:
        return out, None, None, None, None
    cache = model.new_cache()
    logits, last = prefill_and_sample(model, prompt_ids, cache, out, sampling, generators)
    if not out.active:
        return out, None, None, None, None
    proposer = make_proposer(LoopStart(prompt_ids, generators, compute, logits.shape[-1], cache))
    return out, cache, last, proposer, proposer.verified if isinstance(proposer, VerifiedHook) else None


def _chain(model: SequenceModel, prompt_ids, make_proposer: MakeProposer, *, accept: ChainRule,
           sampling: SamplingParams, max_new_tokens: int, generators, stop, stream, stats, compute: Compute) -> Decoded:
    out, cache, last, proposer, hook = open_loop(model, prompt_ids, make_proposer, sampling=sampling,
                                                 max_new_tokens=max_new_tokens, generators=generators, stop=stop,
                                                 stream=stream, compute=compute)
    if proposer is None:
        return out.decoded()
    steps = row_steps = accepted_total = 0
    while out.active:
        row_steps += len(out.active)
        # never draft past a row's token budget (nor, so, past the context `check_length` allowed);
        # finished rows draft nothing: their verify columns would be wasted work
        limits = out.limits()
        drafts, draft_probs = proposer.propose(last, limits)
        drafts = [d[:limit] for d, limit in zip(drafts, limits)]
        start = cache.length
        verify_logits = feed_rows(model, cache, [[t] + list(d) for t, d in zip(last, drafts)])  # [B, W, V]
        compute.model_calls += 1
        num_accepted, final = accept(verify_logits, drafts, draft_probs, sampling, generators)
        num_accepted, final = num_accepted.tolist(), final.tolist()
        truncate_rows(cache, start, [1 + n for n in num_accepted])
        if hook is not None:
            hook(verify_logits)  # Jacobi-style proposers draft from the verify pass itself
        proposer.accepted(num_accepted, final)
        width = max(num_accepted) + 1
        logp = torch.log_softmax(verify_logits[:, :width].float(), -1)  # [B, width, V]
        steps += 1
        for row in sorted(out.active):
            chosen = list(drafts[row][:num_accepted[row]]) + [final[row]]
            row_logp = logp[row, torch.arange(len(chosen)), torch.tensor(chosen)].tolist()
            accepted_total += num_accepted[row]
            for token, lp in zip(chosen, row_logp):
                out.emit(row, token, lp)
                if row not in out.active:
                    break
        last = final
    add_stats(stats, steps=steps, accepted=accepted_total, row_steps=row_steps)
    return out.decoded()


# ---- drafting pieces shared by draft-model and self-speculative proposers -----------------------------------


def fit_vocab(logits: torch.Tensor, vocab: int) -> torch.Tensor:
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


# ---- option checks every draft decoder shares ---------------------------------------------------------------


def check_count(name: str, value, meaning: str, *, low: int = 1) -> int:
    """`value`, or a ConfigError naming it unless it is an integer >= `low` (`meaning`: what it counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        allowed = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(f"{name} must be {allowed} ({meaning}), got {value!r}")
    return value


def check_draft_len(draft_len) -> int:
    """`draft_len`, or a ConfigError unless it is a positive integer (tokens drafted per step)."""
    return check_count("draft_len", draft_len, "tokens drafted per step")


def require_draft(decoder: str, draft, role: str = "a draft model") -> None:
    """ConfigError when decoder `decoder`, which drafts with `role`, was given no draft."""
    if draft is None:
        raise ConfigError(f"decoder {decoder!r} needs {role} (--draft zoo:NAME or a folder)")


def refuse_draft(decoder: str, draft, drafts_from: str) -> None:
    """ConfigError when decoder `decoder`, whose drafts come `drafts_from`, was given a draft model."""
    if draft is not None:
        raise ConfigError(f"decoder {decoder!r} drafts {drafts_from} and takes no draft model; drop --draft, "
                          "or use --decoder speculative")


def check_same_tokenizer(model, draft) -> None:
    """ConfigError when the draft's tokenizer differs from the target's (their ids would not agree).

    Only `TokenizedModel`s whose tokenizers list a `Vocabulary` can be compared; others pass."""
    if not (isinstance(model, TokenizedModel) and isinstance(draft, TokenizedModel)):
        return
    tok_t, tok_d = model.tokenizer, draft.tokenizer
    if tok_t is tok_d or not (isinstance(tok_t, Vocabulary) and isinstance(tok_d, Vocabulary)):
        return
    if tok_t.get_vocab() != tok_d.get_vocab():
        raise ConfigError(f"draft {display_name(draft)!r} uses a different tokenizer from target "
                          f"{display_name(model)!r}; speculative decoding needs the same token ids "
                          "(use a draft trained with the target's tokenizer, or --decoder prompt-lookup)")


__all__ = ["ChainRule", "LoopStart", "MakeProposer", "Proposer", "add_stats", "check_count", "check_draft_len",
           "check_same_tokenizer", "draft_and_verify", "draw_draft", "fit_vocab", "one_row_at_a_time", "refuse_draft",
           "require_draft", "residual", "rows_roll_back"]
