"""ponder.kernels.attention.paged: reference-counted, copy-on-write KV pages and attention over them.

The model every check compares against is the plain layout: each row's keys and values as dense
[L, Hkv, length, D] tensors, appended to, sliced, copied and re-indexed as Python lists.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from ponder.kernels.attention import (
    AttentionPlan,
    PagedKVCache,
    PagePoolFull,
    paged_attention,
    paged_split_attention,
    reference_attention,
)
from ponder.kernels.tree import tree_mask

LAYERS, HEADS, KV_HEADS, HEAD_DIM = 2, 4, 2, 16  # grouped-query: two query heads per key/value head
NEW = 5  # new tokens per row in the attention checks, the last NEW positions of each row
SLACK = 3  # plan positions past the longest row, never read

PATHS = {
    "gather": lambda query, cache, layer, plan, **kw: paged_attention(query, cache, layer, plan, **kw),
    "pages": lambda query, cache, layer, plan, **kw: paged_split_attention(query, cache, layer, plan, **kw),
    "page-groups": lambda query, cache, layer, plan, **kw: paged_split_attention(query, cache, layer, plan,
                                                                                 pages_per_split=3, **kw),
}


class Dense:
    """The model: each row's keys and values as [L, Hkv, length, D] tensors, edited as lists."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def lengths(self) -> list[int]:
        return [keys.shape[2] for keys in self.keys]

    def add(self, count: int, pages: torch.Tensor) -> None:  # pages: a cache's pool [L, N, Hkv, page, D]
        empty = pages.new_zeros((pages.shape[0], pages.shape[2], 0, pages.shape[4]))
        self.keys += [empty] * count
        self.values += [empty] * count

    def append(self, rows: list[int], key: torch.Tensor, value: torch.Tensor) -> None:  # key [L, R, Hkv, T, D]
        for i, row in enumerate(rows):
            self.keys[row] = torch.cat([self.keys[row], key[:, i]], dim=2)
            self.values[row] = torch.cat([self.values[row], value[:, i]], dim=2)

    def fork(self, source: int, count: int) -> None:
        self.keys += [self.keys[source]] * count
        self.values += [self.values[source]] * count

    def truncate(self, row: int, length: int) -> None:
        self.keys[row], self.values[row] = self.keys[row][:, :, :length], self.values[row][:, :, :length]

    def drop(self, rows: list[int]) -> None:
        self.reorder([row for row in range(len(self.keys)) if row not in rows])

    def reorder(self, index: list[int]) -> None:
        self.keys, self.values = [self.keys[row] for row in index], [self.values[row] for row in index]

    def padded(self, layer: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, Hkv, size, D] keys and values, zeros past each row's length."""
        def pad(rows):
            out = rows[0].new_zeros((len(rows), rows[0].shape[1], size, rows[0].shape[3]))
            for i, tensor in enumerate(rows):
                out[i, :, :tensor.shape[2]] = tensor[layer]
            return out
        return pad(self.keys), pad(self.values)


def _new_kv(generator: torch.Generator, rows: int, count: int, dtype=torch.float64, layers=LAYERS, heads=KV_HEADS,
            head_dim=HEAD_DIM):
    shape = (layers, rows, heads, count, head_dim)  # [L, R, Hkv, T, D]
    return (torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype),
            torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype))


def _append(cache: PagedKVCache, dense: Dense, generator: torch.Generator, rows: list[int], count: int):
    key, value = _new_kv(generator, len(rows), count, cache.key_pages.dtype, cache.num_layers,
                         cache.key_pages.shape[2], cache.key_pages.shape[4])
    cache.append(rows, key, value)
    dense.append(rows, key, value)
    return key, value


