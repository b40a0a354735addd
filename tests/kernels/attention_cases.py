"""Shared by the attention kernel tests: random plans with their tensors, the unrolled-path tree check,
and a worker process whose triton runs kernels under the interpreter (not a test file itself)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from ponder.kernels.attention import AttentionPlan, reference_attention
from ponder.kernels.tree import tree_mask

SLACK = 3  # stale positions past the longest row, never to be read


def interpreter_worker() -> Iterator[Callable]:
    """Yield `call(fn, *args)`, which runs `fn(*args)` in one worker process whose triton interprets kernels.

    The worker is a fresh interpreter (spawn: a fork would inherit this process's triton) started with
    TRITON_INTERPRET=1 and one thread; `fn` and its arguments must pickle by reference to ponder (the
    worker imports no test file). Triton fixes its mode when first imported, so this process never
    imports it for the interpreter. For a module-scoped fixture: `yield from interpreter_worker()`.
    """
    context = multiprocessing.get_context("spawn")
    with pytest.MonkeyPatch.context() as patch, ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        patch.setenv("TRITON_INTERPRET", "1")
        patch.setenv("OMP_NUM_THREADS", "1")
        # the first task starts the one worker, which inherits the environment as it is now
        assert pool.submit(os.getenv, "TRITON_INTERPRET").result(timeout=120) == "1"
        patch.undo()
        yield lambda fn, *args: pool.submit(fn, *args).result(timeout=300)


def random_case(batch: int, cache: int, new: int, head_dim: int, *, seed: int, heads: int = 4, kv_heads: int = 2,
                value_dim: int | None = None, prefix: int = 0, tree: bool = True, hidden: bool = True,
                num_splits: int = 1) -> tuple[AttentionPlan, dict]:
    """Random float32 queries and K/V with a plan of ragged lengths, hidden older positions and a random tree.

    Row 0 is the longest (`cache` older positions) and sees the prefix; other rows see it at random.
    The query is a transposed view [B, T, Hq, D] -> [B, Hq, T, D], so a kernel must honour strides.
    Returns (plan, {"query", "key", "value", "prefix_key", "prefix_value"}).
    """
    generator = torch.Generator().manual_seed(seed)
    size = cache + new + SLACK
    older = torch.randint(0, cache + 1, (batch,), generator=generator)
    older[0] = cache
    hide = None
    if hidden:
        position = torch.arange(size)[None, :]
        hide = (torch.rand((batch, size), generator=generator) < 0.25) & (position < older[:, None])
    parents = None
    if tree:
        parents = torch.full((batch, new), -1, dtype=torch.long)
        for node in range(1, new):
            parents[:, node] = torch.randint(-1, node, (batch,), generator=generator)
    rows = None
    if prefix:
        rows = torch.rand(batch, generator=generator) < 0.6
        rows[0] = True
    plan = AttentionPlan(lengths=older + new, kv_length=size, num_queries=new, hidden=hide,
                         tree=None if parents is None else tree_mask(parents), prefix_length=prefix,
                         prefix_rows=rows, num_splits=num_splits)
    value_dim = value_dim or head_dim

    def draw(*shape):
        return torch.randn(shape, generator=generator)

    tensors = {"query": draw(batch, new, heads, head_dim).transpose(1, 2),
               "key": draw(batch, kv_heads, size, head_dim), "value": draw(batch, kv_heads, size, value_dim),
               "prefix_key": draw(1, kv_heads, prefix, head_dim) if prefix else None,
               "prefix_value": draw(1, kv_heads, prefix, value_dim) if prefix else None}
    return plan, tensors


def assert_tree_nodes_match_unrolled_paths(attention: Callable, *, dtype: torch.dtype, atol: float,
                                           heads: int = 4, kv_heads: int = 2, num_splits: int = 1) -> None:
    """Each node of a fixed tree over a cache with hidden positions gets the (out, lse) that attention over
    its unrolled root-to-node path, fed as a plain causal sequence after the same cache, gives.

    attention(query, key, value, plan) -> (out, lse), e.g. `cascade_attention` or a worker's triton call.
    """
    # root 0 -> {1, 2}; 1 -> {3, 4}; 2 -> 5; 4 -> 6
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2, 4]])
    older, count = 9, parents.shape[1]
    generator = torch.Generator().manual_seed(13)
    query = torch.randn((1, heads, count, 16), generator=generator, dtype=dtype)
    key = torch.randn((1, kv_heads, older + count, 16), generator=generator, dtype=dtype)
    value = torch.randn((1, kv_heads, older + count, 16), generator=generator, dtype=dtype)
    hidden = torch.zeros((1, older + count), dtype=torch.bool)
    hidden[0, [2, 5]] = True
    plan = AttentionPlan(lengths=torch.tensor([older + count]), kv_length=older + count, num_queries=count,
                         hidden=hidden, tree=tree_mask(parents), num_splits=num_splits)
    out, lse = attention(query, key, value, plan)
    for node in range(count):
        path = [node]
        while int(parents[0, path[-1]]) >= 0:
            path.append(int(parents[0, path[-1]]))
        path.reverse()
        keep = list(range(older)) + [older + n for n in path]
        chain = AttentionPlan(lengths=torch.tensor([len(keep)]), kv_length=len(keep), num_queries=len(path),
                              hidden=hidden[:, keep], num_splits=num_splits)
        path_out, path_lse = attention(query[:, :, path], key[:, :, keep], value[:, :, keep], chain)
        torch.testing.assert_close(out[:, :, node], path_out[:, :, -1], rtol=0, atol=atol)
        torch.testing.assert_close(lse[:, :, node], path_lse[:, :, -1], rtol=0, atol=atol)


def flat_reference(plan: AttentionPlan, tensors: dict):
    """Flat float64 attention over [prefix expanded to every row ; suffix] under the plan's dense mask."""
    key, value = tensors["key"].double(), tensors["value"].double()
    if plan.prefix_length:
        batch = key.shape[0]
        key = torch.cat([tensors["prefix_key"].double().expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat([tensors["prefix_value"].double().expand(batch, -1, -1, -1), value], dim=2)
    return reference_attention(tensors["query"].double(), key, value, plan.dense_mask())
