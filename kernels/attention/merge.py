"""Partial attention states merged by log-sum-exp, and split-K attention built on that merge.

Rule: attention over a key set split into disjoint parts is recovered from each part's state
(out_i, lse_i): lse = log sum_i exp(lse_i) and out = sum_i exp(lse_i - lse) out_i. A part that saw
no key (lse_i = -inf) gets weight exactly 0 and its out_i is never read, so an empty part is the
identity whatever a kernel wrote there (FlashInfer's `merge_state`; Milakov & Gimelshein 2018,
*Online normalizer calculation for softmax*). Split-K is flash-decoding (Dao et al. 2023,
*Flash-Decoding for long-context inference*): cut the keys into S chunks, attend each chunk, merge.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .reference import attend_state, check_qkv, compute_dtype


def merge_attention_states(states: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Merge attention states over disjoint key sets into the state over their union.

    Args:
        states: one or more (out [..., Dv], lse [...]) pairs of equal shapes, e.g. out [B, H, T, Dv]
            and lse [B, H, T]. lse = -inf marks a query that saw no key in that part; its out is ignored.

    Returns:
        (out [..., Dv] in the first out's dtype, lse [...] in float32, or float64 when an input is).
        Where every part is empty, out is 0 and lse -inf.

    Raises:
        ValueError: on an empty sequence or parts whose shapes differ.
    """
    if len(states) == 0:
        raise ValueError("merge_attention_states needs at least one (out, lse) state, got none")
    out_shape, lse_shape = tuple(states[0][0].shape), tuple(states[0][1].shape)
    if out_shape[:-1] != lse_shape:
        raise ValueError(f"out [..., Dv] = {list(out_shape)} must match lse [...] = {list(lse_shape)}")
    for index, (out, lse) in enumerate(states):
        if tuple(out.shape) != out_shape or tuple(lse.shape) != lse_shape:
            raise ValueError(f"state {index} has out {list(out.shape)}, lse {list(lse.shape)}; state 0 has "
                             f"out {list(out_shape)}, lse {list(lse_shape)}")
    dtype = torch.float64 if any(t.dtype == torch.float64 for pair in states for t in pair) else torch.float32
    lses = torch.stack([lse.to(dtype) for _, lse in states])  # [N, ...]
    outs = torch.stack([out.to(dtype) for out, _ in states])  # [N, ..., Dv]
    peak = lses.amax(dim=0)  # [...]
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = torch.exp(lses - peak)  # [N, ...]; exactly 0 for an empty part
    total = weights.sum(dim=0)  # [...]
    seen = (weights > 0)[..., None]  # [N, ..., 1]: never read an empty part's out (it may be NaN)
    merged = torch.where(seen, weights[..., None] * outs, torch.zeros((), dtype=dtype, device=outs.device)).sum(0)
    merged = merged / torch.where(total > 0, total, torch.ones_like(total))[..., None]
    return merged.to(states[0][0].dtype), peak + torch.log(total)


def split_kv_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None, *,
                       num_splits: int, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Attention over the keys cut into `num_splits` chunks, each attended alone and merged by lse.

    Chunks are contiguous and differ in size by at most one position; with more splits than
    keys the surplus chunks are empty and merge as the identity. Equal to `reference_attention` up
    to rounding.

    Args:
        query: [B, Hq, T, D].
        key: [B, Hkv, S, D].
        value: [B, Hkv, S, Dv].
        mask: bool broadcastable to [B, Hq, T, S], True = attend; None = all.
        num_splits: number of KV chunks, >= 1.
        scale: score scale; None = 1 / sqrt(D).

    Returns:
        (out [B, Hq, T, Dv] in the query's dtype, lse [B, Hq, T]).

    Raises:
        ValueError: on a bad num_splits or shapes that do not fit together.
    """
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits must be an integer >= 1, got {num_splits!r}")
    check_qkv(query, key, value, mask)
    out, lse = split_state(query, key, value, mask, num_splits, scale)
    return out.to(query.dtype), lse


def split_state(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, num_splits: int,
                scale: float | None) -> tuple[Tensor, Tensor]:
    """Unchecked core of `split_kv_attention`: the merged state in the compute dtype."""
    if num_splits == 1:
        return attend_state(query, key, value, mask, scale)
    batch, heads, count = query.shape[:3]
    size = key.shape[2]
    full_mask = None if mask is None else mask.broadcast_to((batch, heads, count, size))
    states = []
    bounds = [size * split // num_splits for split in range(num_splits + 1)]
    for start, stop in zip(bounds[:-1], bounds[1:]):  # chunk sizes differ by at most one; some may be empty
        chunk_mask = None if full_mask is None else full_mask[..., start:stop]
        states.append(attend_state(query, key[:, :, start:stop], value[:, :, start:stop], chunk_mask, scale))
    out, lse = merge_attention_states(states)
    return out.to(compute_dtype(query.dtype)), lse
