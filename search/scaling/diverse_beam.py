"""Diverse beam search over steps, guided by a process verifier.

Paper: Vijayakumar et al. 2018, "Diverse Beam Search: Decoding Diverse Solutions from Neural
Sequence Models" (beams split into groups; each group's choice is penalised by its similarity to
the choices earlier groups made at the same time step — Hamming diversity).

Rule (at the level of steps): the `n` round-0 slots are split into `groups` groups (slot j belongs
to group ``j % groups``; descendants stay in their ancestor's group). Every round, groups choose in
order 0, 1, …: group g keeps its ``n / (beam_width * groups)`` open partials with the highest
``PRM score - diversity * (times an earlier group already kept a partial whose latest step is the
same text)``. Each kept partial gets `beam_width` children. With ``diversity=0`` every group runs its
own beam search. Otherwise as `beam_search`.
"""

from __future__ import annotations

from typing import Any

from ponder.errors import ConfigError
from ponder.search.core import Compute, Result, Verifier
from ponder.search.scaling.common import check_threshold, finish
from ponder.search.scaling.steps import (
    Scored,
    Stepper,
    best_finished,
    check_beams,
    check_positive_int,
    require_process_verifier,
    step_search,
)


def diverse_select(scored: list[Scored], *, groups: int, per_group: int, diversity: float,
                   last_step) -> list:
    """Group-by-group choice with a Hamming diversity penalty on each partial's latest step."""
    chosen_steps: dict[Any, int] = {}
    survivors = []
    for g in range(groups):
        mine = [(i, p, s) for i, (p, s) in enumerate(scored) if not p.done and p.origin % groups == g]
        ranked = sorted(mine, key=lambda t: (-(t[2] - diversity * chosen_steps.get(last_step(t[1]), 0)), t[0]))
        kept = [p for _, p, _ in ranked[:per_group]]
        for p in kept:  # later groups see this group's choices
            chosen_steps[last_step(p)] = chosen_steps.get(last_step(p), 0) + 1
        survivors += kept
    return survivors


def diverse_beam(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
                 beam_width: int = 2, groups: int = 2, diversity: float = 0.5, max_steps: int | None = None,
                 abstain_below: float | None = None, trace: bool = False, fork_cache: bool = True,
                 **options) -> Result:
    """Diverse beam search: `groups` groups, penalty `diversity` (>= 0); other options as for
    `beam_search`. ``n / beam_width`` must be a multiple of `groups`."""
    verifier = require_process_verifier(verifier, "diverse-beam")
    keep = check_beams(n, beam_width, "diverse-beam")
    check_positive_int("groups", groups)
    if keep % groups:
        raise ConfigError(f"diverse-beam: n / beam_width = {keep} beams cannot be split into groups={groups}; "
                          f"n must be a multiple of beam_width * groups = {beam_width * groups}")
    diversity = check_threshold("diversity", diversity)
    if diversity < 0:
        raise ConfigError(f"diversity must be >= 0, got {diversity!r}")
    compute = Compute()
    with compute.timed():
        stepper = Stepper(model, prompt, seed=seed, compute=compute, fork_cache=fork_cache, **options)

        def last_step(p):
            start = p.bounds[-2] if len(p.bounds) > 1 else 0
            return tuple(p.ids[start:])

        def select(scored):
            return diverse_select(scored, groups=groups, per_group=keep // groups, diversity=diversity,
                                  last_step=last_step)

        candidates, extra = step_search(stepper, verifier, n=n, beam_width=beam_width, select=select,
                                        max_steps=max_steps, enough=n, trace=trace)
    for c in candidates:
        c.meta["group"] = c.meta["origin"] % groups
    config = stepper.config("diverse-beam", n, verifier, groups=groups, diversity=diversity, **extra)
    return finish(best_finished(candidates), candidates, compute, config, abstain_below)


__all__ = ["diverse_beam", "diverse_select"]
