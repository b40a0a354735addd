"""The Triton kernels behind `triton_decode.triton_attention`; this module imports triton at import time.

Kept apart from `triton_decode.py` so that the public function imports triton only when called, and
because triton's interpreter writes its own names into the globals of the module that defines a
kernel. `TRITON_INTERPRET` is read when `@triton.jit` runs, here and in triton's own library, so
this module is imported only once `triton_decode` has checked that both agree.

Loop bounds are `tl.constexpr`: runtime loop bounds break triton 3.5.1's interpreter with numpy >= 2.4.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def split_kv_partial_kernel(
    query_ptr, key_ptr, value_ptr, lengths_ptr, hidden_ptr, tree_ptr, part_out_ptr, part_lse_ptr,
    scale,
    stride_qb, stride_qh, stride_qt, stride_qd,  # query [B, Hq, T, D]
    stride_kb, stride_kh, stride_ks, stride_kd,  # key [B, Hkv, S, D]; stride_kb = 0 for the shared prefix
    stride_vb, stride_vh, stride_vs, stride_vd,  # value [B, Hkv, S, Dv]
    stride_hb, stride_hs,  # hidden [B, S] as uint8
    stride_tb, stride_ti, stride_tj,  # tree [B, T, T] as uint8
    stride_op, stride_ob, stride_oh, stride_ot, stride_od,  # partial out [splits, B, Hq, T, Dv] float32
    stride_lp, stride_lb, stride_lh, stride_lt,  # partial lse [splits, B, Hq, T] float32
    NUM_QUERIES: tl.constexpr,  # T
    NEW_IN_KV: tl.constexpr,  # T when the new tokens are the last T valid keys (the suffix), 0 for the prefix
    GROUP: tl.constexpr,  # query heads per key/value head
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,  # >= GROUP * NUM_QUERIES: the group's queries as one block
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCKS_PER_SPLIT: tl.constexpr,  # >= the BLOCK_N tiles of the longest split
    HAS_HIDDEN: tl.constexpr, HAS_TREE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """One (split, key/value head, row): the partial state (out, lse) of its queries over one KV chunk."""
    split = tl.program_id(0)
    kv_head = tl.program_id(1).to(tl.int64)
    row = tl.program_id(2).to(tl.int64)

    block = tl.arange(0, BLOCK_M)  # [M]: query-block slot m = head_in_group * T + query
    in_block = block < GROUP * NUM_QUERIES
    head = kv_head * GROUP + block // NUM_QUERIES  # [M]
    query_index = block % NUM_QUERIES  # [M]
    dims = tl.arange(0, BLOCK_D)
    value_dims = tl.arange(0, BLOCK_DV)
    q = tl.load(query_ptr + row * stride_qb + head[:, None] * stride_qh + query_index[:, None] * stride_qt
                + dims[None, :] * stride_qd, mask=in_block[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)

    length = tl.load(lengths_ptr + row)  # valid keys of this row
    first_new = length - NEW_IN_KV  # key position of new token 0
    # chunks of whole tiles: a row's chunks cover its own length, so short rows leave later splits empty
    # inline ceil-divisions and tl.full over tl.cdiv and tl.zeros: each call of a triton library function
    # costs the interpreter ~2 ms
    chunk = ((length + NUM_SPLITS - 1) // NUM_SPLITS + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    start = split * chunk
    stop = tl.minimum(start + chunk, length)

    peak = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max score
    total = tl.full([BLOCK_M], 0.0, tl.float32)  # running sum of exp(score - peak)
    acc = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)
    for tile in range(BLOCKS_PER_SPLIT):
        position = start + tile * BLOCK_N + tl.arange(0, BLOCK_N)  # [N]
        readable = position < stop
        if HAS_HIDDEN:
            hidden = tl.load(hidden_ptr + row * stride_hb + position * stride_hs, mask=readable, other=1)
            readable = readable & (hidden == 0)
        # keys/values never loaded where unreadable: NaN past a row's length or in hidden slots stays out
        k = tl.load(key_ptr + row * stride_kb + kv_head * stride_kh + position[:, None] * stride_ks
                    + dims[None, :] * stride_kd, mask=readable[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * scale  # [M, N]
        node = position - first_new  # [N]: which new token a key holds, when >= 0
        if HAS_TREE:
            tree = tl.load(tree_ptr + row * stride_tb + query_index[:, None] * stride_ti + node[None, :] * stride_tj,
                           mask=in_block[:, None] & (readable & (node >= 0))[None, :], other=0)  # [M, N]
            sees_new = tree != 0
        else:
            sees_new = node[None, :] <= query_index[:, None]  # the causal chain
        visible = in_block[:, None] & readable[None, :] & ((node < 0)[None, :] | sees_new)  # [M, N]
        scores = tl.where(visible, scores, float("-inf"))
        new_peak = tl.maximum(peak, tl.max(scores, 1))
        # a query that has seen nothing yet keeps peak -inf; shift by 0 so exp gives 0, not NaN
        shift = tl.where(new_peak == float("-inf"), 0.0, new_peak)
        rescale = tl.exp(peak - shift)
        weights = tl.exp(scores - shift[:, None])  # [M, N]; exactly 0 where not visible
        total = total * rescale + tl.sum(weights, 1)
        v = tl.load(value_ptr + row * stride_vb + kv_head * stride_vh + position[:, None] * stride_vs
                    + value_dims[None, :] * stride_vd, mask=readable[:, None] & (value_dims[None, :] < VALUE_DIM),
                    other=0.0)
        acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v, input_precision=INPUT_PRECISION)
        peak = new_peak

    seen = total > 0
    out = acc / tl.where(seen, total, 1.0)[:, None]
    lse = tl.where(seen, peak + tl.log(tl.where(seen, total, 1.0)), float("-inf"))
    tl.store(part_out_ptr + split * stride_op + row * stride_ob + head[:, None] * stride_oh
             + query_index[:, None] * stride_ot + value_dims[None, :] * stride_od, out,
             mask=in_block[:, None] & (value_dims[None, :] < VALUE_DIM))
    tl.store(part_lse_ptr + split * stride_lp + row * stride_lb + head * stride_lh + query_index * stride_lt, lse,
             mask=in_block)


@triton.jit
def merge_states_kernel(
    part_out_ptr, part_lse_ptr, out_ptr, lse_ptr,
    stride_op, stride_ob, stride_oh, stride_ot, stride_od,  # partial out [parts, B, Hq, T, Dv] float32
    stride_lp, stride_lb, stride_lh, stride_lt,  # partial lse [parts, B, Hq, T] float32
    stride_mb, stride_mh, stride_mt, stride_md,  # out [B, Hq, T, Dv]
    stride_sb, stride_sh, stride_st,  # lse [B, Hq, T] float32
    NUM_PARTS: tl.constexpr, BLOCK_P: tl.constexpr, NUM_QUERIES: tl.constexpr, BLOCK_T: tl.constexpr,
    VALUE_DIM: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One (head, row): merge each query's partial states by lse; an empty part (lse -inf) is never read.

    The T queries times Dv values are one flat axis, so every tile is 2-D; each query's lse is
    loaded once per value slot (the same address) and stored from slot 0 only.
    """
    head = tl.program_id(0).to(tl.int64)
    row = tl.program_id(1).to(tl.int64)
    parts = tl.arange(0, BLOCK_P)[:, None]  # [P, 1]
    flat = tl.arange(0, BLOCK_T * BLOCK_DV)  # [T*Dv]
    query = flat // BLOCK_DV
    value_dim = flat % BLOCK_DV
    in_range = (query < NUM_QUERIES) & (value_dim < VALUE_DIM)
    lse = tl.load(part_lse_ptr + parts * stride_lp + row * stride_lb + head * stride_lh + query[None, :] * stride_lt,
                  mask=(parts < NUM_PARTS) & in_range[None, :], other=float("-inf"))  # [P, T*Dv]
    peak = tl.max(lse, 0)  # [T*Dv]
    shift = tl.where(peak == float("-inf"), 0.0, peak)
    weights = tl.exp(lse - shift[None, :])  # [P, T*Dv]; exactly 0 for an empty part
    total = tl.sum(weights, 0)
    outs = tl.load(part_out_ptr + parts * stride_op + row * stride_ob + head * stride_oh
                   + (query * stride_ot + value_dim * stride_od)[None, :],
                   mask=(weights > 0) & in_range[None, :], other=0.0)  # [P, T*Dv]
    seen = total > 0
    merged = tl.sum(weights * outs, 0) / tl.where(seen, total, 1.0)  # [T*Dv]
    merged_lse = tl.where(seen, shift + tl.log(tl.where(seen, total, 1.0)), float("-inf"))
    tl.store(out_ptr + row * stride_mb + head * stride_mh + query * stride_mt + value_dim * stride_md,
             merged.to(out_ptr.dtype.element_ty), mask=in_range)
    tl.store(lse_ptr + row * stride_sb + head * stride_sh + query * stride_st, merged_lse,
             mask=in_range & (value_dim == 0))
