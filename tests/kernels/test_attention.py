"""ponder.kernels.attention: the plan, reference attention with lse, the lse merge, split-K and cascade.

The oracle is written from the plan's rule in words, one (row, head, query) at a time: list the keys
the query may see, then softmax(q K^T / sqrt(D)) V over exactly those, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from attention_cases import assert_tree_nodes_match_unrolled_paths

from ponder.kernels.attention import (
    AttentionPlan,
    cascade_attention,
    merge_attention_states,
    reference_attention,
    split_kv_attention,
)
from ponder.kernels.tree import tree_attention_bias, tree_mask

HEADS, KV_HEADS = 4, 2  # grouped-query: two query heads read each key/value head
PREFIX = 7
SLACK = 3  # stale positions past the longest row, never to be read


def _random_parents(generator: torch.Generator, batch: int, count: int) -> torch.Tensor:
    """[B, T] parents: node 0 a root, node i's parent drawn from [-1, i) (-1 = a padding-like root)."""
    parents = torch.full((batch, count), -1, dtype=torch.long)
    for node in range(1, count):
        parents[:, node] = torch.randint(-1, node, (batch,), generator=generator)
    return parents


def _case(batch: int, cache: int, new: int, head_dim: int, *, seed: int, dtype=torch.float64, prefix: int = PREFIX,
          tree: bool = True, hidden: bool = True, num_splits: int = 1):
    """Random queries, suffix and prefix K/V and a plan using every feature: ragged lengths, hidden, tree, prefix.

    Row 0 is the longest (`cache` older positions); other rows draw their older count from [0, cache]. Hidden
    positions are older ones only (rolled back), so every query still sees itself.
    """
    generator = torch.Generator().manual_seed(seed)
    size = cache + new + SLACK
    older = torch.randint(0, cache + 1, (batch,), generator=generator)
    older[0] = cache
    lengths = older + new
    hide = None
    if hidden:
        position = torch.arange(size)[None, :]
        hide = (torch.rand((batch, size), generator=generator) < 0.25) & (position < older[:, None])
    parents = _random_parents(generator, batch, new) if tree else None
    rows = None
    if prefix:
        rows = torch.rand(batch, generator=generator) < 0.6
        rows[0] = True
    plan = AttentionPlan(lengths=lengths, kv_length=size, num_queries=new, hidden=hide,
                         tree=None if parents is None else tree_mask(parents), prefix_length=prefix,
                         prefix_rows=rows, num_splits=num_splits)

    def draw(*shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)

    tensors = {"query": draw(batch, HEADS, new, head_dim), "key": draw(batch, KV_HEADS, size, head_dim),
               "value": draw(batch, KV_HEADS, size, head_dim),
               "prefix_key": draw(1, KV_HEADS, prefix, head_dim) if prefix else None,
               "prefix_value": draw(1, KV_HEADS, prefix, head_dim) if prefix else None}
    return plan, parents, tensors


def _visible(plan: AttentionPlan, parents: torch.Tensor | None, row: int, query: int) -> list[int]:
    """Keys query `query` of `row` may see, as indices into [prefix ; suffix], from the rule in words."""
    keys = []
    if plan.prefix_length and (plan.prefix_rows is None or bool(plan.prefix_rows[row])):
        keys += list(range(plan.prefix_length))
    first_new = int(plan.lengths[row]) - plan.num_queries
    seen_new = [query]  # itself and its ancestors (every earlier node without a tree)
    if parents is None:
        seen_new = list(range(query + 1))
    else:
        while int(parents[row, seen_new[-1]]) >= 0:
            seen_new.append(int(parents[row, seen_new[-1]]))
    suffix = list(range(first_new)) + [first_new + node for node in sorted(seen_new)]
    hidden = plan.hidden
    keys += [plan.prefix_length + j for j in suffix if hidden is None or not bool(hidden[row, j])]
    return keys


