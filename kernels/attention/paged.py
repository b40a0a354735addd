"""Paged KV: every row's keys/values live in fixed-size pages of one pool, listed by the row's page table.

Rule: position p of a row is slot p % page_size of page table[p // page_size]; a page holds those
positions for every layer (the pools are [L, num_pages, Hkv, page_size, D]). Pages are
reference-counted: fork and reorder copy page tables, never pages, so N candidates forked from one
prefilled prompt store it once. A row writes into a page only while it alone references it; a
shared page is copied first (copy-on-write), so appending after a fork, or after truncating into a
shared page, copies at most that one page. A page whose count falls to 0 returns to the free list,
and the pool grows when the list runs dry. This is vLLM's PagedAttention (Kwon et al. 2023,
*Efficient Memory Management for Large Language Model Serving with PagedAttention*): block tables,
reference-counted blocks, copy-on-write for parallel sampling and beam search.

Attention reads the pages two ways, both exact against `reference_attention` over the dense cache:
`paged_attention` gathers the positions all rows read from the same pages into one prefix that every
row's queries attend together (cascade attention, read once), and each row's other pages into the
per-row suffix layout of `AttentionPlan`; `paged_split_attention` attends each row's page groups
one at a time and merges their states by lse (PagedAttention V2's partitions, flash-decoding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .cascade import cascade_attention
from .merge import merge_attention_states
from .plan import AttentionPlan, _count
from .reference import attend_state, check_qkv

Rows = int | Sequence[int] | Tensor


class PagePoolFull(RuntimeError):
    """An allocation needs more pages than the pool's `max_pages` allows; the cache is left unchanged."""


