"""Cascade (shared-prefix) attention: the prompt's keys are read once for all rows, not once per row.

Rule: with N rows sharing a prompt, attention over [prefix ; row's suffix] splits into two disjoint
key sets. Every row's queries attend the single [1, Hkv, P, D] prefix copy together, as one block
of N*T queries; each row attends its own suffix under its plan (valid length, hidden positions,
tree); the two states are merged by log-sum-exp, which is exact (`merge.py`). This follows
FlashInfer's cascade attention (Ye et al. 2024, *Cascade Inference: Memory Bandwidth Efficient
Shared Prefix Batch Decoding*) and the check of vLLM's cascade test: it equals flat attention over
the concatenated keys with the plan's dense mask. Each segment is split into the plan's
`num_splits` KV chunks (flash-decoding) before merging.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .merge import merge_attention_states, split_state
from .plan import AttentionPlan
from .reference import check_qkv


def cascade_attention(query: Tensor, key: Tensor, value: Tensor, plan: AttentionPlan,
                      prefix_key: Tensor | None = None, prefix_value: Tensor | None = None, *,
                      scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Attention of each row's new tokens over the shared prefix and its own suffix, merged by lse.

    Args:
        query: [B, Hq, T, D], the new tokens' queries (B = plan.batch, T = plan.num_queries).
        key: [B, Hkv, S, D], each row's suffix keys, S = plan.kv_length, the new tokens included.
        value: [B, Hkv, S, Dv].
        plan: what each query may see (`AttentionPlan`).
        prefix_key: [1, Hkv, P, D], one copy of the shared prefix's keys (P = plan.prefix_length);
            required exactly when P > 0.
        prefix_value: [1, Hkv, P, Dv].
        scale: score scale; None = 1 / sqrt(D).

    Returns:
        (out [B, Hq, T, Dv] in the query's dtype, lse [B, Hq, T] in float32, float64 for float64
        inputs). A query that sees nothing has out 0 and lse -inf.

    Raises:
        ValueError: when a tensor's shape disagrees with the plan or with the other tensors.
    """
    check_attention_inputs(query, key, value, plan, prefix_key, prefix_value)
    mask = None if plan.sees_whole_suffix else plan.suffix_mask()[:, None]  # [B, 1, T, S]
    suffix = split_state(query, key, value, mask, plan.num_splits, scale)  # [B, Hq, T, Dv]
    if plan.prefix_length == 0:
        return suffix[0].to(query.dtype), suffix[1]
    batch, heads, count, head_dim = query.shape
    # all rows' queries as one block against the one prefix copy: [1, Hq, B*T, D]; no per-row K/V copy
    block = query.transpose(0, 1).reshape(1, heads, batch * count, head_dim)
    out, lse = split_state(block, prefix_key, prefix_value, None, plan.num_splits, scale)  # [1, Hq, B*T, *]
    out = out.reshape(heads, batch, count, -1).transpose(0, 1)  # [B, Hq, T, Dv]
    lse = lse.reshape(heads, batch, count).transpose(0, 1)  # [B, Hq, T]
    # rows outside the prefix were computed too (no host sync to pick them); their part becomes empty
    uses = plan.rows_with_prefix().to(lse.device)[:, None, None]  # [B, 1, 1]
    lse = torch.where(uses, lse, torch.full((), -math.inf, dtype=lse.dtype, device=lse.device))
    merged, merged_lse = merge_attention_states([(out, lse), suffix])
    return merged.to(query.dtype), merged_lse


def check_attention_inputs(query: Tensor, key: Tensor, value: Tensor, plan: AttentionPlan,
                           prefix_key: Tensor | None = None, prefix_value: Tensor | None = None) -> None:
    """ValueError unless the tensors fit the plan and each other: query [B, Hq, T, D] with B and T the
    plan's, key / value [B, Hkv, S, D / Dv] with S = plan.kv_length, one device, and a prefix
    [1, Hkv, P, D / Dv] given exactly when plan.prefix_length = P > 0. Every attention entry point
    (`cascade_attention`, `triton_attention`, `attend`) checks its inputs here."""
    if not isinstance(plan, AttentionPlan):
        raise ValueError(f"plan must be an AttentionPlan, got {type(plan).__name__}")
    if query.dim() != 4 or query.shape[0] != plan.batch or query.shape[2] != plan.num_queries:
        raise ValueError(f"query must be [B, Hq, T, D] with B = plan.batch = {plan.batch} and T = "
                         f"plan.num_queries = {plan.num_queries}, got shape {list(query.shape)}")
    if key.dim() != 4 or key.shape[2] != plan.kv_length:
        raise ValueError(f"key must be [B, Hkv, S, D] with S = plan.kv_length = {plan.kv_length}, "
                         f"got shape {list(key.shape)}")
    check_qkv(query, key, value)
    others = [tensor for tensor in (key, value, prefix_key, prefix_value) if tensor is not None]
    if any(tensor.device != query.device for tensor in others):
        raise ValueError(f"query, key and value (and the prefix) must share a device, got "
                         f"{[str(tensor.device) for tensor in (query, *others)]}")
    if plan.prefix_length == 0:
        if prefix_key is not None or prefix_value is not None:
            raise ValueError("prefix_key / prefix_value were given but plan.prefix_length is 0")
        return
    if prefix_key is None or prefix_value is None:
        raise ValueError(f"plan.prefix_length is {plan.prefix_length}: pass prefix_key and prefix_value "
                         f"[1, Hkv, {plan.prefix_length}, D]")
    if prefix_key.dim() != 4 or prefix_key.shape[0] != 1 or prefix_key.shape[2] != plan.prefix_length:
        raise ValueError(f"prefix_key must be [1, Hkv, P, D] with P = plan.prefix_length = {plan.prefix_length}, "
                         f"got shape {list(prefix_key.shape)}")
    if prefix_key.shape[1] != key.shape[1]:
        raise ValueError(f"prefix key/value heads {prefix_key.shape[1]} must equal the suffix's {key.shape[1]}")
    check_qkv(query[:1], prefix_key, prefix_value)
    if prefix_value.shape[3] != value.shape[3]:
        raise ValueError(f"prefix_value head_dim {prefix_value.shape[3]} must equal value's {value.shape[3]}")
