"""Entropy Adaptive Decoding (LOSSY): per token, the small model writes unless its entropy is high.

Simonds 2025, *Entropy Adaptive Decoding: Dynamic Model Switching for Efficient Inference*. Rule:
at each position the small model's next-token distribution q is computed; if its entropy H(q) is at
most h (nats) the small model's token is kept without any check, otherwise the large model
produces that token. The large model runs once over the small model's run of tokens and supplies
the next one (it also takes every `draft_len`-th token at the latest, so it never falls too far
behind). Nothing the small model wrote is ever rolled back, so the output is NOT distributed as the
large model's sampling (LOSSY; `--lossless` refuses it); h = 0 gives plain decoding of the large model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams, sample_from_logits
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.chain import (
    LoopStart,
    check_draft_len,
    check_same_tokenizer,
    draft_and_verify,
    require_draft,
)
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.speculative import DraftModelProposer


def entropy(q: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of q [B, V] -> [B]."""
    return -(q * q.clamp_min(1e-30).log()).sum(-1)


def keep_all(logits, drafts, draft_probs, sampling, generators):
    """EAD's acceptance: every small-model token stays; the large model samples the next one."""
    rows = torch.arange(logits.shape[0])
    num_accepted = torch.tensor([len(d) for d in drafts], dtype=torch.long)  # [B]
    return num_accepted, sample_from_logits(logits.cpu()[rows, num_accepted], sampling, generators)


def ead(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    draft_len: int = 10,
    entropy_threshold: float = 0.5,
    stats: dict | None = None,
) -> Decoded:
    """LOSSY: the draft (small) model writes the low-entropy tokens, the target (large) the rest.

    Args:
        model: the large model; prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`.
        draft: the small model (same tokenizer); required.
        draft_len: most small-model tokens in a row before the large model takes one.
        entropy_threshold: h ≥ 0 nats; a position whose small-model entropy exceeds h goes to the large model.
        stats: optional dict; receives "steps", "accepted", "row_steps".
    Returns:
        `Decoded` — not distributed as `model`'s sampling (h = 0: plain decoding of `model`).
    """
    draft_len = check_draft_len(draft_len)
    if isinstance(entropy_threshold, bool) or not isinstance(entropy_threshold, (int, float)) \
            or not entropy_threshold >= 0:
        raise ConfigError(f"entropy_threshold must be a number of nats >= 0, got {entropy_threshold!r}")
    require_draft("ead", draft, "a small model")
    check_same_tokenizer(model, draft)

    def make_proposer(start: LoopStart) -> DraftModelProposer:
        return DraftModelProposer(draft, start.prompt_ids, start.compute, sampling=sampling,
                                  generators=start.generators, draft_len=draft_len, vocab=start.vocab,
                                  stop_before=lambda q: entropy(q.float()) > entropy_threshold)

    return draft_and_verify(model, prompt_ids, make_proposer, accept=keep_all, sampling=sampling,
                            max_new_tokens=max_new_tokens, generators=generators, stop=stop, stream=stream,
                            stats=stats, draft=draft)


__all__ = ["ead", "entropy", "keep_all"]
