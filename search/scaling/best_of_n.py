"""Best-of-N and its family: best, weighted (per answer) and worst-of-N; coverage and pass@k.

Papers: Brown et al. 2024, "Large Language Monkeys: Scaling Inference Compute with Repeated
Sampling" (coverage grows with N; the unbiased pass@k estimator of Chen et al. 2021); Balashankar
et al. 2024, "InfAlign: Inference-aware language model alignment" (best-of-N as the inference-time
procedure; worst-of-N as best-of-N jailbreaking, i.e. red-teaming by picking the lowest-scored).

Rules:
* all N candidates share one prompt prefill and decode as one batch (candidate i seeded (s, i));
* ``best-of-n`` returns the candidate with the highest verifier score (ties: lowest index);
* ``weighted-best-of-n`` sums the scores of candidates per distinct final answer and returns the
  highest-scored candidate of the answer with the largest sum (candidates with no answer form no
  group and are never picked unless no candidate has one);
* ``worst-of-n`` returns the candidate with the lowest score (red-team mode);
* ``coverage(correct, k)``: any of the first k correct; ``pass_at_k(n, c, k) = 1 - C(n-c, k) / C(n, k)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import comb
from typing import Any

from ponder.errors import ConfigError, check_int
from ponder.search.core import Candidate, Compute, Result, Verifier
from ponder.search.scaling.common import answer_function, decode_and_score, finish, require_verifier


def _scored(model, prompt, verifier, n, seed, strategy, options) -> tuple[list[Candidate], Compute, dict]:
    """`n` candidates decoded as one batch and scored by `verifier`."""
    require_verifier(verifier, strategy)
    return decode_and_score(model, prompt, verifier, n=n, seed=seed, strategy=strategy, **options)


def best_of_n(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
              abstain_below: float | None = None, **options) -> Result:
    """The highest-scored of `n` candidates (ties: the lowest index).

    Options: abstain_below (return best=None under this score), and the decoding options of
    `sample` (decoder, draft, sampling, max_new_tokens, stop, stream).
    """
    candidates, compute, config = _scored(model, prompt, verifier, n, seed, "best-of-n", options)
    return finish(pick_best(candidates), candidates, compute, config, abstain_below)


def pick_best(candidates: Sequence[Candidate]) -> Candidate:
    """The highest-scored candidate (ties: the lowest index)."""
    return max(candidates, key=lambda c: (c.score, -c.meta["index"]))


def pick_weighted(candidates: Sequence[Candidate], extract: Callable) -> tuple[Candidate, dict]:
    """Weighted best-of-N's pick (scores summed per answer); notes each candidate's answer in meta."""
    answers = [extract(c.output) for c in candidates]
    winner, totals = vote_by_answer(candidates, answers, [c.score for c in candidates])
    for c, a in zip(candidates, answers):
        c.meta["answer"] = a
        c.meta["answer_weight"] = totals.get(a) if a is not None else None
    pool = [c for c, a in zip(candidates, answers) if a == winner] if winner is not None else candidates
    return pick_best(pool), totals


def worst_of_n(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
               **options) -> Result:
    """Red-team mode: the lowest-scored of `n` candidates (ties: the lowest index)."""
    candidates, compute, config = _scored(model, prompt, verifier, n, seed, "worst-of-n", options)
    best = min(candidates, key=lambda c: (c.score, c.meta["index"]))
    return finish(best, candidates, compute, config)


def vote_by_answer(candidates: Sequence[Candidate], answers: Sequence[Any], weights: Sequence[float]
                   ) -> tuple[Any, dict[Any, float]]:
    """(winning answer, total weight per answer); ties go to the answer first seen. None answers
    do not vote; when no candidate has an answer the winner is None."""
    totals: dict[Any, float] = {}
    for answer, w in zip(answers, weights):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + float(w)
    if not totals:
        return None, totals
    top = max(totals.values())
    return next(a for a in totals if totals[a] == top), totals


def weighted_best_of_n(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
                       answer_fn: Callable | None = None, abstain_below: float | None = None,
                       **options) -> Result:
    """Scores summed per distinct final answer; the best candidate of the winning answer.

    Options: answer_fn (output -> answer; default the model's extract_answer), abstain_below.
    """
    extract = answer_function(model, answer_fn)
    candidates, compute, config = _scored(model, prompt, verifier, n, seed, "weighted-best-of-n", options)
    best, totals = pick_weighted(candidates, extract)
    config["answer_weights"] = {str(a): round(w, 6) for a, w in totals.items()}
    return finish(best, candidates, compute, config, abstain_below)


def coverage(correct: Sequence[bool], k: int) -> float:
    """1.0 when any of the first `k` outputs is correct (Large Language Monkeys' coverage)."""
    check_int("k", k)
    return float(any(correct[:k]))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples of which `c` are correct: 1 - C(n-c, k) / C(n, k)."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ConfigError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


__all__ = ["best_of_n", "coverage", "pass_at_k", "vote_by_answer", "weighted_best_of_n", "worst_of_n"]
