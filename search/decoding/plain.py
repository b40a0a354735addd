"""Plain autoregressive decoding: one model forward per token, over the model's KV cache.

The baseline every accelerated decoder is measured against and must match in distribution. Rule:
prefill the (left-padded) prompts once, then repeat — sample token t ~ p(· | x_<t) with the row's
own generator, feed it, stop a row at EOS, at a stop condition, or at `max_new_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ponder.kernels.sampling import SamplingParams, sample_from_logits
from ponder.search.core import Compute, Decoded, SequenceModel, StreamCallback

StopFn = Callable[[int, list[int]], bool]  # (row, new tokens so far) -> stop this row now?


def prefill_shared(model: SequenceModel, prompt_ids: Sequence[Sequence[int]], cache) -> torch.Tensor:
    """Prefill `prompt_ids` into `cache`; N candidates of one prompt share a single prefill row.

    Returns next-token logits [B, V].
    """
    first = list(prompt_ids[0])
    if len(prompt_ids) > 1 and all(list(p) == first for p in prompt_ids[1:]):
        logits = model.prefill([first], cache)  # [1, V]
        cache.reorder(torch.zeros(len(prompt_ids), dtype=torch.long))  # every row reads the one prefill
        return logits.expand(len(prompt_ids), -1).contiguous()  # [B, V]
    return model.prefill(prompt_ids, cache)


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
    compute = Compute()
    with compute.timed():
        batch = len(prompt_ids)
        tokens: list[list[int]] = [[] for _ in range(batch)]
        logprobs: list[list[float]] = [[] for _ in range(batch)]
        reasons = ["length"] * batch
        if max_new_tokens <= 0 or batch == 0:
            return Decoded(tokens, reasons, logprobs, compute)
        eos = torch.tensor(sorted(model.eos_token_ids), dtype=torch.long)  # [E]
        cache = model.new_cache()
        logits = prefill_shared(model, prompt_ids, cache)  # [B, V]
        compute.model_calls += 1
        active = list(range(batch))  # rows still decoding
        for step in range(max_new_tokens):
            next_tok = sample_from_logits(logits, sampling, generators)  # [B]
            token_logp = torch.log_softmax(logits, dim=-1).gather(1, next_tok[:, None])[:, 0]  # [B]
            is_eos = torch.isin(next_tok, eos).tolist()  # [B]
            tok_list, logp_list = next_tok.tolist(), token_logp.tolist()
            still = []
            for row in active:
                compute.tokens += 1
                if is_eos[row]:
                    reasons[row] = "eos"
                    continue
                tokens[row].append(tok_list[row])
                logprobs[row].append(logp_list[row])
                if stream is not None:
                    stream(row, tok_list[row])
                if stop is not None and stop(row, tokens[row]):
                    reasons[row] = "stop"
                    continue
                still.append(row)
            active = still
            if step == max_new_tokens - 1 or not active:
                break
            # finished rows keep riding along (their tokens are ignored): the batch shape stays fixed
            logits = model.forward(next_tok[:, None], cache)[:, -1]  # [B, V]
            compute.model_calls += 1
    return Decoded(tokens, reasons, logprobs, compute)
