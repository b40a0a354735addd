"""ponder.kernels.attention.triton_attention: the split-K Triton kernel, run by the Triton interpreter on the CPU.

The yardstick is `reference_attention` over [prefix ; suffix] with the plan's dense mask, in float64
on the same float32 inputs. Triton reads `TRITON_INTERPRET` when it is first imported (its own
library is jit-decorated then), so the kernels run in one worker process started with it set (the
`interpret` fixture) and this process never imports triton for the interpreter. Grids stay small:
the interpreter runs every program in Python.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import pytest
import torch
from attention_cases import (
    SLACK,
    assert_tree_nodes_match_unrolled_paths,
    flat_reference,
    interpreter_worker,
    random_case,
)

from ponder.kernels.attention import AttentionPlan, triton_attention

if importlib.util.find_spec("triton") is None:  # not importorskip: importing triton here would fix its mode
    pytest.skip("triton is not installed", allow_module_level=True)

FLOAT32 = 2e-6  # float32 kernel against the float64 reference


@pytest.fixture(scope="module")
def interpret():
    """Call `fn(*args)` in a worker process whose triton runs kernels under the interpreter (see
    `attention_cases.interpreter_worker`); returns its result."""
    yield from interpreter_worker()


def _with_splits(plan: AttentionPlan, num_splits: int) -> AttentionPlan:
    return AttentionPlan(lengths=plan.lengths, kv_length=plan.kv_length, num_queries=plan.num_queries,
                         hidden=plan.hidden, tree=plan.tree, prefix_length=plan.prefix_length,
                         prefix_rows=plan.prefix_rows, num_splits=num_splits)


def _kernel(interpret, plan: AttentionPlan, tensors: dict):
    return interpret(triton_attention, tensors["query"], tensors["key"], tensors["value"], plan, tensors["prefix_key"],
                     tensors["prefix_value"])


def _assert_matches_reference(interpret, plan: AttentionPlan, tensors: dict) -> None:
    out, lse = _kernel(interpret, plan, tensors)
    want_out, want_lse = flat_reference(plan, tensors)
    assert out.dtype == tensors["query"].dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), want_out, rtol=0, atol=FLOAT32)
    torch.testing.assert_close(lse.double(), want_lse, rtol=0, atol=FLOAT32)


# ---------------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("cache,new,batch,head_dim,num_splits", [
    (1, 1, 1, 16, 7),  # six of the seven chunks empty
    (17, 5, 3, 64, 2),
    (129, 5, 3, 16, 1),  # one chunk of three key tiles: the online softmax rescales across tiles
])
def test_kernel_matches_the_reference_at_odd_sizes(interpret, cache, new, batch, head_dim, num_splits):
    plan, tensors = random_case(batch, cache, new, head_dim, seed=cache * 100 + new, num_splits=num_splits)
    _assert_matches_reference(interpret, plan, tensors)


@pytest.mark.slow
@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("new", [1, 5, 16])
@pytest.mark.parametrize("cache", [1, 17, 129])
def test_kernel_matches_the_reference_over_the_full_size_grid(interpret, cache, new, batch, head_dim):
    # half the grid without a tree (the causal chain), half with a shared prefix
    plan, tensors = random_case(batch, cache, new, head_dim, seed=cache * 1000 + new * 10 + batch, tree=head_dim == 16,
                          prefix=5 if batch == 3 else 0, num_splits=1 + cache % 3)
    _assert_matches_reference(interpret, plan, tensors)


def test_grouped_heads_padding_and_a_value_width_of_its_own(interpret):
    # 3 query heads per key/value head times 5 queries = 15 block slots, padded to 16; Dv = 24 is padded too
    plan, tensors = random_case(2, 17, 5, 16, seed=3, heads=6, kv_heads=2, value_dim=24, num_splits=2)
    _assert_matches_reference(interpret, plan, tensors)
    plan, tensors = random_case(2, 17, 1, 16, seed=4, heads=2, kv_heads=2)  # plain multi-head, one query
    _assert_matches_reference(interpret, plan, tensors)


def test_shared_prefix_merges_with_each_rows_suffix(interpret):
    plan, tensors = random_case(3, 17, 5, 16, seed=5, prefix=7)
    plan = AttentionPlan(lengths=plan.lengths, kv_length=plan.kv_length, num_queries=5, hidden=plan.hidden,
                         tree=plan.tree, prefix_length=7, prefix_rows=torch.tensor([True, False, True]), num_splits=2)
    _assert_matches_reference(interpret, plan, tensors)


def test_float16_inputs_return_float16_close_to_the_reference(interpret):
    plan, tensors = random_case(2, 17, 5, 16, seed=6, num_splits=2)
    half = {name: None if t is None else t.half() for name, t in tensors.items()}
    out, lse = _kernel(interpret, plan, half)
    want_out, want_lse = flat_reference(plan, {name: None if t is None else t.float() for name, t in half.items()})
    assert out.dtype == torch.float16 and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), want_out, rtol=0, atol=2e-3)
    torch.testing.assert_close(lse.double(), want_lse, rtol=0, atol=2e-3)


# ---------------------------------------------------------------------------------- metamorphic checks


@pytest.mark.parametrize("cache", [1, 17, 129])
def test_output_does_not_change_with_the_number_of_splits(interpret, cache):
    plan, tensors = random_case(3, cache, 5, 16, seed=cache, prefix=3)
    base_out, base_lse = _kernel(interpret, plan, tensors)
    for num_splits in (2, 3, 7):  # at cache 1, 7 splits leave most chunks empty
        out, lse = _kernel(interpret, _with_splits(plan, num_splits), tensors)
        torch.testing.assert_close(out, base_out, rtol=0, atol=1e-6)
        torch.testing.assert_close(lse, base_lse, rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_nan_past_a_rows_length_or_in_hidden_positions_changes_nothing(interpret, num_splits):
    plan, tensors = random_case(3, 17, 5, 16, seed=2, num_splits=num_splits)
    clean_out, clean_lse = _kernel(interpret, plan, tensors)
    position = torch.arange(plan.kv_length)[None, :]
    unseen = (position >= plan.lengths[:, None]) | plan.hidden  # [B, S]
    assert unseen.sum() > SLACK * 3  # some hidden positions and some past every row's length
    poisoned = dict(tensors)
    for name in ("key", "value"):
        poisoned[name] = tensors[name].masked_fill(unseen[:, None, :, None], math.nan)
    out, lse = _kernel(interpret, plan, poisoned)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert torch.equal(out, clean_out) and torch.equal(lse, clean_lse)


def test_a_tree_nodes_output_equals_attention_over_its_unrolled_path(interpret):
    assert_tree_nodes_match_unrolled_paths(lambda *args: interpret(triton_attention, *args), dtype=torch.float32,
                                           atol=1e-6, num_splits=2)


def test_a_query_that_sees_nothing_gives_zero_and_minus_inf(interpret):
    # row 1 hides every older position and uses no prefix: its first query sees only itself, which is also
    # hidden below, so it sees nothing; row 0 still sees the prefix
    hidden = torch.zeros((2, 6), dtype=torch.bool)
    hidden[1, :4] = True  # row 1: every older position (lengths 6, two new tokens at 4, 5)
    hidden[1, 4] = True  # and new token 0 itself
    plan = AttentionPlan(lengths=torch.tensor([5, 6]), kv_length=6, num_queries=2, hidden=hidden, prefix_length=3,
                         prefix_rows=torch.tensor([True, False]), num_splits=3)
    generator = torch.Generator().manual_seed(29)
    tensors = {"query": torch.randn((2, 4, 2, 16), generator=generator),
               "key": torch.randn((2, 2, 6, 16), generator=generator),
               "value": torch.randn((2, 2, 6, 16), generator=generator),
               "prefix_key": torch.randn((1, 2, 3, 16), generator=generator),
               "prefix_value": torch.randn((1, 2, 3, 16), generator=generator)}
    out, lse = _kernel(interpret, plan, tensors)
    assert torch.equal(out[1, :, 0], torch.zeros((4, 16))) and bool((lse[1, :, 0] == -math.inf).all())
    assert torch.isfinite(lse[0]).all() and torch.isfinite(lse[1, :, 1]).all()
    want_out, want_lse = flat_reference(plan, tensors)
    torch.testing.assert_close(out.double(), want_out, rtol=0, atol=FLOAT32)
    torch.testing.assert_close(lse.double(), want_lse, rtol=0, atol=FLOAT32)


# ---------------------------------------------------------------------------------- errors and import


def test_kernel_rejects_bad_inputs_naming_them():
    plan, tensors = random_case(2, 5, 3, 16, seed=1)
    query, key, value = tensors["query"], tensors["key"], tensors["value"]
    with pytest.raises(ValueError, match=r"T = plan.num_queries = 3, got shape \[2, 4, 2, 16\]"):
        triton_attention(query[:, :, :2], key, value, plan)
    with pytest.raises(ValueError, match="S = plan.kv_length"):
        triton_attention(query, key[:, :, :-1], value[:, :, :-1], plan)
    with pytest.raises(ValueError, match=r"must share a device, got \['cpu', 'meta', 'cpu'\]"):
        triton_attention(query, key.to("meta"), value, plan)
    with pytest.raises(ValueError, match="got torch.float64"):
        triton_attention(query.double(), key.double(), value.double(), plan)
    with pytest.raises(ValueError, match="plan.prefix_length is 0"):
        triton_attention(query, key, value, plan, key[:1], value[:1])
    with_prefix = AttentionPlan(lengths=plan.lengths, kv_length=plan.kv_length, num_queries=3, prefix_length=4)
    with pytest.raises(ValueError, match="plan.prefix_length is 4: pass prefix_key and prefix_value"):
        triton_attention(query, key, value, with_prefix)


def test_cpu_tensors_without_the_interpreter_are_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    plan, tensors = random_case(1, 5, 1, 16, seed=1)
    with pytest.raises(ValueError, match="runs on CUDA tensors, got device cpu; set TRITON_INTERPRET=1"):
        triton_attention(tensors["query"], tensors["key"], tensors["value"], plan)


def test_asking_for_the_interpreter_after_triton_was_imported_without_it_is_refused(monkeypatch):
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(tl.sum, InterpretedFunction):
        pytest.skip("this process imported triton under TRITON_INTERPRET=1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    plan, tensors = random_case(1, 5, 1, 16, seed=1)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET is set now but was unset when triton was first imported"):
        triton_attention(tensors["query"], tensors["key"], tensors["value"], plan)


def test_importing_the_attention_package_does_not_import_triton():
    code = ("import sys, ponder.kernels.attention as attention; assert callable(attention.triton_attention); "
            "print('triton' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"
