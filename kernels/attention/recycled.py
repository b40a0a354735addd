"""Recycled Attention: full attention every few decode steps, and in between only the keys it favoured.

Rule (Xu et al. 2024, *Recycled Attention: Efficient inference for long-context language models*):
attention runs in full every `stride` decode steps, and each row then keeps, per key/value head, the
`top_k` key positions with the largest attention mass (the softmax weights of the row's newest query
— at a prefill, the prompt's last token — summed over the query heads that share the key/value head;
the paper's choice, since the next decode steps continue from that query). The full step itself is
computed by the named `attend` backend. The steps in between attend only those kept
positions plus every position appended since the last full step (the recent tokens), still under the
plan: hidden positions, the tree and the lengths of the step at hand. Lossy by design; exact when
top_k is at least the number of key positions.

Positions are logical indices into [shared prefix ; row's suffix] and never move between steps (the
cache appends at the end, P is fixed), so a kept index stays valid until the cache rolls back. A step
recycles only when it can: one new token per row (T = 1), a kept set for the layer, the same batch,
prefix and key/value heads, and no row shorter than at the full step; otherwise it runs in full and
takes a fresh kept set. "Appended since the full step" is per row: row b's recent positions start at
its length then, so ragged rows whose new tokens land inside the tensor's old size still see them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .backends import attend, get_backend
from .cascade import check_attention_inputs
from .merge import merge_attention_states
from .plan import AttentionPlan, _count
from .reference import compute_dtype


@dataclass(frozen=True, eq=False)
class _KeptSet:
    """One layer's keys chosen at its last full step."""

    prefix_positions: Tensor  # [B, Hkv, Kp] long: kept positions in the shared prefix, ascending; -1 pads
    suffix_positions: Tensor  # [B, Hkv, Ks] long: kept positions in the row's suffix, ascending; -1 pads
    lengths: Tensor  # [B] long: each row's valid suffix positions at the full step
    kv_length: int  # S at the full step
    prefix_length: int  # P at the full step


