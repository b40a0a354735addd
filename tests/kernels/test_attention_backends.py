"""ponder.kernels.attention.attend: every backend against the reference, and the registry that names them.

The yardstick is `reference_attention` in float64 over [prefix expanded to every row ; suffix] with
the plan's dense mask, on the same float32 inputs. sdpa, reference and flex run in this process;
triton runs in a worker process started with TRITON_INTERPRET=1 (triton fixes its mode when first
imported, so this process never imports it for the interpreter), as in test_triton_decode.py;
xformers runs only on a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import subprocess
import sys

import pytest
import torch
from attention_cases import flat_reference, interpreter_worker, random_case

from ponder.kernels.attention import (
    BACKENDS,
    DEFAULT_BACKEND,
    AttentionPlan,
    BackendUnavailable,
    attend,
    available_backends,
    get_backend,
)

# flex without torch.compile says it is unfused; that is the point of running it eagerly here
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

IN_PROCESS = ("sdpa", "reference", "flex")  # the backends this process runs on the CPU
FLOAT32 = 5e-6  # a float32 backend against the float64 reference
HAS_TRITON = importlib.util.find_spec("triton") is not None  # not import: importing triton here fixes its mode


@pytest.fixture(scope="module")
def interpret():
    """Call `fn(*args)` in a spawned worker whose triton runs kernels under the interpreter
    (`attention_cases.interpreter_worker`); returns its result."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    yield from interpreter_worker()


def _args(tensors: dict) -> tuple:
    return tensors["query"], tensors["key"], tensors["value"]


def _run(backend: str, plan: AttentionPlan, tensors: dict, interpret=None):
    """(out, lse or None) from `attend` with `backend`; triton through the interpreter worker."""
    returns_lse = get_backend(backend).returns_lse
    call = functools.partial(attend, backend=backend, return_lse=returns_lse)
    args = (*_args(tensors), plan, tensors["prefix_key"], tensors["prefix_value"])
    result = interpret(call, *args) if backend == "triton" else call(*args)
    return result if returns_lse else (result, None)


def _assert_matches_reference(backend: str, plan: AttentionPlan, tensors: dict, interpret=None,
                              atol: float = FLOAT32) -> None:
    out, lse = _run(backend, plan, tensors, interpret)
    want_out, want_lse = flat_reference(plan, tensors)
    assert out.dtype == tensors["query"].dtype and out.shape == want_out.shape
    torch.testing.assert_close(out.double(), want_out, rtol=0, atol=atol)
    if lse is not None:
        assert lse.dtype == (torch.float64 if out.dtype == torch.float64 else torch.float32)
        torch.testing.assert_close(lse.double(), want_lse, rtol=0, atol=atol)


ODD_SIZES = [  # (cache, new, batch, head_dim, case options)
    pytest.param(1, 1, 1, 16, {"tree": False, "hidden": False}, id="one-key-one-query"),
    pytest.param(17, 5, 3, 64, {"prefix": 7}, id="prefix-tree-hidden"),
    pytest.param(129, 16, 3, 16, {"heads": 6, "value_dim": 24}, id="long-gqa3-own-value-width"),
]


# ---------------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("backend", IN_PROCESS)
@pytest.mark.parametrize("cache,new,batch,head_dim,options", ODD_SIZES)
def test_backend_matches_the_reference_at_odd_sizes(backend, cache, new, batch, head_dim, options):
    plan, tensors = random_case(batch, cache, new, head_dim, seed=cache * 100 + new, **options)
    _assert_matches_reference(backend, plan, tensors)


@pytest.mark.slow
@pytest.mark.parametrize("backend", IN_PROCESS)
@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("new", [1, 5, 16])
@pytest.mark.parametrize("cache", [1, 17, 129])
def test_backend_matches_the_reference_over_the_full_size_grid(backend, cache, new, batch, head_dim):
    # half the grid without a tree (the causal chain), half with a shared prefix
    plan, tensors = random_case(batch, cache, new, head_dim, seed=cache * 1000 + new * 10 + batch, tree=head_dim == 16,
                          prefix=5 if batch == 3 else 0)
    _assert_matches_reference(backend, plan, tensors)


