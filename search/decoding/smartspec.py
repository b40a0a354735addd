"""SmartSpec's draft length: the k that maximises goodput for this batch, from measured acceptance and cost.

Liu et al. 2024, *Optimizing Speculative Decoding for Serving Large Language Models Using Goodput*
(SmartSpec). Rule: each step, for every candidate length k in 0..max_len, goodput(k) =
Σ_rows E[tokens | k] / cost(k), with E[tokens | k] = (1 − α_r^(k+1)) / (1 − α_r) for a row whose
per-token acceptance rate is α_r (a moving average of its accepted / drafted), and cost(k) =
k·t_draft + t_verify(k) (k = 0: t_verify(0), no draft forward at all); t_draft and t_verify(k) =
a + b·(k+1) are measured online (moving averages of the step's timed forwards, least squares over the
widths seen) for this batch — so a large batch, whose verify cost grows with k, drafts less or not
at all. The whole batch drafts the chosen k. Lengths depend only on the past, so verification stays
lossless. `costs` fixes (t_draft, a, b) instead of timing (reproducible runs, tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

EMA = 0.3  # weight of the newest measurement in every moving average
PRIOR_ACCEPTANCE = 0.6  # α before a row has any verified drafts
PROBE_EVERY = 8  # steps at k = 0 before one k = 1 step re-measures acceptance


def expected_tokens(alpha: torch.Tensor, k: int) -> torch.Tensor:
    """E[tokens emitted in a step] with k drafts at acceptance rates alpha [B] -> [B]."""
    alpha = alpha.clamp(0.0, 0.999)
    return (1 - alpha ** (k + 1)) / (1 - alpha)


class GoodputSchedule:
    """Per step one draft length for the batch, maximising measured goodput (SmartSpec)."""

    def __init__(self, max_len: int, batch: int, costs: Sequence[float] | None = None):
        self.max_len = max_len
        self.alpha = torch.full((batch,), PRIOR_ACCEPTANCE)  # [B]
        self.fixed = None if costs is None else tuple(float(c) for c in costs)
        self.t_draft: float | None = None
        self.verify: dict[int, float] = {}  # verify width (k + 1) -> moving-average seconds
        self.k = max_len  # the first step measures the costs at the longest draft
        self.idle = 0  # steps in a row at k = 0

    def _cost(self, k: int) -> float:
        if self.fixed is not None:
            t_draft, a, b = self.fixed
        else:
            t_draft = self.t_draft or 0.0
            widths = sorted(self.verify)
            if len(widths) == 1:
                a, b = self.verify[widths[0]], 0.0  # one width seen: flat
            else:
                x = torch.tensor(widths, dtype=torch.float64)
                y = torch.tensor([self.verify[w] for w in widths], dtype=torch.float64)
                b = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
                b = max(b, 0.0)
                a = float(y.mean()) - b * float(x.mean())
        return k * t_draft + a + b * (k + 1)

    def choose(self, active: Sequence[int]) -> int:
        """The goodput-maximising k for the rows still decoding."""
        if self.fixed is None and (self.t_draft is None or not self.verify):
            return self.k  # nothing measured yet
        alpha = self.alpha[list(active)] if active else self.alpha
        scores = [float(expected_tokens(alpha, k).sum()) / max(self._cost(k), 1e-9) for k in range(self.max_len + 1)]
        k = max(range(len(scores)), key=lambda i: (scores[i], -i))
        if k == 0:
            self.idle += 1
            if self.idle >= PROBE_EVERY:  # re-measure acceptance now and then
                self.idle, k = 0, 1
        else:
            self.idle = 0
        self.k = k
        return k

    def update(self, drafted: Sequence[int], accepted: Sequence[int], draft_seconds: float, draft_forwards: int,
               verify_seconds: float, width: int) -> None:
        """Fold one step in: per-row drafted / accepted counts, and the step's timed forwards."""
        for row, (d, n) in enumerate(zip(drafted, accepted)):
            if d:
                self.alpha[row] = (1 - EMA) * self.alpha[row] + EMA * min(n, d) / d
        if draft_forwards:
            per = draft_seconds / draft_forwards
            self.t_draft = per if self.t_draft is None else (1 - EMA) * self.t_draft + EMA * per
        old = self.verify.get(width)
        self.verify[width] = verify_seconds if old is None else (1 - EMA) * old + EMA * verify_seconds


__all__ = ["GoodputSchedule", "expected_tokens"]