def _naive(query, key, value, keys_of) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q K^T / sqrt(D)) V per (row, head, query) over `keys_of(row, query)`, in float64."""
    batch, heads, count, head_dim = query.shape
    group = heads // key.shape[1]
    out = torch.zeros((batch, heads, count, value.shape[-1]), dtype=torch.float64)
    lse = torch.full((batch, heads, count), -math.inf, dtype=torch.float64)
    for row in range(batch):
        for head in range(heads):
            for i in range(count):
                index = torch.tensor(keys_of(row, i), dtype=torch.long)
                if len(index) == 0:
                    continue
                k = key[row, head // group, index].double()  # [n, D]
                scores = k @ query[row, head, i].double() / math.sqrt(head_dim)  # [n]
                lse[row, head, i] = torch.logsumexp(scores, 0)
                out[row, head, i] = torch.softmax(scores, 0) @ value[row, head // group, index].double()
    return out, lse


def _concatenated(plan: AttentionPlan, tensors: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """[prefix expanded to every row ; suffix]: the flat K/V the dense mask indexes."""
    key, value = tensors["key"], tensors["value"]
    if not plan.prefix_length:
        return key, value
    batch = key.shape[0]
    return (torch.cat([tensors["prefix_key"].expand(batch, -1, -1, -1), key], dim=2),
            torch.cat([tensors["prefix_value"].expand(batch, -1, -1, -1), value], dim=2))


def _cascade(plan: AttentionPlan, tensors: dict):
    return cascade_attention(tensors["query"], tensors["key"], tensors["value"], plan, tensors["prefix_key"],
                             tensors["prefix_value"])


# ---------------------------------------------------------------------------------- against the naive oracle


@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("new", [1, 5, 16])
@pytest.mark.parametrize("cache", [1, 17, 129])
def test_cascade_matches_naive_softmax_at_odd_sizes(cache, new, batch, head_dim):
    # half the grid without a tree: the new tokens are then a causal chain
    plan, parents, tensors = _case(batch, cache, new, head_dim, seed=cache * 1000 + new * 10 + batch,
                                   tree=head_dim == 16, num_splits=2)
    out, lse = _cascade(plan, tensors)
    key, value = _concatenated(plan, tensors)
    want_out, want_lse = _naive(tensors["query"], key, value, lambda row, i: _visible(plan, parents, row, i))
    torch.testing.assert_close(out, want_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cache,new,batch,head_dim", [(1, 1, 1, 16), (17, 5, 3, 64), (129, 16, 3, 16)])
def test_float32_paths_match_the_float64_oracle(cache, new, batch, head_dim):
    plan, parents, tensors = _case(batch, cache, new, head_dim, seed=7, dtype=torch.float32, num_splits=3)
    key, value = _concatenated(plan, tensors)
    want_out, want_lse = _naive(tensors["query"], key, value, lambda row, i: _visible(plan, parents, row, i))
    for out, lse in (_cascade(plan, tensors), reference_attention(tensors["query"], key, value, plan.dense_mask())):
        assert out.dtype == torch.float32 and lse.dtype == torch.float32
        torch.testing.assert_close(out.double(), want_out, rtol=0, atol=2e-6)
        torch.testing.assert_close(lse.double(), want_lse, rtol=0, atol=2e-6)


def test_reference_maps_grouped_heads_and_per_head_masks():
    generator = torch.Generator().manual_seed(3)
    query = torch.randn((2, 6, 5, 16), generator=generator, dtype=torch.float64)
    key = torch.randn((2, 3, 17, 16), generator=generator, dtype=torch.float64)
    value = torch.randn((2, 3, 17, 8), generator=generator, dtype=torch.float64)  # a value width of its own
    mask = torch.rand((2, 6, 5, 17), generator=generator) < 0.5
    mask[1, 4, 2] = False  # one query of one head sees nothing
    out, lse = reference_attention(query, key, value, mask)
    # the oracle applies head h's mask with key/value head h // 2 (transformers' repeat_kv)
    for head in range(6):
        want_out, want_lse = _naive(query[:, head:head + 1], key[:, head // 2:head // 2 + 1],
                                    value[:, head // 2:head // 2 + 1],
                                    lambda row, i, head=head: mask[row, head, i].nonzero().flatten().tolist())
        torch.testing.assert_close(out[:, head:head + 1], want_out, rtol=0, atol=1e-12)
        torch.testing.assert_close(lse[:, head:head + 1], want_lse, rtol=0, atol=1e-12)
    assert lse[1, 4, 2] == -math.inf and torch.equal(out[1, 4, 2], torch.zeros(8, dtype=torch.float64))
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------- metamorphic checks


def test_chain_shaped_tree_equals_causal():
    plan, _, tensors = _case(3, 17, 5, 16, seed=11, tree=False)
    chain = torch.tensor([[-1, 0, 1, 2, 3]] * 3)
    as_tree = AttentionPlan(lengths=plan.lengths, kv_length=plan.kv_length, num_queries=5, hidden=plan.hidden,
                            tree=tree_mask(chain), prefix_length=plan.prefix_length, prefix_rows=plan.prefix_rows)
    assert torch.equal(as_tree.suffix_mask(), plan.suffix_mask())
    for got, want in zip(_cascade(as_tree, tensors), _cascade(plan, tensors)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("all_rows", [True, False])
def test_cascade_equals_flat_attention_over_the_concatenated_kv(dtype, num_splits, all_rows):
    plan, _, tensors = _case(3, 17, 5, 64, seed=5, dtype=dtype, num_splits=num_splits)
    rows = None if all_rows else torch.tensor([True, False, True])  # None: every row
    plan = AttentionPlan(lengths=plan.lengths, kv_length=plan.kv_length, num_queries=5, hidden=plan.hidden,
                         tree=plan.tree, prefix_length=PREFIX, prefix_rows=rows, num_splits=num_splits)
    key, value = _concatenated(plan, tensors)
    flat_out, flat_lse = reference_attention(tensors["query"], key, value, plan.dense_mask())
    out, lse = _cascade(plan, tensors)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(out, flat_out, rtol=0, atol=tolerance)
    torch.testing.assert_close(lse, flat_lse, rtol=0, atol=tolerance)


@pytest.mark.parametrize("size", [1, 17, 129])
def test_output_does_not_change_with_the_number_of_splits(size):
    generator = torch.Generator().manual_seed(size)
    query = torch.randn((3, HEADS, 5, 16), generator=generator, dtype=torch.float64)
    key = torch.randn((3, KV_HEADS, size, 16), generator=generator, dtype=torch.float64)
    value = torch.randn((3, KV_HEADS, size, 16), generator=generator, dtype=torch.float64)
    mask = torch.rand((3, 1, 5, size), generator=generator) < 0.7
    whole_out, whole_lse = reference_attention(query, key, value, mask)
    for num_splits in (1, 2, 3, 7):  # 7 splits of one key: six empty chunks
        out, lse = split_kv_attention(query, key, value, mask, num_splits=num_splits)
        torch.testing.assert_close(out, whole_out, rtol=0, atol=1e-12)
        torch.testing.assert_close(lse, whole_lse, rtol=0, atol=1e-12)
    plan, _, tensors = _case(3, size, 5, 16, seed=size)
    base = _cascade(plan, tensors)
    for num_splits in (2, 3, 7):
        split_plan = AttentionPlan(lengths=plan.lengths, kv_length=plan.kv_length, num_queries=5, hidden=plan.hidden,
                                   tree=plan.tree, prefix_length=PREFIX, prefix_rows=plan.prefix_rows,
                                   num_splits=num_splits)
        for got, want in zip(_cascade(split_plan, tensors), base):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_nan_past_a_rows_length_or_in_hidden_positions_changes_nothing(num_splits):
    plan, _, tensors = _case(3, 17, 5, 16, seed=2, num_splits=num_splits)
    clean = _cascade(plan, tensors)
    position = torch.arange(plan.kv_length)[None, :]
    unseen = (position >= plan.lengths[:, None]) | plan.hidden  # [B, S]
    assert unseen.sum() > SLACK * 3  # some hidden positions and some past every row's length
    poisoned = dict(tensors)
    for name in ("key", "value"):
        poisoned[name] = tensors[name].masked_fill(unseen[:, None, :, None], math.nan)
    out, lse = _cascade(plan, poisoned)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert torch.equal(out, clean[0]) and torch.equal(lse, clean[1])


def test_a_tree_nodes_output_equals_attention_over_its_unrolled_path():
    assert_tree_nodes_match_unrolled_paths(cascade_attention, dtype=torch.float64, atol=1e-12, heads=HEADS,
                                           kv_heads=KV_HEADS)


def test_merging_with_an_empty_segment_is_the_identity():
    generator = torch.Generator().manual_seed(17)
    out = torch.randn((3, HEADS, 5, 16), generator=generator, dtype=torch.float64)
    lse = torch.randn((3, HEADS, 5), generator=generator, dtype=torch.float64)
    # what a kernel may leave in a part that saw no key: garbage (NaN here, 0 from torch's CPU flash path)
    empty = (torch.full_like(out, math.nan), torch.full_like(lse, -math.inf))
    for states in ([(out, lse), empty], [empty, (out, lse)], [empty, (out, lse), empty]):
        merged, merged_lse = merge_attention_states(states)
        assert torch.equal(merged, out) and torch.equal(merged_lse, lse)
    merged, merged_lse = merge_attention_states([empty, empty])
    assert torch.equal(merged, torch.zeros_like(out)) and bool((merged_lse == -math.inf).all())


def test_merging_states_of_interleaved_key_sets_recovers_the_whole():
    generator = torch.Generator().manual_seed(19)
    query = torch.randn((3, HEADS, 5, 16), generator=generator, dtype=torch.float64)
    key = torch.randn((3, KV_HEADS, 23, 16), generator=generator, dtype=torch.float64)
    value = torch.randn((3, KV_HEADS, 23, 16), generator=generator, dtype=torch.float64)
    part = torch.rand((3, 1, 5, 23), generator=generator) < 0.5  # a random split of every query's keys
    part[0, 0, 0] = True  # one query whose second part is empty
    halves = [reference_attention(query, key, value, part), reference_attention(query, key, value, ~part)]
    merged, merged_lse = merge_attention_states(halves)
    whole, whole_lse = reference_attention(query, key, value)
    torch.testing.assert_close(merged, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(merged_lse, whole_lse, rtol=0, atol=1e-12)
    assert halves[1][1][0, :, 0].eq(-math.inf).all()


def test_a_query_that_sees_nothing_gives_zero_and_minus_inf():
    everything = torch.ones((1, 4), dtype=torch.bool)
    plan = AttentionPlan(lengths=torch.tensor([4]), kv_length=4, num_queries=1, hidden=everything)
    query, key = torch.randn(1, HEADS, 1, 16), torch.randn(1, KV_HEADS, 4, 16)
    out, lse = cascade_attention(query, key, key.clone(), plan)
    assert torch.equal(out, torch.zeros_like(out)) and bool((lse == -math.inf).all())
    out, lse = split_kv_attention(query, key[:, :, :0], key[:, :, :0], num_splits=2)  # no keys at all
    assert torch.equal(out, torch.zeros((1, HEADS, 1, 16))) and bool((lse == -math.inf).all())


# ---------------------------------------------------------------------------------- the dense path


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_plans_dense_mask_with_torch_sdpa_equals_the_reference(dtype):
    plan, _, tensors = _case(3, 17, 5, 16, seed=23, dtype=dtype)
    key, value = _concatenated(plan, tensors)
    want, _ = reference_attention(tensors["query"], key, value, plan.dense_mask())
    tolerance = 1e-12 if dtype == torch.float64 else 2e-6
    for mask in (plan.dense_mask(), plan.dense_bias(dtype)):
        got = F.scaled_dot_product_attention(tensors["query"], key, value, attn_mask=mask, enable_gqa=True)
        torch.testing.assert_close(got, want, rtol=0, atol=tolerance)


def test_dense_bias_equals_tree_attention_bias_for_todays_text_cache_layout():
    # today: one shared length, left padding / rolled-back positions marked 0 in past [B, L], new nodes at the end
    past = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    parents = torch.tensor([[-1, 0, 0, 1], [-1, 0, 1, 2], [-1, 0, -1, 2]])
    width = past.shape[1] + parents.shape[1]
    hidden = torch.cat([past == 0, torch.zeros((3, parents.shape[1]), dtype=torch.bool)], dim=1)
    plan = AttentionPlan(lengths=torch.full((3,), width), kv_length=width, num_queries=parents.shape[1],
                         hidden=hidden, tree=tree_mask(parents))
    assert torch.equal(plan.dense_bias(torch.float32), tree_attention_bias(past, tree_mask(parents), torch.float32))


def test_dense_mask_lays_the_prefix_before_each_rows_valid_suffix():
    plan = AttentionPlan(lengths=torch.tensor([3, 2]), kv_length=4, num_queries=2, prefix_length=2,
                         prefix_rows=torch.tensor([True, False]))
    assert plan.dense_mask()[:, 0].int().tolist() == [
        [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]],  # row 0: prefix, one older position, new tokens 0..1 causal
        [[0, 0, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0]],  # row 1: no prefix, no older position
    ]


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("changes,message", [
    ({"lengths": torch.tensor([[5]])}, "lengths must be a 1-D integer tensor"),
    ({"lengths": torch.tensor([5.0])}, "lengths must be a 1-D integer tensor"),
    ({"lengths": torch.tensor([1, 5])}, r"lengths must be in \[num_queries, kv_length\] = \[2, 6\].*\[1, 5\]"),
    ({"lengths": torch.tensor([7, 5])}, r"lengths must be in .*\[5, 7\]"),
    ({"num_queries": 0}, "num_queries must be an integer >= 1, got 0"),
    ({"kv_length": True}, "kv_length must be an integer"),
    ({"hidden": torch.zeros((2, 5), dtype=torch.bool)}, r"hidden must be a bool tensor \[B, kv_length\] = \[2, 6\]"),
    ({"hidden": torch.zeros((2, 6))}, "hidden must be a bool tensor"),
    ({"tree": torch.ones((2, 2, 2), dtype=torch.bool)}, "every node sees itself and only earlier nodes"),
    ({"tree": torch.zeros((2, 2, 2), dtype=torch.bool)}, "every node sees itself"),
    ({"tree": torch.ones((2, 3, 3), dtype=torch.bool).tril()}, r"tree must be a bool ancestor mask \[B, T, T\]"),
    ({"prefix_length": -1}, "prefix_length must be an integer >= 0, got -1"),
    ({"prefix_length": 3, "prefix_rows": torch.tensor([True])}, r"prefix_rows must be a bool tensor \[B\] = \[2\]"),
    ({"prefix_rows": torch.tensor([True, True])}, "prefix_length is 0"),
    ({"num_splits": 0}, "num_splits must be an integer >= 1, got 0"),
])
def test_plan_rejects_bad_fields_naming_them(changes, message):
    fields = {"lengths": torch.tensor([6, 5]), "kv_length": 6, "num_queries": 2, **changes}
    with pytest.raises(ValueError, match=message):
        AttentionPlan(**fields)


def test_attention_rejects_mismatched_shapes_naming_them():
    query, key = torch.randn(2, 4, 3, 16), torch.randn(2, 2, 8, 16)
    with pytest.raises(ValueError, match="query heads 4 must be a multiple of key/value heads 3"):
        reference_attention(query, torch.randn(2, 3, 8, 16), torch.randn(2, 3, 8, 16))
    with pytest.raises(ValueError, match="key head_dim 8 must equal the query's 16"):
        reference_attention(query, torch.randn(2, 2, 8, 8), key)
    with pytest.raises(ValueError, match=r"value \[B, Hkv, S\] = \[2, 2, 7\] must match key's \[2, 2, 8\]"):
        reference_attention(query, key, torch.randn(2, 2, 7, 16))
    with pytest.raises(ValueError, match="share a dtype"):
        reference_attention(query, key.double(), key.double())
    with pytest.raises(ValueError, match=r"mask of shape \[2, 1, 3, 7\] does not broadcast to \[B, Hq, T, S\]"):
        reference_attention(query, key, key, torch.ones((2, 1, 3, 7), dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        reference_attention(query, key, key, torch.ones((2, 1, 3, 8)))
    with pytest.raises(ValueError, match="num_splits must be an integer >= 1, got 0"):
        split_kv_attention(query, key, key, num_splits=0)
    plan = AttentionPlan(lengths=torch.tensor([8, 6]), kv_length=8, num_queries=3, prefix_length=4)
    prefix = torch.randn(1, 2, 4, 16)
    with pytest.raises(ValueError, match=r"T = plan.num_queries = 3, got shape \[2, 4, 2, 16\]"):
        cascade_attention(query[:, :, :2], key, key, plan, prefix, prefix)
    with pytest.raises(ValueError, match=r"S = plan.kv_length = 8, got shape \[2, 2, 7, 16\]"):
        cascade_attention(query, key[:, :, :7], key[:, :, :7], plan, prefix, prefix)
    with pytest.raises(ValueError, match="plan.prefix_length is 4: pass prefix_key and prefix_value"):
        cascade_attention(query, key, key, plan)
    with pytest.raises(ValueError, match=r"P = plan.prefix_length = 4, got shape \[2, 2, 4, 16\]"):
        cascade_attention(query, key, key, plan, prefix.expand(2, -1, -1, -1), prefix)
    with pytest.raises(ValueError, match="prefix key/value heads 1 must equal the suffix's 2"):
        cascade_attention(query, key, key, plan, prefix[:, :1], prefix[:, :1])
    no_prefix = AttentionPlan(lengths=torch.tensor([8, 6]), kv_length=8, num_queries=3)
    with pytest.raises(ValueError, match="plan.prefix_length is 0"):
        cascade_attention(query, key, key, no_prefix, prefix, prefix)
    with pytest.raises(ValueError, match="needs at least one"):
        merge_attention_states([])
    with pytest.raises(ValueError, match=r"state 1 has out \[2, 4, 3, 8\]"):
        merge_attention_states([(query, query[..., 0]), (query[..., :8], query[..., 0])])
