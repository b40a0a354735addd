"""Calibrated verifier scores.

Paper: Balashankar et al. 2024, "InfAlign: Inference-aware language model alignment" (the
calibrated reward ``C(x, y) = P_{y' ~ pi_ref(x)}[r(x, y') <= r(x, y)]``: a score becomes its quantile
among the reference policy's samples for the same prompt, which makes best-of-N behave the same
whatever the reward's scale).

Rule: for each prompt, `m` reference outputs are drawn once (by `reference(prompt)`) and scored; an
output's calibrated score is the share of reference scores strictly below its score plus half the
share equal to it. Reference draws and their scoring are counted in ``self.compute``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ponder.search.core import Compute
from ponder.search.core.capabilities import display_name


def quantile_scores(scores: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each of `scores` [N] as its mid-rank quantile among `reference` [M] -> [N] in [0, 1]."""
    ref = reference.double()[None, :]  # [1, M]
    s = scores.double()[:, None]  # [N, 1]
    below = (ref < s).double().mean(1)
    equal = (ref == s).double().mean(1)
    return (below + equal / 2).float()


class Calibrated:
    """`verifier`'s scores as quantiles under a reference policy (outcome-level only)."""

    def __init__(self, verifier: Any, reference: Callable[[Any], Sequence[Any]], name: str | None = None):
        self.verifier, self.reference = verifier, reference
        self.name = name or f"calibrated-{display_name(verifier, 'verifier')}"
        self.compute = Compute()
        self._cache: dict[Any, torch.Tensor] = {}

    @classmethod
    def against_model(cls, verifier: Any, model, *, m: int = 16, seed: int = 0, **decode_options) -> Calibrated:
        """Reference = `m` samples of `model` itself (the usual reference policy), seeds (seed, 0..m-1)."""
        from ponder.search.scaling.sample import sample

        owner: list[Calibrated] = []

        def draw(prompt):
            res = sample(model, prompt, n=m, seed=seed, **decode_options)
            owner[0].compute += res.compute
            return [c.output for c in res.candidates]

        out = cls(verifier, draw)
        owner.append(out)
        return out

    def reference_scores(self, prompt: Any) -> torch.Tensor:
        key = repr(prompt)
        if key not in self._cache:
            outputs = list(self.reference(prompt))
            self._cache[key] = self.verifier.score(prompt, outputs)
            self.compute.verifier_calls += len(outputs)
        return self._cache[key]

    def score(self, prompt: Any, outputs: Sequence[Any]) -> torch.Tensor:
        if not outputs:
            return torch.zeros(0)
        return quantile_scores(self.verifier.score(prompt, outputs), self.reference_scores(prompt))


__all__ = ["Calibrated", "quantile_scores"]
