"""Compute-optimal scaling: estimate each prompt's difficulty, then choose strategy and budget for it.

Paper: Snell et al. 2024, "Scaling LLM Test-Time Compute Optimally can be More Effective than
Scaling Model Parameters" (difficulty bins from the verifier's mean score over a few samples; the
best strategy differs by bin — search against a PRM helps on harder prompts, best-of-N suffices on
easy ones).

Rule: draw `probe` samples (candidates 0..probe-1, seeded exactly as `sample` would) and score them;
the prompt's difficulty level is 1 (easiest) … ``len(bins) + 1`` by where their mean score falls
among the descending thresholds `bins`. ``policy[level]`` names the strategy that spends the rest of
the budget `n`:
* ``best-of-n`` / ``weighted-best-of-n`` / ``self-consistency`` reuse the probes and draw candidates
  probe..n-1 (the result equals that strategy run with budget n);
* a step-level search (``beam``, ``dvts``, ``diverse-beam``, ``particles``) gets ``n - probe``
  samples (rounded down to a multiple of its beam width) and needs a process verifier; without
  one the level falls back to ``weighted-best-of-n``.
The default policy follows the paper's finding; `fit_policy` learns one from measured accuracies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ponder.errors import ConfigError
from ponder.search.core import Compute, ProcessVerifier, Result, Verifier
from ponder.search.core.capabilities import display_name
from ponder.search.scaling.best_of_n import pick_best, pick_weighted
from ponder.search.scaling.common import (
    answer_function,
    check_n,
    decode_candidates,
    finish,
    require_verifier,
    score_candidates,
)
from ponder.search.scaling.self_consistency import majority_pick
from ponder.search.scaling.steps import check_positive_int

DEFAULT_BINS = (0.8, 0.6, 0.4, 0.2)  # mean probe score thresholds: level 1 >= 0.8, ..., level 5 < 0.2
DEFAULT_POLICY = {1: "best-of-n", 2: "best-of-n", 3: "beam", 4: "beam", 5: "weighted-best-of-n"}
REUSING = ("best-of-n", "weighted-best-of-n", "self-consistency")
STEP_SEARCH = ("beam", "dvts", "diverse-beam", "particles")


def difficulty_level(mean_score: float, bins: Sequence[float] = DEFAULT_BINS) -> int:
    """1 + the number of (descending) thresholds in `bins` that `mean_score` falls below."""
    return 1 + sum(mean_score < b for b in bins)


def fit_policy(accuracy: Mapping[int, Mapping[str, float]]) -> dict[int, str]:
    """The policy choosing, per level, the strategy with the highest measured accuracy
    (``accuracy[level][strategy]``; ties: the first listed)."""
    return {level: max(scores, key=scores.get) for level, scores in accuracy.items() if scores}


def _check(n, probe, bins, policy):
    check_n(n)
    check_positive_int("probe", probe)
    if n <= probe:
        raise ConfigError(f"compute-optimal: budget n={n} must exceed probe={probe} (the samples that "
                          "estimate difficulty); raise n or lower probe")
    bins = tuple(float(b) for b in bins)
    if list(bins) != sorted(bins, reverse=True):
        raise ConfigError(f"bins must be descending thresholds, got {list(bins)}")
    policy = {int(k): v for k, v in (policy or DEFAULT_POLICY).items()}
    for level in range(1, len(bins) + 2):
        if policy.get(level) not in REUSING + STEP_SEARCH:
            raise ConfigError(f"policy must name a strategy for every level 1..{len(bins) + 1} from "
                              f"{', '.join(REUSING + STEP_SEARCH)}; level {level} has {policy.get(level)!r}")
    return bins, policy


def compute_optimal(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
                    probe: int = 4, bins: Sequence[float] = DEFAULT_BINS, policy: Mapping[int, str] | None = None,
                    beam_width: int = 4, answer_fn: Callable | None = None, abstain_below: float | None = None,
                    strategy_options: Mapping[str, Any] | None = None, **options) -> Result:
    """Per-prompt choice of strategy at budget `n`.

    Args:
        probe: samples spent estimating difficulty (part of the budget).
        bins: descending mean-score thresholds between difficulty levels.
        policy: level -> strategy (default `DEFAULT_POLICY`).
        beam_width: for step-level searches.
        strategy_options: extra options for the chosen strategy (e.g. weight_temperature).
        options: decoding options shared by the probes and the chosen strategy.
    """
    from ponder.search.scaling import get_strategy

    verifier = require_verifier(verifier, "compute-optimal")
    bins, policy = _check(n, probe, bins, policy)
    compute = Compute()
    with compute.timed():
        probes, config = decode_candidates(model, prompt, n=n, seed=seed, compute=compute,
                                           indices=range(probe), **options)
        score_candidates(verifier, prompt, probes, compute)
        mean = sum(c.score for c in probes) / probe
        level = difficulty_level(mean, bins)
        chosen = policy[level]
        if chosen in STEP_SEARCH and not isinstance(verifier, ProcessVerifier):
            chosen = "weighted-best-of-n"
        for c in probes:
            c.meta["probe"] = True
        if chosen in REUSING:
            rest, _ = decode_candidates(model, prompt, n=n, seed=seed, compute=compute, indices=range(probe, n),
                                        **options)
            score_candidates(verifier, prompt, rest, compute)
            candidates = probes + rest
            if chosen == "best-of-n":
                best = pick_best(candidates)
            elif chosen == "weighted-best-of-n":
                best, _ = pick_weighted(candidates, answer_function(model, answer_fn))
            else:
                best, _ = majority_pick(candidates, answer_function(model, answer_fn))
        else:
            budget = n - probe
            width = min(beam_width, budget) if chosen != "particles" else 1
            budget -= budget % width
            extra = {"beam_width": width} if chosen != "particles" else {}
            sub = get_strategy(chosen)(model, prompt, verifier, n=budget, seed=seed, **extra,
                                       **dict(strategy_options or {}), **options)
            compute.add_work(sub.compute)  # its wall time is inside this timer
            for i, c in enumerate(sub.candidates):
                c.meta["index"] = probe + i
            candidates = probes + sub.candidates
            best = sub.best or pick_best(candidates)
    config.update({"strategy": "compute-optimal", "verifier": display_name(verifier, None), "probe": probe,
                   "difficulty_score": round(mean, 6), "difficulty_level": level, "chosen": chosen,
                   "bins": list(bins), "policy": {str(k): v for k, v in sorted(policy.items())}})
    return finish(best, candidates, compute, config, abstain_below)


__all__ = ["DEFAULT_BINS", "DEFAULT_POLICY", "compute_optimal", "difficulty_level", "fit_policy"]
