"""Attention backends chosen from outside the algorithm: one `attend` call, the kernel named by a string.

Rule: every backend computes the same thing, softmax attention of each row's new tokens over
[shared prefix ; its own suffix] under an `AttentionPlan`, so a decoder or a model names a backend
(`attend(..., backend="flex")`) and never changes its code for it. `sdpa` is the always-correct
default; the others are tested against `reference_attention` (tests/kernels/test_attention_backends.py).
A query that sees no key gets output 0 (and lse -inf) on every backend: sdpa and xformers rows that
see nothing are set to 0 after the call, whatever the kernel left there.

What each backend supports. All of them take ragged lengths, hidden positions, a token tree, a
shared prefix, grouped-query heads and a value width of its own; "NaN-safe" means NaN written into
K/V a query may not see (past a row's length, hidden) cannot reach the output.

- `sdpa` (default): `torch.nn.functional.scaled_dot_product_attention` with the plan's dense bool
  mask, the prefix concatenated to every row (a copy per row). Any device; float16, bfloat16,
  float32, float64. No lse; not NaN-safe.
- `reference`: `cascade_attention`, exact, the prefix read once, plan.num_splits honoured. Any
  device; float16, bfloat16, float32, float64 (computed in float64 for float64). lse; NaN-safe.
- `flex`: `torch.nn.attention.flex_attention` with a BlockMask from `create_block_mask` whose
  mask_mod computes visibility from the plan's lengths / hidden / tree / prefix-row tensors (not a
  captured dense mask); the prefix concatenated. cpu and cuda; float16, bfloat16, float32,
  float64. Runs eagerly (torch warns that it is unfused; wrap it in torch.compile from outside for
  speed). lse; not NaN-safe.
- `triton`: `triton_attention`, split-K flash-decoding, plan.num_splits honoured. cuda, or cpu
  under the Triton interpreter (TRITON_INTERPRET=1 before triton is first imported); float16,
  bfloat16, float32. lse; NaN-safe.
- `xformers`: `xformers.ops.memory_efficient_attention` with the dense mask as an additive bias and
  key/value heads repeated per query head. cuda only; float16, bfloat16, float32. No lse; not
  NaN-safe. Not run on a GPU yet.

Only `reference` and `triton` split the KV work by plan.num_splits; the others ignore it (the
result is the same up to rounding). Masks and block masks derived from a plan are cached per plan
(weakly, per device), so the layers of one forward build them once. Every backend's module (flex
attention, triton, xformers) is imported only when that backend runs; `available_backends` only
looks whether it is installed.
"""

from __future__ import annotations

import importlib.util
import math
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .cascade import cascade_attention, check_attention_inputs
from .plan import AttentionPlan
from .reference import compute_dtype

DEFAULT_BACKEND = "sdpa"

_ALL_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_GPU_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


class BackendUnavailable(RuntimeError):
    """A known attention backend cannot run here (wrong device, module not installed); the message says what can."""


# ---------------------------------------------------------------------------------- what a plan yields, cached

# plan -> {(what, device): derived tensors}; a plan lives for one forward, shared by its layers
_DERIVED: weakref.WeakKeyDictionary[AttentionPlan, dict] = weakref.WeakKeyDictionary()


def _derived(plan: AttentionPlan, what: str, device: torch.device, build: Callable[[], object]):
    """build() once per (plan, what, device); later calls with the same plan return the cached value."""
    cache = _DERIVED.setdefault(plan, {})
    slot = (what, str(device))
    if slot not in cache:
        cache[slot] = build()
    return cache[slot]


def _dense(plan: AttentionPlan, device: torch.device) -> tuple[Tensor, Tensor]:
    """(mask bool [B, 1, T, P+S], seen bool [B, 1, T, 1]: the query sees at least one key), on `device`."""
    def build():
        mask = plan.dense_mask().to(device)
        return mask, mask.any(dim=-1, keepdim=True)

    return _derived(plan, "dense", device, build)


