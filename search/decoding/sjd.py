"""Speculative Jacobi Decoding (SJD): lossless parallel sampling for autoregressive image tokens.

Teng et al. 2024, *Accelerating Auto-regressive Text-to-Image Generation with Training-free
Speculative Jacobi Decoding*.

Rule: keep a window of L draft tokens, each drawn from a known distribution q (uniform over the
vocabulary, or a point mass for the spatial-locality "horizon" guess, when new; afterwards the model's
own distribution from the previous iteration). One forward over [last, d_1..d_L] gives p_j for every
position given d_<j. Accept d_j with probability min(1, p_j(d_j) / q_j(d_j)) until the first
rejection, where a token is drawn from norm(max(0, p_j − q_j)); if all L pass, a bonus token comes
from p_{L+1}. The drafts after the rejection are redrawn from this iteration's p (conditioned on
the stale drafts) and become the next iteration's q. This is the speculative-sampling test with the
previous Jacobi iteration as the draft model, so the output is distributed exactly as plain sampling;
at temperature 0 it is greedy Jacobi decoding.

The window, its initialisation and the per-row rollback are `jacobi.JacobiWindow` and
`chain.draft_and_verify`; this file adds the sampled refinement.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.kernels.sampling import SamplingParams, probs_from_logits
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.jacobi import JacobiWindow, window_decode
from ponder.search.decoding.outputs import StopFn


class SJDWindow(JacobiWindow):
    """The Jacobi window with sampled refinement: each new draft is drawn from this pass's p, which
    is recorded as the q its acceptance test divides by."""

    def refine(self, row: int, logits: torch.Tensor, old: list[int],
               old_q: torch.Tensor | None) -> tuple[list[int], torch.Tensor | None]:
        if self.sampling.greedy:
            return super().refine(row, logits, old, old_q)
        if len(logits) == 0:
            return [], torch.zeros((0, self.vocab))
        p = probs_from_logits(logits, self.sampling)  # [N, V]
        return self._sample(row, p).tolist(), p


def sjd(
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
    """Speculative Jacobi Decoding (Teng et al. 2024): plain sampling's distribution in fewer forwards.

    Args:
        model: any `SequenceModel`; AR image models (with `row_tokens`) also allow init "horizon".
        prompt_ids: B prompts as token id lists.
        sampling: temperature / top-k / top-p / min-p (p and q both go through it); 0 = greedy Jacobi.
        max_new_tokens: most tokens emitted per row.
        generators: one per row; a row's output does not depend on the other rows.
        stop, stream: as in `plain`.
        draft: must be None (the drafts are the previous Jacobi iteration).
        draft_len: the window length L.
        init: "random" (uniform guesses) or "horizon" (the token one image row above, a point mass).
        stats: optional dict receiving "steps", "row_steps", "accepted".
    Returns:
        `Decoded`; `compute.model_calls` counts forwards (prefill included).
    """
    return window_decode(SJDWindow, "sjd", model, prompt_ids, sampling=sampling, max_new_tokens=max_new_tokens,
                         generators=generators, stop=stop, stream=stream, draft=draft, draft_len=draft_len, init=init,
                         stats=stats)


__all__ = ["SJDWindow", "sjd"]
