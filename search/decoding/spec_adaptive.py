"""Speculative sampling with an adaptive draft length: stop drafting when a rejection gets likely.

Huang, Parthasarathi, Li and Li 2024, *SpecDec++: Boosting Speculative Decoding via Adaptive
Candidate Lengths*. Rule: draft token by token and stop once the predicted probability that at
least one drafted token will be rejected, 1 − Π_j a_j, exceeds a threshold h; a_j, the predicted
acceptance of draft token j, is here the draft's own probability of it, q_j(d_j) (SpecDec++ trains
a small acceptance head instead — not built yet). Each row of a batch stops on its own. The drafts
then go through the unchanged verification rule of `speculative.py`, so the output distribution is
exactly plain sampling's (the draft length may depend on anything the draft has seen).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Compute, Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.plain import StopFn
from ponder.search.decoding.rollback import can_hide
from ponder.search.decoding.speculative import (
    DraftModelProposer,
    check_draft_len,
    check_same_tokenizer,
    draft_and_verify,
    per_row,
)


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
    stats: dict | None = None,
) -> Decoded:
    """Lossless speculative sampling whose per-row draft length follows the draft's confidence.

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream, draft, stats: as in
            `speculative`.
        draft_len: the most tokens drafted per step.
        threshold: h in (0, 1); a row stops drafting once 1 − Π q(d) > h (lower: shorter drafts).
    Returns:
        `Decoded`, distributed exactly as plain sampling from `model`; greedy equals plain greedy.
    """
    draft_len = check_draft_len(draft_len)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ConfigError(f"threshold must be in (0, 1) (stop once P(any rejection) exceeds it), got {threshold!r}")
    if draft is None:
        raise ConfigError("decoder 'spec-adaptive' needs a draft model (--draft zoo:NAME or a folder)")
    check_same_tokenizer(model, draft)
    if len(prompt_ids) > 1 and not (can_hide(model.new_cache()) and can_hide(draft.new_cache())):
        return per_row(spec_adaptive, model, prompt_ids, generators=generators, stream=stream, stop=stop,
                       sampling=sampling, max_new_tokens=max_new_tokens, draft=draft, draft_len=draft_len,
                       threshold=threshold, stats=stats)
    compute = Compute()
    with compute.timed():
        def make_proposer(prompts, compute, vocab):
            return DraftModelProposer(draft, prompts, compute, sampling=sampling, generators=generators,
                                      draft_len=draft_len, vocab=vocab, stop_above=float(threshold))

        return draft_and_verify(model, prompt_ids, make_proposer, sampling=sampling,
                                max_new_tokens=max_new_tokens, generators=generators, stop=stop, stream=stream,
                                compute=compute, stats=stats)
