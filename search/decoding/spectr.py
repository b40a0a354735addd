"""SpecTr: k i.i.d. draft sequences, verified with k-sequential (optimal-transport style) selection.

Sun et al. 2023, *SpecTr: Fast Speculative Decoding via Optimal Transport* (the K-SEQ selection).

Rule: the draft samples `tree_width` = k sequences of `draft_len` tokens i.i.d.; they share common
prefixes, so they form a tree where each node holds the m draws made there by the m sequences
through it (repeats allowed). One target forward scores the tree. At a node with draws x_1..x_m from
q and target p: with β(ρ) = Σ_x min(q(x), p(x)/ρ) and ρ ∈ [1, m] the smallest value with
1 − (1 − β)^m ≤ ρβ, accept x_i with probability min(1, p(x_i) / (ρ q(x_i))), trying i = 1..m in turn
with the same p; if none is accepted draw from
p_res(x) = (p(x) − min(q(x), p(x)/ρ) (1 − (1 − β)^m) / β) / (1 − β)^m.
Each emitted token is distributed exactly as p (m = 1 is speculative sampling): **lossless**. The
walk continues into the child holding the emitted token, whose draws are i.i.d. given that prefix.
Greedy: all k sequences are the draft's argmax chain and the walk follows the target's argmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.chain import check_draft_len
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.tree_draft import decode_with_draft_trees, grow_by_level, iid_draws, top_children
from ponder.search.decoding.tree_verify import check_tree_width, rrs

_BISECT_STEPS = 30


def kseq_rho(p: torch.Tensor, q: torch.Tensor, count: int) -> tuple[float, float]:
    """(ρ, β(ρ)) for K-SEQ with `count` draws: the smallest ρ in [1, count] (bisection) such that
    1 − (1 − β)^count ≤ ρβ, which keeps the acceptance part of every token's mass within p."""
    def beta(rho: float) -> float:
        return float(torch.minimum(q, p / rho).sum())

    def fits(rho: float) -> bool:
        b = beta(rho)
        return 1 - (1 - b) ** count <= rho * b + 1e-9

    if fits(1.0):
        return 1.0, beta(1.0)
    low, high = 1.0, float(count)  # fits(count) always holds: 1 - (1 - b)^k <= k b
    for _ in range(_BISECT_STEPS):
        mid = (low + high) / 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high, beta(high)


def kseq(p: torch.Tensor, q: torch.Tensor | None, draws: Sequence[int], generator) -> int:
    """SpecTr's K-SEQ acceptance over i.i.d. draws from q; returns a token distributed as p."""
    if q is None or not draws:
        return rrs(p, q, draws, generator)
    count = len(draws)
    rho, beta = kseq_rho(p, q, count)
    for token in draws:
        # accept with probability min(1, p / (ρ q)): u ρ q < p
        if float(torch.rand((), generator=generator)) * rho * float(q[token]) < float(p[token]):
            return token
    if beta <= 1e-12:  # p and q disjoint: nothing could be accepted, the residual is p
        return rrs(p, None, [], generator)
    accepted_mass = (1 - (1 - beta) ** count) / beta
    rest = (p - torch.minimum(q, p / rho) * accepted_mass).clamp(min=0)  # [V], ∝ p_res
    return rrs(rest / rest.sum(), None, [], generator)


def spectr(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    draft_len: int = 3,
    tree_width: int = 3,
    stats: dict | None = None,
) -> Decoded:
    """Lossless SpecTr decoding from `model`: k i.i.d. draft sequences, K-SEQ selection at every node.

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`.
        draft: the draft `SequenceModel` (same tokenizer); required.
        draft_len: tokens per draft sequence, a positive integer.
        tree_width: k, the number of i.i.d. draft sequences, a positive integer.
        stats: optional dict receiving steps / row_steps / accepted / tree_nodes.
    """
    check_draft_len(draft_len)
    check_tree_width(tree_width)

    def make_trees(drafter, last, limits, gens):
        def choose(q, width, row):
            if drafter.sampling.greedy:
                return top_children(q, 1)
            return iid_draws(q, width, None if gens is None else gens[row])

        return grow_by_level(drafter, last, limits, (tree_width,) * draft_len, choose, keep_q=True,
                             multiplicity=True)

    return decode_with_draft_trees("spectr", model, prompt_ids, make_trees, kseq, sampling=sampling,
                                   max_new_tokens=max_new_tokens, generators=generators, stop=stop,
                                   stream=stream, draft=draft, draft_len=draft_len, stats=stats)


__all__ = ["kseq", "kseq_rho", "spectr"]
