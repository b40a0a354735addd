"""Big Little Decoder (LOSSY): the small model decodes until unsure, the big model takes over and rolls back.

Kim, Mangalam, Moon, Malik, Mahoney, Gholami and Keutzer 2023, *Speculative Decoding with Big
Little Decoder*. Rule: the small model generates tokens while its top probability max q ≥ α
(fallback threshold); at the first token where it falls below α (or after `draft_len` tokens) the
big model runs once over everything the small model wrote and supplies the next token itself.
Rollback: the first small-model token d_j that the big model finds unlikely, −log p_j(d_j) > β
(rollback threshold), is replaced by the big model's own token there and everything after it is
dropped. Tokens the big model never overrules stay, so the output is NOT distributed as the big
model's sampling (LOSSY; `--lossless` refuses it) — it trades fidelity for fewer big-model calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams, probs_from_logits, sample_from_logits
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


def big_probs(logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """The big model's distributions [B, W, V] from logits [B, W, V]: the sampling settings' p, or
    softmax when greedy (the thresholds then read the untempered probabilities)."""
    batch, width, vocab = logits.shape
    if sampling.greedy:
        return logits.float().softmax(-1)
    return probs_from_logits(logits.reshape(-1, vocab).float(), sampling).view(batch, width, vocab)


def draft_ids(drafts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Drafts as a padded id tensor [B, K] and a validity mask [B, K]."""
    longest = max((len(d) for d in drafts), default=0)
    ids = torch.zeros((len(drafts), longest), dtype=torch.long)
    for row, tokens in enumerate(drafts):
        ids[row, :len(tokens)] = torch.as_tensor(list(tokens), dtype=torch.long)
    valid = torch.arange(longest)[None, :] < torch.tensor([len(d) for d in drafts])[:, None]
    return ids, valid


def rollback_rule(beta: float):
    """BiLD's rollback as an `accept_drafts`-shaped rule: keep d_j while −log p_j(d_j) ≤ β, then the
    big model's token (sampled from p, argmax when greedy) at the first refused or bonus position."""

    def accept(logits, drafts, draft_probs, sampling, generators):
        logits = logits.cpu()
        rows = torch.arange(logits.shape[0])
        ids, valid = draft_ids(drafts)  # [B, K]
        if ids.shape[1] == 0:
            return torch.zeros(len(drafts), dtype=torch.long), sample_from_logits(logits[:, 0], sampling, generators)
        p = big_probs(logits[:, :ids.shape[1]], sampling)  # [B, K, V]
        nll = -p.gather(2, ids[..., None])[..., 0].clamp_min(1e-30).log()  # [B, K]
        num_accepted = ((nll <= beta) & valid).long().cumprod(1).sum(1)  # [B]
        return num_accepted, sample_from_logits(logits[rows, num_accepted], sampling, generators)

    return accept


def bild(
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
    fallback: float = 0.6,
    rollback: float = 3.0,
    stats: dict | None = None,
) -> Decoded:
    """LOSSY: the draft (small) model writes, the target (big) model falls in and rolls back (BiLD).

    Args:
        model: the big model; prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`.
        draft: the small model (same tokenizer); required.
        draft_len: most small-model tokens between two big-model calls.
        fallback: α in (0, 1]; the big model takes over at a token whose small-model top probability is below α.
        rollback: β ≥ 0 (nats); a small-model token with −log p_big > β is replaced by the big model's.
        stats: optional dict; receives "steps", "accepted", "row_steps".
    Returns:
        `Decoded` — not distributed as `model`'s sampling (fallback 1 or rollback 0: every token is
        the big model's, as in plain decoding).
    """
    draft_len = check_draft_len(draft_len)
    if isinstance(fallback, bool) or not isinstance(fallback, (int, float)) or not 0 < fallback <= 1:
        raise ConfigError(f"fallback must be in (0, 1] (the small model's top probability below which the big "
                          f"model takes over), got {fallback!r}")
    if isinstance(rollback, bool) or not isinstance(rollback, (int, float)) or not rollback >= 0:
        raise ConfigError(f"rollback must be a number of nats >= 0 (−log p_big of a small-model token above which it "
                          f"is replaced), got {rollback!r}")
    require_draft("bild", draft, "a small model")
    check_same_tokenizer(model, draft)

    def make_proposer(start: LoopStart) -> DraftModelProposer:
        return DraftModelProposer(draft, start.prompt_ids, start.compute, sampling=sampling,
                                  generators=start.generators, draft_len=draft_len, vocab=start.vocab,
                                  stop_before=lambda q: q.max(-1).values < fallback)

    return draft_and_verify(model, prompt_ids, make_proposer, accept=rollback_rule(float(rollback)), sampling=sampling,
                            max_new_tokens=max_new_tokens, generators=generators, stop=stop, stream=stream,
                            stats=stats, draft=draft)


__all__ = ["big_probs", "bild", "draft_ids", "rollback_rule"]
