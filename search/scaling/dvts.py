"""Diverse verifier tree search (DVTS).

Source: Beeching, Tunstall and Rush 2024, "Scaling test-time compute with open models" (Hugging
Face), extending the PRM beam search of Snell et al. 2024.

Rule: split the budget `n` into ``n / beam_width`` independent subtrees. Round 0 samples
`beam_width` first steps per subtree; in every round each subtree keeps only its single
highest-scored partial (by the PRM) and samples `beam_width` next steps from it. A subtree ends
when its highest-scored partial is finished; that partial is the subtree's answer. `best` is the
highest-scored answer. Independent subtrees keep the search diverse where one beam search would
collapse onto a few prefixes.
"""

from __future__ import annotations

from typing import Any

from ponder.search.core import Compute, Result, Verifier
from ponder.search.scaling.common import finish
from ponder.search.scaling.steps import (
    Scored,
    Stepper,
    check_beams,
    require_process_verifier,
    step_search,
)


def dvts(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0, beam_width: int = 4,
         max_steps: int | None = None, abstain_below: float | None = None, trace: bool = False,
         fork_cache: bool = True, **options) -> Result:
    """DVTS with ``n / beam_width`` subtrees; options as for `beam_search`."""
    verifier = require_process_verifier(verifier, "dvts")
    subtrees = check_beams(n, beam_width, "dvts")
    answers: dict[int, tuple] = {}  # subtree -> (partial, score) once it ended

    def select(scored: list[Scored]):
        survivors = []
        for tree in range(subtrees):
            if tree in answers:
                continue
            mine = [(i, p, s) for i, (p, s) in enumerate(scored) if p.origin // beam_width == tree]
            if not mine:
                continue
            _, top, score = min(mine, key=lambda t: (-t[2], t[0]))
            if top.done:
                answers[tree] = (top, score)
                top.meta["subtree_answer"] = True
            else:
                survivors.append(top)
        return survivors

    compute = Compute()
    with compute.timed():
        stepper = Stepper(model, prompt, seed=seed, compute=compute, fork_cache=fork_cache, **options)
        candidates, extra = step_search(stepper, verifier, n=n, beam_width=beam_width, select=select,
                                        max_steps=max_steps, trace=trace)
    for c in candidates:
        c.meta["subtree"] = c.meta["origin"] // beam_width
        c.meta.setdefault("subtree_answer", False)
    pool = [c for c in candidates if c.meta["subtree_answer"]] or candidates
    best = max(pool, key=lambda c: (c.score, -c.meta["index"])) if pool else None
    config = stepper.config("dvts", n, verifier, subtrees=subtrees, **extra)
    return finish(best, candidates, compute, config, abstain_below)


__all__ = ["dvts"]
