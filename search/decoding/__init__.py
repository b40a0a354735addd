"""Decoders: one signature, so any strategy can draw its samples through any decoder.

``decoder(model, prompt_ids, *, sampling, max_new_tokens, generators, stop, stream, draft, **options)
-> Decoded``

Shared machinery: `outputs` (the EOS / stop / length rules every decoder emits through, plain
included), `rollback` (per-row feeding and rollback over a shared-length cache), `chain` (the
draft-then-verify loop, its one-row-at-a-time run for caches without row rollback, and the option
checks draft decoders share), `tree_verify` (the same for draft trees) and `tree_draft` (growing
trees with a draft model). Every other file is one paper's method.
"""

from __future__ import annotations

from collections.abc import Callable

from ponder.search.core import lookup
from ponder.search.decoding.aded import aded
from ponder.search.decoding.auto import auto
from ponder.search.decoding.bild import bild
from ponder.search.decoding.chimera import chimera
from ponder.search.decoding.dyspec import dyspec
from ponder.search.decoding.ead import ead
from ponder.search.decoding.jacobi import jacobi
from ponder.search.decoding.layer_skip import layer_skip
from ponder.search.decoding.lookahead import lookahead
from ponder.search.decoding.mc_sjd import mc_sjd
from ponder.search.decoding.medusa import medusa
from ponder.search.decoding.plain import plain
from ponder.search.decoding.prompt_lookup import prompt_lookup
from ponder.search.decoding.rapid import rapid
from ponder.search.decoding.recycled import recycled
from ponder.search.decoding.rsd import rsd
from ponder.search.decoding.sjd import sjd
from ponder.search.decoding.spec_adaptive import spec_adaptive
from ponder.search.decoding.spectr import spectr
from ponder.search.decoding.speculative import speculative
from ponder.search.decoding.token_recycling import token_recycling
from ponder.search.decoding.tree import tree

DECODERS: dict[str, Callable] = {
    "plain": plain,
    "jacobi": jacobi,
    "sjd": sjd,
    "mc-sjd": mc_sjd,
    "speculative": speculative,
    "prompt-lookup": prompt_lookup,
    "spec-adaptive": spec_adaptive,
    "tree": tree,
    "dyspec": dyspec,
    "rsd": rsd,
    "spectr": spectr,
    "aded": aded,
    "token-recycling": token_recycling,
    "lookahead": lookahead,
    "layer-skip": layer_skip,
    "medusa": medusa,
    "chimera": chimera,
    "bild": bild,
    "ead": ead,
    "auto": auto,
    "recycled": recycled,
    "rapid": rapid,
}

# decoders whose output is NOT distributed as plain sampling's (refused under lossless=True / --lossless)
LOSSY: frozenset[str] = frozenset({"bild", "ead", "recycled"})
# lossless decoders that become lossy under an option value: decoder -> (option, lossy value)
LOSSY_OPTIONS: dict[str, tuple[str, str]] = {"medusa": ("acceptance", "typical")}


def is_lossy(name: str, options: dict | None = None) -> bool:
    """Whether decoder `name` with `options` changes the output distribution (a lossy decoder)."""
    if name in LOSSY:
        return True
    option = LOSSY_OPTIONS.get(name)
    return option is not None and (options or {}).get(option[0]) == option[1]


def get_decoder(name: str) -> Callable:
    return lookup(DECODERS, "decoder", name)


__all__ = ["DECODERS", "LOSSY", "LOSSY_OPTIONS", "aded", "auto", "bild", "chimera", "dyspec", "ead", "get_decoder",
           "is_lossy", "jacobi", "layer_skip", "mc_sjd", "medusa", "plain", "prompt_lookup", "recycled", "rsd", "sjd",
           "spec_adaptive", "spectr", "speculative", "tree"]