class RecycledAttention:
    """Per-run state of Recycled Attention for a decoder stack.

    The loop, once per model forward: `advance()`, then `attend(layer, ...)` for each layer in place
    of `cascade_attention` (same tensors, same plan). `reset()` before a new run.
    """

    def __init__(self, num_layers: int, *, stride: int, top_k: int, backend: str = "reference",
                 dense_layers: int = 0):
        """Args:
            num_layers: attention layers whose kept sets are tracked, >= 1 (layer ids 0..num_layers-1).
            stride: forwards from one full step to the next, >= 1 (1 = always full, exact).
            top_k: key positions kept per row and key/value head at a full step, >= 1.
            backend: the `attend` backend full steps run (see `backends.py`); "reference" by default.
            dense_layers: layers 0 .. dense_layers-1 always attend in full (a departure from the
                paper, as Quest keeps its first two layers dense: a small model's early layers
                attend too diffusely for any top-k), >= 0.

        Raises:
            ValueError: naming the value, for a non-integer or one below its minimum.
        """
        self.num_layers = _count(num_layers, "num_layers", 1)
        self.stride = _count(stride, "stride", 1)
        self.top_k = _count(top_k, "top_k", 1)
        self.dense_layers = _count(dense_layers, "dense_layers", 0)
        self.backend = get_backend(backend).name
        self.reset()

    def reset(self) -> None:
        """Forget every kept set and count, as before the first forward of a run."""
        self._kept: list[_KeptSet | None] = [None] * self.num_layers
        self._steps = 0
        self._full_steps = 0
        self._last_full: int | None = None  # index of the last full forward
        self._forward_full = False  # whether the forward in progress runs in full
        self._fractions: list[Tensor] = []  # kept fraction of each recycled layer of this forward
        self._last_fractions: list[Tensor] = []  # ... of the last forward that recycled
        self._seen: tuple[AttentionPlan, Tensor] | None = None  # (plan, its suffix mask): layers share a plan

    def advance(self) -> bool:
        """Start the next forward; call once per forward before its layers run.

        Returns:
            Whether the schedule makes this forward a full step (the first, then `stride` forwards
            after the last full one). A forward scheduled to recycle still runs in full when
            `attend` finds it cannot (T > 1, no kept set, batch changed, rollback); the schedule
            then counts from that forward.
        """
        if self._fractions:
            self._last_fractions, self._fractions = self._fractions, []
        full = self._last_full is None or self._steps - self._last_full >= self.stride
        self._steps += 1
        self._forward_full = False
        if full:
            self._mark_full()
        return full

    @property
    def steps(self) -> int:
        """Forwards started by `advance` since the last reset."""
        return self._steps

    @property
    def full_steps(self) -> int:
        """How many of those forwards ran in full (scheduled or forced)."""
        return self._full_steps

    def kept_fraction(self) -> float:
        """Mean fraction of visible key positions the last recycled forward attended (1.0 if none yet).

        Averaged over its recycled layers, rows, key/value heads and queries; the visible positions
        are those full attention would see under the same plan.
        """
        fractions = self._fractions or self._last_fractions
        if not fractions:
            return 1.0
        return float(torch.stack(fractions).mean())

    def attend(self, layer: int, query: Tensor, key: Tensor, value: Tensor, plan: AttentionPlan,
               prefix_key: Tensor | None = None, prefix_value: Tensor | None = None, *,
               scale: float | None = None) -> Tensor:
        """Attention of one layer for the forward in progress: full, or over the kept and recent keys.

        Args:
            layer: the layer's index in [0, num_layers).
            query: [B, Hq, T, D], the new tokens' queries (B = plan.batch, T = plan.num_queries).
            key: [B, Hkv, S, D], each row's suffix keys, S = plan.kv_length, the new tokens included.
            value: [B, Hkv, S, Dv].
            plan: what each query may see (`AttentionPlan`), honoured on recycled steps too.
            prefix_key: [1, Hkv, P, D], the shared prefix's keys; required exactly when P > 0.
            prefix_value: [1, Hkv, P, Dv].
            scale: score scale; None = 1 / sqrt(D).

        Returns:
            out [B, Hq, T, Dv] in the query's dtype; on a full step equal to `cascade_attention`'s.

        Raises:
            ValueError: on a bad layer index or tensors that do not fit the plan.
            RuntimeError: when `advance` was never called.
        """
        if self._steps == 0:
            raise RuntimeError("call advance() once per forward before its attend calls")
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be an integer in [0, {self.num_layers}), got {layer!r}")
        check_attention_inputs(query, key, value, plan, prefix_key, prefix_value)
        if layer < self.dense_layers:
            return attend(query, key, value, plan, prefix_key, prefix_value, backend=self.backend, scale=scale)
        kept = self._kept[layer]
        growth = None if self._forward_full or plan.num_queries > 1 else _growth(kept, key, plan)
        if growth is None:
            self._mark_full()
            out = attend(query, key, value, plan, prefix_key, prefix_value, backend=self.backend, scale=scale)
            mass = _last_query_mass(query, key, prefix_key, plan, self._suffix_mask(plan), scale)
            self._kept[layer] = _keep_top(mass, self.top_k, plan)
            return out
        out, fraction = _recycled_attention(query, key, value, plan, prefix_key, prefix_value, kept, growth,
                                            self._suffix_mask(plan), scale)
        self._fractions.append(fraction)
        return out

    def _mark_full(self) -> None:
        """Count the forward in progress as full (once) and restart the schedule from it."""
        if not self._forward_full:
            self._forward_full = True
            self._full_steps += 1
            self._last_full = self._steps - 1

    def _suffix_mask(self, plan: AttentionPlan) -> Tensor:
        """plan.suffix_mask() [B, T, S], built once for the layers of one forward."""
        if self._seen is None or self._seen[0] is not plan:
            self._seen = (plan, plan.suffix_mask())
        return self._seen[1]


def _growth(kept: _KeptSet | None, key: Tensor, plan: AttentionPlan) -> int | None:
    """The most suffix positions any row appended since the kept set's full step, or None when the kept
    set cannot be reused (none yet, another batch, prefix or head count, or a rollback)."""
    if kept is None or tuple(kept.suffix_positions.shape[:2]) != (plan.batch, key.shape[1]):
        return None
    if kept.prefix_length != plan.prefix_length or plan.kv_length < kept.kv_length:
        return None
    appended = plan.lengths.to(kept.lengths.device, torch.long) - kept.lengths  # [B]
    low, high = appended.aminmax()  # one host sync per layer
    if int(low) < 0:  # a row got shorter: its positions may now hold other tokens
        return None
    return int(high)


