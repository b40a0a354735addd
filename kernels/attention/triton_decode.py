"""Split-K decode attention in Triton: flash-decoding over an `AttentionPlan`.

Rule (Dao et al. 2023, *Flash-Decoding for long-context inference*): decoding has few queries and
many keys, so parallelise over the keys. Each program takes one (row, key/value head, split): the
group's query heads times the T new tokens as one block of queries, attending one contiguous chunk
of the row's valid keys with an online softmax, and writes a partial state (out, lse); a second
kernel merges a query's partial states by log-sum-exp, exactly as `merge_attention_states`. This is
plain fixed-split flash-decoding with a separate merge, not Lean Attention's stream-K schedule.

Visibility is the plan's (`AttentionPlan.suffix_mask`): per-row valid lengths, hidden positions and
the tree among the new tokens are applied inside the kernel, and keys or values at positions a row
may not read are never loaded, so NaN there cannot reach the output. A shared prefix is attended by
the same kernel with a zero batch stride (every row reads the one copy: correct, but each row
still reads it from memory, unlike cascade attention's single pass) and merged with the suffix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .cascade import check_attention_inputs
from .plan import AttentionPlan

MAX_BLOCK_N = 64  # keys per tile; smaller for short caches so a chunk is not mostly padding

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


def _power_of_two(value: int) -> int:
    """The smallest power of two >= value (>= 1)."""
    return 1 << max(value - 1, 0).bit_length()


def _cdiv(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _load_kernels():
    """The kernel module, once triton's own library is known to be built for the mode TRITON_INTERPRET asks."""
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    # triton decorates its library (tl.sum, tl.max, ...) when first imported, for the interpreter or
    # the compiler as TRITON_INTERPRET said then; kernels built for the other mode cannot call it
    interpreting = bool(triton.knobs.runtime.interpret)
    if isinstance(tl.sum, InterpretedFunction) != interpreting:
        now, then = ("set", "unset") if interpreting else ("unset", "set")
        raise RuntimeError(f"TRITON_INTERPRET is {now} now but was {then} when triton was first imported in this "
                           f"process; set it before the first `import triton`")
    from . import _triton_decode_kernels as kernels

    return kernels


def _check_inputs(query: Tensor, key: Tensor, value: Tensor, plan: AttentionPlan, prefix_key: Tensor | None,
                  prefix_value: Tensor | None) -> None:
    """ValueError unless the tensors fit the plan and each other (`check_attention_inputs`) in a dtype
    the kernel takes."""
    check_attention_inputs(query, key, value, plan, prefix_key, prefix_value)
    if query.dtype not in _SUPPORTED:
        raise ValueError(f"triton_attention takes float16, bfloat16 or float32 tensors, got {query.dtype} "
                         f"(reference_attention computes float64)")