def _scrambled(page_size: int, lengths: list[int], seed: int, dtype=torch.float64):
    """A cache whose rows' pages are scattered and out of order, with stale data past the rows' lengths.

    Real rows grow interleaved with scratch rows, are cut back and regrown; the scratch rows are then
    dropped, so their pages return to the free list in an arbitrary order, and the real rows finish.
    """
    generator, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    cache = PagedKVCache(LAYERS, KV_HEADS, HEAD_DIM, page_size=page_size, dtype=dtype, initial_pages=2)
    dense = Dense()
    real = cache.add_rows(len(lengths))
    scratch = cache.add_rows(2)
    dense.add(len(lengths) + 2, cache.key_pages)

    def grow(targets: dict[int, int]) -> None:
        while any(dense.keys[row].shape[2] < target for row, target in targets.items()):
            order = real + scratch
            rng.shuffle(order)
            for row in order:
                missing = targets.get(row, 10**6) - dense.keys[row].shape[2]
                if missing > 0:
                    _append(cache, dense, generator, [row], min(missing, rng.randint(1, 3)))
                if row in real and rng.random() < 0.1:  # a rollback leaves stale data in the row's last page
                    cut = rng.randint(0, dense.keys[row].shape[2])
                    cache.truncate(row, cut)
                    dense.truncate(row, cut)

    grow({row: length // 2 for row, length in zip(real, lengths)})
    cache.drop(scratch)
    dense.drop(scratch)
    scratch.clear()
    grow({row: length for row, length in zip(real, lengths)})
    assert cache.row_lengths().tolist() == lengths
    assert any(cache.page_table(row) != sorted(cache.page_table(row)) for row in real)  # out of physical order
    return cache, dense


def _random_plan(generator: torch.Generator, lengths: list[int], *, hidden_before: int | None = None,
                 num_splits: int = 1) -> AttentionPlan:
    """Per-row lengths, random hidden older positions (below `hidden_before` when given) and a random tree."""
    lengths_tensor = torch.tensor(lengths)
    size = max(lengths) + SLACK
    position = torch.arange(size)[None, :]
    older = (lengths_tensor - NEW)[:, None]
    hidden = (torch.rand((len(lengths), size), generator=generator) < 0.25) & (position < older)
    if hidden_before is not None:
        hidden &= position >= hidden_before
    parents = torch.full((len(lengths), NEW), -1, dtype=torch.long)
    for node in range(1, NEW):
        parents[:, node] = torch.randint(-1, node, (len(lengths),), generator=generator)
    return AttentionPlan(lengths=lengths_tensor, kv_length=size, num_queries=NEW, hidden=hidden,
                         tree=tree_mask(parents), num_splits=num_splits)


def _reference(query, dense: Dense, layer: int, plan: AttentionPlan):
    key, value = dense.padded(layer, plan.kv_length)
    return reference_attention(query, key, value, plan.dense_mask())


# ---------------------------------------------------------------------------------- attention over pages


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_paged_attention_equals_the_reference_over_the_dense_cache(page_size, path):
    cache, dense = _scrambled(page_size, [17 + NEW, 3 + NEW, 33 + NEW], seed=page_size)
    generator = torch.Generator().manual_seed(100 + page_size)
    plan = _random_plan(generator, cache.row_lengths().tolist(), num_splits=2)
    query = torch.randn((3, HEADS, NEW, HEAD_DIM), generator=generator, dtype=torch.float64)
    for layer in range(LAYERS):
        out, lse = PATHS[path](query, cache, layer, plan)
        want_out, want_lse = _reference(query, dense, layer, plan)
        torch.testing.assert_close(out, want_out, rtol=0, atol=1e-12)
        torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_float32_paged_attention_matches_the_reference(path):
    cache, dense = _scrambled(5, [29 + NEW, 11 + NEW], seed=3, dtype=torch.float32)
    generator = torch.Generator().manual_seed(4)
    plan = _random_plan(generator, cache.row_lengths().tolist())
    query = torch.randn((2, HEADS, NEW, HEAD_DIM), generator=generator)
    out, lse = PATHS[path](query, cache, 1, plan)
    want_out, want_lse = _reference(query.double(), _as_dtype(dense, torch.float64), 1, plan)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), want_out, rtol=0, atol=2e-6)
    torch.testing.assert_close(lse.double(), want_lse, rtol=0, atol=2e-6)


