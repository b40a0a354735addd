"""Self-speculative decoding: the target drafts for itself with some layers skipped, chosen on the fly.

Xia, Li, Lu, Ge and Li 2024, *SWIFT: On-the-Fly Self-Speculative Decoding for LLM Inference
Acceleration*. Rule: the draft is the target with a set S of its middle decoder layers skipped —
same weights, same KV cache (the kept layers write the draft tokens' keys, which are rolled back
before the full model verifies [last, d_1..d_k] in one forward). S is chosen during decoding: in an
optimisation phase (the first `search_steps` verify steps) each pair of steps tries a candidate set
(random search: the best set so far with one skipped layer swapped for a kept one), scored by the
share of its drafts the target accepted; afterwards the best set drafts. Like SWIFT, a row stops
drafting once the draft's top probability falls below `min_confidence`. Verification is
speculative sampling's rule (`speculative.py`), so the output is plain sampling's, whatever S is.
Simplification: SWIFT skips attention and MLP sub-layers separately and searches with Bayesian
optimisation; here whole layers are skipped and the search is random.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Compute, Decoded, SequenceModel, StreamCallback
from ponder.search.core.capabilities import LayerSkippingModel, device_of, display_name
from ponder.search.decoding.chain import LoopStart, check_draft_len, draft_and_verify, draw_draft, refuse_draft
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.speculative import accept_drafts

TRIAL_STEPS = 2  # verify steps each candidate skip set drafts for during the optimisation phase


class LayerSkipProposer:
    """Drafts with the target itself, some layers skipped, in the target's own cache.

    At `propose` the target cache holds every verified token except `last`; the draft feeds `last`
    and its own tokens through the kept layers, then rolls the cache back to where it was, so the
    verify forward sees exactly the verified context.
    """

    def __init__(self, model, cache, compute: Compute, *, sampling: SamplingParams, generators, draft_len: int,
                 skip: Sequence[int] | None, skip_count: int, search_steps: int, min_confidence: float | None,
                 seed: int = 0):
        self.model, self.cache, self.compute = model, cache, compute
        self.sampling, self.generators, self.draft_len = sampling, generators, draft_len
        self.min_confidence = min_confidence
        middle = list(range(1, model.num_layers - 1))  # the first and last layers always run
        self.middle = middle
        if skip is not None:
            self.best, self.search_steps = frozenset(skip), 0
        else:
            # start from evenly spread skipped layers
            spread = [middle[round(i * (len(middle) - 1) / max(1, skip_count - 1))] for i in range(skip_count)]
            self.best = frozenset(spread if len(set(spread)) == skip_count else middle[:skip_count])
            self.search_steps = search_steps
        self.scores: dict[frozenset, list[int]] = {}  # skip set -> [accepted, drafted]
        self.rng = random.Random(seed)  # the search's own randomness: never a row's generator
        self.step = 0
        self.current = self.best

    def _candidate(self) -> frozenset:
        """The optimisation phase's next skip set: the best so far with one layer swapped."""
        kept = [i for i in self.middle if i not in self.best]
        if not kept:
            return self.best
        out = self.rng.choice(sorted(self.best))
        return (self.best - {out}) | {self.rng.choice(kept)}

    def _score(self, skip: frozenset) -> float:
        accepted, drafted = self.scores.get(skip, (0, 0))
        return (accepted + 1) / (drafted + 2)  # Laplace-smoothed acceptance rate

    def propose(self, last: list[int], limits: list[int]) -> tuple[list[list[int]], torch.Tensor | None]:
        batch = len(last)
        if self.step < self.search_steps and self.step % TRIAL_STEPS == 0 and self.step:
            self.current = self._candidate()
        elif self.step >= self.search_steps:
            self.current = self.best
        self.step += 1
        drafting = [r for r in range(batch) if limits[r] > 0]
        lengths = [0] * batch
        drafts, probs = [], []
        start = self.cache.length
        feed = torch.tensor(last, dtype=torch.long)[:, None]  # [B, 1]
        device = device_of(self.model)
        with self.model.skipping_layers(self.current):
            while drafting:
                logits = self.model.forward(feed.to(device), self.cache)[:, -1].float()  # [B, V]
                self.compute.draft_calls += 1
                token, q = draw_draft(logits, drafting, self.sampling, self.generators)  # [B], [B, V]
                if self.min_confidence is not None:
                    sure = (q.max(-1).values >= self.min_confidence).tolist()  # [B]
                    drafting = [r for r in drafting if sure[r]]
                    if not drafting:
                        break
                drafts.append(token)
                probs.append(q)
                for row in drafting:
                    lengths[row] += 1
                drafting = [r for r in drafting if lengths[r] < limits[r]]
                if len(drafts) == self.draft_len:
                    break
                feed = token[:, None].cpu()
        self.cache.truncate(start)  # the draft's keys go; the verify forward writes the real ones
        if not drafts:
            self.drafts = [[] for _ in range(batch)]
            return self.drafts, None
        table = torch.stack(drafts, 1).tolist()  # [B, m]
        self.drafts = [row[:n] for row, n in zip(table, lengths)]
        return self.drafts, None if self.sampling.greedy else torch.stack(probs, 1)  # [B, m, V]

    def accepted(self, num_accepted: list[int], final: list[int]) -> None:
        score = self.scores.setdefault(self.current, [0, 0])
        score[0] += sum(min(n, len(d)) for n, d in zip(num_accepted, self.drafts))
        score[1] += sum(len(d) for d in self.drafts)
        if self.step <= self.search_steps and self._score(self.current) > self._score(self.best):
            self.best = self.current


