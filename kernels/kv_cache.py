"""Batched key/value cache for autoregressive decoding with rollback.

A decoder stack appends one block of keys/values per layer per forward pass. Search procedures
(speculative decoding, beam search, particle methods) also need to *undo* positions cheaply and
to re-index the batch, so the cache keeps preallocated per-layer buffers and a separate length per
layer: rolling back is just moving the length, and appends write in place.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor


def _as_index(value: object, name: str) -> int:
    """Convert an int-like (int, numpy integer, 0-d integer tensor) to int, else raise TypeError.

    Bools are rejected even though they are ints: ``layer=True`` is a bug, not layer 1.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


class KVCache:
    """Batched key/value cache for a decoder stack that appends and truncates (rollback).

    Each layer owns two buffers ``k`` and ``v`` of shape [B, H, capacity, D], allocated lazily on
    the first :meth:`append` to that layer (batch size, heads, head dim, dtype and device come from
    the first appended tensor). Only positions [0, layer_length(layer)) are meaningful; anything
    beyond is stale data left behind by :meth:`truncate` and is overwritten by later appends.

    Layer indices and lengths must be integers (else TypeError); integers out of range raise
    ValueError naming the value and the allowed range.

    Args:
        num_layers: number of decoder layers the cache serves.
        capacity: initial number of positions allocated per layer; buffers grow (at least
            doubling) when an append would overflow, so this is only a sizing hint.
    """

    def __init__(self, num_layers: int, capacity: int = 256):
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self._num_layers = num_layers
        self._initial_capacity = capacity
        self._keys: list[Tensor | None] = [None] * num_layers  # each [B, H, capacity, D]
        self._values: list[Tensor | None] = [None] * num_layers  # each [B, H, capacity, D]
        self._lengths: list[int] = [0] * num_layers

    # ------------------------------------------------------------------ properties

    @property
    def num_layers(self) -> int:
        """Number of layers this cache was built for."""
        return self._num_layers

    @property
    def length(self) -> int:
        """Number of positions stored, read from layer 0 (0 when nothing has been appended).

        Layer 0 is the reference because a forward pass appends layers in order, so layer 0 is
        the first to reflect a new step; mid-pass, deeper layers may briefly lag behind.
        """
        return self._lengths[0]

    @property
    def batch_size(self) -> int | None:
        """Batch size of the allocated buffers, or None when no layer has been allocated yet."""
        for keys in self._keys:
            if keys is not None:
                return keys.shape[0]
        return None

    def layer_length(self, layer: int) -> int:
        """Number of positions stored for one layer.

        Args:
            layer: layer index in [0, num_layers).

        Returns:
            The layer's stored length (0 if the layer has never been appended to).
        """
        self._check_layer(layer)
        return self._lengths[layer]

    def capacity(self, layer: int) -> int:
        """Number of positions currently allocated for one layer (0 if not allocated).

        Args:
            layer: layer index in [0, num_layers).

        Returns:
            The allocated position capacity of the layer's buffers.
        """
        self._check_layer(layer)
        keys = self._keys[layer]
        return 0 if keys is None else keys.shape[2]

    def allocated_bytes(self) -> int:
        """Bytes held by the allocated key and value buffers of every layer (capacity, not length)."""
        return sum(buffer.numel() * buffer.element_size()
                   for buffers in (self._keys, self._values) for buffer in buffers if buffer is not None)

    # ------------------------------------------------------------------ reads

    def keys(self, layer: int) -> Tensor:
        """Stored keys of one layer.

        Args:
            layer: layer index in [0, num_layers).

        Returns:
            A view [B, H, layer_length, D] into the cache buffer (not a copy: a later append or
            reorder may change what it shows).

        Raises:
            ValueError: if the layer index is invalid or nothing was ever appended to it.
        """
        return self._stored(layer, self._keys)

    def values(self, layer: int) -> Tensor:
        """Stored values of one layer.

        Args:
            layer: layer index in [0, num_layers).

        Returns:
            A view [B, H, layer_length, D] into the cache buffer (not a copy).

        Raises:
            ValueError: if the layer index is invalid or nothing was ever appended to it.
        """
        return self._stored(layer, self._values)

    # ------------------------------------------------------------------ writes

    def append(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Append new positions to one layer and return everything that layer now stores.

        Args:
            layer: layer index in [0, num_layers).
            key: new keys [B, H, T, D].
            value: new values [B, H, T, D], same shape, dtype and device as ``key``.

        Returns:
            ``(keys, values)``, views [B, H, len + T, D] of the layer's whole stored history.

        Raises:
            ValueError: on a bad layer index, or if key/value disagree with each other or with the
                layer's existing buffers (batch size, heads, head dim, dtype or device).
        """
        self._check_layer(layer)
        if key.dim() != 4:
            raise ValueError(f"key must be [B, H, T, D], got shape {tuple(key.shape)}")
        if value.shape != key.shape:
            raise ValueError(f"value shape {tuple(value.shape)} differs from key shape {tuple(key.shape)}")
        if value.dtype != key.dtype or value.device != key.device:
            raise ValueError(
                f"value ({value.dtype}, {value.device}) differs from key ({key.dtype}, {key.device})"
            )
        batch, heads, new_positions, head_dim = key.shape

        if self._keys[layer] is None:
            capacity = max(self._initial_capacity, new_positions)
            # Lazy allocation: shapes are only known once the model produces its first block.
            self._keys[layer] = key.new_empty((batch, heads, capacity, head_dim))  # [B, H, C, D]
            self._values[layer] = key.new_empty((batch, heads, capacity, head_dim))  # [B, H, C, D]
        else:
            self._check_compatible(layer, key)

        start = self._lengths[layer]
        end = start + new_positions
        if end > self._keys[layer].shape[2]:
            self._grow(layer, end)

        self._keys[layer][:, :, start:end] = key  # [B, H, T, D]
        self._values[layer][:, :, start:end] = value  # [B, H, T, D]
        self._lengths[layer] = end
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def truncate(self, length: int) -> None:
        """Roll every layer back so it keeps only positions [0, length).

        Only lengths move; buffers are neither reallocated nor cleared, so rollback is O(1).
        A layer that is already shorter than ``length`` (possible mid forward pass) is left as is.

        Args:
            length: number of positions to keep, in [0, self.length].

        Raises:
            ValueError: if ``length`` is negative or larger than the current length.
        """
        length = _as_index(length, "truncate length")
        if not 0 <= length <= self.length:
            raise ValueError(f"truncate length {length} is outside the allowed range [0, {self.length}]")
        self._lengths = [min(layer_length, length) for layer_length in self._lengths]

    def select_positions(self, start: int, index: Tensor) -> None:
        """Compact chosen positions after ``start`` into contiguous positions (tree verification).

        Row ``b``'s position ``start + index[b, j]`` moves to ``start + j`` in every layer, and the
        cache keeps ``start + N`` positions: the accepted path of a verified token tree becomes the
        sequence a plain forward over it would have stored (its keys were computed with the path's
        positions and attention already).

        Args:
            start: first position the index refers to, in [0, length].
            index: LongTensor [B, N] of offsets in [0, length - start), per row.

        Raises:
            ValueError: on a badly shaped index or offsets outside the stored range.
        """
        start = _as_index(start, "select_positions start")
        if index.dim() != 2 or index.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"select_positions index must be a [B, N] integer tensor, got {index.dtype} "
                             f"with shape {tuple(index.shape)}")
        span = self.length - start
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= span):
            raise ValueError(f"select_positions offsets must be in [0, {span}), got "
                             f"[{int(index.min())}, {int(index.max())}]")
        count = index.shape[1]
        for layer in range(self._num_layers):
            keys, values = self._keys[layer], self._values[layer]
            if keys is None:
                continue
            _, heads, _, head_dim = keys.shape
            source = (start + index.to(keys.device))[:, None, :, None].expand(-1, heads, -1, head_dim)  # [B, H, N, D]
            keys[:, :, start:start + count] = keys.gather(2, source)
            values[:, :, start:start + count] = values.gather(2, source)
            self._lengths[layer] = start + count

    def reorder(self, index: Tensor) -> None:
        """Select or duplicate batch rows of every allocated layer (beam search, resampling).

        After the call, row ``j`` of every layer holds what row ``index[j]`` held before. The new
        batch size ``B'`` may differ from the old one.

        Args:
            index: LongTensor [B'] of source row indices in [0, B).

        Raises:
            ValueError: if ``index`` is not a 1-D integer tensor.
        """
        if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"reorder index must be a 1-D int64/int32 tensor, got {index.dtype} "
                f"with shape {tuple(index.shape)}"
            )
        for layer in range(self._num_layers):
            keys, values = self._keys[layer], self._values[layer]
            if keys is None:
                continue
            length = self._lengths[layer]
            layer_index = index.to(keys.device)
            _, heads, capacity, head_dim = keys.shape
            new_shape = (layer_index.shape[0], heads, capacity, head_dim)
            # Copy only the live prefix; the tail beyond `length` is garbage anyway.
            new_keys = keys.new_empty(new_shape)  # [B', H, C, D]
            new_values = values.new_empty(new_shape)  # [B', H, C, D]
            new_keys[:, :, :length] = keys[:, :, :length].index_select(0, layer_index)
            new_values[:, :, :length] = values[:, :, :length].index_select(0, layer_index)
            self._keys[layer], self._values[layer] = new_keys, new_values

    def join(self, other: KVCache, index: Tensor | None = None) -> None:
        """Append rows of `other` below this cache's rows, right-aligned (continuous batching).

        Both caches end at the same position afterwards: the shorter side is left-padded (its
        padding positions hold zeros; the caller masks them). Row ``B + j`` is other's row
        ``index[j]`` (default every row once). Either side may be empty (never appended to).

        Args:
            other: a cache with the same layers, heads, head dim, dtype and device.
            index: optional LongTensor [B'] of other's rows to take (duplicates allowed).

        Raises:
            ValueError: if the layer counts differ or the stored shapes do not match.
        """
        if other.num_layers != self._num_layers:
            raise ValueError(f"join needs caches of equal layer count, got {other.num_layers} != {self._num_layers}")
        for layer in range(self._num_layers):
            theirs_k, theirs_v = other._keys[layer], other._values[layer]
            if theirs_k is None:
                continue
            their_length = other._lengths[layer]
            theirs_k, theirs_v = theirs_k[:, :, :their_length], theirs_v[:, :, :their_length]  # [B', H, l, D]
            if index is not None:
                layer_index = index.to(theirs_k.device)
                theirs_k, theirs_v = theirs_k.index_select(0, layer_index), theirs_v.index_select(0, layer_index)
            mine_k = self._keys[layer]
            if mine_k is None:
                length = their_length
                keys = theirs_k.new_zeros((theirs_k.shape[0], theirs_k.shape[1], max(self._initial_capacity, length),
                                           theirs_k.shape[3]))
                values = keys.clone()
                keys[:, :, :length], values[:, :, :length] = theirs_k, theirs_v
                self._keys[layer], self._values[layer], self._lengths[layer] = keys, values, length
                continue
            self._check_compatible(layer, theirs_k[:1].expand(mine_k.shape[0], -1, -1, -1))
            my_length = self._lengths[layer]
            length = max(my_length, their_length)
            batch = mine_k.shape[0] + theirs_k.shape[0]
            capacity = max(mine_k.shape[2], length)
            keys = mine_k.new_zeros((batch, mine_k.shape[1], capacity, mine_k.shape[3]))  # [B+B', H, C, D]
            values = keys.clone()
            rows = mine_k.shape[0]
            keys[:rows, :, length - my_length:length] = mine_k[:, :, :my_length]
            values[:rows, :, length - my_length:length] = self._values[layer][:, :, :my_length]
            keys[rows:, :, length - their_length:length] = theirs_k
            values[rows:, :, length - their_length:length] = theirs_v
            self._keys[layer], self._values[layer], self._lengths[layer] = keys, values, length

    def drop_leading(self, count: int) -> None:
        """Forget the first `count` positions of every row (padding no row attends to any more):
        position ``count + i`` becomes position ``i`` in every layer.

        Raises:
            ValueError: if `count` is negative or beyond the stored length.
        """
        count = _as_index(count, "drop_leading count")
        if not 0 <= count <= self.length:
            raise ValueError(f"drop_leading count {count} is outside the allowed range [0, {self.length}]")
        if count == 0:
            return
        for layer in range(self._num_layers):
            keys, values = self._keys[layer], self._values[layer]
            if keys is None:
                continue
            length = self._lengths[layer]
            self._keys[layer] = keys[:, :, count:length].clone() if length > count else keys[:, :, :0].clone()
            self._values[layer] = values[:, :, count:length].clone() if length > count else values[:, :, :0].clone()
            self._lengths[layer] = max(0, length - count)
            if self._keys[layer].shape[2] == 0:  # keep a buffer to grow from
                self._grow(layer, 1)

    def reset(self) -> None:
        """Drop all buffers and lengths, returning the cache to its freshly constructed state."""
        self._keys = [None] * self._num_layers
        self._values = [None] * self._num_layers
        self._lengths = [0] * self._num_layers

    # ------------------------------------------------------------------ helpers

    def _check_layer(self, layer: int) -> None:
        if not 0 <= _as_index(layer, "layer") < self._num_layers:
            raise ValueError(f"layer {layer!r} is out of range [0, {self._num_layers})")

    def _stored(self, layer: int, buffers: list[Tensor | None]) -> Tensor:
        self._check_layer(layer)
        buffer = buffers[layer]
        if buffer is None:
            raise ValueError(f"layer {layer} has nothing stored yet (no append since construction/reset)")
        return buffer[:, :, : self._lengths[layer]]  # [B, H, len, D]

    def _check_compatible(self, layer: int, key: Tensor) -> None:
        stored = self._keys[layer]  # [B, H, C, D]
        mismatches = []
        for name, stored_size, new_size in (
            ("batch size", stored.shape[0], key.shape[0]),
            ("heads", stored.shape[1], key.shape[1]),
            ("head dim", stored.shape[3], key.shape[3]),
        ):
            if stored_size != new_size:
                mismatches.append(f"{name} {new_size} != cached {stored_size}")
        if key.dtype != stored.dtype:
            mismatches.append(f"dtype {key.dtype} != cached {stored.dtype}")
        if key.device != stored.device:
            mismatches.append(f"device {key.device} != cached {stored.device}")
        if mismatches:
            raise ValueError(f"append to layer {layer} does not match its cache: " + "; ".join(mismatches))

    def _grow(self, layer: int, required: int) -> None:
        keys, values = self._keys[layer], self._values[layer]  # [B, H, C, D]
        batch, heads, capacity, head_dim = keys.shape
        # At least doubling keeps the total copy cost of T appends O(T).
        new_capacity = max(2 * capacity, required)
        length = self._lengths[layer]
        new_keys = keys.new_empty((batch, heads, new_capacity, head_dim))  # [B, H, C', D]
        new_values = values.new_empty((batch, heads, new_capacity, head_dim))  # [B, H, C', D]
        new_keys[:, :, :length] = keys[:, :, :length]
        new_values[:, :, :length] = values[:, :, :length]
        self._keys[layer], self._values[layer] = new_keys, new_values