def _as_dtype(dense: Dense, dtype: torch.dtype) -> Dense:
    converted = Dense()
    converted.keys = [keys.to(dtype) for keys in dense.keys]
    converted.values = [values.to(dtype) for values in dense.values]
    return converted


@pytest.mark.parametrize("hidden_in_prompt", [False, True])
@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_forked_rows_read_the_shared_prompt_pages_and_match_the_reference(page_size, hidden_in_prompt):
    prompt = 23
    generator = torch.Generator().manual_seed(page_size)
    cache = PagedKVCache(LAYERS, KV_HEADS, HEAD_DIM, page_size=page_size, dtype=torch.float64, initial_pages=2)
    dense = Dense()
    cache.add_rows(1)
    dense.add(1, cache.key_pages)
    _append(cache, dense, generator, [0], prompt)
    cache.fork(0, 3)
    dense.fork(0, 3)
    for row, own in enumerate([2, 9, 0, 4]):  # every row then adds its own tokens, the new ones last
        _append(cache, dense, generator, [row], own + NEW)
    # each row copied the prompt's partly filled last page before writing; the full pages stay shared
    assert cache.shared_prefix_length() == prompt // page_size * page_size
    assert cache.copied_pages == (3 if prompt % page_size else 0)
    lengths = cache.row_lengths().tolist()
    plan = _random_plan(generator, lengths, hidden_before=None if hidden_in_prompt else prompt)
    assert bool(plan.hidden[:, :prompt].any()) == hidden_in_prompt  # the shared block then ends earlier
    query = torch.randn((4, HEADS, NEW, HEAD_DIM), generator=generator, dtype=torch.float64)
    for path, attend in PATHS.items():
        for layer in range(LAYERS):
            out, lse = attend(query, cache, layer, plan)
            want_out, want_lse = _reference(query, dense, layer, plan)
            torch.testing.assert_close(out, want_out, rtol=0, atol=1e-12, msg=path)
            torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12, msg=path)
    # a subset of rows, in another order
    rows = [3, 1]
    sub_plan = AttentionPlan(lengths=plan.lengths[rows], kv_length=plan.kv_length, num_queries=NEW,
                             hidden=plan.hidden[rows], tree=plan.tree[rows])
    sub_dense = Dense()
    sub_dense.keys, sub_dense.values = [dense.keys[r] for r in rows], [dense.values[r] for r in rows]
    for attend in PATHS.values():
        out, lse = attend(query[rows], cache, 0, sub_plan, rows=rows)
        want_out, want_lse = _reference(query[rows], sub_dense, 0, sub_plan)
        torch.testing.assert_close(out, want_out, rtol=0, atol=1e-12)
        torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_rows_duplicated_by_reorder_keep_their_new_tokens_tree_masked(page_size):
    # a beam kept twice: the two rows read the same pages throughout, new tokens included
    cache, dense = _scrambled(page_size, [17 + NEW, 3 + NEW], seed=20 + page_size)
    cache.reorder([0, 0])
    dense.reorder([0, 0])
    assert cache.shared_prefix_length() == 17 + NEW
    generator = torch.Generator().manual_seed(21)
    plan = _random_plan(generator, cache.row_lengths().tolist(), hidden_before=10**6)  # nothing hidden
    query = torch.randn((2, HEADS, NEW, HEAD_DIM), generator=generator, dtype=torch.float64)
    for attend in PATHS.values():
        out, lse = attend(query, cache, 0, plan)
        want_out, want_lse = _reference(query, dense, 0, plan)
        torch.testing.assert_close(out, want_out, rtol=0, atol=1e-12)
        torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_nan_in_free_pages_or_past_a_rows_length_never_changes_outputs(page_size):
    cache, dense = _scrambled(page_size, [17 + NEW, 3 + NEW, 33 + NEW], seed=7 + page_size)
    (fork,) = cache.fork(2)  # cut back inside a page it shares with row 2, which reads further into it
    cache.truncate(fork, cache.length(2) - NEW - 2)
    dense.fork(2, 1)
    dense.truncate(fork, cache.length(fork))
    generator = torch.Generator().manual_seed(8)
    plan = _random_plan(generator, cache.row_lengths().tolist())
    query = torch.randn((4, HEADS, NEW, HEAD_DIM), generator=generator, dtype=torch.float64)
    clean = {(path, layer): attend(query, cache, layer, plan) for path, attend in PATHS.items()
             for layer in range(LAYERS)}
    # unread: free pages, and every slot of a live page past the longest reach of the rows that read it
    unread = torch.zeros(cache.key_pages.shape[1:2] + (page_size,), dtype=torch.bool)  # [N, page]
    unread[cache.free_pages()] = True
    reach = Counter()
    for row in range(cache.num_rows):
        for slot, page in enumerate(cache.page_table(row)):
            reach[page] = max(reach[page], min(page_size, cache.length(row) - slot * page_size))
    for page, valid in reach.items():
        unread[page, valid:] = True
    assert cache.free_pages()
    assert (int(unread.sum()) > len(cache.free_pages()) * page_size) == (page_size > 1)  # some live pages partly read
    for pool in (cache.key_pages, cache.value_pages):
        pool.masked_fill_(unread[None, :, None, :, None], math.nan)
    for (path, layer), (clean_out, clean_lse) in clean.items():
        out, lse = PATHS[path](query, cache, layer, plan)
        assert torch.isfinite(out).all() and torch.isfinite(lse).all()
        assert torch.equal(out, clean_out) and torch.equal(lse, clean_lse), path