def test_triton_backend_matches_the_reference_through_attend(interpret):
    plan, tensors = random_case(3, 17, 5, 16, seed=11, prefix=7)
    _assert_matches_reference("triton", plan, tensors, interpret)
    plan, tensors = random_case(1, 129, 1, 64, seed=12, tree=False)
    _assert_matches_reference("triton", plan, tensors, interpret)


@pytest.mark.slow
@pytest.mark.parametrize("batch,head_dim", [(1, 64), (3, 16)])
@pytest.mark.parametrize("new", [1, 5, 16])
@pytest.mark.parametrize("cache", [1, 17, 129])
def test_triton_backend_matches_the_reference_over_the_size_grid(interpret, cache, new, batch, head_dim):
    plan, tensors = random_case(batch, cache, new, head_dim, seed=cache * 1000 + new * 10 + batch, tree=batch == 3,
                          prefix=5 if batch == 3 else 0)
    _assert_matches_reference("triton", plan, tensors, interpret)


@pytest.mark.parametrize("backend", [name for name in IN_PROCESS if torch.float64 in get_backend(name).dtypes])
def test_float64_backends_match_the_reference_in_float64(backend):
    plan, tensors = random_case(3, 17, 5, 16, seed=21, prefix=4)
    tensors = {name: None if t is None else t.double() for name, t in tensors.items()}
    _assert_matches_reference(backend, plan, tensors, atol=1e-12)


@pytest.mark.parametrize("backend", IN_PROCESS)
def test_float16_inputs_return_float16_close_to_the_reference(backend):
    plan, tensors = random_case(2, 17, 5, 16, seed=22, prefix=3)
    half = {name: None if t is None else t.half() for name, t in tensors.items()}
    out, _ = _run(backend, plan, half)
    want, _ = flat_reference(plan, half)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), want, rtol=0, atol=2e-3)


def _nothing_seen_case():
    """Row 1's first query sees nothing (every older position and itself hidden, no prefix); row 0 sees the prefix."""
    hidden = torch.zeros((2, 6), dtype=torch.bool)
    hidden[1, :5] = True  # row 1: lengths 6, new tokens at 4 and 5; older 0..3 and new token 0 hidden
    plan = AttentionPlan(lengths=torch.tensor([5, 6]), kv_length=6, num_queries=2, hidden=hidden, prefix_length=3,
                         prefix_rows=torch.tensor([True, False]))
    generator = torch.Generator().manual_seed(29)
    tensors = {"query": torch.randn((2, 4, 2, 16), generator=generator),
               "key": torch.randn((2, 2, 6, 16), generator=generator),
               "value": torch.randn((2, 2, 6, 16), generator=generator),
               "prefix_key": torch.randn((1, 2, 3, 16), generator=generator),
               "prefix_value": torch.randn((1, 2, 3, 16), generator=generator)}
    return plan, tensors


def _assert_nothing_seen_gives_zero(backend: str, interpret=None) -> None:
    plan, tensors = _nothing_seen_case()
    out, lse = _run(backend, plan, tensors, interpret)
    assert torch.equal(out[1, :, 0], torch.zeros((4, 16)))  # not sdpa's uniform average of the values
    if lse is not None:
        assert bool((lse[1, :, 0] == -math.inf).all()) and torch.isfinite(lse[0]).all()
    _assert_matches_reference(backend, plan, tensors, interpret)


@pytest.mark.parametrize("backend", IN_PROCESS)
def test_a_query_that_sees_nothing_gives_zero_on_every_backend(backend):
    _assert_nothing_seen_gives_zero(backend)


