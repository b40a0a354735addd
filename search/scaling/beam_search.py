"""Beam search over steps, guided by a process verifier.

Paper: Snell et al. 2024, "Scaling LLM Test-Time Compute Optimally can be More Effective than
Scaling Model Parameters" (beam search against a PRM).

Rule: sample `n` first steps; score every partial solution with the PRM; keep the top
``n / beam_width`` open partials (ties: the earlier one) and sample `beam_width` next steps from
each; repeat until `n` solutions have finished (or `max_steps` rounds). Finished solutions are
scored by the verifier as whole outputs; `best` is the highest-scored finished one. `n` must be a
multiple of `beam_width`.
"""

from __future__ import annotations

from typing import Any

from ponder.search.core import Compute, Result, Verifier
from ponder.search.scaling.common import finish
from ponder.search.scaling.steps import (
    Scored,
    Stepper,
    best_finished,
    check_beams,
    require_process_verifier,
    step_search,
)


def top_open(scored: list[Scored], keep: int):
    """The `keep` highest-scored open partials (ties: the earlier one)."""
    open_ = [(i, p, s) for i, (p, s) in enumerate(scored) if not p.done]
    open_.sort(key=lambda t: (-t[2], t[0]))
    return [p for _, p, _ in open_[:keep]]


def beam_search(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
                beam_width: int = 4, max_steps: int | None = None, abstain_below: float | None = None,
                trace: bool = False, fork_cache: bool = True, **options) -> Result:
    """PRM-guided step-level beam search.

    Args:
        n: samples per round (the budget per step); a multiple of `beam_width`.
        beam_width: next steps sampled from each kept beam (M); n / M beams are kept.
        max_steps: most rounds (default: bounded by max_new_tokens).
        abstain_below: return best=None when the best score is below this.
        trace: record every round's scores and kept partials in ``config["trace"]``.
        fork_cache: keep each partial's cache row across rounds (plain decoding) instead of re-prefilling
            prompt + partial every round; the same outputs up to float rounding.
        options: decoding options (decoder, draft, sampling, max_new_tokens, stop, step_end,
            max_step_tokens).
    """
    verifier = require_process_verifier(verifier, "beam")
    keep = check_beams(n, beam_width, "beam")
    compute = Compute()
    with compute.timed():
        stepper = Stepper(model, prompt, seed=seed, compute=compute, fork_cache=fork_cache, **options)
        candidates, extra = step_search(stepper, verifier, n=n, beam_width=beam_width,
                                        select=lambda scored: top_open(scored, keep), max_steps=max_steps,
                                        enough=n, trace=trace)
    config = stepper.config("beam", n, verifier, **extra)
    return finish(best_finished(candidates), candidates, compute, config, abstain_below)


__all__ = ["beam_search", "top_open"]
