"""Decoders: one signature, so any strategy can draw its samples through any decoder.

``decoder(model, prompt_ids, *, sampling, max_new_tokens, generators, stop, stream, draft, **options)
-> Decoded``
"""

from __future__ import annotations

from collections.abc import Callable

from ponder.search.core import lookup
from ponder.search.decoding.aded import aded
from ponder.search.decoding.jacobi import jacobi
from ponder.search.decoding.mc_sjd import mc_sjd
from ponder.search.decoding.plain import plain
from ponder.search.decoding.prompt_lookup import prompt_lookup
from ponder.search.decoding.sjd import sjd
from ponder.search.decoding.spec_adaptive import spec_adaptive
from ponder.search.decoding.speculative import speculative

DECODERS: dict[str, Callable] = {
    "plain": plain,
    "jacobi": jacobi,
    "sjd": sjd,
    "mc-sjd": mc_sjd,
    "speculative": speculative,
    "prompt-lookup": prompt_lookup,
    "spec-adaptive": spec_adaptive,
    "aded": aded,
}


def get_decoder(name: str) -> Callable:
    return lookup(DECODERS, "decoder", name)


__all__ = ["DECODERS", "aded", "get_decoder", "jacobi", "mc_sjd", "plain", "prompt_lookup", "sjd", "spec_adaptive",
           "speculative"]
