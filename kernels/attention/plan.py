"""What attention must see, described once per forward instead of as a dense mask.

Rule: a batch of B rows each feeds T new tokens. Row b's own keys/values ("the suffix") are a
[B, Hkv, S, D] tensor whose first `lengths[b]` positions are valid, the new tokens being the last T
of them (flash-attention's bottom-right alignment, the layout of a per-row-length cache); positions
past `lengths[b]` are never read. Query i of row b sees, in its suffix: every older valid position
that is not hidden, and the new tokens its tree allows (its ancestors and itself; without a tree,
the causal chain 0..i), again unless hidden. Rows that use the shared prefix (one [1, Hkv, P, D]
copy of the prompt's keys/values per layer) also see all P prefix positions, which logically come
before the suffix. This is the metadata FlashInfer's cascade attention (Ye et al. 2024, *Cascade
Inference: Memory Bandwidth Efficient Shared Prefix Batch Decoding*) and flash-decoding's split-K
(Dao et al. 2023) plan against; the same plan still yields the dense mask for the sdpa / eager path.

The layout of today's text cache (one shared length, left padding and rolled-back positions marked
in a [B, L] mask, new tokens appended at the end) is the special case lengths = S for every row and
hidden = the masked positions; `dense_bias` then equals `ponder.kernels.tree.tree_attention_bias`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import Tensor


def _count(value: object, name: str, minimum: int) -> int:
    """int(value) for an int-like >= minimum, else ValueError naming the value (bools rejected)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {number}")
    return number


