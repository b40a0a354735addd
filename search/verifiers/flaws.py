"""Imperfect verifiers: abstention and a false-positive-aware choice of N.

Paper: Stroebl, Kapoor and Narayanan 2024, "Inference Scaling fLaws: The Limits of LLM Resampling
with Imperfect Verifiers" (when a verifier accepts wrong answers with rate fpr, resampling until
acceptance cannot pass the precision ``p*tpr / (p*tpr + (1-p)*fpr)``, however large N; past a point
more samples only add false positives' cost).

Rules, for a generator that is right with probability `p` per sample and a verifier accepting right
answers with rate `tpr` and wrong ones with rate `fpr` (accept = score >= threshold):
* ``expected_accuracy(n)`` — P(the first accepted of up to n samples is right)
  ``= p*tpr * (1 - (1-a)^n) / a`` with ``a = p*tpr + (1-p)*fpr``; nothing accepted = abstain;
* ``accuracy_bound`` — its limit as n grows (the precision above);
* ``fp_aware_n`` — 0 (always abstain) when a false positive costs more than a right answer gains
  (``p*tpr <= fp_cost*(1-p)*fpr``), else the smallest n reaching ``1 - tolerance`` of the bound;
* abstention itself is the strategies' ``abstain_below`` option (best=None below a score).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ponder.errors import ConfigError


def _rate(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def estimate_rates(scores: Sequence[float], correct: Sequence[bool], threshold: float) -> tuple[float, float]:
    """(tpr, fpr) of accepting ``score >= threshold`` on labelled outputs."""
    pos = [s for s, c in zip(scores, correct) if c]
    neg = [s for s, c in zip(scores, correct) if not c]
    if not pos or not neg:
        raise ConfigError("estimate_rates needs both correct and incorrect labelled outputs")
    return (sum(s >= threshold for s in pos) / len(pos), sum(s >= threshold for s in neg) / len(neg))


def expected_accuracy(n: int, p: float, tpr: float, fpr: float) -> float:
    p, tpr, fpr = _rate("p", p), _rate("tpr", tpr), _rate("fpr", fpr)
    a = p * tpr + (1 - p) * fpr
    if a == 0:
        return 0.0
    return p * tpr * (1 - (1 - a) ** n) / a


def accuracy_bound(p: float, tpr: float, fpr: float) -> float:
    p, tpr, fpr = _rate("p", p), _rate("tpr", tpr), _rate("fpr", fpr)
    a = p * tpr + (1 - p) * fpr
    return p * tpr / a if a else 0.0


def fp_aware_n(p: float, tpr: float, fpr: float, *, fp_cost: float = 0.0, tolerance: float = 0.01,
               n_max: int = 1024) -> int:
    """The N to sample (0 = abstain) for the rates above; see the module rule."""
    if fp_cost < 0 or not 0 < tolerance < 1:
        raise ConfigError(f"fp_cost must be >= 0 and tolerance in (0, 1), got {fp_cost!r}, {tolerance!r}")
    p, tpr, fpr = _rate("p", p), _rate("tpr", tpr), _rate("fpr", fpr)
    if p * tpr <= fp_cost * (1 - p) * fpr:
        return 0
    a = p * tpr + (1 - p) * fpr
    if a >= 1:
        return 1
    # (1 - (1-a)^n) >= 1 - tolerance  <=>  n >= log(tolerance) / log(1 - a)
    return min(n_max, max(1, math.ceil(math.log(tolerance) / math.log(1 - a))))


__all__ = ["accuracy_bound", "estimate_rates", "expected_accuracy", "fp_aware_n"]
