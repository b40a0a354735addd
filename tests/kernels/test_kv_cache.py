"""Tests for ponder.kernels.kv_cache.KVCache: append, growth, rollback, reorder and validation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ponder.kernels import KVCache

BATCH, HEADS, HEAD_DIM = 2, 3, 4


def _block(length: int, seed: int, batch: int = BATCH) -> torch.Tensor:
    """A deterministic random block [B, H, T, D] so that different blocks never coincide."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, HEADS, length, HEAD_DIM, generator=generator)


def _append_all_layers(cache: KVCache, length: int, seed: int) -> None:
    # Values differ from keys and per layer, so a mix-up between them would show.
    for layer in range(cache.num_layers):
        cache.append(layer, _block(length, seed + 100 * layer), _block(length, seed + 100 * layer + 50))


def test_append_returns_concatenation_of_everything_appended():
    cache = KVCache(num_layers=2, capacity=8)
    first_k, first_v = _block(3, 1), _block(3, 2)  # [B, H, 3, D]
    second_k, second_v = _block(2, 3), _block(2, 4)  # [B, H, 2, D]

    cache.append(0, first_k, first_v)
    keys, values = cache.append(0, second_k, second_v)  # [B, H, 5, D]

    assert torch.equal(keys, torch.cat([first_k, second_k], dim=2))
    assert torch.equal(values, torch.cat([first_v, second_v], dim=2))
    assert torch.equal(cache.keys(0), keys)
    assert torch.equal(cache.values(0), values)
    assert cache.length == 5
    assert cache.layer_length(0) == 5
    assert cache.layer_length(1) == 0
    assert cache.batch_size == BATCH


def test_empty_cache_reports_nothing_stored():
    cache = KVCache(num_layers=3)
    assert cache.length == 0
    assert cache.batch_size is None
    assert cache.num_layers == 3
    with pytest.raises(ValueError, match="nothing stored"):
        cache.keys(0)


def test_truncate_then_refeed_equals_never_appended():
    rolled_back = KVCache(num_layers=3, capacity=4)
    _append_all_layers(rolled_back, 3, seed=10)  # A
    _append_all_layers(rolled_back, 4, seed=20)  # B, to be undone
    rolled_back.truncate(3)
    _append_all_layers(rolled_back, 2, seed=30)  # C

    clean = KVCache(num_layers=3, capacity=4)
    _append_all_layers(clean, 3, seed=10)  # A
    _append_all_layers(clean, 2, seed=30)  # C

    assert rolled_back.length == clean.length == 5
    for layer in range(3):
        assert torch.equal(rolled_back.keys(layer), clean.keys(layer))
        assert torch.equal(rolled_back.values(layer), clean.values(layer))


def test_truncate_does_not_reallocate():
    cache = KVCache(num_layers=1, capacity=8)
    cache.append(0, _block(6, 1), _block(6, 2))
    buffer_address = cache.keys(0).data_ptr()
    cache.truncate(2)
    assert cache.keys(0).data_ptr() == buffer_address
    assert cache.capacity(0) == 8
    assert cache.keys(0).shape == (BATCH, HEADS, 2, HEAD_DIM)


def test_growth_past_capacity_keeps_contents():
    cache = KVCache(num_layers=1, capacity=2)
    blocks = [_block(length, seed) for seed, length in enumerate([1, 2, 3, 1, 5])]
    for block in blocks:
        keys, values = cache.append(0, block, -block)

    expected = torch.cat(blocks, dim=2)  # [B, H, 12, D]
    assert torch.equal(keys, expected)
    assert torch.equal(values, -expected)
    assert cache.capacity(0) >= 12


def test_growth_at_least_doubles():
    cache = KVCache(num_layers=1, capacity=4)
    cache.append(0, _block(4, 0), _block(4, 1))
    cache.append(0, _block(1, 2), _block(1, 3))
    assert cache.capacity(0) == 8


