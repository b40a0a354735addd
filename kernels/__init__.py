"""Low-level tensor kernels for decoding: a rollback-capable KV cache and token sampling.

Everything under ``ponder.kernels`` depends on torch and the standard library only — it imports
nothing from the rest of ponder (nor transformers), so it stays cheap to import, easy to test in
isolation, and free of import cycles for the search and modality packages that build on it.
"""

from .kv_cache import KVCache
from .sampling import (
    SamplingParams,
    generator_seed,
    make_generators,
    probs_from_logits,
    process_logits,
    sample,
    sample_from_logits,
)

__all__ = [
    "KVCache",
    "SamplingParams",
    "generator_seed",
    "make_generators",
    "probs_from_logits",
    "process_logits",
    "sample",
    "sample_from_logits",
]