def _last_query_mass(query: Tensor, key: Tensor, prefix_key: Tensor | None, plan: AttentionPlan, seen: Tensor,
                     scale: float | None) -> Tensor:
    """Softmax weight each key got from the row's newest query, summed over the query heads of its
    key/value head (the query the next decode steps follow; at a prefill, the prompt's last token).

    seen is plan.suffix_mask() [B, T, S]. Returns [B, Hkv, P+S] in the compute dtype, -inf where the
    newest query does not see the key (stale K/V, even NaN, never reaches a visible key's mass).
    """
    dtype = compute_dtype(query.dtype)
    batch, heads, _, head_dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    q = query[:, :, -1:].to(dtype).reshape(batch, kv_heads, group, head_dim)  # [B, Hkv, g, D]
    visible = seen[:, -1]  # [B, S]
    scores = (q @ key.to(dtype).transpose(-1, -2)) * scale  # [B, Hkv, g, S]
    scores = scores.masked_fill(~visible[:, None, None], -math.inf)
    if plan.prefix_length:
        uses = plan.rows_with_prefix().to(query.device)  # [B]
        prefix_scores = (q @ prefix_key.to(dtype)[0].transpose(-1, -2)[None]) * scale  # [B, Hkv, g, P]
        prefix_scores = prefix_scores.masked_fill(~uses[:, None, None, None], -math.inf)
        scores = torch.cat([prefix_scores, scores], dim=-1)  # [B, Hkv, g, P+S]
        visible = torch.cat([uses[:, None].expand(-1, plan.prefix_length), visible], dim=-1)  # [B, P+S]
    peak = scores.amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = torch.exp(scores - peak)  # exactly 0 where unseen
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    return weights.sum(dim=2).masked_fill(~visible[:, None], -math.inf)  # [B, Hkv, P+S]


def _keep_top(mass: Tensor, top_k: int, plan: AttentionPlan) -> _KeptSet:
    """The top_k positions by mass per row and key/value head (all visible ones if fewer), split into the
    prefix's and the suffix's, each with as many slots as the row that keeps the most there."""
    prefix = plan.prefix_length
    top, positions = mass.topk(min(top_k, mass.shape[-1]), dim=-1)  # [B, Hkv, K]
    chosen = top > -math.inf  # [B, Hkv, K]: slots past a row's visible keys are padding
    in_prefix, in_suffix = chosen & (positions < prefix), chosen & (positions >= prefix)
    # padding (-1) sorts first, then ascending positions, so the last `slots` columns hold every kept one
    prefix_positions = torch.where(in_prefix, positions, -1).sort(dim=-1).values
    suffix_positions = torch.where(in_suffix, positions - prefix, -1).sort(dim=-1).values
    prefix_slots, suffix_slots = torch.stack([in_prefix.sum(-1).amax(), in_suffix.sum(-1).amax()]).tolist()  # 1 sync
    return _KeptSet(prefix_positions=prefix_positions[..., prefix_positions.shape[-1] - prefix_slots:],
                    suffix_positions=suffix_positions[..., suffix_positions.shape[-1] - suffix_slots:],
                    lengths=plan.lengths.to(mass.device, torch.long), kv_length=plan.kv_length, prefix_length=prefix)


def _recycled_attention(query: Tensor, key: Tensor, value: Tensor, plan: AttentionPlan, prefix_key: Tensor | None,
                        prefix_value: Tensor | None, kept: _KeptSet, growth: int, seen: Tensor,
                        scale: float | None) -> tuple[Tensor, Tensor]:
    """Attention over each row's kept positions and its positions appended since the full step.

    Each row's suffix slots (kept and recent positions) and prefix slots (kept positions) are gathered
    into small [B, Hkv, N, D] blocks, attended under the plan of this step and merged by lse. growth
    is the most positions a row appended; seen is plan.suffix_mask() [B, T, S]. Returns (out
    [B, Hq, T, Dv] in the query's dtype, the mean fraction of visible keys attended, a 0-d tensor).
    """
    batch, kv_heads, size = key.shape[:3]
    count, device = query.shape[2], key.device
    # recent slots: row b's positions from its length at the full step on; a row that appended fewer
    # than `growth` gets slots past its length, which the plan hides, or past S, marked -1 here
    recent = kept.lengths[:, None] + torch.arange(growth, device=device)  # [B, R]
    recent = torch.where(recent < size, recent, -1)
    slots = torch.cat([kept.suffix_positions, recent[:, None].expand(-1, kv_heads, -1)], dim=-1)  # [B, Hkv, Ns]
    index = slots.clamp(min=0)  # padding reads position 0 and is masked below
    # the plan of this step decides visibility: a kept position hidden since stays hidden
    visible = seen[:, None].expand(-1, kv_heads, -1, -1).gather(3, index[:, :, None].expand(-1, -1, count, -1))
    allowed = visible & (slots >= 0)[:, :, None]  # [B, Hkv, T, Ns]
    state = _slot_state(query, key, value, index, allowed, scale)
    attended = allowed.sum(dim=-1)  # [B, Hkv, T]
    full = seen.sum(dim=-1)  # [B, T]: the keys full attention would see
    prefix = plan.prefix_length
    if prefix:
        slots = kept.prefix_positions  # [B, Hkv, Np]
        index = slots.clamp(min=0)
        uses = plan.rows_with_prefix().to(device)  # [B]
        allowed = ((slots >= 0) & uses[:, None, None])[:, :, None].expand(-1, -1, count, -1)  # [B, Hkv, T, Np]
        shared = _slot_state(query, prefix_key.expand(batch, -1, -1, -1), prefix_value.expand(batch, -1, -1, -1),
                             index, allowed, scale)
        state = merge_attention_states([shared, state])
        attended = attended + allowed.sum(dim=-1)
        full = full + prefix * uses[:, None]
    fraction = torch.where(full[:, None] > 0, attended / full[:, None].clamp(min=1), torch.ones((), device=device))
    return state[0].to(query.dtype), fraction.float().mean()


