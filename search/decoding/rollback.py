"""Per-row feeding and rollback over a shared-length cache: what every draft-and-verify decoder needs.

Rows of a batch accept different numbers of draft tokens. The cache keeps one shared length; a row
that keeps fewer positions than the longest row gets its surplus positions *hidden*
(`RowRollbackCache.hide(mask [B, length])`): they are never attended to again and do not count toward
later positions, so the row continues exactly as if they had never been fed. When every row keeps the
same number, rollback is a plain `cache.truncate` (bitwise exact). A cache without `hide` can only
run batches whose rows always agree, so the draft loops (`chain.py`, `tree_verify.py`) run its rows
one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.search.core import SequenceModel
from ponder.search.core.capabilities import RowRollbackCache, device_of


def can_hide(cache) -> bool:
    """Whether `cache` supports per-row rollback (holes): it is a `RowRollbackCache`."""
    return isinstance(cache, RowRollbackCache)


def truncate_rows(cache, start: int, keep: Sequence[int]) -> None:
    """Row r keeps positions [0, start + keep[r]); every later position of that row is rolled back.

    The shared length becomes start + max(keep); rows that keep fewer get their surplus hidden.
    """
    longest = max(keep)
    cache.truncate(start + longest)
    if min(keep) == longest:
        return
    hidden = torch.zeros((len(keep), start + longest), dtype=torch.bool)  # [B, L]
    for row, kept in enumerate(keep):
        hidden[row, start + kept:] = True
    cache.hide(hidden)


def feed_rows(model: SequenceModel, cache, rows: Sequence[Sequence[int]], pad_id: int = 0) -> torch.Tensor:
    """Feed row r the tokens rows[r] (lengths may differ, none empty) in one forward.

    Shorter rows are right-padded; the pads come after the row's real tokens, so causal attention
    keeps them out of the real tokens' logits, and they are hidden from the cache afterwards.
    Returns logits [B, W, V] (W = longest row); row r's real logits are [:len(rows[r])].
    """
    lengths = [len(r) for r in rows]
    width = max(lengths)
    start = cache.length
    device = device_of(model)
    if min(lengths) == width:
        ids = torch.tensor([list(r) for r in rows], dtype=torch.long)  # [B, W]
        return model.forward(ids.to(device), cache)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, W]
    for row, tokens in enumerate(rows):
        ids[row, :len(tokens)] = torch.as_tensor(list(tokens), dtype=torch.long)
    logits = model.forward(ids.to(device), cache)  # [B, W, V]
    truncate_rows(cache, start, lengths)
    return logits


__all__ = ["can_hide", "feed_rows", "truncate_rows"]