# ---------------------------------------------------------------------------------- sharing and copy-on-write


def test_forking_a_long_prompt_stores_it_once():
    prompt, candidates, new, page_size = 200, 64, 32, 16
    generator = torch.Generator().manual_seed(0)
    cache = PagedKVCache(1, 1, 8, page_size=page_size, initial_pages=16)
    cache.add_rows(1)
    cache.append([0], *_new_kv(generator, 1, prompt, torch.float32, 1, 1, 8))
    allocated, live = cache.allocated_bytes(), cache.live_bytes()
    assert live == math.ceil(prompt / page_size) * cache.page_bytes
    cache.fork(0, candidates - 1)
    # N forks allocate nothing: the ratio of bytes after to before is exactly 1
    assert cache.allocated_bytes() / allocated == 1.0 and cache.live_bytes() / live == 1.0
    assert all(cache.page_table(row) == cache.page_table(0) for row in range(candidates))
    assert all(cache.refcount(page) == candidates for page in cache.page_table(0))
    position_bytes = cache.page_bytes // page_size
    assert candidates * prompt * position_bytes / cache.live_bytes() > 61  # dense copies / paged: 64 x 200 / 208
    cache.append(list(range(candidates)), *_new_kv(generator, candidates, new, torch.float32, 1, 1, 8))
    # 12 full prompt pages shared; per row: its copy of the partly filled page 12 (the last writer
    # keeps the original) and two fresh pages
    assert cache.copied_pages == candidates - 1
    assert cache.num_live_pages == prompt // page_size + candidates * 3
    dense_bytes = candidates * (prompt + new) * position_bytes
    assert dense_bytes / cache.live_bytes() > 4.5  # ideal N(P+G)/(P+NG) = 6.6 before page rounding


