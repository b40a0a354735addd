"""Reference attention that also returns the log-sum-exp of every query's scores.

Rule: out = softmax(scale * q k^T + mask) v and lse = log sum_j exp(scale * q.k_j) over the keys
the mask allows (natural log), so partial states over disjoint key sets can be merged exactly (see
`merge.py`). A query that sees no key gets output 0 and lse = -inf, which makes it the identity of
that merge; torch's CPU flash kernel instead reports lse = 0 for such a row, so nothing here relies
on it. Grouped-query heads follow transformers' `repeat_kv` convention (query head h reads key/value
head h // (Hq / Hkv)) without repeating keys per query head: the query heads of a group are folded
into one block, the way FlashInfer and flash-decoding schedule GQA decode.

Computation runs in float64 for float64 inputs and float32 otherwise; keys or values that no query
of a row may see never reach the output, even when they hold NaN (stale cache, rolled back).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else (lse and partial outputs use it)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_qkv(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> None:
    """ValueError unless query [B, Hq, T, D], key [B, Hkv, S, D], value [B, Hkv, S, Dv] and mask fit.

    Hq must be a multiple of Hkv; mask (bool, True = attend) must broadcast to [B, Hq, T, S].
    """
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be [B, H, length, head_dim], got shape {list(tensor.shape)}")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}")
    batch, heads, count, head_dim = query.shape
    if key.shape[0] != batch or value.shape[0] != batch:
        raise ValueError(f"key and value batch {key.shape[0]}, {value.shape[0]} must equal the query's {batch}")
    if tuple(value.shape[:3]) != tuple(key.shape[:3]):
        raise ValueError(f"value [B, Hkv, S] = {list(value.shape[:3])} must match key's {list(key.shape[:3])}")
    if key.shape[3] != head_dim:
        raise ValueError(f"key head_dim {key.shape[3]} must equal the query's {head_dim}")
    kv_heads = key.shape[1]
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"query heads {heads} must be a multiple of key/value heads {kv_heads}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = attend), got {mask.dtype}")
        full = (batch, heads, count, key.shape[2])
        try:
            if torch.broadcast_shapes(mask.shape, full) != full:
                raise RuntimeError
        except RuntimeError:
            raise ValueError(f"mask of shape {list(mask.shape)} does not broadcast to [B, Hq, T, S] = "
                             f"{list(full)}") from None


def attend_state(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None,
                 scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Unchecked core of `reference_attention`: (out [B, Hq, T, Dv], lse [B, Hq, T]), both in compute_dtype.

    Partial states stay in the compute dtype so that merging them (split-K, cascade) loses nothing
    before the one final cast.
    """
    dtype = compute_dtype(query.dtype)
    batch, heads, count, head_dim = query.shape
    kv_heads, size = key.shape[1], key.shape[2]
    group = heads // kv_heads
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    if size == 0:  # an empty segment: the merge identity
        out = query.new_zeros((batch, heads, count, value.shape[3]), dtype=dtype)
        return out, torch.full((batch, heads, count), -math.inf, dtype=dtype, device=query.device)
    # [B, Hkv, g*T, D]: the g query heads of a key/value head as one block of queries
    q = query.to(dtype).reshape(batch, kv_heads, group * count, head_dim)
    k, v = key.to(dtype), value.to(dtype)  # [B, Hkv, S, D], [B, Hkv, S, Dv]
    scores = (q @ k.transpose(-1, -2)) * scale  # [B, Hkv, g*T, S]
    if mask is not None:
        allowed = mask.broadcast_to((batch, heads, count, size)).reshape(batch, kv_heads, group * count, size)
        scores = scores.masked_fill(~allowed, -math.inf)
        # a key no query of this block may see must not reach the output even as 0 * NaN
        v = v.masked_fill(~allowed.any(dim=2)[..., None], 0.0)
    peak = scores.amax(dim=-1, keepdim=True)  # [B, Hkv, g*T, 1]; -inf for a query that sees nothing
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = torch.exp(scores - peak)  # [B, Hkv, g*T, S]; exactly 0 where masked
    total = weights.sum(dim=-1, keepdim=True)  # [B, Hkv, g*T, 1]
    out = (weights @ v) / torch.where(total > 0, total, torch.ones_like(total))  # [B, Hkv, g*T, Dv]
    lse = (peak + torch.log(total)).squeeze(-1)  # log 0 = -inf for an empty query
    return out.reshape(batch, heads, count, -1), lse.reshape(batch, heads, count)


def reference_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None, *,
                        scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Softmax attention with its log-sum-exp, the yardstick every other attention path is tested against.

    Args:
        query: [B, Hq, T, D].
        key: [B, Hkv, S, D], Hq a multiple of Hkv (grouped-query heads).
        value: [B, Hkv, S, Dv].
        mask: bool broadcastable to [B, Hq, T, S], True where a query may see a key; None = all.
        scale: score scale; None = 1 / sqrt(D).

    Returns:
        (out [B, Hq, T, Dv] in the query's dtype, lse [B, Hq, T] in float32, or float64 for
        float64 inputs). A query that sees no key has out 0 and lse -inf.

    Raises:
        ValueError: on shapes, dtypes or a mask that do not fit together.
    """
    check_qkv(query, key, value, mask)
    out, lse = attend_state(query, key, value, mask, scale)
    return out.to(query.dtype), lse
