"""Step-level search machinery shared by beam search, DVTS, diverse beam search and particle filtering.

A *step* is one unit a process verifier scores (for text: one line). A `Partial` is one unfinished
or finished output; `extend` advances a set of partials by one step each, as one batched decode.
Row j of round r draws from its own generator seeded from ``(generator_seed(seed, r), j)``, so a
run is reproducible and batch-size independent.

Forked caches (plain decoding, a cache that hides rows' positions): the cache of a round is kept,
each open partial remembering its row. The next round forks it (`reorder` by the partials' rows:
survivors duplicated, the dropped gone) and feeds each row only its pending last token, instead of
re-prefilling prompt + partial — the positions a finished row fed while riding along are hidden.
Outputs equal the re-prefill path's up to float rounding. Any other decoder, or a partial without a
row in the last round's cache (a fresh or hand-made partial), re-prefills ``prompt + partial``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ponder.errors import ConfigError, check_int
from ponder.kernels.sampling import SamplingParams, generator_seed, make_generators
from ponder.search.core import Candidate, Compute, Decoded, ProcessVerifier, Verifier
from ponder.search.core.capabilities import LengthChecked, RowRollbackCache, SteppedModel, device_of, display_name
from ponder.search.scaling.common import check_n, checked_sampling, decoder_name

StepEnd = Callable[[list[int]], bool]  # (token ids of the step so far) -> has the step ended?


@dataclass
class Partial:
    """One output under construction."""

    ids: list[int] = field(default_factory=list)  # generated token ids so far
    bounds: list[int] = field(default_factory=list)  # len(ids) at the end of each step
    done: bool = False
    reason: str | None = None  # "eos" | "stop" | "length" once done
    logprob: float = 0.0  # sum of log p(token) under the model (untempered)
    origin: int = 0  # the slot of the round-0 ancestor (its lineage)
    meta: dict = field(default_factory=dict)  # strategy notes, copied into the candidate's meta
    final_score: float | None = None  # the verifier's score once done (a finished output never changes)
    cache_row: tuple[int, int] | None = None  # (round, row): the Stepper's cache of that round holds it

    def copy(self) -> Partial:
        return replace(self, ids=list(self.ids), bounds=list(self.bounds), meta=dict(self.meta))


def require_process_verifier(verifier: Verifier | None, strategy: str) -> ProcessVerifier:
    if verifier is None:
        raise ConfigError(f"strategy {strategy!r} needs a process verifier (e.g. --verifier prm)")
    if not isinstance(verifier, ProcessVerifier):
        raise ConfigError(f"strategy {strategy!r} scores partial solutions and needs a process verifier "
                          f"(with score_steps, e.g. prm or self); {display_name(verifier, verifier)!r} "
                          "only scores finished outputs")
    return verifier


def check_positive_int(name: str, value: Any) -> int:
    check_int(name, value)
    return value


def check_beams(n: int, beam_width: int, strategy: str) -> int:
    """Beams kept per round (n // beam_width); n must be a multiple of beam_width."""
    check_n(n)
    check_positive_int("beam_width", beam_width)
    if beam_width > n:
        raise ConfigError(f"{strategy}: budget n={n} is smaller than beam_width={beam_width}; "
                          f"use n >= beam_width")
    if n % beam_width:
        raise ConfigError(f"{strategy}: n={n} is not a multiple of beam_width={beam_width}; "
                          f"use e.g. n={n - n % beam_width or beam_width} or n={n + beam_width - n % beam_width}")
    return n // beam_width


def default_step_end(model) -> StepEnd:
    """The model's own step rule (a `SteppedModel`), or a ConfigError asking for `step_end=`."""
    if not isinstance(model, SteppedModel):
        raise ConfigError(f"{type(model).__name__} does not define steps (is_step_end); pass step_end=")
    return model.is_step_end


class Stepper:
    """Advances partials of one prompt a step at a time, counting compute.

    Args:
        model: a `SequenceModel`.
        prompt: the prompt.
        seed: base seed of the run.
        compute: where model calls and tokens are added.
        decoder / draft / sampling / max_new_tokens / stop: as in every strategy; `max_new_tokens`
            bounds a whole output, `max_step_tokens` one step.
        step_end: when a step ends (default: the model's `is_step_end`).
    """

    def __init__(self, model, prompt: Any, *, seed: int, compute: Compute, decoder: str | Callable = "plain",
                 draft=None, sampling: SamplingParams | None = None, max_new_tokens: int = 64,
                 max_step_tokens: int | None = None, stop: Callable | None = None,
                 step_end: StepEnd | None = None, stream=None, fork_cache: bool = True, **decoder_options):
        from ponder.search.decoding import get_decoder, plain

        check_int("max_new_tokens", max_new_tokens)
        self.model, self.prompt, self.seed, self.compute = model, prompt, seed, compute
        self.decode_fn = get_decoder(decoder) if isinstance(decoder, str) else decoder
        self.decoder_name = decoder_name(decoder)
        self.draft, self.sampling = draft, checked_sampling(sampling or SamplingParams())
        self.max_new_tokens, self.max_step_tokens = max_new_tokens, max_step_tokens or max_new_tokens
        self.user_stop, self.step_end = stop, step_end or default_step_end(model)
        self.decoder_options = decoder_options
        self.prompt_ids = list(model.encode(prompt))
        if isinstance(model, LengthChecked):
            model.check_length(len(self.prompt_ids), max_new_tokens)
        self.rounds = 0
        if not isinstance(fork_cache, bool):
            raise ConfigError(f"fork_cache must be true or false, got {fork_cache!r}")
        # keep each partial's cache row across rounds (plain decoding only: other decoders own their caches)
        self.fork_cache = (fork_cache and self.decode_fn is plain and draft is None and not decoder_options
                           and isinstance(model.new_cache(), RowRollbackCache))
        self._cache, self._cache_id = None, 0  # the last forked decode's cache, and its number

    def extend(self, partials: Sequence[Partial]) -> list[Partial]:
        """Each unfinished partial advanced by one step (finished ones returned as they are)."""
        out = [p.copy() for p in partials]
        rows = [i for i, p in enumerate(out) if not p.done]
        round_seed = generator_seed(self.seed, self.rounds)
        self.rounds += 1
        if not rows:
            return out
        budget = min(self.max_step_tokens, max(self.max_new_tokens - len(out[i].ids) for i in rows))
        user_stopped: set[int] = set()
        histories = [out[i].ids for i in rows]

        def stop(row: int, tokens: list[int]) -> bool:
            if self.user_stop is not None and self.user_stop(row, histories[row] + tokens):
                user_stopped.add(row)
                return True
            # a row's whole output is bounded by max_new_tokens, whatever the others' budgets
            return len(histories[row]) + len(tokens) >= self.max_new_tokens or self.step_end(tokens)

        generators = make_generators(round_seed, rows)
        if self.fork_cache:
            decoded = self._decode_forked(out, rows, max(1, budget), stop, generators)
        else:
            decoded = self.decode_fn(
                self.model, [self.prompt_ids + out[i].ids for i in rows], sampling=self.sampling,
                max_new_tokens=max(1, budget), generators=generators, stop=stop,
                stream=None, draft=self.draft, **self.decoder_options)
        self.compute.add_work(decoded.compute)
        for row, i in enumerate(rows):
            p = out[i]
            p.ids += decoded.tokens[row]
            p.logprob += float(sum(decoded.logprobs[row]))
            p.bounds.append(len(p.ids))
            reason = decoded.stop_reasons[row]
            if reason == "eos" or row in user_stopped:
                p.done, p.reason = True, "eos" if reason == "eos" else "stop"
            elif len(p.ids) >= self.max_new_tokens:
                p.done, p.reason = True, "length"
        return out

    def _decode_forked(self, out: list[Partial], rows: list[int], budget: int, stop, generators) -> Decoded:
        """Plain decoding of one step for partials `out[i]`, i in `rows`, resuming the last round's
        cache when every one of them has a row there (else prefilling prompt + partial)."""
        from ponder.search.decoding.outputs import RowOutputs, prefill_shared
        from ponder.search.decoding.plain import sample_rows

        model, compute = self.model, Compute()
        with compute.timed():
            result = RowOutputs(len(rows), eos=model.eos_token_ids, max_new_tokens=budget, stop=stop,
                                stream=None, compute=compute)
            kept = [out[i].cache_row for i in rows]
            if self._cache is not None and all(k is not None and k[0] == self._cache_id for k in kept):
                cache = self._cache
                cache.reorder(torch.tensor([k[1] for k in kept], dtype=torch.long))  # fork: [B]
                pending = torch.tensor([[out[i].ids[-1]] for i in rows], dtype=torch.long,
                                       device=device_of(model))  # [B, 1]: each row's last token, not yet fed
                logits = model.forward(pending, cache)[:, -1]  # [B, V]
                real = [[True] * len(rows)]
            else:
                cache = model.new_cache()
                logits = prefill_shared(model, [self.prompt_ids + out[i].ids for i in rows], cache)  # [B, V]
                real = []
            compute.model_calls += 1
            real += sample_rows(model, cache, logits, result, self.sampling, generators)
            if real and not all(all(r) for r in real):  # riders' positions: never seen again
                fed = torch.tensor(real, dtype=torch.bool).T  # [B, forwards]
                hidden = torch.zeros((len(rows), cache.length), dtype=torch.bool)
                hidden[:, cache.length - fed.shape[1]:] = ~fed
                cache.hide(hidden.to(device_of(model) or hidden.device))
            self._cache, self._cache_id = cache, self._cache_id + 1
            for row, i in enumerate(rows):
                out[i].cache_row = (self._cache_id, row)
        return result.decoded()

    def texts(self, partials: Sequence[Partial]) -> list[Any]:
        return [self.model.decode(p.ids) for p in partials]

    def score(self, verifier: ProcessVerifier, partials: Sequence[Partial]) -> torch.Tensor:
        """Verifier scores [N]: finished partials as outputs (once; kept on the partial), unfinished
        ones step-wise."""
        scores = torch.tensor([p.final_score if p.final_score is not None else 0.0 for p in partials])
        done = [i for i, p in enumerate(partials) if p.done and p.final_score is None]  # scored once
        todo = [i for i, p in enumerate(partials) if not p.done]
        for idx, fn in ((done, verifier.score), (todo, verifier.score_steps)):
            if idx:
                scores[idx] = fn(self.prompt, self.texts([partials[i] for i in idx])).float()
                self.compute.verifier_calls += len(idx)
        for i in done:
            partials[i].final_score = float(scores[i])
        return scores

    def candidate(self, p: Partial, score: float | None, index: int, **meta) -> Candidate:
        return Candidate(output=self.model.decode(p.ids), score=score, seed=self.seed, meta={
            "index": index, "origin": p.origin, "token_ids": list(p.ids), "stop_reason": p.reason or "steps",
            "logprob": p.logprob, "num_tokens": len(p.ids), "steps": len(p.bounds), **p.meta, **meta})

    def config(self, strategy: str, n: int, verifier, **extra) -> dict:
        s = self.sampling
        return {
            "strategy": strategy, "model": display_name(self.model, type(self.model).__name__),
            "prompt": self.prompt, "n": n, "seed": self.seed, "decoder": self.decoder_name,
            "draft": display_name(self.draft, None), "verifier": display_name(verifier, None),
            "sampling": {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "min_p": s.min_p},
            "max_new_tokens": self.max_new_tokens, "decoder_options": dict(self.decoder_options),
            "fork_cache": self.fork_cache,
            "rounds": self.rounds, **extra}


def max_rounds(stepper: Stepper, max_steps: int | None) -> int:
    """Rounds a step search may take: `max_steps`, or enough for every step to be one token."""
    if max_steps is None:
        return stepper.max_new_tokens
    return check_positive_int("max_steps", max_steps)


Scored = tuple[Partial, float]
Select = Callable[[list[Scored]], list[Partial]]  # this round's scored partials -> open ones to expand


def step_search(stepper: Stepper, verifier: ProcessVerifier, *, n: int, beam_width: int, select: Select,
                max_steps: int | None, enough: int | None = None, trace: bool = False) -> tuple[list[Candidate], dict]:
    """The loop beam search, DVTS and diverse beam search share.

    Round 0 samples `n` first steps from the prompt; each round every open partial advances one step
    and is scored (finished ones by `verifier.score`, open ones by `score_steps`); finished partials
    are kept as candidates; `select` picks the open partials to continue and each gets `beam_width`
    children. Stops when `enough` partials have finished, when nothing is selected, or after
    `max_steps` rounds (open partials are then returned too, stop reason "steps").

    Returns the candidates (finished first, in the order they finished) and extra config.
    """
    active = [Partial(origin=j) for j in range(n)]
    finished: list[Scored] = []
    log: list[dict] = []
    leftover: list[Scored] = []
    enough = enough if enough is not None else float("inf")
    for _ in range(max_rounds(stepper, max_steps)):
        active = stepper.extend(active)
        scored = list(zip(active, stepper.score(verifier, active).tolist()))
        finished += [(p, s) for p, s in scored if p.done]
        survivors = select(scored) if len(finished) < enough else []
        if trace:
            log.append({"scores": [round(s, 6) for _, s in scored], "done": [p.done for p, _ in scored],
                        "kept": [next(i for i, (q, _) in enumerate(scored) if q is p) for p in survivors]})
        if not survivors:
            leftover = [(p, s) for p, s in scored if not p.done] if len(finished) < enough else []
            break
        active = [p.copy() for p in survivors for _ in range(beam_width)]
    else:
        leftover = [(p, s) for p, s in scored if not p.done]
    candidates = [stepper.candidate(p, s, i) for i, (p, s) in enumerate(finished)]
    for p, s in leftover:
        candidates.append(stepper.candidate(p, s, len(candidates)))
    extra = {"beam_width": beam_width, "finished": len(finished)}
    if trace:
        extra["trace"] = log
    return candidates, extra


def best_finished(candidates: list[Candidate]) -> Candidate | None:
    """The highest-scored finished candidate (any candidate when none finished; ties: lowest index)."""
    pool = [c for c in candidates if c.meta["stop_reason"] != "steps"] or candidates
    return max(pool, key=lambda c: (c.score, -c.meta["index"])) if pool else None


__all__ = ["Partial", "Scored", "Select", "StepEnd", "Stepper", "best_finished", "check_beams",
           "check_positive_int", "max_rounds", "require_process_verifier", "step_search"]