def triton_attention(query: Tensor, key: Tensor, value: Tensor, plan: AttentionPlan,
                     prefix_key: Tensor | None = None, prefix_value: Tensor | None = None, *,
                     scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Attention of each row's new tokens under `plan`, split into plan.num_splits KV chunks (flash-decoding).

    Imports triton when called. Runs on CUDA tensors, or on the CPU under the Triton interpreter
    (`TRITON_INTERPRET=1` in the environment before triton is first imported), which is how the CPU
    tests run it. Forward only: no autograd.

    Args:
        query: [B, Hq, T, D], the new tokens' queries (B = plan.batch, T = plan.num_queries);
            float16, bfloat16 or float32; any strides.
        key: [B, Hkv, S, D], each row's suffix keys, S = plan.kv_length, the new tokens the last T
            of its lengths[b] valid positions; Hq a multiple of Hkv (grouped-query heads).
        value: [B, Hkv, S, Dv].
        plan: what each query may see (`AttentionPlan`): lengths, hidden, tree, prefix rows, num_splits.
        prefix_key: [1, Hkv, P, D], the shared prefix's keys (P = plan.prefix_length); required
            exactly when P > 0.
        prefix_value: [1, Hkv, P, Dv].
        scale: score scale; None = 1 / sqrt(D).

    Returns:
        (out [B, Hq, T, Dv] in the query's dtype, lse [B, Hq, T] float32, natural log). A query
        that sees nothing has out 0 and lse -inf.

    Raises:
        ValueError: when a tensor disagrees with the plan or the others, for an unsupported dtype,
            or for tensors off CUDA without the interpreter.
    """
    _check_inputs(query, key, value, plan, prefix_key, prefix_value)
    import triton

    if not triton.knobs.runtime.interpret and query.device.type != "cuda":
        raise ValueError(f"triton_attention runs on CUDA tensors, got device {query.device}; set "
                         f"TRITON_INTERPRET=1 to run the Triton interpreter on the CPU")
    kernels = _load_kernels()
    device = query.device
    batch, heads, count, head_dim = query.shape
    kv_heads, value_dim = key.shape[1], value.shape[3]
    group = heads // kv_heads
    splits = plan.num_splits
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    segments = 2 if plan.prefix_length else 1
    part_out = torch.empty((segments * splits, batch, heads, count, value_dim), dtype=torch.float32,
                           device=device)  # [parts, B, Hq, T, Dv]
    part_lse = torch.empty((segments * splits, batch, heads, count), dtype=torch.float32, device=device)
    common = {
        "NUM_QUERIES": count, "GROUP": group, "HEAD_DIM": head_dim, "VALUE_DIM": value_dim,
        "BLOCK_M": max(16, _power_of_two(group * count)),  # tl.dot needs every tile side >= 16
        "BLOCK_D": max(16, _power_of_two(head_dim)), "BLOCK_DV": max(16, _power_of_two(value_dim)),
        "NUM_SPLITS": splits,
        "INPUT_PRECISION": "ieee" if query.dtype == torch.float32 else None,  # float32 without tf32 rounding
    }

    def launch(key: Tensor, value: Tensor, lengths: Tensor, hidden: Tensor | None, tree: Tensor | None,
               new_in_kv: int, kv_batch_stride: tuple[int, int], parts: slice) -> None:
        size = key.shape[2]
        chunk = _cdiv(size, splits)
        block_n = min(MAX_BLOCK_N, max(16, _power_of_two(chunk)))
        # constexpr loop bound (the interpreter needs one); a power of two so a growing cache compiles
        # O(log S) variants on the GPU, the surplus tiles being fully masked
        blocks_per_split = _power_of_two(_cdiv(chunk, block_n))
        hidden_arg = lengths if hidden is None else hidden.to(device).view(torch.uint8)  # [B, S]
        tree_arg = lengths if tree is None else tree.to(device).view(torch.uint8)  # [B, T, T]
        hidden_strides = (0, 0) if hidden is None else hidden_arg.stride()
        tree_strides = (0, 0, 0) if tree is None else tree_arg.stride()
        out, lse = part_out[parts], part_lse[parts]
        kernels.split_kv_partial_kernel[(splits, kv_heads, batch)](
            query, key, value, lengths, hidden_arg, tree_arg, out, lse, scale,
            *query.stride(), kv_batch_stride[0], *key.stride()[1:], kv_batch_stride[1], *value.stride()[1:],
            *hidden_strides, *tree_strides, *out.stride(), *lse.stride(),
            NEW_IN_KV=new_in_kv, BLOCK_N=block_n, BLOCKS_PER_SPLIT=blocks_per_split,
            HAS_HIDDEN=hidden is not None, HAS_TREE=tree is not None, **common)

    lengths = plan.lengths.to(device)  # [B]
    launch(key, value, lengths, plan.hidden, plan.tree, count, (key.stride(0), value.stride(0)), slice(0, splits))
    if plan.prefix_length:
        # every row reads the one prefix copy (batch stride 0); rows without the prefix get length 0
        prefix_lengths = torch.where(plan.rows_with_prefix().to(device), plan.prefix_length, 0).to(lengths.dtype)
        launch(prefix_key, prefix_value, prefix_lengths, None, None, 0, (0, 0), slice(splits, 2 * splits))
    if part_out.shape[0] == 1:
        return part_out[0].to(query.dtype), part_lse[0]
    out = torch.empty((batch, heads, count, value_dim), dtype=query.dtype, device=device)
    lse = torch.empty((batch, heads, count), dtype=torch.float32, device=device)
    kernels.merge_states_kernel[(heads, batch)](
        part_out, part_lse, out, lse, *part_out.stride(), *part_lse.stride(), *out.stride(), *lse.stride(),
        NUM_PARTS=part_out.shape[0], BLOCK_P=_power_of_two(part_out.shape[0]), NUM_QUERIES=count,
        BLOCK_T=_power_of_two(count), VALUE_DIM=value_dim, BLOCK_DV=_power_of_two(value_dim))
    return out, lse