def test_reorder_selects_and_duplicates_rows():
    cache = KVCache(num_layers=2, capacity=4)
    _append_all_layers(cache, 3, seed=0)
    before_keys = [cache.keys(layer).clone() for layer in range(2)]
    before_values = [cache.values(layer).clone() for layer in range(2)]

    index = torch.tensor([1, 1, 0])  # B' = 3 from B = 2
    cache.reorder(index)

    assert cache.batch_size == 3
    for layer in range(2):
        assert torch.equal(cache.keys(layer), before_keys[layer][index])
        assert torch.equal(cache.values(layer), before_values[layer][index])

    # The reordered cache accepts appends with the new batch size and keeps growing correctly.
    extra = _block(5, 99, batch=3)
    keys, _ = cache.append(0, extra, extra)
    assert torch.equal(keys, torch.cat([before_keys[0][index], extra], dim=2))


@pytest.mark.parametrize("bad_length", [-1, 4, 100])
def test_truncate_rejects_out_of_range_length(bad_length):
    cache = KVCache(num_layers=1)
    cache.append(0, _block(3, 0), _block(3, 1))
    with pytest.raises(ValueError, match=rf"{bad_length}.*\[0, 3\]"):
        cache.truncate(bad_length)


@pytest.mark.parametrize("bad_layer", [-1, 2, 7])
def test_bad_layer_index_raises(bad_layer):
    cache = KVCache(num_layers=2)
    with pytest.raises(ValueError, match=rf"layer {bad_layer}"):
        cache.append(bad_layer, _block(1, 0), _block(1, 1))
    with pytest.raises(ValueError, match=rf"layer {bad_layer}"):
        cache.layer_length(bad_layer)


def test_non_integer_layer_raises_type_error():
    cache = KVCache(num_layers=2)
    with pytest.raises(TypeError, match="True"):
        cache.layer_length(True)


@pytest.mark.parametrize(
    ("bad_key", "expected_message"),
    [
        (torch.zeros(BATCH + 1, HEADS, 1, HEAD_DIM), "batch size 3 != cached 2"),
        (torch.zeros(BATCH, HEADS + 1, 1, HEAD_DIM), "heads 4 != cached 3"),
        (torch.zeros(BATCH, HEADS, 1, HEAD_DIM + 1), "head dim 5 != cached 4"),
        (torch.zeros(BATCH, HEADS, 1, HEAD_DIM, dtype=torch.float64), "dtype torch.float64"),
    ],
)
def test_append_rejects_mismatched_block(bad_key, expected_message):
    cache = KVCache(num_layers=1)
    cache.append(0, _block(2, 0), _block(2, 1))
    with pytest.raises(ValueError, match=expected_message):
        cache.append(0, bad_key, bad_key)


def test_append_rejects_value_shaped_unlike_key():
    cache = KVCache(num_layers=1)
    with pytest.raises(ValueError, match="value shape"):
        cache.append(0, _block(2, 0), _block(3, 1))


def test_reset_forgets_everything():
    cache = KVCache(num_layers=2)
    _append_all_layers(cache, 2, seed=0)
    cache.reset()
    assert cache.length == 0
    assert cache.batch_size is None
    keys, _ = cache.append(0, _block(1, 5, batch=4), _block(1, 6, batch=4))  # new batch size is fine
    assert keys.shape == (4, HEADS, 1, HEAD_DIM)


# Each op is ("append", block length) or ("truncate", fraction of the current length to keep).
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(min_value=0, max_value=5)),
        st.tuples(st.just("truncate"), st.floats(min_value=0.0, max_value=1.0)),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(operations=_operations)
def test_matches_naive_concatenation_reference(operations):
    num_layers = 2
    cache = KVCache(num_layers=num_layers, capacity=2)  # tiny capacity so growth is exercised
    reference_keys = [torch.zeros(BATCH, HEADS, 0, HEAD_DIM) for _ in range(num_layers)]
    reference_values = [torch.zeros(BATCH, HEADS, 0, HEAD_DIM) for _ in range(num_layers)]

    for step, (kind, amount) in enumerate(operations):
        if kind == "append":
            for layer in range(num_layers):
                key = _block(amount, seed=2 * (step * num_layers + layer))
                value = _block(amount, seed=2 * (step * num_layers + layer) + 1)
                reference_keys[layer] = torch.cat([reference_keys[layer], key], dim=2)
                reference_values[layer] = torch.cat([reference_values[layer], value], dim=2)
                keys, values = cache.append(layer, key, value)
                assert torch.equal(keys, reference_keys[layer])
                assert torch.equal(values, reference_values[layer])
        else:
            keep = int(amount * cache.length)
            cache.truncate(keep)
            reference_keys = [keys[:, :, :keep] for keys in reference_keys]
            reference_values = [values[:, :, :keep] for values in reference_values]

        assert cache.length == reference_keys[0].shape[2]
        for layer in range(num_layers):
            assert cache.layer_length(layer) == reference_keys[layer].shape[2]
            if cache.batch_size is not None:
                assert torch.equal(cache.keys(layer), reference_keys[layer])
                assert torch.equal(cache.values(layer), reference_values[layer])