def layer_skip(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    draft_len: int = 6,
    skip: Sequence[int] | None = None,
    skip_ratio: float = 0.5,
    search_steps: int = 16,
    min_confidence: float | None = 0.8,
    stats: dict | None = None,
) -> Decoded:
    """Lossless self-speculative decoding: `model` with some layers skipped drafts for `model`.

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`; the
            model must offer `skipping_layers` (every `TextModel` does) and have at least 3 layers.
        draft: must be None (the target drafts for itself).
        draft_len: most tokens drafted per step.
        skip: a fixed set of layers to skip (each in [1, num_layers − 1)); None searches for one.
        skip_ratio: share of the middle layers skipped when searching, in (0, 1).
        search_steps: verify steps of the optimisation phase (0 keeps the initial evenly spread set).
        min_confidence: stop a row's draft once the draft's top probability is below this, in (0, 1)
            (None: never).
        stats: optional dict; receives "steps", "accepted", "row_steps" and "skip" (the set used last).
    Returns:
        `Decoded`, distributed exactly as plain sampling from `model`; greedy equals plain greedy.
        With the search on, a batch shares one skip set, so a sampled row's draws (never its
        distribution) can depend on the other rows; a fixed `skip` makes rows batch-independent.
    """
    draft_len = check_draft_len(draft_len)
    refuse_draft("layer-skip", draft, "with the target itself (layers skipped)")
    if not isinstance(model, LayerSkippingModel) or model.num_layers < 3:
        raise ConfigError(f"decoder 'layer-skip' needs a model with at least 3 decoder layers it can skip; "
                          f"{display_name(model)!r} has none that ponder can skip")
    middle = model.num_layers - 2
    if skip is not None:
        if isinstance(skip, (str, bytes)) or not all(isinstance(i, int) and 1 <= i <= middle for i in skip) \
                or not skip:
            raise ConfigError(f"skip must be a non-empty list of layer indices in [1, {middle}] (the first and "
                              f"last of {model.num_layers} layers always run), got {skip!r}")
    if isinstance(skip_ratio, bool) or not isinstance(skip_ratio, (int, float)) or not 0 < skip_ratio < 1:
        raise ConfigError(f"skip_ratio must be in (0, 1) (share of middle layers skipped), got {skip_ratio!r}")
    if isinstance(search_steps, bool) or not isinstance(search_steps, int) or search_steps < 0:
        raise ConfigError(f"search_steps must be a non-negative integer, got {search_steps!r}")
    if min_confidence is not None and (isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float))
                                       or not 0 < min_confidence < 1):
        raise ConfigError(f"min_confidence must be in (0, 1) or None, got {min_confidence!r}")
    skip_count = max(1, round(skip_ratio * middle))
    proposers: list[LayerSkipProposer] = []

    def make_proposer(start: LoopStart) -> LayerSkipProposer:
        proposers.append(LayerSkipProposer(model, start.cache, start.compute, sampling=sampling,
                                           generators=start.generators, draft_len=draft_len, skip=skip,
                                           skip_count=skip_count, search_steps=search_steps,
                                           min_confidence=min_confidence))
        return proposers[-1]

    out = draft_and_verify(model, prompt_ids, make_proposer, accept=accept_drafts, sampling=sampling,
                           max_new_tokens=max_new_tokens, generators=generators, stop=stop, stream=stream, stats=stats)
    if stats is not None and proposers:
        stats["skip"] = sorted(proposers[-1].best)  # rows run one at a time each search: the last one's
    return out


__all__ = ["LayerSkipProposer", "layer_skip"]
