"""Decoders: one signature, so any strategy can draw its samples through any decoder.

``decoder(model, prompt_ids, *, sampling, max_new_tokens, generators, stop, stream, draft, **options)
-> Decoded``
"""

from __future__ import annotations

from collections.abc import Callable

from ponder.errors import ConfigError
from ponder.search.decoding.plain import plain

DECODERS: dict[str, Callable] = {
    "plain": plain,
}


def get_decoder(name: str) -> Callable:
    if name not in DECODERS:
        raise ConfigError(f"unknown decoder {name!r}; allowed: {', '.join(sorted(DECODERS))}")
    return DECODERS[name]


__all__ = ["DECODERS", "get_decoder", "plain"]