def test_join_right_aligns_both_sides_and_pads_the_shorter_with_zeros():
    mine, theirs = KVCache(num_layers=2, capacity=4), KVCache(num_layers=2, capacity=4)
    _append_all_layers(mine, 5, seed=1)  # [2, H, 5, D]
    _append_all_layers(theirs, 3, seed=7)  # [2, H, 3, D]
    before_mine = [(mine.keys(layer).clone(), mine.values(layer).clone()) for layer in range(2)]
    before_theirs = [(theirs.keys(layer).clone(), theirs.values(layer).clone()) for layer in range(2)]
    mine.join(theirs, torch.tensor([1, 1, 0]))
    assert mine.batch_size == 5 and mine.length == 5
    for layer in range(2):
        (keys, values), (their_k, their_v) = before_mine[layer], before_theirs[layer]
        assert torch.equal(mine.keys(layer)[:2], keys) and torch.equal(mine.values(layer)[:2], values)
        joined = mine.keys(layer)[2:]  # [3, H, 5, D]: their rows 1, 1, 0 in the last 3 positions
        assert torch.equal(joined[:, :, 2:], their_k[[1, 1, 0]]) and torch.equal(mine.values(layer)[2:, :, 2:],
                                                                                   their_v[[1, 1, 0]])
        assert not joined[:, :, :2].any()
    # the longer side joining pads the rows already there
    longer = KVCache(num_layers=2)
    _append_all_layers(longer, 7, seed=3)
    mine.join(longer)
    assert (mine.batch_size, mine.length) == (7, 7)
    assert torch.equal(mine.keys(0)[:2, :, 2:], before_mine[0][0]) and not mine.keys(0)[:5, :, :2].any()
    # an empty cache takes the other's rows as they are; appends go on after them
    empty = KVCache(num_layers=2, capacity=2)
    empty.join(theirs)
    assert torch.equal(empty.keys(1), before_theirs[1][0])
    _append_all_layers(empty, 4, seed=9)
    assert empty.length == 7


def test_drop_leading_forgets_the_first_positions_and_keeps_the_rest_in_place():
    cache = KVCache(num_layers=2, capacity=4)
    _append_all_layers(cache, 6, seed=2)
    kept = cache.keys(1)[:, :, 2:].clone()
    cache.drop_leading(2)
    assert cache.length == 4 and torch.equal(cache.keys(1), kept)
    _append_all_layers(cache, 1, seed=5)
    assert cache.length == 5 and torch.equal(cache.keys(1)[:, :, :4], kept)
    with pytest.raises(ValueError, match=r"drop_leading count 9 is outside the allowed range \[0, 5\]"):
        cache.drop_leading(9)
    cache.drop_leading(5)
    assert cache.length == 0
    _append_all_layers(cache, 2, seed=6)
    assert cache.length == 2


def test_join_refuses_a_cache_of_another_shape():
    mine, other = KVCache(num_layers=2), KVCache(num_layers=3)
    with pytest.raises(ValueError, match="equal layer count"):
        mine.join(other)
    _append_all_layers(mine, 2, seed=1)
    wide = KVCache(num_layers=2)
    for layer in range(2):
        wide.append(layer, torch.randn(1, HEADS + 1, 2, HEAD_DIM), torch.randn(1, HEADS + 1, 2, HEAD_DIM))
    with pytest.raises(ValueError, match="heads"):
        mine.join(wide)
