"""Recycled Attention decoding: plain sampling whose attention is full only every few steps.

Xu, Gupta, Ainslie, Chen and Lee 2024, *Recycled Attention: Efficient inference for long-context
language models*. Rule: decode as plain decoding does, one token per forward, but every layer runs
full attention only every `stride` forwards (and on the prefill); each full step keeps, per row and
key/value head, the `keep` key positions with the most attention mass, and the forwards in between
attend only those positions plus the tokens generated since. The kernel is
`ponder.kernels.attention.recycled.RecycledAttention`; a model offers it through the
`RecyclingModel` capability. Lossy: the output is not plain sampling's unless `keep` covers every
position (refused under ``--lossless``). Departure: the first `dense_layers` layers (default 2)
always attend in full, as Quest keeps its first two layers dense.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.errors import ConfigError, check_int
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.core.capabilities import RecyclingModel, display_name
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.plain import plain


def recycled(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    stride: int = 8,
    keep: int = 256,
    dense_layers: int = 2,
) -> Decoded:
    """Plain decoding under Recycled Attention.

    Args:
        model: a `SequenceModel` that is a `RecyclingModel` (a text model whose attention routes
            through transformers' registry).
        stride: forwards between full-attention steps (1 = every step full: exact).
        keep: key positions each row keeps per key/value head between full steps (the paper's K; not
            named top_k, which is the sampling filter's).
        dense_layers: the first layers, always attended in full (a departure from the paper, which
            recycles every layer: as Quest does, ponder keeps the first two dense by default, since a
            small model's early layers attend too diffusely for any top-k; 0 = the paper's rule).
        draft: refused (Recycled Attention has no draft model).
        Other arguments as for `plain`.
    """
    check_int("stride", stride, what="forwards between full-attention steps")
    check_int("keep", keep, what="kept key positions")
    check_int("dense_layers", dense_layers, minimum=0, what="layers always attended in full")
    if draft is not None:
        raise ConfigError("decoder 'recycled' takes no draft model; drop --draft")
    if not isinstance(model, RecyclingModel):
        raise ConfigError(f"decoder 'recycled' needs a model that runs Recycled Attention (a text model whose "
                          f"attention routes through transformers' registry); {display_name(model)!r} does not")
    with model.recycling(stride=stride, top_k=keep, dense_layers=dense_layers):
        return plain(model, prompt_ids, sampling=sampling, max_new_tokens=max_new_tokens, generators=generators,
                     stop=stop, stream=stream)


__all__ = ["recycled"]
