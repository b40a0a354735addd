"""Verifier ensembles: several verifiers scored as one.

Rule: ``method="mean"`` — the weighted mean of the members' scores; ``method="rank"`` — each member's
scores are turned into ranks within the call (0 for the lowest, 1 for the highest, ties share their
mean rank; a single output ranks 0.5) and the weighted mean rank is the score (rank aggregation
makes verifiers on different scales comparable; a score then only means something relative to the
other outputs of the same call). When every member is a process verifier the ensemble is one too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ponder.errors import ConfigError
from ponder.search.core import ProcessVerifier
from ponder.search.core.capabilities import display_name

METHODS = ("mean", "rank")


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """Ranks in [0, 1] of `scores` [N] (ties share the mean rank; N=1 gives 0.5)."""
    n = len(scores)
    if n == 1:
        return torch.full((1,), 0.5)
    order = scores.double()
    less = (order[None, :] < order[:, None]).sum(1).double()  # [N]
    equal = (order[None, :] == order[:, None]).sum(1).double()  # [N], self included
    return ((less + (equal - 1) / 2) / (n - 1)).float()


class Ensemble:
    """Outcome-level ensemble of `verifiers` (see the module rule)."""

    def __init__(self, verifiers: Sequence[Any], weights: Sequence[float] | None = None, method: str = "rank",
                 name: str | None = None):
        if not verifiers:
            raise ConfigError("an ensemble needs at least one verifier")
        if method not in METHODS:
            raise ConfigError(f"unknown ensemble method {method!r}; allowed: {', '.join(METHODS)}")
        weights = [1.0] * len(verifiers) if weights is None else [float(w) for w in weights]
        if len(weights) != len(verifiers) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"ensemble weights must be {len(verifiers)} non-negative numbers with a positive "
                              f"sum, got {weights}")
        self.verifiers, self.method = list(verifiers), method
        self.weights = torch.tensor(weights) / sum(weights)
        self.name = name or "+".join(display_name(v, "?") for v in verifiers)

    def _combine(self, per_member: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([ranks(s) if self.method == "rank" else s.float() for s in per_member])  # [V, N]
        return (self.weights[:, None] * stacked).sum(0)  # [N]

    def score(self, prompt: Any, outputs: Sequence[Any]) -> torch.Tensor:
        if not outputs:
            return torch.zeros(0)
        return self._combine([v.score(prompt, outputs) for v in self.verifiers])


class ProcessEnsemble(Ensemble):
    """An ensemble of process verifiers: also scores partial outputs."""

    def score_steps(self, prompt: Any, partials: Sequence[Any]) -> torch.Tensor:
        if not partials:
            return torch.zeros(0)
        return self._combine([v.score_steps(prompt, partials) for v in self.verifiers])


def ensemble(verifiers: Sequence[Any], weights: Sequence[float] | None = None, method: str = "rank",
             name: str | None = None) -> Ensemble:
    """A `ProcessEnsemble` when every member is a `ProcessVerifier`, else an `Ensemble`."""
    cls = ProcessEnsemble if all(isinstance(v, ProcessVerifier) for v in verifiers) else Ensemble
    return cls(verifiers, weights, method, name)


__all__ = ["METHODS", "Ensemble", "ProcessEnsemble", "ensemble", "ranks"]
