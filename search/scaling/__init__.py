"""Scaling strategies: one signature, each returns a `Result`.

``strategy(model, prompt, verifier, *, n, seed=0, **options) -> Result``
"""

from __future__ import annotations

from collections.abc import Callable

from ponder.errors import ConfigError
from ponder.search.scaling.sample import sample

STRATEGIES: dict[str, Callable] = {
    "sample": sample,
}


def get_strategy(name: str) -> Callable:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; allowed: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


__all__ = ["STRATEGIES", "get_strategy", "sample"]