@pytest.mark.parametrize("writer", ["fork", "source"])
def test_append_after_fork_copies_exactly_one_page_and_leaves_the_other_row_bit_identical(writer):
    generator = torch.Generator().manual_seed(1)
    cache, dense = PagedKVCache(LAYERS, KV_HEADS, HEAD_DIM, page_size=4, dtype=torch.float64), Dense()
    cache.add_rows(1)
    dense.add(1, cache.key_pages)
    _append(cache, dense, generator, [0], 10)  # pages 0, 1 full; page 2 holds positions 8, 9
    table = cache.page_table(0)
    (fork,) = cache.fork(0)
    dense.fork(0, 1)
    before = [cache.gather(layer, [0]) for layer in range(LAYERS)]
    live = cache.num_live_pages
    written, other = (fork, 0) if writer == "fork" else (0, fork)
    key, _ = _append(cache, dense, generator, [written], 3)
    assert cache.copied_pages == 1
    assert cache.num_live_pages == live + 2  # the copied page and a fresh one for position 12
    assert cache.page_table(other) == table
    assert cache.page_table(written)[:2] == table[:2] and cache.page_table(written)[2] not in table
    for layer in range(LAYERS):
        keys, values = cache.gather(layer, [other])
        assert torch.equal(keys, before[layer][0]) and torch.equal(values, before[layer][1])
        keys, _ = cache.gather(layer, [written])
        assert torch.equal(keys[0, :, :10], before[layer][0][0]) and torch.equal(keys[0, :, 10:], key[layer, 0])


def test_append_at_a_page_boundary_after_fork_copies_nothing():
    generator = torch.Generator().manual_seed(2)
    cache, dense = PagedKVCache(LAYERS, KV_HEADS, HEAD_DIM, page_size=4, dtype=torch.float64), Dense()
    cache.add_rows(1)
    dense.add(1, cache.key_pages)
    _append(cache, dense, generator, [0], 8)
    cache.fork(0, 2)
    dense.fork(0, 2)
    _append(cache, dense, generator, [1, 2], 5)
    assert cache.copied_pages == 0 and cache.num_live_pages == 2 + 2 * 2


def test_truncate_into_a_shared_page_leaves_the_other_sharers_unchanged():
    generator = torch.Generator().manual_seed(3)
    cache, dense = PagedKVCache(LAYERS, KV_HEADS, HEAD_DIM, page_size=4, dtype=torch.float64), Dense()
    cache.add_rows(1)
    dense.add(1, cache.key_pages)
    _append(cache, dense, generator, [0], 14)  # pages 0..3
    cache.fork(0, 2)
    dense.fork(0, 2)
    table = cache.page_table(0)
    before = [cache.gather(layer, [0, 2]) for layer in range(LAYERS)]
    cache.truncate(1, 6)  # into page 1, which rows 0 and 2 still read whole
    dense.truncate(1, 6)
    assert cache.copied_pages == 0  # truncation writes nothing
    assert cache.shared_prefix_length() == 6 and cache.shared_prefix_length([0, 2]) == 14
    assert [cache.refcount(page) for page in table] == [3, 3, 2, 2]
    assert cache.page_table(1) == table[:2]
    key, _ = _append(cache, dense, generator, [1], 5)
    assert cache.copied_pages == 1  # only page 1, before positions 6 and 7 were written
    assert cache.page_table(1)[0] == table[0] and cache.page_table(1)[1] not in table
    for layer in range(LAYERS):
        keys, values = cache.gather(layer, [0, 2])
        assert torch.equal(keys, before[layer][0]) and torch.equal(values, before[layer][1])
        keys, _ = cache.gather(layer, [1])
        assert torch.equal(keys[0, :, :6], before[layer][0][0, :, :6]) and torch.equal(keys[0, :, 6:], key[layer, 0])


def test_drop_returns_pages_to_the_free_list_and_the_pool_reuses_them():
    generator = torch.Generator().manual_seed(4)
    cache, dense = PagedKVCache(LAYERS, KV_HEADS, HEAD_DIM, page_size=4, initial_pages=8), Dense()
    cache.add_rows(2)
    dense.add(2, cache.key_pages)
    _append(cache, dense, generator, [0, 1], 10)  # 3 pages each
    cache.fork(0)  # row 2 shares row 0's pages
    dense.fork(0, 1)
    table = cache.page_table(0)
    cache.drop(0)  # row 0's pages are still read by the fork, now row 1
    dense.drop([0])
    assert cache.num_rows == 2 and cache.page_table(1) == table
    assert [cache.refcount(page) for page in table] == [1, 1, 1] and cache.num_free_pages == 2
    cache.drop([0, 1])
    assert cache.num_rows == 0 and cache.num_live_pages == 0 and cache.live_bytes() == 0
    assert cache.free_pages() == list(range(8)) and all(cache.refcount(page) == 0 for page in range(8))
    allocated = cache.allocated_bytes()
    cache.add_rows(1)
    cache.append([0], *_new_kv(generator, 1, 32, torch.float32))  # 8 pages: all reused, none allocated
    assert cache.num_pages == 8 and cache.allocated_bytes() == allocated and cache.num_free_pages == 0


