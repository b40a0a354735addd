"""Self-consistency: majority vote over the final answers of N sampled solutions.

Paper: Wang et al. 2023, "Self-Consistency Improves Chain of Thought Reasoning in Language Models".

Rule: decode N candidates as one batch (candidate i seeded (s, i)); read each one's final answer;
the answer given by the most candidates wins (ties: the answer seen first). `best` is the first
candidate giving the winning answer; every candidate's score is its answer's vote share (0 when it
has no answer). No verifier is needed; one given is ignored for the choice but still scores the
candidates, so the result shows both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ponder.search.core import Candidate, Result, Verifier
from ponder.search.scaling.best_of_n import vote_by_answer
from ponder.search.scaling.common import answer_function, decode_and_score, finish


def majority_pick(candidates: list[Candidate], extract: Callable) -> tuple[Candidate, dict]:
    """The first candidate of the most common answer; sets each candidate's answer and vote share."""
    answers = [extract(c.output) for c in candidates]
    winner, votes = vote_by_answer(candidates, answers, [1.0] * len(candidates))
    for c, a in zip(candidates, answers):
        c.meta["answer"] = a
        c.score = votes[a] / len(candidates) if a is not None else 0.0
    return next((c for c, a in zip(candidates, answers) if a == winner), candidates[0]), votes


def self_consistency(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
                     answer_fn: Callable | None = None, abstain_below: float | None = None,
                     **options) -> Result:
    """Majority vote of `n` samples.

    Options: answer_fn (output -> answer; default the model's extract_answer), abstain_below (on
    the winner's vote share), and the decoding options of `sample`.
    """
    extract = answer_function(model, answer_fn)
    candidates, compute, config = decode_and_score(model, prompt, verifier, n=n, seed=seed,
                                                   strategy="self-consistency", **options)
    best, votes = majority_pick(candidates, extract)
    config["votes"] = {str(a): int(v) for a, v in votes.items()}
    return finish(best, candidates, compute, config, abstain_below)


__all__ = ["majority_pick", "self_consistency"]
