"""Scaling strategies: one signature, each returns a `Result`.

``strategy(model, prompt, verifier, *, n, seed=0, **options) -> Result``
"""

from __future__ import annotations

from collections.abc import Callable

from ponder.search.core import lookup
from ponder.search.scaling.sample import sample

STRATEGIES: dict[str, Callable] = {
    "sample": sample,
}


def get_strategy(name: str) -> Callable:
    return lookup(STRATEGIES, "strategy", name)


__all__ = ["STRATEGIES", "get_strategy", "sample"]
