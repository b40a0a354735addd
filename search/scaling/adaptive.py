"""Adaptive sampling: draw samples in growing batches and stop once confident.

Paper: Manvi et al. 2024, "Adaptive Inference-Time Compute: LLMs Can Predict if They Can Do Better,
Even Mid-Generation" (sample more only while a self-evaluation says a better answer is likely).

Rule: draw candidates 0, 1, … (candidate i seeded (s, i), exactly as `sample` would) in batches of
`batch`, `batch * growth`, …, up to `n` in all. After each batch, stop when the confidence condition
holds: with a verifier, the best score so far is >= `confidence` (use the self-evaluation verifier
for the paper's setting); without one, the leading answer holds at least a `confidence` share of
the votes and at least `min_samples` were drawn. `best` is the highest-scored candidate (with a
verifier) or the first candidate of the leading answer. ``config["samples_used"]`` says how many
were drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ponder.errors import ConfigError
from ponder.search.core import Compute, Result, Verifier
from ponder.search.core.capabilities import display_name
from ponder.search.scaling.best_of_n import vote_by_answer
from ponder.search.scaling.common import (
    answer_function,
    check_n,
    check_threshold,
    decode_candidates,
    finish,
    score_candidates,
)
from ponder.search.scaling.self_consistency import majority_pick
from ponder.search.scaling.steps import check_positive_int


def adaptive(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
             confidence: float = 0.9, batch: int = 1, growth: int = 2, min_samples: int = 3,
             answer_fn: Callable | None = None, abstain_below: float | None = None, **options) -> Result:
    """At most `n` samples, fewer once confident.

    Args:
        n: the most samples to draw.
        confidence: the stopping threshold (a verifier score, or a vote share without verifier).
        batch / growth: the first batch size and its growth factor (1, 2, 4, … by default).
        min_samples: least samples before a vote may stop (no-verifier mode).
        answer_fn: reads answers for the vote (default: the model's extract_answer).
    """
    check_n(n)
    confidence = check_threshold("confidence", confidence)
    check_positive_int("batch", batch)
    check_positive_int("growth", growth)
    check_positive_int("min_samples", min_samples)
    if verifier is None and not 0 < confidence <= 1:
        raise ConfigError(f"confidence is a vote share without a verifier and must be in (0, 1], got {confidence}")
    extract = answer_function(model, answer_fn) if verifier is None else None
    compute = Compute()
    candidates, config, size = [], {}, batch
    answers: list[Any] = []
    with compute.timed():
        while len(candidates) < n:
            indices = list(range(len(candidates), min(n, len(candidates) + size)))
            new, config = decode_candidates(model, prompt, n=n, seed=seed, compute=compute, indices=indices,
                                            **options)
            score_candidates(verifier, prompt, new, compute)
            candidates += new
            size *= growth
            if verifier is not None:
                if max(c.score for c in candidates) >= confidence:
                    break
                continue
            answers += [extract(c.output) for c in new]
            winner, votes = vote_by_answer(candidates, answers, [1.0] * len(candidates))
            if winner is not None and len(candidates) >= min_samples and votes[winner] / len(candidates) >= confidence:
                break
    if verifier is not None:
        best = max(candidates, key=lambda c: (c.score, -c.meta["index"]))
    else:
        best, _ = majority_pick(candidates, extract)
    config.update({"strategy": "adaptive", "verifier": display_name(verifier, None), "confidence": confidence,
                   "samples_used": len(candidates)})
    return finish(best, candidates, compute, config, abstain_below)


__all__ = ["adaptive"]