def test_the_pool_grows_when_it_runs_out_and_refuses_past_max_pages():
    generator = torch.Generator().manual_seed(5)
    cache, dense = PagedKVCache(LAYERS, KV_HEADS, HEAD_DIM, page_size=4, dtype=torch.float64, initial_pages=2), Dense()
    cache.add_rows(2)
    dense.add(2, cache.key_pages)
    _append(cache, dense, generator, [0], 6)
    _append(cache, dense, generator, [1], 20)  # needs 5 more pages of a 2-page pool
    assert cache.num_pages >= 7 and cache.allocated_bytes() == cache.num_pages * cache.page_bytes
    for layer in range(LAYERS):
        keys, values = cache.gather(layer)
        want_keys, want_values = dense.padded(layer, 20)
        assert torch.equal(keys[0, :, :6], want_keys[0, :, :6]) and torch.equal(keys[1], want_keys[1])
        assert torch.equal(values[1], want_values[1])

    capped = PagedKVCache(LAYERS, KV_HEADS, HEAD_DIM, page_size=4, initial_pages=2, max_pages=3)
    capped.add_rows(1)
    capped.append([0], *_new_kv(generator, 1, 12, torch.float32))  # grows to the cap
    capped.fork(0)
    state = (capped.row_lengths().tolist(), capped.page_table(0), capped.page_table(1), capped.free_pages())
    with pytest.raises(PagePoolFull, match=r"needs 1 free page\(s\) but 0 of 3 are free and max_pages = 3"):
        capped.append([1], *_new_kv(generator, 1, 1, torch.float32))
    assert (capped.row_lengths().tolist(), capped.page_table(0), capped.page_table(1), capped.free_pages()) == state
    capped.truncate(1, 11)  # into the shared last page: writing there needs a copy, and no page is left
    with pytest.raises(PagePoolFull, match="max_pages = 3"):
        capped.extend([1], 1)
    assert capped.length(1) == 11 and capped.copied_pages == 0
    capped.drop(0)  # now the row owns its pages and writes in place
    capped.append([0], *_new_kv(generator, 1, 1, torch.float32))
    assert capped.length(0) == 12 and capped.copied_pages == 0


def test_extend_then_write_per_layer_equals_append():
    generator = torch.Generator().manual_seed(6)
    stepped = PagedKVCache(LAYERS, KV_HEADS, HEAD_DIM, page_size=3, dtype=torch.float64)
    whole = PagedKVCache(LAYERS, KV_HEADS, HEAD_DIM, page_size=3, dtype=torch.float64)
    for cache in (stepped, whole):
        cache.add_rows(2)
    for count in (4, 1, 5):
        key, value = _new_kv(generator, 2, count)
        whole.append([1, 0], key, value)
        slots = stepped.extend([1, 0], count)  # a forward pass: room first, then each layer writes its own
        assert slots.shape == (2, count)
        for layer in range(LAYERS):
            stepped.write(layer, slots, key[layer], value[layer])
    for layer in range(LAYERS):
        for got, want in zip(stepped.gather(layer), whole.gather(layer)):
            assert torch.equal(got, want)


# ---------------------------------------------------------------------------------- the model check


