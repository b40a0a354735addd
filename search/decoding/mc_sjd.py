"""MC-SJD: Speculative Jacobi Decoding whose redrawn drafts are maximally coupled to the old ones.

So, Kook, Jang and Park 2025 (arXiv 2510.24211), *MC-SJD: Maximal Coupling Speculative Jacobi
Decoding for Autoregressive Visual Generation Acceleration*.

Rule: as SJD (`sjd.py`), except how a draft still in the window is redrawn after an iteration. SJD
draws it afresh from the new p_j; MC-SJD draws it from the maximal coupling of the old q_j and the
new p_j: keep the old token d with probability min(1, p_j(d) / q_j(d)), else draw from
norm(max(0, p_j − q_j)). The new draft is still distributed as p_j (so the acceptance test, and
losslessness, are SJD's), but it equals the old one with the largest possible probability,
1 − TV(p_j, q_j): the context of later positions stops changing, so their p converge and are
accepted sooner.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.kernels.sampling import SamplingParams, probs_from_logits
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.chain import residual
from ponder.search.decoding.jacobi import window_decode
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.sjd import SJDWindow


def maximal_coupling(old: torch.Tensor, q: torch.Tensor, p: torch.Tensor, keep_u: torch.Tensor,
                     redraw) -> torch.Tensor:
    """Tokens [N] distributed as p [N, V] that equal `old` [N] (drawn from q [N, V]) when possible.

    keep_u: [N] uniforms; `redraw(weights [N, V]) -> [N]` samples the residual."""
    rows = torch.arange(len(old))
    keep = keep_u * q[rows, old] < p[rows, old]  # [N]: q(d) u < p(d) <=> u < p(d) / q(d)
    return torch.where(keep, old, redraw(residual(p, q)))


class CoupledWindow(SJDWindow):
    """The SJD window with maximally coupled redraws of the drafts that stay in the window."""

    def refine(self, row: int, logits: torch.Tensor, old: list[int],
               old_q: torch.Tensor | None) -> tuple[list[int], torch.Tensor | None]:
        if self.sampling.greedy or not old:
            return super().refine(row, logits, old, old_q)
        p = probs_from_logits(logits, self.sampling)  # [N, V]; positions 0..N-2 had old drafts
        kept = len(old)
        keep_u = self._uniform(row, kept)  # [N-1]: a fixed number of draws per row
        coupled = maximal_coupling(torch.tensor(old), old_q, p[:kept], keep_u,
                                   lambda weights: self._sample(row, weights))  # [N-1]
        tail = self._sample(row, p[kept:])  # the last position had no old draft
        return torch.cat([coupled, tail]).tolist(), p


def mc_sjd(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    draft_len: int = 16,
    init: str = "random",
    stats: dict | None = None,
) -> Decoded:
    """SJD with maximal-coupling redraws (MC-SJD, So et al. 2025); lossless like SJD.

    Arguments as `sjd`.
    """
    return window_decode(CoupledWindow, "mc-sjd", model, prompt_ids, sampling=sampling,
                         max_new_tokens=max_new_tokens, generators=generators, stop=stop, stream=stream, draft=draft,
                         draft_len=draft_len, init=init, stats=stats)


__all__ = ["CoupledWindow", "maximal_coupling", "mc_sjd"]
