"""Jacobi decoding: a window of guessed tokens refined in parallel until it is a fixed point.

Santilli et al. 2023, *Accelerating Transformer Inference for Translation via Parallel Decoding*
(Jacobi iteration of greedy decoding; Song et al. 2021 for the fixed-point view).

Rule (greedy): guess the next L tokens y_1..y_L; one forward over [last, y_1..y_L] gives the argmax
g_j of every position given y_<j. The longest prefix with y_j = g_j is exactly what plain greedy
decoding would emit, and so is the first g_j that differs (its context was exact); the rest of the
window is replaced by the new guesses y_j <- g_j and refined by the next forward. Every forward
emits at least one token and the output equals plain greedy decoding token for token.

`JacobiWindow` is the window proposer (initialise, refine from each verify pass) that Speculative
Jacobi Decoding (`sjd.py`) and its maximal-coupling variant (`mc_sjd.py`) extend with sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams, sample
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.core.capabilities import RowImageModel, display_name
from ponder.search.decoding.chain import LoopStart, check_draft_len, draft_and_verify, refuse_draft
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.speculative import accept_drafts

INITS = ("random", "horizon")  # how a window position is guessed before any forward has seen it


class JacobiWindow:
    """Keeps each row's window of draft tokens; refines it from every verify pass.

    Row r's window holds up to `draft_len` guesses for the tokens after its last emitted one. After
    a verify pass over [last, d_0..d_{K-1}] in which the row kept n drafts, positions n+1..K of the
    pass (conditioned on the old, partly rejected drafts) become the new guesses for the tokens after
    the emitted ones (`refine`); the window is then topped up with fresh guesses (`init`):

    * "random": uniform over the ids the model could emit at its latest position (finite logits);
    * "horizon": the token one image row above (`row_tokens` positions back: emitted or drafted),
      random where there is no row above — SJD's spatial-locality initialisation for images.

    Greedy refinement takes the argmax; `sjd.SJDWindow` samples instead and records the
    distribution q each guess was drawn from (the speculative acceptance rule needs it).
    Each row draws only from its own generator, so its output does not depend on the batch.
    """

    def __init__(self, *, vocab: int, sampling: SamplingParams, generators, draft_len: int, init: str,
                 row_tokens: int | None):
        self.vocab, self.sampling, self.draft_len, self.init, self.row_tokens = (
            vocab, sampling, draft_len, init, row_tokens)
        self.generators = generators
        self.drafts: list[list[int]] = []  # per row: current guesses
        self.q: list[torch.Tensor | None] = []  # per row: [len(drafts), V] they were drawn from (sampling only)
        self.history: list[list[int]] = []  # per row: emitted tokens (what "horizon" copies from)
        self.support: list[torch.Tensor] = []  # per row: bool [V], ids "random" may guess
        self.logits: torch.Tensor | None = None  # the latest verify pass [B, W, V]

    # ---- per-row randomness --------------------------------------------------------------------

    def _gen(self, row: int) -> torch.Generator | None:
        if self.generators is None:
            return None
        return self.generators[row]

    def _uniform(self, row: int, count: int) -> torch.Tensor:
        return torch.rand(count, generator=self._gen(row))  # [count]

    def _sample(self, row: int, probs: torch.Tensor) -> torch.Tensor:
        """One token per row of probs [N, V], all from row `row`'s generator (N draws, in order)."""
        gen = self._gen(row)
        return sample(probs, None if gen is None else [gen] * len(probs))  # [N]

    # ---- the window ----------------------------------------------------------------------------

    def _fresh(self, row: int, count: int) -> tuple[list[int], torch.Tensor | None]:
        """`count` new guesses after the row's current window, and the q [count, V] they came from."""
        support = self.support[row]
        ids = support.nonzero()[:, 0]  # [S]
        picks = ids[(self._uniform(row, count) * len(ids)).long().clamp(max=len(ids) - 1)].tolist()
        known = self.history[row] + self.drafts[row]  # new-token index i sits at known[i]
        copied = []
        for k in range(count):
            above = len(known) - (self.row_tokens or 0)
            copied.append(self.init == "horizon" and above >= 0)
            known.append(known[above] if copied[-1] else picks[k])
        tokens = known[len(known) - count:]
        if self.sampling.greedy:
            return tokens, None
        one_hot = torch.nn.functional.one_hot(torch.tensor(tokens), self.vocab).float()  # [count, V]
        uniform = (support.float() / len(ids)).expand(count, -1)  # [count, V]
        return tokens, torch.where(torch.tensor(copied)[:, None], one_hot, uniform)  # copies: a point mass

    def propose(self, last: list[int], limits: list[int]) -> tuple[list[list[int]], torch.Tensor | None]:
        batch = len(last)
        if not self.history:
            self.history = [[t] for t in last]
            self.drafts = [[] for _ in range(batch)]
            self.q = [None if self.sampling.greedy else torch.zeros((0, self.vocab)) for _ in range(batch)]
            self.support = [torch.ones(self.vocab, dtype=torch.bool) for _ in range(batch)]
        for row in range(batch):
            want = min(self.draft_len, limits[row])
            self.drafts[row] = self.drafts[row][:want]
            if self.q[row] is not None:
                self.q[row] = self.q[row][:want]
            missing = want - len(self.drafts[row])
            if missing > 0:
                tokens, probs = self._fresh(row, missing)
                self.drafts[row] = self.drafts[row] + tokens
                if probs is not None:
                    self.q[row] = torch.cat([self.q[row], probs])
        if self.sampling.greedy:
            return [list(d) for d in self.drafts], None
        longest = max(len(d) for d in self.drafts)
        table = torch.zeros((batch, longest, self.vocab))  # [B, K, V]; rows shorter than K pad with 0
        for row, probs in enumerate(self.q):
            table[row, :len(probs)] = probs
        return [list(d) for d in self.drafts], table

    def verified(self, logits: torch.Tensor) -> None:
        self.logits = logits.float().cpu()  # [B, W, V]
        self.finite = torch.isfinite(self.logits)  # [B, W, V]: what each position can emit

    def accepted(self, num_accepted: list[int], final: list[int]) -> None:
        for row, (n, token) in enumerate(zip(num_accepted, final)):
            fed = len(self.drafts[row])
            self.history[row] += self.drafts[row][:n] + [token]
            # pass positions n+1..fed predict the tokens after `token`; the old guesses there were
            # drafts n+1..fed-1 (the last position had none)
            logits = self.logits[row, n + 1: fed + 1]  # [fed - n, V] (empty when all were accepted)
            old = self.drafts[row][n + 1:]
            old_q = None if self.q[row] is None else self.q[row][n + 1:]
            self.drafts[row], self.q[row] = self.refine(row, logits, old, old_q)
            self.support[row] = self.finite[row, fed]  # [V]

    def refine(self, row: int, logits: torch.Tensor, old: list[int],
               old_q: torch.Tensor | None) -> tuple[list[int], torch.Tensor | None]:
        """New guesses from a verify pass's logits [N, V] (greedy: the argmax)."""
        return logits.argmax(-1).tolist(), None