@pytest.mark.parametrize("page_size", [1, 3])
def test_random_operations_match_a_list_of_tensors_model(page_size):
    rng, generator = random.Random(page_size), torch.Generator().manual_seed(page_size)
    cache = PagedKVCache(2, 1, 2, page_size=page_size, initial_pages=2)
    dense = Dense()
    cache.add_rows(2)
    dense.add(2, cache.key_pages)
    operations = ["append"] * 4 + ["fork"] * 2 + ["truncate"] * 2 + ["drop", "reorder", "add"]
    counts = Counter()
    for _ in range(300):
        rows = cache.num_rows
        operation = rng.choice(operations)
        if rows == 0 or (operation in ("fork", "add") and rows >= 8):
            operation = "add" if rows < 8 else "drop"
        copied = cache.copied_pages
        if operation == "add":
            cache.add_rows(1)
            dense.add(1, cache.key_pages)
        elif operation == "append":
            chosen = rng.sample(range(rows), rng.randint(1, min(3, rows)))
            _append(cache, dense, generator, chosen, rng.randint(1, 2 * page_size + 1))
            assert cache.copied_pages - copied <= len(chosen)  # at most the one shared last page per row
        elif operation == "fork":
            source, count = rng.randrange(rows), rng.randint(1, 2)
            assert cache.fork(source, count) == list(range(rows, rows + count))
            dense.fork(source, count)
        elif operation == "truncate":
            row = rng.randrange(rows)
            length = rng.randint(0, cache.length(row))
            cache.truncate(row, length)
            dense.truncate(row, length)
        elif operation == "drop":
            chosen = rng.sample(range(rows), rng.randint(1, min(2, rows)))
            cache.drop(chosen)
            dense.drop(chosen)
        else:
            index = [rng.randrange(rows) for _ in range(rng.randint(1, 6))]
            cache.reorder(torch.tensor(index))
            dense.reorder(index)
        if operation != "append":
            assert cache.copied_pages == copied  # only writes copy pages
        counts[operation] += 1
        _check_against_model(cache, dense)
        for pool in (cache.key_pages, cache.value_pages):  # a read of a freed page would now show
            pool[:, cache.free_pages()] = math.nan
    assert min(counts.values()) >= 10 and (cache.copied_pages > 0) == (page_size > 1)  # a full page is never written