def test_sdpa_rows_that_see_nothing_are_zeroed_whatever_the_kernel_left(monkeypatch):
    # torch's CPU sdpa already gives 0 for an all-False bool row; kernels fed a finite-minimum bias (as
    # transformers builds it) give the uniform average of the values instead; attend must not pass that on
    import torch.nn.functional as F

    plain = F.scaled_dot_product_attention

    def with_minimum_bias(query, key, value, attn_mask, **options):
        bias = torch.zeros(attn_mask.shape, dtype=query.dtype).masked_fill(~attn_mask, torch.finfo(query.dtype).min)
        return plain(query, key, value, attn_mask=bias, **options)

    plan, tensors = _nothing_seen_case()
    monkeypatch.setattr(F, "scaled_dot_product_attention", with_minimum_bias)
    key = torch.cat([tensors["prefix_key"].expand(2, -1, -1, -1), tensors["key"]], dim=2)
    value = torch.cat([tensors["prefix_value"].expand(2, -1, -1, -1), tensors["value"]], dim=2)
    averaged = with_minimum_bias(tensors["query"], key, value, plan.dense_mask(), enable_gqa=True)
    assert averaged[1, :, 0].abs().max() > 0.01  # what the kernel leaves
    _assert_nothing_seen_gives_zero("sdpa")


def test_a_query_that_sees_nothing_gives_zero_on_triton(interpret):
    _assert_nothing_seen_gives_zero("triton", interpret)