class PagedKVCache:
    """Rows of keys/values for every layer, stored in reference-counted pages (see the module docstring).

    Row indices are batch positions, as in `KVCache`: `drop` and `reorder` renumber the rows that
    remain. A shared prompt is stored once by prefilling one row and forking it::

        cache = PagedKVCache(num_layers, num_kv_heads, head_dim, page_size=16)
        (row,) = cache.add_rows(1)
        cache.append([row], prompt_keys, prompt_values)  # [L, 1, Hkv, P, D]
        cache.fork(row, n - 1)  # n rows now read the same prompt pages

    Page bookkeeping lives on the host (Python lists, as vLLM's block manager); only the pools and
    the page indices built for a read or write are tensors on `device`.

    Args:
        num_layers: layers whose keys/values every page holds, >= 1.
        num_kv_heads: key/value heads Hkv, >= 1.
        head_dim: D, shared by keys and values, >= 1.
        page_size: positions per page, >= 1 (vLLM's block size; 16 is its default).
        dtype: a floating dtype for the pools.
        device: where the pools live.
        initial_pages: pages allocated up front, >= 1; the pool at least doubles when it runs out.
        max_pages: hard cap on the pool's pages (None = no cap); an allocation past it raises
            `PagePoolFull` and changes nothing.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, *, page_size: int = 16,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", initial_pages: int = 16,
                 max_pages: int | None = None):
        num_layers = _count(num_layers, "num_layers", 1)
        num_kv_heads = _count(num_kv_heads, "num_kv_heads", 1)
        head_dim = _count(head_dim, "head_dim", 1)
        self._page_size = _count(page_size, "page_size", 1)
        initial_pages = _count(initial_pages, "initial_pages", 1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
        if max_pages is not None:
            max_pages = _count(max_pages, "max_pages", 1)
            if max_pages < initial_pages:
                raise ValueError(f"max_pages {max_pages} must be >= initial_pages {initial_pages}")
        self._max_pages = max_pages
        shape = (num_layers, initial_pages, num_kv_heads, self._page_size, head_dim)
        self._keys = torch.empty(shape, dtype=dtype, device=device)  # [L, N, Hkv, page, D]
        self._values = torch.empty(shape, dtype=dtype, device=device)  # [L, N, Hkv, page, D]
        self._refcount = [0] * initial_pages  # references to each page from all page tables
        self._free = list(reversed(range(initial_pages)))  # a stack: pop() hands out the lowest id first
        self._tables: list[list[int]] = []  # per row: page ids; len == ceil(length / page_size)
        self._lengths: list[int] = []  # per row: valid positions
        self._copied_pages = 0

    # ------------------------------------------------------------------ sizes and bookkeeping

    @property
    def num_layers(self) -> int:
        """Layers every page holds."""
        return self._keys.shape[0]

    @property
    def page_size(self) -> int:
        """Positions per page."""
        return self._page_size

    @property
    def num_rows(self) -> int:
        """Rows B."""
        return len(self._tables)

    @property
    def num_pages(self) -> int:
        """Pages the pool has allocated, free ones included."""
        return len(self._refcount)

    @property
    def num_free_pages(self) -> int:
        """Pages on the free list (reference count 0)."""
        return len(self._free)

    @property
    def num_live_pages(self) -> int:
        """Pages some row references."""
        return self.num_pages - self.num_free_pages

    @property
    def copied_pages(self) -> int:
        """Pages copied by copy-on-write since construction (each copy covers every layer)."""
        return self._copied_pages

    @property
    def key_pages(self) -> Tensor:
        """The key pool [L, num_pages, Hkv, page_size, D]; replaced by a larger tensor when the pool grows."""
        return self._keys

    @property
    def value_pages(self) -> Tensor:
        """The value pool [L, num_pages, Hkv, page_size, D]; replaced by a larger tensor when the pool grows."""
        return self._values

    @property
    def page_bytes(self) -> int:
        """Bytes of one page: its keys and values for every layer."""
        return 2 * self._keys[:, 0].numel() * self._keys.element_size()

    def allocated_bytes(self) -> int:
        """Bytes the key and value pools occupy, free pages included."""
        return self.num_pages * self.page_bytes

    def live_bytes(self) -> int:
        """Bytes of the pages some row references (each shared page counted once)."""
        return self.num_live_pages * self.page_bytes

    def length(self, row: int) -> int:
        """Valid positions of one row."""
        return self._lengths[self._row(row)]

    def row_lengths(self, rows: Rows | None = None) -> Tensor:
        """Valid positions of the given rows (None = all, in order): int64 [B] on the cache's device."""
        return torch.tensor([self._lengths[row] for row in self._row_list(rows)], dtype=torch.long,
                            device=self._keys.device)

    def page_table(self, row: int) -> list[int]:
        """A copy of one row's page ids, position p living in page table[p // page_size]."""
        return list(self._tables[self._row(row)])

    def refcount(self, page: int) -> int:
        """How many page-table entries reference a page (0 = free)."""
        page = _count(page, "page", 0)
        if page >= self.num_pages:
            raise ValueError(f"page {page} is out of range [0, {self.num_pages})")
        return self._refcount[page]

    def free_pages(self) -> list[int]:
        """The ids of the free pages (their contents are stale and never read)."""
        return sorted(self._free)

    def shared_prefix_length(self, rows: Rows | None = None) -> int:
        """Leading positions that all the given rows (None = all) read from the same physical pages.

        Those rows' first pages are the same ids, and each row reads at least this many positions
        of them, so the prefix can be attended once for all the rows. 0 for no rows.
        """
        rows = self._row_list(rows)
        if not rows:
            return 0
        shared = 0
        for column in zip(*(self._tables[row] for row in rows)):
            if any(page != column[0] for page in column):
                break
            shared += 1
        return min(shared * self._page_size, min(self._lengths[row] for row in rows))

    # ------------------------------------------------------------------ rows

    def add_rows(self, count: int = 1) -> list[int]:
        """Append `count` empty rows (>= 1) at the end; returns their indices."""
        count = _count(count, "count", 1)
        first = self.num_rows
        self._tables += [[] for _ in range(count)]
        self._lengths += [0] * count
        return list(range(first, first + count))

    def fork(self, source: int, count: int = 1) -> list[int]:
        """Append `count` rows (>= 1) that read the source row's pages; nothing is copied.

        Returns the new rows' indices (at the end). Whichever row later writes into a page they
        share copies that page first.
        """
        source = self._row(source)
        count = _count(count, "count", 1)
        table = self._tables[source]
        for page in table:
            self._refcount[page] += count
        first = self.num_rows
        self._tables += [list(table) for _ in range(count)]
        self._lengths += [self._lengths[source]] * count
        return list(range(first, first + count))

    def truncate(self, row: int, length: int) -> None:
        """Roll one row back to its first `length` positions (rollback), in [0, its length].

        Pages past the new end are released (freed when no other row references them). A page the
        cut falls inside stays shared: truncation writes nothing, and the row's next append copies
        that one page before writing into it, so the rows sharing it never change.
        """
        row = self._row(row)
        length = _count(length, "length", 0)
        current = self._lengths[row]
        if length > current:
            raise ValueError(f"truncate length {length} for row {row} must be in [0, {current}] (its length)")
        keep = -(-length // self._page_size)
        table = self._tables[row]
        for page in table[keep:]:
            self._release(page)
        del table[keep:]
        self._lengths[row] = length

    def drop(self, rows: Rows) -> None:
        """Remove rows (distinct indices); their pages are released and the remaining rows renumbered in order."""
        dropped = set(self._row_list(rows, distinct=True))
        for row in dropped:
            for page in self._tables[row]:
                self._release(page)
        kept = [row for row in range(self.num_rows) if row not in dropped]
        self._tables = [self._tables[row] for row in kept]
        self._lengths = [self._lengths[row] for row in kept]

    def reorder(self, index: Rows) -> None:
        """Keep, duplicate and reorder rows (beam search, resampling): new row j is old row index[j].

        Repeated rows share pages (a fork), unlisted rows are dropped; no page is copied. Same
        meaning as `KVCache.reorder`. An empty index leaves no rows.
        """
        index = self._row_list(index, name="index")
        tables = [list(self._tables[row]) for row in index]
        for table in tables:  # take the new references before releasing the old ones
            for page in table:
                self._refcount[page] += 1
        for table in self._tables:
            for page in table:
                self._release(page)
        self._lengths = [self._lengths[row] for row in index]
        self._tables = tables

    # ------------------------------------------------------------------ writes

    def extend(self, rows: Rows, count: int) -> Tensor:
        """Make room for `count` new positions at the end of each row; returns where they go.

        Shared last pages that would be written are copied first (copy-on-write) and new pages
        taken from the free list, growing the pool if needed; when the pool may not grow enough
        (`max_pages`), `PagePoolFull` is raised before anything changes. The rows' lengths advance
        at once, so a forward pass calls this once and then `write` per layer.

        Args:
            rows: distinct row indices (an int, a sequence or a 1-D integer tensor).
            count: new positions per row, >= 0.

        Returns:
            slots: int64 [R, count] on the cache's device, page * page_size + offset of each new
            position (vLLM's slot mapping), for `write`.
        """
        rows = self._row_list(rows, distinct=True)
        count = _count(count, "count", 0)
        page_size = self._page_size
        references: dict[int, int] = {}  # reference counts as they will be after the earlier rows' copies
        copying, fresh = [], 0
        for row in rows:
            length, table = self._lengths[row], self._tables[row]
            if count and length % page_size:  # the first new position lands in the last, partly filled page
                last = table[-1]
                shared = references.get(last, self._refcount[last])
                if shared > 1:
                    copying.append(row)
                    references[last] = shared - 1
            fresh += -(-(length + count) // page_size) - len(table)
        self._reserve(len(copying) + fresh)
        for row in copying:
            self._copy_last_page(row)
        slots = []
        for row in rows:
            length, table = self._lengths[row], self._tables[row]
            table += [self._take() for _ in range(-(-(length + count) // page_size) - len(table))]
            slots.append([table[p // page_size] * page_size + p % page_size for p in range(length, length + count)])
            self._lengths[row] = length + count
        return torch.tensor(slots, dtype=torch.long, device=self._keys.device).reshape(len(rows), count)

    def write(self, layer: int, slots: Tensor, key: Tensor, value: Tensor) -> None:
        """Write one layer's new keys/values into the slots `extend` returned.

        Args:
            layer: in [0, num_layers).
            slots: int64 [R, T] from `extend` (stale after a later truncate, drop or reorder).
            key: [R, Hkv, T, D], the pools' dtype and device.
            value: [R, Hkv, T, D].
        """
        layer = self._layer(layer)
        if slots.dim() != 2 or slots.dtype != torch.long:
            raise ValueError(f"slots must be the int64 [R, T] tensor extend returned, got {slots.dtype} "
                             f"{list(slots.shape)}")
        rows, count = slots.shape
        self._check_new(key, value, (rows, self._keys.shape[2], count, self._keys.shape[4]), "[R, Hkv, T, D]")
        pages, offsets = slots // self._page_size, slots % self._page_size  # [R, T] each
        # indices on dims 0 and 2 around a slice index as [R, T, Hkv, D]
        self._keys[layer][pages, :, offsets] = key.permute(0, 2, 1, 3)
        self._values[layer][pages, :, offsets] = value.permute(0, 2, 1, 3)

    def append(self, rows: Rows, key: Tensor, value: Tensor) -> Tensor:
        """Append T new positions of every layer to each of the given rows (`extend` then `write` per layer).

        Args:
            rows: R distinct row indices.
            key: [L, R, Hkv, T, D], the pools' dtype and device.
            value: [L, R, Hkv, T, D].

        Returns:
            The slots [R, T] the positions went to.
        """
        rows = self._row_list(rows, distinct=True)
        if key.dim() != 5:
            raise ValueError(f"key must be [L, R, Hkv, T, D], got shape {list(key.shape)}")
        layers, _, heads, _, head_dim = self._keys.shape
        self._check_new(key, value, (layers, len(rows), heads, key.shape[3], head_dim), "[L, R, Hkv, T, D]")
        slots = self.extend(rows, key.shape[3])
        for layer in range(layers):
            self.write(layer, slots, key[layer], value[layer])
        return slots

    # ------------------------------------------------------------------ reads

    def gather(self, layer: int, rows: Rows | None = None, *, start: int = 0,
               kv_length: int | None = None) -> tuple[Tensor, Tensor]:
        """One layer's positions [start, start + kv_length) of each row, copied out of the pages.

        Args:
            layer: in [0, num_layers).
            rows: row indices (None = all, in order).
            start: first position, >= 0.
            kv_length: positions to gather, >= 0; None = the longest row's length minus start.

        Returns:
            (key, value), each [B, Hkv, kv_length, D]: the suffix layout of `AttentionPlan`.
            Positions at or past a row's length hold whatever the page there holds (any finite or
            NaN value); a plan with the rows' lengths never reads them.
        """
        layer = self._layer(layer)
        rows = self._row_list(rows)
        start = _count(start, "start", 0)
        if kv_length is None:
            kv_length = max([self._lengths[row] - start for row in rows] + [0])
        kv_length = _count(kv_length, "kv_length", 0)
        first = start // self._page_size
        index = self._page_index(rows, first, -(-(start + kv_length) // self._page_size) - first)  # [B, n]
        offset = start - first * self._page_size
        keys = _pages_as_positions(self._keys[layer][index])[:, :, offset:offset + kv_length]
        values = _pages_as_positions(self._values[layer][index])[:, :, offset:offset + kv_length]
        return keys, values

    # ------------------------------------------------------------------ helpers

    def _row(self, row: object, name: str = "row") -> int:
        row = _count(row, name, 0)
        if row >= self.num_rows:
            raise ValueError(f"{name} {row} is out of range [0, {self.num_rows})")
        return row

    def _row_list(self, rows: Rows | None, name: str = "rows", distinct: bool = False) -> list[int]:
        if rows is None:
            return list(range(self.num_rows))
        if isinstance(rows, Tensor):
            if rows.dim() > 1 or rows.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"{name} must be an int, a sequence of ints or a 1-D integer tensor, got "
                                 f"{rows.dtype} {list(rows.shape)}")
            rows = rows.tolist()
        if not isinstance(rows, Sequence):
            rows = [rows]
        checked = [self._row(row, name="row") for row in rows]
        if distinct and len(set(checked)) != len(checked):
            repeated = next(row for row in checked if checked.count(row) > 1)
            raise ValueError(f"{name} must be distinct, got row {repeated} more than once in {checked}")
        return checked

    def _layer(self, layer: object) -> int:
        layer = _count(layer, "layer", 0)
        if layer >= self.num_layers:
            raise ValueError(f"layer {layer} is out of range [0, {self.num_layers})")
        return layer

    def _check_new(self, key: Tensor, value: Tensor, shape: tuple[int, ...], layout: str) -> None:
        if tuple(key.shape) != shape or tuple(value.shape) != shape:
            raise ValueError(f"key and value must be {layout} = {list(shape)}, got {list(key.shape)} and "
                             f"{list(value.shape)}")
        pool = self._keys
        for name, tensor in (("key", key), ("value", value)):
            if tensor.dtype != pool.dtype or tensor.device != pool.device:
                raise ValueError(f"{name} is {tensor.dtype} on {tensor.device}; the pages are {pool.dtype} on "
                                 f"{pool.device}")

    def _page_index(self, rows: list[int], first: int, count: int) -> Tensor:
        """int64 [B, count]: page ids of slots first .. first + count - 1; slots past a row's table read page 0."""
        index = [[table[j] if j < len(table) else 0 for j in range(first, first + count)]
                 for table in (self._tables[row] for row in rows)]
        return torch.tensor(index, dtype=torch.long, device=self._keys.device).reshape(len(rows), count)

    def _take(self) -> int:
        page = self._free.pop()
        self._refcount[page] = 1
        return page

    def _release(self, page: int) -> None:
        self._refcount[page] -= 1
        if self._refcount[page] == 0:
            self._free.append(page)

    def _copy_last_page(self, row: int) -> None:
        table = self._tables[row]
        shared, page = table[-1], self._take()
        self._keys[:, page] = self._keys[:, shared]  # every layer; positions past the length are stale anyway
        self._values[:, page] = self._values[:, shared]
        self._refcount[shared] -= 1  # still >= 1: another row references it
        table[-1] = page
        self._copied_pages += 1

    def _reserve(self, needed: int) -> None:
        """Make sure `needed` pages are free, growing the pool (at least doubling) or raising PagePoolFull."""
        short = needed - len(self._free)
        if short <= 0:
            return
        capacity = self.num_pages
        target = max(2 * capacity, capacity + short)
        if self._max_pages is not None:
            if capacity + short > self._max_pages:
                raise PagePoolFull(f"this write needs {needed} free page(s) but {len(self._free)} of {capacity} are "
                                   f"free and max_pages = {self._max_pages}; drop or truncate rows, or allow more "
                                   f"pages")
            target = min(target, self._max_pages)
        layers, _, heads, page_size, head_dim = self._keys.shape
        grown = []
        for pool in (self._keys, self._values):
            larger = pool.new_empty((layers, target, heads, page_size, head_dim))  # [L, N', Hkv, page, D]
            larger[:, :capacity] = pool
            grown.append(larger)
        self._keys, self._values = grown
        self._refcount += [0] * (target - capacity)
        self._free[:0] = reversed(range(capacity, target))  # recycled pages are handed out before new ones


def _pages_as_positions(pages: Tensor) -> Tensor:
    """[B, n, Hkv, page, D] pages of each row -> [B, Hkv, n * page, D] positions."""
    batch, count, heads, page_size, head_dim = pages.shape
    return pages.permute(0, 2, 1, 3, 4).reshape(batch, heads, count * page_size, head_dim)


def _check_plan(cache: PagedKVCache, plan: AttentionPlan, rows: Rows | None) -> list[int]:
    """The rows a plan describes, after checking that it is flat and that its lengths are the rows' lengths."""
    if not isinstance(plan, AttentionPlan):
        raise ValueError(f"plan must be an AttentionPlan, got {type(plan).__name__}")
    if plan.prefix_length:
        raise ValueError(f"plan.prefix_length is {plan.prefix_length}; over a paged cache pass a plan with "
                         f"prefix_length 0: shared prompt pages are found from the page tables")
    rows = cache._row_list(rows)
    lengths = [cache._lengths[row] for row in rows]
    if plan.lengths.tolist() != lengths:
        raise ValueError(f"plan.lengths {plan.lengths.tolist()} must equal the cache's lengths {lengths} of "
                         f"rows {rows}")
    return rows


def paged_attention(query: Tensor, cache: PagedKVCache, layer: int, plan: AttentionPlan, *,
                    rows: Rows | None = None, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Attention of each row's new tokens over its pages, reading pages all rows share only once.

    The longest prefix the rows read from the same pages (`shared_prefix_length`, cut before any
    hidden position and before the new tokens) is gathered once as a [1, Hkv, P, D] prefix; each
    row's remaining positions are gathered into the suffix layout, and `cascade_attention` merges
    the two by lse. Without a shared prefix (or with one row) this is the gather followed by
    `cascade_attention` over the suffix alone; `plan.num_splits` applies either way.

    Args:
        query: [B, Hq, T, D], the new tokens' queries; the new tokens are already in the cache (the
            last T positions of each row).
        cache: the paged cache.
        layer: which layer's pages to read.
        plan: what each query sees, over the rows' own positions: prefix_length 0, lengths equal
            to the rows' lengths, kv_length >= the longest.
        rows: the B rows (None = all, in order).
        scale: score scale; None = 1 / sqrt(D).

    Returns:
        (out [B, Hq, T, D] in the query's dtype, lse [B, Hq, T]), equal to `reference_attention`
        over the dense cache with `plan.dense_mask()`.

    Raises:
        ValueError: on a plan that does not describe these rows, bad rows or layer, or shapes that
            do not fit.
    """
    rows = _check_plan(cache, plan, rows)
    prefix = cache.shared_prefix_length(rows) if len(rows) > 1 else 0
    prefix = min(prefix, int(plan.lengths.min()) - plan.num_queries)  # the new tokens keep their tree / causal mask
    if prefix > 0 and plan.hidden is not None:
        hidden_columns = plan.hidden[:, :prefix].any(dim=0).nonzero()  # the prefix block is seen whole
        if hidden_columns.numel():
            prefix = int(hidden_columns[0, 0])
    if prefix <= 0:
        key, value = cache.gather(layer, rows, kv_length=plan.kv_length)
        return cascade_attention(query, key, value, plan, scale=scale)
    prefix_key, prefix_value = cache.gather(layer, rows[:1], kv_length=prefix)  # [1, Hkv, P, D]: one copy
    key, value = cache.gather(layer, rows, start=prefix, kv_length=plan.kv_length - prefix)  # [B, Hkv, S-P, D]
    suffix_plan = AttentionPlan(lengths=plan.lengths - prefix, kv_length=plan.kv_length - prefix,
                                num_queries=plan.num_queries,
                                hidden=None if plan.hidden is None else plan.hidden[:, prefix:], tree=plan.tree,
                                prefix_length=prefix, num_splits=plan.num_splits)
    return cascade_attention(query, key, value, suffix_plan, prefix_key, prefix_value, scale=scale)


def paged_split_attention(query: Tensor, cache: PagedKVCache, layer: int, plan: AttentionPlan, *,
                          rows: Rows | None = None, pages_per_split: int = 1,
                          scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Attention of each row's new tokens over its pages, one group of pages at a time, merged by lse.

    Every row walks its page table in groups of `pages_per_split` pages, as vLLM's PagedAttention
    does (each row reads its shared pages itself; `paged_attention` reads them once). The page
    groups are the KV splits, so `plan.num_splits` is not used. A group past a row's pages sees
    nothing and merges as the identity.

    Args:
        query: [B, Hq, T, D], the new tokens' queries (already in the cache).
        cache: the paged cache.
        layer: which layer's pages to read.
        plan: as for `paged_attention`.
        rows: the B rows (None = all, in order).
        pages_per_split: pages per split, >= 1.
        scale: score scale; None = 1 / sqrt(D).

    Returns:
        (out [B, Hq, T, D] in the query's dtype, lse [B, Hq, T]), equal to `reference_attention`
        over the dense cache with `plan.dense_mask()`.

    Raises:
        ValueError: as `paged_attention`, and on a bad pages_per_split.
    """
    rows = _check_plan(cache, plan, rows)
    layer = cache._layer(layer)
    pages_per_split = _count(pages_per_split, "pages_per_split", 1)
    if query.dim() != 4 or query.shape[0] != plan.batch or query.shape[2] != plan.num_queries:
        raise ValueError(f"query must be [B, Hq, T, D] with B = plan.batch = {plan.batch} and T = "
                         f"plan.num_queries = {plan.num_queries}, got shape {list(query.shape)}")
    page_size = cache.page_size
    num_slots = -(-plan.kv_length // page_size)
    index = cache._page_index(rows, 0, num_slots)  # [B, n]
    mask = plan.suffix_mask()  # [B, T, S]
    mask = F.pad(mask, (0, num_slots * page_size - plan.kv_length), value=False)  # [B, T, n * page]
    states = []
    for first in range(0, num_slots, pages_per_split):
        group = index[:, first:first + pages_per_split]  # [B, g]
        key = _pages_as_positions(cache.key_pages[layer][group])  # [B, Hkv, g * page, D]
        value = _pages_as_positions(cache.value_pages[layer][group])
        group_mask = mask[:, None, :, first * page_size:(first + group.shape[1]) * page_size]  # [B, 1, T, g * page]
        if first == 0:
            check_qkv(query, key, value, group_mask)
        states.append(attend_state(query, key, value, group_mask, scale))
    out, lse = merge_attention_states(states)
    return out.to(query.dtype), lse


__all__ = ["PagePoolFull", "PagedKVCache", "paged_attention", "paged_split_attention"]
