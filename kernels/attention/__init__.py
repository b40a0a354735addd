"""Attention for decoding, torch only: a plan of what each query sees, and the exact paths that honour it.

`AttentionPlan` replaces the dense mask (shared prefix, per-row lengths, hidden positions, token
tree, KV splits) and still yields it for the sdpa / eager path. `reference_attention` returns the
log-sum-exp beside the output, `merge_attention_states` combines partial states by it, exactly even
for empty parts, `split_kv_attention` is flash-decoding's split-K in plain torch, and
`cascade_attention` reads a shared prefix once for every row (FlashInfer's cascade attention).
`PagedKVCache` stores rows in reference-counted, copy-on-write pages (vLLM's PagedAttention), and
`paged_attention` / `paged_split_attention` attend over them exactly. `triton_attention` is
flash-decoding's split-K as a Triton kernel over the same plan (triton is imported only when it runs).
`attend` is the one call for plan-driven attention; its backend (`sdpa` by default, `reference`, `flex`,
`triton`, `xformers`) is chosen from outside by name; each backend's module is imported only when it runs.
"""

from .backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    AttentionBackend,
    BackendUnavailable,
    attend,
    available_backends,
    get_backend,
)
from .cascade import cascade_attention
from .merge import merge_attention_states, split_kv_attention
from .paged import PagedKVCache, PagePoolFull, paged_attention, paged_split_attention
from .plan import AttentionPlan
from .reference import reference_attention
from .triton_decode import triton_attention

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "AttentionBackend",
    "AttentionPlan",
    "BackendUnavailable",
    "PagePoolFull",
    "PagedKVCache",
    "attend",
    "available_backends",
    "cascade_attention",
    "get_backend",
    "merge_attention_states",
    "paged_attention",
    "paged_split_attention",
    "reference_attention",
    "split_kv_attention",
    "triton_attention",
]
