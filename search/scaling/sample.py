"""`sample`: N independent samples, no selection — the baseline every strategy is compared with.

Rule: candidate i of base seed s is decoded with its own generator seeded from (s, i); all N share
one batched decode. When a verifier is given every candidate is scored, but `best` is still the
first candidate (no selection); `best_of_n` is the strategy that selects.
"""

from __future__ import annotations

from typing import Any

from ponder.search.core import Candidate, Result, Verifier
from ponder.search.scaling.common import decode_and_score


def sample(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
           **options) -> Result:
    """Draw `n` independent samples of `model` for `prompt`.

    Args:
        model: a `SequenceModel`.
        prompt: what `model.encode` takes.
        verifier: optional; scores every candidate (`best` is still candidate 0).
        n: number of samples (>= 1).
        seed: base seed; candidate i re-renders alone with (seed, i).
        options: decoding options — decoder, draft, sampling, max_new_tokens, stop, stream.
    Returns:
        `Result` with all n candidates in index order.
    """
    candidates, compute, config = decode_and_score(model, prompt, verifier, n=n, seed=seed, strategy="sample",
                                                   **options)
    return Result(best=candidates[0], candidates=candidates, compute=compute, config=config)


__all__ = ["Candidate", "sample"]