def _slot_state(query: Tensor, key: Tensor, value: Tensor, slots: Tensor, allowed: Tensor,
                scale: float | None) -> tuple[Tensor, Tensor]:
    """Attention state (out [B, Hq, T, Dv], lse [B, Hq, T], compute dtype) over gathered slots.

    key / value [B, Hkv, S', E] are read at slots [B, Hkv, N] (>= 0); allowed [B, Hkv, T, N] is
    shared by the query heads of a group. This is `attend_state` with one change for speed: instead
    of zeroing the gathered values a query may not see (a pass over [B, Hkv, N, Dv]), such slots read
    a row some query of the block does see, so a zero weight never meets stale K/V (even NaN).
    """
    dtype = compute_dtype(query.dtype)
    batch, heads, count, head_dim = query.shape
    kv_heads, width = allowed.shape[1], allowed.shape[-1]
    group = heads // kv_heads
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    seen = allowed.any(dim=2)  # [B, Hkv, N]
    first_seen = seen.int().argmax(dim=-1, keepdim=True)  # [B, Hkv, 1]; 0 where none is seen
    slots = torch.where(seen, slots, slots.gather(-1, first_seen))
    keys = _pick_rows(key, slots).to(dtype)  # [B, Hkv, N, D]
    values = _pick_rows(value, slots).to(dtype)  # [B, Hkv, N, Dv]
    q = query.to(dtype).reshape(batch, kv_heads, group * count, head_dim)  # [B, Hkv, g*T, D]
    scores = ((q @ keys.transpose(-1, -2)) * scale).reshape(batch, kv_heads, group, count, width)
    scores = scores.masked_fill(~allowed[:, :, None], -math.inf).reshape(batch, kv_heads, group * count, width)
    peak = scores.amax(dim=-1, keepdim=True)  # [B, Hkv, g*T, 1]; -inf for a query that sees nothing
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = torch.exp(scores - peak)  # exactly 0 where masked
    total = weights.sum(dim=-1, keepdim=True)  # [B, Hkv, g*T, 1]
    out = (weights @ values) / torch.where(total > 0, total, torch.ones_like(total))  # [B, Hkv, g*T, Dv]
    # a block that sees no slot read whatever its slots hold: its queries get the empty state
    out = torch.where(total > 0, out, torch.zeros((), dtype=dtype, device=out.device))
    lse = (peak + torch.log(total)).squeeze(-1)  # log 0 = -inf for an empty query
    return out.reshape(batch, heads, count, -1), lse.reshape(batch, heads, count)


def _pick_rows(tensor: Tensor, index: Tensor) -> Tensor:
    """tensor[b, h, index[b, h, n]] for tensor [B, H, S, E] and index [B, H, N] >= 0: [B, H, N, E].

    Reads only the picked rows: the tensor is viewed, without a copy, as one table of rows [R, E]
    spaced by the gcd of its strides (a cache slice or a [B, S, H, E] transpose both fit), and
    `embedding` gathers from it, several times faster on CPU than advanced indexing.
    """
    batch, heads, size, width = tensor.shape
    stride_batch, stride_head, stride_position, stride_width = tensor.stride()
    spacing = math.gcd(stride_batch, stride_head, stride_position)
    if stride_width != 1 or spacing == 0:
        rows = torch.arange(batch, device=index.device)[:, None, None]
        return tensor[rows, torch.arange(heads, device=index.device)[None, :, None], index]
    last = (batch - 1) * stride_batch + (heads - 1) * stride_head + (size - 1) * stride_position
    table = tensor.as_strided((last // spacing + 1, width), (spacing, 1))  # [R, E], a view
    first = (torch.arange(batch, device=index.device)[:, None, None] * (stride_batch // spacing)
             + torch.arange(heads, device=index.device)[None, :, None] * (stride_head // spacing))  # [B, H, 1]
    return torch.nn.functional.embedding(first + index * (stride_position // spacing), table)
