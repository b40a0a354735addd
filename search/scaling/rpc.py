"""RPC: perplexity consistency with reasoning pruning.

Paper: Zhou et al. 2025, "Bridging Internal Probability and Self-Consistency for Effective and
Efficient LLM Reasoning" (RPC = Perplexity Consistency + Reasoning Pruning).

Rule:
* every sampled path gets its internal probability, the inverse perplexity
  ``exp(mean log p(token))`` under the model's untempered distribution;
* reasoning pruning: paths in the low-probability cluster are dropped before voting. The paper fits
  a two-component mixture to the path probabilities; here the split is the 1-D two-means cut of
  the probabilities (the threshold between the two cluster means), applied only when the clusters
  are well separated (gap >= `min_gap`) and never removing every path;
* perplexity consistency: each distinct path (identical outputs count once) adds its probability to
  its answer's total; the answer with the largest total wins (ties: first seen); `best` is that
  answer's most probable path. A candidate's score is its answer's share of the total.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ponder.errors import ConfigError
from ponder.search.core import Candidate, Result, Verifier
from ponder.search.scaling.best_of_n import vote_by_answer
from ponder.search.scaling.common import answer_function, decode_and_score, finish


def two_means_threshold(values: Sequence[float], iterations: int = 50) -> float:
    """The cut between the two clusters of 1-D `values` (midpoint of the two-means centroids)."""
    lo, hi = min(values), max(values)
    if lo == hi:
        return lo
    a, b = lo, hi
    for _ in range(iterations):
        cut = (a + b) / 2
        low = [v for v in values if v < cut]
        high = [v for v in values if v >= cut]
        if not low or not high:
            break
        a2, b2 = sum(low) / len(low), sum(high) / len(high)
        if (a2, b2) == (a, b):
            break
        a, b = a2, b2
    return (a + b) / 2


def prune_mask(probs: Sequence[float], min_gap: float) -> list[bool]:
    """Which paths survive reasoning pruning (True = kept)."""
    if len(probs) < 3:
        return [True] * len(probs)
    cut = two_means_threshold(probs)
    low = [p for p in probs if p < cut]
    high = [p for p in probs if p >= cut]
    if not low or not high or sum(high) / len(high) - sum(low) / len(low) < min_gap:
        return [True] * len(probs)
    return [p >= cut for p in probs]


def rpc_pick(candidates: list[Candidate], extract: Callable, *, prune: bool = True, min_gap: float = 0.05
             ) -> tuple[Candidate, dict, list[bool]]:
    """RPC's choice among decoded candidates (module rule); sets answer, path probability, pruned
    and score in each candidate's meta. Returns (best, total per answer, kept flags)."""
    probs = [math.exp(c.meta["logprob"] / max(1, c.meta["num_tokens"])) for c in candidates]
    kept = prune_mask(probs, min_gap) if prune else [True] * len(candidates)
    answers = [extract(c.output) for c in candidates]
    seen: set[Any] = set()
    weights = []
    for c, p, k in zip(candidates, probs, kept):
        distinct = k and c.output not in seen
        seen.add(c.output)
        weights.append(p if distinct else 0.0)
    winner, totals = vote_by_answer(candidates, [a if k else None for a, k in zip(answers, kept)], weights)
    total = sum(totals.values()) or 1.0
    for c, a, p, k in zip(candidates, answers, probs, kept):
        c.meta.update({"answer": a, "path_probability": p, "pruned": not k})
        c.score = totals.get(a, 0.0) / total if a is not None else 0.0
    pool = [(p, c) for c, a, p in zip(candidates, answers, probs) if a == winner and winner is not None]
    return (max(pool, key=lambda pc: pc[0])[1] if pool else candidates[0]), totals, kept


def rpc(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
        answer_fn: Callable | None = None, prune: bool = True, min_gap: float = 0.05,
        abstain_below: float | None = None, **options) -> Result:
    """Perplexity-weighted vote of `n` samples after pruning low-probability paths.

    Options: answer_fn, prune (reasoning pruning on/off), min_gap (least gap between the two
    probability clusters for pruning to apply), abstain_below (on the winner's share).
    """
    if not isinstance(min_gap, (int, float)) or isinstance(min_gap, bool) or not 0 <= min_gap <= 1:
        raise ConfigError(f"min_gap must be a number in [0, 1], got {min_gap!r}")
    extract = answer_function(model, answer_fn)
    candidates, compute, config = decode_and_score(model, prompt, verifier, n=n, seed=seed, strategy="rpc",
                                                   **options)
    best, totals, kept = rpc_pick(candidates, extract, prune=prune, min_gap=min_gap)
    config.update({"pruned": kept.count(False), "answer_weights": {str(a): round(w, 6) for a, w in totals.items()}})
    return finish(best, candidates, compute, config, abstain_below)


__all__ = ["prune_mask", "rpc", "rpc_pick", "two_means_threshold"]
