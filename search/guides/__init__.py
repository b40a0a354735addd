"""Guides: they change the distribution a sequence model samples from, so they are not decoders.

A guide turns a model into a guided model with the same `SequenceModel` interface; every strategy
runs on it, and every lossless decoder stays lossless with respect to the guided distribution.
``guide(model, **options) -> guided model``. `streams` is the shared machinery of the guides that
contrast prompt variants; every other file is one paper's method.
"""

from __future__ import annotations

from collections.abc import Callable

from ponder.search.core import lookup
from ponder.search.guides.cad import cad
from ponder.search.guides.knn import Datastore, knn
from ponder.search.guides.uscd import uscd

GUIDES: dict[str, Callable] = {"cad": cad, "uscd": uscd, "knn": knn}


def get_guide(name: str) -> Callable:
    return lookup(GUIDES, "guide", name)


__all__ = ["GUIDES", "Datastore", "cad", "get_guide", "knn", "uscd"]