def window_decode(window_cls, name: str, model: SequenceModel, prompt_ids: Sequence[Sequence[int]], *,
                  sampling: SamplingParams, max_new_tokens: int, generators, stop, stream, draft, draft_len: int,
                  init: str, stats: dict | None) -> Decoded:
    """Run `draft_and_verify` with a `window_cls` proposer: the loop of Jacobi, SJD and MC-SJD."""
    draft_len = check_draft_len(draft_len)
    refuse_draft(name, draft, "from the model's own parallel guesses")
    if init not in INITS:
        raise ConfigError(f"init {init!r} is not allowed; use one of {', '.join(INITS)}")
    row_tokens = model.row_tokens if isinstance(model, RowImageModel) else None
    if init == "horizon" and not row_tokens:
        raise ConfigError(f"init 'horizon' copies the token one image row above; model "
                          f"{display_name(model)!r} has no image rows (row_tokens); use init 'random'")

    def make_proposer(start: LoopStart) -> JacobiWindow:
        return window_cls(vocab=start.vocab, sampling=sampling, generators=start.generators, draft_len=draft_len,
                          init=init, row_tokens=row_tokens)

    return draft_and_verify(model, prompt_ids, make_proposer, accept=accept_drafts, sampling=sampling,
                            max_new_tokens=max_new_tokens, generators=generators, stop=stop, stream=stream,
                            stats=stats)


def jacobi(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    draft_len: int = 8,
    init: str = "random",
    stats: dict | None = None,
) -> Decoded:
    """Greedy Jacobi decoding (Santilli et al. 2023): token for token plain greedy, in fewer forwards.

    Args:
        model: any `SequenceModel` (text, AR image tokens, ...).
        prompt_ids: B prompts as token id lists (lengths may differ).
        sampling: must be greedy (temperature 0); for sampling use `sjd` (its lossless generalisation).
        max_new_tokens: most tokens emitted per row.
        generators: per-row generators, used only for "random" guesses (they never change the output).
        stop, stream: as in `plain`.
        draft: must be None (the window is the model's own guesses).
        draft_len: window length L (tokens guessed per forward).
        init: "random" or "horizon" (image models: the token one row above).
        stats: optional dict receiving "steps", "row_steps", "accepted" (see `chain.draft_and_verify`).
    Returns:
        `Decoded`; `compute.model_calls` counts forwards (prefill included).
    """
    if not sampling.greedy:
        raise ConfigError(f"decoder 'jacobi' is greedy (temperature 0), got temperature {sampling.temperature}; "
                          "use --temperature 0, or --decoder sjd to sample")
    return window_decode(JacobiWindow, "jacobi", model, prompt_ids, sampling=sampling, max_new_tokens=max_new_tokens,
                         generators=generators, stop=stop, stream=stream, draft=draft, draft_len=draft_len, init=init,
                         stats=stats)


__all__ = ["INITS", "JacobiWindow", "jacobi", "window_decode"]