@pytest.mark.parametrize("backend", [name for name in IN_PROCESS if get_backend(name).ignores_unseen_nan])
def test_nan_in_unseen_positions_changes_nothing_where_the_backend_says_so(backend):
    plan, tensors = random_case(3, 17, 5, 16, seed=23)
    clean, _ = _run(backend, plan, tensors)
    unseen = (torch.arange(plan.kv_length)[None, :] >= plan.lengths[:, None]) | plan.hidden  # [B, S]
    poisoned = dict(tensors, key=tensors["key"].masked_fill(unseen[:, None, :, None], math.nan),
                    value=tensors["value"].masked_fill(unseen[:, None, :, None], math.nan))
    out, _ = _run(backend, plan, poisoned)
    assert torch.equal(out, clean)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_masks_cached_on_a_plan_do_not_leak_into_another(backend):
    # same shapes, different lengths and hidden positions: a cache keyed on shapes would reuse the first mask
    first, tensors = random_case(3, 17, 5, 16, seed=24, prefix=2)
    second, _ = random_case(3, 17, 5, 16, seed=25, prefix=2)
    assert not torch.equal(first.dense_mask(), second.dense_mask())
    for plan in (first, second, first):
        _assert_matches_reference(backend, plan, tensors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_the_reference_on_cuda(backend):
    if get_backend(backend).unavailable_reason("cuda") is not None:
        pytest.skip(get_backend(backend).unavailable_reason("cuda"))
    plan, tensors = random_case(3, 129, 5, 64, seed=31, prefix=7)
    cuda_plan = AttentionPlan(lengths=plan.lengths.cuda(), kv_length=plan.kv_length, num_queries=plan.num_queries,
                              hidden=plan.hidden.cuda(), tree=plan.tree.cuda(), prefix_length=plan.prefix_length,
                              prefix_rows=plan.prefix_rows.cuda())
    on_gpu = {name: t.cuda() for name, t in tensors.items()}
    out, lse = _run(backend, cuda_plan, on_gpu)
    want_out, want_lse = flat_reference(plan, tensors)
    torch.testing.assert_close(out.cpu().double(), want_out, rtol=0, atol=1e-3)  # allows tf32 matmuls
    if lse is not None:
        torch.testing.assert_close(lse.cpu().double(), want_lse, rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------- registry and errors


def test_registry_names_every_backend_with_sdpa_the_default():
    assert BACKENDS == ("sdpa", "reference", "flex", "triton", "xformers")
    assert DEFAULT_BACKEND == "sdpa" and get_backend("sdpa").name == "sdpa"
    assert {name for name in BACKENDS if get_backend(name).returns_lse} == {"reference", "flex", "triton"}
    plan, tensors = random_case(2, 5, 3, 16, seed=1)
    torch.testing.assert_close(attend(*_args(tensors), plan), attend(*_args(tensors), plan, backend="sdpa"))


@pytest.mark.parametrize("bad", ["nope", "SDPA", None, 3])
def test_an_unknown_backend_is_refused_naming_it_and_the_allowed_names(bad):
    message = rf"unknown attention backend {bad!r}; choose one of sdpa, reference, flex, triton, xformers"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_backend(bad)
    plan, tensors = random_case(1, 5, 1, 16, seed=1)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attend(*_args(tensors), plan, backend=bad)


def test_available_backends_follow_the_device_and_the_interpreter_switch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert available_backends("cpu") == ("sdpa", "reference", "flex")
    assert available_backends(torch.device("meta")) == ("sdpa", "reference")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert available_backends("cpu") == (("sdpa", "reference", "flex", "triton") if HAS_TRITON
                                         else ("sdpa", "reference", "flex"))


def test_xformers_on_cpu_is_refused_naming_it_and_what_is_available(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    plan, tensors = random_case(2, 5, 3, 16, seed=1)
    with pytest.raises(BackendUnavailable, match=r"attention backend 'xformers' cannot run here: it runs on cuda "
                                                 r"tensors only, got device cpu; available for cpu tensors: "
                                                 r"sdpa, reference, flex$"):
        attend(*_args(tensors), plan, backend="xformers")


def test_triton_on_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    plan, tensors = random_case(2, 5, 3, 16, seed=1)
    reason = "triton is not installed" if not HAS_TRITON else "on cpu ones under the Triton interpreter"
    with pytest.raises(BackendUnavailable, match=rf"attention backend 'triton' cannot run here: .*{reason}"):
        attend(*_args(tensors), plan, backend="triton")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_a_dtype_the_backend_does_not_take_is_refused_before_it_runs(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # available, so the dtype check is reached; nothing is launched
    plan, tensors = random_case(2, 5, 3, 16, seed=1)
    double = [t.double() for t in _args(tensors)]
    with pytest.raises(ValueError, match=r"'triton' takes float16, bfloat16, float32 tensors, got torch.float64"):
        attend(*double, plan, backend="triton")


def test_lse_from_a_backend_without_one_is_refused_naming_those_with_it():
    plan, tensors = random_case(2, 5, 3, 16, seed=1)
    with pytest.raises(ValueError, match=r"'sdpa' does not return the log-sum-exp; use one that does "
                                         r"\(reference, flex, triton\)"):
        attend(*_args(tensors), plan, return_lse=True)


def test_tensors_that_disagree_with_the_plan_are_refused_naming_them():
    plan, tensors = random_case(2, 5, 3, 16, seed=1)
    query, key, value = _args(tensors)
    with pytest.raises(ValueError, match=r"T = plan.num_queries = 3, got shape \[2, 4, 2, 16\]"):
        attend(query[:, :, :2], key, value, plan, backend="flex")
    with pytest.raises(ValueError, match="S = plan.kv_length"):
        attend(query, key[:, :, :-1], value[:, :, :-1], plan)
    with pytest.raises(ValueError, match="plan must be an AttentionPlan, got Tensor"):
        attend(query, key, value, plan.dense_mask())
    with pytest.raises(ValueError, match="plan.prefix_length is 0"):
        attend(query, key, value, plan, key[:1], value[:1])
    with_prefix = AttentionPlan(lengths=plan.lengths, kv_length=plan.kv_length, num_queries=3, prefix_length=4)
    with pytest.raises(ValueError, match="plan.prefix_length is 4: pass prefix_key and prefix_value"):
        attend(query, key, value, with_prefix, backend="reference")


def test_importing_the_attention_package_imports_no_backend_module():
    code = ("import sys; from ponder.kernels.attention import available_backends; "
            "available_backends('cpu'); available_backends('cuda'); "
            "print(sorted(m for m in ('triton', 'xformers', 'torch.nn.attention.flex_attention') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
