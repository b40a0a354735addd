"""Plain autoregressive decoding: one model forward per token, over the model's KV cache.

The baseline every accelerated decoder is measured against and must match in distribution. Rule:
prefill the (left-padded) prompts once, then repeat — sample token t ~ p(· | x_<t) with the row's
own generator, feed it, stop a row at EOS, at a stop condition, or at `max_new_tokens`. Called inside
`RunningBatch.map` (continuous batching), the rows join that running batch instead, by the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.kernels.sampling import SamplingParams, sample_from_logits
from ponder.search.core import Compute, Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.continuous import current_batch
from ponder.search.decoding.outputs import RowOutputs, StopFn, prefill_shared


def plain(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    **options,
) -> Decoded:
    """Decode every row of `prompt_ids` one token per model forward.

    Args:
        model: the `SequenceModel` to sample from.
        prompt_ids: B prompts as token id lists (lengths may differ; the model left-pads).
        sampling: temperature / top-k / top-p / min-p; temperature 0 is greedy.
        max_new_tokens: most tokens emitted per row.
        generators: one generator per row (candidate seeding); None uses the global RNG.
        stop: optional per-row stop test, called after each emitted token.
        stream: optional callback(row, token) for every emitted token, in order.
        draft: unused (plain decoding has no draft); accepted so every decoder shares one signature.
    Returns:
        `Decoded` with each row's new tokens (EOS excluded), stop reason, log-probs and compute.
    """
    if options:
        raise TypeError(f"plain decoding takes no options {sorted(options)}")
    batch = current_batch()
    if batch is not None:  # inside a running batch (continuous batching across requests): join it
        decoded = batch.submit(model, prompt_ids, sampling=sampling, max_new_tokens=max_new_tokens,
                               generators=generators, stop=stop, stream=stream)
        if decoded is not None:
            return decoded
    compute = Compute()
    with compute.timed():
        out = RowOutputs(len(prompt_ids), eos=model.eos_token_ids, max_new_tokens=max_new_tokens, stop=stop,
                         stream=stream, compute=compute)
        if not out.active:
            return out.decoded()
        cache = model.new_cache()
        logits = prefill_shared(model, prompt_ids, cache)  # [B, V]
        compute.model_calls += 1
        sample_rows(model, cache, logits, out, sampling, generators)
        return out.decoded()


def sample_rows(model: SequenceModel, cache, logits: torch.Tensor, out: RowOutputs, sampling: SamplingParams,
                generators: list[torch.Generator] | None) -> list[list[bool]]:
    """Plain decoding's loop: from next-token logits [B, V], sample, emit and feed until no row of
    `out` is active (model calls are added to `out.compute`).

    Finished rows keep riding along (their tokens are ignored), so the batch shape stays fixed.
    Returns, for each forward fed, which rows' fed token was a real one: a row's last emitted token
    is fed (or not) with the riders, so it counts as not real and the cache holds, per row, its
    tokens but the last (what a step search resumes from).
    """
    real_tokens: list[list[bool]] = []
    while True:
        next_tok = sample_from_logits(logits, sampling, generators)  # [B]
        token_logp = torch.log_softmax(logits, dim=-1).gather(1, next_tok[:, None])[:, 0]  # [B]
        tok_list, logp_list = next_tok.tolist(), token_logp.tolist()
        for row in sorted(out.active):
            out.emit(row, tok_list[row], logp_list[row])  # EOS / stop / max_new_tokens end the row
        if not out.active:
            return real_tokens
        real_tokens.append([row in out.active for row in range(len(tok_list))])
        logits = model.forward(next_tok[:, None], cache)[:, -1]  # [B, V]
        out.compute.model_calls += 1


__all__ = ["StopFn", "plain", "prefill_shared", "sample_rows"]