def _with_prefix(key: Tensor, value: Tensor, prefix_key: Tensor | None, prefix_value: Tensor | None):
    """[prefix expanded to every row ; suffix] along the positions: key [B, Hkv, P+S, D], value [B, Hkv, P+S, Dv]."""
    if prefix_key is None:
        return key, value
    batch = key.shape[0]
    key = torch.cat([prefix_key.expand(batch, -1, -1, -1), key], dim=2)
    value = torch.cat([prefix_value.expand(batch, -1, -1, -1), value], dim=2)
    return key, value


def _zero_unseen(out: Tensor, seen: Tensor) -> Tensor:
    """out with every query that sees no key set to 0 (a kernel may leave an average or NaN there)."""
    return torch.where(seen, out, torch.zeros((), dtype=out.dtype, device=out.device))


# ---------------------------------------------------------------------------------- the backends


def _run_sdpa(query, key, value, plan, prefix_key, prefix_value, scale, return_lse):
    import torch.nn.functional as F

    mask, seen = _dense(plan, query.device)  # [B, 1, T, P+S], [B, 1, T, 1]
    key, value = _with_prefix(key, value, prefix_key, prefix_value)  # [B, Hkv, P+S, *]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale,
                                         enable_gqa=query.shape[1] != key.shape[1])  # [B, Hq, T, Dv]
    return _zero_unseen(out, seen)


def _run_reference(query, key, value, plan, prefix_key, prefix_value, scale, return_lse):
    out, lse = cascade_attention(query, key, value, plan, prefix_key, prefix_value, scale=scale)
    return (out, lse) if return_lse else out


def _flex_block_mask(plan: AttentionPlan, device: torch.device):
    """A flex BlockMask over [prefix ; suffix] whose mask_mod computes the plan's visibility from its tensors.

    The mask_mod is `AttentionPlan.suffix_mask` written per (row, query, key) with tensor ops only (no
    Python branching on values), so create_block_mask can vmap it and flex can evaluate it eagerly.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    prefix, count, size = plan.prefix_length, plan.num_queries, plan.kv_length
    first_new = (plan.lengths.to(device).long() - count)  # [B]: suffix position of new token 0
    uses_prefix = plan.rows_with_prefix().to(device)  # [B]
    hidden = None if plan.hidden is None else plan.hidden.to(device)  # [B, S]
    tree = None if plan.tree is None else plan.tree.to(device)  # [B, T, T]

    def mask_mod(row, head, query_index, key_index):
        position = key_index - prefix  # suffix position; negative inside the prefix
        new_index = position - first_new[row]  # which new token the key holds, if in [0, T)
        older = (position >= 0) & (new_index < 0)
        if tree is None:
            sees_new = new_index <= query_index  # the causal chain
        else:
            sees_new = tree[row, query_index, new_index.clamp(0, count - 1)]
        visible = older | ((new_index >= 0) & (new_index < count) & sees_new)
        if hidden is not None:
            visible = visible & ~hidden[row, position.clamp(0, size - 1)]
        return torch.where(position < 0, uses_prefix[row], visible)

    return create_block_mask(mask_mod, plan.batch, None, count, prefix + size, device=device)


def _run_flex(query, key, value, plan, prefix_key, prefix_value, scale, return_lse):
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    block_mask = _derived(plan, "flex", query.device, lambda: _flex_block_mask(plan, query.device))
    key, value = _with_prefix(key, value, prefix_key, prefix_value)  # [B, Hkv, P+S, *]
    out, aux = flex_attention(query, key, value, block_mask=block_mask, scale=scale,
                              enable_gqa=query.shape[1] != key.shape[1], return_aux=AuxRequest(lse=True))
    if not return_lse:
        return out
    # flex gives 0 and lse -inf for a query that sees nothing, as the reference does
    return out, aux.lse.to(compute_dtype(query.dtype))


def _run_triton(query, key, value, plan, prefix_key, prefix_value, scale, return_lse):
    from .triton_decode import triton_attention

    out, lse = triton_attention(query, key, value, plan, prefix_key, prefix_value, scale=scale)
    return (out, lse) if return_lse else out


def _xformers_bias(plan: AttentionPlan, dtype: torch.dtype, heads: int, device: torch.device) -> Tensor:
    """The dense mask as an additive bias [B, Hq, T, P+S] whose rows start 8-aligned in memory (xformers asks)."""
    mask, _ = _dense(plan, device)  # [B, 1, T, L]
    batch, _, count, size = mask.shape
    padded = torch.zeros((batch, heads, count, -(-size // 8) * 8), dtype=dtype, device=device)
    bias = padded[..., :size]
    # the dtype's minimum, not -inf: a query that sees nothing stays finite and is zeroed after the call
    bias.masked_fill_(~mask, torch.finfo(dtype).min)
    return bias


def _run_xformers(query, key, value, plan, prefix_key, prefix_value, scale, return_lse):
    import xformers.ops as xops

    heads, kv_heads = query.shape[1], key.shape[1]
    _, seen = _dense(plan, query.device)
    bias = _derived(plan, f"xformers-{query.dtype}-{heads}", query.device,
                    lambda: _xformers_bias(plan, query.dtype, heads, query.device))
    key, value = _with_prefix(key, value, prefix_key, prefix_value)  # [B, Hkv, P+S, *]
    if kv_heads != heads:  # transformers' repeat_kv order: query head h reads key/value head h // group
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    # xformers takes [B, length, H, D]
    out = xops.memory_efficient_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                          attn_bias=bias, scale=scale)  # [B, T, Hq, Dv]
    return _zero_unseen(out.transpose(1, 2), seen)


def _interpreting() -> bool:
    """Whether the environment asks triton for its CPU interpreter (read without importing triton)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _any_device(device: torch.device) -> str | None:
    return None