@dataclass(frozen=True, eq=False)
class AttentionPlan:
    """The visibility of every (query, key) pair of one forward, shared by all its layers.

    Validated once on construction (a few host syncs for the value checks); every field keeps the
    device it was given on, and the masks it yields live there too.
    """

    lengths: Tensor  # [B] int: valid positions of each row's suffix, its T new tokens included (the last T)
    kv_length: int  # S: positions of the per-row suffix tensor; lengths[b] <= S, the rest is never read
    num_queries: int  # T: new tokens per row (a tree's padding nodes make rows equal)
    hidden: Tensor | None = None  # [B, S] bool: rolled-back or padding positions no query may see; None = none
    tree: Tensor | None = None  # [B, T, T] bool ancestor-or-self mask (kernels.tree.tree_mask); None = causal chain
    prefix_length: int = 0  # P: positions of the shared prefix; 0 = no prefix
    prefix_rows: Tensor | None = None  # [B] bool: rows that see the prefix; None = every row (when P > 0)
    num_splits: int = 1  # KV chunks each segment's attention is split into and merged by lse (flash-decoding)

    def __post_init__(self) -> None:
        lengths = self.lengths
        if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.dtype not in (torch.int64, torch.int32):
            found = getattr(lengths, "dtype", type(lengths).__name__)
            raise ValueError(f"lengths must be a 1-D integer tensor [B], got {found} "
                             f"{list(getattr(lengths, 'shape', ()))}")
        batch = lengths.shape[0]
        if batch < 1:
            raise ValueError("lengths must name at least one row, got an empty tensor")
        object.__setattr__(self, "kv_length", _count(self.kv_length, "kv_length", 0))
        object.__setattr__(self, "num_queries", _count(self.num_queries, "num_queries", 1))
        object.__setattr__(self, "prefix_length", _count(self.prefix_length, "prefix_length", 0))
        object.__setattr__(self, "num_splits", _count(self.num_splits, "num_splits", 1))
        size, count = self.kv_length, self.num_queries
        low, high = int(lengths.min()), int(lengths.max())
        object.__setattr__(self, "_shortest", low)
        if low < count or high > size:
            raise ValueError(f"lengths must be in [num_queries, kv_length] = [{count}, {size}] (the new tokens are "
                             f"the last num_queries valid positions), got values in [{low}, {high}]")
        if self.hidden is not None and (self.hidden.dtype != torch.bool or tuple(self.hidden.shape) != (batch, size)):
            raise ValueError(f"hidden must be a bool tensor [B, kv_length] = {[batch, size]}, got "
                             f"{self.hidden.dtype} {list(self.hidden.shape)}")
        if self.tree is not None:
            tree = self.tree
            if tree.dtype != torch.bool or tuple(tree.shape) != (batch, count, count):
                raise ValueError(f"tree must be a bool ancestor mask [B, T, T] = {[batch, count, count]}, got "
                                 f"{tree.dtype} {list(tree.shape)}")
            if bool(tree.triu(1).any()) or not bool(tree.diagonal(dim1=1, dim2=2).all()):
                raise ValueError("tree must be an ancestor-or-self mask (kernels.tree.tree_mask): every node sees "
                                 "itself and only earlier nodes")
        if self.prefix_rows is not None:
            rows = self.prefix_rows
            if rows.dtype != torch.bool or tuple(rows.shape) != (batch,):
                raise ValueError(f"prefix_rows must be a bool tensor [B] = [{batch}], got {rows.dtype} "
                                 f"{list(rows.shape)}")
            if self.prefix_length == 0:
                raise ValueError("prefix_rows was given but prefix_length is 0; pass the prefix's length")

    @property
    def batch(self) -> int:
        """Number of rows B."""
        return self.lengths.shape[0]

    def rows_with_prefix(self) -> Tensor:
        """[B] bool: which rows see the shared prefix (none when prefix_length is 0)."""
        if self.prefix_length == 0:
            return torch.zeros(self.batch, dtype=torch.bool, device=self.lengths.device)
        if self.prefix_rows is None:
            return torch.ones(self.batch, dtype=torch.bool, device=self.lengths.device)
        return self.prefix_rows

    @property
    def sees_whole_suffix(self) -> bool:
        """Whether every query sees every suffix position (one new token per row, no row shorter than
        kv_length, nothing hidden): attention then needs no suffix mask at all."""
        return self.num_queries == 1 and self.hidden is None and self._shortest == self.kv_length

    def suffix_mask(self) -> Tensor:
        """Which suffix positions each query sees: bool [B, T, S] (True = attend)."""
        device = self.lengths.device
        count = self.num_queries
        first_new = (self.lengths.long() - count)[:, None]  # [B, 1]: suffix position of new token 0
        position = torch.arange(self.kv_length, device=device)[None, :]  # [1, S]
        older = position < first_new  # [B, S]: valid positions before the new tokens
        new_index = position - first_new  # [B, S]: which new token a position holds, if in [0, T)
        is_new = (new_index >= 0) & (new_index < count)  # [B, S]
        if self.tree is None:
            query = torch.arange(count, device=device)[None, :, None]  # [1, T, 1]
            sees_new = new_index[:, None, :] <= query  # [B, T, S]: the causal chain
        else:
            index = new_index.clamp(0, count - 1)[:, None, :].expand(-1, count, -1)  # [B, T, S]
            sees_new = self.tree.to(device).gather(2, index)  # [B, T, S]: tree[b, i, new_index]
        visible = older[:, None, :] | (is_new[:, None, :] & sees_new)  # [B, T, S]
        if self.hidden is not None:
            visible = visible & ~self.hidden.to(device)[:, None, :]
        return visible

    def prefix_mask(self) -> Tensor:
        """Which prefix positions each query sees: bool [B, T, P] (all or nothing per row)."""
        rows = self.rows_with_prefix()
        return rows[:, None, None].expand(-1, self.num_queries, self.prefix_length)

    def dense_mask(self) -> Tensor:
        """The plan as one mask over the prefix and suffix laid side by side: bool [B, 1, T, P+S].

        This is the mask for attention over `torch.cat([prefix.expand(B, ...), suffix], dim=2)`
        (True = attend); it is what the sdpa / eager path consumes.
        """
        return torch.cat([self.prefix_mask(), self.suffix_mask()], dim=2)[:, None]

    def dense_bias(self, dtype: torch.dtype) -> Tensor:
        """The dense mask as an additive bias [B, 1, T, P+S]: 0 where allowed, the dtype's minimum elsewhere.

        Finite minimums keep a query that sees nothing from turning into NaN in sdpa, but such a
        query then averages every value uniformly, where the reference returns 0 with lse -inf.
        """
        allowed = self.dense_mask()
        bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return bias.masked_fill(~allowed, torch.finfo(dtype).min)