def _check_against_model(cache: PagedKVCache, dense: Dense) -> None:
    lengths = dense.lengths()
    assert cache.row_lengths().tolist() == lengths
    references = Counter(page for row in range(cache.num_rows) for page in cache.page_table(row))
    for row, length in enumerate(lengths):
        assert len(cache.page_table(row)) == -(-length // cache.page_size)
    assert [cache.refcount(page) for page in range(cache.num_pages)] == [references[p] for p in range(cache.num_pages)]
    assert cache.free_pages() == [page for page in range(cache.num_pages) if references[page] == 0]
    assert cache.num_live_pages == len(references) and cache.live_bytes() == len(references) * cache.page_bytes
    if not lengths:
        return
    for layer in range(cache.num_layers):
        keys, values = cache.gather(layer)
        for row, length in enumerate(lengths):
            assert torch.equal(keys[row, :, :length], dense.keys[row][layer])
            assert torch.equal(values[row, :, :length], dense.values[row][layer])


# ---------------------------------------------------------------------------------- errors


def _small_cache() -> PagedKVCache:
    cache = PagedKVCache(LAYERS, KV_HEADS, HEAD_DIM, page_size=4)
    cache.add_rows(2)
    cache.append([0, 1], torch.zeros(LAYERS, 2, KV_HEADS, 5, HEAD_DIM), torch.zeros(LAYERS, 2, KV_HEADS, 5, HEAD_DIM))
    return cache


def _plan(lengths, **changes) -> AttentionPlan:
    return AttentionPlan(lengths=torch.tensor(lengths), kv_length=6, num_queries=2, **changes)


@pytest.mark.parametrize("call,message", [
    (lambda c: PagedKVCache(2, 2, 16, page_size=0), "page_size must be an integer >= 1, got 0"),
    (lambda c: PagedKVCache(2, 2, 16, page_size=2.5), "page_size must be an integer >= 1, got 2.5"),
    (lambda c: PagedKVCache(2, 2, 16, initial_pages=4, max_pages=2), "max_pages 2 must be >= initial_pages 4"),
    (lambda c: PagedKVCache(2, 2, 16, dtype=torch.long), "dtype must be a floating torch dtype"),
    (lambda c: PagedKVCache(0, 2, 16), "num_layers must be an integer >= 1, got 0"),
    (lambda c: c.truncate(2, 0), r"row 2 is out of range \[0, 2\)"),
    (lambda c: c.truncate(0, 6), r"truncate length 6 for row 0 must be in \[0, 5\]"),
    (lambda c: c.truncate(0, -1), "length must be an integer >= 0, got -1"),
    (lambda c: c.truncate(True, 1), "row must be an integer >= 0, got True"),
    (lambda c: c.fork(-1), "row must be an integer >= 0, got -1"),
    (lambda c: c.fork(0, 0), "count must be an integer >= 1, got 0"),
    (lambda c: c.extend([0], -1), "count must be an integer >= 0, got -1"),
    (lambda c: c.append([0, 0], torch.zeros(2, 2, 2, 1, 16), torch.zeros(2, 2, 2, 1, 16)),
     r"rows must be distinct, got row 0 more than once in \[0, 0\]"),
    (lambda c: c.append([0], torch.zeros(2, 1, 2, 3, 8), torch.zeros(2, 1, 2, 3, 8)),
     r"key and value must be \[L, R, Hkv, T, D\] = \[2, 1, 2, 3, 16\], got \[2, 1, 2, 3, 8\]"),
    (lambda c: c.append([0], torch.zeros(2, 1, 2, 3, 16, dtype=torch.float64), torch.zeros(2, 1, 2, 3, 16)),
     "key is torch.float64 on cpu; the pages are torch.float32 on cpu"),
    (lambda c: c.append([0], torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16)), r"key must be \[L, R, Hkv, T, D\]"),
    (lambda c: c.write(0, torch.zeros(1, 3), torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16)),
     "slots must be the int64 .R, T. tensor extend returned"),
    (lambda c: c.reorder([0, 3]), r"row 3 is out of range \[0, 2\)"),
    (lambda c: c.reorder(torch.tensor([[0]])), "index must be an int, a sequence of ints or a 1-D integer tensor"),
    (lambda c: c.drop([1, 1]), "rows must be distinct, got row 1 more than once"),
    (lambda c: c.gather(2), r"layer 2 is out of range \[0, 2\)"),
    (lambda c: c.gather(0, start=-1), "start must be an integer >= 0, got -1"),
    (lambda c: c.refcount(99), r"page 99 is out of range \[0, 16\)"),
    (lambda c: paged_attention(torch.zeros(2, 4, 2, 16), c, 0, _plan([5, 4])),
     r"plan.lengths \[5, 4\] must equal the cache's lengths \[5, 5\] of rows \[0, 1\]"),
    (lambda c: paged_attention(torch.zeros(1, 4, 2, 16), c, 0, _plan([5]), rows=[2]), r"row 2 is out of range"),
    (lambda c: paged_attention(torch.zeros(2, 4, 2, 16), c, 0, _plan([5, 5], prefix_length=3)),
     "plan.prefix_length is 3; over a paged cache pass a plan with prefix_length 0"),
    (lambda c: paged_split_attention(torch.zeros(2, 4, 2, 16), c, 0, _plan([5, 5]), pages_per_split=0),
     "pages_per_split must be an integer >= 1, got 0"),
    (lambda c: paged_split_attention(torch.zeros(2, 4, 1, 16), c, 0, _plan([5, 5])),
     r"T = plan.num_queries = 2, got shape \[2, 4, 1, 16\]"),
    (lambda c: paged_split_attention(torch.zeros(2, 3, 2, 16), c, 0, _plan([5, 5])),
     "query heads 3 must be a multiple of key/value heads 2"),
    (lambda c: paged_attention(torch.zeros(2, 4, 2, 16), c, 5, _plan([5, 5])), r"layer 5 is out of range \[0, 2\)"),
])
def test_bad_arguments_raise_value_errors_naming_the_value_and_what_is_allowed(call, message):
    cache = _small_cache()
    with pytest.raises(ValueError, match=message):
        call(cache)
