"""What every decoder keeps per row: emitted tokens, log-probs, stop reasons, who is still decoding.

The one place for the stopping rules: EOS ends a row (not emitted), a stop test or `max_new_tokens`
ends it after the token. Plain decoding and the chain and tree loops all emit through `RowOutputs`,
so a token ends a row the same way whichever decoder produced it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ponder.kernels.sampling import SamplingParams, sample_from_logits
from ponder.search.core import Compute, Decoded, SequenceModel, StreamCallback
from ponder.search.core.capabilities import SharedPrefixCache

StopFn = Callable[[int, list[int]], bool]  # (row, new tokens so far) -> stop this row now?


def prefill_shared(model: SequenceModel, prompt_ids: Sequence[Sequence[int]], cache) -> torch.Tensor:
    """Prefill `prompt_ids` into `cache`; N candidates of one prompt share a single prefill row.

    Returns next-token logits [B, V].
    """
    first = list(prompt_ids[0])
    if len(prompt_ids) > 1 and all(list(p) == first for p in prompt_ids[1:]):
        logits = model.prefill([first], cache)  # [1, V]
        if isinstance(cache, SharedPrefixCache):
            cache.share_prefix(len(prompt_ids))  # every row reads the one copy
        else:
            cache.reorder(torch.zeros(len(prompt_ids), dtype=torch.long))  # every row gets a copy of the one prefill
        return logits.expand(len(prompt_ids), -1).contiguous()  # [B, V]
    return model.prefill(prompt_ids, cache)


class RowOutputs:
    """Per-row outputs of a decoder; `emit` applies the EOS / stop / length rules."""

    def __init__(self, batch: int, *, eos, max_new_tokens: int, stop: StopFn | None,
                 stream: StreamCallback | None, compute: Compute):
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.logprobs: list[list[float]] = [[] for _ in range(batch)]
        self.reasons = ["length"] * batch
        self.active = set(range(batch)) if max_new_tokens > 0 else set()
        self.eos, self.max_new_tokens, self.stop, self.stream, self.compute = eos, max_new_tokens, stop, stream, compute

    def emit(self, row: int, token: int, logp: float) -> None:
        """Row `row` emits `token` (log-prob `logp` under the model); may end the row."""
        self.compute.tokens += 1
        if token in self.eos:
            self.reasons[row] = "eos"
            self.active.discard(row)
            return
        self.tokens[row].append(token)
        self.logprobs[row].append(logp)
        if self.stream is not None:
            self.stream(row, token)
        if self.stop is not None and self.stop(row, self.tokens[row]):
            self.reasons[row] = "stop"
            self.active.discard(row)
        elif len(self.tokens[row]) >= self.max_new_tokens:
            self.active.discard(row)

    def limits(self) -> list[int]:
        """Draft tokens each row may still take: its remaining budget minus the token drawn after the
        drafts (0 for finished rows), so drafts never run past the context `check_length` allowed."""
        return [max(0, self.max_new_tokens - len(t) - 1) if row in self.active else 0
                for row, t in enumerate(self.tokens)]

    def decoded(self) -> Decoded:
        """The rows' outputs so far as a `Decoded`."""
        return Decoded(self.tokens, self.reasons, self.logprobs, self.compute)


def prefill_and_sample(model: SequenceModel, prompt_ids: Sequence[Sequence[int]], cache, out: RowOutputs,
                       sampling: SamplingParams, generators) -> tuple[torch.Tensor, list[int]]:
    """Prefill the prompts, draw and emit every row's first token. Returns (logits [B, V], first tokens)."""
    logits = prefill_shared(model, prompt_ids, cache)  # [B, V]
    out.compute.model_calls += 1
    first = sample_from_logits(logits, sampling, generators)  # [B]
    first_logp = torch.log_softmax(logits.float(), -1).gather(1, first[:, None].to(logits.device))[:, 0]
    first, first_logp = first.tolist(), first_logp.tolist()
    for row in range(len(first)):
        out.emit(row, first[row], first_logp[row])
    return logits, first
