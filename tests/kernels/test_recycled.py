"""ponder.kernels.attention.recycled: Recycled Attention over a simulated, growing decode cache.

The oracles are independent of the module: `cascade_attention` for full steps, and for recycled steps
`reference_attention` over [prefix ; suffix] with a mask restricted to the positions that got the most
softmax mass at the last full step (recomputed here one row and head at a time, in float64) plus the
positions appended since.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ponder.kernels.attention import AttentionPlan, cascade_attention, reference_attention
from ponder.kernels.attention.recycled import RecycledAttention

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16  # grouped-query: two query heads read each key/value head
GROUP = HEADS // KV_HEADS
PREFIX = 5


class _Decode:
    """A per-row-length cache that grows as a decoder appends tokens; each `next` gives one forward's inputs.

    Rows have ragged lengths (so a short row's new token lands inside the tensor's old size), some older
    positions are hidden, and row 1 does not see the shared prefix. Hidden positions and positions past a
    row's length hold `stale` (NaN by default), so reading one shows in the output.
    """

    def __init__(self, seed: int, *, batch: int = 3, start: tuple[int, ...] = (9, 5, 7), slack: int = 2,
                 prefix: int = PREFIX, stale: float = math.nan, capacity: int = 40):
        generator = torch.Generator().manual_seed(seed)
        self.batch, self.prefix, self.stale = batch, prefix, stale
        self.start = torch.tensor(start[:batch])
        self.base_size = int(self.start.max()) + slack
        self.key_buffer = torch.randn((batch, KV_HEADS, capacity, HEAD_DIM), generator=generator)
        self.value_buffer = torch.randn((batch, KV_HEADS, capacity, HEAD_DIM), generator=generator)
        self.query_buffer = torch.randn((capacity, batch, HEADS, 4, HEAD_DIM), generator=generator)
        self.prefix_key = torch.randn((1, KV_HEADS, prefix, HEAD_DIM), generator=generator) if prefix else None
        self.prefix_value = torch.randn((1, KV_HEADS, prefix, HEAD_DIM), generator=generator) if prefix else None
        self.prefix_rows = (torch.arange(batch) != 1) if prefix else None
        position = torch.arange(capacity)[None, :]
        # hidden older positions, never a row's first-step new token (the last of its start length)
        self.hidden = (torch.rand((batch, capacity), generator=generator) < 0.25) & (position < self.start[:, None] - 1)
        self.appended = 0  # tokens appended after the first forward's
        self.grown = 0  # positions the suffix tensor grew by (a rollback may leave them in place)
        self.forwards = 0

    def next(self, new: int = 1) -> tuple[AttentionPlan, dict]:
        """The next forward with `new` tokens per row (the first forward's are already in `start`)."""
        if self.forwards:
            self.appended += new
            self.grown = max(self.grown, self.appended)
        self.forwards += 1
        return self.current(new)

    def rollback(self, count: int, *, truncate: bool) -> None:
        """Drop the last `count` tokens of every row (a rejected draft), shrinking the tensor if `truncate`."""
        self.appended -= count
        if truncate:
            self.grown = self.appended

    def current(self, new: int = 1) -> tuple[AttentionPlan, dict]:
        lengths = self.start + self.appended
        size = self.base_size + self.grown
        hidden = self.hidden[:, :size].clone()
        plan = AttentionPlan(lengths=lengths, kv_length=size, num_queries=new, hidden=hidden,
                             prefix_length=self.prefix, prefix_rows=self.prefix_rows)
        stale = hidden | (torch.arange(size)[None, :] >= lengths[:, None])  # [B, S]
        fill = torch.tensor(self.stale)
        inputs = {"query": self.query_buffer[self.forwards - 1, :, :, :new],
                  "key": torch.where(stale[:, None, :, None], fill, self.key_buffer[:, :, :size]),
                  "value": torch.where(stale[:, None, :, None], fill, self.value_buffer[:, :, :size]),
                  "prefix_key": self.prefix_key, "prefix_value": self.prefix_value}
        return plan, inputs


def _flat(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values over [prefix ; suffix] for every row: [B, Hkv, P+S, D]."""
    key, value = inputs["key"], inputs["value"]
    if inputs["prefix_key"] is None:
        return key, value
    batch = key.shape[0]
    return (torch.cat([inputs["prefix_key"].expand(batch, -1, -1, -1), key], dim=2),
            torch.cat([inputs["prefix_value"].expand(batch, -1, -1, -1), value], dim=2))


def _expected_kept(plan: AttentionPlan, inputs: dict, top_k: int) -> torch.Tensor:
    """[B, Hkv, P+S] bool: per row and key/value head, the top_k visible positions by softmax mass summed
    over the row's queries and the query heads of the group, from explicit float64 weights."""
    keys, _ = _flat(inputs)
    query = inputs["query"]
    visible = plan.dense_mask()[:, 0]  # [B, T, P+S]
    kept = torch.zeros((plan.batch, KV_HEADS, keys.shape[2]), dtype=torch.bool)
    for row in range(plan.batch):
        seen = visible[row].any(dim=0)  # [P+S]
        for kv_head in range(KV_HEADS):
            mass = torch.zeros(keys.shape[2], dtype=torch.float64)
            for head in range(kv_head * GROUP, (kv_head + 1) * GROUP):
                scores = query[row, head].double() @ keys[row, kv_head].double().T / math.sqrt(HEAD_DIM)
                mass += scores.masked_fill(~visible[row], -math.inf).softmax(dim=-1).sum(dim=0)
            mass = mass.masked_fill(~seen, -math.inf)
            kept[row, kv_head, mass.topk(min(top_k, int(seen.sum()))).indices] = True
    return kept


def _recycled_reference(plan: AttentionPlan, inputs: dict, kept: torch.Tensor,
                        full_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, mask [B, Hq, T, P+S]): attention restricted to the kept and the recent positions, under the plan."""
    keys, values = _flat(inputs)
    total = keys.shape[2]
    kept = F.pad(kept, (0, total - kept.shape[-1]))  # positions appended since were never kept
    recent = torch.arange(total)[None, :] >= plan.prefix_length + full_lengths[:, None]  # [B, P+S]
    allowed = (kept | recent[:, None]).repeat_interleave(GROUP, dim=1)[:, :, None] & plan.dense_mask()
    out, _ = reference_attention(inputs["query"], keys, values, allowed)
    return out, allowed


def _attend(recycled: RecycledAttention, plan: AttentionPlan, inputs: dict, layer: int = 0) -> torch.Tensor:
    return recycled.attend(layer, inputs["query"], inputs["key"], inputs["value"], plan, inputs["prefix_key"],
                           inputs["prefix_value"])


def _cascade(plan: AttentionPlan, inputs: dict) -> torch.Tensor:
    return cascade_attention(inputs["query"], inputs["key"], inputs["value"], plan, inputs["prefix_key"],
                             inputs["prefix_value"])[0]


def _other_layer(inputs: dict) -> dict:
    """Different tensors for a second layer under the same plan (stale NaN stays where it was)."""
    return {"query": inputs["query"] * 1.7, "key": inputs["key"].flip(-1), "value": -inputs["value"],
            "prefix_key": inputs["prefix_key"].flip(-1), "prefix_value": -inputs["prefix_value"]}


def _hide_a_kept_suffix_position(decode: _Decode, kept: torch.Tensor) -> tuple[int, int]:
    """Hide (and fill with stale) one suffix position that is kept for some row; returns (row, suffix position)."""
    row, _, position = (kept[:, :, decode.prefix:]).nonzero()[0].tolist()
    decode.hidden[row, position] = True
    return row, position


def test_top_k_covering_every_position_equals_cascade_attention_at_every_step():
    decode = _Decode(seed=1)
    recycled = RecycledAttention(2, stride=3, top_k=1000)
    scheduled = []
    for _ in range(7):
        plan, inputs = decode.next()
        scheduled.append(recycled.advance())
        for layer, layer_inputs in enumerate((inputs, _other_layer(inputs))):
            out = _attend(recycled, plan, layer_inputs, layer)
            torch.testing.assert_close(out, _cascade(plan, layer_inputs), rtol=0, atol=1e-5)
    assert scheduled == [True, False, False, True, False, False, True]
    assert (recycled.steps, recycled.full_steps) == (7, 3)
    assert recycled.kept_fraction() == pytest.approx(1.0)


def test_stride_one_runs_every_step_in_full_and_exactly():
    decode = _Decode(seed=2)
    recycled = RecycledAttention(1, stride=1, top_k=2)
    for _ in range(5):
        plan, inputs = decode.next()
        assert recycled.advance()
        assert torch.equal(_attend(recycled, plan, inputs), _cascade(plan, inputs))
    assert (recycled.steps, recycled.full_steps) == (5, 5)
    assert recycled.kept_fraction() == 1.0  # no recycled forward yet


def test_recycled_steps_attend_the_top_mass_positions_and_the_recent_ones():
    decode = _Decode(seed=3)
    recycled = RecycledAttention(1, stride=4, top_k=3)
    scheduled, kept, full_lengths = [], None, None
    for step in range(7):
        if step == 2:  # a kept position rolled back after the full step stays out of reach
            _hide_a_kept_suffix_position(decode, kept)
        plan, inputs = decode.next()
        scheduled.append(recycled.advance())
        out = _attend(recycled, plan, inputs)
        exact = _cascade(plan, inputs)
        if step in (0, 4):
            assert torch.equal(out, exact)
            kept, full_lengths = _expected_kept(plan, inputs, top_k=3), plan.lengths.clone()
            continue
        expected, mask = _recycled_reference(plan, inputs, kept, full_lengths)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
        assert (out - exact).abs().max() > 1e-3  # lossy: the dropped keys mattered
        attended = mask[:, ::GROUP].sum(dim=-1).double()  # [B, Hkv, T]
        visible = plan.dense_mask().sum(dim=-1).double()  # [B, 1, T]
        assert recycled.kept_fraction() == pytest.approx(float((attended / visible).mean()), abs=1e-6)
        assert recycled.kept_fraction() < 1.0
    assert scheduled == [True, False, False, False, True, False, False]
    assert recycled.full_steps == 2


@pytest.mark.parametrize("prefix", [PREFIX, 0])
def test_nan_in_hidden_and_stale_positions_never_reaches_recycled_outputs(prefix):
    outputs = {}
    for stale in (math.nan, 0.0):
        decode = _Decode(seed=4, stale=stale, prefix=prefix)
        recycled = RecycledAttention(1, stride=5, top_k=4)
        outputs[stale], kept = [], None
        for step in range(5):
            if step == 2:  # a kept position hidden since the full step, its K/V overwritten with stale
                _hide_a_kept_suffix_position(decode, kept)
            if step == 4:  # row 1 (never the prefix) hides everything, its new token too: it sees no key
                decode.hidden[1] = True
            plan, inputs = decode.next()
            recycled.advance()
            if step == 0:
                kept = _expected_kept(plan, inputs, top_k=4)
            outputs[stale].append(_attend(recycled, plan, inputs))
        assert recycled.full_steps == 1
    for step, (with_nan, with_zero) in enumerate(zip(outputs[math.nan], outputs[0.0])):
        assert torch.isfinite(with_nan).all(), f"step {step}"
        torch.testing.assert_close(with_nan, with_zero, rtol=0, atol=1e-6)
    assert torch.equal(outputs[math.nan][4][1], torch.zeros_like(outputs[math.nan][4][1]))  # as cascade attention


def test_multi_token_forward_rollback_and_new_batch_force_a_full_step():
    decode = _Decode(seed=5)
    recycled = RecycledAttention(1, stride=8, top_k=2)
    for _ in range(2):  # full, then recycled
        plan, inputs = decode.next()
        recycled.advance()
        _attend(recycled, plan, inputs)
    assert recycled.full_steps == 1 and recycled.kept_fraction() < 1.0

    plan, inputs = decode.next(new=3)  # a multi-token verify forward
    assert not recycled.advance()
    assert torch.equal(_attend(recycled, plan, inputs), _cascade(plan, inputs))
    assert recycled.full_steps == 2

    plan, inputs = decode.next()  # recycles against the verify forward's kept set
    recycled.advance()
    assert not torch.equal(_attend(recycled, plan, inputs), _cascade(plan, inputs))
    assert recycled.full_steps == 2

    # rows shorter than at the full step, the tensor first kept, then truncated: kept positions may
    # hold other tokens now
    for truncate, full_steps in ((False, 3), (True, 4)):
        decode.rollback(3, truncate=truncate)
        plan, inputs = decode.next()
        assert not recycled.advance()
        assert torch.equal(_attend(recycled, plan, inputs), _cascade(plan, inputs))
        assert recycled.full_steps == full_steps

    plan, inputs = _Decode(seed=6, batch=2, slack=20).next()  # another batch, a larger tensor
    recycled.advance()
    assert torch.equal(_attend(recycled, plan, inputs), _cascade(plan, inputs))
    assert (recycled.steps, recycled.full_steps) == (7, 5)

    recycled.reset()
    assert (recycled.steps, recycled.full_steps, recycled.kept_fraction()) == (0, 0, 1.0)
    with pytest.raises(RuntimeError, match="advance"):
        _attend(recycled, plan, inputs)
    recycled.advance()
    with pytest.raises(ValueError, match="layer .* got 1"):
        _attend(recycled, plan, inputs, layer=1)


def _as_layout(tensor: torch.Tensor | None, layout: str) -> torch.Tensor | None:
    """The same [B, H, S, E] values in another memory layout: a [B, S', H, E] cache's slice (strided,
    offset storage) or every other element of a wider buffer (last dim not contiguous)."""
    if tensor is None or layout == "contiguous":
        return tensor
    batch, heads, size, width = tensor.shape
    if layout == "sliced":
        buffer = torch.full((batch, size + 5, heads, width), math.inf)
        buffer[:, 2:2 + size] = tensor.transpose(1, 2)
        return buffer[:, 2:2 + size].transpose(1, 2)
    buffer = torch.full((batch, heads, size, width, 2), math.inf)
    buffer[..., 1] = tensor
    return buffer[..., 1]


def test_cache_layouts_and_low_precision_give_the_same_recycled_output():
    outputs = {}
    for layout in ("contiguous", "sliced", "strided", "bfloat16"):
        decode = _Decode(seed=7)
        recycled = RecycledAttention(1, stride=3, top_k=3)
        outputs[layout] = []
        for _ in range(5):
            plan, inputs = decode.next()
            recycled.advance()
            if layout == "bfloat16":
                inputs = {name: None if t is None else t.bfloat16() for name, t in inputs.items()}
            else:
                inputs = {name: _as_layout(t, layout) if name != "query" else t for name, t in inputs.items()}
            outputs[layout].append(_attend(recycled, plan, inputs))
        assert recycled.full_steps == 2
    for layout in ("sliced", "strided"):
        for out, expected in zip(outputs[layout], outputs["contiguous"]):
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    for out, expected in zip(outputs["bfloat16"], outputs["contiguous"]):
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), expected, rtol=0, atol=0.05)


@pytest.mark.parametrize("num_layers, stride, top_k, message", [
    (0, 2, 4, "num_layers .* got 0"), (2, 0, 4, "stride .* got 0"), (2, 2.5, 4, "stride .* got 2.5"),
    (2, 2, -1, "top_k .* got -1"), (2, 2, True, "top_k .* got True"),
])
def test_bad_constructor_values_raise_naming_the_value(num_layers, stride, top_k, message):
    with pytest.raises(ValueError, match=message):
        RecycledAttention(num_layers, stride=stride, top_k=top_k)