def _flex_missing(device: torch.device) -> str | None:
    if device.type not in ("cpu", "cuda"):
        return f"it runs on cpu or cuda tensors, got device {device}"
    if not _installed("torch.nn.attention.flex_attention"):
        return f"this torch ({torch.__version__}) has no torch.nn.attention.flex_attention"
    return None


def _triton_missing(device: torch.device) -> str | None:
    if not _installed("triton"):
        return "triton is not installed (pip install 'ponder[gpu]')"
    if device.type == "cuda" or (device.type == "cpu" and _interpreting()):
        return None
    return (f"it runs on cuda tensors, or on cpu ones under the Triton interpreter (TRITON_INTERPRET=1 set "
            f"before triton is first imported), got device {device}")


def _xformers_missing(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"it runs on cuda tensors only, got device {device}"
    if not _installed("xformers"):
        return "xformers is not installed (pip install 'ponder[gpu]')"
    return None


@dataclass(frozen=True)
class AttentionBackend:
    """One way to compute plan-driven attention, with what it supports (see the module docstring's table)."""

    name: str
    summary: str  # one line: the kernel behind it
    dtypes: tuple[torch.dtype, ...]  # input dtypes it takes
    returns_lse: bool  # whether attend(..., return_lse=True) works with it
    ignores_unseen_nan: bool  # NaN in K/V a query may not see (past a row's length, hidden) cannot reach the output
    run: Callable  # (query, key, value, plan, prefix_key, prefix_value, scale, return_lse) -> out | (out, lse)
    missing: Callable[[torch.device], str | None]  # why it cannot run on a device; None = it can

    def unavailable_reason(self, device: torch.device | str) -> str | None:
        """Why this backend cannot run on `device` (not on it, module not installed), or None when it can."""
        return self.missing(torch.device(device))


_REGISTRY = {
    backend.name: backend
    for backend in (
        AttentionBackend("sdpa", "torch scaled_dot_product_attention with the plan's dense mask", _ALL_FLOATS,
                         returns_lse=False, ignores_unseen_nan=False, run=_run_sdpa, missing=_any_device),
        AttentionBackend("reference", "cascade_attention: exact, float64-capable, with lse", _ALL_FLOATS,
                         returns_lse=True, ignores_unseen_nan=True, run=_run_reference, missing=_any_device),
        AttentionBackend("flex", "torch flex_attention with a BlockMask built from the plan", _ALL_FLOATS,
                         returns_lse=True, ignores_unseen_nan=False, run=_run_flex, missing=_flex_missing),
        AttentionBackend("triton", "triton_attention: split-K flash-decoding", _GPU_FLOATS,
                         returns_lse=True, ignores_unseen_nan=True, run=_run_triton, missing=_triton_missing),
        AttentionBackend("xformers", "xformers memory_efficient_attention with the dense mask as a bias",
                         _GPU_FLOATS, returns_lse=False, ignores_unseen_nan=False, run=_run_xformers,
                         missing=_xformers_missing),
    )
}

BACKENDS = tuple(_REGISTRY)  # every backend's name, the default first


def get_backend(name: str) -> AttentionBackend:
    """The backend registered as `name`.

    Raises:
        ValueError: naming the bad value and the allowed names.
    """
    backend = _REGISTRY.get(name) if isinstance(name, str) else None
    if backend is None:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def available_backends(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """Names of the backends that can run on `device` here, in `BACKENDS` order (imports none of them)."""
    device = torch.device(device)
    return tuple(name for name, backend in _REGISTRY.items() if backend.missing(device) is None)



def attend(query: Tensor, key: Tensor, value: Tensor, plan: AttentionPlan, prefix_key: Tensor | None = None,
           prefix_value: Tensor | None = None, *, backend: str = DEFAULT_BACKEND, scale: float | None = None,
           return_lse: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Attention of each row's new tokens over [shared prefix ; its suffix] under `plan`, by the named backend.

    Args:
        query: [B, Hq, T, D], the new tokens' queries (B = plan.batch, T = plan.num_queries).
        key: [B, Hkv, S, D], each row's suffix keys, S = plan.kv_length, the new tokens the last T of
            its lengths[b] valid positions; Hq a multiple of Hkv (grouped-query heads).
        value: [B, Hkv, S, Dv].
        plan: what each query may see (`AttentionPlan`).
        prefix_key: [1, Hkv, P, D], one copy of the shared prefix's keys (P = plan.prefix_length);
            required exactly when P > 0.
        prefix_value: [1, Hkv, P, Dv].
        backend: one of `BACKENDS` (see the module docstring for what each supports); "sdpa" by default.
        scale: score scale; None = 1 / sqrt(D).
        return_lse: also return the log-sum-exp (only backends whose `returns_lse` is true).

    Returns:
        out [B, Hq, T, Dv] in the query's dtype, or (out, lse [B, Hq, T] float32, float64 for float64
        inputs) with return_lse. A query that sees no key has out 0 (and lse -inf) on every backend.

    Raises:
        ValueError: for an unknown backend, a dtype it does not take, return_lse where it has no lse,
            or tensors that disagree with the plan or each other.
        BackendUnavailable: when the backend cannot run on the query's device here; the message
            names the backends that can.
    """
    chosen = get_backend(backend)
    check_attention_inputs(query, key, value, plan, prefix_key, prefix_value)
    reason = chosen.unavailable_reason(query.device)
    if reason is not None:
        here = ", ".join(available_backends(query.device))
        raise BackendUnavailable(f"attention backend {chosen.name!r} cannot run here: {reason}; "
                                 f"available for {query.device} tensors: {here}")
    if query.dtype not in chosen.dtypes:
        allowed = ", ".join(str(dtype).removeprefix("torch.") for dtype in chosen.dtypes)
        raise ValueError(f"attention backend {chosen.name!r} takes {allowed} tensors, got {query.dtype}")
    if return_lse and not chosen.returns_lse:
        with_lse = ", ".join(name for name, entry in _REGISTRY.items() if entry.returns_lse)
        raise ValueError(f"attention backend {chosen.name!r} does not return the log-sum-exp; use one that does "
                         f"({with_lse}) or return_lse=False")
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    return chosen.run(query, key, value, plan, prefix_key, prefix_value, scale, return_lse)
